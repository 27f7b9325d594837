"""`Pipeline.batching(max_window, max_records=)`: on a trickle a shard gathers pages for
up to the window and delivers them as one (fewer, fuller sink calls), never holding a
record longer than the window, never past its record limit, and never at the cost of
order, the frontier, a failure's place or a prompt stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import PipelineError
from flowstream.testing import MemoryStream

TIMEOUT = 10.0


class Calls:
    """A callback sink's calls: the values of each, and when each came."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.at: list[float] = []
        self.arrived = anyio.Event()

    async def __call__(self, values: list[Any]) -> None:
        self.batches.append(list(values))
        self.at.append(time.monotonic())
        self.arrived.set()

    @property
    def values(self) -> list[Any]:
        return [v for batch in self.batches for v in batch]


async def trickle(
    pipeline: fs.Pipeline[Any], stream: MemoryStream, shard: str, count: int, **run: Any
) -> tuple[fs.RunReport, dict[int, float]]:
    """Put `count` records one by one (each once the run has read the one before), then
    stop the run once each is delivered or dead-lettered; (report, put time of each)."""
    stop = anyio.Event()
    put_at: dict[int, float] = {}
    live: list[fs.RunReport] = []
    result: list[fs.RunReport] = []
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            result.append(
                await pipeline.run(
                    stop=stop, on_progress=live.append, progress_interval=0.005, **run
                )
            )

        tg.start_soon(go)
        await wait_until(lambda: bool(live), TIMEOUT)
        report = live[0]
        for n in range(count):
            put_at[n] = time.monotonic()
            stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})
            await wait_until(read(report, shard, n + 1), TIMEOUT)
        await wait_until(lambda: report.delivered + report.dead_lettered == count, TIMEOUT)
        stop.set()
    return result[0], put_at


def read(report: fs.RunReport, shard: str, count: int) -> Callable[[], bool]:
    return lambda: report.shards[shard].read == count


def values(record: fs.Record) -> int:
    return int((record.new_image or {})["n"])


async def test_a_trickle_is_delivered_in_fewer_calls_in_order_within_the_window() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    calls = Calls()
    pipeline = fs.Pipeline(stream, name="p").map(values).to(sinks.callback(calls))
    report, put_at = await trickle(pipeline.batching(0.3), stream, shard, 30)
    assert calls.values == list(range(30))  # in order, each once
    assert len(calls.batches) < 15  # without a window: one call per record
    # no record waited much longer than the window (slack for a loaded machine)
    waits = [calls.at[i] - put_at[batch[0]] for i, batch in enumerate(calls.batches)]
    assert max(waits) < 0.3 + 1.0
    assert report.shards[shard].checkpoint == stream.records(shard)[-1].sequence_number


async def test_without_a_window_each_page_is_its_own_call() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    calls = Calls()
    pipeline = fs.Pipeline(stream, name="p").map(values).to(sinks.callback(calls))
    await trickle(pipeline, stream, shard, 10)
    assert calls.batches == [[n] for n in range(10)]


async def test_the_record_limit_ends_a_window_early() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    calls = Calls()
    pipeline = (
        fs.Pipeline(stream, name="p")
        .map(values)
        .to(sinks.callback(calls))
        .batching(60, max_records=4)
    )
    await trickle(pipeline, stream, shard, 12)  # would hang a minute a window otherwise
    assert calls.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


async def test_a_stop_does_not_wait_for_the_window_and_leaves_the_gathered_unsaved() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    for n in range(3):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})
    calls = Calls()
    store = checkpoints.memory()
    stop = anyio.Event()
    live: list[fs.RunReport] = []
    pipeline = fs.Pipeline(stream, name="p").map(values).to(sinks.callback(calls)).batching(60)
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await pipeline.run(
                checkpoints=store, stop=stop, on_progress=live.append, progress_interval=0.005
            )

        tg.start_soon(go)
        await wait_until(lambda: bool(live) and live[0].shards[shard].read == 3, TIMEOUT)
        began = time.monotonic()
        stop.set()
    assert time.monotonic() - began < TIMEOUT  # the window is 60 s
    assert calls.batches == []  # still gathered when the stop came: not delivered
    async with store.open("p", stream.stream_arn) as session:
        assert await session.load() == {}  # nor checkpointed: the next run reads them


async def test_a_failure_in_a_gathered_page_is_dead_lettered_at_its_own_record() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    dead = sinks.collect()
    calls = Calls()

    def fail_on_5(record: fs.Record) -> int:
        n = values(record)
        if n == 5:
            raise ValueError("five")
        return n

    pipeline = (
        fs.Pipeline(stream, name="p")
        .map(fail_on_5)
        .to(sinks.callback(calls))
        .on_failure(retries=0, dead_letter=dead)
        .batching(0.2)
    )
    report, _ = await trickle(pipeline, stream, shard, 9 + 1)
    assert calls.values == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    (letter,) = dead.items
    assert letter.record.sequence_number == stream.records(shard)[5].sequence_number
    assert report.shards[shard].dead_lettered == 1


async def test_a_drain_with_a_window_ends_without_waiting_it_out() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    for n in range(20):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})
    calls = Calls()
    pipeline = fs.Pipeline(stream, name="p").map(values).to(sinks.callback(calls)).batching(60)
    with anyio.fail_after(TIMEOUT):
        report = await pipeline.run(drain=True)
    assert calls.values == list(range(20))
    assert report.shards[shard].state is fs.ShardState.CAUGHT_UP


async def test_a_window_and_key_concurrency_together_keep_each_key_in_order() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    calls = Calls()
    pipeline = (
        fs.Pipeline(stream, name="p")
        .map(lambda r: (str((r.new_image or {})["pk"])[:2], values(r)))
        .to(sinks.callback(calls))
        .concurrency(4, key=lambda pair: pair[0])
        .batching(0.2)
    )
    await trickle(pipeline, stream, shard, 24)
    by_key: dict[str, list[int]] = {}
    for key, n in calls.values:
        by_key.setdefault(key, []).append(n)
    assert all(ns == sorted(ns) for ns in by_key.values())
    assert sorted(n for _, n in calls.values) == list(range(24))


@pytest.mark.parametrize(
    ("window", "records", "message"),
    [
        (-1, 10, "max_window=-1"),
        (301, 10, "max_window=301"),
        (float("nan"), 10, "max_window=nan"),
        ("1", 10, "max_window='1'"),
        (1, 0, "max_records=0"),
        (1, 2.5, "max_records=2.5"),
    ],
)
def test_bad_windows_are_refused_when_building(window: Any, records: Any, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        fs.Pipeline(MemoryStream()).to(sinks.collect()).batching(window, max_records=records)


def test_the_plan_says_it() -> None:
    pipeline = fs.Pipeline(MemoryStream()).to(sinks.collect()).batching(0.5, max_records=200)
    assert "batching: pages gathered for up to 0.5s or 200 records" in pipeline.describe()
