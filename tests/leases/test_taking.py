"""The taking arithmetic: targets, the steal rule, expiry without clocks, lineage."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from flowstream.checkpoints.base import SHARD_END
from flowstream.leases.lease import Lease
from flowstream.leases.taking import LeaseClock, Takes, choose, ready_leases

FAILOVER = 10.0


def leases(owners: dict[str, int], free: int = 0) -> list[Lease]:
    """`owners[w]` leases held by worker w, and `free` leases nobody holds."""
    made = [
        Lease(f"shard-{w}-{n}", owner=w, counter=1)
        for w, count in owners.items()
        for n in range(count)
    ]
    return made + [Lease(f"shard-free-{n}") for n in range(free)]


def seen(all_leases: list[Lease], at: float = 0.0) -> LeaseClock:
    clock = LeaseClock(FAILOVER)
    clock.observe(all_leases, at)
    return clock


def round_for(me: str, all_leases: list[Lease], now: float = 1.0, seed: int = 1) -> Takes:
    return choose(all_leases, me, seen(all_leases), now, random.Random(seed))


class TestTargets:
    @pytest.mark.parametrize(
        ("owners", "free", "me", "target", "takes"),
        [
            pytest.param({}, 8, "a", 8, 8, id="alone-takes-everything"),
            pytest.param({"b": 8}, 0, "a", 4, 0, id="nothing-free-b-far-ahead-steal-instead"),
            pytest.param({"b": 4}, 4, "a", 4, 4, id="two-workers-split"),
            pytest.param({"b": 3, "c": 3}, 3, "a", 3, 3, id="three-workers"),
            pytest.param({"a": 3, "b": 3}, 1, "a", 4, 1, id="a-below-target"),
            pytest.param({"a": 4, "b": 3}, 1, "a", 4, 0, id="a-at-target"),
            pytest.param({"b": 1, "c": 1}, 0, "a", 1, 0, id="more-workers-than-shards"),
            pytest.param({"b": 2}, 3, "a", 3, 3, id="ceil"),
        ],
    )
    def test_takes_free_leases_up_to_ceil_of_ready_over_workers(
        self, owners: dict[str, int], free: int, me: str, target: int, takes: int
    ) -> None:
        result = round_for(me, leases(owners, free))
        assert result.target == target
        assert len(result.free[: result.needed]) == takes
        assert all(lease.owner is None for lease in result.free)
        if takes:  # the rest are there to try when another worker is quicker to one
            assert len(result.free) == free


class TestStealing:
    def test_steals_one_lease_from_the_most_loaded_worker(self) -> None:
        result = round_for("a", leases({"b": 6, "c": 2}))
        assert result.free == []
        (stolen,) = result.stolen
        assert stolen.owner == "b"

    @pytest.mark.parametrize(
        "owners",
        [{"a": 1, "b": 2}, {"a": 2, "b": 2, "c": 1}, {"a": 1, "b": 2, "c": 2}],
        ids=["one-apart", "even", "one-apart-of-two"],
    )
    def test_no_steal_within_one_lease(self, owners: dict[str, int]) -> None:
        assert round_for("a", leases(owners)).stolen == []

    @pytest.mark.parametrize("seed", range(20))
    @pytest.mark.parametrize(("workers", "shards"), [(2, 5), (3, 4), (4, 32), (4, 33), (7, 64)])
    def test_rounds_settle_within_one_of_the_mean_and_stay(
        self, workers: int, shards: int, seed: int
    ) -> None:
        rng = random.Random(seed)
        names = [f"w{i}" for i in range(workers)]
        # the first worker up took everything; the others join
        table = {f"s{n}": Lease(f"s{n}", owner=names[0], counter=1) for n in range(shards)}
        clock = {name: LeaseClock(FAILOVER) for name in names}
        settled_at = None
        for step in range(200):
            now = float(step)
            me = names[step % workers]
            current = list(table.values())
            clock[me].observe(current, now)
            for lease in choose(current, me, clock[me], now, rng).leases:
                table[lease.key] = Lease(lease.key, owner=me, counter=lease.counter + 1)
            for lease in list(table.values()):  # everybody renews
                table[lease.key] = Lease(lease.key, owner=lease.owner, counter=lease.counter + 1)
            load = Counter(lease.owner for lease in table.values())
            spread = max(load[n] for n in names) - min(load[n] for n in names)
            if settled_at is None and spread <= 1:
                settled_at = step
            if settled_at is not None:
                assert spread <= 1, "a steal made it worse after it had settled"
        assert settled_at is not None
        mean = shards / workers
        load = Counter(lease.owner for lease in table.values())
        assert all(math.floor(mean) <= load[n] <= math.ceil(mean) for n in names)


class TestExpiry:
    def test_an_owned_lease_whose_counter_does_not_move_expires_after_the_failover_time(
        self,
    ) -> None:
        lease = Lease("s", owner="gone", counter=7)
        clock = LeaseClock(FAILOVER)
        clock.observe([lease], 100.0)
        assert not clock.expired(lease, 100.0 + FAILOVER)
        assert clock.expired(lease, 100.0 + FAILOVER + 0.1)
        assert choose([lease], "a", clock, 100.0 + FAILOVER + 0.1).leases == [lease]

    def test_a_moving_counter_keeps_it_alive_whatever_the_clocks_say(self) -> None:
        clock = LeaseClock(FAILOVER)
        for step in range(10):
            clock.observe([Lease("s", owner="b", counter=step)], step * 9.0)
        assert not clock.expired(Lease("s", owner="b", counter=9), 81.0 + FAILOVER)

    def test_a_lease_first_seen_with_an_owner_waits_the_failover_time(self) -> None:
        """A worker that just started cannot know the owner is gone: it waits."""
        lease = Lease("s", owner="b", counter=3)
        clock = LeaseClock(FAILOVER)
        clock.observe([lease], 0.0)
        assert choose([lease], "a", clock, 5.0).leases == []

    def test_a_free_lease_is_taken_at_once(self) -> None:
        lease = Lease("s", counter=3)
        clock = LeaseClock(FAILOVER)
        clock.observe([lease], 0.0)
        assert choose([lease], "a", clock, 0.0).leases == [lease]

    def test_expired_leases_come_before_free_ones(self) -> None:
        expired = Lease("old", owner="gone", counter=1)
        free = [Lease(f"free-{n}") for n in range(5)]
        clock = LeaseClock(FAILOVER)
        clock.observe([expired, *free], 0.0)
        takes = choose([expired, *free], "a", clock, FAILOVER + 1, random.Random(3))
        assert takes.free[0] == expired

    def test_a_deleted_lease_is_forgotten(self) -> None:
        clock = LeaseClock(FAILOVER)
        clock.observe([Lease("s", owner="b", counter=1)], 0.0)
        clock.observe([], 1.0)
        clock.observe([Lease("s", owner="b", counter=1)], 100.0)
        assert not clock.expired(Lease("s", owner="b", counter=1), 105.0)


class TestLineage:
    def test_a_child_is_ready_only_once_its_parent_is_finished(self) -> None:
        parent = Lease("p", owner="b", counter=1)
        child = Lease("c", parents=frozenset({"p"}))
        assert [lease.key for lease in ready_leases([parent, child])] == ["p"]
        done = Lease("p", checkpoint=SHARD_END, counter=2)
        assert [lease.key for lease in ready_leases([done, child])] == ["c"]

    def test_a_parent_without_a_lease_does_not_block(self) -> None:
        child = Lease("c", parents=frozenset({"cleaned-up"}))
        assert ready_leases([child]) == [child]

    def test_a_merge_child_waits_for_both_parents(self) -> None:
        a = Lease("a", checkpoint=SHARD_END)
        b = Lease("b", owner="w", counter=1)
        child = Lease("c", parents=frozenset({"a", "b"}))
        assert child not in ready_leases([a, b, child])

    def test_waiting_children_do_not_count_towards_the_target(self) -> None:
        parents = [Lease(f"p{n}", owner="b", counter=1) for n in range(4)]
        children = [Lease(f"c{n}", parents=frozenset({f"p{n}"})) for n in range(4)]
        takes = round_for("a", [*parents, *children])
        assert takes.target == 2  # four ready leases over two workers
        assert all(lease.key.startswith("p") for lease in takes.stolen)
        assert takes.free == []
