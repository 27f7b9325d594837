"""End to end through real HTTP: a DynamoDB stream of 64 shards read by flowstream, by a
naive aiobotocore loop and by a naive boto3 loop.

    python benchmarks/bench_e2e.py [--pages-per-shard N] [--runs N] [--quick]
                                   [--profile {pyinstrument,cprofile}]
                                   [--profile-case {keys,images}]

The stream is served by `LocalStreamsServer` in a process of its own (its CPU is not
the client's; it is reported apart) from realistic GetRecords pages (pages.py: about
500 records and 1 MB a page), loaded pre-encoded so that serving a page joins bytes.
Every shard is closed: its pages are finite and every case reads every record of every
shard, from its trim horizon to its end, over HTTP, each request signed (SigV4) by
botocore. After every run the benchmark checks what was read per shard and what was
kept, and stops with an error if it is not exactly what the server holds.

Every case does the same work with each record: keep MODIFY and REMOVE, turn each kept
record into ``{"key": pk, "op": event}``, count it.

- naive aiobotocore: a task per shard; GetRecords, parsed by botocore; every record's
  keys and images through boto3's ``TypeDeserializer``; one ``await`` per record.
- naive boto3: the same with boto3, one thread per shard.
- flowstream: ``sources.dynamodb(stream_arn=, endpoint_url=)`` ->
  ``.filter(events=["MODIFY", "REMOVE"])`` -> ``.map()`` -> ``sinks.callback`` that
  counts, ``run(drain=True)``; images are never decoded, as nothing reads them.
- flowstream, all images: ``.map()`` reads ``new_image`` and ``old_image`` of every
  record before the filter, as the naive loops do.

Records per second by wall clock from client creation to the last record; CPU seconds
per million records of the client process (all its threads); garbage collector on.
flowstream polls with ``max_polls_per_second=1000`` (the default 5 would cap 64 shards
of ~500-record pages at ~160,000 records/s, and the pacing, not the client, would be
measured).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import boto3
import botocore.config
import msgspec
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from boto3.dynamodb.types import TypeDeserializer
from child import Child
from report import Section, machine

import flowstream as fs
from flowstream import sinks, sources
from flowstream.sources.dynamodb import DynamoDBSource

SHARDS = 64
REGION = "us-east-1"
KEPT = frozenset({"MODIFY", "REMOVE"})
MAX_POLLS_PER_SECOND = 1000.0
FLOWSTREAM_REPEAT = 3
STARTUP_TIMEOUT = 120.0
#: No run may take longer (a stuck case must fail the benchmark, not hang it).
RUN_TIMEOUT = 600.0
COMMAND = "python3 benchmarks/bench_e2e.py"

# One session each, as a program has: botocore loads the service model once.
AIO_SESSION = get_session()
BOTO3_SESSION = boto3.session.Session()


class BenchmarkError(Exception):
    """A case did not read exactly what the server holds: its rate would mean nothing."""


# -- the server (its own process) ---------------------------------------------------------


class Served(msgspec.Struct):
    """What the server process says about itself on its first line of output."""

    endpoint_url: str
    stream_arn: str
    #: records per shard, in shard order
    records: dict[str, int]
    #: MODIFY and REMOVE records in the whole stream
    kept: int

    @property
    def total(self) -> int:
        return sum(self.records.values())


async def serve(pages_per_shard: int) -> None:
    """Serve `SHARDS` closed shards of `pages_per_shard` pages each until stdin closes."""
    from pages import make_pages

    from flowstream.testing import LocalStreamsServer, MemoryStream

    stream = MemoryStream(table="Bench")
    shard_ids = [stream.add_shard() for _ in range(SHARDS)]
    pages = make_pages(SHARDS * pages_per_shard)
    async with LocalStreamsServer(stream) as server:
        for n, shard_id in enumerate(shard_ids):
            # pages n, n + SHARDS, ...: sequence numbers rise within the shard
            server.load_pages(shard_id, pages[n::SHARDS])
            stream.close(shard_id)
        del pages
        records = stream.records()
        served = Served(
            server.endpoint_url,
            server.stream_arn,
            {shard_id: len(stream.records(shard_id)) for shard_id in shard_ids},
            sum(r.event_name in KEPT for r in records),
        )
        del records
        gc.collect()
        gc.freeze()  # the loaded records are never garbage: keep the collector off them
        sys.stdout.buffer.write(msgspec.json.encode(served) + b"\n")
        sys.stdout.flush()
        # stdin reaches EOF when the parent closes it or dies: then stop.
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)


class ServerProcess:
    """The server as a subprocess: use as a context manager."""

    def __init__(self, pages_per_shard: int) -> None:
        self.pages_per_shard = pages_per_shard
        self._child: Child | None = None
        self.served: Served | None = None

    @property
    def pid(self) -> int:
        assert self._child is not None, "start the server first"
        return self._child.pid

    def __enter__(self) -> Served:
        self._child = Child(__file__, "--serve", str(self.pages_per_shard))
        line = self._child.first_line(STARTUP_TIMEOUT)
        try:
            self.served = msgspec.json.decode(line, type=Served)
        except msgspec.DecodeError:
            self.__exit__()
            raise BenchmarkError(f"the stream server did not start (it printed {line!r})") from None
        return self.served

    def __exit__(self, *exc_info: object) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, all threads) a process has used so far; NaN where
    /proc cannot tell (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the cases ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a case read: records per shard, and records kept by the filter."""

    read: Counter[str] = field(default_factory=Counter)
    kept: int = 0


