"""Leases: what a fleet of workers costs in lease-table calls, and how fast a crashed or
stopped worker's shards move.

    python3 benchmarks/bench_leases.py [--quick]

Four worker processes (tests/lease_worker.py, the test fleet's) share a stream of 64
shards served by LocalStreamsServer, with the lease table in moto's DynamoDB behind a
counting proxy (tests/dynamo_proxy.py) that sorts every call the workers make: renewals,
checkpoints, takes, releases, scans, ... Every option is flowstream's default
(`failover_time=10`: renewals every 3.3 s, checkpoints at the same interval).

- Steady state: calls per shard per minute over a window with a record put into every
  shard each second (busy), then over one with no writes (idle), next to what the KCL
  2.x's defaults make (a renewal every 3.308 s, a taker scan every 20.05 s per worker,
  checkpoints as the application writes them; from its source, not run here).
- Failover: SIGKILL the worker holding the most leases; the time until the last of its
  shards was taken by another worker (the takers' own log lines). A replacement starts
  before the next round.
- Handover: the same with SIGTERM (a deploy): the worker finishes, checkpoints and
  releases its leases; the time until the last was taken elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web
from report import Section, text_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dynamo_proxy import DynamoProxy
from lease_fleet import Fleet, fleet
from moto_server import MotoServer
from support import eventually, wait_until

from flowstream.leases.lease import to_item

COMMAND = "python3 benchmarks/bench_leases.py"
WORKERS = 4
SHARDS = 64
FAILOVER = 10.0
#: The KCL 2.x's defaults (shared/research/kcl-leases.md): renewer and taker periods.
KCL_RENEW = 10.0 / 3 - 0.025
KCL_TAKE = (10.0 + 0.025) * 2
WAIT = 120.0


class CountingProxy(DynamoProxy):
    """Counts the workers' calls by what they do (an UpdateItem is a renewal, a
    checkpoint, a take, ... by its update expression)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.kinds: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        kind = operation
        if operation == "UpdateItem":
            update = json.loads(await request.read()).get("UpdateExpression", "")
            kind = _update_kind(update)
        self.kinds[kind] += 1
        return await super().handle(request)


def _update_kind(update: str) -> str:
    if update.startswith("SET #owner"):
        return "take"
    if update.startswith("SET #checkpoint"):
        return "checkpoint"
    if "REMOVE #owner" in update:
        return "release"
    if update.startswith("ADD #children"):
        return "children"
    return "renewal"


@dataclass
class Results:
    busy: Counter[str] = field(default_factory=Counter)
    idle: Counter[str] = field(default_factory=Counter)
    window: float = 0.0
    failovers: list[float] = field(default_factory=list)
    handovers: list[float] = field(default_factory=list)
    #: a released lease until another worker took it, the slowest of each handover
    after_release: list[float] = field(default_factory=list)
    #: the lease items' size as DynamoDB counts it (what a scan reads)
    table_bytes: int = 0


async def _counted(proxy: CountingProxy, seconds: float) -> Counter[str]:
    before = Counter(proxy.kinds)
    await anyio.sleep(seconds)
    after = Counter(proxy.kinds)
    after.subtract(before)
    return +after


async def _owned(f: Fleet) -> dict[str, str | None]:
    return {key: lease.owner for key, lease in (await f.leases()).items() if not lease.finished}


def _taken_after(f: Fleet, keys: set[str], since: float, victim: str) -> dict[str, float]:
    """When each of `keys` was first taken by a worker other than `victim` after `since`."""
    taken: dict[str, float] = {}
    for worker_id in f.started:
        if worker_id == victim:
            continue
        for at, line in f.events(worker_id, "took the lease of shard "):
            key = line.split("took the lease of shard ", 1)[1].split()[0]
            if key in keys and at > since:
                taken[key] = min(taken.get(key, at), at)
    return taken


