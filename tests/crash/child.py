"""The pipeline program of the crash tests: run as a subprocess, killed with SIGKILL.

    python tests/crash/child.py '<config as JSON>'

It reads a stream through the real `sources.dynamodb()` (aiobotocore, HTTP to the test
process's LocalStreamsServer), delivers every record to a sink that appends one line per
element to the cycle's log, and keeps its checkpoints in a real store. The log is written
with `os.write` on an O_APPEND descriptor before `send()` returns, so a line whose write
returned survives SIGKILL: the log is the ground truth of what was delivered.

The store is wrapped so that the log also says what the runtime asked it to do, in the
same order as the deliveries (one descriptor, one event loop):

    R <cycle> <t>                           the program is running (imports done)
    L <cycle> <t> <shard>=<pos>,...|-       the positions loaded at the start
    D <cycle> <batch> <shard> <sequence>    one delivered element; batch counts send()s
                                            (with sink latency, written once the wait
                                            is over: just before send() returns)
    S <cycle> <t> <shard>=<pos>,...         a save begins: the frontier snapshot
    C <cycle> <t>                           that save returned (durable)
    E <cycle> <t> <stop reason> <delivered> the run returned (drained)

`t` is `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process of the machine).
Optional settings of the config: ``per_shard`` (`Pipeline.concurrency()`, by the record's
keys), ``batching_window`` (`Pipeline.batching()`, seconds) and ``sink_latency`` (seconds
each `send()` awaits before it writes its lines and acknowledges, like a slow webhook).
With ``"wait": true`` in the config the program first waits for a "go" line on stdin, so
the harness can start it (and pay for its imports) before the previous cycle ends. This
file imports only the standard library and flowstream, so it runs as a script.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import anyio

import flowstream as fs
from flowstream import checkpoints, sources
from flowstream.checkpoints.base import CheckpointSession, CheckpointStore
from flowstream.sinks.base import Batch, SendResult, SimpleSink

#: The pipeline name that keys the checkpoints; the same in every cycle.
PIPELINE: Final = "crash-test"


class Log:
    """Appends lines to a file; a returned `write` is in the kernel's page cache, which
    SIGKILL of this process does not take away."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, text: str) -> None:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(self._fd, data) :]


def _positions(positions: Mapping[str, str]) -> str:
    return ",".join(f"{shard}={position}" for shard, position in positions.items()) or "-"


class RecordingSink(SimpleSink):
    """Appends ``D <cycle> <batch> <shard> <sequence>`` per element, then acknowledges."""

    def __init__(self, log: Log, cycle: int, latency: float = 0.0) -> None:
        self._log = log
        self._cycle = cycle
        self._latency = latency
        self._batches = 0
        self.delivered = 0

    def describe(self) -> str:
        return "crash-log"

    async def send(self, batch: Batch) -> SendResult | None:
        if self._latency:
            # The request takes a while; what a kill cuts short here was not delivered.
            await anyio.sleep(self._latency)
        self._batches += 1
        prefix = f"D {self._cycle} {self._batches} {batch.shard_id} "
        self._log.write("".join(f"{prefix}{r.sequence_number}\n" for r in batch.records))
        self.delivered += len(batch)
        return None


class RecordingCheckpoints(CheckpointStore):
    """A real checkpoint store whose loads and saves are also written to the log."""

    def __init__(self, inner: CheckpointStore, log: Log, cycle: int) -> None:
        self._inner = inner
        self._log = log
        self._cycle = cycle
        self.flush_interval = inner.flush_interval

    def describe(self) -> str:
        return self._inner.describe()

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        async with self._inner.open(pipeline, stream_id) as session:
            yield _RecordingSession(session, self._log, self._cycle)


class _RecordingSession(CheckpointSession):
    def __init__(self, inner: CheckpointSession, log: Log, cycle: int) -> None:
        self._inner = inner
        self._log = log
        self._cycle = cycle

    async def load(self) -> dict[str, str]:
        positions = await self._inner.load()
        self._log.write(f"L {self._cycle} {time.monotonic():.6f} {_positions(positions)}\n")
        return positions

    async def save(self, positions: Mapping[str, str]) -> None:
        # The runtime calls save() in the same step as it takes the snapshot of its
        # pending frontiers, so this line sits after every delivery the snapshot covers.
        self._log.write(f"S {self._cycle} {time.monotonic():.6f} {_positions(positions)}\n")
        await self._inner.save(positions)
        self._log.write(f"C {self._cycle} {time.monotonic():.6f}\n")


def _sqlite(options: Mapping[str, Any]) -> CheckpointStore:
    return checkpoints.sqlite(options["path"], flush_interval=options["flush_interval"])


def _dynamodb(options: Mapping[str, Any]) -> CheckpointStore:
    return checkpoints.dynamodb(
        options["table"],
        endpoint_url=options["endpoint_url"],
        region=options.get("region"),
        create=True,
        flush_interval=options["flush_interval"],
    )


#: Checkpoint stores by the `kind` of the harness's `StoreSpec`; add a store here and a
#: spec factory in harness.py to crash-test it.
STORES: Final[Mapping[str, Callable[[Mapping[str, Any]], CheckpointStore]]] = {
    "sqlite": _sqlite,
    "dynamodb": _dynamodb,
}


async def run(config: Mapping[str, Any]) -> None:
    cycle = int(config["cycle"])
    log = Log(config["log"])
    log.write(f"R {cycle} {time.monotonic():.6f}\n")
    spec = config["store"]
    store = RecordingCheckpoints(STORES[spec["kind"]](spec["options"]), log, cycle)
    source = sources.dynamodb(
        stream_arn=config["stream_arn"],
        endpoint_url=config["endpoint_url"],
        page_limit=config["page_limit"],
        max_polls_per_second=config["polls_per_second"],
        idle_interval=0.05,
    )
    sink = RecordingSink(log, cycle, float(config.get("sink_latency", 0.0)))
    pipeline = fs.Pipeline(source, name=PIPELINE).to(sink)
    if config.get("per_shard", 1) > 1:
        pipeline = pipeline.concurrency(int(config["per_shard"]))
    if config.get("batching_window", 0.0) > 0:
        pipeline = pipeline.batching(float(config["batching_window"]))
    report = await pipeline.run(checkpoints=store, drain=True)
    log.write(f"E {cycle} {time.monotonic():.6f} {report.stop_reason} {sink.delivered}\n")


def main() -> None:
    config = json.loads(sys.argv[1])
    # Started ahead of its cycle: imports are done, nothing is touched before "go"
    # (end of input means the harness is gone).
    if config.get("wait") and sys.stdin.readline() != "go\n":
        return
    anyio.run(run, config)


if __name__ == "__main__":
    main()
