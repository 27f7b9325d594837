"""`Monitor` served over real HTTP on 127.0.0.1 while a real run goes on: /metrics, parsed
with prometheus-client's own parser, says what the run's RunReport says (read, filtered,
dropped, delivered per sink, dead letters, retries, checkpoint writes, sink batches and
their latency histogram, shards by state); the iterator age is 0 for a caught-up shard and
grows for one whose sink is stuck; /ready answers 200 only while the run runs, /healthz
503 only after a fatal error. A Monitor also works in a registry of the user's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from metrics_support import Scrape, get, scrape
from prometheus_client import CollectorRegistry, Counter, generate_latest
from support import eventually, wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import SinkError
from flowstream.monitor import Monitor
from flowstream.report import RunReport, ShardState
from flowstream.sinks.base import Batch, SendResult, SimpleSink, SinkWriter
from flowstream.sources.base import StreamSession
from flowstream.testing import MemoryStream

TIMEOUT = 10.0
QUICK: dict[str, Any] = {"backoff": (0.001, 0.002)}


def long_ago() -> datetime:
    """Five minutes before now (when the test puts its records, not at import)."""
    return datetime.now(UTC) - timedelta(minutes=5)


class Flaky(SimpleSink):
    """Takes everything, but fails the first call that carries the key "flaky" (a
    refused connection: retryable)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.failed_once = False

    def describe(self) -> str:
        return "flaky"

    async def send(self, batch: Batch) -> SendResult | None:
        if not self.failed_once and any(v["pk"] == "flaky" for v in batch.values):
            self.failed_once = True
            raise ConnectionError("refused, once")
        self.items.extend(batch.values)
        return None


class Holding(SimpleSink):
    """Holds every call for the shard `held` until `release` is set."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.release = anyio.Event()
        self.waiting = 0
        self.items: list[Any] = []

    def describe(self) -> str:
        return "holding"

    async def send(self, batch: Batch) -> SendResult | None:
        if batch.shard_id == self.held:
            self.waiting += 1
            await self.release.wait()
        self.items.extend(batch.values)
        return None


def as_item(record: fs.Record) -> dict[str, Any]:
    if record.keys["pk"] == "poison":
        raise ValueError("cannot map the poison")
    return {"pk": record.keys["pk"], "kind": (record.new_image or {}).get("kind", "main")}


def busy_stream() -> tuple[MemoryStream, list[str]]:
    """Three shards of 20 changes each; the last shard is closed (it ends). Per shard:
    REMOVEs (filtered out), "audit" and "main" items, "other" items no route takes, and
    in the second shard a poison record (dead-lettered) and a "flaky" key (retried)."""
    stream = MemoryStream(page_size=7)
    ids = [stream.add_shard() for _ in range(3)]
    for n in range(20):
        for s, shard in enumerate(ids):
            pk = f"s{s}-{n}"
            if s == 1 and n == 5:
                pk = "poison"
            elif s == 1 and n == 10:
                pk = "flaky"
            kind = ("main", "audit", "main", "other")[n % 4]
            event = "REMOVE" if n % 5 == 4 else "INSERT"
            stream.put(shard, event, {"pk": pk}, {"pk": pk, "kind": kind}, created_at=long_ago())
    stream.close(ids[2])
    return stream, ids


@asynccontextmanager
async def running(
    pipeline: fs.Pipeline[Any], **options: Any
) -> AsyncIterator[tuple[anyio.Event, list[RunReport], list[BaseException]]]:
    """Run `pipeline` in the background with a stop event; yields (stop, the live report
    once known, the error the run raised). Stops it on exit and waits for it."""
    stop = anyio.Event()
    live: list[RunReport] = []
    errors: list[BaseException] = []

    def progress(report: RunReport) -> None:
        if not live:
            live.append(report)

    async def run() -> None:
        try:
            final = await pipeline.run(
                stop=stop, on_progress=progress, progress_interval=0.01, **options
            )
        except Exception as exc:
            errors.append(exc)
        else:
            if not live:
                live.append(final)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                yield stop, live, errors
            finally:
                stop.set()


def assert_matches(got: Scrape, report: RunReport) -> None:
    """Every count /metrics says is the report's."""
    name = report.pipeline
    per_shard = {
        "flowstream_records_read_total": "read",
        "flowstream_records_filtered_total": "filtered",
        "flowstream_records_dropped_total": "dropped",
        "flowstream_records_failed_total": "failed",
        "flowstream_dead_letters_total": "dead_lettered",
        "flowstream_retries_total": "retries",
    }
    for metric, attribute in per_shard.items():
        expected = {k: float(getattr(s, attribute)) for k, s in report.shards.items()}
        assert got.by(metric, "shard", pipeline=name) == expected, metric
    for metric, attribute in {
        "flowstream_records_delivered_total": "delivered",
        "flowstream_sink_failures_total": "failed",
        "flowstream_sink_batches_total": "batches",
    }.items():
        expected = {k: float(getattr(s, attribute)) for k, s in report.sinks.items()}
        assert got.by(metric, "sink", pipeline=name) == expected, metric
    for sink_name, sink in report.sinks.items():
        labels = {"pipeline": name, "sink": sink_name}
        count = got.value("flowstream_sink_send_duration_seconds_count", **labels)
        assert count == sink.batches  # one observation per send() call
        assert got.value("flowstream_sink_send_duration_seconds_sum", **labels) == pytest.approx(
            sink.send_seconds
        )
        assert got.value("flowstream_sink_send_duration_seconds_bucket", le="+Inf", **labels) == (
            sink.batches
        )
    states = {state.value: 0.0 for state in ShardState}
    for shard in report.shards.values():
        states[shard.state.value] += 1
    assert got.by("flowstream_shards", "state", pipeline=name) == states
    assert got.value("flowstream_shards_stopped", pipeline=name) == len(report.stopped_shards())
    writes = got.by("flowstream_checkpoint_writes_total", "outcome", pipeline=name)
    assert writes == {
        outcome: float(report.checkpoint_writes.get(outcome, 0))
        for outcome in ("ok", "failed", "refused")
    }


