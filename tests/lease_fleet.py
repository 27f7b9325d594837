"""A fleet of lease workers for tests and benchmarks: each worker is its own process
(tests/lease_worker.py), reading one stream over HTTP from the LocalStreamsServer this
process serves, and sharing it through a lease table in moto's DynamoDB.

`Fleet` starts, stops, kills and pauses workers, writes to the stream while they run,
watches the lease table (every checkpoint only ever moves forward; a finished lease stays
finished), and reads back what the workers delivered and logged. `check()` then proves
from those files alone that every record was delivered, in order within each holding of
a shard, children after parents.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import anyio
from anyio.abc import Process, TaskGroup

from flowstream import leases
from flowstream.checkpoints.base import is_ahead
from flowstream.leases.lease import Lease
from flowstream.leases.table import LeaseTable
from flowstream.leases.taking import ready_leases
from flowstream.testing import LocalStreamsServer, MemoryStream

__all__ = ["Delivery", "Fleet", "check", "fleet", "takes_of"]

WORKER: Final = Path(__file__).with_name("lease_worker.py")
TABLE: Final = "fleet-leases"
_ENV: Final = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class Delivery:
    """One batch a worker sent: when, by whom, which shard, which records."""

    time: float
    worker: str
    shard: str
    sequences: tuple[str, ...]


@dataclass
class WorkerProcess:
    worker_id: str
    process: Process
    deliveries: Path
    log: Path
    stderr: IO[bytes]

    def stderr_tail(self, size: int = 3000) -> str:
        self.stderr.flush()
        self.stderr.seek(0, os.SEEK_END)
        end = self.stderr.tell()
        self.stderr.seek(max(0, end - size))
        return self.stderr.read().decode(errors="replace")


@dataclass
class Fleet:
    stream: MemoryStream
    server: LocalStreamsServer
    table: LeaseTable
    dynamodb_url: str
    workdir: Path
    failover_time: float
    tg: TaskGroup
    #: what the workers reach DynamoDB at (the benchmark puts a counting proxy there)
    workers_url: str = ""
    #: options of every worker's `leases.dynamodb(...)` (tests/lease_worker.py)
    options: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    #: every worker ever started, in order (their files stay)
    started: list[str] = field(default_factory=list)
    #: what the table watcher saw go wrong
    violations: list[str] = field(default_factory=list)
    writes: int = 0

    # -- workers -------------------------------------------------------------------------

    async def start(self, worker_id: str) -> WorkerProcess:
        deliveries = self.workdir / f"{worker_id}.deliveries"
        log = self.workdir / f"{worker_id}.log"
        config = {
            "worker_id": worker_id,
            "stream_arn": self.server.stream_arn,
            "streams_url": self.server.endpoint_url,
            "dynamodb_url": self.workers_url or self.dynamodb_url,
            "table": TABLE,
            "failover_time": self.failover_time,
            "deliveries": str(deliveries),
            "log": str(log),
            **self.options,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(_ENV)
        stderr = (self.workdir / f"{worker_id}.err").open("w+b")
        process = await anyio.open_process(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=env,
        )
        worker = WorkerProcess(worker_id, process, deliveries, log, stderr)
        self.workers[worker_id] = worker
        self.started.append(worker_id)
        return worker

    def send(self, worker_id: str, signum: signal.Signals) -> None:
        self.workers[worker_id].process.send_signal(signum)

    async def stop(self, worker_id: str, signum: signal.Signals = signal.SIGTERM) -> None:
        """Stop a worker (SIGTERM: gracefully; SIGKILL: a crash) and wait until it exits."""
        worker = self.workers.pop(worker_id)
        worker.process.send_signal(signum)
        with anyio.fail_after(30):
            code = await worker.process.wait()
        await worker.process.aclose()
        if signum == signal.SIGTERM and code != 0:
            raise AssertionError(f"{worker_id} exited {code}: {worker.stderr_tail()}")
        worker.stderr.close()

    # -- the lease table -----------------------------------------------------------------

    async def leases(self) -> dict[str, Lease]:
        return {lease.key: lease for lease in await self.table.scan()}

    async def balanced(self, workers: Iterable[str]) -> bool:
        """Every ready lease is held by one of `workers`, and they hold within one
        lease of each other."""
        names = set(workers)
        ready = ready_leases(list((await self.leases()).values()))
        load = Counter(lease.owner for lease in ready)
        if not ready or set(load) - names:
            return False
        counts = [load[name] for name in names]
        return max(counts) - min(counts) <= 1

    async def none_held_by(self, worker_id: str) -> bool:
        """No unfinished lease is held by `worker_id`; every ready one is held."""
        ready = ready_leases(list((await self.leases()).values()))
        return all(lease.owner not in (None, worker_id) for lease in ready)

    async def watch(self) -> None:
        """Scan the table every 0.25 s: a checkpoint never moves backwards, and a
        finished lease never starts over."""
        last: dict[str, str] = {}
        while True:
            for key, lease in (await self.leases()).items():
                before = last.get(key)
                position = lease.checkpoint
                if position in ("TRIM_HORIZON", "LATEST"):
                    if before is not None:
                        self.violations.append(f"{key}: checkpoint went back from {before}")
                    continue
                if before is not None and before != position and not is_ahead(position, before):
                    self.violations.append(f"{key}: checkpoint went back {before} -> {position}")
                last[key] = position
            await anyio.sleep(0.25)

    # -- the stream ----------------------------------------------------------------------

    def open_shards(self) -> list[str]:
        return [s for s in self.stream.shard_ids if not self.stream.is_closed(s)]

    async def write(self, interval: float) -> None:
        """Put a record into every open shard each `interval` seconds, until cancelled."""
        while True:
            for shard in self.open_shards():
                self.stream.put(shard, "INSERT", {"pk": f"{self.writes}"})
                self.writes += 1
            await anyio.sleep(interval)

    # -- what the workers left -----------------------------------------------------------

    def deliveries(self) -> list[Delivery]:
        found = []
        for worker_id in self.started:
            path = self.workdir / f"{worker_id}.deliveries"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                time, shard, *sequences = line.split()
                found.append(Delivery(float(time), worker_id, shard, tuple(sequences)))
        return sorted(found, key=lambda d: d.time)

    def events(self, worker_id: str, text: str) -> list[tuple[float, str]]:
        """The worker's log lines that contain `text`, with their times."""
        path = self.workdir / f"{worker_id}.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(float(line.split(" ", 1)[0]), line) for line in lines if text in line]

    def delivered(self) -> set[str]:
        return {seq for d in self.deliveries() for seq in d.sequences}


