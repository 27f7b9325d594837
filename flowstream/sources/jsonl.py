"""`sources.jsonl(path)`: replays recorded stream records, one JSON record per line.

Each line is a record in the DynamoDB Streams shape (as GetRecords, a Lambda event or
`sinks.jsonl` writes it). A line's ``shardId`` puts it in that shard; lines without one
form a single shard. Every shard is finite, so a run returns when the file is read.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Final, final

import anyio
import msgspec

from flowstream.errors import RecordDecodeError, SourceError
from flowstream.record import Record
from flowstream.sources.base import (
    Page,
    Position,
    PositionKind,
    Shard,
    ShardReader,
    Source,
    StartSpec,
    StreamSession,
    parse_start,
)

__all__ = ["DEFAULT_SHARD_ID", "JsonlSource", "jsonl"]

#: The shard of lines that carry no ``shardId``.
DEFAULT_SHARD_ID: Final = "shardId-00000000000000000000-00000000"

_DECODER: Final = msgspec.json.Decoder(Record)


@final
class JsonlSource(Source):
    """Reads a file of stream records as one finite shard per ``shardId``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start: StartSpec = "trim_horizon",
        page_size: int = 1000,
    ) -> None:
        if page_size < 1:
            raise SourceError(f"sources.jsonl(page_size={page_size}) must be at least 1")
        self.path = Path(path)
        self.start = parse_start(start)
        self.page_size = page_size

    def describe(self) -> str:
        return f"jsonl({self.path})"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        shards = await anyio.to_thread.run_sync(self._load)
        yield _JsonlSession(f"jsonl:{self.path.resolve()}", shards, self.page_size)

    def _load(self) -> dict[str, list[Record]]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(
                f"jsonl source cannot read {self.path}: {exc.strerror}; check the path"
            ) from None
        shards: dict[str, list[Record]] = {}
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = _DECODER.decode(line)
            except msgspec.DecodeError as exc:
                raise RecordDecodeError(
                    f"{self.path}:{number} is not a DynamoDB stream record: {exc}; each line "
                    "must be one record object (eventID, eventName, dynamodb, ...)"
                ) from None
            if not record.sequence_number.isdecimal() or not record.sequence_number.isascii():
                raise RecordDecodeError(
                    f"{self.path}:{number} has SequenceNumber {record.sequence_number!r}; "
                    "DynamoDB sequence numbers are strings of decimal digits"
                )
            if not record.shard_id:
                msgspec.structs.force_setattr(record, "shard_id", DEFAULT_SHARD_ID)
            shards.setdefault(record.shard_id, []).append(record)
        for records in shards.values():
            records.sort(key=lambda r: int(r.sequence_number))
        return shards


class _JsonlSession(StreamSession):
    finite = True

    def __init__(self, stream_id: str, shards: dict[str, list[Record]], page_size: int) -> None:
        self.stream_id = stream_id
        self._shards = shards
        self._page_size = page_size

    async def list_shards(self) -> Sequence[Shard]:
        return [Shard(shard_id, None, closed=True) for shard_id in self._shards]

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        try:
            records = self._shards[shard.shard_id]
        except KeyError:
            raise SourceError(
                f"{self.stream_id} has no shard {shard.shard_id!r}; read one that "
                "list_shards() returns"
            ) from None
        if start.kind is PositionKind.LATEST:
            records = []
        elif start.sequence_number is not None:
            sequence = int(start.sequence_number)
            inclusive = start.kind is PositionKind.AT_SEQUENCE_NUMBER
            records = [
                r
                for r in records
                if int(r.sequence_number) > sequence
                or (inclusive and int(r.sequence_number) == sequence)
            ]
        return _JsonlReader(records, self._page_size)


class _JsonlReader(ShardReader):
    def __init__(self, records: list[Record], page_size: int) -> None:
        self._records = records
        self._next = 0
        self._page_size = page_size

    async def read(self) -> Page:
        page = self._records[self._next : self._next + self._page_size]
        self._next += len(page)
        done = self._next >= len(self._records)
        return Page(page, caught_up=done, ended=done)


def jsonl(
    path: str | os.PathLike[str], *, start: StartSpec = "trim_horizon", page_size: int = 1000
) -> JsonlSource:
    """A source that replays a file of stream records (one JSON record per line)."""
    return JsonlSource(path, start=start, page_size=page_size)
