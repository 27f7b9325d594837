"""A failing record stops its shard (after retries) and no other; nothing past it is
delivered or checkpointed. Errors that end a run end it promptly, close what was opened,
and keep what was acknowledged; errors of one shard stay with that shard."""

from __future__ import annotations

import functools
import re
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
from flowstream.sinks.base import Batch, SendResult, SimpleSink, Sink, SinkWriter
from flowstream.sources.base import Page, Position, Shard, ShardReader, Source, StreamSession
from flowstream.testing import MemoryStream


def poisoned_stream(shards: int = 16, per_shard: int = 20) -> tuple[MemoryStream, str, fs.Record]:
    stream = MemoryStream(page_size=8)
    ids = [stream.add_shard() for _ in range(shards)]
    poison: fs.Record | None = None
    for n in range(per_shard):
        for shard in ids:
            stream.put(shard, "INSERT", {"pk": f"{shard[-4:]}#{n}"}, {"poison": False})
            if shard == ids[1] and n == 11:
                poison = stream.put(shard, "MODIFY", {"pk": "poison"}, {"poison": True})
    assert poison is not None
    return stream, ids[1], poison


def explode(record: fs.Record) -> fs.Record:
    if record.keys["pk"] == "poison":
        raise ValueError("cannot handle this one")
    return record


class FlakySink(SimpleSink):
    """Fails the items whose key is in `bad` for their first `failures` attempts."""

    def __init__(self, bad: set[str], failures: int) -> None:
        self.bad = bad
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self.items: list[fs.Record] = []

    def describe(self) -> str:
        return "flaky"

    async def send(self, batch: Batch) -> SendResult | None:
        failed: dict[int, BaseException] = {}
        for i, record in enumerate(batch.values):
            key = record.keys["pk"]
            if key in self.bad:
                self.attempts[key] = self.attempts.get(key, 0) + 1
                if self.attempts[key] <= self.failures:
                    failed[i] = ConnectionError(f"{key} refused")
                    continue
            self.items.append(record)
        return SendResult(failed) if failed else None


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


class TestPoisonRecord:
    async def test_map_failure_stops_only_its_shard(self) -> None:
        stream, bad_shard, poison = poisoned_stream()
        out = sinks.collect()
        store = checkpoints.memory()
        pipeline = fs.Pipeline(stream, name="poison").map(explode).to(out)

        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(checkpoints=store, drain=True)

        report = caught.value.report
        assert set(report.stopped_shards()) == {bad_shard}
        stopped = report.shards[bad_shard]
        assert stopped.stopped_at == poison.sequence_number
        assert "map(explode)" in (stopped.error or "")
        assert "ValueError: cannot handle this one" in (stopped.error or "")
        assert stopped.retries == 3
        assert stopped.failed == 1
        # the other 15 shards finished
        assert sum(s.state is fs.ShardState.CAUGHT_UP for s in report.shards.values()) == 15
        by_shard = out.by_shard()
        for shard in stream.shard_ids:
            expected = stream.records(shard)
            if shard == bad_shard:
                expected = [
                    r for r in expected if int(r.sequence_number) < int(poison.sequence_number)
                ]
            assert by_shard[shard] == expected
        # its checkpoint stays just before the poison record
        before = [
            r for r in stream.records(bad_shard) if r.sequence_number < poison.sequence_number
        ]
        assert store.positions("poison", stream.stream_arn)[bad_shard] == before[-1].sequence_number
        assert str(caught.value).startswith("1 shard(s) stopped")

        # fixed code resumes the stopped shard at the poison record
        again = sinks.collect()
        await fs.Pipeline(stream, name="poison").to(again).run(checkpoints=store, drain=True)
        assert again.items[0] == poison
        assert again.items == [r for r in stream.records(bad_shard) if r not in before]

    async def test_sink_item_failures_are_retried_then_delivered_in_place(self) -> None:
        stream, bad_shard, _ = poisoned_stream(shards=2)
        flaky = FlakySink({"poison"}, failures=2)
        report = await fs.Pipeline(stream).to(flaky).run(drain=True)
        assert flaky.attempts == {"poison": 3}
        assert report.shards[bad_shard].retries == 2
        assert report.failed == 0
        assert len(flaky.items) == report.read

    async def test_sink_failure_past_retries_stops_the_shard_before_the_record(self) -> None:
        stream, bad_shard, poison = poisoned_stream(shards=4)
        flaky = FlakySink({"poison"}, failures=100)
        store = checkpoints.memory()
        with pytest.raises(fs.ShardStoppedError) as caught:
            await fs.Pipeline(stream, name="p").to(flaky).run(checkpoints=store, drain=True)
        stopped = caught.value.report.shards[bad_shard]
        assert stopped.stopped_at == poison.sequence_number
        assert "sink flaky" in (stopped.error or "")
        assert caught.value.report.sinks["flaky"].failed == 1
        position = store.positions("p", stream.stream_arn)[bad_shard]
        assert int(position) < int(poison.sequence_number)
        later = [r for r in stream.records(bad_shard) if int(r.sequence_number) > int(position)]
        assert later[0] == poison


class _BrokenReader(ShardReader):
    async def read(self) -> Page:
        raise OSError("disk on fire")


