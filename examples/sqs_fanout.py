"""An SQS fan-out by event type: each kind of change goes to its own queue.

INSERTs go to `<prefix>inserts`, MODIFYs to `<prefix>updates` and REMOVEs to
`<prefix>removes`, as the stream's own JSON records; each shard keeps its order, and a
consumer can deduplicate replays by the record's eventID.

    python examples/sqs_fanout.py Users --queue-prefix users- --create
    python examples/sqs_fanout.py Users --endpoint-url http://127.0.0.1:4566 --create --drain

(`flowstream demo --serve` keeps a local endpoint at http://127.0.0.1:4566 with a
`Users` table being written to.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

import anyio
from aiobotocore.session import get_session

import flowstream as fs
from flowstream import checkpoints, sinks, sources

__all__ = ["EVENTS", "build_pipeline", "main"]

#: The queue (suffix) of each event type.
EVENTS = {"INSERT": "inserts", "MODIFY": "updates", "REMOVE": "removes"}


def build_pipeline(
    source: sources.Source, queues: Mapping[str, sinks.Sink]
) -> fs.Pipeline[fs.Record]:
    """Route each record to the queue of its event type."""
    routes = [fs.when(is_event(event), queue) for event, queue in queues.items()]
    return fs.Pipeline(source, name="sqs-fanout").route(*routes)


def is_event(event: str) -> Callable[[fs.Record], bool]:
    """A route predicate: records of one event type."""

    def matches(record: fs.Record) -> bool:
        return record.event_name == event

    matches.__qualname__ = f"is_{event.lower()}"
    return matches


async def queue_urls(prefix: str, *, endpoint_url: str | None, create: bool) -> dict[str, str]:
    """The URL of each event type's queue (created when asked)."""
    urls = {}
    async with get_session().create_client("sqs", endpoint_url=endpoint_url) as client:
        for event, suffix in EVENTS.items():
            name = prefix + suffix
            if create:
                urls[event] = (await client.create_queue(QueueName=name))["QueueUrl"]
                continue
            try:
                urls[event] = (await client.get_queue_url(QueueName=name))["QueueUrl"]
            except client.exceptions.QueueDoesNotExist:
                raise fs.SinkError(
                    f"queue {name!r} does not exist; pass --create to create the queues, "
                    "or --queue-prefix for queues that exist"
                ) from None
    return urls


async def run(args: argparse.Namespace) -> fs.RunReport:
    urls = await queue_urls(args.queue_prefix, endpoint_url=args.endpoint_url, create=args.create)
    queues = {event: sinks.sqs(url, endpoint_url=args.endpoint_url) for event, url in urls.items()}
    source = sources.dynamodb(table=args.table, endpoint_url=args.endpoint_url)
    pipeline = build_pipeline(source, queues)
    print(pipeline.describe(), file=sys.stderr)
    return await pipeline.run(
        checkpoints=checkpoints.sqlite(args.checkpoints), drain=args.drain, handle_signals=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="the table whose stream to read")
    parser.add_argument("--queue-prefix", default="users-", help="queue name prefix (users-)")
    parser.add_argument("--endpoint-url", help="a local endpoint (default: AWS)")
    parser.add_argument("--create", action="store_true", help="create the queues")
    parser.add_argument("--checkpoints", default="sqs_fanout.db", help="SQLite file")
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
