"""Checkpoints resume where the last run stopped; stopping never loses or skips a batch.

Graceful stop at every stage of a run: a stop (cancel, `stop=` event) must return promptly
wherever the run is -- opening the source, listing shards, reading, processing with an
async map, inside a sink call, waiting to retry, writing a shard's end -- and leave the
checkpoints exactly at what every sink acknowledged, with the report saying how each shard
was left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import SHARD_END, CheckpointSession, CheckpointStore
from flowstream.checkpoints.sqlite import SqliteCheckpoints
from flowstream.policy import FailurePolicy
from flowstream.runtime.engine import run_pipeline
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.sources.base import Position, Shard, ShardReader, Source, StreamSession
from flowstream.testing import MemoryStream


async def saved(store: CheckpointStore, stream: MemoryStream, name: str) -> dict[str, str]:
    async with store.open(name, stream.stream_arn) as session:
        return await session.load()


def keys(items: list[Any]) -> list[str]:
    return [r.keys["pk"] for r in items]


class RunInBackground:
    """`tg.start_soon(RunInBackground(pipeline, **options))` runs it and keeps its report."""

    def __init__(self, pipeline: fs.Pipeline[Any], **options: Any) -> None:
        self.pipeline = pipeline
        self.options = options
        self.report: fs.RunReport | None = None

    async def __call__(self) -> None:
        self.report = await self.pipeline.run(**self.options)


class _HangingOpenSource(Source):
    """A source that never manages to connect (a DNS or network problem)."""

    def __init__(self) -> None:
        self.opening = anyio.Event()

    def describe(self) -> str:
        return "hanging"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        self.opening.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover
        yield


class _SlowListing(Source):
    """Wraps a MemoryStream; every listing after the first hangs (a throttled API)."""

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream
        self.listings = 0
        self.hanging = anyio.Event()

    def describe(self) -> str:
        return "slow listing"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        async with self.stream.open() as inner:
            yield _SlowListingSession(self, inner)


class _SlowListingSession(StreamSession):
    discovery_interval = 0.01

    def __init__(self, source: _SlowListing, inner: StreamSession) -> None:
        self.source = source
        self.inner = inner
        self.stream_id = inner.stream_id

    async def list_shards(self) -> Sequence[Shard]:
        self.source.listings += 1
        if self.source.listings > 1:
            self.source.hanging.set()
            await anyio.sleep_forever()
        return await self.inner.list_shards()

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return self.inner.reader(shard, start)


class TestResume:
    async def test_a_second_run_delivers_only_new_records(self, tmp_path: Path) -> None:
        stream = MemoryStream(page_size=16)
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(100):
            stream.put(shards[n % 4], "INSERT", {"pk": str(n)})
        store = checkpoints.sqlite(tmp_path / "state.db")
        pipeline = fs.Pipeline(stream, name="resume").map(lambda r: r.keys["pk"])

        first = sinks.collect()
        await pipeline.to(first).run(checkpoints=store, drain=True)
        assert sorted(first.items, key=int) == [str(n) for n in range(100)]
        positions = await saved(store, stream, "resume")
        assert positions == {s: stream.records(s)[-1].sequence_number for s in shards}

        children = stream.split(shards[0])
        for n in range(100, 140):
            stream.put([*shards[1:], *children][n % 5], "INSERT", {"pk": str(n)})

        # A new store object on the same file: as after a restart.
        second = sinks.collect()
        report = await pipeline.to(second).run(
            checkpoints=checkpoints.sqlite(tmp_path / "state.db"), drain=True
        )
        assert sorted(second.items, key=int) == [str(n) for n in range(100, 140)]
        assert report.read == 40

        third = sinks.collect()
        report = await pipeline.to(third).run(checkpoints=store, drain=True)
        assert third.items == []
        assert report.shards[shards[0]].state is fs.ShardState.SKIPPED

    async def test_pipelines_keep_their_own_checkpoints(self, tmp_path: Path) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        store = checkpoints.sqlite(tmp_path / "state.db")
        a, b = sinks.collect(), sinks.collect()
        await fs.Pipeline(stream, name="a").to(a).run(checkpoints=store, drain=True)
        await fs.Pipeline(stream, name="b").to(b).run(checkpoints=store, drain=True)
        assert len(a.items) == len(b.items) == 1


class TestGracefulStop:
    @pytest.mark.parametrize("finish", [True, False], ids=["finishes-in-grace", "abandoned"])
    async def test_cancel_during_a_sink_call(self, tmp_path: Path, finish: bool) -> None:
        stream = MemoryStream(page_size=10)
        shard = stream.add_shard()
        for n in range(30):
            stream.put(shard, "INSERT", {"pk": str(n)})
        records = stream.records(shard)
        store = checkpoints.sqlite(tmp_path / "state.db", flush_interval=60)
        delivered: list[str] = []
        in_flight = anyio.Event()
        release = anyio.Event()

        async def blocks_second_page(values: list[Any]) -> None:
            if values[0].keys["pk"] == "10":
                in_flight.set()
                await release.wait()
            delivered.extend(v.keys["pk"] for v in values)

        pipeline = fs.Pipeline(stream, name="stop").to(sinks.callback(blocks_second_page))
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await pipeline.run(checkpoints=store, grace_period=0.5 if not finish else 30)

            tg.start_soon(run)
            with anyio.fail_after(10):
                await in_flight.wait()
            tg.cancel_scope.cancel()
            if finish:
                release.set()

        positions = await saved(store, stream, "stop")
        if finish:
            # the in-flight page was delivered and checkpointed; the next one was not read
            assert delivered == [str(n) for n in range(20)]
            assert positions == {shard: records[19].sequence_number}
        else:
            # the in-flight page was abandoned: not checkpointed, so it is read again
            assert delivered == [str(n) for n in range(10)]
            assert positions == {shard: records[9].sequence_number}

        release.set()
        replay = sinks.collect()
        await fs.Pipeline(stream, name="stop").to(replay).run(checkpoints=store, drain=True)
        start = 20 if finish else 10
        assert [r.keys["pk"] for r in replay.items] == [str(n) for n in range(start, 30)]

    async def test_stop_event_returns_the_report(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        out = sinks.collect()
        stop = anyio.Event()
        result: list[fs.RunReport] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                result.append(await fs.Pipeline(stream).to(out).run(stop=stop))

            tg.start_soon(run)
            stream.put(shard, "INSERT", {"pk": "a"})
            await wait_until(lambda: len(out.items) == 1)
            stop.set()
        (report,) = result
        assert report.stop_reason == "stop requested"
        assert report.delivered == 1
        assert report.shards[shard].state is fs.ShardState.PAUSED
        assert report.shards[shard].checkpoint == stream.records(shard)[0].sequence_number


class TestStopBeforeReading:
    async def test_cancel_while_the_source_is_opening_returns_at_once(self) -> None:
        # The engine is shielded so that in-flight batches can finish; a source that
        # hangs while connecting used to make the cancellation wait forever.
        source = _HangingOpenSource()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(fs.Pipeline(source).to(sinks.collect()).run)
                await source.opening.wait()
                tg.cancel_scope.cancel()

    async def test_stop_event_while_the_source_is_opening_returns_the_report(self) -> None:
        source = _HangingOpenSource()
        stop = anyio.Event()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                run = RunInBackground(fs.Pipeline(source).to(sinks.collect()), stop=stop)
                tg.start_soon(run)
                await source.opening.wait()
                stop.set()
        assert run.report is not None
        assert run.report.stop_reason == "stop requested"
        assert run.report.shards == {}

    async def test_stop_set_before_the_run_reads_nothing(self, tmp_path: Path) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        stop = anyio.Event()
        stop.set()
        out = sinks.collect()
        store = checkpoints.sqlite(tmp_path / "state.db")
        with anyio.fail_after(5):
            report = await fs.Pipeline(stream, name="p").to(out).run(stop=stop, checkpoints=store)
        assert report.stop_reason == "stop requested"
        assert out.items == []
        assert report.read == 0
        assert await saved(store, stream, "p") == {}

    async def test_stop_while_listing_shards_does_not_wait_for_the_listing(
        self, tmp_path: Path
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        source = _SlowListing(stream)
        out = sinks.collect()
        store = checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600)
        stop = anyio.Event()
        with anyio.fail_after(5):  # well under the grace period
            async with anyio.create_task_group() as tg:
                pipeline = fs.Pipeline(source, name="p").to(out)
                run = RunInBackground(pipeline, stop=stop, checkpoints=store, grace_period=60)
                tg.start_soon(run)
                await wait_until(lambda: len(out.items) == 1)
                await source.hanging.wait()
                stop.set()
        assert run.report is not None
        assert run.report.shards[shard].state is fs.ShardState.PAUSED
        assert await saved(store, stream, "p") == {shard: stream.records(shard)[0].sequence_number}


class TestStopWhileWorking:
    async def test_stop_during_an_async_map_leaves_the_page_for_the_next_run(
        self, tmp_path: Path
    ) -> None:
        stream = MemoryStream(page_size=3)
        shard = stream.add_shard()
        for n in range(9):
            stream.put(shard, "INSERT", {"pk": str(n)})
        in_map = anyio.Event()

        async def hangs_on_4(record: fs.Record) -> fs.Record:
            if record.keys["pk"] == "4":
                in_map.set()
                await anyio.sleep_forever()
            return record

        out = sinks.collect()
        store = checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600)
        stop = anyio.Event()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                pipeline = fs.Pipeline(stream, name="p").map(hangs_on_4).to(out)
                run = RunInBackground(pipeline, stop=stop, checkpoints=store, grace_period=60)
                tg.start_soon(run)
                await in_map.wait()
                await wait_until(lambda: len(out.items) == 3)
                stop.set()
        assert run.report is not None
        assert run.report.shards[shard].state is fs.ShardState.PAUSED
        assert keys(out.items) == ["0", "1", "2"]
        records = stream.records(shard)
        assert await saved(store, stream, "p") == {shard: records[2].sequence_number}

        again = sinks.collect()
        await fs.Pipeline(stream, name="p").to(again).run(checkpoints=store, drain=True)
        assert keys(again.items) == [str(n) for n in range(3, 9)]

    async def test_stop_while_a_sink_waits_to_retry_returns_at_once(self) -> None:
        # A sink that keeps failing one item, with a long backoff: the stop must not wait
        # for the retries (nor for the grace period), and the frontier goes up to the
        # item before the failing one, which every sink acknowledged.
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(5):
            stream.put(shard, "INSERT", {"pk": str(n)})
        calls: list[list[str]] = []

        class RefusesTwo(SimpleSink):
            def describe(self) -> str:
                return "refuses-2"

            async def send(self, batch: Batch) -> SendResult | None:
                calls.append(keys(batch.values))
                return SendResult(
                    {i: ConnectionError("no") for i, k in enumerate(calls[-1]) if k == "2"}
                )

        store = checkpoints.memory()
        stop = anyio.Event()
        reports: list[fs.RunReport] = []

        async def run() -> None:
            plan = fs.Pipeline(stream, name="p").to(RefusesTwo())
            reports.append(
                await run_pipeline(
                    plan.compile(),
                    stream,
                    name="p",
                    checkpoints=store,
                    drain=False,
                    grace_period=60,
                    handle_signals=False,
                    stop=stop,
                    policy=FailurePolicy(retries=5, backoff=(30.0, 30.0)),
                )
            )

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_until(lambda: len(calls) == 1)
                stop.set()
        (report,) = reports
        stats = report.shards[shard]
        assert stats.state is fs.ShardState.PAUSED
        assert stats.failed == 0
        assert stats.stopped_at is None
        records = stream.records(shard)
        assert store.positions("p", stream.stream_arn) == {shard: records[1].sequence_number}

        again = sinks.collect()
        await fs.Pipeline(stream, name="p").to(again).run(checkpoints=store, drain=True)
        assert keys(again.items) == ["2", "3", "4"]

    async def test_stop_while_a_failing_map_waits_to_retry_keeps_the_prefix(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(4):
            stream.put(shard, "INSERT", {"pk": str(n)})
        attempts: list[str] = []

        def fails_on_2(record: fs.Record) -> fs.Record:
            if record.keys["pk"] == "2":
                attempts.append("2")
                raise ConnectionError("lookup failed")
            return record

        out = sinks.collect()
        store = checkpoints.memory()
        stop = anyio.Event()
        reports: list[fs.RunReport] = []
        pipeline = fs.Pipeline(stream, name="p").map(fails_on_2).to(out)

        async def run() -> None:
            reports.append(
                await run_pipeline(
                    pipeline.compile(),
                    stream,
                    name="p",
                    checkpoints=store,
                    drain=False,
                    grace_period=60,
                    handle_signals=False,
                    stop=stop,
                    policy=FailurePolicy(retries=5, backoff=(30.0, 30.0)),
                )
            )

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_until(lambda: len(out.items) == 2 and len(attempts) == 1)
                stop.set()
        (report,) = reports
        assert report.shards[shard].state is fs.ShardState.PAUSED
        assert keys(out.items) == ["0", "1"]
        records = stream.records(shard)
        assert store.positions("p", stream.stream_arn) == {shard: records[1].sequence_number}

    async def test_abandoned_shards_are_reported_interrupted_and_no_task_is_left(self) -> None:
        stream = MemoryStream()
        stuck, free = stream.add_shard(), stream.add_shard()
        stream.put(stuck, "INSERT", {"pk": "s"})
        stream.put(free, "INSERT", {"pk": "f"})
        entered = anyio.Event()
        out = sinks.collect()

        async def never_returns_for_stuck(values: list[Any]) -> None:
            if values[0].shard_id == stuck:
                entered.set()
                await anyio.sleep_forever()

        stop = anyio.Event()
        before = asyncio.all_tasks()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                pipeline = fs.Pipeline(stream).to(sinks.callback(never_returns_for_stuck), out)
                run = RunInBackground(pipeline, stop=stop, grace_period=0.05)
                tg.start_soon(run)
                await entered.wait()
                await wait_until(lambda: "f" in keys(out.items))
                stop.set()
        assert asyncio.all_tasks() == before
        report = run.report
        assert report is not None
        # the abandoned shard used to be left "running" in the report
        assert report.shards[stuck].state is fs.ShardState.INTERRUPTED
        assert report.shards[stuck].checkpoint is None
        assert report.shards[free].state is fs.ShardState.PAUSED  # stopped within the grace
        assert report.shards[free].checkpoint == stream.records(free)[0].sequence_number


class _HoldsShardEnd(CheckpointStore):
    """A real sqlite store whose first SHARD_END save waits: until released, or (with
    `cancellable`) until it is cancelled."""

    def __init__(self, inner: SqliteCheckpoints, *, cancellable: bool) -> None:
        self.inner = inner
        self.flush_interval = inner.flush_interval
        self.cancellable = cancellable
        self.holding = anyio.Event()
        self.release = anyio.Event()
        self.held = False

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        async with self.inner.open(pipeline, stream_id) as session:
            yield _HoldingSession(self, session)


class _HoldingSession(CheckpointSession):
    def __init__(self, store: _HoldsShardEnd, inner: CheckpointSession) -> None:
        self.store = store
        self.inner = inner

    async def load(self) -> dict[str, str]:
        return await self.inner.load()

    async def save(self, positions: Mapping[str, str]) -> None:
        if SHARD_END in positions.values() and not self.store.held:
            self.store.held = True
            self.store.holding.set()
            if self.store.cancellable:
                await anyio.sleep_forever()
            await self.store.release.wait()
        await self.inner.save(positions)


class TestStopWhileAShardEndIsWritten:
    @pytest.mark.parametrize("abandoned", [False, True], ids=["written", "abandoned"])
    async def test_the_end_is_written_and_the_children_do_not_start(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, abandoned: bool
    ) -> None:
        caplog.set_level(logging.INFO, logger="flowstream")
        stream = MemoryStream()
        parent = stream.add_shard()
        stream.put(parent, "INSERT", {"pk": "p"})
        children = stream.split(parent)
        for child in children:
            stream.put(child, "INSERT", {"pk": child})
        store = _HoldsShardEnd(
            checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600), cancellable=abandoned
        )
        out = sinks.collect()
        stop = anyio.Event()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                pipeline = fs.Pipeline(stream, name="p").to(out)
                grace = 0.05 if abandoned else 60
                run = RunInBackground(pipeline, stop=stop, checkpoints=store, grace_period=grace)
                tg.start_soon(run)
                await store.holding.wait()
                stop.set()
                await wait_until(lambda: any("stopping" in r.message for r in caplog.records))
                store.release.set()
        report = run.report
        assert report is not None
        # written late (after the grace period, by the final flush) or in time: it is
        # the parent's end either way, and nothing of the children was read
        assert report.shards[parent].state is fs.ShardState.ENDED
        assert report.shards[parent].checkpoint == SHARD_END
        assert all(report.shards[c].state is fs.ShardState.PENDING for c in children)
        assert keys(out.items) == ["p"]
        assert await saved(store.inner, stream, "p") == {parent: SHARD_END}

        again = sinks.collect()
        await fs.Pipeline(stream, name="p").to(again).run(checkpoints=store.inner, drain=True)
        assert sorted(keys(again.items)) == sorted(children)
