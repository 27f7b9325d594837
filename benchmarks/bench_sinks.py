"""Delivery rate of flowstream's HTTP and SQS sinks against hand-written loops that send
one request per record, in one process, over 16 shards.

    python benchmarks/bench_sinks.py [--records N] [--sqs-records N] [--runs N]
                                     [--sink {all,http,sqs}] [--markdown FILE]

The source is a MemoryStream filled before the clock starts, a fresh one for every run
(records cache their decoded keys); each record becomes ``{"keys": ..., "event": ...}``.
HTTP goes to a counting aiohttp server in a process of its own (counting_server.py),
SQS to moto's server, a subprocess too; after every run the benchmark checks that exactly
the records it was given arrived, and stops with an error if not. Records per second
(wall clock, min/median/max over the runs, after one small warm-up run; the cases of a
sink take turns within each run) and the client process's CPU time, garbage collector on.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import aiohttp
import anyio
import boto3
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from counting_server import CountingServer
from report import Section

import flowstream as fs
from flowstream.sinks.http import http
from flowstream.sinks.sqs import sqs
from flowstream.testing import MemoryStream

if TYPE_CHECKING:
    from moto_server import MotoServer

SHARDS = 16
REGION = "us-east-1"
WARMUP_RECORDS = 2 * SHARDS
#: No run may take longer (a stuck sink must fail the benchmark, not hang it).
RUN_TIMEOUT = 300.0
TESTS = Path(__file__).resolve().parent.parent / "tests"

T = TypeVar("T")


class BenchmarkError(Exception):
    """A case did not deliver exactly what it was given: its rate would mean nothing."""


# -- the source -----------------------------------------------------------------------------


def _profile(rng: random.Random, n: int) -> dict[str, Any]:
    """A small user profile: about 300 bytes of DynamoDB JSON."""
    return {
        "pk": f"user#{n:07d}",
        "sk": "profile",
        "name": rng.choice(["Ann", "Bob", "Chen", "Dara", "Eli"]) + " " + "x" * rng.randint(3, 12),
        "email": f"u{n}@example.com",
        "age": rng.randint(18, 90),
        "active": rng.random() < 0.8,
        "plan": rng.choice(["free", "pro", "team"]),
        "tags": {f"tag{rng.randint(0, 50)}" for _ in range(3)},
        "version": rng.randint(2, 100),
        "updated": f"2026-11-{rng.randint(1, 28):02d}T12:00:00Z",
    }


def make_stream(records: int, *, seed: int = 16) -> MemoryStream:
    """`records` changes spread over `SHARDS` shards, INSERT/MODIFY/REMOVE about
    30/60/10, both images."""
    rng = random.Random(seed)
    stream = MemoryStream()
    shards = [stream.add_shard() for _ in range(SHARDS)]
    for n in range(records):
        event = rng.choices(["INSERT", "MODIFY", "REMOVE"], [3, 6, 1])[0]
        new = _profile(rng, n)
        old = dict(new, version=new["version"] - 1, active=not new["active"])
        stream.put(
            shards[n % SHARDS],
            event,
            {"pk": new["pk"], "sk": new["sk"]},
            None if event == "REMOVE" else new,
            None if event == "INSERT" else old,
        )
    return stream


def to_message(record: fs.Record) -> dict[str, Any]:
    """What every case sends for a record: the item's keys and the event name."""
    return {"keys": record.keys, "event": record.event_name}


def by_shard(stream: MemoryStream) -> list[list[fs.Record]]:
    return [stream.records(shard) for shard in stream.shard_ids]


async def run_pipeline(stream: MemoryStream, sink: fs.sinks.Sink) -> None:
    """flowstream's way: a pipeline that maps each record and sends it to `sink`."""
    report = await fs.Pipeline(stream).map(to_message).to(sink).run(drain=True)
    retries = sum(s.retries for s in report.shards.values())
    if report.delivered != len(stream.records()) or report.failed or retries:
        raise BenchmarkError(
            f"{sink.describe()} did not deliver every record at the first attempt "
            f"({retries} retries):\n{report.summary()}"
        )


# -- HTTP -----------------------------------------------------------------------------------