def message(pk: Any, event: str) -> dict[str, Any]:
    """What every case makes of a kept record."""
    return {"key": pk, "op": event}


def _change(item: dict[str, Any], deserialize: Callable[[Any], Any]) -> dict[str, Any]:
    """A botocore-parsed stream record with its keys and images as Python values, as a
    boto3 user makes it."""
    data = item["dynamodb"]
    new, old = data.get("NewImage"), data.get("OldImage")
    return {
        "event": item["eventName"],
        "sequence_number": data["SequenceNumber"],
        "keys": {k: deserialize(v) for k, v in data["Keys"].items()},
        "new": None if new is None else {k: deserialize(v) for k, v in new.items()},
        "old": None if old is None else {k: deserialize(v) for k, v in old.items()},
    }


async def naive_aiobotocore(served: Served) -> Tally:
    """A task per shard: GetRecords until the shard ends, each record deserialized and
    handed to an async handler."""
    tally = Tally()
    deserialize = TypeDeserializer().deserialize
    config = AioConfig(max_pool_connections=SHARDS)
    async with AIO_SESSION.create_client(
        "dynamodbstreams", region_name=REGION, endpoint_url=served.endpoint_url, config=config
    ) as client:

        async def handle(change: dict[str, Any]) -> None:
            if change["event"] in KEPT:
                message(change["keys"]["pk"], change["event"])
                tally.kept += 1

        async def read(shard_id: str) -> None:
            iterator = (
                await client.get_shard_iterator(
                    StreamArn=served.stream_arn,
                    ShardId=shard_id,
                    ShardIteratorType="TRIM_HORIZON",
                )
            )["ShardIterator"]
            while iterator:
                response = await client.get_records(ShardIterator=iterator, Limit=1000)
                for item in response["Records"]:
                    await handle(_change(item, deserialize))
                tally.read[shard_id] += len(response["Records"])
                iterator = response.get("NextShardIterator")

        shard_ids = await _list_shards_async(client, served.stream_arn)
        async with anyio.create_task_group() as tg:
            for shard_id in shard_ids:
                tg.start_soon(read, shard_id)
    return tally


