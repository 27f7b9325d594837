"""Slow sinks (issue 16): per-key concurrency inside a shard against a webhook that takes
50 ms per request, and batching windows for an SQS sink on a slow trickle.

    python3 benchmarks/bench_concurrency.py [--quick] [--runs N] [--records N]
                                            [--baseline-records N] [--trickle-records N]
                                            [--part {all,http,sqs}]

HTTP: `sinks.http(url)` (one item per request) into slow_server.py, a process of its own
that answers every request after 50 ms and logs each item's shard, key and sequence
number in arrival order. 4 shards of records over 100 keys each (random, seeded), put in
a MemoryStream before the clock starts and read through LocalStreamsServer with
`sources.dynamodb` and `run(drain=True)`, at `.concurrency(per_shard)` 1, 2, 5, 10 and 20.
After every run the server's log must hold each record exactly once, each key's records
in their shard order, never two requests of one key at once; otherwise the benchmark
stops with an error.

SQS: `sinks.sqs(queue_url)` into moto's server (a subprocess), one shard fed a record
at a fixed pace while the pipeline runs, without a window and with `.batching(max_window=)`
0.5 and 1.0 s; SendMessageBatch calls counted in the client, latency from just before the
record's put() to the message's SentTimestamp on moto (one clock: the same machine). A
trickle of 50 records/s is read in process (MemoryStream, each record its own page: what
a push source gives) and through LocalStreamsServer (`sources.dynamodb`, polled at most 5
times a second, so its pages already hold ~10 records); one of 5 records/s through
LocalStreamsServer (a record a poll, or none).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import boto3
from aiobotocore.session import get_session
from bench_sinks import BenchmarkError, moto_server, process_cpu
from report import Section
from slow_server import ServerLog, SlowServer

import flowstream as fs
from flowstream import sinks, sources
from flowstream.testing import LocalStreamsServer, MemoryStream

COMMAND = "python3 benchmarks/bench_concurrency.py"
REGION = "us-east-1"
SHARDS = 4
KEYS = 100  # per shard
RECORDS = 1_000  # per shard
#: per_shard=1 runs at ~20 records/s a shard: it is measured on fewer records.
BASELINE_RECORDS = 200
DELAY = 0.05  # the server's seconds per request
LEVELS = (1, 2, 5, 10, 20)
#: the issue's Done-when: per_shard=10 at least this many times per_shard=1
TARGET_SPEEDUP = 5.0
#: (source, seconds between two records, share of --trickle-records): 50 records/s for
#: 10 s in process and through LocalStreamsServer, and 5 records/s, slower than the
#: polled source's 5 GetRecords a second, for 20 s
TRICKLES = (("memory", 0.02, 1.0), ("dynamodb", 0.02, 1.0), ("dynamodb", 0.2, 0.2))
TRICKLE_RECORDS = 500
WINDOWS = (0.0, 0.5, 1.0)
#: No run may take longer (a stuck sink must fail the benchmark, not hang it).
RUN_TIMEOUT = 300.0


# -- HTTP: per-key concurrency --------------------------------------------------------------


def to_item(record: fs.Record) -> dict[str, Any]:
    """What the webhook gets: the change's shard (the benchmark's number), key and
    sequence number."""
    return {
        "shard": record.new_value("shard"),
        "key": record.keys["pk"],
        "seq": record.sequence_number,
    }


def fill(records: int, seed: int) -> tuple[MemoryStream, dict[tuple[str, str], list[int]]]:
    """`records` changes on each of `SHARDS` shards over `KEYS` keys a shard, chosen at
    random; and each (shard, key)'s sequence numbers in order."""
    rng = random.Random(seed)
    stream = MemoryStream(table="Concurrency")
    expected: dict[tuple[str, str], list[int]] = {}
    for s in range(SHARDS):
        shard = stream.add_shard()
        for _ in range(records):
            key = f"s{s}-k{rng.randrange(KEYS):03d}"
            new = {"pk": key, "shard": str(s), "payload": "x" * 100}
            record = stream.put(shard, "MODIFY", {"pk": key}, new, {"pk": key})
            expected.setdefault((str(s), key), []).append(int(record.sequence_number))
    return stream, expected