async def http_naive_per_shard(stream: MemoryStream, url: str) -> None:
    """What a careful hand-written consumer does: a task per shard, one POST per record,
    each answered before the next (the shard's order)."""
    async with aiohttp.ClientSession() as session:

        async def shard(records: list[fs.Record]) -> None:
            for record in records:
                async with session.post(url, json=to_message(record)) as response:
                    response.raise_for_status()
                    await response.read()

        async with anyio.create_task_group() as tg:
            for records in by_shard(stream):
                tg.start_soon(shard, records)


async def http_naive_sequential(stream: MemoryStream, url: str) -> None:
    """One loop over every record of every shard, one POST at a time."""
    async with aiohttp.ClientSession() as session:
        for records in by_shard(stream):
            for record in records:
                async with session.post(url, json=to_message(record)) as response:
                    response.raise_for_status()
                    await response.read()


def http_flowstream(batch_size: int) -> Callable[[MemoryStream, str], Awaitable[None]]:
    async def run(stream: MemoryStream, url: str) -> None:
        await run_pipeline(stream, http(url, batch_size=batch_size))

    return run


class HttpBench:
    """Targets on the counting server: its counts, reset before every run."""

    title = "HTTP"

    def __init__(self, server: CountingServer) -> None:
        self.server = server
        self.server_pid = server.pid

    def prepare(self) -> str:
        self.server.reset()
        return f"{self.server.url}/changes"

    def check(self, target: str, expected: int) -> int:
        items, requests = self.server.count()
        if items != expected:
            raise BenchmarkError(
                f"the HTTP server received {items} items where {expected} were sent"
            )
        return requests

    def discard(self, target: str) -> None:
        pass


# -- SQS ------------------------------------------------------------------------------------


@dataclass
class SqsTarget:
    """A fresh queue of moto's, and the session (which counts calls) to reach it with."""

    queue_url: str
    endpoint_url: str
    session: AioSession


async def sqs_naive_per_shard(stream: MemoryStream, target: SqsTarget) -> None:
    """A task per shard, one SendMessage per record, each answered before the next, and
    a connection per shard."""
    async with target.session.create_client(
        "sqs",
        region_name=REGION,
        endpoint_url=target.endpoint_url,
        config=AioConfig(max_pool_connections=SHARDS),
    ) as client:

        async def shard(records: list[fs.Record]) -> None:
            for record in records:
                await client.send_message(
                    QueueUrl=target.queue_url, MessageBody=json.dumps(to_message(record))
                )

        async with anyio.create_task_group() as tg:
            for records in by_shard(stream):
                tg.start_soon(shard, records)


async def sqs_flowstream(stream: MemoryStream, target: SqsTarget) -> None:
    sink = sqs(
        target.queue_url, endpoint_url=target.endpoint_url, region=REGION, session=target.session
    )
    await run_pipeline(stream, sink)


SQS_NOTE = (
    f"SQS: moto {metadata.version('moto')}'s server is the bottleneck (server CPU s is about "
    "the wall time). It costs milliseconds per message, and more the longer the queue (it "
    "computes every queue attribute, walking all messages, for each message sent), so these "
    "rates are moto's and fall as --sqs-records grows: compare requests and client CPU."
)


class SqsBench:
    """A new standard queue per run, counted after the run and deleted."""

    title = "SQS"

    def __init__(self, endpoint_url: str, server_pid: int) -> None:
        self.endpoint_url = endpoint_url
        self.server_pid = server_pid
        self.admin: Any = boto3.client("sqs", endpoint_url=endpoint_url, region_name=REGION)
        self.session = get_session()
        self.session.register("before-send.sqs", self._count_call)
        self.calls = 0
        self._names = itertools.count()

    def _count_call(self, **_: Any) -> None:
        self.calls += 1

    def prepare(self) -> SqsTarget:
        name = f"bench-{os.getpid()}-{next(self._names)}"
        url = str(self.admin.create_queue(QueueName=name)["QueueUrl"])
        self.calls = 0
        return SqsTarget(url, self.endpoint_url, self.session)

    def check(self, target: SqsTarget, expected: int) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = self.admin.get_queue_attributes(QueueUrl=target.queue_url, AttributeNames=names)
        counts = {name: int(found["Attributes"][name]) for name in names}
        if counts[names[0]] != expected or counts[names[1]]:
            raise BenchmarkError(
                f"the SQS queue holds {counts[names[0]]} messages (and {counts[names[1]]} "
                f"in flight) where {expected} were sent"
            )
        return self.calls

    def discard(self, target: SqsTarget) -> None:
        self.admin.delete_queue(QueueUrl=target.queue_url)


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """moto's server, started the way the tests start it (tests/moto_server.py)."""
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))
    from moto_server import MotoServer

    with MotoServer() as server:
        yield server


