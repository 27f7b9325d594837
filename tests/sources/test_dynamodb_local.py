"""The DynamoDB source through the real aiobotocore client, against LocalStreamsServer:
many shards, splits, the rollover, and every injected fault."""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import sinks, sources
from flowstream.sinks.collect import CollectSink
from flowstream.sources import lag
from flowstream.sources.dynamodb import DynamoDBSource
from flowstream.testing import LocalStreamsServer, MemoryStream


def fast_source(server: LocalStreamsServer, **options: Any) -> DynamoDBSource:
    """A source that polls a local endpoint quickly (tests need no 1 s idle waits)."""
    options.setdefault("idle_interval", 0.02)
    options.setdefault("max_polls_per_second", 200.0)
    return sources.dynamodb(
        stream_arn=server.stream_arn, endpoint_url=server.endpoint_url, **options
    )


@pytest.fixture
async def served() -> AsyncIterator[tuple[MemoryStream, LocalStreamsServer]]:
    stream = MemoryStream(table="Users")
    async with LocalStreamsServer(stream) as server:
        yield stream, server


class PollTimes(Counter[str | tuple[str, str]]):
    """`LocalStreamsServer.calls` that also notes when each GetRecords came in."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def __setitem__(self, key: str | tuple[str, str], value: int) -> None:
        if type(key) is tuple and key[0] == "GetRecords":
            self.times.append(time.monotonic())
        super().__setitem__(key, value)


def put_many(stream: MemoryStream, shards: list[str], count: int, rng: random.Random) -> None:
    for _ in range(count):
        shard = rng.choice(shards)
        n = len(stream.records(shard))
        stream.put(shard, "MODIFY", {"pk": f"{shard[-8:]}#{n}"}, {"n": n}, {"n": n - 1})


def check_order_and_lineage(stream: MemoryStream, out: CollectSink) -> None:
    seen = [(r.shard_id, r.sequence_number) for r in out.records]
    assert len(seen) == len(set(seen)), "a record was delivered twice"
    arrival = {r.sequence_number: i for i, r in enumerate(out.records)}
    by_shard = out.by_shard()
    for shard_id in stream.shard_ids:
        expected = stream.records(shard_id)
        assert [r.sequence_number for r in by_shard.get(shard_id, [])] == [
            r.sequence_number for r in expected
        ]
        parent = stream.parent_of(shard_id)
        if parent is not None and expected and stream.records(parent):
            last_parent = arrival[stream.records(parent)[-1].sequence_number]
            assert arrival[expected[0].sequence_number] > last_parent


class TestManyShards:
    async def test_32_shards_splits_and_rollover_20000_records(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        rng = random.Random(32)
        open_shards = [stream.add_shard() for _ in range(32)]
        out = sinks.collect()
        stop = anyio.Event()

        async def write() -> None:
            for step in range(20):
                put_many(stream, open_shards, 1000, rng)
                if step in (5, 10):  # split four shards
                    for parent in rng.sample(open_shards, 4):
                        open_shards.remove(parent)
                        open_shards.extend(stream.split(parent))
                if step == 15:  # the ~4-hourly rollover: every open shard gets one child
                    open_shards[:] = list(stream.rollover().values())
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:

            async def run() -> None:
                report = await fs.Pipeline(fast_source(server)).to(out).run(stop=stop)
                assert report.read == 20000

            tg.start_soon(run)
            await write()
            await wait_until(lambda: len(out.items) >= 20000, timeout=60)
            stop.set()

        assert len(out.items) == 20000
        assert len(stream.shard_ids) == 32 + 16 + 40
        check_order_and_lineage(stream, out)

    async def test_records_come_through_the_raw_body_fast_path(
        self, served: tuple[MemoryStream, LocalStreamsServer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        for n in range(10):
            stream.put(shard, "INSERT", {"pk": str(n)}, {"pk": str(n), "b": b"\x00\x01"})
        module = sys.modules["flowstream.sources.dynamodb"]

        def no_fallback(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("botocore's parsed response was decoded instead of the body")

        monkeypatch.setattr(module, "decode_records", no_fallback)
        for fast_get_records in (True, False):  # signed by flowstream, or by the client
            out = sinks.collect()
            source = fast_source(server)
            source.fast_get_records = fast_get_records
            await fs.Pipeline(source).to(out).run(drain=True)
            assert [r.new_image for r in out.items] == [r.new_image for r in stream.records(shard)]

    async def test_without_the_raw_body_the_parsed_response_gives_the_same_records(
        self, served: tuple[MemoryStream, LocalStreamsServer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        written = [
            stream.put(shard, "INSERT", {"pk": str(n)}, {"pk": str(n), "b": b"\x00", "s": {1, 2}})
            for n in range(10)
        ]
        module = sys.modules["flowstream.sources.dynamodb"]
        monkeypatch.setattr(module, "_keep_raw_body", lambda **kwargs: None)
        out = sinks.collect()
        source = fast_source(server)
        source.fast_get_records = False  # through the client, without its raw-body handler
        await fs.Pipeline(source).to(out).run(drain=True)
        assert out.items == written
        assert [r.new_image for r in out.items] == [r.new_image for r in written]
        assert [r.approximate_creation_time for r in out.items] == [
            r.approximate_creation_time for r in written
        ]


class TestChildShards:
    async def test_shards_that_end_together_share_one_listing(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        parents = [stream.add_shard() for _ in range(16)]
        for shard in parents:
            stream.put(shard, "INSERT", {"pk": shard})
        children = stream.rollover()
        for child in children.values():
            stream.put(child, "INSERT", {"pk": child})
        out = sinks.collect()
        await fs.Pipeline(fast_source(server)).to(out).run(drain=True)
        check_order_and_lineage(stream, out)
        assert len(out.items) == 32
        # one DescribeStream to check the stream, one to list it, and far fewer than one
        # per ended parent to find the children
        assert server.calls["DescribeStream"] <= 2 + 4

    async def test_a_listing_from_before_the_end_is_not_used(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        first, second = stream.add_shard(), stream.add_shard()
        async with fast_source(server).open() as session:
            await session.list_shards()  # before the split: no children in it
            children = stream.split(first)
            stream.close(second)
            for shard in (first, second):
                session.shard_ended(shard)  # type: ignore[attr-defined]
            calls = server.calls["DescribeStream"]
            found = await session.children_of(first) or []
            assert sorted(s.shard_id for s in found) == sorted(children)
            assert server.calls["DescribeStream"] == calls + 1  # listed again, once
            assert await session.children_of(second) == []
            assert server.calls["DescribeStream"] == calls + 1  # from that listing

    async def test_a_listing_is_made_only_when_it_takes_fewer_calls(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shards = [stream.add_shard() for _ in range(150)]  # a listing takes 2 calls
        async with fast_source(server).open() as session:
            await session.list_shards()

            async def look_up(ended: list[str]) -> tuple[int, list[list[str]]]:
                for shard in ended:
                    session.shard_ended(shard)  # type: ignore[attr-defined]
                calls = server.calls["DescribeStream"]
                found = [[c.shard_id for c in await session.children_of(s) or []] for s in ended]
                return server.calls["DescribeStream"] - calls, found

            # one shard ends alone: a call filtered to its children
            alone = stream.split(shards[0])
            assert await look_up(shards[:1]) == (1, [list(alone)])
            # two end together: still fewer calls one by one
            pair = [stream.split(s) for s in shards[1:3]]
            assert await look_up(shards[1:3]) == (2, [list(c) for c in pair])
            # three end together: one listing (2 calls) answers all three
            three = [stream.split(s) for s in shards[3:6]]
            assert await look_up(shards[3:6]) == (2, [list(c) for c in three])


class TestFaults:
    async def test_expired_iterators_resume_after_the_last_record_read(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shards = [stream.add_shard() for _ in range(4)]
        put_many(stream, shards, 400, random.Random(1))
        server.inject("expired_iterator", times=6)
        out = sinks.collect()
        await fs.Pipeline(fast_source(server, page_limit=25)).to(out).run(drain=True)
        check_order_and_lineage(stream, out)
        assert len(out.items) == 400
        assert sum(n for k, n in server.calls.items() if k == "GetShardIterator") >= 4 + 6

    @pytest.mark.parametrize("kind", ["throttle", "internal_error"])
    async def test_throttling_and_server_errors_are_retried(
        self, served: tuple[MemoryStream, LocalStreamsServer], kind: Any
    ) -> None:
        stream, server = served
        shards = [stream.add_shard() for _ in range(4)]
        put_many(stream, shards, 200, random.Random(2))
        server.inject(kind, operation="GetRecords", times=8)
        server.inject(kind, operation="DescribeStream", times=2)
        server.inject(kind, operation="GetShardIterator", times=2)
        out = sinks.collect()
        await fs.Pipeline(fast_source(server, page_limit=20)).to(out).run(drain=True)
        assert len(out.items) == 200
        check_order_and_lineage(stream, out)

    async def test_trimmed_data_is_an_error_by_default(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        lost, fine = stream.add_shard(), stream.add_shard()
        put_many(stream, [lost], 30, random.Random(3))
        put_many(stream, [fine], 30, random.Random(3))
        out = sinks.collect()
        pipeline = fs.Pipeline(fast_source(server, page_limit=10), name="t").to(out)
        checkpoints = fs.checkpoints.memory()
        await pipeline.run(checkpoints=checkpoints, drain=True)
        # more records come, and the oldest unread ones expire before the next run
        put_many(stream, [lost], 30, random.Random(4))
        stream.trim(lost, 40)
        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(checkpoints=checkpoints, drain=True)
        error = caught.value.report.shards[lost].error or ""
        assert "TrimmedDataError" in error
        assert "on_trimmed='skip'" in error
        assert caught.value.report.shards[fine].state is fs.ShardState.CAUGHT_UP

    async def test_trimmed_data_skipped_on_request_and_reported(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        put_many(stream, [shard], 50, random.Random(5))
        server.inject("trimmed", operation="GetRecords", times=1)
        stream.trim(shard, 20)
        out = sinks.collect()
        report = await fs.Pipeline(fast_source(server, on_trimmed="skip")).to(out).run(drain=True)
        assert [r.sequence_number for r in out.items] == [
            r.sequence_number for r in stream.records(shard)
        ]
        assert len(out.items) == 30
        assert any("trimmed" in note for note in report.shards[shard].notes)

    async def test_a_deleted_stream_stops_the_pipeline_with_a_clear_error(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        out = sinks.collect()

        async def delete_when_read() -> None:
            await wait_until(lambda: len(out.items) == 1)
            server.delete_stream()

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete_when_read)
            with (
                pytest.raises(fs.StreamNotFoundError, match="does not exist"),
                anyio.fail_after(30),
            ):
                await fs.Pipeline(fast_source(server)).to(out).run()

    async def test_a_slow_shard_does_not_hold_up_the_others(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        slow, quick = stream.add_shard(), stream.add_shard()
        stream.put(slow, "INSERT", {"pk": "slow"})
        for n in range(20):
            stream.put(quick, "INSERT", {"pk": str(n)})
        server.inject("latency", operation="GetRecords", shard_id=slow, delay=2.0, times=None)
        out = sinks.collect()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await fs.Pipeline(fast_source(server, page_limit=2)).to(out).run(stop=stop)

            tg.start_soon(run)
            await wait_until(lambda: sum(r.shard_id == quick for r in out.records) == 20)
            assert not any(r.shard_id == slow for r in out.records)
            server.clear_faults()
            stop.set()


class TestPolling:
    async def test_never_more_than_the_poll_rate_per_shard(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        put_many(stream, [shard], 100, random.Random(6))
        out = sinks.collect()
        started = time.monotonic()
        # 10 pages of 10 records at most 5 GetRecords a second: at least 1.8 s
        await (
            fs.Pipeline(
                sources.dynamodb(
                    stream_arn=server.stream_arn, endpoint_url=server.endpoint_url, page_limit=10
                )
            )
            .to(out)
            .run(drain=True)
        )
        elapsed = time.monotonic() - started
        calls = server.calls[("GetRecords", shard)]
        assert len(out.items) == 100
        assert calls >= 10
        assert calls <= 1 + 5 * elapsed

    async def test_an_idle_shard_is_polled_less_and_less(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        out = sinks.collect()
        stop = anyio.Event()
        started = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await (
                    fs.Pipeline(fast_source(server, idle_interval=0.4, max_polls_per_second=50))
                    .to(out)
                    .run(stop=stop)
                )

            tg.start_soon(run)
            await wait_until(lambda: server.calls[("GetRecords", shard)] >= 8)
            stop.set()
        elapsed = time.monotonic() - started
        # empty polls wait 0.02, 0.04, 0.08, 0.16, 0.32, then 0.4 s: 8 polls take >= 1 s,
        # where a fixed 50-per-second poller would have made 8 in 0.16 s
        assert elapsed >= 1.0

    async def test_an_idle_shard_is_polled_once_per_idle_interval_however_slow_a_poll(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shard = stream.add_shard()
        server.inject("latency", operation="GetRecords", delay=0.2, times=None)
        polled: list[float] = []

        def count() -> bool:
            # the server counts a GetRecords when it comes in, before the latency
            while len(polled) < server.calls[("GetRecords", shard)]:
                polled.append(time.monotonic())
            return len(polled) >= 9

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                source = fast_source(server, idle_interval=0.3, max_polls_per_second=50)
                await fs.Pipeline(source).to(sinks.collect()).run(stop=stop)

            tg.start_soon(run)
            await wait_until(count)
            stop.set()
        # backed off to the interval: polls 0.3 s apart, counted from when each was
        # sent (counted from each answer they would be 0.5 s apart)
        gaps = [b - a for a, b in itertools.pairwise(polled[-3:])]
        assert all(0.25 < gap < 0.42 for gap in gaps), gaps

    async def test_a_shard_idle_for_thousands_of_polls_is_still_polled_and_read(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        # The backoff once doubled a wait per empty poll: past 1,024 of them (4 minutes
        # idle at the default pace) the float overflowed and the shard stopped.
        stream, server = served
        shard = stream.add_shard()
        out = sinks.collect()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                source = fast_source(server, idle_interval=0.0005, max_polls_per_second=5000)
                report = await fs.Pipeline(source).to(out).run(stop=stop)
                assert not report.stopped_shards()

            tg.start_soon(run)
            await wait_until(lambda: server.calls[("GetRecords", shard)] > 1100, timeout=60)
            written = stream.put(shard, "INSERT", {"pk": "late"}, {"pk": "late"})
            await wait_until(lambda: len(out.items) == 1)
            stop.set()
        assert out.items == [written]

    async def test_shards_that_go_idle_together_spread_their_polls_over_the_interval(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        shards = [stream.add_shard() for _ in range(40)]
        interval = 0.4
        server.calls = log = PollTimes()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                source = fast_source(server, idle_interval=interval, max_polls_per_second=100)
                await fs.Pipeline(source).to(sinks.collect()).run(stop=stop)

            tg.start_soon(run)
            # every shard backs off to the interval within 0.01 * (1 + 2 + ... + 32) s;
            # then three intervals of polls are watched
            await wait_until(lambda: min(log[("GetRecords", s)] for s in shards) >= 8)
            log.times.clear()
            await wait_until(lambda: min(log[("GetRecords", s)] for s in shards) >= 11)
            stop.set()
        polls = log.times
        assert len(polls) >= 3 * len(shards)
        # Four quarters of the interval: in lock step, one quarter would take nearly all.
        quarters = Counter(int((t - polls[0]) % interval / (interval / 4)) for t in polls)
        assert max(quarters.values()) < 0.5 * len(polls), quarters

    @pytest.mark.parametrize(
        ("shards", "idle_interval", "warned"),
        [(200, 0.002, True), (4, 0.1, False)],
        ids=["cannot-keep-up", "keeps-up"],
    )
    async def test_a_process_that_cannot_poll_on_time_says_so(
        self,
        served: tuple[MemoryStream, LocalStreamsServer],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        shards: int,
        idle_interval: float,
        warned: bool,
    ) -> None:
        # 200 shards polled every 2 ms is far more than one process can send; 4 shards
        # every 100 ms is easy. Counts are looked at every 0.3 s instead of every minute.
        monkeypatch.setattr(lag, "REPORT_EVERY", 0.3)
        stream, server = served
        ids = [stream.add_shard() for _ in range(shards)]
        stop = anyio.Event()

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if "cannot poll" in r.getMessage()]

        with caplog.at_level("WARNING", logger="flowstream"):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    source = fast_source(
                        server, idle_interval=idle_interval, max_polls_per_second=1000
                    )
                    await fs.Pipeline(source).to(sinks.collect()).run(stop=stop)

                tg.start_soon(run)
                if warned:
                    await wait_until(lambda: bool(warnings()), timeout=30)
                else:  # 15 polls a shard: at least four looks at the counts
                    await wait_until(
                        lambda: min(server.calls[("GetRecords", i)] for i in ids) >= 15
                    )
                stop.set()
        if warned:
            assert "Raise idle_interval=, or spread the shards" in warnings()[0]
        else:
            assert warnings() == []

    def test_the_default_idle_interval_is_lambdas_pace(self) -> None:
        # Lambda polls a DynamoDB stream shard 4 times a second: a change on an idle
        # shard arrives within 250 ms, 125 ms on average (benchmarks/bench_latency.py)
        source = sources.dynamodb(table="Users")
        assert source.idle_interval == 0.25
        assert source.min_poll_gap == 0.2  # 5 GetRecords a second at most


class TestStartPositions:
    async def test_latest_reads_only_what_comes_after_the_start(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        old = stream.add_shard()
        stream.put(old, "INSERT", {"pk": "before"})
        children = stream.split(old)
        stream.put(children[0], "INSERT", {"pk": "also before"})
        out = sinks.collect()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await fs.Pipeline(fast_source(server, start="latest")).to(out).run(stop=stop)

            tg.start_soon(run)
            # LATEST iterators are taken when the readers start; wait for both
            await wait_until(lambda: all(server.calls[("GetRecords", c)] >= 1 for c in children))
            stream.put(children[0], "INSERT", {"pk": "after"})
            stream.put(children[1], "INSERT", {"pk": "after too"})
            await wait_until(lambda: len(out.items) == 2)
            stop.set()
        assert sorted(r.keys["pk"] for r in out.items) == ["after", "after too"]
        assert server.calls[("GetRecords", old)] == 0  # closed: skipped at LATEST

    async def test_at_a_sequence_number_skips_what_ended_before_it(
        self, served: tuple[MemoryStream, LocalStreamsServer]
    ) -> None:
        stream, server = served
        parent = stream.add_shard()
        for n in range(5):
            stream.put(parent, "INSERT", {"pk": f"p{n}"})
        children = stream.split(parent)
        marks = [stream.put(children[0], "INSERT", {"pk": f"c{n}"}) for n in range(5)]
        later = stream.put(children[1], "INSERT", {"pk": "d0"})
        out = sinks.collect()
        source = fast_source(server, start=sources.Position.at(marks[2].sequence_number))
        await fs.Pipeline(source).to(out).run(drain=True)
        assert [r.keys["pk"] for r in out.items if r.shard_id == children[0]] == ["c2", "c3", "c4"]
        # the other child begins after the sequence number: it is read whole
        assert [r for r in out.items if r.shard_id == children[1]] == [later]
        assert not [r for r in out.items if r.shard_id == parent]
