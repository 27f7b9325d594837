"""Worker processes share one stream through a lease table (tests/lease_fleet.py): they
balance, a killed worker's shards move within the failover time and one taking round, a
stopped worker's at once, a paused one drops its shards and never moves a checkpoint
back; through all of it every record is delivered, in order, children after parents."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import pytest
from lease_fleet import Fleet, check, fleet, takes_of
from support import eventually, wait_until

from flowstream.checkpoints.base import SHARD_END

FAILOVER = 2.0
#: A taking round is every third of the failover time; a round also scans and takes.
ROUND = FAILOVER / 3
#: What the takes themselves cost on this machine's moto (two cores shared by four
#: workers, moto and the stream server: ~0.1 s per take), added to any deadline.
SLACK = 3.0
BALANCE = 30.0


async def finish(f: Fleet, writer: anyio.CancelScope) -> None:
    """Stop writing, wait until everything written was delivered, stop every worker,
    and check what they delivered."""
    writer.cancel()
    everything = {r.sequence_number for r in f.stream.records()}
    await wait_until(lambda: everything <= f.delivered(), 60.0)
    for worker_id in list(f.workers):
        await f.stop(worker_id)
    assert f.violations == []
    assert check(f.stream, f.deliveries(), takes_of(f)) == []


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


class TestFleet:
    async def test_balance_splits_failover_and_handover(self, moto_url: str, workdir: Path) -> None:
        async with fleet(moto_url, workdir, shards=32, failover_time=FAILOVER) as f:
            writer = anyio.CancelScope()

            async def write() -> None:
                with writer:
                    await f.write(0.2)

            f.tg.start_soon(write)
            names = ["w0", "w1", "w2", "w3"]
            for name in names:
                await f.start(name)
            await eventually(lambda: f.balanced(names), BALANCE)

            # splits while running: the children are leased once their parents end
            parents = f.open_shards()[:2]
            for parent in parents:
                f.stream.split(parent)
            await eventually(lambda: _finished(f, parents), BALANCE)
            await eventually(lambda: f.balanced(names), BALANCE)

            # SIGKILL: the shards move after the failover time and one taking round
            killed = anyio.current_time()
            await f.stop("w0", signal.SIGKILL)
            await eventually(lambda: f.none_held_by("w0"), FAILOVER + ROUND + SLACK + 5)
            failover = anyio.current_time() - killed
            assert failover <= FAILOVER + ROUND + SLACK

            # SIGTERM: the leases are released and taken in the next round, free: no
            # expiry wait
            await f.stop("w1")
            await eventually(lambda: f.none_held_by("w1"), BALANCE)
            released = {_shard_of(line): t for t, line in f.events("w1", "released the lease")}
            assert released
            taken = {
                _shard_of(line): t
                for name in ("w2", "w3")
                for t, line in f.events(name, "took the lease")
                if t > min(released.values())
            }
            assert set(released) <= set(taken)
            assert not [line for t, line in f.events("w2", "expired, from w1")]
            assert not [line for t, line in f.events("w3", "expired, from w1")]
            handover = max(taken[k] for k in released) - max(released.values())
            assert handover <= ROUND + SLACK

            await eventually(lambda: f.balanced(["w2", "w3"]), BALANCE)
            await finish(f, writer)

    async def test_scale_from_one_to_four_to_two(self, moto_url: str, workdir: Path) -> None:
        async with fleet(moto_url, workdir, shards=12, failover_time=FAILOVER) as f:
            writer = anyio.CancelScope()

            async def write() -> None:
                with writer:
                    await f.write(0.2)

            f.tg.start_soon(write)
            await f.start("w0")
            await eventually(lambda: f.balanced(["w0"]), BALANCE)
            for name in ("w1", "w2", "w3"):
                await f.start(name)
            await eventually(lambda: f.balanced(["w0", "w1", "w2", "w3"]), BALANCE)
            await f.stop("w0")
            await f.stop("w2")
            await eventually(lambda: f.balanced(["w1", "w3"]), BALANCE)
            await finish(f, writer)

    async def test_a_paused_worker_drops_its_shards_and_never_moves_a_checkpoint_back(
        self, moto_url: str, workdir: Path
    ) -> None:
        async with fleet(moto_url, workdir, shards=8, failover_time=FAILOVER) as f:
            writer = anyio.CancelScope()

            async def write() -> None:
                with writer:
                    await f.write(0.1)

            f.tg.start_soon(write)
            await f.start("w0")
            await f.start("w1")
            await eventually(lambda: f.balanced(["w0", "w1"]), BALANCE)
            held = {k for k, lease in (await f.leases()).items() if lease.owner == "w0"}
            f.send("w0", signal.SIGSTOP)
            # past the failover time, w1 takes them over
            await eventually(lambda: f.none_held_by("w0"), FAILOVER + ROUND + SLACK + 5)
            await eventually(lambda: f.balanced(["w1"]), BALANCE)
            continued = time.time()
            f.send("w0", signal.SIGCONT)
            # it learns it lost them, and sends nothing more of them
            await wait_until(lambda: len(f.events("w0", "lost the lease")) >= len(held), 30.0)
            late = [
                d
                for d in f.deliveries()
                if d.worker == "w0" and d.shard in held and d.time > continued
            ]
            assert late == []
            await eventually(lambda: f.balanced(["w0", "w1"]), BALANCE)
            await finish(f, writer)


def _shard_of(line: str) -> str:
    return line.split(" the lease of shard ", 1)[1].split()[0].rstrip(":")


async def _finished(f: Fleet, shards: list[str]) -> bool:
    leases = await f.leases()
    return all(shard in leases and leases[shard].checkpoint == SHARD_END for shard in shards)
