"""A webhook forwarder: every change to a table is POSTed to an HTTP endpoint.

Changes go out as JSON arrays of up to --batch-size events, each shard in order, with an
``Idempotency-Key`` header the receiver can deduplicate retries with (and each event's
``id`` is the same on every replay); 429 and 5xx are retried --retries times (honouring
Retry-After). A change that still fails, or that the endpoint rejects with another 4xx,
stops its shard there; with --dead-letters it goes to that file instead and the shard goes
on. Once the endpoint takes them, --replay sends the changes in such a file again. The
bearer token comes from $WEBHOOK_TOKEN. A slow endpoint: --concurrency 10 keeps up to
ten requests of a shard in flight, never two for the same item (docs/concurrency.md).

    WEBHOOK_TOKEN=... python examples/webhook_forwarder.py Users https://hooks.example.com/users
    python examples/webhook_forwarder.py Users http://127.0.0.1:8080/hook \
        --endpoint-url http://127.0.0.1:4566 --drain --dead-letters dead.jsonl
    mv dead.jsonl replaying.jsonl  # letters written meanwhile go to a new dead.jsonl
    python examples/webhook_forwarder.py Users http://127.0.0.1:8080/hook \
        --replay replaying.jsonl --dead-letters dead.jsonl && rm replaying.jsonl

(`flowstream demo --serve` keeps a local endpoint at http://127.0.0.1:4566 with a
`Users` table being written to.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import flowstream as fs
from flowstream import checkpoints, sinks, sources

__all__ = ["build_pipeline", "event", "main"]


def event(record: fs.Record) -> dict[str, Any]:
    """The webhook's body for one change."""
    return {
        "id": record.event_id,
        "type": record.event_name.value,
        "keys": record.keys,
        "new": record.new_image,
        "old": record.old_image,
        "at": record.approximate_creation_time,
    }


def build_pipeline(
    source: sources.Source,
    url: str,
    *,
    batch_size: int = 50,
    token: str | None = None,
    retries: int = 3,
    dead_letter: sinks.Sink | None = None,
    concurrency: int = 1,
) -> fs.Pipeline[dict[str, Any]]:
    """Changes that fail for good go to `dead_letter`; without one, their shard stops.
    With `concurrency` above 1, up to that many requests of a shard are in flight at
    once, never two for one item, so each item's changes still arrive in order."""
    auth = sinks.http.bearer(token) if token else None
    hook = sinks.http(url, batch_size=batch_size, auth=auth)
    return (
        fs.Pipeline(source, name="webhook-forwarder")
        .map(event)
        .to(hook)
        .on_failure(retries=retries, dead_letter=dead_letter)
        .concurrency(concurrency)
    )


async def run(args: argparse.Namespace) -> fs.RunReport:
    source = sources.dynamodb(table=args.table, endpoint_url=args.endpoint_url)
    pipeline = build_pipeline(
        source,
        args.url,
        batch_size=args.batch_size,
        token=os.environ.get("WEBHOOK_TOKEN"),
        retries=args.retries,
        dead_letter=sinks.jsonl(args.dead_letters) if args.dead_letters else None,
        concurrency=args.concurrency,
    )
    if args.replay:
        # the letters' records go through the same steps and sink; the table is not read
        return await fs.replay_dead_letters(pipeline, args.replay)
    print(pipeline.describe(), file=sys.stderr)
    return await pipeline.run(
        checkpoints=checkpoints.sqlite(args.checkpoints), drain=args.drain, handle_signals=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="the table whose stream to read")
    parser.add_argument("url", help="the webhook URL")
    parser.add_argument("--endpoint-url", help="a local endpoint (default: AWS)")
    parser.add_argument("--batch-size", type=int, default=50, help="events per request (50)")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed request (3)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests of a shard in flight at once, in order per item (1)",
    )
    parser.add_argument("--checkpoints", default="webhook_forwarder.db", help="SQLite file")
    parser.add_argument("--drain", action="store_true", help="stop once everything is read")
    parser.add_argument(
        "--dead-letters",
        metavar="PATH",
        help="append changes that fail for good to this jsonl file, and go on "
        "(default: stop the shard at the change)",
    )
    parser.add_argument(
        "--replay",
        metavar="PATH",
        help="instead of reading the stream, send the changes in this dead-letter file "
        "again; those that fail again go to --dead-letters (another file) if given, else "
        "their shard stops there and the exit status is 1",
    )
    args = parser.parse_args(argv)
    if (
        args.replay
        and args.dead_letters
        and Path(args.replay).resolve() == Path(args.dead_letters).resolve()
    ):
        parser.error("--dead-letters must be another file than --replay: move the letters aside")
    try:
        report = anyio.run(run, args)
    except fs.FlowstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
