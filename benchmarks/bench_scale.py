"""1,000 shards in one process: resident memory per idle shard, the idle poll rate per
shard, and that every shard is still served.

    python3 benchmarks/bench_scale.py [--quick] [--shards N]

A LocalStreamsServer over a MemoryStream of open shards (a few records each) runs in a
process of its own, so that its CPU and memory are not the consumer's; the pipeline
(`sources.dynamodb` through aiobotocore -> a callback sink) runs in a fresh process per
configuration, so that no earlier benchmark's heap hides what the shards cost. Once every
shard has read its records and gone idle, the consumer's resident memory is taken (after
`gc.collect()`), then for a window of idle time the server logs the moment of every
GetRecords of every shard, records are put on random shards and timed to the sink, and the
consumer's CPU time is summed. A first row reads an in-process MemoryStream instead (no
polling, no HTTP): what the runtime itself costs per shard. `--trace` shows where each
shard's memory goes (tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing
import os
import random
import statistics
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.to_thread
from report import Section, text_table

import flowstream as fs
from flowstream import sinks, sources
from flowstream.testing import LocalStreamsServer, MemoryStream

COMMAND = "python3 benchmarks/bench_scale.py"
RECORDS_PER_SHARD = 3
#: How long a worker process may take before the benchmark gives up on it.
WORKER_TIMEOUT = 600.0

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process, now (not the peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def cpu_wait() -> float:
    """Seconds this process's main thread has waited for a CPU so far: runnable, not
    running, because the machine's other work had the cores."""
    with open("/proc/self/schedstat") as schedstat:
        return int(schedstat.read().split()[1]) / 1e9


def _fake_credentials() -> None:
    # Local servers only; these credentials never leave the machine.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# -- the stream's process ----------------------------------------------------------------


class PollLog(Counter[str | tuple[str, str]]):
    """`LocalStreamsServer.calls` that also notes when each shard's GetRecords came, while
    `recording`."""

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.times: defaultdict[str, list[float]] = defaultdict(list)

    def __setitem__(self, key: str | tuple[str, str], value: int) -> None:
        if self.recording and type(key) is tuple and key[0] == "GetRecords":
            self.times[key[1]].append(time.monotonic())
        super().__setitem__(key, value)


@dataclass
class StreamSpec:
    """What the stream's process serves."""

    shards: int
    records_per_shard: int = RECORDS_PER_SHARD


def fill(stream: MemoryStream, spec: StreamSpec) -> list[str]:
    """Open `spec.shards` shards with `spec.records_per_shard` records each."""
    ids = [stream.add_shard() for _ in range(spec.shards)]
    for i, shard in enumerate(ids):
        for n in range(spec.records_per_shard):
            key = f"item#{i}#{n}"
            stream.put(shard, "INSERT", {"pk": key}, {"pk": key, "n": n, "name": "x" * 40})
    return ids


def serve_stream(conn: Connection, spec: StreamSpec) -> None:
    """The stream's process: serve `spec` and answer the consumer's commands on `conn`."""
    anyio.run(_serve_stream, conn, spec)


async def _serve_stream(conn: Connection, spec: StreamSpec) -> None:
    stream = MemoryStream(table="Scale")
    ids = fill(stream, spec)
    async with LocalStreamsServer(stream) as server:
        log = PollLog()
        server.calls = log
        conn.send((server.endpoint_url, server.stream_arn, ids))
        cpu = 0.0
        while True:
            try:
                command, *args = await anyio.to_thread.run_sync(conn.recv)
            except EOFError:
                return  # the consumer is gone
            if command == "record":
                log.times.clear()
                log.recording = True
                cpu = time.process_time()
                conn.send(time.monotonic())
            elif command == "report":
                log.recording = False
                conn.send((dict(log.times), time.process_time() - cpu))
            elif command == "put":
                (shard,) = args
                key = f"late#{time.monotonic_ns()}"
                conn.send(stream.put(shard, "MODIFY", {"pk": key}, {"pk": key}).sequence_number)
            else:
                conn.send(None)
                return


# -- the consumer's process --------------------------------------------------------------