# -- measuring ------------------------------------------------------------------------------


class Bench(Protocol[T]):
    """A destination's setup around each run: a fresh target, the check afterwards."""

    title: str
    server_pid: int

    def prepare(self) -> T: ...

    def check(self, target: T, expected: int) -> int:
        """Raise `BenchmarkError` unless exactly `expected` items arrived; return the
        requests (or calls) the destination saw."""
        ...

    def discard(self, target: T) -> None: ...


@dataclass
class Case(Generic[T]):
    name: str
    send: Callable[[MemoryStream, T], Awaitable[None]]
    baseline: bool = False


@dataclass
class Result:
    name: str
    baseline: bool
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    requests: int = 0


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, all threads) a process has used so far; NaN where
    /proc cannot tell (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(
    send: Callable[[MemoryStream, T], Awaitable[None]], stream: MemoryStream, target: T
) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run."""
    gc.collect()  # the stream was just built: leave its garbage out of the run
    with anyio.fail_after(RUN_TIMEOUT):
        cpu = time.process_time()
        started = time.perf_counter()
        await send(stream, target)
        return time.perf_counter() - started, time.process_time() - cpu


def measure(bench: Bench[T], cases: Sequence[Case[T]], records: int, runs: int) -> list[Result]:
    results = [Result(case.name, case.baseline) for case in cases]
    for run in range(-1, runs):  # run -1: a small warm-up, not counted
        count = WARMUP_RECORDS if run < 0 else records
        for case, result in zip(cases, results, strict=True):
            stream = make_stream(count)
            target = bench.prepare()
            try:
                server_cpu = process_cpu(bench.server_pid)
                wall, cpu = anyio.run(timed, case.send, stream, target)
                server_cpu = process_cpu(bench.server_pid) - server_cpu
                result.requests = bench.check(target, count)
            except BenchmarkError as exc:
                raise BenchmarkError(f"{bench.title} case {case.name!r}: {exc}") from None
            finally:
                bench.discard(target)
            if run >= 0:
                result.rates.append(count / wall)
                result.cpu.append(cpu)
                result.server_cpu.append(server_cpu)
                print(
                    f"  {bench.title} run {run + 1}/{runs}: {case.name:<56} "
                    f"{count / wall:>9,.0f} records/s",
                    flush=True,
                )
    return results


# -- the table ------------------------------------------------------------------------------

HEADERS = (
    "case",
    "min",
    "median",
    "max",
    "x baseline",
    "client CPU s",
    "µs/record",
    "server CPU s",
    "requests",
)


def rows(results: list[Result], records: int) -> list[tuple[str, ...]]:
    """Records/s min, median, max; the median against the baseline's; the client's CPU
    seconds (median run) and per record; the server's CPU seconds; requests per run."""
    base = statistics.median(next(r for r in results if r.baseline).rates)
    out: list[tuple[str, ...]] = []
    for r in results:
        median = statistics.median(r.rates)
        cpu = statistics.median(r.cpu)
        out.append(
            (
                r.name,
                f"{min(r.rates):,.0f}",
                f"{median:,.0f}",
                f"{max(r.rates):,.0f}",
                f"{median / base:.2f}x",
                f"{cpu:.2f}",
                f"{cpu / records * 1e6:,.0f}",
                f"{statistics.median(r.server_cpu):.2f}",
                f"{r.requests:,}",
            )
        )
    return out


def text_table(title: str, table: list[tuple[str, ...]]) -> str:
    width = max(len(HEADERS[0]), *(len(row[0]) for row in table))
    cells = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(HEADERS)]
    lines = [title]
    for row in (HEADERS, *table):
        lines.append(
            f"{row[0]:<{width}}  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(row[1:], cells[1:], strict=True))
        )
    return "\n".join(lines)