@asynccontextmanager
async def fleet(
    dynamodb_url: str,
    workdir: Path,
    *,
    shards: int,
    failover_time: float,
    watch: bool = True,
    workers_url: str = "",
    **options: Any,
) -> AsyncIterator[Fleet]:
    """A stream of `shards` shards served on 127.0.0.1, the lease table in moto, and
    (with `watch`) a table watcher; every worker still running is killed on the way out.
    Workers reach DynamoDB at `workers_url` (default: `dynamodb_url`) and get `options`
    (tests/lease_worker.py says which it reads)."""
    stream = MemoryStream(table="Fleet")
    for _ in range(shards):
        stream.add_shard()
    store = leases.dynamodb(TABLE, endpoint_url=dynamodb_url)
    async with (
        LocalStreamsServer(stream) as server,
        store.open() as table,
        anyio.create_task_group() as tg,
    ):
        running = Fleet(
            stream, server, table, dynamodb_url, workdir, failover_time, tg, workers_url, options
        )
        if watch:
            tg.start_soon(running.watch)
        try:
            yield running
        finally:
            with anyio.CancelScope(shield=True):
                for worker_id in list(running.workers):
                    await running.stop(worker_id, signal.SIGKILL)
            tg.cancel_scope.cancel()


def check(
    stream: MemoryStream, deliveries: Sequence[Delivery], takes: dict[str, Counter[str]]
) -> list[str]:
    """What went wrong, from the delivery files alone (empty: nothing):

    - every record in the stream was delivered at least once;
    - each worker delivered each shard's records in order: a run of consecutive
      records of the shard, starting over (from a checkpoint) only when the worker took
      the lease again, so at most as many runs as takes (`takes[worker][shard]`);
    - a child's first record was sent after its parent's last one."""
    problems: list[str] = []
    delivered = {seq for d in deliveries for seq in d.sequences}
    missing = [r.sequence_number for r in stream.records() if r.sequence_number not in delivered]
    if missing:
        problems.append(f"{len(missing)} records never delivered, e.g. {missing[:3]}")
    index = {
        r.sequence_number: (shard, n)
        for shard in stream.shard_ids
        for n, r in enumerate(stream.records(shard))
    }
    runs: dict[tuple[str, str], list[int]] = {}
    for d in deliveries:
        positions = runs.setdefault((d.worker, d.shard), [])
        for seq in d.sequences:
            shard, n = index[seq]
            if shard != d.shard:
                problems.append(f"{seq} of {shard} delivered as {d.shard}")
            positions.append(n)
    for (worker, shard), positions in runs.items():
        starts = 1 + sum(1 for a, b in itertools.pairwise(positions) if b != a + 1)
        if starts > max(1, takes.get(worker, Counter())[shard]):
            problems.append(
                f"{worker} delivered {shard} in {starts} runs but took its lease "
                f"{takes.get(worker, Counter())[shard]} times: out of order"
            )
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for d in deliveries:
        first.setdefault(d.shard, d.time)
        for seq in d.sequences:
            shard, n = index[seq]
            if n == len(stream.records(shard)) - 1:
                last.setdefault(shard, d.time)
    for shard in stream.shard_ids:
        parent = stream.parent_of(shard)
        if parent is None or shard not in first or not stream.records(parent):
            continue
        if parent not in last or first[shard] < last[parent]:
            problems.append(f"child {shard} was delivered before its parent {parent} ended")
    return problems


def takes_of(fleet_: Fleet) -> dict[str, Counter[str]]:
    """How many times each worker took each lease (from its log)."""
    found: dict[str, Counter[str]] = {}
    for worker_id in fleet_.started:
        counts = found.setdefault(worker_id, Counter())
        for _, line in fleet_.events(worker_id, "took the lease of shard "):
            counts[line.split("took the lease of shard ", 1)[1].split()[0]] += 1
    return found
