"""What a run did: counts per shard and per sink, and how each shard ended."""

from __future__ import annotations

import enum
from bisect import bisect_left
from datetime import UTC, datetime

import msgspec

__all__ = [
    "LATENCY_BUCKETS",
    "READ_OVERDUE",
    "LeaseReport",
    "RunReport",
    "ShardReport",
    "ShardState",
    "SinkReport",
]

#: Seconds without a read returning after which a caught-up shard counts as behind by
#: that long (an idle shard's reads return every poll, within seconds).
READ_OVERDUE = 60.0

#: Upper bounds (seconds) of the sink latency histogram's buckets (the last is +Inf).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ShardState(enum.StrEnum):
    """Where a shard stands in a run."""

    PENDING = "pending"  # waiting for its parents to be read to their end
    RUNNING = "running"
    CAUGHT_UP = "caught_up"  # drained: read to the drain's cut, everything acknowledged
    ENDED = "ended"  # closed and read to its end; SHARD_END is checkpointed
    STOPPED = "stopped"  # stopped at a record that kept failing (see error, stopped_at)
    SKIPPED = "skipped"  # not read: ended before the run, or closed when starting at LATEST
    PAUSED = "paused"  # the run was stopped; what it delivered is checkpointed, and the
    #                    next run resumes there
    INTERRUPTED = "interrupted"  # delivery was abandoned (at the end of the grace period, or
    #                              by a fatal error); resumes from its checkpoint
    LOST = "lost"  # leases: another worker took its lease; it goes on from the checkpoint


class ShardReport(msgspec.Struct):
    """Counts for one shard. `read` counts records; the others count elements."""

    shard_id: str
    parent_shard_id: str | None = None
    state: ShardState = ShardState.PENDING
    read: int = 0
    filtered: int = 0
    dropped: int = 0
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    retries: int = 0
    checkpoint: str | None = None
    stopped_at: str | None = None
    error: str | None = None
    notes: list[str] = msgspec.field(default_factory=list)  # e.g. records skipped as trimmed
    #: when the shard stopped, and how many records read were left undone behind the
    #: record it stopped at (a lower bound: the stream may hold more)
    stopped_since: datetime | None = None
    held: int = 0
    #: the approximate creation time of the oldest record read and not yet done
    behind_since: datetime | None = None
    #: the approximate creation time of the newest record done
    last_record_time: datetime | None = None
    #: everything read is done, and the last read found nothing newer
    caught_up: bool = False
    #: when a read of the shard last returned (reads failing or hanging show as age)
    last_read_at: datetime | None = None

    def iterator_age(self, now: datetime | None = None) -> float | None:
        """Seconds the shard is behind: now minus the creation time of the oldest record
        read and not yet done (of the newest one done when none waits); 0 when caught
        up; None before anything is known. A stopped shard's age keeps growing."""
        now = now or datetime.now(UTC)
        if self.behind_since is not None:
            return max(0.0, (now - self.behind_since).total_seconds())
        if self.state in _DONE:
            return 0.0
        if self.caught_up:
            # caught up as of the last read: if reads stopped returning (throttling, an
            # endpoint down), records written since then are waiting unseen
            if self.last_read_at is not None:
                unread = (now - self.last_read_at).total_seconds()
                if unread > READ_OVERDUE:
                    return unread
            return 0.0
        if self.last_record_time is not None:
            return max(0.0, (now - self.last_record_time).total_seconds())
        return None


# A shard in one of these states has nothing left to read in this run.
_DONE = frozenset({ShardState.ENDED, ShardState.SKIPPED, ShardState.CAUGHT_UP})


class SinkReport(msgspec.Struct):
    """Counts for one sink: elements acknowledged, elements that failed for good, and
    `send()` calls made."""

    name: str
    delivered: int = 0
    failed: int = 0
    batches: int = 0
    #: seconds spent in send(), and how many calls took at most each LATENCY_BUCKETS
    #: bound (not cumulative; the last count is for calls over the last bound)
    send_seconds: float = 0.0
    latency_counts: list[int] = msgspec.field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1)
    )

    def observe(self, seconds: float) -> None:
        """Count one send() call that took `seconds`."""
        self.send_seconds += seconds
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1


