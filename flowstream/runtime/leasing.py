"""The lease side of a run: which shards this worker processes, kept by taking, renewing
and releasing leases in the lease table, and its checkpoints, written fenced.

- The taker scans the table every renewal interval (and at once when something changed:
  a shard ended, new leases appeared), notes whose counters moved (`LeaseClock`), takes
  what `taking.choose` says, and deletes finished leases that are no longer needed.
- The renewer bumps each held lease's counter when nothing did for a little more than a
  renewal interval; a checkpoint write bumps it too, so a busy shard is renewed by its
  checkpoints. A refused write means the lease is lost: the shard's runner is cancelled
  at once.
- Locally, a lease whose last confirmed write was sent more than `failover_time` ago is
  given up before any peer can see it expired, so two workers never both think they
  hold it; runners ask `holds()` before each delivery.
- A graceful stop releases every lease (no owner), so peers take them in their next
  round instead of waiting for them to expire.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Final

import anyio

from flowstream import log_limit
from flowstream.checkpoints.base import SHARD_END, CheckpointSession
from flowstream.errors import CheckpointError
from flowstream.leases.dynamodb import DynamoDBLeases
from flowstream.leases.lease import LATEST, TRIM_HORIZON, Lease
from flowstream.leases.table import LeaseTable
from flowstream.leases.taking import LeaseClock, choose
from flowstream.report import LeaseReport, RunReport
from flowstream.sources.base import (
    LATEST as LATEST_POSITION,
)
from flowstream.sources.base import (
    TRIM_HORIZON as TRIM_HORIZON_POSITION,
)
from flowstream.sources.base import (
    Position,
    PositionKind,
    Shard,
)

__all__ = ["LeaseCoordinator"]

logger = logging.getLogger("flowstream")

#: Lease-table writes in flight at once (renewals, checkpoints, takes).
_CONCURRENT_WRITES: Final = 16
#: A held lease is renewed once no write confirmed it for this many renewal intervals,
#: looked at every `_RENEW_CHECK` of an interval (`renew_round`).
_RENEW_AFTER: Final = 1.25
_RENEW_CHECK: Final = 0.25


class LeaseCoordinator:
    """Holds this worker's leases for one run; see the module docstring."""

    def __init__(
        self, config: DynamoDBLeases, table: LeaseTable, report: RunReport, start: Position
    ) -> None:
        if start.kind not in (PositionKind.TRIM_HORIZON, PositionKind.LATEST):
            raise ValueError("leases start at TRIM_HORIZON or LATEST")
        self.config = config
        self.table = table
        self.me = config.worker_id
        self._start = TRIM_HORIZON if start.kind is PositionKind.TRIM_HORIZON else LATEST
        self._failover = config.failover_time
        self._held: dict[str, Lease] = {}
        self._sent_at: dict[str, float] = {}  # when the last confirmed write was sent
        self._locks: dict[str, anyio.Lock] = {}
        self._view: dict[str, Lease] = {}  # the last scan
        self._clock = LeaseClock(self._failover)
        self._listed: set[str] | None = None  # shard ids the stream listed last
        self._finished_since: dict[str, float] = {}  # cleanup: seen finished and unlisted
        self._wake = anyio.Event()
        self._rng = random.Random()
        self._writes = anyio.Semaphore(_CONCURRENT_WRITES)
        self.on_change: Callable[[], None] = lambda: None
        self.on_lost: Callable[[str], None] = lambda key: None
        self.stats = LeaseReport(worker_id=self.me, table=config.table)
        report.leases = self.stats

    # -- what the scheduler asks ---------------------------------------------------------

    def holds(self, key: str) -> bool:
        """True while this worker holds the lease of shard `key` and may process it."""
        sent = self._sent_at.get(key)
        return sent is not None and anyio.current_time() - sent <= self._failover

    def held(self) -> list[str]:
        return list(self._held)

    def shard(self, key: str) -> Shard:
        """A shard to read for a held lease (its parent as the lease says)."""
        lease = self._held.get(key) or self._view.get(key)
        parents = sorted(lease.parents) if lease is not None else []
        return Shard(key, parents[0] if parents else None)

    def position(self, key: str) -> Position | None:
        """Where to read a held shard from (its lease's checkpoint); None once done."""
        lease = self._held.get(key)
        if lease is None or lease.finished:
            return None
        if lease.checkpoint == TRIM_HORIZON:
            return TRIM_HORIZON_POSITION
        if lease.checkpoint == LATEST:
            return LATEST_POSITION
        return Position.after(lease.checkpoint)

    def wake(self) -> None:
        """Run a taking round now."""
        self._wake.set()

    # -- the loops -----------------------------------------------------------------------

    async def run(self) -> None:
        """Take and renew until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._taking)
            tg.start_soon(self.keep_renewing)

    async def _taking(self) -> None:
        while True:
            try:
                await self.take_round()
            except CheckpointError as exc:
                log_limit.warn(
                    logger,
                    (self.table.name, "taking"),
                    "lease table %s: taking round failed: %s",
                    self.table.name,
                    exc,
                )
            # The next round comes after the interval, or when a peer's lease would
            # expire if it is not renewed by then (a crashed worker's shards move as
            # soon as they may), or when something here changed.
            wait = self.config.renew_interval
            others = [lease for lease in self._view.values() if lease.owner != self.me]
            expiry = self._clock.next_expiry(others)
            if expiry is not None:
                wait = min(wait, max(0.0, expiry - anyio.current_time()) + 0.01)
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def keep_renewing(self) -> None:
        """Renew held leases until cancelled (alone while a stopping run writes its last
        checkpoints, so no lease lapses before it is released)."""
        while True:
            await anyio.sleep(self.config.renew_interval * _RENEW_CHECK)
            await self.renew_round()

    async def take_round(self) -> None:
        """Scan, note what moved, clean up, and take what this worker should."""
        began = anyio.current_time()
        leases = await self.table.scan()
        now = anyio.current_time()
        logger.debug("lease table %s: scanned in %.3fs", self.table.name, now - began)
        self._view = {lease.key: lease for lease in leases}
        self._clock.observe(leases, now)
        await self._clean_up(leases, now)
        takes = choose(leases, self.me, self._clock, now, self._rng)
        logger.debug(
            "lease table %s: %d leases, %d held, target %d: %d to take of %d free, %d to steal",
            self.table.name,
            len(leases),
            len(self._held),
            takes.target,
            takes.needed,
            len(takes.free),
            len(takes.stolen),
        )
        taken = False
        for lease in takes.leases:
            if lease.key in self._held:
                continue
            sent = anyio.current_time()
            got = await self.table.take(lease, self.me)
            if got is None:
                continue  # another worker was quicker
            stolen = lease in takes.stolen
            self._held[lease.key] = got
            self._sent_at[lease.key] = sent
            self.stats.taken += 1
            self.stats.stolen += stolen
            self.stats.held = len(self._held)
            taken = True
            how = (
                f"stolen from {lease.owner}"
                if stolen
                else (f"expired, from {lease.owner}" if lease.owner else "free")
            )
            logger.info("worker %s took the lease of shard %s (%s)", self.me, lease.key, how)
        if taken:
            self.on_change()

    async def renew_round(self) -> None:
        """Renew every held lease no write confirmed for `_RENEW_AFTER` renewal
        intervals; give up those that went unconfirmed for the failover time.

        Rounds come four times per interval, so a renewal is sent by the time a lease
        is 1.5 intervals old (throttling and 5xx are retried within the table's
        timeout), and a shard that checkpoints every interval (the default) is renewed by its
        checkpoints alone: one write per interval, busy or idle."""
        now = anyio.current_time()
        due = []
        for key in list(self._held):
            age = now - self._sent_at[key]
            if age > self._failover:
                self._lose(key, f"not renewed for {age:.1f}s (failover_time={self._failover}s)")
            elif age >= self.config.renew_interval * _RENEW_AFTER:
                due.append(key)
        await self._each(due, self._renew)

    async def _renew(self, key: str) -> None:
        try:
            await self._write(key, self.table.renew, "renewal refused")
        except CheckpointError as exc:
            log_limit.warn(
                logger, (self.table.name, "renew", key), "lease table %s: %s", self.table.name, exc
            )

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoints(self) -> CheckpointSession:
        """The run's checkpoint session: positions go to the held leases, fenced."""
        return _LeaseCheckpoints(self)

    async def save(self, positions: Mapping[str, str]) -> set[str]:
        """Write the checkpoints of held leases, fenced; returns the shards whose
        checkpoint was not written because their lease is lost."""
        refused = {key for key in positions if key not in self._held}

        async def one(key: str) -> None:
            position = positions[key]

            def write(lease: Lease) -> Awaitable[Lease | None]:
                return self.table.checkpoint(lease, position)

            if not await self._write(key, write, "checkpoint refused"):
                refused.add(key)
            elif position == SHARD_END:
                # Done: nobody needs to hold it; its children are ready for whoever takes them.
                await self._write(key, self.table.release, "release refused")
                self._drop(key)
                self.wake()

        await self._each([key for key in positions if key in self._held], one)
        return refused

    # -- the stream's shards -------------------------------------------------------------

    async def sync(self, shards: Sequence[Shard]) -> None:
        """Create the leases of listed shards that have none."""
        self._listed = {shard.shard_id for shard in shards}
        await self._create(shards, {shard.shard_id for shard in shards})

    async def children_found(self, parent: str, children: Sequence[Shard]) -> None:
        """A shard this worker ended has these children: lease them, and note them on
        the parent's lease (cleanup needs them)."""
        mine = [child for child in children if child.parent_shard_id == parent]
        if not mine:
            return
        await self._create(mine, {parent})
        await self.table.add_children(parent, [child.shard_id for child in mine])

    async def _create(self, shards: Sequence[Shard], known: set[str]) -> None:
        """Create leases for `shards` that have none, parents first (a lease another
        worker creates meanwhile is left as it is). A shard whose parent is `known` or
        leased starts at its top; another starts where the source says."""
        missing = [shard for shard in shards if shard.shard_id not in self._view]
        created = False
        for shard in _parents_first(missing):
            parent = shard.parent_shard_id
            descendant = parent is not None and (parent in known or parent in self._view)
            if not descendant and self._start == LATEST and shard.closed:
                continue  # ended before the start: never read
            lease = Lease(
                shard.shard_id,
                checkpoint=TRIM_HORIZON if descendant else self._start,
                parents=frozenset({parent}) if parent else frozenset(),
            )
            if await self.table.create(lease):
                self._view[lease.key] = lease
                created = True
        if created:
            self.wake()

    async def _clean_up(self, leases: Sequence[Lease], now: float) -> None:
        """Delete finished leases nobody holds, whose shard the stream no longer lists,
        whose children all have leases and whose own parents' leases are gone, once seen
        so for `cleanup_after` seconds (parents go before children, so a child never
        looks like a root and starts over)."""
        if self._listed is None:
            return
        keys = {lease.key for lease in leases}
        for lease in leases:
            candidate = (
                lease.finished
                and lease.owner is None
                and lease.key not in self._listed
                and lease.children
                and lease.children <= keys
                and not (lease.parents & keys)
            )
            if not candidate:
                self._finished_since.pop(lease.key, None)
                continue
            since = self._finished_since.setdefault(lease.key, now)
            if now - since >= self.config.cleanup_after and await self.table.delete(lease):
                self._finished_since.pop(lease.key, None)
                logger.info(
                    "lease table %s: deleted the finished lease of %s", self.table.name, lease.key
                )

    # -- stopping ------------------------------------------------------------------------

    async def release_all(self) -> None:
        """Give every held lease up, so peers take them in their next round."""

        async def one(key: str) -> None:
            try:
                if await self._write(key, self.table.release, "release refused"):
                    self.stats.released += 1
                    logger.info("worker %s released the lease of shard %s", self.me, key)
            except CheckpointError as exc:
                logger.warning("lease table %s: %s", self.table.name, exc)
            self._drop(key)

        await self._each(list(self._held), one)

    # -- writes --------------------------------------------------------------------------

    async def _write(
        self, key: str, op: Callable[[Lease], Awaitable[Lease | None]], refused: str
    ) -> bool:
        """One fenced write of a held lease (writes of one lease never overlap, so each
        sees the counter the last one left). A refused write loses the lease."""
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock, self._writes:
            lease = self._held.get(key)
            if lease is None:
                return False
            sent = anyio.current_time()
            new = await op(lease)
            if new is None:
                self._lose(key, refused)
                return False
            if key in self._held:
                self._held[key] = new
                self._sent_at[key] = sent
            return True

    def _lose(self, key: str, why: str) -> None:
        if key not in self._held:
            return
        self._drop(key)
        self.stats.lost += 1
        logger.warning("worker %s lost the lease of shard %s: %s", self.me, key, why)
        self.on_lost(key)

    def _drop(self, key: str) -> None:
        self._held.pop(key, None)
        self._sent_at.pop(key, None)
        self.stats.held = len(self._held)

    @staticmethod
    async def _each(keys: Sequence[str], work: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(work, key)


class _LeaseCheckpoints(CheckpointSession):
    """Checkpoints kept in the held leases (the runtime's checkpoint session)."""

    def __init__(self, coordinator: LeaseCoordinator) -> None:
        self._coordinator = coordinator

    async def load(self) -> dict[str, str]:
        return {}  # each shard starts where its lease says, when it is taken

    async def save(self, positions: Mapping[str, str]) -> set[str]:
        return await self._coordinator.save(positions)


def _parents_first(shards: Sequence[Shard]) -> list[Shard]:
    """`shards` with every parent before its children."""
    by_id = {shard.shard_id: shard for shard in shards}
    ordered: list[Shard] = []
    placed: set[str] = set()

    def place(shard: Shard) -> None:
        if shard.shard_id in placed:
            return
        placed.add(shard.shard_id)
        parent = by_id.get(shard.parent_shard_id or "")
        if parent is not None:
            place(parent)
        ordered.append(shard)

    for shard in shards:
        place(shard)
    return ordered
