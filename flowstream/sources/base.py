"""The source protocol: what the runtime needs from a stream.

A `Source` is configuration; `Source.open()` gives a `StreamSession` for one run, which
lists shards and opens a `ShardReader` per shard. A reader returns `Page`s of records in
sequence order and paces its own polling (a live source waits before polling again after
a page that found nothing new), so the runtime just reads.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, TypeAlias

import anyio
import msgspec

from flowstream.errors import SourceError
from flowstream.record import Record

__all__ = [
    "Page",
    "Position",
    "PositionKind",
    "Shard",
    "ShardReader",
    "Source",
    "StartSpec",
    "StreamSession",
    "parse_start",
]


class PositionKind(enum.StrEnum):
    """Where in a shard reading begins (the GetShardIterator iterator types)."""

    TRIM_HORIZON = "TRIM_HORIZON"
    LATEST = "LATEST"
    AT_SEQUENCE_NUMBER = "AT_SEQUENCE_NUMBER"
    AFTER_SEQUENCE_NUMBER = "AFTER_SEQUENCE_NUMBER"


class Position(msgspec.Struct, frozen=True):
    """A place to start reading a shard: a kind, and a sequence number for AT/AFTER."""

    kind: PositionKind
    sequence_number: str | None = None

    @classmethod
    def after(cls, sequence_number: str) -> Position:
        return cls(PositionKind.AFTER_SEQUENCE_NUMBER, sequence_number)

    @classmethod
    def at(cls, sequence_number: str) -> Position:
        return cls(PositionKind.AT_SEQUENCE_NUMBER, sequence_number)


StartSpec: TypeAlias = Literal["trim_horizon", "latest"] | Position

TRIM_HORIZON = Position(PositionKind.TRIM_HORIZON)
LATEST = Position(PositionKind.LATEST)


def parse_start(start: StartSpec) -> Position:
    """Turn the `start=` option of a source into a `Position`."""
    if isinstance(start, Position):
        return start
    if start == "trim_horizon":
        return TRIM_HORIZON
    if start == "latest":
        return LATEST
    raise SourceError(
        f"start={start!r} is not a start position; use 'trim_horizon' (the oldest record "
        "still in the stream), 'latest' (only new records), or Position.at(sequence_number)"
    )


class Shard(msgspec.Struct, frozen=True):
    """A shard as the stream describes it. `closed` shards have an end: once read to it,
    their children may be read. The sequence number range is known for DynamoDB shards
    (the ending one only once closed)."""

    shard_id: str
    parent_shard_id: str | None = None
    closed: bool = False
    starting_sequence_number: str | None = None
    ending_sequence_number: str | None = None


class Page(msgspec.Struct, gc=False):
    """What one read of a shard returned.

    `caught_up`: the reader holds that nothing more was there to read when this page was
    taken (a drain ends the shard there). A reader that cannot know for sure says so only
    when it can defend it: the DynamoDB reader at its second empty page in a row.
    `ended`: the shard is closed and read to its end; no read follows.
    `note`: something the run report should tell (e.g. records skipped as trimmed).
    """

    records: list[Record]
    caught_up: bool = False
    ended: bool = False
    note: str | None = None


class ShardReader(ABC):
    """Reads one shard in sequence order from a start position."""

    @abstractmethod
    async def read(self) -> Page:
        """Return the next page. May wait (polling pace) but returns an empty
        `caught_up` page rather than waiting forever on a first read with nothing new."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook
        """Release what the reader holds."""


class StreamSession(ABC):
    """One run's view of a stream."""

    #: Identifies the stream in checkpoints (the stream ARN for DynamoDB).
    stream_id: str
    #: Seconds between shard discoveries while a run goes on.
    discovery_interval: float = 10.0
    #: True when no shard can appear and every shard ends (a file), so a run that is
    #: not draining still returns once everything is read.
    finite: bool = False

    @abstractmethod
    async def list_shards(self) -> Sequence[Shard]:
        """Every shard of the stream that still holds records, parents included."""

    async def children_of(self, shard_id: str) -> Sequence[Shard] | None:
        """The children of a shard that just ended, looked up cheaply; None when the
        source has no cheaper way than `list_shards()`."""
        return None

    @abstractmethod
    def reader(self, shard: Shard, start: Position) -> ShardReader:
        """Open a reader of `shard` from `start`."""

    async def wait_for_shards(self, max_wait: float) -> None:
        """Return when the shard list may have changed, or after `max_wait` seconds."""
        await anyio.sleep(max_wait)


class Source(ABC):
    """Where records come from; `open()` starts a session for one run."""

    #: Where shards with no checkpoint begin on the first discovery of a run.
    start: Position = TRIM_HORIZON

    @abstractmethod
    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        """Open a session on the stream for one run."""

    @abstractmethod
    def describe(self) -> str:
        """A short, human-readable description for plans and reports."""
