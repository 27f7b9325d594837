"""Runs a compiled plan: opens the source, checkpoints and sinks, runs the scheduler, and
turns cancellation or a signal into a graceful stop.

The engine's own work runs in a shielded scope, so cancelling `Pipeline.run()` does not
tear it down mid-delivery: it asks for a stop (no more polling), waits for in-flight
batches up to the grace period, cancels what is still running, writes the checkpoints,
and then lets the cancellation go on.
"""

from __future__ import annotations

import logging
import signal
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from flowstream.checkpoints.base import CheckpointStore
from flowstream.checkpoints.memory import MemoryCheckpoints
from flowstream.errors import ShardStoppedError
from flowstream.plan import Plan
from flowstream.report import RunReport, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.runtime.groups import first_error
from flowstream.runtime.runner import RetryPolicy
from flowstream.runtime.scheduler import Scheduler
from flowstream.sources.base import Source

__all__ = ["run_pipeline"]

logger = logging.getLogger("flowstream")

#: Longest wait for the last checkpoint write when stopping.
_FINAL_FLUSH_TIMEOUT = 30.0


async def run_pipeline(
    plan: Plan,
    source: Source,
    *,
    name: str,
    checkpoints: CheckpointStore | None,
    drain: bool,
    grace_period: float,
    handle_signals: bool,
    stop: anyio.Event | None = None,
    policy: RetryPolicy | None = None,
) -> RunReport:
    engine = _Engine(
        plan,
        source,
        name,
        checkpoints or MemoryCheckpoints(),
        drain=drain,
        grace_period=grace_period,
        handle_signals=handle_signals,
        stop_event=stop,
        policy=policy or RetryPolicy(),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.main)
        try:
            await engine.finished.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                engine.stop("cancelled")
                await engine.finished.wait()
            raise
    if engine.error is not None:
        raise engine.error
    report = engine.report
    if drain and report.stopped_shards():
        raise ShardStoppedError(report)
    return report


class _Engine:
    def __init__(
        self,
        plan: Plan,
        source: Source,
        name: str,
        store: CheckpointStore,
        *,
        drain: bool,
        grace_period: float,
        handle_signals: bool,
        stop_event: anyio.Event | None,
        policy: RetryPolicy,
    ) -> None:
        self.plan = plan
        self.source = source
        self.store = store
        self.drain = drain
        self.grace_period = grace_period
        self.handle_signals = handle_signals
        self.stop_event = stop_event
        self.policy = policy
        self.report = RunReport(pipeline=name)
        self.finished = anyio.Event()
        self.error: BaseException | None = None
        self._scheduler: Scheduler | None = None
        self._tg: TaskGroup | None = None
        self._stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """Stop gracefully: no more polling, in-flight batches get the grace period."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.report.stop_reason = reason
        logger.info("pipeline %r stopping (%s)", self.report.pipeline, reason)
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._tg is not None:
            self._tg.start_soon(self._grace_timer)

    async def _grace_timer(self) -> None:
        await anyio.sleep(self.grace_period)
        if self._scheduler is not None:
            logger.warning(
                "pipeline %r: in-flight batches did not finish within %.1fs; abandoning "
                "them (they are not checkpointed and will be read again)",
                self.report.pipeline,
                self.grace_period,
            )
            self._scheduler.abandon()

    async def main(self) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._main()
        except BaseException as exc:
            self.error = first_error(exc)
        finally:
            self.report.finished = datetime.now(UTC)
            self.finished.set()

    async def _main(self) -> None:
        report = self.report
        report.started = datetime.now(UTC)
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(self.source.open())
            report.stream = session.stream_id
            store = await stack.enter_async_context(
                self.store.open(report.pipeline, session.stream_id)
            )
            writers = [await stack.enter_async_context(s.open()) for s in self.plan.sinks]
            sink_reports = []
            for sink in self.plan.sinks:
                stats = SinkReport(_unique(sink.name, report))
                report.sinks[stats.name] = stats
                sink_reports.append(stats)
            positions = await store.load()
            checkpointer = Checkpointer(store, self.store.flush_interval, report)
            scheduler = Scheduler(
                session,
                self.plan,
                writers,
                sink_reports,
                report,
                checkpointer,
                positions,
                start=self.source.start,
                drain=self.drain,
                policy=self.policy,
            )
            self._scheduler = scheduler
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(checkpointer.run)
                if self.handle_signals:
                    tg.start_soon(self._watch_signals)
                if self.stop_event is not None:
                    tg.start_soon(self._watch_stop_event, self.stop_event)
                if self._stop_reason is not None:
                    scheduler.stop()
                    tg.start_soon(self._grace_timer)
                try:
                    await scheduler.run()
                finally:
                    self._tg = None
                    tg.cancel_scope.cancel()
                    with anyio.move_on_after(_FINAL_FLUSH_TIMEOUT, shield=True):
                        await checkpointer.flush()
            if not report.stop_reason:
                report.stop_reason = "drained" if self.drain else "finished"

    async def _watch_stop_event(self, event: anyio.Event) -> None:
        await event.wait()
        self.stop("stop requested")

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop_reason is None:
                    self.stop(signal.Signals(signum).name)
                elif self._scheduler is not None:
                    self._scheduler.abandon()  # a second signal: stop now


def _unique(name: str, report: RunReport) -> str:
    if name not in report.sinks:
        return name
    n = 2
    while f"{name}#{n}" in report.sinks:
        n += 1
    return f"{name}#{n}"