def schedule_bound(expected: dict[tuple[str, str], list[int]], per_shard: int) -> float:
    """Seconds the slowest shard needs if every request took exactly `DELAY` and nothing
    else cost time: each key's records one after another (a group), groups started in
    the order of their first record, `per_shard` at a time, as flowstream does with one
    page a shard (LocalStreamsServer's pages hold 1,000 records)."""
    longest = 0.0
    for s in range(SHARDS):
        groups = sorted(
            (seqs for (shard, _), seqs in expected.items() if shard == str(s)),
            key=lambda seqs: seqs[0],
        )
        lanes = [0.0] * per_shard
        for seqs in groups:
            start = heapq.heappop(lanes)
            heapq.heappush(lanes, start + len(seqs) * DELAY)
        longest = max(longest, max(lanes))
    return longest


@dataclass
class HttpRun:
    wall: float  # seconds, the whole run(drain=True)
    cpu: float  # the client process's CPU seconds
    server_cpu: float
    log: ServerLog

    @property
    def span(self) -> float:
        """From the first request's arrival to the last one's answer, by the server."""
        return max(e[4] for e in self.log.entries) - min(e[3] for e in self.log.entries)

    @property
    def mean_in_flight(self) -> float:
        """Requests being answered at once, on average over the span."""
        return sum(e[4] - e[3] for e in self.log.entries) / self.span


def check(log: ServerLog, expected: dict[tuple[str, str], list[int]], per_shard: int) -> None:
    """Raise `BenchmarkError` unless the server got every record once, each key's in
    order, never two of a key at once."""
    total = sum(len(seqs) for seqs in expected.values())
    arrived: dict[tuple[str, str], list[int]] = {}
    for shard, key, seq, _, _ in log.entries:
        arrived.setdefault((shard, key), []).append(seq)
    problems = []
    if len(log.entries) != total or log.requests != total:
        problems.append(
            f"{len(log.entries)} items in {log.requests} requests arrived where {total} "
            "records were put"
        )
    lost = {k: set(v) - set(arrived.get(k, [])) for k, v in expected.items()}
    lost = {k: v for k, v in lost.items() if v}
    if lost:
        problems.append(f"{sum(map(len, lost.values()))} records lost, e.g. {next(iter(lost))}")
    extra = set(arrived) - set(expected)
    if extra:
        problems.append(f"items of keys never put arrived: {sorted(extra)[:3]}")
    disordered = [k for k, seqs in expected.items() if arrived.get(k) != seqs and k not in lost]
    if disordered:
        k = disordered[0]
        problems.append(
            f"{len(disordered)} keys out of order or duplicated, e.g. {k}: put "
            f"{expected[k]}, arrived {arrived.get(k)}"
        )
    if log.overlaps:
        problems.append(f"{log.overlaps} requests arrived while one of the same key was open")
    if log.peak > SHARDS * per_shard:
        problems.append(f"{log.peak} requests at once, more than {SHARDS} x {per_shard}")
    if problems:
        raise BenchmarkError(f"per_shard={per_shard}: " + "; ".join(problems))


async def http_run(
    server: SlowServer, stream: MemoryStream, per_shard: int, records: int
) -> tuple[float, float]:
    """One drained run: wall and CPU seconds."""
    async with LocalStreamsServer(stream) as streams:
        source = sources.dynamodb(
            stream_arn=streams.stream_arn, endpoint_url=streams.endpoint_url, region=REGION
        )
        pipeline = (
            fs.Pipeline(source, name="concurrency")
            .map(to_item)
            .to(sinks.http(f"{server.url}/hook", batch_size=1))
            .concurrency(per_shard)
        )
        with anyio.fail_after(RUN_TIMEOUT):
            cpu = time.process_time()
            started = time.perf_counter()
            report = await pipeline.run(drain=True)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    total = SHARDS * records
    if report.delivered != total or report.failed or report.retries:
        raise BenchmarkError(
            f"per_shard={per_shard} did not deliver every record at the first attempt "
            f"({report.retries} retries):\n{report.summary()}"
        )
    return wall, cpu


def measure_http(server: SlowServer, per_shard: int, records: int, seed: int) -> HttpRun:
    stream, expected = fill(records, seed)
    server.reset()
    server_cpu = process_cpu(server.pid)
    wall, cpu = anyio.run(http_run, server, stream, per_shard, records)
    server_cpu = process_cpu(server.pid) - server_cpu
    log = server.log()
    check(log, expected, per_shard)
    return HttpRun(wall, cpu, server_cpu, log)


