"""Tests of `flowstream.report`: what the run report and its summary say, live and at
the end of a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
from support import wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.testing import MemoryStream


def fanned_out() -> tuple[MemoryStream, fs.Pipeline[fs.Record]]:
    """Three records, one filtered out, the other two sent to three sinks."""
    stream = MemoryStream()
    shard = stream.add_shard()
    for event in ("INSERT", "MODIFY", "REMOVE"):
        stream.put(shard, event, {"pk": event})
    pipeline = (
        fs.Pipeline(stream, name="fan")
        .filter(events=["MODIFY", "REMOVE"])
        .to(sinks.collect("a"), sinks.collect("b"), sinks.collect("c"))
    )
    return stream, pipeline


class TestSummary:
    async def test_says_what_each_number_counts(self) -> None:
        _, pipeline = fanned_out()
        report = await pipeline.run(drain=True)
        lines = report.summary().splitlines()
        assert lines[0].startswith("pipeline 'fan': 3 records read in ")
        assert lines[0].endswith("s (drained)")
        assert lines[1] == (
            "  elements: 1 filtered out, 0 dropped by routing, 0 failed, 0 dead-lettered"
        )
        assert lines[2] == (
            "  deliveries: 6 (an element counts once for each sink that acknowledged it)"
        )
        assert lines[3] == "  shards: 1 (1 caught_up)"
        assert lines[4:] == [
            f"  sink {name}: 2 delivered, 0 failed, 1 batches" for name in ("a", "b", "c")
        ]

    async def test_a_stopped_run_reports_its_shards_paused(self) -> None:
        stream, pipeline = fanned_out()
        stop = anyio.Event()
        reports: list[fs.RunReport] = []

        async def run() -> None:
            reports.append(await pipeline.run(stop=stop))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_until(lambda: len(stream.records()) == 3 and _delivered(pipeline))
                stop.set()
        (report,) = reports
        (shard,) = report.shards.values()
        assert shard.state is fs.ShardState.PAUSED
        assert shard.checkpoint == stream.records()[-1].sequence_number
        assert "  shards: 1 (1 paused)" in report.summary().splitlines()


def _delivered(pipeline: fs.Pipeline[fs.Record]) -> bool:
    return all(len(getattr(sink, "items", [])) == 2 for sink in pipeline.compile().all_sinks)


class TestLiveReport:
    def test_duration_runs_on_until_the_run_finishes(self) -> None:
        started = datetime.now(UTC) - timedelta(seconds=5)
        live = fs.RunReport(pipeline="p", started=started)
        assert 5 <= live.duration < 60
        assert "in 5." in live.summary().splitlines()[0]
        assert "(running)" in live.summary()
        done = fs.RunReport(pipeline="p", started=started, finished=started + timedelta(seconds=2))
        assert done.duration == 2.0

    def test_a_report_not_started_has_no_duration(self) -> None:
        assert fs.RunReport(pipeline="p").duration == 0.0
