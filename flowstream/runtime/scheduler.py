"""The shard scheduler: discovers shards, gates children on their parents, starts one
runner per readable shard.

Lineage rule (DESIGN.md §2): a child is read only after each parent has been read to
its end and that end (SHARD_END) is checkpointed. A parent that is no longer listed (its
records expired) does not block its children.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from flowstream.checkpoints.base import SHARD_END
from flowstream.errors import CheckpointError, StreamNotFoundError
from flowstream.plan import Plan
from flowstream.report import RunReport, ShardReport, ShardState, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.runtime.groups import first_error
from flowstream.runtime.runner import ShardRunner
from flowstream.sinks.base import SinkWriter
from flowstream.sources.base import (
    TRIM_HORIZON,
    Position,
    PositionKind,
    Shard,
    StreamSession,
)

if TYPE_CHECKING:
    from flowstream.runtime.leasing import LeaseCoordinator

__all__ = ["Scheduler"]

logger = logging.getLogger("flowstream")

# Shards whose end is behind us: their children may be read.
_FINISHED = (ShardState.ENDED, ShardState.SKIPPED)


class Scheduler:
    """Starts runners as shards become readable, until drained, finished or stopped."""

    def __init__(
        self,
        session: StreamSession,
        plan: Plan,
        writers: list[SinkWriter],
        sink_reports: list[SinkReport],
        report: RunReport,
        checkpointer: Checkpointer,
        positions: dict[str, str],
        *,
        start: Position,
        drain_cut: datetime | None,
        leases: LeaseCoordinator | None = None,
        on_stopped: Callable[[ShardReport], object] | None = None,
    ) -> None:
        self._session = session
        #: told of each shard that stops at a failure (e.g. to end the run)
        self._on_stopped = on_stopped
        self._plan = plan
        self._writers = writers
        self._sink_reports = sink_reports
        self._report = report
        self._checkpointer = checkpointer
        self._positions = positions
        self._start = start
        self._drain_cut = drain_cut
        self._drain = drain_cut is not None
        self._known: dict[str, Shard] = {}
        # Start positions of shards first seen on the initial discovery (None: skipped).
        self._start_positions: dict[str, Position | None] = {}
        self._runners: dict[str, ShardRunner] = {}
        self._changed = anyio.Event()
        self._relist = True
        self._ended: list[str] = []
        self._stopping = False
        self._hard = anyio.CancelScope()
        self._discovery: anyio.CancelScope | None = None
        # With leases, the shards run are the leases held; a lost one is cancelled at once.
        self._leases = leases
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._lost: set[str] = set()
        if leases is not None:
            leases.on_change = self._changed_now
            leases.on_lost = self.lose

    # -- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop discovering and polling; runners finish the page they are delivering."""
        self._stopping = True
        for runner in self._runners.values():
            runner.stop()
        if self._discovery is not None:
            self._discovery.cancel()  # a slow listing must not hold the stop up
        self._changed.set()

    def abandon(self) -> None:
        """Cancel every runner now (the grace period is over)."""
        self._hard.cancel()

    def lose(self, shard_id: str) -> None:
        """The lease of `shard_id` is lost: cancel its runner now, so that nothing more
        of it is sent (its new holder goes on from the checkpoint)."""
        scope = self._scopes.get(shard_id)
        if scope is not None:
            self._lost.add(shard_id)
            scope.cancel()

    def _changed_now(self) -> None:
        self._changed.set()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        first = True
        with self._hard:
            async with anyio.create_task_group() as tg:
                while not self._stopping:
                    with anyio.CancelScope() as self._discovery:
                        if self._ended and not self._relist:
                            await self._look_up_children()
                        if self._relist:
                            self._relist = False
                            self._ended.clear()
                            shards = await self._session.list_shards()
                            self._update(shards, first)
                            first = False
                            if self._leases is not None:
                                await self._leases.sync(shards)
                    self._discovery = None
                    if self._stopping:
                        break
                    self._start_ready(tg)
                    if not self._runners and self._is_finished():
                        break
                    await self._wait()

    def _is_finished(self) -> bool:
        # Called with no runner left: only a discovery still to make can start another
        # shard. Draining, or with a finite source, the run is done without one; shards
        # still pending then wait for a parent that stopped and never become readable.
        if self._leases is None and (self._drain or self._session.finite):
            return not self._relist and not self._ended
        return False

    async def _wait(self) -> None:
        """Wait for a runner to finish or, when not draining, for the shard list to
        change or the discovery interval to pass."""
        if self._changed.is_set():
            self._changed = anyio.Event()
            return
        timeout = math.inf if self._drain else self._session.discovery_interval
        async with anyio.create_task_group() as tg:

            async def runner_done() -> None:
                await self._changed.wait()
                tg.cancel_scope.cancel()

            async def topology() -> None:
                await self._session.wait_for_shards(timeout)
                self._relist = True
                tg.cancel_scope.cancel()

            tg.start_soon(runner_done)
            if not self._drain:
                tg.start_soon(topology)
        self._changed = anyio.Event()

    # -- shards ---------------------------------------------------------------------------

    async def _look_up_children(self) -> None:
        """Find the children of shards that just ended, the cheap way if the source has
        one (DescribeStream with a CHILD_SHARDS filter), else by listing every shard."""
        ended, self._ended = self._ended, []
        for shard_id in ended:
            children = await self._session.children_of(shard_id)
            if children is None:
                self._relist = True
                return
            self._update(children, first=False)
            if self._leases is not None:
                await self._leases.children_found(shard_id, children)

    def _update(self, shards: Sequence[Shard], first: bool) -> None:
        for shard in shards:
            if shard.shard_id in self._known:
                if shard.closed and not self._known[shard.shard_id].closed:
                    self._known[shard.shard_id] = shard
                continue
            self._known[shard.shard_id] = shard
            if self._leases is not None:
                continue  # reported once held: the shards of other workers are theirs
            stats = ShardReport(shard.shard_id, shard.parent_shard_id)
            self._report.shards[shard.shard_id] = stats
            saved = self._positions.get(shard.shard_id)
            stats.checkpoint = saved
            if saved == SHARD_END:
                stats.state = ShardState.SKIPPED
            elif saved is None and first:
                start = _initial_position(shard, self._start)
                self._start_positions[shard.shard_id] = start
                if start is None:
                    stats.state = ShardState.SKIPPED

    def _ready(self, shard: Shard) -> bool:
        stats = self._report.shards[shard.shard_id]
        if stats.state is not ShardState.PENDING:
            return False
        parent_id = shard.parent_shard_id
        if parent_id is None or parent_id not in self._known:
            return True
        return self._report.shards[parent_id].state in _FINISHED

    def _start_ready(self, tg: TaskGroup) -> None:
        if self._stopping:
            return
        if self._leases is not None:
            for shard_id in self._leases.held():
                if self._stopping:
                    return  # a shard that failed to launch ended the run (exit on stop)
                if shard_id not in self._runners and self._leases.position(shard_id):
                    self._launch(tg, self._known.get(shard_id) or self._leases.shard(shard_id))
            return
        for shard in list(self._known.values()):
            if self._stopping:
                return
            if self._ready(shard):
                self._launch(tg, shard)

    def _position(self, shard: Shard) -> Position:
        if self._leases is not None:
            position = self._leases.position(shard.shard_id)
            assert position is not None, "only held, unfinished leases are launched"
            return position
        saved = self._positions.get(shard.shard_id)
        if saved is not None:
            return Position.after(saved)
        # A shard first seen on the initial discovery starts where the source says;
        # one that appeared later (a child, the rollover), or whose parent this run
        # read, is read from its beginning.
        start = self._start_positions.get(shard.shard_id) or TRIM_HORIZON
        parent = self._report.shards.get(shard.parent_shard_id or "")
        if parent is not None and (
            parent.state is not ShardState.SKIPPED or parent.checkpoint == SHARD_END
        ):
            return TRIM_HORIZON
        return start

    def _launch(self, tg: TaskGroup, shard: Shard) -> None:
        stats = self._report.shards.get(shard.shard_id)
        if stats is None:
            stats = ShardReport(shard.shard_id, shard.parent_shard_id)
            self._report.shards[shard.shard_id] = stats
        else:  # a lease taken again: its last run's marks say nothing of this one
            stats.behind_since = stats.stopped_since = stats.stopped_at = stats.error = None
            stats.caught_up, stats.held = False, 0
        try:
            reader = self._session.reader(shard, self._position(shard))
        except Exception as exc:
            if isinstance(exc, CheckpointError | StreamNotFoundError):
                raise
            # A shard that cannot be read stops alone, like one whose reads fail.
            stats.state = ShardState.STOPPED
            stats.error = f"{type(exc).__name__}: {exc}"
            logger.error("shard %s failed: %s", shard.shard_id, stats.error, exc_info=exc)
            self._stopped(stats)
            return
        stats.state = ShardState.RUNNING
        runner = ShardRunner(
            shard,
            reader,
            self._plan,
            self._writers,
            self._sink_reports,
            stats,
            self._checkpointer,
            self._drain_cut,
            pipeline=self._report.pipeline,
            stream=self._report.stream,
            holds=None if self._leases is None else self._holder(shard.shard_id),
        )
        self._runners[shard.shard_id] = runner
        tg.start_soon(self._run_runner, runner)

    def _holder(self, shard_id: str) -> Callable[[], bool]:
        leases = self._leases
        assert leases is not None
        return lambda: leases.holds(shard_id)

    async def _run_runner(self, runner: ShardRunner) -> None:
        shard_id = runner.shard.shard_id
        stats = self._report.shards[shard_id]
        scope = self._scopes[shard_id] = anyio.CancelScope()
        try:
            with scope:
                stats.state = await runner.run()
            if scope.cancelled_caught or shard_id in self._lost:
                stats.state = ShardState.LOST
        except Exception as group:
            exc = first_error(group)
            if isinstance(exc, CheckpointError | StreamNotFoundError):
                raise exc from None  # nothing of this pipeline can go on
            # One shard's failure never takes the others down: it stops alone.
            stats.state = ShardState.STOPPED
            stats.error = f"{type(exc).__name__}: {exc}"
            logger.error("shard %s failed: %s", shard_id, stats.error, exc_info=exc)
        finally:
            del self._runners[shard_id]
            del self._scopes[shard_id]
            self._lost.discard(shard_id)
            with anyio.CancelScope(shield=True):
                await runner.reader.aclose()
        if stats.state is ShardState.ENDED:
            self._ended.append(shard_id)  # its children may be listed now
        elif stats.state is ShardState.STOPPED:
            self._stopped(stats)
        self._changed.set()

    def _stopped(self, stats: ShardReport) -> None:
        if stats.stopped_since is None:
            stats.stopped_since = datetime.now(UTC)
        if self._on_stopped is not None:
            self._on_stopped(stats)


def _initial_position(shard: Shard, start: Position) -> Position | None:
    """Where a shard first seen when the run starts is read from (None: not at all).

    A start at a sequence number applies to the shard whose range holds it; shards that
    ended before it are skipped and shards that begin after it are read whole.
    """
    if start.kind is PositionKind.LATEST:
        return None if shard.closed else start
    if start.sequence_number is None:
        return start
    sequence = int(start.sequence_number)
    if shard.ending_sequence_number is not None and int(shard.ending_sequence_number) < sequence:
        return None
    if (
        shard.starting_sequence_number is not None
        and int(shard.starting_sequence_number) > sequence
    ):
        return TRIM_HORIZON
    return start
