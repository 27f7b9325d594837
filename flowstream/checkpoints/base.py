"""The checkpoint store protocol: where a pipeline records how far each shard is done.

A position is a shard's contiguous ack frontier: a sequence number (every record up to
and including it is done) or `SHARD_END` (the shard was read to its end and every
record is done, so its children may be read). Stores never move a position backwards.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final

from flowstream.checkpoints.owner import Claim
from flowstream.errors import CheckpointError

__all__ = [
    "SHARD_END",
    "CheckpointSession",
    "CheckpointStore",
    "StoredCheckpoints",
    "check_flush_records",
    "check_position",
    "is_ahead",
    "is_position",
]

SHARD_END: Final = "SHARD_END"


def is_position(position: object) -> bool:
    """True for `SHARD_END` and for sequence numbers written as stores compare them:
    plain decimal digits without leading zeros (the SQL and DynamoDB stores compare by
    (length, text), which is the integer order only for those)."""
    return position == SHARD_END or (
        isinstance(position, str)
        and position.isascii()
        and position.isdigit()
        and (position[0] != "0" or position == "0")
    )


def check_position(store: str, shard_id: str, position: str) -> None:
    """Refuse a `position` that is not one; `store` names the store in the message."""
    if not is_position(position):
        raise CheckpointError(
            f"{store}: checkpoint for shard {shard_id!r}: {position!r} is not a position; "
            f"pass a sequence number (decimal digits, no leading zeros) or {SHARD_END!r}"
        )


def check_seconds(name: str, option: str, value: object, *, zero: bool) -> None:
    """Refuse an `option=` of store `name` that is not a finite number of seconds,
    above 0 (or 0 too, with `zero`)."""
    if (
        isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 or (zero and value == 0))
    ):
        return
    raise CheckpointError(
        f"{name}: {option}={value!r} is not a number of seconds; pass a finite number "
        f"{'>= 0' if zero else '> 0'}, e.g. {option}=1.0"
    )


def check_flush_records(name: str, value: object) -> None:
    """Refuse a `flush_records=` that is not a positive whole number (or None)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise CheckpointError(
            f"{name}: flush_records={value!r} is not a number of records; pass a whole "
            "number >= 1, e.g. flush_records=1000, or None to write on the interval only"
        )


def is_ahead(new: str, old: str | None) -> bool:
    """True when position `new` is past `old` (None means nothing is done yet).

    Sequence numbers are decimal strings of varying length, so they compare as integers;
    `SHARD_END` is past every sequence number.
    """
    if old is None:
        return True
    if old == SHARD_END:
        return False
    if new == SHARD_END:
        return True
    return int(new) > int(old)


class CheckpointSession(ABC):
    """One pipeline's checkpoints on one stream, open for the length of a run."""

    @abstractmethod
    async def load(self) -> dict[str, str]:
        """Return the saved position of every shard that has one."""

    @abstractmethod
    async def save(self, positions: Mapping[str, str]) -> Collection[str] | None:
        """Durably record `positions` (shard id -> position). A position that is not
        ahead of the stored one is ignored, so a checkpoint never moves backwards.
        Raises `CheckpointError` when the store cannot record them. Returns the shard
        ids it refused to record because this run no longer owns them (a lease lost
        meanwhile), or None when it recorded every one."""

    #: Seconds between `heartbeat()` calls the runtime makes; None: it makes none.
    heartbeat_interval: float | None = None

    async def heartbeat(self) -> None:  # noqa: B027 - an optional hook
        """Renew this run's claim on the pipeline's checkpoints (stores that keep one,
        `checkpoints.owner`). Raises `CheckpointError` when another process took it."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoints:
    """A pipeline's checkpoints on a stream as the store holds them, read without
    claiming them (`CheckpointStore.inspect`): a running pipeline keeps its claim."""

    #: shard id -> saved position
    positions: dict[str, str] = field(default_factory=dict)
    #: The claim of the process that runs (or last ran and did not release) the
    #: pipeline on these checkpoints, or None; `owner.may_take` says if it is live.
    claim: Claim | None = None


class CheckpointStore(ABC):
    """A place to keep checkpoints, keyed by pipeline name, stream and shard."""

    #: Seconds between batched writes while running; the runtime also flushes at a
    #: shard's end (children wait for it) and on stop.
    flush_interval: float = 1.0
    #: Also write as soon as this many records are done since the last write (None:
    #: only on the interval). Bounds what a crash replays on a busy stream.
    flush_records: int | None = None

    @abstractmethod
    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        """Open the checkpoints of `pipeline` on the stream `stream_id`."""

    def describe(self) -> str:
        """A short, human-readable name for plans and reports."""
        return type(self).__name__

    async def inspect(self, pipeline: str, stream_id: str) -> StoredCheckpoints:
        """The saved positions and the current claim of `pipeline` on `stream_id`, read
        without claiming them, so that a running pipeline is not disturbed (operators'
        tools: `flowstream status`)."""
        raise CheckpointError(
            f"{self.describe()} cannot be read outside a run; use checkpoints.sqlite(path) "
            "or checkpoints.dynamodb(table)"
        )

    async def overwrite(
        self, pipeline: str, stream_id: str, positions: Mapping[str, str | None]
    ) -> None:
        """Set the positions of `pipeline` on `stream_id` as given, backwards too; None
        deletes a shard's checkpoint (the shard then starts where the source's `start`
        says). The operator's deliberate move (`flowstream checkpoints`), not the
        runtime's save: raises `CheckpointError` while a live process holds the claim,
        whose next save would undo it, and writes nothing then."""
        raise CheckpointError(
            f"{self.describe()} cannot be changed outside a run; use checkpoints.sqlite(path) "
            "or checkpoints.dynamodb(table)"
        )
