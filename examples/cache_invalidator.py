"""A cache invalidator: changes to users in a DynamoDB table become cache invalidations.

A profile that changed (MODIFY) must be purged from the cache, so the next read loads
it again; a user that was deleted (REMOVE) must be evicted. New users (INSERT) are in
no cache yet, and other items (sessions, teams) are not cached: both are filtered out.
Every invalidation is printed as one JSON line, with the attributes that changed.

`build_pipeline()` is the pipeline; `flowstream demo` runs it over a local table. To run
it against a real table (its stream enabled, NEW_AND_OLD_IMAGES for the changed
attributes), with AWS settings from the environment:

    python examples/cache_invalidator.py Users --checkpoints state.db
    python examples/cache_invalidator.py Users --endpoint-url http://127.0.0.1:4566 --drain
    python examples/cache_invalidator.py Users --redis redis://127.0.0.1:6379/0 \
        --purge-url http://cache.internal/purge

(`flowstream demo --serve` keeps a local endpoint at http://127.0.0.1:4566 with a
`Users` table being written to.)

It runs until Ctrl-C (or with --drain, until it has read everything in the stream) and
resumes from its checkpoints the next time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

import flowstream as fs
from flowstream import checkpoints, sinks, sources
from flowstream.sinks import Sink
from flowstream.sources import Source

__all__ = ["build_pipeline", "invalidation", "is_remove", "is_user", "main"]


def is_user(record: fs.Record) -> bool:
    """Only users are cached; their keys look like ``user#<id>``."""
    pk = record.keys.get("pk")
    return isinstance(pk, str) and pk.startswith("user#")


def is_remove(message: dict[str, Any]) -> bool:
    return bool(message["op"] == "REMOVE")


def invalidation(record: fs.Record) -> dict[str, Any]:
    """The message for one change: which key, what happened, and (for a MODIFY whose
    stream has both images) which attributes changed."""
    message: dict[str, Any] = {"key": record.keys["pk"], "op": record.event_name.value}
    old, new = record.old_image, record.new_image
    if old is not None and new is not None:
        message["changed"] = sorted(
            name for name in old.keys() | new.keys() if old.get(name) != new.get(name)
        )
    return message


def build_pipeline(
    source: Source,
    *,
    out: TextIO | None = None,
    purge: Sequence[Sink] = (),
    evict: Sequence[Sink] = (),
) -> fs.Pipeline[dict[str, Any]]:
    """The invalidator over `source`: every invalidation is printed to `out` (stdout);
    MODIFYs also go to the `purge` sinks, REMOVEs to the `evict` sinks."""
    show = sinks.stdout(out)
    return (
        fs.Pipeline(source, name="user-cache")
        .filter(events=["MODIFY", "REMOVE"])  # decided on the event name: no image decoded
        .filter(is_user)
        .map(invalidation)
        .route(
            fs.when(is_remove, show, *evict),
            otherwise=[show, *purge],
        )
    )


async def run(args: argparse.Namespace) -> fs.RunReport:
    source = sources.dynamodb(
        table=args.table, endpoint_url=args.endpoint_url, region=args.region, start=args.start
    )
    # Both invalidations clear the cache: Redis keys are deleted and the HTTP cache
    # purged; REMOVEs are also kept in a file.
    clear: list[Sink] = []
    if args.redis:
        clear.append(sinks.redis(args.redis, key="user-cache:{pk}"))
    if args.purge_url:
        clear.append(sinks.http(args.purge_url, batch_size=100))
    pipeline = build_pipeline(source, purge=clear, evict=[sinks.jsonl(args.evicted), *clear])
    print(pipeline.describe(), file=sys.stderr)
    return await pipeline.run(
        checkpoints=checkpoints.sqlite(args.checkpoints), drain=args.drain, handle_signals=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "table",
        nargs="?",
        default=os.environ.get("USERS_TABLE"),
        help="the table whose stream to read (default: $USERS_TABLE)",
    )
    parser.add_argument(
        "--endpoint-url", help="a local endpoint (default: AWS, or $AWS_ENDPOINT_URL)"
    )
    parser.add_argument("--region", help="the table's region (default: $AWS_DEFAULT_REGION)")
    parser.add_argument(
        "--start",
        choices=["trim_horizon", "latest"],
        default="trim_horizon",
        help="where shards without a checkpoint start (trim_horizon)",
    )
    parser.add_argument(
        "--checkpoints", default="cache_invalidator.db", help="SQLite file (cache_invalidator.db)"
    )
    parser.add_argument(
        "--evicted", default="evicted.jsonl", help="where REMOVE invalidations are appended"
    )
    parser.add_argument(
        "--drain", action="store_true", help="stop once everything in the stream is read"
    )
    parser.add_argument(
        "--redis", help="a Redis URL: delete user-cache:<pk> for every invalidation"
    )
    parser.add_argument(
        "--purge-url", help="an HTTP endpoint that gets the invalidations as JSON arrays"
    )
    args = parser.parse_args(argv)
    if not args.table:
        parser.error("give the table name (or set USERS_TABLE)")
    try:
        report = anyio.run(run, args)
    except fs.FlowstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