class TestMetricsEndpoint:
    async def test_metrics_say_what_the_run_report_says(self) -> None:
        stream, ids = busy_stream()
        audit, main, dead = sinks.collect(), Flaky(), sinks.collect()
        pipeline = (
            fs.Pipeline(stream, name="orders")
            .filter(events=["INSERT"])
            .map(as_item)
            .route(
                fs.when(lambda item: item["kind"] == "audit", audit),
                fs.when(lambda item: item["kind"] == "main", main),
            )
            .on_failure(retries=1, dead_letter=dead, **QUICK)
        )
        monitor = Monitor()
        async with monitor.serve(port=0, host="127.0.0.1") as port:
            before = await get(port, "/ready")
            assert before.status == 503
            assert "no pipeline is running yet" in before.text
            assert (await get(port, "/healthz")).status == 200

            async with running(pipeline, checkpoints=checkpoints.memory(), monitor=monitor) as (
                _stop,
                live,
                errors,
            ):
                await wait_until(lambda: bool(live), TIMEOUT)
                report = live[0]
                # everything there is was read and is done: the counts hold still
                await wait_until(
                    lambda: (
                        len(report.shards) == 3
                        and report.shards[ids[2]].state is ShardState.ENDED
                        and all(
                            report.shards[s].caught_up
                            # and written down: checkpoint writes hold still too
                            and report.shards[s].checkpoint == stream.records(s)[-1].sequence_number
                            for s in ids[:2]
                        )
                    ),
                    TIMEOUT,
                )
                ready, healthz = await get(port, "/ready"), await get(port, "/healthz")
                assert (ready.status, ready.text) == (200, "ok\n")
                assert (healthz.status, healthz.text) == (200, "ok\n")
                during = await scrape(port)
                assert_matches(during, report)
                assert during.value("flowstream_up", pipeline="orders", phase="running") == 1

            assert not errors
            after = await scrape(port)
            final = await get(port, "/ready")
            assert final.status == 503
            assert "pipeline 'orders' is finished" in final.text
            assert (await get(port, "/healthz")).status == 200

        # the report the run returned, and what the last scrape said of it
        assert_matches(after, report)
        assert after.value("flowstream_up", pipeline="orders", phase="finished") == 0
        per_shard = {s: 20.0 for s in ids}
        assert after.by("flowstream_records_read_total", "shard", pipeline="orders") == per_shard
        # what the test knows of the stream, so the report is not merely echoed
        assert report.read == 60
        assert report.filtered == 12  # every fifth change is a REMOVE
        assert report.dead_lettered == 1
        assert len(dead.items) == 1
        assert report.shards[ids[1]].retries >= 2  # the poison once, the flaky key once
        assert report.sinks["collect"].delivered == len(audit.items) > 0
        assert report.sinks["flaky"].delivered == len(main.items) > 0
        assert report.dropped == 60 - 12 - 1 - len(audit.items) - len(main.items) > 0
        assert report.checkpoint_writes["ok"] >= 1
        assert (
            after.value("flowstream_checkpoint_writes_total", pipeline="orders", outcome="ok") > 0
        )
        assert after.types["flowstream_sink_send_duration_seconds"] == "histogram"
        assert after.by("flowstream_shards", "state", pipeline="orders")["ended"] == 1
        # the run is over: its ages are as of its end, 0 for every shard read to its end
        ages = after.by("flowstream_iterator_age_seconds", "shard", pipeline="orders")
        assert ages == {s: 0.0 for s in ids[:2]}  # the ended shard is left out

    async def test_ready_is_503_while_the_run_is_starting(self) -> None:
        opened = anyio.Event()
        gate = anyio.Event()

        class SlowToOpen(MemoryStream):
            @asynccontextmanager
            async def _slow(self) -> AsyncIterator[StreamSession]:
                opened.set()
                await gate.wait()
                async with MemoryStream.open(self) as session:
                    yield session

            def open(self) -> AbstractAsyncContextManager[StreamSession]:
                return self._slow()

        stream = SlowToOpen()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a"})
        out = sinks.collect()
        monitor = Monitor()
        async with (
            monitor.serve(port=0, host="127.0.0.1") as port,
            running(fs.Pipeline(stream, name="slow").to(out), monitor=monitor),
        ):
            await opened.wait()
            starting = await get(port, "/ready")
            assert starting.status == 503
            assert starting.text == "pipeline 'slow' is starting\n"
            assert (await get(port, "/healthz")).status == 200
            gate.set()
            await wait_until(lambda: len(out.items) == 1, TIMEOUT)
            assert (await get(port, "/ready")).status == 200

    async def test_iterator_age_is_0_caught_up_and_grows_while_a_sink_holds(self) -> None:
        stream = MemoryStream()
        free, held = stream.add_shard(), stream.add_shard()
        created = long_ago()
        for n in range(5):
            for shard in (free, held):
                stream.put(shard, "INSERT", {"pk": f"{n}"}, {"pk": f"{n}"}, created_at=created)
        sink = Holding(held)
        monitor = Monitor()
        pipeline = fs.Pipeline(stream, name="ages").to(sink)
        async with (
            monitor.serve(port=0, host="127.0.0.1") as port,
            running(pipeline, monitor=monitor) as (_, live, _errors),
        ):
            await wait_until(lambda: bool(live) and sink.waiting == 1, TIMEOUT)
            report = live[0]
            await wait_until(lambda: report.shards[free].caught_up, TIMEOUT)

            first = await scrape(port)
            ages = first.by("flowstream_iterator_age_seconds", "shard", pipeline="ages")
            assert ages[free] == 0.0
            # behind by the age of the oldest record read and not done: 5 minutes
            assert 299 < ages[held] < 360
            assert first.value("flowstream_iterator_age_max_seconds", pipeline="ages") == ages[held]

            async def later() -> bool:
                again = await scrape(port)
                grown = again.value("flowstream_iterator_age_seconds", pipeline="ages", shard=held)
                return grown > ages[held]

            await eventually(later)
            sink.release.set()
            await wait_until(lambda: report.shards[held].caught_up, TIMEOUT)
            caught_up = await scrape(port)
            ages = caught_up.by("flowstream_iterator_age_seconds", "shard", pipeline="ages")
            assert ages == {free: 0.0, held: 0.0}
            assert caught_up.value("flowstream_iterator_age_max_seconds", pipeline="ages") == 0

    async def test_healthz_is_503_after_a_fatal_error(self) -> None:
        class Unopenable(SimpleSink):
            def describe(self) -> str:
                return "unopenable"

            def open(self) -> AbstractAsyncContextManager[SinkWriter]:
                return self._broken()

            @asynccontextmanager
            async def _broken(self) -> AsyncIterator[SinkWriter]:
                raise SinkError("cannot open unopenable: no route to host")
                yield self

            async def send(self, batch: Batch) -> SendResult | None:
                raise AssertionError("never opened")

        stream = MemoryStream()
        stream.add_shard()
        monitor = Monitor()
        async with monitor.serve(port=0, host="127.0.0.1") as port:
            with pytest.raises(SinkError):
                await fs.Pipeline(stream, name="broken").to(Unopenable()).run(monitor=monitor)
            healthz = await get(port, "/healthz")
            assert healthz.status == 503
            assert "pipeline 'broken' failed: SinkError: cannot open unopenable" in healthz.text
            ready = await get(port, "/ready")
            assert ready.status == 503
            assert "is failed" in ready.text
            got = await scrape(port)
            assert got.value("flowstream_up", pipeline="broken", phase="failed") == 0


