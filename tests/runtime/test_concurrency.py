"""Shards run concurrently: a slow sink call for one shard never delays another."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
from support import wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.testing import MemoryStream


class TestParallelism:
    async def test_slow_sink_on_8_shards_takes_well_under_the_summed_sleep(self) -> None:
        stream = MemoryStream(page_size=10)
        shards = [stream.add_shard() for _ in range(8)]
        for n in range(30):  # 3 pages per shard: 24 calls of 100 ms = 2.4 s in sequence
            for shard in shards:
                stream.put(shard, "INSERT", {"pk": f"{shard}#{n}"})
        calls = 0
        active = 0
        most_active = 0

        async def slow(values: list[Any]) -> None:
            nonlocal calls, active, most_active
            calls += 1
            active += 1
            most_active = max(most_active, active)
            await anyio.sleep(0.1)
            active -= 1

        started = time.monotonic()
        report = await fs.Pipeline(stream).to(sinks.callback(slow)).run(drain=True)
        elapsed = time.monotonic() - started

        assert report.delivered == 240
        assert calls == 24
        assert most_active == 8
        assert elapsed < 0.5 * calls * 0.1

    async def test_a_blocked_sink_call_on_one_shard_does_not_delay_another(self) -> None:
        stream = MemoryStream()
        stuck, free = stream.add_shard(), stream.add_shard()
        release = anyio.Event()
        out = sinks.collect()

        async def blocks_one_shard(values: list[Any]) -> None:
            if values and values[0].shard_id == stuck:
                await release.wait()

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await fs.Pipeline(stream).to(sinks.callback(blocks_one_shard), out).run(stop=stop)

            tg.start_soon(run)
            stream.put(stuck, "INSERT", {"pk": "s0"})
            for n in range(50):
                stream.put(free, "INSERT", {"pk": f"f{n}"})
                await anyio.lowlevel.checkpoint()
            await wait_until(lambda: sum(r.shard_id == free for r in out.records) == 50)
            release.set()
            await wait_until(lambda: len(out.items) == 51)
            stop.set()


class TestRouting:
    async def test_event_filter_keeps_exactly_the_named_events(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        events = ["INSERT", "MODIFY", "REMOVE"] * 20
        for n, event in enumerate(events):
            stream.put(shard, event, {"pk": str(n)})
        out = sinks.collect()
        report = await fs.Pipeline(stream).filter(events=["REMOVE"]).to(out).run(drain=True)
        assert [r.event_name for r in out.items] == ["REMOVE"] * 20
        assert [r.keys["pk"] for r in out.items] == [str(n) for n in range(2, 60, 3)]
        assert report.filtered == 40

    async def test_route_first_match_wins_otherwise_and_drops(self) -> None:
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(3)]
        for n in range(90):
            stream.put(shards[n % 3], "INSERT", {"pk": "x"}, {"n": n})
        small, even, rest = sinks.collect("small"), sinks.collect("even"), sinks.collect("rest")
        base = fs.Pipeline(stream).map(lambda r: r.new_image["n"] if r.new_image else -1)

        routed = base.route(
            fs.when(lambda n: n < 10, small),
            fs.when(lambda n: n % 2 == 0, even),
            otherwise=rest,
        )
        await routed.run(drain=True)
        assert sorted(small.items) == list(range(10))
        assert sorted(even.items) == list(range(10, 90, 2))
        assert sorted(rest.items) == list(range(11, 90, 2))

        small.clear()
        even.clear()
        report = await base.route(
            fs.when(lambda n: n < 10, small), fs.when(lambda n: n % 2 == 0, even)
        ).run(drain=True)
        assert report.dropped == 40
        assert report.delivered == 50
        assert sum(s.dropped for s in report.shards.values()) == 40
