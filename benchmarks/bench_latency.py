"""Latency: a record put into the stream until a sink has it, p50/p99, for the in-process
MemoryStream and for LocalStreamsServer read through `sources.dynamodb` (aiobotocore,
HTTP), with the default idle interval and with others.

    python3 benchmarks/bench_latency.py [--quick] [--puts N]

Records are put one at a time, at random moments, on the shards in turn (shuffled each
round), so that each lands on a shard idle for about 3 s, its polls backed off to the idle
interval: what a cache invalidator on a quiet table sees.
Latency is from just before `put()` to the sink's call, on one monotonic clock; the server
runs in the consumer's event loop (a few shards, little load).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import anyio
from report import Section, text_table

import flowstream as fs
from flowstream import sinks, sources
from flowstream.sources.dynamodb import DynamoDBSource
from flowstream.testing import LocalStreamsServer, MemoryStream

COMMAND = "python3 benchmarks/bench_latency.py"
SHARDS = 16
#: Seconds between two puts (on any shard), uniform: each shard gets one every ~3.2 s.
GAPS = (0.1, 0.3)
#: The targets of issue 6, with the default idle interval.
TARGET_P50 = 0.250
TARGET_P99 = 1.0


@dataclass
class Config:
    """One measured configuration: a source and its polling options."""

    source: str  # "memory" or "dynamodb"
    idle_interval: float | None = None  # None: the default
    max_polls_per_second: float | None = None  # None: the default
    remark: str = ""

    def options(self) -> dict[str, Any]:
        options = {}
        if self.idle_interval is not None:
            options["idle_interval"] = self.idle_interval
        if self.max_polls_per_second is not None:
            options["max_polls_per_second"] = self.max_polls_per_second
        return options


@dataclass
class Result:
    config: Config
    label: str
    latencies: list[float]  # seconds, one per put
    polls_per_shard_second: float | None  # GetRecords per shard per second


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(config: Config, puts: int, seed: int = 11) -> Result:
    stream = MemoryStream(table="Latency")
    shards = [stream.add_shard() for _ in range(SHARDS)]
    if config.source == "memory":
        return await _measure(config, stream, stream, shards, puts, seed, None)
    async with LocalStreamsServer(stream) as server:
        source = sources.dynamodb(
            stream_arn=server.stream_arn, endpoint_url=server.endpoint_url, **config.options()
        )
        return await _measure(config, stream, source, shards, puts, seed, server)


async def _measure(
    config: Config,
    stream: MemoryStream,
    source: Any,
    shards: list[str],
    puts: int,
    seed: int,
    server: LocalStreamsServer | None,
) -> Result:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    all_in = anyio.Event()

    def arrive(records: list[fs.Record]) -> None:
        now = time.monotonic()
        for record in records:
            latencies.append(now - sent.pop(record.sequence_number))
        if len(latencies) == puts:
            all_in.set()

    if isinstance(source, DynamoDBSource):
        label = (
            f"dynamodb, idle_interval={source.idle_interval:g}s"
            + (" (default)" if config.idle_interval is None else "")
            + (
                f", max_polls_per_second={config.max_polls_per_second:g}"
                if config.max_polls_per_second is not None
                else ""
            )
            + (f" ({config.remark})" if config.remark else "")
        )
        idle = source.idle_interval
    else:
        label, idle = "MemoryStream (in process)", 0.0
    rng = random.Random(seed)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await fs.Pipeline(source, name="latency").to(sinks.callback(arrive)).run(stop=stop)

        tg.start_soon(run)
        # Every shard read once and idle at its longest wait before the first put.
        await anyio.sleep(1.0 + 3 * idle)
        polls_before = _get_records(server)
        started = time.monotonic()
        order: list[str] = []
        for _ in range(puts):
            await anyio.sleep(rng.uniform(*GAPS))
            if not order:
                order = rng.sample(shards, len(shards))
            shard = order.pop()
            key = f"item#{rng.randrange(10**9)}"
            put_at = time.monotonic()
            record = stream.put(shard, "MODIFY", {"pk": key}, {"pk": key, "n": 1}, {"pk": key})
            sent[record.sequence_number] = put_at
        with anyio.fail_after(30 + 2 * idle):
            await all_in.wait()
        elapsed = time.monotonic() - started
        polls = _get_records(server) - polls_before
        stop.set()
    rate = polls / SHARDS / elapsed if server is not None else None
    return Result(config, label, latencies, rate)


def _get_records(server: LocalStreamsServer | None) -> int:
    return 0 if server is None else server.calls["GetRecords"]


def configs() -> list[Config]:
    return [
        Config("memory"),
        Config("dynamodb"),
        # Shorter: beyond DynamoDB's 5 GetRecords per shard per second, so only for
        # local endpoints (tests); it shows what the poll pace costs in latency.
        Config("dynamodb", idle_interval=0.1, max_polls_per_second=10.0),
        Config("dynamodb", idle_interval=0.5),
        Config("dynamodb", idle_interval=1.0, remark="the default until 0.25 s"),
    ]


HEADER = ("configuration", "puts", "p50", "p90", "p99", "max", "GetRecords / shard / s")


def row(result: Result) -> tuple[str, ...]:
    lat = result.latencies

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:.0f} ms"

    rate = result.polls_per_shard_second
    return (
        result.label,
        f"{len(lat):,}",
        ms(statistics.median(lat)),
        ms(percentile(lat, 0.90)),
        ms(percentile(lat, 0.99)),
        ms(max(lat)),
        "- (no polling)" if rate is None else f"{rate:.2f}",
    )


def notes(results: list[Result]) -> list[str]:
    out = [
        f"{SHARDS} shards; a put every {GAPS[0] * 1000:.0f}-{GAPS[1] * 1000:.0f} ms, on the "
        f"shards in turn (each gets one every ~{SHARDS * sum(GAPS) / 2:.1f} s, idle in "
        "between); latency from just before put() to the sink's call.",
        "GetRecords / shard / s: the calls each shard cost while the puts went on (the "
        "poll pace of a mostly idle shard; DynamoDB allows 5).",
    ]
    for result in results:
        if result.config.source == "dynamodb" and result.config.idle_interval is None:
            lat = result.latencies
            p50, p99 = statistics.median(lat), percentile(lat, 0.99)
            met = p50 < TARGET_P50 and p99 < TARGET_P99
            out.append(
                f"Target with the default idle interval: p50 < {TARGET_P50 * 1000:.0f} ms and "
                f"p99 < {TARGET_P99 * 1000:.0f} ms: {'met' if met else 'NOT met'} "
                f"({p50 * 1000:.0f} ms, {p99 * 1000:.0f} ms)."
            )
    return out


async def measure_all(puts: int) -> list[Result]:
    results = []
    for n, config in enumerate(configs()):
        results.append(await measure(config, puts, seed=11 + n))
    return results


def sections(*, quick: bool = False) -> list[Section]:
    """The latency table for `run_all.py`."""
    _fake_credentials()
    puts = 100 if quick else 300
    results = anyio.run(measure_all, puts)
    return [
        Section(
            "Latency: put -> sink, mostly idle shards",
            HEADER,
            [row(r) for r in results],
            COMMAND + (" --quick" if quick else ""),
            notes(results),
        )
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
    parser.add_argument("--quick", action="store_true", help="fewer puts")
    parser.add_argument("--puts", type=int, help="puts per configuration")
    args = parser.parse_args()
    puts = args.puts or (100 if args.quick else 300)
    _fake_credentials()
    results = []
    for n, config in enumerate(configs()):
        result = anyio.run(measure, config, puts, 11 + n)
        print(" | ".join(row(result)), flush=True)
        results.append(result)
    print()
    print("Latency: put -> sink, mostly idle shards")
    print(text_table(HEADER, [row(r) for r in results]))
    for note in notes(results):
        print(f"- {note}")


if __name__ == "__main__":
    main()
