"""`flowstream describe` and `flowstream status`: a stream's shards as a lineage tree and,
for a pipeline, each shard's checkpoint and how far behind it is.

Shards are listed and read by the project's own DynamoDB source (`sources.dynamodb`),
so what this shows is what a run would see. How far behind a checkpoint is costs one
GetShardIterator and a GetRecords or two (``Limit=1``) per shard that is not done: the
age of the first record after the checkpoint, or that there is none. Checkpoints are
read without claiming them, so a running pipeline is not disturbed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from flowstream.cli_options import (
    add_progress_options,
    add_stream_arguments,
    checkpoint_store,
    fail,
    lease_table,
    stream_source,
)
from flowstream.errors import FlowstreamError

if TYPE_CHECKING:
    from flowstream.checkpoints.base import CheckpointStore
    from flowstream.checkpoints.owner import Claim
    from flowstream.leases.dynamodb import DynamoDBLeases
    from flowstream.sources.base import Shard, StreamSession
    from flowstream.sources.dynamodb import DynamoDBSource

__all__ = ["ShardLine", "add_arguments", "main"]

#: Shards probed at once (each probe is two or three calls).
_PROBES_AT_ONCE: Final = 16
_DONE: Final = "SHARD_END"


def add_arguments(parser: argparse.ArgumentParser, *, status: bool) -> None:
    add_stream_arguments(parser)
    add_progress_options(parser, required=status)
    parser.add_argument(
        "--no-lag",
        action="store_true",
        help="do not read the stream to tell how far behind each checkpoint is",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: a tree (default); json: one JSON object",
    )


@dataclass(slots=True)
class ShardLine:
    """One shard as `describe` shows it (and its JSON form)."""

    shard_id: str
    parent_shard_id: str | None
    closed: bool
    starting_sequence_number: str | None
    ending_sequence_number: str | None
    #: The pipeline's position in the shard (a sequence number, SHARD_END, or a lease's
    #: TRIM_HORIZON / LATEST), None when it has none.
    checkpoint: str | None = None
    #: done | ended | caught_up | behind | not_started | trimmed | unknown; None
    #: without a pipeline.
    progress: str | None = None
    #: Seconds since the first record after the checkpoint was written (behind), or
    #: since the oldest record of a shard not started.
    next_record_age: float | None = None
    #: The worker holding the shard's lease (--leases).
    lease_owner: str | None = None


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = args.command
    if args.checkpoints is not None or args.leases is not None:
        if args.pipeline is None and args.checkpoints is not None:
            parser.error("--checkpoints needs --pipeline NAME (the key of its checkpoints)")
    elif args.pipeline is not None:
        parser.error("--pipeline needs --checkpoints SPEC or --leases TABLE")
    try:
        source = stream_source(args, parser, page_limit=1)
        store = None
        if args.checkpoints is not None:
            store = checkpoint_store(args.checkpoints, existing=True)
        leases = None if args.leases is None else lease_table(args.leases)
        result = anyio.run(_describe, source, store, leases, args.pipeline, not args.no_lag)
    except FlowstreamError as exc:
        return fail(command, exc)
    except KeyboardInterrupt:
        return 130
    stream_arn, shards, header = result
    if args.format == "json":
        document = {
            "stream_arn": stream_arn,
            "pipeline": args.pipeline,
            "status": header,
            "shards": [asdict(line) for line in shards],
        }
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
    else:
        sys.stdout.write(render(stream_arn, shards, header))
    sys.stdout.flush()
    return 0


async def _describe(
    source: DynamoDBSource,
    store: CheckpointStore | None,
    leases: DynamoDBLeases | None,
    pipeline: str | None,
    lag: bool,
) -> tuple[str, list[ShardLine], str | None]:
    async with source.open() as session:
        listed = await session.list_shards()
        lines = [
            ShardLine(
                s.shard_id,
                s.parent_shard_id,
                s.closed,
                s.starting_sequence_number,
                s.ending_sequence_number,
            )
            for s in listed
        ]
        if store is None and leases is None:
            return session.stream_id, lines, None
        if leases is not None:
            async with leases.open() as table:
                held = {lease.key: lease for lease in await table.scan()}
            for line in lines:
                lease = held.get(line.shard_id)
                if lease is not None:
                    line.checkpoint = lease.checkpoint
                    line.lease_owner = lease.owner
            owners = sorted({o for o in (lease.owner for lease in held.values()) if o})
            header = f"lease table {leases.table}: " + (
                f"held by {', '.join(owners)}" if owners else "no lease held"
            )
        else:
            assert store is not None
            assert pipeline is not None
            stored = await store.inspect(pipeline, session.stream_id)
            for line in lines:
                line.checkpoint = stored.positions.get(line.shard_id)
            header = _claim_text(store.describe(), stored.claim)
        for line in lines:
            line.progress = _known_progress(line)
        if lag:
            limiter = anyio.CapacityLimiter(_PROBES_AT_ONCE)
            async with anyio.create_task_group() as group:
                for line, shard in zip(lines, listed, strict=True):
                    if line.progress is None:
                        group.start_soon(_probe, session, shard, line, limiter)
        for line in lines:
            if line.progress is None:
                line.progress = "not_started" if _unstarted(line.checkpoint) else "unknown"
        return session.stream_id, lines, header


def _unstarted(checkpoint: str | None) -> bool:
    return checkpoint in (None, "TRIM_HORIZON", "LATEST")


def _known_progress(line: ShardLine) -> str | None:
    """What the checkpoint says alone; None when reading the shard would tell more."""
    if line.checkpoint == _DONE:
        return "done"
    if (
        line.closed
        and line.checkpoint is not None
        and line.checkpoint == line.ending_sequence_number
    ):
        return "ended"
    return None


async def _probe(
    session: StreamSession, shard: Shard, line: ShardLine, limiter: anyio.CapacityLimiter
) -> None:
    """How far behind `line.checkpoint` is: read (Limit=1) from just after it, or from
    the start of a shard not started."""
    from flowstream.errors import TrimmedDataError
    from flowstream.sources.base import TRIM_HORIZON, Position

    checkpoint = line.checkpoint
    start = TRIM_HORIZON if _unstarted(checkpoint) else Position.after(str(checkpoint))
    async with limiter:
        reader = session.reader(shard, start)
        try:
            # A first empty page is no proof that nothing follows (DynamoDB may answer
            # one with records behind it): only a second in a row is taken as caught up.
            for _ in range(2):
                page = await reader.read()
                if page.records:
                    created = page.records[0].approximate_creation_time
                    if created is not None:
                        line.next_record_age = max(
                            0.0, (datetime.now(UTC) - created).total_seconds()
                        )
                    line.progress = "not_started" if _unstarted(checkpoint) else "behind"
                    return
                if page.ended:
                    line.progress = "not_started" if _unstarted(checkpoint) else "ended"
                    return
            line.progress = "not_started" if _unstarted(checkpoint) else "caught_up"
        except TrimmedDataError:
            line.progress = "trimmed"
        finally:
            await reader.aclose()


def _claim_text(store: str, claim: Claim | None) -> str:
    from flowstream.checkpoints.owner import Claim, may_take

    if claim is None:
        return f"checkpoints {store}: not running"
    now = time.time()
    age = max(0.0, now - claim.heartbeat)
    if may_take(claim, Claim.mine(), now):
        return f"checkpoints {store}: not running (the claim of {claim.owner} is stale)"
    return f"checkpoints {store}: running in {claim.owner} (heartbeat {age:.0f}s ago)"


def render(stream_arn: str, shards: Sequence[ShardLine], header: str | None) -> str:
    """The text form: the stream, the pipeline's state, and the shards as a tree."""
    open_count = sum(not s.closed for s in shards)
    out = [f"stream {stream_arn}: {len(shards)} shard(s), {open_count} open"]
    if header is not None:
        out.append(header)
    by_id = {s.shard_id: s for s in shards}
    children: dict[str | None, list[ShardLine]] = {}
    for shard in shards:
        parent = shard.parent_shard_id if shard.parent_shard_id in by_id else None
        children.setdefault(parent, []).append(shard)
    for siblings in children.values():
        siblings.sort(key=lambda s: (int(s.starting_sequence_number or 0), s.shard_id))

    def walk(shard: ShardLine, lead: str, branch: str) -> None:
        out.append(f"{lead}{branch}{_describe_line(shard, by_id)}")
        kids = children.get(shard.shard_id, [])
        below = lead + ("" if not branch else "    " if branch == "└── " else "│   ")
        for n, kid in enumerate(kids):
            walk(kid, below, "└── " if n == len(kids) - 1 else "├── ")

    for root in children.get(None, []):
        walk(root, "", "")
    return "\n".join(out) + "\n"


