"""A table replicator: every change to one DynamoDB table is applied to another.

INSERT and MODIFY put the new image, REMOVE deletes the key; each item's changes land in
order, and a restart resumes from the checkpoint. The source table's stream must carry
new images (NEW_IMAGE or NEW_AND_OLD_IMAGES); the target table must have the same key.

    python examples/table_replicator.py Users UsersCopy --checkpoints replicator.db
    python examples/table_replicator.py Users UsersCopy --create \
        --endpoint-url http://127.0.0.1:4566

(`flowstream demo --serve` keeps a local endpoint at http://127.0.0.1:4566 with a
`Users` table being written to.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio
from aiobotocore.session import get_session

import flowstream as fs
from flowstream import checkpoints, sinks, sources

__all__ = ["build_pipeline", "main"]


def build_pipeline(source: sources.Source, target: sinks.Sink) -> fs.Pipeline[fs.Record]:
    """The replicator: records go to the target table as they are."""
    return fs.Pipeline(source, name="replicator").to(target)


async def create_like(table: str, target: str, *, endpoint_url: str | None) -> None:
    """Create `target` with `table`'s key schema (on-demand), unless it exists."""
    session = get_session()
    async with session.create_client("dynamodb", endpoint_url=endpoint_url) as client:
        existing = await client.list_tables()
        if target in existing["TableNames"]:
            return
        described = (await client.describe_table(TableName=table))["Table"]
        await client.create_table(
            TableName=target,
            KeySchema=described["KeySchema"],
            AttributeDefinitions=described["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )


async def run(args: argparse.Namespace) -> fs.RunReport:
    if args.create:
        await create_like(args.table, args.target, endpoint_url=args.endpoint_url)
    source = sources.dynamodb(table=args.table, endpoint_url=args.endpoint_url)
    target = sinks.dynamodb(args.target, endpoint_url=args.endpoint_url)
    pipeline = build_pipeline(source, target)
    print(pipeline.describe(), file=sys.stderr)
    return await pipeline.run(
        checkpoints=checkpoints.sqlite(args.checkpoints), drain=args.drain, handle_signals=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="the table whose stream to read")
    parser.add_argument("target", help="the table to write to")
    parser.add_argument("--endpoint-url", help="a local endpoint (default: AWS)")
    parser.add_argument("--create", action="store_true", help="create the target table")
    parser.add_argument("--checkpoints", default="replicator.db", help="SQLite file")
    parser.add_argument("--drain", action="store_true", help="stop once everything is read")
    args = parser.parse_args(argv)
    try:
        report = anyio.run(run, args)
    except fs.FlowstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
