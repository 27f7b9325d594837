"""Runs a compiled plan: opens the source, checkpoints and sinks, runs the scheduler, and
turns cancellation or a signal into a graceful stop.

The engine's own work runs in a shielded scope, so cancelling `Pipeline.run()` does not
tear it down mid-delivery: it asks for a stop (no more polling), waits for in-flight
batches up to the grace period, cancels what is still running, writes the checkpoints,
and then lets the cancellation go on.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import TaskGroup

from flowstream import log_limit
from flowstream.checkpoints.base import SHARD_END, CheckpointSession, CheckpointStore
from flowstream.checkpoints.memory import MemoryCheckpoints
from flowstream.errors import ShardStoppedError
from flowstream.leases import DynamoDBLeases
from flowstream.plan import Plan
from flowstream.policy import FailurePolicy
from flowstream.report import RunReport, ShardReport, ShardState, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.runtime.groups import first_error
from flowstream.runtime.leasing import LeaseCoordinator
from flowstream.runtime.scheduler import Scheduler
from flowstream.sinks.base import checked_writer
from flowstream.sources.base import Source

if TYPE_CHECKING:
    from flowstream.monitor import Monitor

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
    policy: FailurePolicy | None = None,
    on_progress: Callable[[RunReport], object] | None = None,
    progress_interval: float = 10.0,
    leases: DynamoDBLeases | None = None,
    monitor: Monitor | None = None,
    on_shard_stopped: Literal["continue", "exit"] = "continue",
    log_interval: float = log_limit.DEFAULT_INTERVAL,
) -> RunReport:
    if policy is not None:
        plan = replace(plan, policy=policy)
    engine = _Engine(
        plan,
        source,
        name,
        checkpoints or MemoryCheckpoints(),
        drain=drain,
        grace_period=grace_period,
        handle_signals=handle_signals,
        stop_event=stop,
        on_progress=on_progress,
        progress_interval=progress_interval,
        leases=leases,
        monitor=monitor,
        exit_on_stop=on_shard_stopped == "exit",
        log_interval=log_interval,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.main)
        try:
            await engine.finished.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                engine.stop("cancelled")
                await engine.finished.wait()
            if engine.error is not None and not isinstance(
                engine.error, anyio.get_cancelled_exc_class()
            ):
                # the cancellation goes on; do not let the error vanish with it
                logger.error(
                    "pipeline %r failed while stopping: %s: %s",
                    name,
                    type(engine.error).__name__,
                    engine.error,
                    exc_info=engine.error,
                )
            raise
    if engine.error is not None:
        raise engine.error
    report = engine.report
    if (drain or on_shard_stopped == "exit") and report.stopped_shards():
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
        on_progress: Callable[[RunReport], object] | None = None,
        progress_interval: float = 10.0,
        leases: DynamoDBLeases | None = None,
        monitor: Monitor | None = None,
        exit_on_stop: bool = False,
        log_interval: float = log_limit.DEFAULT_INTERVAL,
    ) -> None:
        self.plan = plan
        self.monitor = monitor
        self.exit_on_stop = exit_on_stop
        self.log_interval = log_interval
        self.leases = leases
        self.source = source
        self.store = store
        self.drain = drain
        self.grace_period = grace_period
        self.handle_signals = handle_signals
        self.stop_event = stop_event
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.report = RunReport(pipeline=name)
        if monitor is not None:
            monitor.watch(self.report)
        self.finished = anyio.Event()
        self.error: BaseException | None = None
        self._scheduler: Scheduler | None = None
        self._tg: TaskGroup | None = None
        self._stop_reason: str | None = None
        # Opening the source, store and sinks: nothing is in flight yet, so a stop
        # cancels it at once (a source that cannot connect must not make a stop hang).
        self._setup = anyio.CancelScope()

    def stop(self, reason: str) -> None:
        """Stop gracefully: no more polling, in-flight batches get the grace period."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.report.stop_reason = reason
        if self.monitor is not None:
            self.monitor.set_phase(self.report, "stopping", reason)
        logger.info("pipeline %r stopping (%s)", self.report.pipeline, reason)
        self._setup.cancel()
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
        # this task and those it starts write repeated warnings at the run's pace
        limiter = log_limit.LogLimiter(self.log_interval)
        log_limit.use(limiter)
        try:
            with anyio.CancelScope(shield=True):
                # The stop watchers run from the start: a stop asked for while the source,
                # store or sinks are still opening must not wait for them.
                async with anyio.create_task_group() as watchers:
                    if self.handle_signals:
                        watchers.start_soon(self._watch_signals)
                    if self.stop_event is not None:
                        watchers.start_soon(self._watch_stop_event, self.stop_event)
                    try:
                        await self._main()
                    finally:
                        watchers.cancel_scope.cancel()
        except BaseException as exc:
            self.error = first_error(exc)
        finally:
            limiter.flush()
            self.report.finished = datetime.now(UTC)
            if self.monitor is not None:
                error = self.error
                if error is None or isinstance(error, anyio.get_cancelled_exc_class()):
                    self.monitor.set_phase(self.report, "finished", self.report.stop_reason)
                else:
                    self.monitor.set_phase(
                        self.report, "failed", f"{type(error).__name__}: {error}"
                    )
            self.finished.set()

    async def _main(self) -> None:
        report = self.report
        report.started = started = datetime.now(UTC)
        async with AsyncExitStack() as stack:
            with self._setup:
                session = await stack.enter_async_context(self.source.open())
                report.stream = session.stream_id
                coordinator: LeaseCoordinator | None = None
                if self.leases is not None:
                    table = await stack.enter_async_context(self.leases.open())
                    coordinator = LeaseCoordinator(self.leases, table, report, self.source.start)
                    store: CheckpointSession = coordinator.checkpoints()
                    flush_interval, flush_records = self.leases.flush_interval, None
                else:
                    store = await stack.enter_async_context(
                        self.store.open(report.pipeline, session.stream_id)
                    )
                    flush_interval = self.store.flush_interval
                    flush_records = self.store.flush_records
                sinks = self.plan.all_sinks
                writers = [
                    checked_writer(s, await stack.enter_async_context(s.open())) for s in sinks
                ]
                sink_reports = []
                for sink in sinks:
                    stats = SinkReport(_unique(sink.name, report))
                    report.sinks[stats.name] = stats
                    sink_reports.append(stats)
                positions = await store.load()
            if self._setup.cancelled_caught:
                return  # stopped before anything was read: nothing to finish or write
            checkpointer = Checkpointer(store, flush_interval, report, flush_records)
            scheduler = Scheduler(
                session,
                self.plan,
                writers,
                sink_reports,
                report,
                checkpointer,
                positions,
                start=self.source.start,
                drain_cut=started if self.drain else None,
                leases=coordinator,
                on_stopped=self._shard_stopped,
            )
            self._scheduler = scheduler
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(checkpointer.run)
                if coordinator is not None:
                    tg.start_soon(coordinator.run)
                if store.heartbeat_interval is not None:
                    tg.start_soon(_heartbeat, store, store.heartbeat_interval)
                if self.on_progress is not None:
                    tg.start_soon(self._report_progress, self.on_progress)
                tg.start_soon(self._remind_stopped)
                if self.monitor is not None and self._stop_reason is None:
                    self.monitor.set_phase(report, "running")
                if self._stop_reason is not None:
                    scheduler.stop()
                    tg.start_soon(self._grace_timer)
                try:
                    await scheduler.run()
                finally:
                    self._tg = None
                    tg.cancel_scope.cancel()
                    with anyio.move_on_after(_FINAL_FLUSH_TIMEOUT, shield=True) as final:
                        async with anyio.create_task_group() as closing:
                            if coordinator is not None:
                                closing.start_soon(coordinator.keep_renewing)
                            await checkpointer.flush()
                            closing.cancel_scope.cancel()
                    if final.cancelled_caught:
                        logger.error(
                            "pipeline %r: the checkpoint store did not save the last positions "
                            "within %.0fs; the records after its last saved positions will be "
                            "read again",
                            report.pipeline,
                            _FINAL_FLUSH_TIMEOUT,
                        )
                    if coordinator is not None:
                        # Peers take the leases in their next round, not after they expire.
                        with anyio.move_on_after(_FINAL_FLUSH_TIMEOUT, shield=True):
                            await coordinator.release_all()
                    _settle_states(report)
            if not report.stop_reason:
                report.stop_reason = "drained" if self.drain else "finished"

    def _shard_stopped(self, shard: ShardReport) -> None:
        if self.exit_on_stop:
            self.stop(f"shard {shard.shard_id} stopped (on_shard_stopped='exit')")

    async def _remind_stopped(self) -> None:
        """A stopped shard is never silent: say so again every interval while it lasts,
        with how long, where and how much is held up behind it."""
        while True:
            await anyio.sleep(self.log_interval)
            now = datetime.now(UTC)
            for shard in self.report.stopped_shards().values():
                since = shard.stopped_since or now
                age = shard.iterator_age(now)
                logger.warning(
                    "pipeline %r: shard %s is still stopped (for %.0fs) at record %s: %s; "
                    "%d record(s) read are held up behind it%s; fix the cause and restart, "
                    "or give on_failure a dead_letter",
                    self.report.pipeline,
                    shard.shard_id,
                    (now - since).total_seconds(),
                    shard.stopped_at,
                    shard.error,
                    shard.held,
                    "" if age is None else f", iterator age {age:.0f}s",
                )

    async def _report_progress(self, callback: Callable[[RunReport], object]) -> None:
        """Hand the live report to `callback` every interval; its errors are logged."""
        while True:
            await anyio.sleep(self.progress_interval)
            try:
                result = callback(self.report)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                logger.warning(
                    "pipeline %r: on_progress raised %s: %s",
                    self.report.pipeline,
                    type(exc).__name__,
                    exc,
                )

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


async def _heartbeat(session: CheckpointSession, interval: float) -> None:
    """Keep this run's claim on its checkpoints (a second process is refused); a claim
    another process took over ends the run."""
    while True:
        await anyio.sleep(interval)
        await session.heartbeat()


def _settle_states(report: RunReport) -> None:
    """Shards whose runners were abandoned (cancelled at the end of the grace period, or
    torn down by a fatal error) are still marked running: say what they are now."""
    for shard in report.shards.values():
        if shard.state is ShardState.RUNNING:
            if shard.checkpoint == SHARD_END:
                shard.state = ShardState.ENDED  # its end was written after all
            else:
                shard.state = ShardState.INTERRUPTED


def _unique(name: str, report: RunReport) -> str:
    if name not in report.sinks:
        return name
    n = 2
    while f"{name}#{n}" in report.sinks:
        n += 1
    return f"{name}#{n}"
