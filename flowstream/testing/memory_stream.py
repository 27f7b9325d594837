"""An in-memory, live, multi-shard DynamoDB stream that is also a source.

Records put into it get increasing sequence numbers (per shard and across the stream,
as DynamoDB's do) and are read by pipelines while they run. Shards split and close as
in the real service, so lineage can be tested without AWS.
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Final

import anyio
import msgspec

from flowstream import attrvalue
from flowstream.errors import SourceError, TrimmedDataError
from flowstream.record import EventName, Record, StreamViewType, decode_records
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

__all__ = ["MemoryStream"]

_FIRST_SEQUENCE: Final = 10**20  # 21 digits, like DynamoDB's shortest
_ENCODER: Final = msgspec.json.Encoder()


class _ShardData:
    __slots__ = (
        "closed",
        "parent",
        "records",
        "removed",
        "sequences",
        "shard_id",
        "starting_sequence",
        "trimmed",
        "waiters",
    )

    def __init__(self, shard_id: str, parent: str | None, *, starting_sequence: int = 0) -> None:
        self.shard_id = shard_id
        self.parent = parent
        self.records: list[Record] = []
        self.sequences: list[int] = []
        self.closed = False
        self.waiters: list[anyio.Event] = []
        # Records keep their index for good: the first `trimmed` of them are gone from
        # the stream (expired), and a reader positioned before index `trimmed` has lost
        # data. A removed shard (closed, everything expired) is no longer listed.
        self.trimmed = 0
        self.removed = False
        # Where the shard's numbering begins (DescribeStream's StartingSequenceNumber):
        # no later than its first record, even for a shard that has none yet.
        self.starting_sequence = starting_sequence

    def ending_sequence(self) -> str | None:
        """DescribeStream's EndingSequenceNumber: set once the shard is closed."""
        if not self.closed:
            return None
        return self.records[-1].sequence_number if self.records else str(self.starting_sequence)

    def describe(self) -> Shard:
        return Shard(
            self.shard_id,
            self.parent,
            self.closed,
            str(self.starting_sequence),
            self.ending_sequence(),
        )

    def index_of(self, position: Position) -> int:
        """The index of the first record a reader starting at `position` gets."""
        if position.kind is PositionKind.TRIM_HORIZON:
            return self.trimmed
        if position.kind is PositionKind.LATEST:
            return len(self.records)
        assert position.sequence_number is not None
        sequence = int(position.sequence_number)
        find = bisect_left if position.kind is PositionKind.AT_SEQUENCE_NUMBER else bisect_right
        return find(self.sequences, sequence)

    def check_not_trimmed(self, index: int) -> None:
        """Raise `TrimmedDataError` when a reader at `index` has lost records."""
        if index < self.trimmed:
            raise TrimmedDataError(
                f"records of shard {self.shard_id!r} up to sequence number "
                f"{self.sequences[self.trimmed - 1]} were trimmed from the stream before "
                "they were read; they are lost. Read the shard again from its trim horizon "
                "(start='trim_horizon') to go on with what is left"
            )

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for event in waiters:
            event.set()