@dataclass
class Config:
    """One measured configuration."""

    source: str  # "dynamodb" (through LocalStreamsServer) or "memory" (MemoryStream)
    shards: int
    idle_interval: float | None = None  # None: the source's default
    window: float = 20.0
    puts: int = 10
    trace: bool = False  # take tracemalloc's count too (slows the warm-up)


@dataclass
class Result:
    config: Config
    idle_interval: float
    warm_up: float  # seconds until every shard had delivered its records
    rss_before: int
    rss_idle: int
    rss_after: int
    traced: int | None
    top_sites: list[tuple[str, int]]
    polls: dict[str, list[float]]  # GetRecords moments by shard, in the window
    window: float
    cpu: float  # the consumer's CPU seconds in the window
    cpu_wait: float  # seconds its main thread was runnable but not running, in the window
    server_cpu: float
    arrivals: list[float] = field(default_factory=list)  # put -> sink, seconds

    @property
    def per_shard_rss(self) -> float:
        return (self.rss_idle - self.rss_before) / self.config.shards

    @property
    def gaps(self) -> list[float]:
        """Every shard's longest wait between polls within the window (from the window's
        start to its first poll and from its last poll to the window's end included)."""
        out = []
        for shard_polls in self.polls.values():
            moments = [0.0, *shard_polls, self.window]
            out.append(max(b - a for a, b in itertools.pairwise(moments)))
        return out


def run_config(config: Config) -> Result:
    """Measure `config` in a fresh process and return what it found."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    worker = context.Process(target=consumer_main, args=(theirs, config))
    worker.start()
    theirs.close()
    try:
        if not ours.poll(WORKER_TIMEOUT):
            raise RuntimeError(f"{config} took more than {WORKER_TIMEOUT:.0f}s")
        result: Result | BaseException = ours.recv()
    finally:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    if isinstance(result, BaseException):
        raise result
    return result


def consumer_main(conn: Connection, config: Config) -> None:
    _fake_credentials()
    try:
        result: Result | BaseException = anyio.run(measure, config)
    except BaseException as exc:
        result = RuntimeError(f"{config}: {type(exc).__name__}: {exc}")
    conn.send(result)


class Stream:
    """The consumer's handle on the stream: in this process (MemoryStream) or served by
    another (LocalStreamsServer), with the same few commands."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spec = StreamSpec(config.shards)
        self.memory: MemoryStream | None = None
        self.process: Any = None
        self.conn: Connection | None = None
        self.ids: list[str] = []

    def start(self) -> Any:
        if self.config.source == "memory":
            self.memory = MemoryStream(table="Scale")
            self.ids = fill(self.memory, self.spec)
            return self.memory
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=serve_stream, args=(theirs, self.spec), daemon=True)
        self.process.start()
        theirs.close()
        endpoint_url, stream_arn, self.ids = self.conn.recv()
        return sources.dynamodb(
            stream_arn=stream_arn,
            endpoint_url=endpoint_url,
            **self.options(),
        )

    def options(self) -> dict[str, Any]:
        interval = self.config.idle_interval
        return {} if interval is None else {"idle_interval": interval}

    async def call(self, *command: Any) -> Any:
        assert self.conn is not None
        conn = self.conn

        def ask() -> Any:
            conn.send(command)
            return conn.recv()

        return await anyio.to_thread.run_sync(ask)

    async def put(self, shard: str) -> str:
        if self.memory is not None:
            key = f"late#{time.monotonic_ns()}"
            return self.memory.put(shard, "MODIFY", {"pk": key}, {"pk": key}).sequence_number
        return str(await self.call("put", shard))

    async def record_polls(self) -> None:
        if self.conn is not None:
            await self.call("record")

    async def polls(self) -> tuple[dict[str, list[float]], float]:
        """GetRecords moments by shard since `record_polls()`, and the server's CPU."""
        if self.conn is None:
            return {}, 0.0
        times, cpu = await self.call("report")
        return times, cpu

    def stop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(("exit",))
                self.conn.recv()
            except (EOFError, BrokenPipeError):
                pass
            self.conn.close()
        if self.process is not None:
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()


async def measure(config: Config) -> Result:
    stream = Stream(config)
    try:
        source = stream.start()
        return await _measure(config, stream, source)
    finally:
        stream.stop()