@dataclass
class Level:
    per_shard: int
    records: int  # per shard
    bound: float  # schedule_bound(), seconds
    runs: list[HttpRun] = field(default_factory=list)

    @property
    def total(self) -> int:
        return SHARDS * self.records

    def rates(self) -> list[float]:
        return [self.total / r.wall for r in self.runs]

    def rate(self) -> float:
        return statistics.median(self.rates())


def run_http(runs: int, records: int, baseline_records: int, seed: int = 16) -> list[Level]:
    levels = [
        Level(
            p,
            n := baseline_records if p == 1 else records,
            schedule_bound(fill(n, seed)[1], p),
        )
        for p in LEVELS
    ]
    with SlowServer(DELAY) as server:
        measure_http(server, LEVELS[-1], 20, seed)  # warm-up, not counted
        for run in range(runs):  # the levels take turns within each run
            for level in levels:
                result = measure_http(server, level.per_shard, level.records, seed)
                level.runs.append(result)
                print(
                    f"  HTTP run {run + 1}/{runs}: per_shard={level.per_shard:<3} "
                    f"{level.total / result.wall:>7,.0f} records/s, {result.log.peak} at once "
                    f"at most, {result.mean_in_flight:.1f} on average",
                    flush=True,
                )
    return levels


HTTP_HEADER = (
    "per_shard",
    "records",
    "records/s min",
    "median",
    "max",
    "x per_shard=1",
    "schedule bound",
    "in flight: mean / peak / ideal",
    "client CPU s",
    "order, lost",
)


def http_rows(levels: list[Level]) -> list[tuple[str, ...]]:
    base = levels[0].rate()
    out: list[tuple[str, ...]] = []
    for level in levels:
        rates = level.rates()
        mid = statistics.median(range(len(level.runs)))
        run = sorted(level.runs, key=lambda r: r.wall)[int(mid)]  # the median run
        out.append(
            (
                str(level.per_shard),
                f"{SHARDS} x {level.records:,}",
                f"{min(rates):,.0f}",
                f"{statistics.median(rates):,.0f}",
                f"{max(rates):,.0f}",
                f"{statistics.median(rates) / base:.1f}x",
                f"{level.total / level.bound:,.0f}",
                f"{run.mean_in_flight:.1f} / {run.log.peak} / {SHARDS * level.per_shard}",
                f"{run.cpu:.2f}",
                "kept, 0",
            )
        )
    return out


def http_notes(levels: list[Level], runs: int) -> list[str]:
    base = levels[0]
    ten = next((x for x in levels if x.per_shard == 10), None)
    notes = [
        f"`sinks.http(url)` (one item per request) into a server in its own process that "
        f"answers each request after {DELAY * 1000:.0f} ms; {SHARDS} shards, {KEYS} keys a "
        "shard (random, seeded: the same records at every level), read through "
        "LocalStreamsServer with `sources.dynamodb` and `run(drain=True)`. Records/s by "
        f"wall clock over the whole run (opening the source and the sink included), "
        f"{runs} run(s), the levels taking turns.",
        f"per_shard=1 is measured on {base.records:,} records a shard (at ~{1 / DELAY:.0f} "
        "records/s a shard it would take a minute on 1,000); its rate does not depend on "
        "the count.",
        "Checked after every run from the server's log: every record arrived exactly once, "
        "each key's records in their shard order, never two requests of one key open at "
        "once, never more than shards x per_shard at once.",
        "schedule bound: the records/s if every request took exactly "
        f"{DELAY * 1000:.0f} ms and nothing else cost anything, each key's records one "
        "after another and its groups started in order, per_shard at once (the limit the "
        "keys set; per_shard=1: one at a time). in flight: requests the server was "
        "answering at once, mean over the run's span and peak, of the ideal shards x "
        "per_shard (median run).",
    ]
    per_request = SHARDS / base.rate()
    top = levels[-1]
    notes.append(
        f"At per_shard=1 a request takes {per_request * 1000:.1f} ms end to end, "
        f"{(per_request - DELAY) * 1000:.1f} ms over the server's {DELAY * 1000:.0f} ms "
        f"(HTTP, the client, the run's start and end). At per_shard={top.per_shard} the keys "
        f"allow {top.total / top.bound:,.0f} records/s of the ideal "
        f"{SHARDS * top.per_shard / DELAY:,.0f} (a shard's last groups run with lanes idle) "
        f"and {top.rate():,.0f} were reached."
    )
    if ten is not None:
        speedup = ten.rate() / base.rate()
        met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        notes.append(
            f"Done-when of issue 16, per_shard=10 at least {TARGET_SPEEDUP:g}x per_shard=1: "
            f"{met} ({speedup:.1f}x)."
        )
    return notes


