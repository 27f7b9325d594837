"""Per-shard order, exactly-once delivery without failures, and lineage."""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
from support import wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.sinks.collect import CollectSink
from flowstream.testing import MemoryStream


def fill(stream: MemoryStream, shards: list[str], count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for n in range(count):
        shard = rng.choice(shards)
        event = rng.choice(["INSERT", "MODIFY", "REMOVE"])
        stream.put(shard, event, {"pk": f"item#{n}"}, {"pk": f"item#{n}", "n": n})


class TestOrder:
    async def test_16_shards_5000_records_in_order_exactly_once(self) -> None:
        stream = MemoryStream(page_size=37)
        shards = [stream.add_shard() for _ in range(16)]
        fill(stream, shards, 5000)
        first, second = sinks.collect("first"), sinks.collect("second")

        async def slow_ack(values: list[Any]) -> None:
            await anyio.lowlevel.checkpoint()

        report = (
            await fs.Pipeline(stream)
            .map(lambda r: (r.shard_id, r.sequence_number))
            .to(first, second, sinks.callback(slow_ack))
            .run(drain=True)
        )

        for sink in (first, second):
            assert len(sink.items) == 5000
            assert len(set(sink.items)) == 5000
            for shard_id, items in sink.by_shard().items():
                assert items == [(shard_id, r.sequence_number) for r in stream.records(shard_id)]
        assert report.read == 5000
        assert report.sinks["first"].delivered == 5000
        assert all(s.state is fs.ShardState.CAUGHT_UP for s in report.shards.values())


def arrival(sink: CollectSink) -> dict[str, int]:
    return {r.sequence_number: i for i, r in enumerate(sink.records)}


class TestLineage:
    async def test_child_records_arrive_after_the_last_parent_record(self) -> None:
        stream = MemoryStream(page_size=10)
        parent = stream.add_shard()
        fill(stream, [parent], 95)
        children = stream.split(parent)
        fill(stream, list(children), 60, seed=2)
        out = sinks.collect()

        # The parent's deliveries are slow, so a runtime that ignored lineage would let
        # the children's records in first.
        async def slow_for_parent(values: list[Any]) -> None:
            if any(v.shard_id == parent for v in values):
                await anyio.sleep(0.01)

        report = await fs.Pipeline(stream).to(out, sinks.callback(slow_for_parent)).run(drain=True)

        order = arrival(out)
        last_parent = order[stream.records(parent)[-1].sequence_number]
        child_positions = [order[r.sequence_number] for c in children for r in stream.records(c)]
        assert len(child_positions) == 60
        assert min(child_positions) > last_parent
        assert report.shards[parent].state is fs.ShardState.ENDED
        assert report.shards[parent].checkpoint == "SHARD_END"

    async def test_three_generations_in_order(self) -> None:
        stream = MemoryStream(page_size=7)
        root = stream.add_shard()
        fill(stream, [root], 20)
        gen2 = stream.split(root)
        fill(stream, list(gen2), 20, seed=3)
        gen3 = [*stream.split(gen2[0]), *stream.split(gen2[1])]
        fill(stream, gen3, 40, seed=4)
        out = sinks.collect()

        await fs.Pipeline(stream).to(out).run(drain=True)

        order = arrival(out)
        assert len(order) == 80
        for child in [*gen2, *gen3]:
            parent = stream.parent_of(child)
            assert parent is not None
            last_parent = order[stream.records(parent)[-1].sequence_number]
            for record in stream.records(child):
                assert order[record.sequence_number] > last_parent

    async def test_split_while_running(self) -> None:
        stream = MemoryStream(page_size=5)
        parent = stream.add_shard()
        other = stream.add_shard()
        out = sinks.collect()
        gate = anyio.Event()

        async def hold_parent(values: list[Any]) -> None:
            # keep the parent's last page in flight until the children have records
            if any(v.shard_id == parent for v in values):
                await gate.wait()

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await fs.Pipeline(stream).to(out, sinks.callback(hold_parent)).run(stop=stop)

            tg.start_soon(run)
            fill(stream, [parent, other], 30)
            await wait_until(lambda: len(out.items) >= 1)
            children = stream.split(parent)
            fill(stream, list(children), 20, seed=5)
            # children are discovered but must wait for the parent's end
            await wait_until(lambda: len(out.items) >= len(stream.records(other)))
            gate.set()
            await wait_until(lambda: len(out.items) == 50)
            stop.set()

        order = arrival(out)
        last_parent = order[stream.records(parent)[-1].sequence_number]
        for child in children:
            for record in stream.records(child):
                assert order[record.sequence_number] > last_parent

    async def test_a_parent_no_longer_listed_does_not_block(self) -> None:
        stream = MemoryStream()
        parent = stream.add_shard()
        child = stream.add_shard(parent=parent)
        stream.put(child, "INSERT", {"pk": "a"})
        # the parent's records expired: it is gone from the listing
        del stream._shards[parent]
        out = sinks.collect()
        await fs.Pipeline(stream).to(out).run(drain=True)
        assert [r.keys for r in out.records] == [{"pk": "a"}]