class MemoryStream(Source):
    """A live in-memory stream: `add_shard`, `put`, `split`, `close` (and `rollover`,
    `trim`, `remove_shard` for the stream's life cycle); pass it as a pipeline's source.
    Use it from the event loop's thread (or before the loop runs).

    `page_size` caps records per read, as GetRecords' `Limit` does (1,000 at most).
    """

    def __init__(
        self,
        *,
        table: str = "memory",
        view_type: StreamViewType | str = StreamViewType.NEW_AND_OLD_IMAGES,
        start: StartSpec = "trim_horizon",
        page_size: int = 1000,
        region: str = "us-east-1",
    ) -> None:
        if page_size < 1:
            raise SourceError(f"MemoryStream(page_size={page_size}) must be at least 1")
        self.table = table
        self.view_type = StreamViewType(view_type)
        self.start = parse_start(start)
        self.page_size = page_size
        self.region = region
        self.stream_arn = (
            f"arn:aws:dynamodb:{region}:000000000000:table/{table}/stream/2026-01-01T00:00:00.000"
        )
        self._shards: dict[str, _ShardData] = {}
        self._sequence = itertools.count(_FIRST_SEQUENCE)
        self._shard_counter = itertools.count()
        self._topology_waiters: list[anyio.Event] = []

    # -- writing ------------------------------------------------------------------------

    def add_shard(self, shard_id: str | None = None, *, parent: str | None = None) -> str:
        """Add an open shard (a child of `parent` when given) and return its id."""
        if parent is not None:
            self._shard(parent)
        n = next(self._shard_counter)
        if shard_id is None:
            shard_id = f"shardId-{1_700_000_000_000 + n:020d}-{(n * 2654435761) % 2**32:08x}"
        if shard_id in self._shards:
            raise SourceError(f"MemoryStream already has a shard {shard_id!r}; pick another id")
        self._shards[shard_id] = _ShardData(
            shard_id, parent, starting_sequence=self._peek_sequence()
        )
        self._topology_changed()
        return shard_id

    def put(
        self,
        shard_id: str,
        event_name: EventName | str,
        keys: Mapping[str, Any],
        new_image: Mapping[str, Any] | None = None,
        old_image: Mapping[str, Any] | None = None,
        *,
        ttl_delete: bool = False,
        created_at: datetime | None = None,
    ) -> Record:
        """Append a change to an open shard and return the record as readers see it.
        Images are Python values (encoded as DynamoDB would). Like DynamoDB, the record
        is stamped with the time of the change rounded down to the second, unless
        `created_at` (an aware datetime) says when it happened (to test
        `max_record_age`, for example)."""
        shard = self._shard(shard_id)
        if shard.closed:
            raise SourceError(
                f"shard {shard_id!r} is closed; put into one of its children or an open shard"
            )
        sequence = next(self._sequence)
        dynamodb: dict[str, Any] = {
            "ApproximateCreationDateTime": float(int(time.time()))
            if created_at is None
            else created_at.timestamp(),
            "Keys": attrvalue.encode(keys, path="Keys"),
            "SequenceNumber": str(sequence),
            "StreamViewType": self.view_type.value,
        }
        if new_image is not None:
            dynamodb["NewImage"] = attrvalue.encode(new_image, path="NewImage")
        if old_image is not None:
            dynamodb["OldImage"] = attrvalue.encode(old_image, path="OldImage")
        wire: dict[str, Any] = {
            "eventID": f"{sequence:x}",
            "eventName": EventName(event_name).value,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "dynamodb": dynamodb,
        }
        if ttl_delete:
            wire["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
        dynamodb["SizeBytes"] = len(_ENCODER.encode(dynamodb))
        (record,) = decode_records(_ENCODER.encode({"Records": [wire]}), shard_id=shard_id)
        shard.records.append(record)
        shard.sequences.append(sequence)
        shard.notify()
        return record

    def split(self, shard_id: str) -> tuple[str, str]:
        """Close `shard_id` and open two children of it; returns their ids."""
        if self._shard(shard_id).closed:
            raise SourceError(
                f"shard {shard_id!r} is closed and cannot split again; split one of its "
                "children or another open shard"
            )
        self.close(shard_id)
        return self.add_shard(parent=shard_id), self.add_shard(parent=shard_id)

    def close(self, shard_id: str) -> None:
        """Close a shard: readers get what it holds, then its end."""
        shard = self._shard(shard_id)
        if not shard.closed:
            shard.closed = True
            shard.notify()
            self._topology_changed()

    def rollover(self) -> dict[str, str]:
        """Close every open shard and give each exactly one child, as DynamoDB's
        ~4-hourly rollover does; returns ``{old_shard_id: new_shard_id}``."""
        open_ids = [s.shard_id for s in self._shards.values() if not s.closed]
        children: dict[str, str] = {}
        for shard_id in open_ids:
            self.close(shard_id)
            children[shard_id] = self.add_shard(parent=shard_id)
        return children

    def trim(self, shard_id: str, count: int) -> None:
        """Expire the first `count` records of a shard (counted from its first record
        ever, so calling again with a larger count trims more), as the stream's 24-hour
        retention does. Readers positioned before them raise `TrimmedDataError`."""
        shard = self._shard(shard_id)
        if not 0 <= count <= len(shard.records):
            raise SourceError(
                f"cannot trim {count} records of shard {shard_id!r}: it holds "
                f"{len(shard.records)}; pass a count from 0 to {len(shard.records)}"
            )
        shard.trimmed = max(shard.trimmed, count)

    def remove_shard(self, shard_id: str) -> None:
        """A closed shard whose records have all expired: every record is trimmed and the
        shard is no longer listed (its children still name it as their parent)."""
        shard = self._shard(shard_id)
        if not shard.closed:
            raise SourceError(
                f"shard {shard_id!r} is open; only closed shards expire from the stream. "
                "close() or split() it first"
            )
        if not shard.removed:
            shard.trimmed = len(shard.records)
            shard.removed = True
            self._topology_changed()

    # -- reading (helpers for tests) ----------------------------------------------------

    @property
    def shard_ids(self) -> list[str]:
        """The listed shards (removed ones are not), in creation order."""
        return [s.shard_id for s in self._listed_shards()]

    def records(self, shard_id: str | None = None) -> list[Record]:
        """Every record still in one shard, or in all shards in shard order (trimmed
        records are gone)."""
        if shard_id is not None:
            shard = self._shard(shard_id)
            return shard.records[shard.trimmed :]
        return [r for shard in self._shards.values() for r in shard.records[shard.trimmed :]]

    def parent_of(self, shard_id: str) -> str | None:
        return self._shard(shard_id).parent

    def is_closed(self, shard_id: str) -> bool:
        """True once the shard is closed (split, rolled over or closed)."""
        return self._shard(shard_id).closed

    # -- Source ---------------------------------------------------------------------------

    def describe(self) -> str:
        return f"MemoryStream({self.table}, {len(self._shards)} shards)"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._session()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[StreamSession]:
        yield _MemorySession(self)

    def _shard(self, shard_id: str) -> _ShardData:
        try:
            return self._shards[shard_id]
        except KeyError:
            raise SourceError(
                f"MemoryStream has no shard {shard_id!r}; add it with add_shard() first"
            ) from None

    def _listed_shards(self) -> list[_ShardData]:
        return [s for s in self._shards.values() if not s.removed]

    def _peek_sequence(self) -> int:
        """The sequence number the next record will get, without using it up."""
        value = next(self._sequence)
        self._sequence = itertools.count(value)
        return value

    def _topology_changed(self) -> None:
        waiters, self._topology_waiters = self._topology_waiters, []
        for event in waiters:
            event.set()


class _MemorySession(StreamSession):
    discovery_interval = 1.0

    def __init__(self, stream: MemoryStream) -> None:
        self._stream = stream
        self.stream_id = stream.stream_arn

    async def list_shards(self) -> Sequence[Shard]:
        return [s.describe() for s in self._stream._listed_shards()]

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return _MemoryReader(self._stream._shard(shard.shard_id), start, self._stream.page_size)

    async def wait_for_shards(self, max_wait: float) -> None:
        event = anyio.Event()
        waiters = self._stream._topology_waiters
        waiters.append(event)
        try:
            with anyio.move_on_after(max_wait):
                await event.wait()
        finally:
            # A long run with no topology change would otherwise pile up one event per wait.
            if event in waiters:
                waiters.remove(event)


class _MemoryReader(ShardReader):
    def __init__(self, shard: _ShardData, start: Position, page_size: int) -> None:
        self._shard = shard
        self._page_size = page_size
        self._waited = False
        self._next = shard.index_of(start)

    async def read(self) -> Page:
        shard = self._shard
        if self._next >= len(shard.records) and not shard.closed and self._waited:
            event = anyio.Event()
            shard.waiters.append(event)
            try:
                await event.wait()
            finally:
                # A reader cancelled while waiting (a stopped run) leaves no event behind.
                if event in shard.waiters:
                    shard.waiters.remove(event)
        shard.check_not_trimmed(self._next)
        records = shard.records[self._next : self._next + self._page_size]
        self._next += len(records)
        caught_up = self._next >= len(shard.records)
        self._waited = caught_up
        return Page(records, caught_up=caught_up, ended=caught_up and shard.closed)