# -- SQS: batching windows on a trickle -----------------------------------------------------


@dataclass
class Trickle:
    source: str  # "memory" or "dynamodb"
    interval: float  # seconds between two records
    window: float
    records: int = 0
    calls: int = 0  # SendMessageBatch
    call_seconds: float = 0.0  # their time, in all
    sends: int = 0  # the sink's send() calls (SinkReport.batches)
    latencies: list[float] = field(default_factory=list)  # put -> SentTimestamp, seconds


class SqsCalls:
    """Counts SendMessageBatch calls, the messages they delivered and the seconds they
    took, from the client."""

    def __init__(self) -> None:
        self.session = get_session()
        self.session.register("before-call.sqs.SendMessageBatch", self._called)
        self.session.register("before-send.sqs.SendMessageBatch", self._sent)
        self.session.register("after-call.sqs.SendMessageBatch", self._answered)
        self.calls = 0
        self.delivered = 0
        self.seconds = 0.0
        #: set once `expected` messages are delivered (made in the run's event loop)
        self.all_in: anyio.Event | None = None
        self.expected = 0

    def _called(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_started"] = time.perf_counter()

    def _sent(self, **_: Any) -> None:
        self.calls += 1

    def _answered(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        self.delivered += len(parsed.get("Successful", []))
        self.seconds += time.perf_counter() - context.pop("bench_started")
        if self.all_in is not None and self.delivered >= self.expected:
            self.all_in.set()


async def trickle_run(
    trickle: Trickle, queue_url: str, endpoint_url: str, count: SqsCalls, total: int
) -> dict[int, float]:
    """Run the pipeline while putting `total` records, one every `trickle.interval`; stop
    once all are delivered. Each record's put time by sequence number."""
    stream = MemoryStream(table="Trickle")
    shard = stream.add_shard()
    created: dict[int, float] = {}
    stop = anyio.Event()
    reports: list[fs.RunReport] = []
    all_in = count.all_in = anyio.Event()
    count.expected = total

    async def run(source: Any) -> None:
        pipeline = (
            fs.Pipeline(source, name="trickle")
            .map(to_item)
            .to(
                sinks.sqs(
                    queue_url, endpoint_url=endpoint_url, region=REGION, session=count.session
                )
            )
        )
        if trickle.window:
            pipeline = pipeline.batching(max_window=trickle.window)
        reports.append(await pipeline.run(stop=stop))

    async def feed() -> None:
        await anyio.sleep(1.0)  # the sink open, the shard read and idle
        started = time.monotonic()
        for n in range(total):
            # on a fixed schedule: a late put does not push the later ones back
            await anyio.sleep(max(0.0, started + n * trickle.interval - time.monotonic()))
            key = f"k{n % KEYS:03d}"
            put_at = time.time()
            record = stream.put(shard, "MODIFY", {"pk": key}, {"pk": key, "shard": "0"})
            created[int(record.sequence_number)] = put_at
        with anyio.fail_after(30 + 2 * trickle.window):
            await all_in.wait()
        stop.set()

    with anyio.fail_after(RUN_TIMEOUT):
        if trickle.source == "memory":
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, stream)
                tg.start_soon(feed)
        else:
            async with LocalStreamsServer(stream) as streams:
                source = sources.dynamodb(
                    stream_arn=streams.stream_arn,
                    endpoint_url=streams.endpoint_url,
                    region=REGION,
                )
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run, source)
                    tg.start_soon(feed)
    report = reports[0]
    if report.delivered != len(created) or report.failed or report.retries:
        raise BenchmarkError(
            f"the trickle ({label(trickle)}) was not delivered "
            f"at the first attempt ({report.retries} retries):\n{report.summary()}"
        )
    trickle.sends = sum(s.batches for s in report.sinks.values())
    return created


def received(admin: Any, queue_url: str, expected: int) -> dict[int, float]:
    """Every message of the queue: its record's sequence number and SentTimestamp."""
    out: dict[int, float] = {}
    empty = 0
    while len(out) < expected and empty < 3:
        got = admin.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=600,
            AttributeNames=["SentTimestamp"],
        ).get("Messages", [])
        empty = 0 if got else empty + 1
        for message in got:
            seq = int(json.loads(message["Body"])["seq"])
            if seq in out:
                raise BenchmarkError(f"the queue holds record {seq} twice")
            out[seq] = int(message["Attributes"]["SentTimestamp"]) / 1000
    return out


