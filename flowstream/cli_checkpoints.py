"""`flowstream checkpoints reset|set`: move a pipeline's checkpoints on purpose.

A run's own saves never move a checkpoint backwards; these commands do, through the
store's `overwrite()`. Both print what would change and change nothing without
``--yes``. A pipeline that is running on the checkpoints is refused (its next save
would undo the change): stop it first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from flowstream.cli_options import (
    CHECKPOINTS_HELP,
    add_stream_arguments,
    checkpoint_store,
    fail,
    stream_source,
)
from flowstream.errors import FlowstreamError, PipelineError

if TYPE_CHECKING:
    from flowstream.checkpoints.base import CheckpointStore, StoredCheckpoints
    from flowstream.sources.base import Shard
    from flowstream.sources.dynamodb import DynamoDBSource

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser, *, action: str) -> None:
    add_stream_arguments(parser)
    parser.add_argument(
        "--pipeline",
        metavar="NAME",
        required=True,
        help="the pipeline's name (fs.Pipeline(..., name=NAME)): its checkpoints' key",
    )
    parser.add_argument("--checkpoints", metavar="SPEC", required=True, help=CHECKPOINTS_HELP)
    if action == "reset":
        parser.add_argument(
            "--shard",
            metavar="ID",
            action="append",
            help="reset only this shard (repeat for more); default: every shard",
        )
    else:
        parser.add_argument(
            "--position",
            dest="positions",
            metavar="SHARD=POSITION",
            action="append",
            required=True,
            help="a shard id and its new checkpoint: a sequence number (the last record "
            "done; reading goes on after it) or SHARD_END (repeat for more shards)",
        )
    parser.add_argument(
        "--yes", action="store_true", help="make the change (without it: show it only)"
    )


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = f"checkpoints {args.action}"
    try:
        wanted = None if args.action == "reset" else _parse_positions(args.positions)
        source = stream_source(args, parser)
        store = checkpoint_store(args.checkpoints, existing=True)
        return anyio.run(_change, source, store, args, wanted, command)
    except FlowstreamError as exc:
        return fail(command, exc)
    except KeyboardInterrupt:
        return 130


def _parse_positions(items: Sequence[str]) -> dict[str, str]:
    from flowstream.checkpoints.base import SHARD_END, is_position

    positions: dict[str, str] = {}
    for item in items:
        shard, equals, position = item.partition("=")
        if not equals or not shard or not is_position(position):
            raise PipelineError(
                f"{item!r} is not SHARD=POSITION; write e.g. shardId-00000001700000000000-"
                f"abcdef01=4000000000000000000001 (a sequence number) or SHARD=" + SHARD_END
            )
        positions[shard] = position
    return positions


async def _change(
    source: DynamoDBSource,
    store: CheckpointStore,
    args: argparse.Namespace,
    wanted: dict[str, str] | None,
    command: str,
) -> int:
    async with source.open() as session:
        shards = {shard.shard_id: shard for shard in await session.list_shards()}
        stream_id = session.stream_id
    stored = await store.inspect(args.pipeline, stream_id)
    if wanted is None:
        changes = _resets(stored.positions, args.shard)
    else:
        changes = _sets(stored.positions, wanted, shards)
    print(f"pipeline {args.pipeline!r} on {store.describe()}, stream {stream_id}:")
    if not changes:
        print("  nothing to change")
        return 0
    for shard_id, position in changes.items():
        before = stored.positions.get(shard_id, "(none)")
        after = "(none: the shard starts where the pipeline's start= says)"
        print(f"  {shard_id}: {before} -> {after if position is None else position}")
    _refuse_while_running(store, args.pipeline, stored)
    if not args.yes:
        print(
            f"flowstream {command}: nothing changed; run again with --yes to make "
            f"{'this change' if len(changes) == 1 else f'these {len(changes)} changes'}",
            file=sys.stderr,
        )
        return 1
    await store.overwrite(args.pipeline, stream_id, changes)
    print(f"changed {len(changes)} checkpoint(s)")
    return 0


def _resets(positions: Mapping[str, str], only: Sequence[str] | None) -> dict[str, str | None]:
    if only is None:
        return dict.fromkeys(sorted(positions))
    missing = [shard for shard in only if shard not in positions]
    if missing:
        raise PipelineError(
            f"--shard {missing[0]}: the pipeline has no checkpoint for this shard; "
            "`flowstream status` lists the shards and their checkpoints"
        )
    return dict.fromkeys(only)


def _sets(
    positions: Mapping[str, str], wanted: Mapping[str, str], shards: Mapping[str, Shard]
) -> dict[str, str | None]:
    from flowstream.checkpoints.base import SHARD_END

    changes: dict[str, str | None] = {}
    for shard_id, position in wanted.items():
        shard = shards.get(shard_id)
        if shard is None:
            raise PipelineError(
                f"shard {shard_id} is not in the stream (trimmed, or a typo); "
                "`flowstream describe` lists its shards"
            )
        if position != SHARD_END:
            start, end = shard.starting_sequence_number, shard.ending_sequence_number
            if start is not None and int(position) < int(start):
                raise PipelineError(
                    f"{shard_id}={position}: the shard starts at {start}; give a sequence "
                    "number in its range, or reset the checkpoint to read it from its start"
                )
            if end is not None and int(position) > int(end):
                raise PipelineError(
                    f"{shard_id}={position}: the shard ends at {end}; give a sequence "
                    f"number in its range, or {SHARD_END} to skip the rest of it"
                )
        if positions.get(shard_id) != position:
            changes[shard_id] = position
    return changes


def _refuse_while_running(store: CheckpointStore, pipeline: str, stored: StoredCheckpoints) -> None:
    from flowstream.checkpoints.owner import Claim, busy_error, may_take

    claim, now = stored.claim, time.time()
    if claim is not None and not may_take(claim, Claim.mine(), now):
        raise busy_error(store.describe(), pipeline, claim, now)
