"""Review: errors that end a run end it promptly, close what was opened, and keep what
was acknowledged; errors of one shard stay with that shard."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import CheckpointSession, CheckpointStore
from flowstream.checkpoints.sqlite import SqliteCheckpoints
from flowstream.errors import SinkError, SourceError
from flowstream.policy import FailurePolicy
from flowstream.runtime.engine import run_pipeline
from flowstream.sinks.base import Sink, SinkWriter
from flowstream.sources.base import Position, Shard, ShardReader, Source, StreamSession
from flowstream.testing import MemoryStream


def keys(items: list[Any]) -> list[str]:
    return [r.keys["pk"] for r in items]


class _BreakingStore(CheckpointStore):
    """A real sqlite store whose saves fail from the `fail_from`-th on."""

    def __init__(self, inner: SqliteCheckpoints, fail_from: int) -> None:
        self.inner = inner
        self.flush_interval = inner.flush_interval
        self.fail_from = fail_from
        self.saves = 0
        self.closed = False

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        async with self.inner.open(pipeline, stream_id) as session:
            try:
                yield _BreakingSession(self, session)
            finally:
                self.closed = True


class _BreakingSession(CheckpointSession):
    def __init__(self, store: _BreakingStore, inner: CheckpointSession) -> None:
        self.store = store
        self.inner = inner

    async def load(self) -> dict[str, str]:
        return await self.inner.load()

    async def save(self, positions: Mapping[str, str]) -> None:
        self.store.saves += 1
        if self.store.saves >= self.store.fail_from:
            raise OSError("disk full")
        await self.inner.save(positions)


class TestCheckpointStoreFailures:
    @pytest.mark.parametrize("drain", [True, False], ids=["drain", "live"])
    @pytest.mark.parametrize("interval", [0.0, 0.01], ids=["each-advance", "interval"])
    async def test_a_failing_save_raises_checkpoint_error_promptly(
        self, tmp_path: Path, drain: bool, interval: float
    ) -> None:
        stream = MemoryStream(page_size=1)
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(20):
            stream.put(shards[n % 4], "INSERT", {"pk": str(n)})
        inner = checkpoints.sqlite(tmp_path / "state.db", flush_interval=interval)
        store = _BreakingStore(inner, fail_from=1)
        with anyio.fail_after(5), pytest.raises(fs.CheckpointError, match="disk full"):
            await (
                fs.Pipeline(stream, name="p")
                .to(sinks.collect())
                .run(checkpoints=store, drain=drain)
            )
        assert store.closed

    async def test_a_save_failing_at_the_last_flush_is_not_swallowed(self, tmp_path: Path) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        store = _BreakingStore(
            checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600), fail_from=1
        )
        out = sinks.collect()
        stop = anyio.Event()
        errors: list[BaseException] = []

        async def run() -> None:
            try:
                await fs.Pipeline(stream, name="p").to(out).run(checkpoints=store, stop=stop)
            except fs.CheckpointError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_until(lambda: len(out.items) == 1)
                stop.set()
        (error,) = errors
        assert "disk full" in str(error)

    async def test_a_save_failing_while_cancelled_is_logged(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Cancelling the run re-raises the cancellation; the checkpoint error that came
        # with the last flush used to vanish without a trace.
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        store = _BreakingStore(
            checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600), fail_from=1
        )
        out = sinks.collect()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                run = fs.Pipeline(stream, name="p").to(out).run
                tg.start_soon(functools.partial(run, checkpoints=store))
                await wait_until(lambda: len(out.items) == 1)
                tg.cancel_scope.cancel()
        (record,) = [r for r in caplog.records if "failed while stopping" in r.message]
        assert "CheckpointError" in record.message
        assert "disk full" in record.message


class _Listing(Source):
    """Wraps a MemoryStream; listing fails from the `fail_from`-th time on, once
    `ready` is set."""

    def __init__(self, stream: MemoryStream, fail_from: int) -> None:
        self.stream = stream
        self.fail_from = fail_from
        self.listings = 0
        self.ready = anyio.Event()

    def describe(self) -> str:
        return "listing"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        async with self.stream.open() as inner:
            yield _ListingSession(self, inner)


class _ListingSession(StreamSession):
    discovery_interval = 0.01

    def __init__(self, source: _Listing, inner: StreamSession) -> None:
        self.source = source
        self.inner = inner
        self.stream_id = inner.stream_id

    async def list_shards(self) -> Sequence[Shard]:
        self.source.listings += 1
        if self.source.listings >= self.source.fail_from:
            await self.source.ready.wait()
            raise SourceError("stream is gone")
        return await self.inner.list_shards()

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return self.inner.reader(shard, start)


class TestSourceFailures:
    async def test_a_failing_first_listing_ends_the_run(self, tmp_path: Path) -> None:
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", {"pk": "a"})
        source = _Listing(stream, fail_from=1)
        source.ready.set()
        store = _BreakingStore(checkpoints.sqlite(tmp_path / "state.db"), fail_from=10**9)
        with anyio.fail_after(5), pytest.raises(SourceError, match="stream is gone"):
            await fs.Pipeline(source, name="p").to(sinks.collect()).run(checkpoints=store)
        assert store.closed

    async def test_a_failing_later_listing_ends_the_run_keeping_what_was_acknowledged(
        self, tmp_path: Path
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        source = _Listing(stream, fail_from=2)
        store = checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600)
        out = sinks.collect()

        def acknowledge(values: list[Any]) -> None:
            out.items.extend(values)
            source.ready.set()

        pipeline = fs.Pipeline(source, name="p").to(sinks.callback(acknowledge))
        with anyio.fail_after(5), pytest.raises(SourceError, match="stream is gone"):
            await pipeline.run(checkpoints=store)
        assert keys(out.items) == ["a"]
        async with store.open("p", stream.stream_arn) as session:
            assert await session.load() == {shard: stream.records(shard)[0].sequence_number}


class _Unopenable(Sink):
    def describe(self) -> str:
        return "unopenable"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        raise SinkError("unopenable: connection refused")
        yield  # pragma: no cover


class TestSinkAndUserFunctionFailures:
    async def test_a_sink_that_cannot_open_fails_the_run_and_closes_the_store(
        self, tmp_path: Path
    ) -> None:
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", {"pk": "a"})
        store = _BreakingStore(checkpoints.sqlite(tmp_path / "state.db"), fail_from=10**9)
        first = sinks.collect()
        with anyio.fail_after(5), pytest.raises(SinkError, match="connection refused"):
            await (
                fs.Pipeline(stream, name="p")
                .to(first, _Unopenable())
                .run(checkpoints=store, drain=True)
            )
        assert store.closed
        assert first.items == []

    async def test_an_async_route_predicate_that_raises_stops_its_shard_only(self) -> None:
        stream = MemoryStream()
        bad, good = stream.add_shard(), stream.add_shard()
        for shard in (bad, good):
            for n in range(3):
                stream.put(shard, "INSERT", {"pk": f"{shard}#{n}"})
        poison = stream.records(bad)[1]

        async def is_poison(record: fs.Record) -> bool:
            await anyio.lowlevel.checkpoint()
            if record == poison:
                raise LookupError("no such route")
            return False

        out = sinks.collect()
        pipeline = fs.Pipeline(stream).route(fs.when(is_poison, out), otherwise=out)
        with pytest.raises(fs.ShardStoppedError) as caught:
            await run_pipeline(
                pipeline.compile(),
                stream,
                name="p",
                checkpoints=None,
                drain=True,
                grace_period=10,
                handle_signals=False,
                policy=FailurePolicy(retries=1, backoff=(0.0, 0.0)),
            )
        stats = caught.value.report.shards[bad]
        assert stats.stopped_at == poison.sequence_number
        assert "when is_poison" in (stats.error or "")
        assert "LookupError: no such route" in (stats.error or "")
        assert out.by_shard() == {
            bad: stream.records(bad)[:1],
            good: stream.records(good),
        }


class TestMemoryStreamWaiters:
    async def test_stopped_runs_leave_no_waiters_behind(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(3):
            stop = anyio.Event()
            out = sinks.collect()
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await fs.Pipeline(stream).to(out).run(stop=stop)  # noqa: B023

                tg.start_soon(run)
                stream.put(shard, "INSERT", {"pk": str(n)})
                await wait_until(lambda: len(out.items) == n + 1)  # noqa: B023
                # the reader has caught up and waits for the next record
                await wait_until(lambda: len(stream._shards[shard].waiters) == 1)
                stop.set()
            assert stream._shards[shard].waiters == []