def label(t: Trickle) -> str:
    return f"{t.source} {1 / t.interval:g}/s, window {t.window:g}s"


def run_sqs(records: int) -> list[Trickle]:
    results = []
    names = itertools.count()
    with moto_server() as server:
        admin: Any = boto3.client("sqs", endpoint_url=server.url, region_name=REGION)
        for source, interval, share in TRICKLES:
            for window in WINDOWS:
                trickle = Trickle(source, interval, window)
                total = max(1, round(records * share))
                name = f"trickle-{os.getpid()}-{next(names)}"
                queue_url = str(admin.create_queue(QueueName=name)["QueueUrl"])
                count = SqsCalls()
                created = anyio.run(trickle_run, trickle, queue_url, server.url, count, total)
                sent = received(admin, queue_url, len(created))
                admin.delete_queue(QueueUrl=queue_url)
                if set(sent) != set(created):
                    raise BenchmarkError(
                        f"the trickle ({label(trickle)}) put {len(created)} "
                        f"records and the queue holds {len(sent)}, "
                        f"{len(set(created) - set(sent))} of them missing"
                    )
                trickle.records = len(created)
                trickle.calls = count.calls
                trickle.call_seconds = count.seconds
                trickle.latencies = [sent[seq] - created[seq] for seq in created]
                results.append(trickle)
                print(
                    f"  SQS {label(trickle)}: {trickle.calls} SendMessageBatch "
                    f"for {trickle.records} records, latency p50 "
                    f"{statistics.median(trickle.latencies) * 1000:.0f} ms",
                    flush=True,
                )
    return results


SQS_HEADER = (
    "source",
    "trickle",
    "batching window",
    "records",
    "SendMessageBatch",
    "requests / record",
    "x fewer",
    "latency p50",
    "max",
    "added p50",
    "ms / call",
)


def _base(t: Trickle, results: list[Trickle]) -> Trickle:
    """The same trickle without a window."""
    return next(
        b for b in results if (b.source, b.interval) == (t.source, t.interval) and not b.window
    )