async def _list_shards_async(client: Any, stream_arn: str) -> list[str]:
    shard_ids: list[str] = []
    params: dict[str, Any] = {"StreamArn": stream_arn}
    while True:
        description = (await client.describe_stream(**params))["StreamDescription"]
        shard_ids += [shard["ShardId"] for shard in description["Shards"]]
        if not description.get("LastEvaluatedShardId"):
            return shard_ids
        params["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]


def naive_boto3(served: Served) -> Tally:
    """A thread per shard: the same loop with boto3."""
    tally = Tally()
    deserialize = TypeDeserializer().deserialize
    client = BOTO3_SESSION.client(
        "dynamodbstreams",
        region_name=REGION,
        endpoint_url=served.endpoint_url,
        config=botocore.config.Config(max_pool_connections=SHARDS),
    )

    def read_shard(shard_id: str) -> tuple[int, int]:
        read = kept = 0
        iterator = client.get_shard_iterator(
            StreamArn=served.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=1000)
            for item in response["Records"]:
                change = _change(item, deserialize)
                if change["event"] in KEPT:
                    message(change["keys"]["pk"], change["event"])
                    kept += 1
            read += len(response["Records"])
            iterator = response.get("NextShardIterator")
        return read, kept

    shard_ids: list[str] = []
    params: dict[str, Any] = {"StreamArn": served.stream_arn}
    while True:
        description = client.describe_stream(**params)["StreamDescription"]
        shard_ids += [shard["ShardId"] for shard in description["Shards"]]
        if not description.get("LastEvaluatedShardId"):
            break
        params["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]
    with ThreadPoolExecutor(max_workers=len(shard_ids)) as pool:
        counts = pool.map(read_shard, shard_ids)
        for shard_id, (read, kept) in zip(shard_ids, counts, strict=True):
            tally.read[shard_id] += read
            tally.kept += kept
    client.close()
    return tally


def _source(served: Served) -> DynamoDBSource:
    return sources.dynamodb(
        stream_arn=served.stream_arn,
        endpoint_url=served.endpoint_url,
        region=REGION,
        session=AIO_SESSION,
        max_polls_per_second=MAX_POLLS_PER_SECOND,
        max_connections=SHARDS,
    )


async def _run_counted(pipeline: fs.Pipeline[Any]) -> Tally:
    kept = 0

    def count(values: list[Any]) -> None:
        nonlocal kept
        kept += len(values)

    report = await pipeline.to(sinks.callback(count)).run(drain=True)
    if report.failed or report.dropped:
        raise BenchmarkError(f"the pipeline did not deliver every record:\n{report.summary()}")
    return Tally(Counter({s: shard.read for s, shard in report.shards.items()}), kept)


async def flowstream_keys(served: Served) -> Tally:
    """The pipeline as it would be written: the filter first, images never decoded."""
    pipeline = (
        fs.Pipeline(_source(served), name="bench-e2e")
        .filter(events=["MODIFY", "REMOVE"])
        .map(lambda r: message(r.keys["pk"], r.event_name))
    )
    return await _run_counted(pipeline)


def _with_images(record: fs.Record) -> dict[str, Any]:
    new, old = record.new_image, record.old_image
    return {**message(record.keys["pk"], record.event_name), "new": new, "old": old}


async def flowstream_images(served: Served) -> Tally:
    """Every record's images decoded before the filter, as the naive loops do."""
    pipeline = (
        fs.Pipeline(_source(served), name="bench-e2e-images")
        .map(_with_images)
        .filter(events=["MODIFY", "REMOVE"])
    )
    return await _run_counted(pipeline)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[[Served], Awaitable[Tally] | Tally]
    #: runs per round: flowstream's are short, so it takes more of them
    repeat: int = 1
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)


def cases() -> list[Case]:
    return [
        Case("naive aiobotocore: task per shard, per-record await", naive_aiobotocore),
        Case("naive boto3: thread per shard", naive_boto3),
        Case("flowstream: filter -> map -> count", flowstream_keys, repeat=FLOWSTREAM_REPEAT),
        Case(
            "flowstream: all images decoded -> filter -> count",
            flowstream_images,
            repeat=FLOWSTREAM_REPEAT,
        ),
    ]


def run_case(case: Case, served: Served) -> tuple[float, float, Tally]:
    """Wall-clock and CPU seconds of one run of `case`, and what it read."""

    async def timed(run: Awaitable[Tally]) -> Tally:
        with anyio.fail_after(RUN_TIMEOUT):
            return await run

    gc.collect()
    cpu = time.process_time()
    started = time.perf_counter()
    result = case.run(served)  # the naive boto3 loop runs here; the others are coroutines
    tally = result if isinstance(result, Tally) else anyio.run(timed, result)
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu, tally


def check(case: Case, tally: Tally, served: Served) -> None:
    if dict(tally.read) != served.records or tally.kept != served.kept:
        wrong = {s: (tally.read[s], n) for s, n in served.records.items() if tally.read[s] != n}
        raise BenchmarkError(
            f"{case.name!r} read {sum(tally.read.values())} records and kept {tally.kept} "
            f"where the stream holds {served.total} and {served.kept} MODIFY/REMOVE; "
            f"(read, expected) by shard where they differ: {wrong}"
        )


def warm_up(served: Served) -> None:
    """Load the service models and resolve the endpoint once, as a running program has."""

    async def aio() -> None:
        async with AIO_SESSION.create_client(
            "dynamodbstreams", region_name=REGION, endpoint_url=served.endpoint_url
        ) as client:
            await client.describe_stream(StreamArn=served.stream_arn, Limit=1)

    anyio.run(aio)
    client = BOTO3_SESSION.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=served.endpoint_url
    )
    client.describe_stream(StreamArn=served.stream_arn, Limit=1)
    client.close()


