"""One worker of a lease fleet (tests/lease_fleet.py), run as its own process:

    python tests/lease_worker.py '{"worker_id": ..., "stream_arn": ..., ...}'

It runs one pipeline over the stream (`sources.dynamodb` over HTTP) with
`run(leases=leases.dynamodb(...), handle_signals=True)` until SIGTERM. Its sink appends
a line per batch to its deliveries file: the time the batch was sent, the shard, and the
sequence numbers, so every check is made from the files. flowstream's log (takes,
losses, releases) goes to its own file, each line stamped with the time. Optional
config: `flush_interval` (default 0.2; null: the leases' own default) and
`cleanup_after`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import anyio

import flowstream as fs
from flowstream import leases, sources
from flowstream.sinks import Batch, SendResult
from flowstream.sinks.base import SimpleSink


class DeliveryLog(SimpleSink):
    """One line per batch, written before acknowledging: ``time shard seq seq ...``."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def describe(self) -> str:
        return "delivery-log"

    async def send(self, batch: Batch) -> SendResult | None:
        numbers = " ".join(record.sequence_number for record in batch.records)
        os.write(self._fd, f"{time.time():.6f} {batch.shard_id} {numbers}\n".encode())
        return None


async def main(config: dict[str, Any]) -> None:
    source = sources.dynamodb(
        stream_arn=config["stream_arn"],
        endpoint_url=config["streams_url"],
        idle_interval=0.5,
        max_polls_per_second=20.0,
        discovery_interval=2.0,
    )
    table = leases.dynamodb(
        config["table"],
        worker_id=config["worker_id"],
        endpoint_url=config["dynamodb_url"],
        failover_time=config["failover_time"],
        flush_interval=config.get("flush_interval", 0.2),
        cleanup_after=config.get("cleanup_after", 3600.0),
    )
    pipeline = fs.Pipeline(source, name="fleet").to(DeliveryLog(config["deliveries"]))
    report = await pipeline.run(leases=table, handle_signals=True, grace_period=5.0)
    print(report.summary(), file=sys.stderr)


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    handler = logging.FileHandler(settings["log"])
    handler.setFormatter(logging.Formatter("%(created).6f %(levelname)s %(message)s"))
    logging.getLogger("flowstream").addHandler(handler)
    logging.getLogger("flowstream").setLevel(
        logging.DEBUG if os.environ.get("FLEET_DEBUG") else logging.INFO
    )
    anyio.run(main, settings)