def markdown_table(title: str, table: list[tuple[str, ...]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(HEADERS) + " |"]
    lines.append("|---|" + "---:|" * (len(HEADERS) - 1))
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: the servers are stopped on the way out


def run_http(records: int, runs: int) -> list[Result]:
    cases: list[Case[str]] = [
        Case(
            "naive: POST per record, task per shard (baseline)", http_naive_per_shard, baseline=True
        ),
        Case("naive: POST per record, one loop", http_naive_sequential),
        Case("flowstream sinks.http(batch_size=1)", http_flowstream(1)),
        Case("flowstream sinks.http(batch_size=100)", http_flowstream(100)),
    ]
    with CountingServer() as server:
        return measure(HttpBench(server), cases, records, runs)


def run_sqs(records: int, runs: int) -> list[Result]:
    cases: list[Case[SqsTarget]] = [
        Case(
            "naive: SendMessage per record, task per shard (baseline)",
            sqs_naive_per_shard,
            baseline=True,
        ),
        Case("flowstream sinks.sqs() (SendMessageBatch of 10)", sqs_flowstream),
    ]
    with moto_server() as server:
        assert server._process is not None  # running: MotoServer has no public pid
        return measure(SqsBench(server.url, server._process.pid), cases, records, runs)


def sections(*, quick: bool = False) -> list[Section]:
    """The sink tables for `run_all.py`: HTTP against naive loops, and SQS on moto."""
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    records, sqs_records, runs = (4_000, 120, 2) if quick else (16_000, 320, 3)
    command = "python3 benchmarks/bench_sinks.py"
    http = rows(run_http(records, runs), records)
    sqs = rows(run_sqs(sqs_records, runs), sqs_records)
    return [
        Section(
            f"Sinks: HTTP, {records:,} records into a counting server (own process)",
            HEADERS,
            http,
            command,
            [f"{SHARDS} shards, median of {runs} runs; CPU seconds of the client process."],
        ),
        Section(
            f"Sinks: SQS, {sqs_records:,} records into a standard queue on moto's server",
            HEADERS,
            sqs,
            command,
            [SQS_NOTE],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=16_000, help="records for HTTP")
    parser.add_argument("--sqs-records", type=int, default=320, help="records for SQS")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sink", choices=["all", "http", "sqs"], default="all")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    if args.records < 1 or args.sqs_records < 1 or args.runs < 1:
        parser.error("--records, --sqs-records and --runs must be at least 1")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # moto takes any credentials; these never leave this machine.
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)

    load = os.getloadavg()[0]
    print(f"1-minute load average before: {load:.2f}\n", flush=True)
    tables: list[tuple[str, list[tuple[str, ...]]]] = []
    notes: list[str] = []
    if args.sink in ("all", "http"):
        results = run_http(args.records, args.runs)
        title = (
            f"HTTP: {args.records:,} records into a counting aiohttp server "
            "(own process), requests as it counted them"
        )
        tables.append((title, rows(results, args.records)))
    if args.sink in ("all", "sqs"):
        results = run_sqs(args.sqs_records, args.runs)
        title = (
            f"SQS: {args.sqs_records:,} records into a standard queue of moto's server, "
            "API calls as the client made them (flowstream's: one GetQueueAttributes at open)"
        )
        tables.append((title, rows(results, args.sqs_records)))
        notes.append(SQS_NOTE)

    # Other processes that share the CPUs with the client and the servers move every rate:
    # the load average says whether there were any.
    setup = (
        f"{SHARDS} shards, {args.runs} runs (median), Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, gc on, 1-minute load average {load:.2f} before and "
        f"{os.getloadavg()[0]:.2f} after; records/s by wall clock; CPU seconds of the "
        "client process and of the server's"
    )
    print(f"\n{setup}\n")
    print("\n\n".join(text_table(title, table) for title, table in tables))
    for note in notes:
        print(f"\n{note}")
    if args.markdown is not None:
        text = "\n\n".join([*(markdown_table(title, table) for title, table in tables), *notes])
        args.markdown.write_text(f"{setup}.\n\n{text}\n")
        print(f"\nwritten to {args.markdown}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BenchmarkError as exc:
        sys.exit(f"bench_sinks: {exc}")