async def _measure(config: Config, stream: Stream, source: Any) -> Result:
    expected = config.shards * RECORDS_PER_SHARD
    delivered = 0
    waiting: dict[str, float] = {}
    arrivals: list[float] = []
    all_read = anyio.Event()
    all_arrived = anyio.Event()

    def arrive(records: list[fs.Record]) -> None:
        nonlocal delivered
        now = time.monotonic()
        delivered += len(records)
        if delivered >= expected:
            all_read.set()
        for record in records:
            sent = waiting.pop(record.sequence_number, None)
            if sent is not None:
                arrivals.append(now - sent)
                if len(arrivals) == config.puts:
                    all_arrived.set()

    idle_interval = getattr(source, "idle_interval", 0.0)
    gc.collect()
    if config.trace:
        tracemalloc.start(8)
    traced_before = tracemalloc.get_traced_memory()[0] if config.trace else 0
    snapshot_before = tracemalloc.take_snapshot() if config.trace else None
    rss_before = rss()
    stop = anyio.Event()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            pipeline = fs.Pipeline(source, name="scale").to(sinks.callback(arrive))
            await pipeline.run(stop=stop)

        tg.start_soon(run)
        with anyio.fail_after(max(120.0, config.shards / 5)):
            await all_read.wait()
        warm_up = time.monotonic() - started
        # Let every shard's empty polls back off to the idle interval.
        await anyio.sleep(2.0 + 2 * idle_interval)
        gc.collect()
        rss_idle = rss()
        traced = top_sites = None
        if config.trace:
            assert snapshot_before is not None
            traced = tracemalloc.get_traced_memory()[0] - traced_before
            stats = tracemalloc.take_snapshot().compare_to(snapshot_before, "lineno")
            top_sites = [(str(s.traceback[0]), s.size_diff) for s in stats[:12]]
            tracemalloc.stop()  # the window's CPU time must not pay for tracing
        await stream.record_polls()
        window_start = time.monotonic()
        cpu = time.process_time()
        waited = cpu_wait()
        rng = random.Random(7)
        for n in range(config.puts):
            # spread over the window, at moments unrelated to any poll
            await anyio.sleep_until(
                window_start + config.window * (n + rng.random()) / (config.puts + 1)
            )
            shard = rng.choice(stream.ids)
            sent = time.monotonic()
            waiting[await stream.put(shard)] = sent
        await anyio.sleep_until(window_start + config.window)
        cpu = time.process_time() - cpu
        waited = cpu_wait() - waited
        polls, server_cpu = await stream.polls()
        window = time.monotonic() - window_start
        # The last records put may still be on their way.
        with anyio.move_on_after(10 + 2 * idle_interval):
            await all_arrived.wait()
        gc.collect()
        rss_after = rss()
        stop.set()
    served = {s: [t - window_start for t in polls.get(s, [])] for s in stream.ids}
    return Result(
        config,
        idle_interval,
        warm_up,
        rss_before,
        rss_idle,
        rss_after,
        traced,
        top_sites or [],
        served if config.source == "dynamodb" else {},
        window,
        cpu,
        waited,
        server_cpu,
        arrivals + [float("inf")] * len(waiting),  # never arrived
    )


# -- the tables ------------------------------------------------------------------------

#: The idle interval the 1,000-shard run is sized for: one core polls 1,000 idle shards on
#: time at 1 s (the KCL's default wait between reads), where the default is for latency.
SCALE_INTERVAL = 1.0
#: Fewer shards, to tell the fixed costs (botocore's models, the connection pool) from
#: what each shard adds.
FEW_SHARDS = 100
#: Share of one core that idle polling may take in the capacity estimate: above about
#: that, the event loop lags and polls come late.
BUDGET = 0.6

HEADER = (
    "configuration",
    "shards",
    "RSS / idle shard",
    "GetRecords / shard / s",
    "longest gap p50 / max",
    "on time",
    "consumer CPU (waiting)",
    "CPU / GetRecords",
    "put -> sink max",
)


def allowance(interval: float) -> float:
    """How late a poll may be and still count as on time: 10% of the interval, 50 ms at
    least (timers, the request itself)."""
    return max(0.05, 0.1 * interval)


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def name(result: Result) -> str:
    if result.config.source == "memory":
        return "MemoryStream (in process, no polling)"
    default = " (default)" if result.config.idle_interval is None else ""
    return f"dynamodb, idle_interval={result.idle_interval:g}s{default}"