class _PartlyBrokenSource(Source):
    """Wraps a MemoryStream; reading one shard raises."""

    def __init__(self, stream: MemoryStream, broken: str) -> None:
        self.stream = stream
        self.broken = broken

    def describe(self) -> str:
        return "partly broken"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        async with self.stream.open() as inner:
            yield _Session(inner, self.broken)


class _Session(StreamSession):
    def __init__(self, inner: StreamSession, broken: str) -> None:
        self.inner = inner
        self.broken = broken
        self.stream_id = inner.stream_id

    async def list_shards(self) -> Sequence[Shard]:
        return await self.inner.list_shards()

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        if shard.shard_id == self.broken:
            return _BrokenReader()
        return self.inner.reader(shard, start)


class TestShardErrors:
    async def test_a_shard_whose_reads_fail_fails_alone(self) -> None:
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(40):
            stream.put(shards[n % 4], "INSERT", {"pk": str(n)})
        out = sinks.collect()
        with pytest.raises(fs.ShardStoppedError) as caught:
            await fs.Pipeline(_PartlyBrokenSource(stream, shards[2])).to(out).run(drain=True)
        report = caught.value.report
        assert report.shards[shards[2]].state is fs.ShardState.STOPPED
        assert "OSError: disk on fire" in (report.shards[shards[2]].error or "")
        assert len(out.items) == 30

    async def test_unserialisable_value_fails_that_item(self, tmp_path: Any) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(3):
            stream.put(shard, "INSERT", {"pk": str(n)})
        with pytest.raises(fs.ShardStoppedError) as caught:
            await (
                fs.Pipeline(stream)
                .map(lambda r: object() if r.keys["pk"] == "1" else r.keys)
                .to(sinks.jsonl(tmp_path / "out.jsonl"))
                .run(drain=True)
            )
        stopped = caught.value.report.shards[shard]
        assert "cannot serialise a object value" in (stopped.error or "")
        assert stopped.retries == 0
        assert stopped.stopped_at == stream.records(shard)[1].sequence_number


class TestCountsAtAStop:
    async def test_records_settled_before_a_sink_failure_are_counted(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "MODIFY", {"pk": "a"}, {"pk": "a"}, {"pk": "a"})
        stream.put(shard, "INSERT", {"pk": "b"}, {"pk": "b"})

        def reject(values: list[Any]) -> None:
            raise RuntimeError("down")

        with pytest.raises(fs.ShardStoppedError) as caught:
            await (
                fs.Pipeline(stream)
                .filter(events="INSERT")
                .to(sinks.callback(reject))
                .run(drain=True)
            )
        report = caught.value.report
        assert report.filtered == 1
        assert report.shards[shard].stopped_at == stream.records(shard)[1].sequence_number


class TestOnFailure:
    @staticmethod
    def stream_with(count: int) -> MemoryStream:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(count):
            stream.put(shard, "INSERT", {"pk": str(n)})
        return stream

    @staticmethod
    def flaky(failures: int) -> Any:
        """A map that fails on record "1" `failures` times, then works."""
        left = [failures]

        def fn(record: fs.Record) -> fs.Record:
            if record.keys["pk"] == "1" and left[0] > 0:
                left[0] -= 1
                raise ConnectionError("cache unreachable")
            return record

        return fn

    async def test_retries_as_configured_then_delivers(self) -> None:
        stream = self.stream_with(3)
        out = sinks.collect()
        pipeline = (
            fs.Pipeline(stream)
            .map(self.flaky(2))
            .to(out)
            .on_failure(retries=2, backoff=(0.001, 0.002))
        )
        report = await pipeline.run(drain=True)
        assert [r.keys["pk"] for r in out.items] == ["0", "1", "2"]
        assert report.failed == 0
        assert sum(s.retries for s in report.shards.values()) == 2

    async def test_no_retries_stops_at_the_first_failure(self) -> None:
        stream = self.stream_with(3)
        out = sinks.collect()
        pipeline = fs.Pipeline(stream).on_failure(retries=0).map(self.flaky(1)).to(out)
        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(drain=True)
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.retries == 0
        assert [r.keys["pk"] for r in out.items] == ["0"]

    def test_the_policy_is_part_of_the_plan_description(self) -> None:
        base = fs.Pipeline(self.stream_with(0)).to(sinks.collect())
        tuned = base.on_failure(retries=5, backoff=(0.5, 30))
        assert "on failure" not in base.describe()
        assert tuned.describe().endswith(
            "on failure: 5 retries, backoff 0.5-30s, then stop the shard"
        )

    @pytest.mark.parametrize(
        ("options", "problem"),
        [
            ({"retries": -1}, "retries=-1"),
            ({"retries": 1.5}, "retries=1.5"),
            ({"retries": True}, "retries=True"),
            ({"backoff": (5, 1)}, "0 <= base <= cap"),
            ({"backoff": (-1, 1)}, "0 <= base <= cap"),
            ({"backoff": (0.1, float("inf"))}, "finite"),
            ({"backoff": "fast"}, "(base, cap)"),
        ],
        ids=["negative", "fraction", "bool", "base-above-cap", "negative-base", "inf", "str"],
    )
    def test_bad_options_are_reported_when_built(
        self, options: dict[str, Any], problem: str
    ) -> None:
        with pytest.raises(fs.PipelineError, match=re.escape(problem)):
            fs.Pipeline(self.stream_with(0)).on_failure(**options)


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