def _describe_line(shard: ShardLine, by_id: Mapping[str, ShardLine]) -> str:
    start = shard.starting_sequence_number or "?"
    end = shard.ending_sequence_number or ""
    parts = [shard.shard_id, "closed" if shard.closed else "open", f"{start}..{end}"]
    if shard.parent_shard_id is not None and shard.parent_shard_id not in by_id:
        parts.append(f"(parent {shard.parent_shard_id} no longer listed)")
    if shard.progress is not None:
        parts.append(_progress_text(shard))
    if shard.lease_owner is not None:
        parts.append(f"[lease: {shard.lease_owner}]")
    return "  ".join(parts)


def _progress_text(shard: ShardLine) -> str:
    age = "" if shard.next_record_age is None else _age(shard.next_record_age)
    checkpoint = f"checkpoint {shard.checkpoint}"
    match shard.progress:
        case "done":
            return f"{checkpoint}: done"
        case "ended":
            return f"{checkpoint}: read to its end (SHARD_END not saved yet)"
        case "caught_up":
            return f"{checkpoint}: caught up"
        case "behind":
            return f"{checkpoint}: behind, next record {age or 'of unknown age'} old"
        case "trimmed":
            return f"{checkpoint}: records after it were trimmed (lost)"
        case "not_started":
            what = "not started"
            if shard.checkpoint is not None:
                what += f" ({shard.checkpoint})"
            return f"{what}, oldest record {age} old" if age else what
        case _:
            return checkpoint


def _age(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