class TestOwnRegistry:
    async def test_a_monitor_in_the_users_registry_is_exported_with_their_metrics(
        self,
    ) -> None:
        registry = CollectorRegistry()
        requests = Counter("myapp_requests", "The app's own.", registry=registry)
        requests.inc(3)
        monitor = Monitor(registry=registry)
        assert monitor.registry is registry
        stream, _ = busy_stream()
        out = sinks.collect()
        report = await (
            fs.Pipeline(stream, name="mine")
            .filter(lambda r: r.keys["pk"] != "poison")
            .to(out)
            .run(drain=True, monitor=monitor)
        )
        got = Scrape(generate_latest(registry).decode())
        assert got.value("myapp_requests_total") == 3
        assert (
            got.value("flowstream_records_read_total", pipeline="mine", shard=stream.shard_ids[0])
            == 20
        )
        assert_matches(got, report)

    async def test_registering_a_monitor_in_another_registry(self) -> None:
        monitor = Monitor()
        other = CollectorRegistry(auto_describe=True)
        other.register(monitor)
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a"})
        await fs.Pipeline(stream, name="p").to(sinks.collect()).run(drain=True, monitor=monitor)
        got = Scrape(generate_latest(other).decode())
        assert got.value("flowstream_records_read_total", pipeline="p", shard=shard) == 1
        assert Scrape(monitor.metrics_text().decode()).text == got.text
