"""A shard's iterator age (`ShardReport.iterator_age`): how far behind it is, from the
oldest record read and not yet done, wherever that record waits: in a page the
consumer delivers, in the page read ahead behind it, or in a step being retried; 0 once
everything read is done and the last read found nothing newer; and growing again when
reads stop returning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from support import wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.report import READ_OVERDUE, ShardReport, ShardState
from flowstream.testing import MemoryStream

TIMEOUT = 10.0
TEN_MINUTES = 600.0


def old() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=TEN_MINUTES)


async def test_a_record_retried_in_a_step_while_a_page_was_delivered_keeps_the_age() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    stream.put(shard, "INSERT", {"pk": "k0"}, {"pk": "k0", "n": 0}, created_at=old())
    gate = anyio.Event()

    def call_service(record: fs.Record) -> Any:
        if record.new_value("n") >= 1:
            raise ConnectionError("service down")  # transient: retried for as long as it lasts
        return record.keys

    async def slow(values: list[Any]) -> None:
        await gate.wait()

    pipeline = (
        fs.Pipeline(stream, name="age")
        .map(call_service)
        .to(sinks.callback(slow))
        .on_failure(retries=None, backoff=(0.001, 0.01))
    )
    stop = anyio.Event()
    live: list[fs.RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await pipeline.run(
                stop=stop, on_progress=live.append, progress_interval=0.01, log_interval=60
            )

        tg.start_soon(run)
        await wait_until(lambda: bool(live) and live[0].shards[shard].read == 1, TIMEOUT)
        stats = live[0].shards[shard]
        # the first page (which was all there was: caught up) is being delivered when
        # the next record comes and fails in the step
        stream.put(shard, "INSERT", {"pk": "k1"}, {"pk": "k1", "n": 1}, created_at=old())
        await wait_until(lambda: stats.retries >= 3, TIMEOUT)
        gate.set()
        await wait_until(lambda: stats.delivered == 1, TIMEOUT)
        await wait_until(lambda: stats.retries >= 6, TIMEOUT)
        age = stats.iterator_age()
        assert age is not None
        assert age >= TEN_MINUTES - 1
        assert not stats.caught_up
        stop.set()


async def test_a_page_read_ahead_behind_a_slow_sink_keeps_the_age() -> None:
    stream = MemoryStream(page_size=1)
    shard = stream.add_shard()
    for n in range(3):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, created_at=old())
    gate = anyio.Event()
    calls: list[int] = []

    async def slow(batch: list[Any]) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            await gate.wait()  # the second page waits; the third is read behind it

    stop = anyio.Event()
    live: list[fs.RunReport] = []
    pipeline = fs.Pipeline(stream, name="age").to(sinks.callback(slow))
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await pipeline.run(stop=stop, on_progress=live.append, progress_interval=0.01)

        tg.start_soon(run)
        await wait_until(lambda: bool(live) and live[0].shards[shard].read == 3, TIMEOUT)
        stats = live[0].shards[shard]
        age = stats.iterator_age()
        assert age is not None
        assert age >= TEN_MINUTES - 1
        gate.set()
        await wait_until(lambda: stats.caught_up, TIMEOUT)
        assert stats.iterator_age() == 0.0
        stop.set()


def test_a_caught_up_shard_whose_reads_stopped_returning_is_behind_by_that_long() -> None:
    now = datetime.now(UTC)
    shard = ShardReport("s", state=ShardState.RUNNING, caught_up=True)
    shard.last_read_at = now - timedelta(seconds=5)
    assert shard.iterator_age(now) == 0.0
    shard.last_read_at = now - timedelta(seconds=READ_OVERDUE + 60)
    assert shard.iterator_age(now) == READ_OVERDUE + 60
    # a finished shard is never behind
    shard.state = ShardState.ENDED
    assert shard.iterator_age(now) == 0.0
