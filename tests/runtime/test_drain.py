"""`run(drain=True)` processes what was in the stream when the run started and returns,
also on a table that keeps being written to; what it leaves is read by the next run.

Busy writers put a record into every shard every 3 ms while the drain runs, over both
sources: a `MemoryStream` and `sources.dynamodb` over LocalStreamsServer (moto's busy
table is in tests/e2e/test_moto_dynamodb.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks, sources
from flowstream.checkpoints.base import CheckpointStore
from flowstream.sources.base import Source
from flowstream.testing import LocalStreamsServer, MemoryStream

#: A drain on a busy table ends at the first record of the second after its start.
RUN_TIMEOUT = 15.0
SHARDS = 4


@asynccontextmanager
async def busy_writer(stream: MemoryStream, shards: list[str]) -> AsyncIterator[None]:
    """Puts one record into every shard every 3 ms until the block ends."""

    async def write() -> None:
        n = 0
        while True:
            for shard in shards:
                stream.put(shard, "INSERT", {"pk": f"{shard[-8:]}#{n}"}, {"n": n})
            n += 1
            await anyio.sleep(0.003)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        yield
        tg.cancel_scope.cancel()


async def drain(source: Source, store: CheckpointStore) -> tuple[list[fs.Record], fs.RunReport]:
    out = sinks.collect()
    with anyio.fail_after(RUN_TIMEOUT):
        report = await fs.Pipeline(source, name="drain").to(out).run(checkpoints=store, drain=True)
    return out.records, report


def check_cut(stream: MemoryStream, got: list[fs.Record], report: fs.RunReport) -> None:
    """Each shard's records came as an unbroken run from where the last run stopped,
    none created after the run started, and the checkpoint is the last of them."""
    assert report.started is not None
    for record in got:
        created = record.approximate_creation_time
        assert created is not None
        assert created <= report.started
    by_shard: dict[str, list[str]] = {}
    for record in got:
        by_shard.setdefault(record.shard_id, []).append(record.sequence_number)
    for shard_id, numbers in by_shard.items():
        every = [r.sequence_number for r in stream.records(shard_id)]
        first = every.index(numbers[0])
        assert numbers == every[first : first + len(numbers)]
        assert report.shards[shard_id].checkpoint == numbers[-1]
    assert report.stop_reason == "drained"
    assert {s.state for s in report.shards.values()} == {fs.ShardState.CAUGHT_UP}


@pytest.fixture
async def served() -> AsyncIterator[tuple[MemoryStream, LocalStreamsServer]]:
    stream = MemoryStream(table="Users")
    async with LocalStreamsServer(stream) as server:
        yield stream, server


def local_source(server: LocalStreamsServer) -> Source:
    return sources.dynamodb(
        stream_arn=server.stream_arn,
        endpoint_url=server.endpoint_url,
        idle_interval=0.02,
        max_polls_per_second=200.0,
    )


class TestBusyTable:
    @pytest.mark.parametrize("over", ["memory_stream", "local_streams_server"])
    async def test_returns_having_processed_everything_present_at_its_start(
        self, over: str, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shards = [stream.add_shard() for _ in range(SHARDS)]
        source: Source = stream if over == "memory_stream" else local_source(server)
        store = checkpoints.memory()
        async with busy_writer(stream, shards):
            await wait_until(lambda: len(stream.records()) >= 400)
            present = [r.sequence_number for r in stream.records()]
            first, report = await drain(source, store)
            numbers = {r.sequence_number for r in first}
            assert set(present) <= numbers
            check_cut(stream, first, report)
            # the writer went on: the next run starts just after this one's checkpoints
            second, report = await drain(source, store)
            # both returned while the writer goes on
            await wait_until(lambda: len(stream.records()) > len(first) + len(second))
        check_cut(stream, second, report)
        assert numbers.isdisjoint(r.sequence_number for r in second)
        for shard in shards:
            every = [r.sequence_number for r in stream.records(shard)]
            both = [r.sequence_number for r in [*first, *second] if r.shard_id == shard]
            assert both == every[: len(both)]

    async def test_a_record_written_after_the_start_is_left_for_the_next_run(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        """A shard whose first unread record is newer than the start drains with nothing
        processed, and its checkpoint stays where it was."""
        stream, server = served
        shard = stream.add_shard()
        old = stream.put(shard, "INSERT", {"pk": "old"})
        store = checkpoints.memory()
        got, _ = await drain(local_source(server), store)
        assert [r.sequence_number for r in got] == [old.sequence_number]

        in_a_minute = datetime.now(UTC) + timedelta(minutes=1)
        stream.put(shard, "INSERT", {"pk": "new"}, created_at=in_a_minute)
        got, report = await drain(local_source(server), store)
        assert got == []
        assert report.shards[shard].state is fs.ShardState.CAUGHT_UP
        assert report.shards[shard].checkpoint == old.sequence_number


class TestEmptyPages:
    async def test_one_empty_page_with_records_behind_it_does_not_end_the_drain(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        written = [stream.put(shard, "INSERT", {"pk": str(n)}) for n in range(10)]
        server.inject("empty_page", shard_id=shard, times=1)
        got, report = await drain(local_source(server), checkpoints.memory())
        assert [r.sequence_number for r in got] == [r.sequence_number for r in written]
        assert report.shards[shard].state is fs.ShardState.CAUGHT_UP

    async def test_what_an_early_end_leaves_is_read_by_the_next_run(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        """Empty pages in a row end a drain (the documented guard); nothing is skipped:
        the checkpoint stays before the unread records."""
        stream, server = served
        shard = stream.add_shard()
        written = [stream.put(shard, "INSERT", {"pk": str(n)}) for n in range(10)]
        server.inject("empty_page", shard_id=shard, times=2)
        store = checkpoints.memory()
        got, report = await drain(local_source(server), store)
        assert got == []
        assert report.shards[shard].checkpoint is None
        got, _ = await drain(local_source(server), store)
        assert [r.sequence_number for r in got] == [r.sequence_number for r in written]

    async def test_an_idle_shard_drains_after_two_polls(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        got, report = await drain(local_source(server), checkpoints.memory())
        assert got == []
        assert report.shards[shard].state is fs.ShardState.CAUGHT_UP
        assert server.calls["GetRecords", shard] == 2
