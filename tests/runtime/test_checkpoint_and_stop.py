"""Checkpoints resume where the last run stopped; stopping never loses or skips a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.sqlite import SqliteCheckpoints
from flowstream.testing import MemoryStream


async def saved(store: SqliteCheckpoints, stream: MemoryStream, name: str) -> dict[str, str]:
    async with store.open(name, stream.stream_arn) as session:
        return await session.load()


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
