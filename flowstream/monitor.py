"""Metrics and health of running pipelines, for Prometheus and for orchestrators.

A `Monitor` reads the live `RunReport` of each run it watches when it is scraped, so
counting costs the hot path nothing more than the report's own counters. It is a
prometheus-client collector, and it answers readiness and liveness the way Kubernetes
probes and load balancers ask: `Monitor.serve()` serves ``/metrics``, ``/ready`` and
``/healthz``; ``run(monitor=...)`` (or ``flowstream run --metrics-port``) feeds it.

prometheus-client and aiohttp's server are imported when a monitor is made or served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from flowstream.report import LATENCY_BUCKETS, RunReport, ShardState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["Health", "Monitor", "Phase"]

logger = logging.getLogger("flowstream")

Phase = Literal["starting", "running", "stopping", "finished", "failed"]

# Shards that are read no more in this run: no iterator age is exported for them, and
# their other series go after _GONE_FOR seconds (the last scrapes see their final counts).
_GONE = (ShardState.ENDED, ShardState.SKIPPED, ShardState.LOST)
_GONE_FOR = 600.0


@dataclass(frozen=True, slots=True)
class Health:
    """An answer to a probe: `ok`, and the reasons when it is not (one line each)."""

    ok: bool
    reasons: tuple[str, ...] = ()

    def text(self) -> str:
        return "ok\n" if self.ok else "".join(f"{r}\n" for r in self.reasons)


@dataclass(slots=True)
class _Run:
    report: RunReport
    phase: Phase = "starting"
    error: str | None = None


class Monitor:
    """Watches pipeline runs; a prometheus-client collector and a health check.

    ``monitor = Monitor()``, then ``await pipeline.run(monitor=monitor)`` while
    ``async with monitor.serve(port=9100)`` serves it; or register it in your own
    registry (``prometheus_client.REGISTRY.register(monitor)``) and ask `ready()` and
    `healthy()` from your own endpoints.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client.registry import CollectorRegistry

        self._runs: dict[str, _Run] = {}
        #: when each shard was first seen ended or lost: its series are dropped later
        self._gone: dict[tuple[str, str], float] = {}
        #: where /metrics is read from: a private registry unless one is given
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    # -- fed by the engine ----------------------------------------------------------------

    def watch(self, report: RunReport) -> None:
        """Start watching a run. A new run of a pipeline replaces its finished one (its
        counters start again from 0, which Prometheus reads as a reset); a second run of
        a pipeline still running is refused: their series would be one."""
        old = self._runs.get(report.pipeline)
        if old is not None and old.phase not in ("finished", "failed"):
            from flowstream.errors import PipelineError

            raise PipelineError(
                f"the monitor already watches a running pipeline named {report.pipeline!r}; "
                "give each pipeline run at the same time its own name, or its own Monitor"
            )
        self._runs[report.pipeline] = _Run(report)
        self._gone.clear()

    def set_phase(self, report: RunReport, phase: Phase, error: str | None = None) -> None:
        run = self._runs.get(report.pipeline)
        if run is not None and run.report is report:
            run.phase = phase
            run.error = error

    # -- probes ---------------------------------------------------------------------------

    def ready(self) -> Health:
        """Ready when every watched run is running and none has a stopped shard."""
        if not self._runs:
            return Health(False, ("no pipeline is running yet",))
        reasons: list[str] = []
        now = datetime.now(UTC)
        for name, run in self._runs.items():
            if run.phase != "running":
                detail = f": {run.error}" if run.error else ""
                reasons.append(f"pipeline {name!r} is {run.phase}{detail}")
            for shard in run.report.stopped_shards().values():
                since = shard.stopped_since or now
                reasons.append(
                    f"pipeline {name!r}: shard {shard.shard_id} stopped "
                    f"{(now - since).total_seconds():.0f}s ago at record {shard.stopped_at}: "
                    f"{shard.error}"
                )
        return Health(not reasons, tuple(reasons))

    def healthy(self) -> Health:
        """Alive unless a run failed (a fatal error: restarting is the fix)."""
        reasons = tuple(
            f"pipeline {name!r} failed: {run.error}"
            for name, run in self._runs.items()
            if run.phase == "failed"
        )
        return Health(not reasons, reasons)

    # -- metrics --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The metric families, read from the live reports (prometheus-client calls this
        on each scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(f"flowstream_{name}", doc, labels=labels)

        shard_labels = ["pipeline", "shard"]
        read = counter("records_read", "Records read from the stream.", shard_labels)
        filtered = counter("records_filtered", "Elements a filter step dropped.", shard_labels)
        dropped = counter(
            "records_dropped", "Elements no route took (dropped by routing).", shard_labels
        )
        failed = counter(
            "records_failed", "Elements that failed for good (stop or dead letter).", shard_labels
        )
        letters = counter("dead_letters", "Records sent to a dead-letter sink.", shard_labels)
        retries = counter("retries", "Retries of failing records or batches.", shard_labels)
        age = GaugeMetricFamily(
            "flowstream_iterator_age_seconds",
            "Now minus the creation time of the oldest record read and not yet done; 0 "
            "when caught up. Grows while a shard is stopped or its sinks are stuck.",
            labels=shard_labels,
        )
        max_age = GaugeMetricFamily(
            "flowstream_iterator_age_max_seconds",
            "The largest iterator age over the pipeline's shards (alert on this).",
            labels=["pipeline"],
        )
        held = GaugeMetricFamily(
            "flowstream_records_held_up",
            "Records read and left undone behind the record a stopped shard stopped at.",
            labels=shard_labels,
        )
        shards = GaugeMetricFamily(
            "flowstream_shards", "Shards by state.", labels=["pipeline", "state"]
        )
        stopped = GaugeMetricFamily(
            "flowstream_shards_stopped",
            "Shards stopped at a record that kept failing (alert when above 0).",
            labels=["pipeline"],
        )
        delivered = counter(
            "records_delivered",
            "Elements a sink acknowledged (dead letters included, on their sink).",
            ["pipeline", "sink"],
        )
        sink_failed = counter(
            "sink_failures", "Elements a sink failed for good.", ["pipeline", "sink"]
        )
        batches = counter("sink_batches", "send() calls made to a sink.", ["pipeline", "sink"])
        latency = HistogramMetricFamily(
            "flowstream_sink_send_duration_seconds",
            "Seconds one send() call to a sink took.",
            labels=["pipeline", "sink"],
        )
        checkpoints = counter(
            "checkpoint_writes",
            "Checkpoint store writes by outcome (ok, failed; refused counts positions).",
            ["pipeline", "outcome"],
        )
        up = GaugeMetricFamily(
            "flowstream_up",
            "1 while the run is running (stopped shards included: see flowstream_shards_"
            "stopped), 0 while it starts, stops, or after it finished or failed.",
            labels=["pipeline", "phase"],
        )
        leases_held = GaugeMetricFamily(
            "flowstream_leases_held", "Leases this worker holds.", labels=["pipeline", "worker"]
        )
        lease_events = counter(
            "lease_events",
            "Leases taken (free or expired), stolen, lost and released by this worker.",
            ["pipeline", "worker", "event"],
        )
        now = datetime.now(UTC)
        clock = time.monotonic()
        for name, run in list(self._runs.items()):
            report = run.report
            at = report.finished or now
            up.add_metric([name, run.phase], 1.0 if run.phase == "running" else 0.0)
            states = report.shard_states()
            worst = 0.0
            for shard_id, shard in list(report.shards.items()):
                labels = [name, shard_id]
                if not self._exported(name, shard_id, shard.state, clock):
                    continue
                read.add_metric(labels, shard.read)
                filtered.add_metric(labels, shard.filtered)
                dropped.add_metric(labels, shard.dropped)
                failed.add_metric(labels, shard.failed)
                letters.add_metric(labels, shard.dead_lettered)
                retries.add_metric(labels, shard.retries)
                if shard.state is ShardState.STOPPED:
                    held.add_metric(labels, shard.held)
                if shard.state not in _GONE:
                    seconds = shard.iterator_age(at)
                    if seconds is not None:
                        age.add_metric(labels, seconds)
                        worst = max(worst, seconds)
            max_age.add_metric([name], worst)
            for state, count in states.items():
                shards.add_metric([name, state.value], count)
            stopped.add_metric([name], states[ShardState.STOPPED])
            for sink_name, sink in list(report.sinks.items()):
                labels = [name, sink_name]
                delivered.add_metric(labels, sink.delivered)
                sink_failed.add_metric(labels, sink.failed)
                batches.add_metric(labels, sink.batches)
                cumulative, buckets = 0, []
                for bound, count in zip(
                    [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"], sink.latency_counts, strict=True
                ):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                latency.add_metric(labels, buckets, sink.send_seconds)
            for outcome in ("ok", "failed", "refused"):
                checkpoints.add_metric([name, outcome], report.checkpoint_writes.get(outcome, 0))
            lease = report.leases
            if lease is not None:
                leases_held.add_metric([name, lease.worker_id], lease.held)
                for event in ("taken", "stolen", "lost", "released"):
                    lease_events.add_metric([name, lease.worker_id, event], getattr(lease, event))
        yield from (
            read,
            filtered,
            dropped,
            failed,
            letters,
            retries,
            age,
            max_age,
            held,
            shards,
            stopped,
            delivered,
            sink_failed,
            batches,
            latency,
            checkpoints,
            up,
        )
        if leases_held.samples:
            yield leases_held
            yield lease_events

    def _exported(self, pipeline: str, shard_id: str, state: ShardState, clock: float) -> bool:
        """Whether a shard's own series are exported: not for skipped shards (never
        read), and not for ended or lost ones after `_GONE_FOR` seconds, so that a
        table's shard rollovers (every few hours) do not pile up series."""
        if state is ShardState.SKIPPED:
            return False
        if state not in _GONE:
            return True
        since = self._gone.setdefault((pipeline, shard_id), clock)
        return clock - since < _GONE_FOR

    def metrics_text(self) -> bytes:
        """The registry in Prometheus' text format, as /metrics serves it."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)

    # -- the HTTP server ------------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, port: int = 9100, host: str = "0.0.0.0") -> AsyncIterator[int]:
        """Serve ``/metrics``, ``/ready`` (200, or 503 with the reasons) and ``/healthz``
        on `host`:`port` while the block runs; yields the port (useful with port 0)."""
        from aiohttp import web
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        def probe(check: Health) -> web.Response:
            return web.Response(text=check.text(), status=200 if check.ok else 503)

        async def ready(_: web.Request) -> web.Response:
            return probe(self.ready())

        async def healthz(_: web.Request) -> web.Response:
            return probe(self.healthy())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/ready", ready)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                from flowstream.errors import PipelineError

                raise PipelineError(
                    f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose "
                    "a free port (--metrics-port) or stop what listens there"
                ) from None
            addresses = runner.addresses  # (host, port, ...) of each listening socket
            bound = int(addresses[0][1]) if addresses else port
            logger.info("serving /metrics, /ready and /healthz on %s:%d", host, bound)
            yield bound
        finally:
            await runner.cleanup()