class LeaseReport(msgspec.Struct):
    """What this worker did in the lease table (`run(leases=...)`): leases held now,
    taken (free, expired or `stolen` from a busier worker), `lost` (taken by another
    worker, or not renewed in time) and `released` when the run stopped."""

    worker_id: str
    table: str
    held: int = 0
    taken: int = 0
    stolen: int = 0
    lost: int = 0
    released: int = 0


class RunReport(msgspec.Struct):
    """The outcome of `Pipeline.run()`."""

    pipeline: str
    stream: str = ""
    started: datetime | None = None
    finished: datetime | None = None
    stop_reason: str = ""
    shards: dict[str, ShardReport] = msgspec.field(default_factory=dict)
    sinks: dict[str, SinkReport] = msgspec.field(default_factory=dict)
    leases: LeaseReport | None = None
    #: checkpoint store writes by outcome: "ok", "failed", and "refused" (with leases:
    #: a write the lease table refused because another worker holds the lease)
    checkpoint_writes: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def read(self) -> int:
        return sum(s.read for s in self.shards.values())

    @property
    def filtered(self) -> int:
        return sum(s.filtered for s in self.shards.values())

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.shards.values())

    @property
    def delivered(self) -> int:
        """Elements acknowledged, once per sink they were routed to (dead letters are
        counted by `dead_lettered` instead)."""
        return sum(s.delivered for s in self.shards.values())

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.shards.values())

    @property
    def retries(self) -> int:
        """Retries of failing records or batches, over every shard."""
        return sum(s.retries for s in self.shards.values())

    @property
    def dead_lettered(self) -> int:
        """Records sent to a dead-letter sink (and acknowledged by it)."""
        return sum(s.dead_lettered for s in self.shards.values())

    @property
    def duration(self) -> float:
        """Seconds from the start to the end of the run, or to now while it runs."""
        if self.started is None:
            return 0.0
        return ((self.finished or datetime.now(UTC)) - self.started).total_seconds()

    def iterator_ages(self) -> dict[str, float]:
        """Each shard's iterator age in seconds (`ShardReport.iterator_age`), as of the
        end of the run once it finished; shards with no known age are left out."""
        now = self.finished or datetime.now(UTC)
        ages = {k: s.iterator_age(now) for k, s in self.shards.items()}
        return {k: age for k, age in ages.items() if age is not None}

    def shard_states(self) -> dict[ShardState, int]:
        """How many shards are in each state (every state, 0 included)."""
        states = dict.fromkeys(ShardState, 0)
        for shard in list(self.shards.values()):
            states[shard.state] += 1
        return states

    def states_text(self) -> str:
        """The states shards are in, e.g. "1 stopped, 3 running"."""
        counts = sorted((s.value, n) for s, n in self.shard_states().items() if n)
        return ", ".join(f"{n} {state}" for state, n in counts)

    def stopped_shards(self) -> dict[str, ShardReport]:
        return {k: s for k, s in self.shards.items() if s.state is ShardState.STOPPED}

    def summary(self) -> str:
        """A few readable lines for logs and the command line."""
        state = self.stop_reason or "running"
        lines = [
            f"pipeline {self.pipeline!r}: {self.read} record{'' if self.read == 1 else 's'} "
            f"read in {self.duration:.2f}s ({state})",
            f"  elements: {self.filtered} filtered out, {self.dropped} dropped by routing, "
            f"{self.failed} failed, {self.dead_lettered} dead-lettered",
            f"  deliveries: {self.delivered} (an element counts once for each sink that "
            "acknowledged it)",
        ]
        lines.append(f"  shards: {len(self.shards)} ({self.states_text()})")
        if self.leases is not None:
            lease = self.leases
            lines.append(
                f"  leases of worker {lease.worker_id} in {lease.table}: {lease.held} held; "
                f"{lease.taken} taken ({lease.stolen} stolen), {lease.lost} lost, "
                f"{lease.released} released"
            )
        ages = self.iterator_ages()
        worst = max(ages, key=lambda k: ages[k], default=None)
        if worst is not None and ages[worst] > 0:
            lines.append(f"  iterator age: {ages[worst]:.1f}s at most (shard {worst})")
        for shard in self.stopped_shards().values():
            lines.append(f"  stopped {shard.shard_id} at {shard.stopped_at}: {shard.error}")
        for sink in self.sinks.values():
            lines.append(
                f"  sink {sink.name}: {sink.delivered} delivered, {sink.failed} failed, "
                f"{sink.batches} batches"
            )
        return "\n".join(lines)