async def _move(f: Fleet, signum: signal.Signals, number: int) -> tuple[float, float]:
    """Stop the worker holding the most leases with `signum`; the seconds until its last
    lease was taken elsewhere, from the signal and from its release. Start another."""
    # at a random moment of the workers' renewal and taking rounds
    await anyio.sleep(random.uniform(0.0, FAILOVER / 3))
    owners = await _owned(f)
    load = Counter(owner for owner in owners.values() if owner in f.workers)
    victim = load.most_common(1)[0][0]
    assert victim is not None
    keys = {key for key, owner in owners.items() if owner == victim}
    sent = time.time()
    await f.stop(victim, signum)

    async def moved() -> bool:
        now = await _owned(f)
        return all(now.get(key) not in (None, victim) for key in keys)

    await eventually(moved, WAIT)
    taken = _taken_after(f, keys, sent, victim)
    missing = keys - set(taken)
    if missing:
        raise RuntimeError(f"no take of {sorted(missing)} logged after {victim} stopped")
    released = {
        line.split("released the lease of shard ", 1)[1].split()[0]: at
        for at, line in f.events(victim, "released the lease of shard ")
    }
    after_release = max((taken[key] - released.get(key, sent)) for key in keys)
    replacement = f"w{number}"
    await f.start(replacement)
    return max(taken.values()) - sent, after_release


async def measure(*, window: float, rounds: int) -> Results:
    results = Results(window=window)
    with MotoServer() as moto, tempfile.TemporaryDirectory() as workdir:
        async with (
            CountingProxy(moto.url) as proxy,
            fleet(
                moto.url,
                Path(workdir),
                shards=SHARDS,
                failover_time=FAILOVER,
                watch=False,
                workers_url=proxy.url,
                flush_interval=None,
            ) as f,
        ):
            writer = anyio.CancelScope()

            async def write() -> None:
                with writer:
                    await f.write(1.0)

            f.tg.start_soon(write)
            names = [f"w{n}" for n in range(WORKERS)]
            for name in names:
                await f.start(name)
            await eventually(lambda: f.balanced(names), WAIT)
            await anyio.sleep(2 * FAILOVER / 3)  # every lease renewed or checkpointed since
            print("balanced; counting (busy)", flush=True)
            results.busy = await _counted(proxy, window)
            results.table_bytes = sum(
                _item_size(to_item(lease)) for lease in (await f.leases()).values()
            )
            writer.cancel()
            everything = {r.sequence_number for r in f.stream.records()}
            await wait_until(lambda: everything <= f.delivered(), WAIT)
            await anyio.sleep(2 * FAILOVER / 3)  # the last checkpoints written
            print("counting (idle)", flush=True)
            results.idle = await _counted(proxy, window)
            number = WORKERS
            for signum, into in ((signal.SIGKILL, results.failovers), (signal.SIGTERM, None)):
                for n in range(rounds):
                    took, after_release = await _move(f, signum, number)
                    number += 1
                    if into is not None:
                        into.append(took)
                    else:
                        results.handovers.append(took)
                        results.after_release.append(after_release)
                    print(f"{signum.name} {n + 1}/{rounds}: {took:.2f}s", flush=True)
                    # the replacement is running and holds a lease before the next round
                    await eventually(partial(_holds_any, f, f.started[-1]), WAIT)
    return results


def _item_size(item: dict[str, Any]) -> int:
    """An item's size by DynamoDB's rule (names plus values; a number as about half
    its digits), close enough to price a scan."""
    size = 0
    for name, value in item.items():
        ((kind, data),) = value.items()
        size += len(name.encode())
        if kind == "S":
            size += len(data.encode())
        elif kind == "N":
            size += len(data) // 2 + 1
        elif kind == "SS":
            size += sum(len(one.encode()) for one in data)
    return size


async def _holds_any(f: Fleet, worker_id: str) -> bool:
    return worker_id in (await _owned(f)).values()


# -- the report ---------------------------------------------------------------------------

CALLS = ("renewal", "checkpoint", "Scan", "take", "release", "other")


def _per_shard_minute(counts: Counter[str], window: float) -> dict[str, float]:
    scale = 60.0 / window / SHARDS
    sorted_ = {kind: counts.get(kind, 0) * scale for kind in CALLS[:-1]}
    sorted_["other"] = sum(n for kind, n in counts.items() if kind not in CALLS) * scale
    return sorted_


def _kcl() -> dict[str, float]:
    return {
        "renewal": 60.0 / KCL_RENEW,
        "checkpoint": float("nan"),
        "Scan": WORKERS * 60.0 / KCL_TAKE / SHARDS,
        "take": 0.0,
        "release": 0.0,
        "other": 0.0,
    }


