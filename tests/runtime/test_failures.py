"""A failing record stops its shard (after retries) and no other; nothing past it is
delivered or checkpointed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.sinks.base import Batch, SendResult, SimpleSink
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
