"""Which leases a worker takes in a taking round: the Kinesis Client Library's lease-count
arithmetic, with the same safety and a steal rule that cannot thrash.

- A lease is *ready* when it is not finished and each of its parents is finished (or has
  no lease any more): a child is taken only once its parent is done, whoever did it.
- A lease is *expired* when the worker looking has not seen its counter move for
  `failover_time` seconds: no clocks are compared (`LeaseClock`). A lease with no owner
  is free at once.
- The target of each worker is ``ceil(ready / workers)``, where the workers are the
  owners of live ready leases and the worker itself. Free and expired leases are taken
  first, up to the target, in random order (workers starting together then collide
  less). When none is free, one lease is stolen from the most loaded worker, and only
  when that worker holds at least two more than this one: stealing never makes the
  spread worse, so workers settle within one lease of each other and stay there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flowstream.leases.lease import Lease

__all__ = ["LeaseClock", "Takes", "choose", "ready_leases"]


class LeaseClock:
    """When this worker last saw each lease's counter move, on its own monotonic clock.

    A lease first seen with an owner counts from that moment (it may be alive); a lease
    first seen without one is free at once."""

    def __init__(self, failover_time: float) -> None:
        self.failover_time = failover_time
        self._seen: dict[str, tuple[int, float]] = {}

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        present = set()
        for lease in leases:
            present.add(lease.key)
            seen = self._seen.get(lease.key)
            if seen is None or seen[0] != lease.counter:
                self._seen[lease.key] = (lease.counter, now)
        for key in self._seen.keys() - present:  # deleted leases
            del self._seen[key]

    def next_expiry(self, leases: Iterable[Lease]) -> float | None:
        """When the first of the owned `leases` expires unless its counter moves: a
        taker looks again then, instead of up to a round later."""
        times = [
            seen[1] + self.failover_time
            for lease in leases
            if lease.owner is not None and (seen := self._seen.get(lease.key)) is not None
        ]
        return min(times, default=None)

    def expired(self, lease: Lease, now: float) -> bool:
        """True when `lease` has an owner whose counter has not moved for the failover
        time (the owner is gone, paused or cut off)."""
        if lease.owner is None:
            return False
        seen = self._seen.get(lease.key)
        return seen is None or now - seen[1] > self.failover_time


@dataclass(frozen=True, slots=True)
class Takes:
    """What a round takes: `needed` of the free or expired leases (`free` lists them
    all, in the order to try: when another worker is quicker to one, the next is taken
    instead), or at most one lease stolen."""

    free: list[Lease] = field(default_factory=list)
    stolen: list[Lease] = field(default_factory=list)
    target: int = 0
    needed: int = 0

    @property
    def leases(self) -> list[Lease]:
        """The leases to take if no other worker takes one first."""
        return [*self.free[: self.needed], *self.stolen]


def ready_leases(leases: Sequence[Lease]) -> list[Lease]:
    """The leases that may be processed now: not finished, and each parent finished or
    without a lease (its records expired, or cleaned up)."""
    by_key = {lease.key: lease for lease in leases}
    return [
        lease
        for lease in leases
        if not lease.finished
        and all(parent not in by_key or by_key[parent].finished for parent in lease.parents)
    ]


def choose(
    leases: Sequence[Lease],
    me: str,
    clock: LeaseClock,
    now: float,
    rng: random.Random | None = None,
) -> Takes:
    """The leases worker `me` should take in this round (see the module docstring)."""
    rng = rng or random.Random()
    ready = ready_leases(leases)
    if not ready:
        return Takes()
    held: dict[str, list[Lease]] = {}
    available: list[Lease] = []
    gone: set[str] = set()  # owners with an expired lease: crashed, paused or cut off
    for lease in ready:
        if lease.owner is None or clock.expired(lease, now):
            if lease.owner != me:
                available.append(lease)
            if lease.owner is not None:
                gone.add(lease.owner)
        else:
            held.setdefault(lease.owner, []).append(lease)
    # A worker that let a lease expire is not counted: its other leases follow soon, and
    # the others' targets make room for them at once instead of one round at a time.
    workers = len((held.keys() - gone) | {me})
    target = math.ceil(len(ready) / workers)
    mine = len(held.get(me, ()))
    needed = target - mine
    if needed <= 0:
        return Takes(target=target)
    if available:
        rng.shuffle(available)
        # Expired leases of a gone worker first: their shards stand still now.
        available.sort(key=lambda lease: lease.owner is None)
        return Takes(free=available, target=target, needed=needed)
    loads = {owner: len(owned) for owner, owned in held.items() if owner != me}
    if not loads:
        return Takes(target=target)
    most = max(loads.values())
    if most < mine + 2:
        return Takes(target=target)  # a steal would only move the imbalance
    victim = rng.choice(sorted(owner for owner, load in loads.items() if load == most))
    return Takes(stolen=[rng.choice(held[victim])], target=target, needed=1)