def measure(pages_per_shard: int, runs: int, *, verbose: bool = True) -> tuple[list[Case], Served]:
    """`runs` rounds; in each, every case reads the whole stream `case.repeat` times."""
    _fake_credentials()
    all_cases = cases()
    server = ServerProcess(pages_per_shard)
    with server as served:
        warm_up(served)
        for run in range(runs):
            for case in all_cases:
                for _ in range(case.repeat):
                    before = process_cpu(server.pid)
                    wall, cpu, tally = run_case(case, served)
                    server_cpu = process_cpu(server.pid) - before
                    check(case, tally, served)
                    case.rates.append(served.total / wall)
                    case.cpu.append(cpu)
                    case.server_cpu.append(server_cpu)
                    if verbose:
                        print(
                            f"  round {run + 1}/{runs}: {case.name:<52} "
                            f"{served.total / wall:>9,.0f} records/s, CPU {cpu:.2f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    return all_cases, served


def _fake_credentials() -> None:
    # The local server takes any credentials; these never leave this machine.
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


HEADER = (
    "case",
    "records/s min",
    "median",
    "max",
    "x aiobotocore",
    "x boto3",
    "client CPU s/Mrec",
    "CPU x less than aiobotocore",
    "than boto3",
    "server CPU s/Mrec",
)


def rows(all_cases: Sequence[Case], records: int) -> list[tuple[str, ...]]:
    """Records/s min, median, max and the median against the naive loops'; client CPU
    seconds per million records (median) and how many times less the naive loops
    need; the server's CPU seconds per million records."""
    per_m = 1e6 / records
    aio, boto = all_cases[0], all_cases[1]
    aio_rate, boto_rate = statistics.median(aio.rates), statistics.median(boto.rates)
    aio_cpu, boto_cpu = statistics.median(aio.cpu), statistics.median(boto.cpu)
    out: list[tuple[str, ...]] = []
    for case in all_cases:
        rate, cpu = statistics.median(case.rates), statistics.median(case.cpu)
        out.append(
            (
                case.name,
                f"{min(case.rates):,.0f}",
                f"{rate:,.0f}",
                f"{max(case.rates):,.0f}",
                f"{rate / aio_rate:.1f}x",
                f"{rate / boto_rate:.1f}x",
                f"{cpu * per_m:,.1f}",
                f"{aio_cpu / cpu:.1f}x",
                f"{boto_cpu / cpu:.1f}x",
                f"{statistics.median(case.server_cpu) * per_m:,.1f}",
            )
        )
    return out


def sections(*, quick: bool = False) -> list[Section]:
    """The end-to-end table: 1 page per shard and 1 run when `quick`, else 2 and 3."""
    pages_per_shard, runs = (1, 1) if quick else (2, 3)
    return [_section(pages_per_shard, runs)]


def _section(pages_per_shard: int, runs: int) -> Section:
    load = os.getloadavg()[0]
    all_cases, served = measure(pages_per_shard, runs)
    command = f"{COMMAND} --pages-per-shard {pages_per_shard} --runs {runs}"
    return Section(
        title=(
            f"End to end through real HTTP: {SHARDS} shards, {served.total:,} records "
            f"({pages_per_shard} page(s) of ~1 MB per shard)"
        ),
        header=HEADER,
        rows=rows(all_cases, served.total),
        command=command,
        notes=[
            "LocalStreamsServer in its own process serves pre-encoded pages (pages.py); "
            "every request is signed by botocore and goes over HTTP on 127.0.0.1. Every "
            "shard is closed and read from its trim horizon to its end; each run is "
            "checked to have read exactly the records served, per shard.",
            "Every case keeps MODIFY and REMOVE and maps each to {key, op}; the naive "
            "loops and the all-images case decode every key and image (botocore's parser "
            "and boto3's TypeDeserializer in the naive loops), the first flowstream case "
            "decodes keys only, because nothing reads the images.",
            f"Records/s by wall clock, median of {runs} round(s): in each, the naive loops "
            f"read the stream once and each flowstream case {FLOWSTREAM_REPEAT} times (its "
            "runs are short). CPU is the client process's (all threads), median; the "
            "server's is measured apart (not subtracted: it never ran in the client "
            "process); garbage collector on. flowstream with "
            f"max_polls_per_second={MAX_POLLS_PER_SECOND:g} so that pacing is not what is "
            "measured; 1-minute load average "
            f"{load:.2f} before and {os.getloadavg()[0]:.2f} after.",
        ],
    )


def profile(pages_per_shard: int, tool: str, which: str) -> None:
    """Run a flowstream case once under a profiler and print where its time goes."""
    _fake_credentials()
    with ServerProcess(pages_per_shard) as served:
        warm_up(served)
        case = cases()[2 if which == "keys" else 3]
        if tool == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
            _, _, tally = run_case(case, served)
            profiler.stop()
            check(case, tally, served)
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        else:
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                _, _, tally = run_case(case, served)
            check(case, tally, served)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages-per-shard", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 page per shard, 1 run")
    parser.add_argument(
        "--profile",
        choices=["pyinstrument", "cprofile"],
        help="profile one run of a flowstream case instead",
    )
    parser.add_argument(
        "--profile-case",
        choices=["keys", "images"],
        default="keys",
        help="the case to profile: filter -> map (default), or all images decoded",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        anyio.run(serve, args.serve)
        return
    if args.pages_per_shard < 1 or args.runs < 1:
        parser.error("--pages-per-shard and --runs must be at least 1")
    if args.profile:
        profile(args.pages_per_shard, args.profile, args.profile_case)
        return
    if args.quick:
        args.pages_per_shard, args.runs = 1, 1
    section = _section(args.pages_per_shard, args.runs)
    print(f"\nMeasured: {machine()}.\n")
    print(section.text())
    print()
    print(f"`{section.command}`")
    for note in section.notes:
        print(f"- {note}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BenchmarkError as exc:
        sys.exit(f"bench_e2e: {exc}")