def sqs_rows(results: list[Trickle]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for t in results:
        base = _base(t, results)
        p50 = statistics.median(t.latencies)
        out.append(
            (
                "MemoryStream (in process)" if t.source == "memory" else "dynamodb (polled)",
                f"{1 / t.interval:g} records/s",
                f"{t.window:g} s" if t.window else "none",
                f"{t.records:,}",
                f"{t.calls:,}",
                f"{t.calls / t.records:.3f}",
                f"{base.calls / t.calls:.1f}x",
                f"{p50 * 1000:,.0f} ms",
                f"{max(t.latencies) * 1000:,.0f} ms",
                f"{(p50 - statistics.median(base.latencies)) * 1000:+,.0f} ms",
                f"{t.call_seconds / t.calls * 1000:.0f}",
            )
        )
    return out


def sqs_notes(results: list[Trickle]) -> list[str]:
    sends = "; ".join(
        f"{t.source} {1 / t.interval:g}/s: "
        + ", ".join(f"{u.sends}" for u in results if (u.source, u.interval) == key)
        for key, t in {(t.source, t.interval): t for t in results}.items()
    )
    # Met when every trickle whose pages were small (more than 0.2 requests a record
    # without a window) needs half as many requests or fewer with each window; a trickle
    # whose pages were full already is at the floor, where a window can only round.
    bases = [t for t in results if not t.window]
    small = [b for b in bases if b.calls > 0.2 * b.records]
    cut = bool(small) and all(
        t.calls * 2 <= b.calls
        for b in small
        for t in results
        if t.window and _base(t, results) is b
    )

    def fewer(b: Trickle) -> str:
        windowed = [t for t in results if t.window and _base(t, results) is b]
        return f"{b.source} {1 / b.interval:g}/s " + "/".join(
            f"{b.calls / t.calls:.1f}x" for t in windowed
        )

    full = [b for b in bases if b not in small]
    verdict = (
        f"{'met' if cut else 'NOT met'} where pages were small (x fewer with "
        + ", ".join(f"{w:g}" for w in WINDOWS if w)
        + " s: "
        + "; ".join(fewer(b) for b in small)
        + ")"
    )
    if full:
        verdict += (
            "; "
            + ", ".join(f"{b.source} {1 / b.interval:g}/s" for b in full)
            + f" was at the floor already ({', '.join(f'{b.calls / b.records:.3f}' for b in full)}"
            " requests a record, full pages) and a window moves it only by how gathered "
            "pages split into calls of 10"
        )
    return [
        "One shard fed a record at a fixed pace while the pipeline runs (`run(stop=)`), "
        "into `sinks.sqs(queue_url)` on moto's server; a SendMessageBatch carries at most "
        "10 messages, so 0.1 requests a record is the floor. Every record was checked to "
        "be in the queue exactly once; x fewer: SendMessageBatch calls without a window "
        "over those with it.",
        "MemoryStream wakes its reader on every put, so each record is a page of its own "
        "(what a push source gives). `sources.dynamodb` through LocalStreamsServer polls "
        "a busy shard at most 5 times a second (max_polls_per_second), so at 50 records/s "
        "its pages already hold about 10 records and a window has little to gather; at 5 "
        "records/s each poll finds one record or none.",
        "latency: from just before the record's put() to the message's SentTimestamp on "
        "moto (one machine, one clock, milliseconds), so it includes polling and moto's "
        "time; added p50: over the same trickle without a window. ms / call: a "
        "SendMessageBatch's mean time, from the client: moto's cost grows with the queue "
        "(it walks every message for each one sent), and with a window a gathered page's "
        "several calls go out together (a standard queue), so its records also wait for "
        "moto to answer them all: part of the added latency is moto's, not the window's.",
        f"The sink's send() calls (SinkReport.batches), windows none/0.5/1 s: {sends}.",
        f"Done-when of issue 16, batching windows cut requests per record on a trickle: {verdict}.",
    ]


# -- main -----------------------------------------------------------------------------------


def _fake_credentials() -> None:
    # Local servers only; these credentials never leave the machine.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def _settings(quick: bool) -> tuple[int, int, int, int]:
    """runs, records a shard, per_shard=1's records a shard, trickle records"""
    return (1, 400, 100, 250) if quick else (3, RECORDS, BASELINE_RECORDS, TRICKLE_RECORDS)


def build_sections(
    runs: int, records: int, baseline_records: int, trickle: int, part: str, command: str
) -> list[Section]:
    _fake_credentials()
    out: list[Section] = []
    if part in ("all", "http"):
        levels = run_http(runs, records, baseline_records)
        out.append(
            Section(
                f"Concurrency: a 50 ms webhook, one item per request, {SHARDS} shards",
                HTTP_HEADER,
                http_rows(levels),
                command,
                http_notes(levels, runs),
            )
        )
    if part in ("all", "sqs"):
        trickles = run_sqs(trickle)
        out.append(
            Section(
                "Batching windows: SQS on a trickle, one shard",
                SQS_HEADER,
                sqs_rows(trickles),
                command,
                sqs_notes(trickles),
            )
        )
    return out


def sections(*, quick: bool = False) -> list[Section]:
    """The concurrency and batching tables for `run_all.py`."""
    runs, records, baseline, trickle = _settings(quick)
    return build_sections(
        runs, records, baseline, trickle, "all", COMMAND + (" --quick" if quick else "")
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and records")
    parser.add_argument("--runs", type=int, help="runs of each per_shard level")
    parser.add_argument("--records", type=int, help="records a shard (per_shard > 1)")
    parser.add_argument("--baseline-records", type=int, help="records a shard, per_shard=1")
    parser.add_argument(
        "--trickle-records", type=int, help="records of a 50/s trickle (a 5/s one: a fifth)"
    )
    parser.add_argument("--part", choices=["all", "http", "sqs"], default="all")
    args = parser.parse_args(argv)
    runs, records, baseline, trickle = _settings(args.quick)
    runs = args.runs or runs
    records = args.records or records
    baseline = args.baseline_records or baseline
    trickle = args.trickle_records or trickle
    if min(runs, records, baseline, trickle) < 1:
        parser.error("--runs, --records, --baseline-records and --trickle-records must be > 0")
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    for section in build_sections(runs, records, baseline, trickle, args.part, command):
        print("", section.text(), *(f"- {note}" for note in section.notes), sep="\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BenchmarkError as exc:
        sys.exit(f"bench_concurrency: {exc}")
