"""A shard stopped by a record that keeps failing is never silent: /ready answers 503
naming the shard and the record, /metrics counts it and the records held up behind it,
the log says so again at the run's log_interval (and no faster), while the other shards
keep delivering. With on_shard_stopped="exit" the run stops gracefully instead, raising
ShardStoppedError, with the other shards' progress checkpointed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from metrics_support import get, scrape
from support import wait_until

import flowstream as fs
from flowstream import checkpoints
from flowstream.monitor import Monitor
from flowstream.report import RunReport, ShardState
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.testing import MemoryStream

TIMEOUT = 10.0
QUICK: dict[str, Any] = {"backoff": (0.001, 0.002)}
INTERVAL = 0.2
STILL_STOPPED = "is still stopped"


class PoisonRefused(SimpleSink):
    """Takes every item but "poison", which it always refuses (retryable: the shard
    retries, then stops). Before refusing it waits for `before_refusing()` to hold."""

    def __init__(self) -> None:
        self.items: list[fs.Record] = []
        self.before_refusing: Callable[[], bool] | None = None

    def describe(self) -> str:
        return "refuses-poison"

    async def send(self, batch: Batch) -> SendResult | None:
        failed: dict[int, BaseException] = {}
        for i, record in enumerate(batch.values):
            if record.keys["pk"] == "poison":
                failed[i] = ConnectionError("poison refused")
            else:
                self.items.append(record)
        if failed and self.before_refusing is not None:
            await wait_until(self.before_refusing, TIMEOUT)
        return SendResult(failed) if failed else None

    def keys(self, shard: str) -> list[str]:
        return [r.keys["pk"] for r in self.items if r.shard_id == shard]


def poisoned_stream(shards: int = 3, per_shard: int = 10, poison_at: int = 4) -> MemoryStream:
    """`shards` shards of `per_shard` records; the first has a poison record at
    `poison_at` (in one page with the records after it)."""
    stream = MemoryStream()
    ids = [stream.add_shard() for _ in range(shards)]
    for n in range(per_shard):
        for s, shard in enumerate(ids):
            pk = "poison" if s == 0 and n == poison_at else f"s{s}-{n}"
            stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk})
    return stream


def keys(records: list[fs.Record]) -> list[str]:
    return [r.keys["pk"] for r in records]


class TestAStoppedShardIsVisible:
    async def test_in_ready_metrics_and_logs_while_the_others_deliver(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="flowstream")
        stream = poisoned_stream()
        bad, *good = stream.shard_ids
        poison = next(r for r in stream.records(bad) if r.keys["pk"] == "poison")
        sink = PoisonRefused()
        monitor = Monitor()
        pipeline = fs.Pipeline(stream, name="orders").to(sink).on_failure(retries=2, **QUICK)
        stop = anyio.Event()
        live: list[RunReport] = []

        def progress(report: RunReport) -> None:
            if not live:
                live.append(report)

        async def run() -> None:
            await pipeline.run(
                monitor=monitor,
                stop=stop,
                log_interval=INTERVAL,
                on_progress=progress,
                progress_interval=0.01,
            )

        with anyio.fail_after(TIMEOUT):
            async with (
                monitor.serve(port=0, host="127.0.0.1") as port,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(run)
                await wait_until(lambda: bool(live), TIMEOUT)
                report = live[0]
                await wait_until(lambda: report.shards[bad].state is ShardState.STOPPED)
                stopped_at = time.monotonic()

                ready = await get(port, "/ready")
                assert ready.status == 503
                (reason,) = ready.text.splitlines()
                assert f"shard {bad} stopped" in reason
                assert f"at record {poison.sequence_number}" in reason
                assert "ConnectionError: poison refused" in reason
                # alive: restarting does not fix a poison record, so /healthz stays 200
                assert (await get(port, "/healthz")).status == 200

                got = await scrape(port)
                assert got.value("flowstream_shards_stopped", pipeline="orders") == 1
                assert got.value("flowstream_shards", pipeline="orders", state="stopped") == 1
                held = got.value("flowstream_records_held_up", pipeline="orders", shard=bad)
                assert held == 6  # the poison and the five records after it in its page
                assert report.shards[bad].held == 6
                # the other shards go on: what is put now is delivered; the stopped shard
                # holds its own back
                for n, shard in enumerate(stream.shard_ids):
                    stream.put(shard, "INSERT", {"pk": f"late-{n}"}, {"pk": f"late-{n}"})
                await wait_until(
                    lambda: all(sink.keys(s) == keys(stream.records(s)) for s in good), TIMEOUT
                )
                # the poison's shard: its page's first call took all but the poison (the
                # sink said so), and nothing was sent since
                assert sink.keys(bad) == [
                    k for k in keys(stream.records(bad)[:10]) if k != "poison"
                ]

                # the warning comes again every interval while the shard stays stopped
                def reminders() -> list[logging.LogRecord]:
                    return [r for r in caplog.records if STILL_STOPPED in r.getMessage()]

                await wait_until(lambda: len(reminders()) >= 4, TIMEOUT)
                elapsed = time.monotonic() - stopped_at
                lines = reminders()
                # bounded: no more than one line per interval (and one to spare)
                assert len(lines) <= elapsed / INTERVAL + 1
                for line in lines:
                    message = line.getMessage()
                    assert line.levelno == logging.WARNING
                    assert f"shard {bad} is still stopped" in message
                    assert f"at record {poison.sequence_number}" in message
                    assert "6 record(s) read are held up behind it" in message
                # the other shards' steady state writes nothing
                assert not [r for r in caplog.records if good[0] in r.getMessage()]
                assert (await get(port, "/ready")).status == 503
                stop.set()

    async def test_the_reminders_end_with_the_run(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="flowstream")
        stream = poisoned_stream(shards=1)
        sink = PoisonRefused()
        pipeline = fs.Pipeline(stream).to(sink).on_failure(retries=0, **QUICK)
        stop = anyio.Event()

        def count() -> int:
            return sum(STILL_STOPPED in r.getMessage() for r in caplog.records)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pipeline.run(stop=stop, log_interval=INTERVAL))
                await wait_until(lambda: count() >= 2, TIMEOUT)
                stop.set()
        after = count()
        # once the run is over nothing is written about it any more
        with anyio.move_on_after(3 * INTERVAL):
            await wait_until(lambda: count() > after, 3 * INTERVAL)
        assert count() == after


class TestExitOnStop:
    async def test_the_run_stops_gracefully_and_raises_with_the_others_checkpointed(
        self,
    ) -> None:
        stream = poisoned_stream(shards=3, per_shard=12)
        bad, *good = stream.shard_ids
        poison = next(r for r in stream.records(bad) if r.keys["pk"] == "poison")
        # the poison is refused only once the other shards took all they had: their
        # progress is then there to be checkpointed when the run ends
        sink = PoisonRefused()
        sink.before_refusing = lambda: all(
            len(sink.keys(s)) == len(stream.records(s)) for s in good
        )
        store = checkpoints.memory()
        monitor = Monitor()
        pipeline = fs.Pipeline(stream, name="orders").to(sink).on_failure(retries=1, **QUICK)
        with anyio.fail_after(TIMEOUT), pytest.raises(fs.ShardStoppedError) as caught:
            # not drain: without the option this run would go on for ever
            await pipeline.run(
                checkpoints=store, monitor=monitor, on_shard_stopped="exit", grace_period=5
            )
        report = caught.value.report
        assert set(report.stopped_shards()) == {bad}
        assert report.stop_reason == f"shard {bad} stopped (on_shard_stopped='exit')"
        assert bad in str(caught.value)
        assert poison.sequence_number in str(caught.value)
        # a graceful stop: the others paused with what they delivered, not interrupted
        assert {report.shards[s].state for s in good} == {ShardState.PAUSED}
        async with store.open("orders", stream.stream_arn) as session:
            positions = await session.load()
        for shard in good:
            assert positions[shard] == stream.records(shard)[-1].sequence_number
            assert report.shards[shard].delivered == len(stream.records(shard))
        records = stream.records(bad)
        assert positions[bad] == records[records.index(poison) - 1].sequence_number
        # a supervisor probing the process before it exits sees it is not ready
        assert not monitor.ready().ok
        assert monitor.healthy().ok

    async def test_continue_is_the_default_and_keeps_the_run_going(self) -> None:
        stream = poisoned_stream(shards=2)
        bad, good = stream.shard_ids
        sink = PoisonRefused()
        stop = anyio.Event()
        live: list[RunReport] = []
        pipeline = fs.Pipeline(stream).to(sink).on_failure(retries=0, **QUICK)

        async def run() -> None:
            live.append(await pipeline.run(stop=stop))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_until(lambda: sink.keys(good) == keys(stream.records(good)))
                stream.put(good, "INSERT", {"pk": "after"}, {"pk": "after"})
                await wait_until(lambda: "after" in sink.keys(good))
                stop.set()
        (report,) = live  # returned, not raised: the run was stopped, as asked
        assert report.shards[bad].state is ShardState.STOPPED
        assert report.stop_reason is not None

    async def test_a_bad_choice_is_refused_when_the_run_starts(self) -> None:
        stream = poisoned_stream(shards=1)
        pipeline = fs.Pipeline(stream).to(PoisonRefused())
        with pytest.raises(fs.PipelineError, match=r"on_shard_stopped='stop'.*'continue'.*'exit'"):
            await pipeline.run(on_shard_stopped="stop")  # type: ignore[arg-type]
