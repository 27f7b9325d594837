"""Per-shard order, exactly-once delivery without failures, lineage, and drain termination.

A child is read only after each parent was read to its end and that end is
checkpointed -- also across runs, with start="latest", and never when the parent stopped
at a failure. A drained run (or a run over a finite source) always returns.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import SHARD_END
from flowstream.errors import SourceError
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.sinks.collect import CollectSink
from flowstream.sources.base import Position, Shard, ShardReader, Source, StreamSession
from flowstream.testing import MemoryStream


def fill(stream: MemoryStream, shards: list[str], count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for n in range(count):
        shard = rng.choice(shards)
        event = rng.choice(["INSERT", "MODIFY", "REMOVE"])
        stream.put(shard, event, {"pk": f"item#{n}"}, {"pk": f"item#{n}", "n": n})


def keys(items: list[Any]) -> list[str]:
    return [r.keys["pk"] for r in items]


class _Finite(Source):
    """A MemoryStream seen through a finite session (like a file): no shard appears,
    so a run that is not draining returns once nothing more can be read."""

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream

    def describe(self) -> str:
        return "finite"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        async with self.stream.open() as inner:
            yield _FiniteSession(inner)


class _FiniteSession(StreamSession):
    finite = True

    def __init__(self, inner: StreamSession) -> None:
        self.inner = inner
        self.stream_id = inner.stream_id

    async def list_shards(self) -> Sequence[Shard]:
        return await self.inner.list_shards()

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return self.inner.reader(shard, start)


class _RefusesPoison(SimpleSink):
    """Refuses (for good) the items whose key is "poison"."""

    def __init__(self) -> None:
        self.items: list[fs.Record] = []

    def describe(self) -> str:
        return "refuses-poison"

    async def send(self, batch: Batch) -> SendResult | None:
        failed: dict[int, BaseException] = {}
        for i, record in enumerate(batch.values):
            if record.keys["pk"] == "poison":
                failed[i] = ValueError("poison")
            else:
                self.items.append(record)
        return SendResult(failed, retryable=False) if failed else None


def family(stream: MemoryStream) -> tuple[str, tuple[str, str], fs.Record]:
    """A closed parent holding a poison record in its middle, and two children (with a
    page size of 1, nothing after the poison record reaches the sink)."""
    parent = stream.add_shard()
    stream.put(parent, "INSERT", {"pk": "p0"})
    poison = stream.put(parent, "INSERT", {"pk": "poison"})
    stream.put(parent, "INSERT", {"pk": "p2"})
    children = stream.split(parent)
    for child in children:
        stream.put(child, "INSERT", {"pk": f"c-{child}"})
    return parent, children, poison


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


class TestAStoppedParentKeepsItsChildrenWaiting:
    async def test_draining(self) -> None:
        stream = MemoryStream(page_size=1)
        parent, children, poison = family(stream)
        sink = _RefusesPoison()
        with anyio.fail_after(5), pytest.raises(fs.ShardStoppedError) as caught:
            await fs.Pipeline(stream).to(sink).run(drain=True)
        report = caught.value.report
        assert report.shards[parent].stopped_at == poison.sequence_number
        assert all(report.shards[c].state is fs.ShardState.PENDING for c in children)
        assert keys(sink.items) == ["p0"]

    async def test_a_finite_source_returns_instead_of_waiting_forever(self) -> None:
        # Not draining, a finite source's run ends when nothing is left to read; it
        # used to wait forever for the children of a stopped parent.
        stream = MemoryStream(page_size=1)
        parent, children, _ = family(stream)
        for child in children:
            stream.close(child)
        sink = _RefusesPoison()
        with anyio.fail_after(5):
            report = await fs.Pipeline(_Finite(stream)).to(sink).run()
        assert report.shards[parent].state is fs.ShardState.STOPPED
        assert all(report.shards[c].state is fs.ShardState.PENDING for c in children)
        assert keys(sink.items) == ["p0"]
        assert report.stop_reason == "finished"

    async def test_not_draining_the_children_never_start(self) -> None:
        stream = MemoryStream(page_size=1)
        parent, children, _ = family(stream)
        other = stream.add_shard()
        sink = _RefusesPoison()
        stop = anyio.Event()
        reports: list[fs.RunReport] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    reports.append(await fs.Pipeline(stream).to(sink).run(stop=stop))

                tg.start_soon(run)
                # a record on another shard after the parent stopped: once it arrives,
                # the scheduler has had every chance to start the children
                await wait_until(lambda: keys(sink.items) == ["p0"])
                stream.put(other, "INSERT", {"pk": "later"})
                await wait_until(lambda: "later" in keys(sink.items))
                stop.set()
        (report,) = reports
        assert report.shards[parent].state is fs.ShardState.STOPPED
        assert all(report.shards[c].state is fs.ShardState.PENDING for c in children)
        assert keys(sink.items) == ["p0", "later"]


class TestAcrossRuns:
    async def test_a_parent_resumed_from_its_checkpoint_still_goes_before_its_children(
        self, tmp_path: Path
    ) -> None:
        stream = MemoryStream(page_size=1)
        parent, children, poison = family(stream)
        store = checkpoints.sqlite(tmp_path / "state.db")
        with pytest.raises(fs.ShardStoppedError):
            await (
                fs.Pipeline(stream, name="p")
                .to(_RefusesPoison())
                .run(checkpoints=store, drain=True)
            )

        out = sinks.collect()
        report = await fs.Pipeline(stream, name="p").to(out).run(checkpoints=store, drain=True)
        assert keys(out.items[:2]) == ["poison", "p2"]
        assert sorted(keys(out.items[2:])) == sorted(f"c-{c}" for c in children)
        assert report.shards[parent].state is fs.ShardState.ENDED
        async with store.open("p", stream.stream_arn) as session:
            positions = await session.load()
        assert positions[parent] == SHARD_END
        assert poison.sequence_number < stream.records(children[0])[0].sequence_number

    async def test_start_latest_skips_what_is_there_and_reads_children_whole(self) -> None:
        stream = MemoryStream(start="latest")
        old = stream.add_shard()
        stream.put(old, "INSERT", {"pk": "old-parent"})
        kids = stream.split(old)
        stream.put(kids[0], "INSERT", {"pk": "old-kid"})
        live = stream.add_shard()
        stream.put(live, "INSERT", {"pk": "old-live"})

        out = sinks.collect()
        stop = anyio.Event()
        reports: list[fs.RunReport] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    reports.append(await fs.Pipeline(stream).to(out).run(stop=stop))

                tg.start_soon(run)
                # readers at LATEST are in place once the run reads (and waits)
                await wait_until(lambda: all(stream._shards[s].waiters for s in (*kids, live)))
                stream.put(kids[0], "INSERT", {"pk": "new-kid"})
                stream.put(live, "INSERT", {"pk": "new-live"})
                await wait_until(lambda: len(out.items) == 2)
                # a split during the run: its children are read from their beginning,
                # after the parent's last record
                grandkids = stream.split(live)
                stream.put(grandkids[1], "INSERT", {"pk": "grandkid"})
                await wait_until(lambda: len(out.items) == 3)
                stop.set()
        (report,) = reports
        assert sorted(keys(out.items)) == ["grandkid", "new-kid", "new-live"]
        assert keys(out.items)[-1] == "grandkid"
        assert report.shards[old].state is fs.ShardState.SKIPPED
        assert report.shards[live].state is fs.ShardState.ENDED


class TestDrainTerminates:
    async def test_children_found_after_a_split_during_a_drain_are_read(self) -> None:
        # The parent is closed while the runner is a page or two ahead: it reads on to
        # the parent's end, and the children, found then, are drained too.
        stream = MemoryStream(page_size=1)
        parent = stream.add_shard()
        for n in range(10):
            stream.put(parent, "INSERT", {"pk": f"p{n}"})
        children: list[str] = []

        def split_after_first(values: list[Any]) -> None:
            if keys(values) == ["p0"]:
                children.extend(stream.split(parent))
                for child in children:
                    stream.put(child, "INSERT", {"pk": f"c-{child}"})

        out = sinks.collect()
        with anyio.fail_after(5):
            report = (
                await fs.Pipeline(stream).to(sinks.callback(split_after_first), out).run(drain=True)
            )
        assert keys(out.items[:10]) == [f"p{n}" for n in range(10)]
        assert sorted(keys(out.items[10:])) == sorted(f"c-{c}" for c in children)
        assert report.shards[parent].state is fs.ShardState.ENDED
        assert all(report.shards[c].state is fs.ShardState.CAUGHT_UP for c in children)

    @pytest.mark.parametrize("count", [1, 200])
    async def test_many_shards_empty_closed_and_open(self, count: int) -> None:
        stream = MemoryStream(page_size=2)
        shards = [stream.add_shard() for _ in range(count)]
        expected: list[str] = []
        for n, shard in enumerate(shards):
            for m in range(n % 4):  # a quarter of them stay empty
                expected.append(stream.put(shard, "INSERT", {"pk": f"{n}.{m}"}).keys["pk"])
            if n % 3 == 0:
                stream.close(shard)
        out = sinks.collect()
        with anyio.fail_after(10):
            report = await fs.Pipeline(stream).to(out).run(drain=True)
        assert sorted(keys(out.items)) == sorted(expected)
        for n, shard in enumerate(shards):
            want = fs.ShardState.ENDED if n % 3 == 0 else fs.ShardState.CAUGHT_UP
            assert report.shards[shard].state is want

    async def test_a_shard_that_cannot_be_opened_stops_alone(self) -> None:
        # reader() raising used to take the whole run down, unlike a failing read
        stream = MemoryStream()
        good, gone = stream.add_shard(), stream.add_shard()
        stream.put(good, "INSERT", {"pk": "g"})
        stream.put(gone, "INSERT", {"pk": "x"})

        class _Session(_FiniteSession):
            def reader(self, shard: Shard, start: Position) -> ShardReader:
                if shard.shard_id == gone:
                    raise SourceError(f"no iterator for {gone}")
                return self.inner.reader(shard, start)

        class _Source(_Finite):
            @asynccontextmanager
            async def _open(self) -> AsyncIterator[StreamSession]:
                async with self.stream.open() as inner:
                    yield _Session(inner)

        out = sinks.collect()
        with anyio.fail_after(5), pytest.raises(fs.ShardStoppedError) as caught:
            await fs.Pipeline(_Source(stream)).to(out).run(drain=True)
        report = caught.value.report
        assert report.shards[gone].state is fs.ShardState.STOPPED
        assert "SourceError: no iterator" in (report.shards[gone].error or "")
        assert keys(out.items) == ["g"]
