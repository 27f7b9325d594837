"""`sources.dead_letters(letters)`: the records inside dead letters, as a finite stream.

Letters come from a jsonl file (what `sinks.jsonl` writes as a pipeline's dead-letter
sink) or from memory: `DeadLetter` objects, JSON documents (SQS message bodies) or parsed
dicts. Each original shard becomes one finite shard holding its records in sequence
order, each record once, so a pipeline can process them again (`replay_dead_letters()`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeAlias, final

import anyio
import msgspec

from flowstream.deadletter import DeadLetter, decode_dead_letter
from flowstream.errors import RecordDecodeError, SourceError
from flowstream.record import Record
from flowstream.sources.base import Source, StreamSession

# The finite, file-like session of `sources.jsonl`: one closed shard per shard id, read
# in pages, honouring start positions. It is exactly what dead letters need too.
from flowstream.sources.jsonl import _JsonlSession

__all__ = ["DeadLetterSource", "LetterItem", "Letters", "dead_letters"]

#: One letter given in memory: decoded, a JSON document (an SQS message body), or the
#: document parsed into a dict.
LetterItem: TypeAlias = DeadLetter | bytes | bytearray | memoryview | str | Mapping[str, Any]
#: What `sources.dead_letters()` reads: the path of a jsonl file, or letters in memory.
Letters: TypeAlias = str | os.PathLike[str] | Iterable[LetterItem]

_PAGE_SIZE: Final = 1000
_ENCODER: Final = msgspec.json.Encoder()


@final
class DeadLetterSource(Source):
    """Reads the records of dead letters as one finite shard per original shard."""

    def __init__(self, letters: Letters, *, only_pipeline: str | None = None) -> None:
        if only_pipeline is not None and (
            not isinstance(only_pipeline, str) or not only_pipeline.strip()
        ):
            raise SourceError(
                f"sources.dead_letters(only_pipeline={only_pipeline!r}) is not a pipeline "
                "name; give the name the letters carry (their 'pipeline' field), or None "
                "for every letter"
            )
        self.only_pipeline = only_pipeline
        self.path: Path | None = None
        self._count = 0
        self._shards: dict[str, list[Record]] = {}
        if isinstance(letters, str | os.PathLike):
            # Read when a run opens the source: the file may grow between runs.
            self.path = Path(letters)
        else:
            # Decoded now: a generator can be iterated once, and a bad item is best
            # reported where the letters were given.
            decoded = _decode_items(letters)
            self._count = len(decoded)
            self._shards = _group(decoded, "the letters given", only_pipeline)

    def describe(self) -> str:
        where = str(self.path) if self.path is not None else f"{self._count} letters"
        only = "" if self.only_pipeline is None else f", only_pipeline={self.only_pipeline!r}"
        return f"dead_letters({where}{only})"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        if self.path is None:
            shards = self._shards
            stream_id = "dead-letters:memory"
        else:
            shards = await anyio.to_thread.run_sync(self._load)
            stream_id = f"dead-letters:{self.path.resolve()}"
        yield _JsonlSession(stream_id, shards, _PAGE_SIZE)

    def _load(self) -> dict[str, list[Record]]:
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(
                f"dead-letter source cannot read {self.path}: {exc.strerror}; give the "
                "jsonl file the pipeline's dead-letter sink wrote"
            ) from None
        letters = []
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                where = f"{self.path}:{number}"
                letters.append((where, _decode(line, where)))
        return _group(letters, str(self.path), self.only_pipeline)


def _decode_items(items: Iterable[LetterItem]) -> list[tuple[str, DeadLetter]]:
    if isinstance(items, bytes | bytearray | memoryview | Mapping | DeadLetter):
        kind = "a dict" if isinstance(items, Mapping) else type(items).__name__
        raise SourceError(
            f"sources.dead_letters() got {kind}, a single letter; pass a list of letters "
            "(e.g. [body]) or the path of a jsonl file"
        )
    if not isinstance(items, Iterable):
        raise SourceError(
            f"sources.dead_letters() got {type(items).__name__}; pass the path of a jsonl "
            "file, or an iterable of DeadLetter objects, JSON documents or dicts"
        )
    letters = []
    for index, item in enumerate(items):
        where = f"letters[{index}]"
        if isinstance(item, DeadLetter):
            letter = item
        elif isinstance(item, bytes | bytearray | memoryview | str):
            letter = _decode(item, where)
        elif isinstance(item, Mapping):
            # Parsed JSON goes back through the one decoder, which checks the version.
            try:
                body = _ENCODER.encode(item)
            except (TypeError, ValueError) as exc:
                raise RecordDecodeError(
                    f"{where} is a dict that is not JSON ({exc}); pass the letter's "
                    "document as received, or as json.loads() gives it"
                ) from None
            letter = _decode(body, where)
        else:
            raise SourceError(
                f"{where} is a {type(item).__name__}; dead letters are DeadLetter objects, "
                "JSON documents (bytes or str, e.g. SQS message bodies) or dicts"
            )
        letters.append((where, letter))
    return letters


def _decode(body: bytes | bytearray | memoryview | str, where: str) -> DeadLetter:
    try:
        return decode_dead_letter(body)
    except RecordDecodeError as exc:
        raise RecordDecodeError(f"{where}: {exc}") from None


def _group(
    letters: list[tuple[str, DeadLetter]], origin: str, only_pipeline: str | None
) -> dict[str, list[Record]]:
    """The letters' records by shard (shards in the order they first appear), each shard
    in sequence order and each record once."""
    shards: dict[str, dict[int, Record]] = {}
    pipelines: dict[str, None] = {}
    for where, letter in letters:
        pipelines[letter.pipeline] = None
        if only_pipeline is not None and letter.pipeline != only_pipeline:
            continue
        record = _record_of(letter, where)
        # A letter is written twice when a run stops between writing it and
        # checkpointing past its record; the record is replayed once.
        shards.setdefault(letter.shard_id, {}).setdefault(int(record.sequence_number), record)
    if not shards:
        if not letters:
            raise SourceError(
                f"{origin} holds no dead letters, so there is nothing to replay; check that "
                "it is the pipeline's dead-letter file or queue"
            )
        names = ", ".join(repr(name) for name in pipelines)
        raise SourceError(
            f"{origin} holds {len(letters)} dead letter(s), none of pipeline "
            f"{only_pipeline!r} (they are of {names}); check the name, or pass "
            "only_pipeline=None to take every letter"
        )
    # A queue (SQS standard) does not keep the order letters were sent in; sequence
    # numbers give the shard's own order back.
    return {shard_id: [by[n] for n in sorted(by)] for shard_id, by in shards.items()}


def _record_of(letter: DeadLetter, where: str) -> Record:
    record = letter.record
    sequence = record.sequence_number
    if not sequence.isdecimal() or not sequence.isascii():
        raise RecordDecodeError(
            f"{where}: the record has SequenceNumber {sequence!r}; DynamoDB sequence "
            "numbers are strings of decimal digits"
        )
    if sequence != letter.sequence_number or record.shard_id not in ("", letter.shard_id):
        raise RecordDecodeError(
            f"{where}: the letter names {letter.shard_id} at {letter.sequence_number} but "
            f"holds the record of {record.shard_id or '(no shard)'} at {sequence}; a letter "
            "must hold its own record (was it edited?)"
        )
    if not record.shard_id:
        # A copy: the letter may be the caller's object.
        record = msgspec.structs.replace(record, shard_id=letter.shard_id)
    return record


def dead_letters(letters: Letters, *, only_pipeline: str | None = None) -> DeadLetterSource:
    """A finite source of the records inside dead letters.

    `letters` is the path of a jsonl file (one letter per line, as `sinks.jsonl` writes
    them), or an iterable of `DeadLetter` objects, JSON documents (bytes or str, e.g. SQS
    message bodies) or parsed dicts. `only_pipeline` keeps only the letters that pipeline
    wrote. Records form one shard per original shard, in sequence order, each once.
    """
    return DeadLetterSource(letters, only_pipeline=only_pipeline)
