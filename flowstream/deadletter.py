"""Dead letters: a record that could not be processed, with everything needed to act on it.

A dead letter carries the record itself (keys, images, event name, sequence number,
shard, in the stream's own JSON shape), not a pointer to it: stream records expire after
24 hours, so a letter that only named a sequence number would point at nothing by the
time someone reads it. It is one JSON document with a `version`, so any sink can hold
it (a queue, a file, a table) and `replay_dead_letters()` can feed it back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from flowstream.errors import RecordDecodeError
from flowstream.record import Record

__all__ = ["DEAD_LETTER_VERSION", "DeadLetter", "FailureInfo", "Reason", "decode_dead_letter"]

#: The version of the dead-letter document written now.
DEAD_LETTER_VERSION: Final = 1

#: Why a record was dead-lettered:
#: ``retries_exhausted`` - it failed on every attempt the policy allowed;
#: ``not_retryable`` - it failed with an error retrying cannot fix (a 4xx, a value
#: that cannot be serialised), so it was not retried;
#: ``max_record_age`` - it was older than `max_record_age` (it may not have failed).
Reason = Literal["retries_exhausted", "not_retryable", "max_record_age"]


class FailureInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The error of a record's last failed attempt."""

    type: str
    message: str


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One dead-lettered record and why (`version` 1).

    `step` names where it failed the way `Pipeline.describe()` does (``step 2:
    map(enrich)``) or the sink (``sink sqs(orders)``). `attempts` counts the attempts
    that failed; `first_failure`/`last_failure` are when the first and last of them
    failed (None for a record dead-lettered by age before any attempt).
    """

    version: int = DEAD_LETTER_VERSION
    pipeline: str
    stream: str
    shard_id: str
    sequence_number: str
    step: str
    reason: Reason
    error: FailureInfo | None = None
    attempts: int = 0
    first_failure: datetime | None = None
    last_failure: datetime | None = None
    dead_lettered_at: datetime
    record: Record

    @classmethod
    def of(
        cls,
        record: Record,
        *,
        pipeline: str,
        stream: str,
        step: str,
        reason: Reason,
        error: BaseException | None,
        attempts: int,
        first_failure: datetime | None,
        last_failure: datetime | None,
    ) -> DeadLetter:
        """A letter for `record`, which failed at `step` with `error`."""
        return cls(
            pipeline=pipeline,
            stream=stream,
            shard_id=record.shard_id,
            sequence_number=record.sequence_number,
            step=step,
            reason=reason,
            error=None
            if error is None
            else FailureInfo(type=type(error).__name__, message=str(error)),
            attempts=attempts,
            first_failure=first_failure,
            last_failure=last_failure,
            dead_lettered_at=datetime.now(UTC),
            record=record,
        )

    def to_json(self) -> bytes:
        """The letter as one JSON document (what a dead-letter sink receives)."""
        return _ENCODER.encode(self)


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(DeadLetter)


def decode_dead_letter(body: bytes | bytearray | memoryview | str) -> DeadLetter:
    """Decode one dead-letter document (a line of a jsonl file, an SQS message body).

    Raises `RecordDecodeError` naming the problem when `body` is not a dead letter of a
    version this flowstream reads."""
    try:
        letter = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise RecordDecodeError(
            f"not a flowstream dead letter: {exc}; dead letters are the JSON documents "
            "a pipeline's dead_letter sink receives, one per message or line"
        ) from None
    if letter.version > DEAD_LETTER_VERSION:
        raise RecordDecodeError(
            f"dead letter of {letter.shard_id} at {letter.sequence_number} has version "
            f"{letter.version}, newer than this flowstream reads ({DEAD_LETTER_VERSION}); "
            "upgrade flowstream to replay it"
        )
    return letter