def polls_of(result: Result) -> int:
    return sum(len(p) for p in result.polls.values())


def cpu_per_poll(result: Result) -> float | None:
    polls = polls_of(result)
    return result.cpu / polls if polls else None


def on_time(result: Result) -> float:
    late = result.idle_interval + allowance(result.idle_interval)
    gaps = result.gaps
    return sum(g <= late for g in gaps) / len(gaps)


def row(result: Result) -> tuple[str, ...]:
    config = result.config
    cpu = (
        f"{result.cpu / result.window:.0%} (+{result.cpu_wait / result.window:.0%})"
        if config.source == "dynamodb"
        else f"{result.cpu / result.window:.0%}"
    )
    if config.source == "dynamodb":
        gaps = result.gaps
        rate = polls_of(result) / len(result.polls) / result.window
        rates = f"{rate:.2f} of {1 / result.idle_interval:.2f}"
        gap = f"{statistics.median(gaps):.2f} / {max(gaps):.2f} s"
        per_poll = cpu_per_poll(result)
        cost = f"{per_poll * 1e6:,.0f} µs" if per_poll is not None else "-"
        on = f"{on_time(result):.0%}"
    else:
        rates = gap = cost = on = "-"
    return (
        name(result),
        f"{config.shards:,}",
        _kib(result.per_shard_rss),
        rates,
        gap,
        on,
        cpu,
        cost,
        f"{max(result.arrivals):.2f} s" if result.arrivals else "-",
    )


def notes(results: list[Result]) -> list[str]:
    out = [
        "RSS / idle shard: the consumer's resident memory once every shard had read its "
        f"{RECORDS_PER_SHARD} records and gone idle (after gc.collect()), less what it was "
        "before the pipeline started, over the shards: the fixed costs (botocore's service "
        "models, the pool of 64 connections) are in it.",
        "GetRecords / shard / s: achieved of wanted (one per idle interval); longest gap: each "
        "shard's longest wait between two GetRecords in the window as the server saw them "
        "(p50 over the shards / the worst shard); on time: shards whose longest gap is at "
        "most the idle interval plus 10% (50 ms at least).",
        "consumer CPU: the consumer process's CPU time over the window, in brackets the time "
        "its main thread was ready to run but waited for a core taken by other processes "
        "(the server runs in a process of its own; a shared machine). put -> sink: the "
        "slowest of the records put on random shards during the window.",
    ]
    by_size = {
        (r.config.shards, r.idle_interval): r for r in results if r.config.source != "memory"
    }
    costs = sorted(c for r in results if (c := cpu_per_poll(r)) is not None)
    if costs:
        cost = statistics.median(costs)
        shards = max(r.config.shards for r in results)
        keeps = [f"{BUDGET * interval / cost:,.0f}" for interval in (0.25, 0.5, 1.0)]
        out.append(
            f"Capacity: each idle GetRecords costs {cost * 1e6:,.0f} µs of the consumer's CPU "
            "(median of the rows: flowstream signs it, aiobotocore's HTTP session sends it, "
            f"the runtime schedules the shard). Spending {BUDGET:.0%} of a core on them "
            "(above that, the event loop's lag makes polls late), one process keeps about "
            f"{keeps[0]} idle shards polled on time at 0.25 s, "
            f"{keeps[1]} at 0.5 s and {keeps[2]} at 1 s; {shards:,} shards need an idle "
            f"interval of {shards * cost / BUDGET:.2f} s or more. The default (0.25 s) is for "
            f"latency; the scale run uses {SCALE_INTERVAL:g} s."
        )
    polled = [r for r in results if r.config.source == "dynamodb"]
    if polled:
        out.append(
            f"Start: every shard had delivered its {RECORDS_PER_SHARD} records "
            f"{max(r.warm_up for r in polled):.1f} s after the run began at the latest; "
            "the server's own process used at most "
            f"{max(r.server_cpu / r.window for r in polled):.0%} of a core."
        )
    big = by_size.get((max(s for s, _ in by_size), SCALE_INTERVAL)) if by_size else None
    small = by_size.get((FEW_SHARDS, SCALE_INTERVAL))
    if big is not None and small is not None and big.config.shards > FEW_SHARDS:
        more = big.config.shards - FEW_SHARDS
        each = ((big.rss_idle - big.rss_before) - (small.rss_idle - small.rss_before)) / more
        fixed = small.rss_idle - small.rss_before - each * FEW_SHARDS
        out.append(
            f"Each shard added {_kib(each)} resident (the RSS growth from {FEW_SHARDS} to "
            f"{big.config.shards:,} shards at idle_interval={SCALE_INTERVAL:g}s, over the "
            f"{more:,} more); the fixed costs came to {fixed / 2**20:.1f} MiB."
        )
    if big is not None:
        small_enough = big.per_shard_rss < 50 * 1024
        at_scale = sorted(
            (
                r
                for r in results
                if r.config.source != "memory" and r.config.shards == big.config.shards
            ),
            key=lambda r: r.idle_interval,
        )
        timely = [f"{on_time(r):.0%} at {r.idle_interval:g} s" for r in at_scale]
        met = [r.idle_interval for r in at_scale if on_time(r) == 1]
        out.append(
            f"Targets at {big.config.shards:,} shards: under 50 KiB resident per idle shard: "
            f"{'met' if small_enough else 'NOT met'} ({_kib(big.per_shard_rss)} at "
            f"idle_interval={SCALE_INTERVAL:g}s); every shard polled at least once per idle "
            f"interval: {'met from ' + format(min(met), 'g') + ' s' if met else 'NOT met'} "
            f"(on time: {', '.join(timely)}; below that the polls come late, or less often "
            "than asked where one core cannot send them all, see Capacity)."
        )
    for result in results:
        growth = (result.rss_after - result.rss_idle) / result.config.shards
        if abs(growth) >= 1024:
            out.append(f"{name(result)}: RSS moved {_kib(growth)} per shard over the window.")
    return out