def cost_rows(results: Results) -> list[tuple[str, ...]]:
    columns = [
        _per_shard_minute(results.busy, results.window),
        _per_shard_minute(results.idle, results.window),
        _kcl(),
    ]
    rows = []
    for kind in CALLS:
        cells = [
            "as the app writes" if value != value else f"{value:.2f}"
            for value in (column[kind] for column in columns)
        ]
        rows.append((kind, *cells))
    totals = [sum(v for v in column.values() if v == v) for column in columns]
    writes = [column["renewal"] + column["checkpoint"] for column in columns[:2]]
    rows.append(("all calls", *(f"{t:.2f}" for t in totals[:2]), f"{totals[2]:.2f} + checkpoints"))
    rows.append(
        ("lease writes", *(f"{w:.2f}" for w in writes), f"{60.0 / KCL_RENEW:.2f} + checkpoints")
    )
    return rows


COST_HEADER = ("per shard per minute", "flowstream, busy", "flowstream, idle", "KCL 2.x defaults")
MOVE_HEADER = ("after", "runs", "median s", "max s", "KCL 2.x defaults")


def _spread(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.2f}", f"{max(values):.2f}"


def move_rows(results: Results) -> list[tuple[str, ...]]:
    kcl = f"{FAILOVER:.0f} to {FAILOVER + KCL_TAKE:.0f}"
    return [
        ("SIGKILL: shards taken elsewhere", str(len(results.failovers)),
         *_spread(results.failovers), kcl),
        ("SIGTERM: shards taken elsewhere", str(len(results.handovers)),
         *_spread(results.handovers), kcl + " (leases not released)"),
        ("a release until taken", str(len(results.after_release)),
         *_spread(results.after_release), "-"),
    ]  # fmt: skip


def notes(results: Results) -> list[str]:
    return [
        f"{WORKERS} worker processes, {SHARDS} shards, failover_time={FAILOVER:.0f} and every "
        "other option at its default; lease table in moto's server behind a counting proxy. "
        f"Each steady-state window is {results.window:.0f} s; busy: a record into every shard "
        "each second.",
        "flowstream checkpoints at the renewal interval by default, and a checkpoint write "
        "renews the lease: a busy shard costs about what an idle one does. The KCL renews "
        "every 3.308 s whatever the load and checkpoints on top, as often as the application "
        "calls checkpoint().",
        "Each worker scans the table every renewal interval (the KCL's taker: every 20 s), "
        "and when a peer's lease would expire: that is what makes failover about "
        "failover_time. A scan reads the whole table: here "
        f"{results.table_bytes / 1024:.1f} KB, {math.ceil(results.table_bytes / 4096)} read "
        "units (consistent reads); a write unit costs five times a read unit on demand.",
        "Failover: the KCL 2.x notices an expired lease at its next taker run, 0 to 20 s after "
        "the failover time; on SIGTERM it does not release its leases (issues #845, #474), "
        "so a deploy waits as long as a crash. flowstream releases them: peers take them "
        "at once, woken by their next scan.",
    ]


def sections(*, quick: bool = False) -> list[Section]:
    """The lease tables for `run_all.py`."""
    _fake_credentials()
    window, rounds = (20.0, 3) if quick else (60.0, 10)
    results = anyio.run(lambda: measure(window=window, rounds=rounds))
    command = COMMAND + (" --quick" if quick else "")
    return [
        Section(
            f"Leases: lease-table calls, {WORKERS} workers and {SHARDS} shards",
            COST_HEADER,
            cost_rows(results),
            command,
            notes(results)[:3],
        ),
        Section(
            f"Leases: failover and handover, failover_time={FAILOVER:.0f}",
            MOVE_HEADER,
            move_rows(results),
            command,
            notes(results)[3:],
        ),
    ]


def _fake_credentials() -> None:
    # Local servers only; these credentials never leave the machine.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter windows, 3 rounds")
    args = parser.parse_args()
    for section in sections(quick=args.quick):
        print(section.title)
        print(text_table(section.header, section.rows))
        for note in section.notes:
            print(f"- {note}")
        print()


if __name__ == "__main__":
    main()
