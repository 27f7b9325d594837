"""The contiguous ack frontier.

A checkpoint never passes a record that some sink it was routed to did not acknowledge
-- with several sinks failing at different records, with flat_map giving several
elements per record -- and it does move past records that were filtered out or dropped,
even when a whole page is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import CheckpointSession, CheckpointStore
from flowstream.errors import CheckpointError
from flowstream.policy import FailurePolicy
from flowstream.report import RunReport, ShardReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.runtime.engine import run_pipeline
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.testing import MemoryStream

FAST = FailurePolicy(retries=3, backoff=(0.0, 0.0))


async def drain(pipeline: fs.Pipeline[Any], store: CheckpointStore) -> fs.RunReport:
    """Drain with retries that do not wait."""
    return await run_pipeline(
        pipeline.compile(),
        pipeline.source,
        name=pipeline.name or "pipeline",
        checkpoints=store,
        drain=True,
        grace_period=10,
        handle_signals=False,
        policy=FAST,
    )


class Refuses(SimpleSink):
    """Acknowledges every item except those whose text is in `bad` (for good)."""

    def __init__(self, name: str, bad: set[str]) -> None:
        self._name = name
        self.bad = bad
        self.items: list[str] = []

    def describe(self) -> str:
        return self._name

    async def send(self, batch: Batch) -> SendResult | None:
        failed: dict[int, BaseException] = {}
        for i, value in enumerate(batch.values):
            text = value if isinstance(value, str) else value.keys["pk"]
            if text in self.bad:
                failed[i] = ValueError(f"{text} refused")
            else:
                self.items.append(text)
        return SendResult(failed, retryable=False) if failed else None


def one_shard(count: int, page_size: int = 1000) -> tuple[MemoryStream, str]:
    stream = MemoryStream(page_size=page_size)
    shard = stream.add_shard()
    for n in range(count):
        stream.put(shard, "INSERT", {"pk": str(n)})
    return stream, shard


class TestSinksThatFail:
    async def test_several_sinks_fail_at_different_records(self) -> None:
        stream, shard = one_shard(10)
        records = stream.records(shard)
        ok = Refuses("ok", set())
        late, early = Refuses("late", {"6"}), Refuses("early", {"3"})
        store = checkpoints.memory()
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream, name="p").to(ok, late, early), store)
        # the frontier is before the first record any sink refused
        assert store.positions("p", stream.stream_arn) == {shard: records[2].sequence_number}
        stats = caught.value.report.shards[shard]
        assert stats.stopped_at == records[3].sequence_number
        assert "sink early" in (stats.error or "")

        again = sinks.collect()
        await drain(fs.Pipeline(stream, name="p").to(again), store)
        assert [r.keys["pk"] for r in again.items] == [str(n) for n in range(3, 10)]

    async def test_one_failing_element_of_a_flat_map_holds_back_its_whole_record(self) -> None:
        stream, shard = one_shard(4)
        records = stream.records(shard)
        store = checkpoints.memory()
        pipeline = fs.Pipeline(stream, name="p").flat_map(
            lambda r: [f"{r.keys['pk']}{part}" for part in "abc"]
        )
        sink = Refuses("parts", {"2b"})
        with pytest.raises(fs.ShardStoppedError):
            await drain(pipeline.to(sink), store)
        assert store.positions("p", stream.stream_arn) == {shard: records[1].sequence_number}

        again = sinks.collect()
        await drain(pipeline.to(again), store)
        assert again.items == ["2a", "2b", "2c", "3a", "3b", "3c"]

    @pytest.mark.parametrize(
        ("result", "says"),
        [
            (SendResult({-1: RuntimeError("?")}), "reported item -1 as failed"),
            (SendResult({3: RuntimeError("?")}), "reported item 3 as failed"),
            (True, "returned bool from send()"),
        ],
        ids=["negative-index", "index-past-the-end", "not-a-send-result"],
    )
    async def test_a_sink_breaking_the_protocol_stops_the_shard_clearly(
        self, result: object, says: str
    ) -> None:
        # A sink bug: SendResult.failed = {-1: ...} used to be taken as the last item
        # (the others counted as delivered), an index past the end crashed the runner
        # with an IndexError, and a result that is not a SendResult with an
        # AttributeError. None of the batch is taken as delivered now.
        stream, shard = one_shard(3)

        class Broken(SimpleSink):
            def describe(self) -> str:
                return "broken"

            async def send(self, batch: Batch) -> SendResult | None:
                return result  # type: ignore[return-value]

        store = checkpoints.memory()
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream, name="p").to(Broken()), store)
        report = caught.value.report
        stats = report.shards[shard]
        assert f"sink broken: SinkError: sink broken {says}" in (stats.error or "")
        assert stats.stopped_at == stream.records(shard)[0].sequence_number
        assert stats.retries == 0
        assert report.sinks["broken"].failed == 1  # the first item: the shard stops there
        assert report.sinks["broken"].delivered == 0
        assert store.positions("p", stream.stream_arn) == {}


class TestRetries:
    async def test_each_failing_record_gets_its_own_retries(self) -> None:
        # Retries used to be counted per page: a second failing record in the same page
        # got only what the first one left over.
        stream, shard = one_shard(4)
        failures = {"1": 3, "2": 3}

        def flaky(record: fs.Record) -> str:
            key: str = record.keys["pk"]
            if failures.get(key):
                failures[key] -= 1
                raise ConnectionError(key)
            return key

        out = sinks.collect()
        report = await drain(fs.Pipeline(stream, name="p").map(flaky).to(out), checkpoints.memory())
        assert out.items == ["0", "1", "2", "3"]
        assert report.shards[shard].retries == 6


class TestWhatNoSinkTakes:
    async def test_filtered_and_dropped_pages_move_the_frontier(self, tmp_path: Path) -> None:
        stream, shard = one_shard(9, page_size=3)
        out = sinks.collect()
        store = checkpoints.sqlite(tmp_path / "state.db", flush_interval=3600)
        report = await drain(
            fs.Pipeline(stream, name="p")
            .filter(lambda r: int(r.keys["pk"]) >= 3)  # the whole first page
            .route(fs.when(lambda r: int(r.keys["pk"]) >= 6, out)),  # drops the second
            store,
        )
        assert [r.keys["pk"] for r in out.items] == ["6", "7", "8"]
        assert (report.filtered, report.dropped, report.delivered) == (3, 3, 3)
        async with store.open("p", stream.stream_arn) as session:
            assert await session.load() == {shard: stream.records(shard)[-1].sequence_number}

    async def test_a_drop_only_page_at_the_end_is_checkpointed(self) -> None:
        stream, shard = one_shard(5, page_size=2)
        out = sinks.collect()
        store = checkpoints.memory()
        await drain(
            fs.Pipeline(stream, name="p").route(fs.when(lambda r: r.keys["pk"] == "0", out)),
            store,
        )
        assert store.positions("p", stream.stream_arn) == {
            shard: stream.records(shard)[-1].sequence_number
        }


class TestSharedSinksAndPipelines:
    async def test_one_sink_in_several_routes_gets_each_element_once_in_order(self) -> None:
        stream, _ = one_shard(10, page_size=4)
        shared, other = sinks.collect("shared"), sinks.collect("other")
        report = await drain(
            fs.Pipeline(stream, name="p")
            .map(lambda r: int(r.keys["pk"]))
            .route(
                fs.when(lambda n: n % 2 == 0, shared),
                fs.when(lambda n: n < 5, shared, other),
                otherwise=shared,
            ),
            checkpoints.memory(),
        )
        assert shared.items == list(range(10))
        assert other.items == [1, 3]
        assert set(report.sinks) == {"shared", "other"}
        assert report.sinks["shared"].delivered == 10

    async def test_one_pipeline_run_twice_at_once_with_separate_sinks(self) -> None:
        stream = MemoryStream(page_size=3)
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(60):
            stream.put(shards[n % 4], "INSERT", {"pk": str(n)})
        pipeline = fs.Pipeline(stream).map(lambda r: (r.shard_id, r.keys["pk"]))
        first, second = sinks.collect(), sinks.collect()
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, pipeline.to(first), checkpoints.memory())
            tg.start_soon(drain, pipeline.to(second), checkpoints.memory())
        for sink in (first, second):
            for shard in shards:
                want = [(shard, r.keys["pk"]) for r in stream.records(shard)]
                assert sink.by_shard()[shard] == want


class _FailsOnce(CheckpointSession):
    def __init__(self) -> None:
        self.saved: dict[str, str] = {}
        self.failures = 1

    async def load(self) -> dict[str, str]:
        return dict(self.saved)

    async def save(self, positions: Mapping[str, str]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk busy")
        self.saved.update(positions)


class TestCheckpointer:
    async def test_a_failed_save_is_retried_with_the_newest_position(self) -> None:
        session = _FailsOnce()
        report = RunReport(pipeline="p", shards={"s": ShardReport("s")})
        checkpointer = Checkpointer(session, 3600, report)
        checkpointer.advance("s", "105")
        with pytest.raises(CheckpointError, match="disk busy"):
            await checkpointer.flush()
        checkpointer.advance("s", "103")  # behind what is pending: ignored
        checkpointer.advance("s", "110")
        await checkpointer.flush()
        assert session.saved == {"s": "110"}
        assert report.shards["s"].checkpoint == "110"
        checkpointer.advance("s", "120")
        await checkpointer.flush()
        assert session.saved == {"s": "120"}