def configs(*, quick: bool, shards: int) -> list[Config]:
    window = 10.0 if quick else 20.0
    chosen = [
        Config("memory", shards, window=window),
        Config("dynamodb", shards, window=window),
        Config("dynamodb", shards, idle_interval=SCALE_INTERVAL, window=window),
    ]
    if not quick:
        chosen[2:2] = [Config("dynamodb", shards, idle_interval=0.5, window=window)]
        chosen += [Config("dynamodb", shards, idle_interval=2.0, window=window)]
        chosen += [Config("dynamodb", FEW_SHARDS, idle_interval=SCALE_INTERVAL, window=window)]
    return chosen


def measure_all(
    *, quick: bool = False, shards: int = 1000, progress: Callable[[str], None] | None = None
) -> list[Result]:
    results = []
    for config in configs(quick=quick, shards=shards):
        result = run_config(config)
        if progress is not None:
            progress(" | ".join(row(result)))
        results.append(result)
    return results


def title(results: list[Result]) -> str:
    return f"Scale: {max(r.config.shards for r in results):,} idle shards in one consumer process"


def sections(*, quick: bool = False) -> list[Section]:
    """The scale table for `run_all.py`."""
    _fake_credentials()
    results = measure_all(quick=quick)
    return [
        Section(
            title(results),
            HEADER,
            [row(r) for r in results],
            COMMAND + (" --quick" if quick else ""),
            notes(results),
        )
    ]


def trace(shards: int) -> None:
    """Where each idle shard's memory goes, by the flowstream line that allocated it."""
    for source in ("memory", "dynamodb"):
        result = run_config(Config(source, shards, window=2.0, puts=1, trace=True))
        print(f"{name(result)}: {_kib((result.traced or 0) / shards)} of Python objects per shard")
        for site, size in result.top_sites:
            print(f"  {_kib(size / shards):>10}  {site}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer configurations, shorter")
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--trace", action="store_true", help="where the memory goes, per shard")
    args = parser.parse_args()
    _fake_credentials()
    if args.trace:
        trace(args.shards)
        return
    results = measure_all(quick=args.quick, shards=args.shards, progress=print)
    print()
    print(title(results))
    print(text_table(HEADER, [row(r) for r in results]))
    for note in notes(results):
        print(f"- {note}")


if __name__ == "__main__":
    main()
