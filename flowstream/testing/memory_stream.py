"""An in-memory, live, multi-shard DynamoDB stream that is also a source.

Records put into it get increasing sequence numbers (per shard and across the stream,
as DynamoDB's do) and are read by pipelines while they run. Shards split and close as
in the real service, so lineage can be tested without AWS.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import anyio
import msgspec

from flowstream import attrvalue
from flowstream.errors import SourceError
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
_BASE_TIME: Final = 1_700_000_000.0
_ENCODER: Final = msgspec.json.Encoder()


class _ShardData:
    __slots__ = ("closed", "parent", "records", "sequences", "shard_id", "waiters")

    def __init__(self, shard_id: str, parent: str | None) -> None:
        self.shard_id = shard_id
        self.parent = parent
        self.records: list[Record] = []
        self.sequences: list[int] = []
        self.closed = False
        self.waiters: list[anyio.Event] = []

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for event in waiters:
            event.set()


class MemoryStream(Source):
    """A live in-memory stream: `add_shard`, `put`, `split`, `close`; pass it as a
    pipeline's source. Use it from the event loop's thread (or before the loop runs).

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
        self._shards[shard_id] = _ShardData(shard_id, parent)
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
    ) -> Record:
        """Append a change to an open shard and return the record as readers see it.
        Images are Python values (encoded as DynamoDB would)."""
        shard = self._shard(shard_id)
        if shard.closed:
            raise SourceError(
                f"shard {shard_id!r} is closed; put into one of its children or an open shard"
            )
        sequence = next(self._sequence)
        dynamodb: dict[str, Any] = {
            "ApproximateCreationDateTime": _BASE_TIME + (sequence - _FIRST_SEQUENCE),
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

    # -- reading (helpers for tests) ----------------------------------------------------

    @property
    def shard_ids(self) -> list[str]:
        return list(self._shards)

    def records(self, shard_id: str | None = None) -> list[Record]:
        """Every record of one shard, or of all shards in shard order."""
        if shard_id is not None:
            return list(self._shard(shard_id).records)
        return [r for shard in self._shards.values() for r in shard.records]

    def parent_of(self, shard_id: str) -> str | None:
        return self._shard(shard_id).parent

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
        return [Shard(s.shard_id, s.parent, s.closed) for s in self._stream._shards.values()]

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
        if start.kind is PositionKind.TRIM_HORIZON:
            self._next = 0
        elif start.kind is PositionKind.LATEST:
            self._next = len(shard.records)
        else:
            assert start.sequence_number is not None
            sequence = int(start.sequence_number)
            find = bisect_left if start.kind is PositionKind.AT_SEQUENCE_NUMBER else bisect_right
            self._next = find(shard.sequences, sequence)

    async def read(self) -> Page:
        shard = self._shard
        if self._next >= len(shard.records) and not shard.closed and self._waited:
            event = anyio.Event()
            shard.waiters.append(event)
            await event.wait()
        records = shard.records[self._next : self._next + self._page_size]
        self._next += len(records)
        caught_up = self._next >= len(shard.records)
        self._waited = caught_up
        return Page(records, caught_up=caught_up, ended=caught_up and shard.closed)
