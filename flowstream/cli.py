"""The `flowstream` command."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from flowstream.cli_options import add_global_options, apply_global_options, fail
from flowstream.errors import FlowstreamError, PipelineError
from flowstream.pipeline import Pipeline

__all__ = ["load_pipeline", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowstream",
        description="Process DynamoDB change streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "AWS settings come from the standard chain (AWS_* variables, profiles, roles); "
            "the options\nabove, given before the command, set AWS_ENDPOINT_URL, "
            "AWS_DEFAULT_REGION/AWS_REGION and\nAWS_PROFILE for the whole process.\n\n"
            "example:\n  flowstream --endpoint-url http://localhost:4566 describe Orders"
        ),
    )
    parser.add_argument("--version", action="version", version=f"flowstream {_version()}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = _add_operating_commands(commands)
    lint = commands.add_parser(
        "lint",
        help="build a pipeline and print its plan, or the mistake that stops it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Import TARGET, build the pipeline and print its plan. A mistake (a "
            "PipelineError, also one raised while importing TARGET, or a pipeline with "
            "nothing at its end) is printed on one line and exits 1; nothing is read "
            "and no AWS call is made."
        ),
        epilog=(
            "example:\n  flowstream lint myapp.pipelines:orders\n"
            "  flowstream lint jobs/orders.py:build"
        ),
    )
    lint.add_argument(
        "target",
        metavar="TARGET",
        help="MODULE:NAME or path/to/file.py:NAME: a Pipeline or a function returning one",
    )
    demo = commands.add_parser(
        "demo",
        help="run the embedded demo: a cache invalidator over a local DynamoDB table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Start a local DynamoDB (moto's server, from the local extra), write changes to "
            "a Users table and run a cache invalidator over its stream; or, with --serve, "
            "keep the endpoint up for the examples and the other commands."
        ),
        epilog=("example:\n  flowstream demo --seconds 10\n  flowstream demo --serve --port 4566"),
    )
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to write changes (5)")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep the local endpoint up (and writing) for the examples, until Ctrl-C",
    )
    demo.add_argument("--port", type=int, default=4566, help="the endpoint's port with --serve")
    replay = commands.add_parser(
        "replay",
        help="feed dead letters back through a pipeline once the cause is fixed",
        description=(
            "Replay the dead letters in LETTERS (a jsonl file a dead_letter=sinks.jsonl(...) "
            "wrote) through a pipeline's steps and sinks. Letters that fail again follow "
            "the pipeline's on_failure: its dead-letter sink, or a stopped shard (exit 1). "
            "The file is not changed."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example:\n  mv dead.jsonl replaying.jsonl\n"
            "  flowstream replay replaying.jsonl --pipeline jobs/orders.py:build"
        ),
    )
    replay.add_argument("letters", help="the jsonl file of dead letters")
    replay.add_argument(
        "--pipeline",
        required=True,
        metavar="MODULE:NAME",
        help="where the pipeline is: a module or .py file, a colon, and a Pipeline or a "
        "function returning one (e.g. myapp.pipelines:orders or jobs/orders.py:build)",
    )
    replay.add_argument(
        "--only-pipeline", metavar="NAME", help="replay only the letters this pipeline wrote"
    )
    pattern = commands.add_parser(
        "pattern",
        help="test a Lambda/EventBridge filter pattern against records",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Print the records that match PATTERN, one JSON line each, as Lambda's filter "
            "would keep them (a record is matched in Lambda's JSON shape). RECORDS is a "
            "jsonl file (or - for standard input) of stream records, Lambda event records, "
            'or whole Lambda events ({"Records": [...]}). Exit status: 0 when a record '
            "matched, 1 when none did, 2 on an error (an invalid pattern, unreadable input)."
        ),
        epilog=(
            "example:\n  flowstream pattern "
            '\'{"eventName": ["MODIFY"], "dynamodb": {"NewImage": '
            '{"status": {"S": ["active"]}}}}\' changes.jsonl'
        ),
    )
    pattern.add_argument("pattern", help="the pattern: JSON text, or @FILE to read it from FILE")
    pattern.add_argument(
        "records", nargs="?", default="-", help="a jsonl file of records (default: stdin)"
    )
    pattern.add_argument(
        "--n-as-numbers",
        action="store_true",
        help="compare N values as numbers (flowstream's opt-in; Lambda cannot)",
    )
    pattern.add_argument("--count", action="store_true", help="print only how many records matched")
    args = parser.parse_args(argv)
    try:
        apply_global_options(args)
    except FlowstreamError as exc:
        command = args.command
        return fail(f"checkpoints {args.action}" if command == "checkpoints" else command, exc)
    if args.command in ("describe", "status", "tail", "checkpoints", "run"):
        return _operate(args, subparsers)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        if args.seconds < 0:
            parser.error("--seconds must be 0 or more")
        from flowstream.demo import run_demo, serve_demo

        try:
            if args.serve:
                anyio.run(lambda: serve_demo(port=args.port))
            else:
                anyio.run(lambda: run_demo(seconds=args.seconds))
        except FlowstreamError as exc:
            print(f"flowstream demo: error: {exc}", file=sys.stderr)
            return 1
    if args.command == "lint":
        return _lint(args.target)
    if args.command == "pattern":
        from flowstream.pattern_cli import test_pattern

        return test_pattern(args.pattern, args.records, args.n_as_numbers, args.count)
    if args.command == "replay":
        return _replay(args.letters, args.pipeline, args.only_pipeline)
    return 0


def _add_operating_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> dict[str, argparse.ArgumentParser]:
    """The commands of an operator: run, describe, status, tail, checkpoints. Their
    modules are imported when they run, not to build the parser."""
    from flowstream import cli_checkpoints, cli_describe, cli_run, cli_tail

    raw = argparse.RawDescriptionHelpFormatter
    run = commands.add_parser(
        "run",
        help="run a pipeline until stopped (SIGTERM or Ctrl-C stop it gracefully)",
        formatter_class=raw,
        description=(
            "Import TARGET (MODULE:NAME or path/to/file.py:NAME, a Pipeline or a function "
            "returning one) and run it until it is stopped: SIGTERM and SIGINT stop it "
            "gracefully (in-flight work finishes, checkpoints are written)."
        ),
        epilog=(
            "example:\n  flowstream run jobs/orders.py:build --checkpoints sqlite:state.db\n"
            "  flowstream --region eu-west-1 run myapp.pipelines:orders "
            "--checkpoints dynamodb:flowstream-checkpoints"
        ),
    )
    cli_run.add_arguments(run)
    describe = commands.add_parser(
        "describe",
        help="a stream's shards as a lineage tree; with a pipeline, how far behind it is",
        formatter_class=raw,
        description=(
            "List the shards of TABLE's latest stream (or of --stream-arn ARN) as a lineage "
            "tree: parents above their children, open or closed, and their sequence number "
            "ranges. With --pipeline NAME --checkpoints SPEC (or --leases TABLE), also each "
            "shard's checkpoint and how far behind it is: done (SHARD_END), read to its end, "
            "caught up, behind (with the age of the next record), not started, or trimmed. "
            "Checkpoints are only read: a running pipeline keeps its claim on them. Exit "
            "status: 0, 1 on an error, 2 on a usage error."
        ),
        epilog=(
            "example:\n  flowstream describe Orders\n"
            "  flowstream describe Orders --pipeline orders --checkpoints sqlite:state.db\n"
            "  flowstream describe --stream-arn arn:aws:dynamodb:us-east-1:123456789012:"
            "table/Orders/stream/2026-01-01T00:00:00.000 --format json"
        ),
    )
    cli_describe.add_arguments(describe, status=False)
    status = commands.add_parser(
        "status",
        help="a pipeline's checkpoints against the stream (describe with a pipeline)",
        formatter_class=raw,
        description=(
            "The same as `describe` with --pipeline and --checkpoints (or --leases), both "
            "required: whether the pipeline runs, and each shard's checkpoint and how far "
            "behind it is. Exit status: 0, 1 on an error, 2 on a usage error."
        ),
        epilog=(
            "example:\n  flowstream status Orders --pipeline orders --checkpoints "
            "dynamodb:flowstream-checkpoints\n"
            "  flowstream status Orders --leases orders-leases"
        ),
    )
    cli_describe.add_arguments(status, status=True)
    tail = commands.add_parser(
        "tail",
        help="print a table's changes as they happen (like kcat -C)",
        formatter_class=raw,
        description=(
            "Print the changes of TABLE (or --stream-arn ARN) as they happen, through a "
            "pipeline with in-memory progress (no checkpoint is written). pretty shows the "
            "event, the keys and what changed between the old and new image (+ added, - "
            "removed, ~ changed); json prints each stream record on one line in the "
            "stream's shape (plus shardId), which `flowstream pattern` and "
            "fs.decode_records read back. Ctrl-C, SIGTERM, --limit and a closed pipe end "
            "it with status 0; an error exits 1, a usage error 2."
        ),
        epilog=(
            "example:\n  flowstream tail Orders\n"
            "  flowstream tail Orders --from trim_horizon --events MODIFY,REMOVE --limit 10\n"
            "  flowstream tail Orders --format json --pattern "
            '\'{"dynamodb": {"NewImage": {"status": {"S": ["failed"]}}}}\' | jq .'
        ),
    )
    cli_tail.add_arguments(tail)
    checkpoints = commands.add_parser(
        "checkpoints",
        help="move or reset a pipeline's checkpoints (needs --yes)",
        formatter_class=raw,
        description=(
            "Change a pipeline's checkpoints on purpose: `reset` deletes them (the shards "
            "are read again from where the pipeline's start= says, trim_horizon by "
            "default), `set` puts them where you say, backwards too. Without --yes, print "
            "what would change and exit 1. A pipeline running on the checkpoints is "
            "refused: stop it first. Exit status: 0 changed (or nothing to change), 1 an "
            "error or no --yes, 2 a usage error."
        ),
        epilog=(
            "example:\n  flowstream checkpoints reset Orders --pipeline orders "
            "--checkpoints sqlite:state.db --yes\n"
            "  flowstream checkpoints set Orders --pipeline orders --checkpoints "
            "sqlite:state.db \\\n      --position shardId-00000001700000000000-abcdef01="
            "4000000000000000000001 --yes"
        ),
    )
    actions = checkpoints.add_subparsers(dest="action", required=True)
    reset = actions.add_parser(
        "reset",
        help="delete a pipeline's checkpoints (all, or --shard ones)",
        formatter_class=raw,
        description=(
            "Delete the pipeline's checkpoints on TABLE's stream, or only those of --shard "
            "ID: those shards are read again from where the pipeline's start= says. Without "
            "--yes, print what would change and exit 1."
        ),
        epilog=(
            "example:\n  flowstream checkpoints reset Orders --pipeline orders "
            "--checkpoints sqlite:state.db --yes"
        ),
    )
    cli_checkpoints.add_arguments(reset, action="reset")
    set_ = actions.add_parser(
        "set",
        help="put a pipeline's checkpoints where you say (backwards too)",
        formatter_class=raw,
        description=(
            "Set the checkpoint of each --position SHARD to POSITION: a sequence number (the last "
            "record done; reading goes on after it) or SHARD_END (the shard is done). "
            "Without --yes, print what would change and exit 1."
        ),
        epilog=(
            "example:\n  flowstream checkpoints set Orders --pipeline orders "
            "--checkpoints dynamodb:flowstream-checkpoints \\\n"
            "      --position shardId-00000001700000000000-abcdef01=SHARD_END --yes"
        ),
    )
    cli_checkpoints.add_arguments(set_, action="set")
    return {
        "run": run,
        "describe": describe,
        "status": status,
        "tail": tail,
        "reset": reset,
        "set": set_,
    }


def _operate(args: argparse.Namespace, parsers: dict[str, argparse.ArgumentParser]) -> int:
    # A warning of the source or a store (retries, a disabled stream) is one line.
    logging.basicConfig(level=logging.WARNING, format="flowstream: %(levelname)s: %(message)s")
    if args.command == "run":
        from flowstream import cli_run

        return cli_run.main(args)
    if args.command in ("describe", "status"):
        from flowstream import cli_describe

        return cli_describe.main(args, parsers[args.command])
    if args.command == "tail":
        from flowstream import cli_tail

        return cli_tail.main(args, parsers["tail"])
    from flowstream import cli_checkpoints

    return cli_checkpoints.main(args, parsers[args.action])


def _replay(letters: str, where: str, only_pipeline: str | None) -> int:
    from flowstream.errors import ShardStoppedError
    from flowstream.replay import replay_dead_letters

    try:
        pipeline = load_pipeline(where)
        report = anyio.run(
            lambda: replay_dead_letters(pipeline, letters, only_pipeline=only_pipeline)
        )
    except ShardStoppedError as exc:
        print(exc.report.summary())
        print(f"flowstream replay: {exc}", file=sys.stderr)
        return 1
    except FlowstreamError as exc:
        print(f"flowstream replay: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _version() -> str:
    from flowstream import __version__

    return __version__


def _lint(target: str) -> int:
    try:
        pipeline = load_pipeline(target, option="TARGET")
        print(pipeline.describe())
        pipeline.compile()
    except FlowstreamError as exc:
        print(f"flowstream lint: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the user's module raised while being imported or built
        print(f"flowstream lint: error: {target}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def load_pipeline(where: str, *, option: str = "--pipeline") -> Pipeline[Any]:
    """The pipeline at ``module:name`` or ``path/to/file.py:name``: a `Pipeline`, or a
    function taking no arguments that returns one."""
    module_name, _, name = where.rpartition(":")
    if not module_name or not name:
        raise PipelineError(
            f"{option} {where!r} is not MODULE:NAME; write e.g. myapp.pipelines:orders "
            "or jobs/orders.py:build_pipeline"
        )
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise PipelineError(
            f"{option} {where!r}: cannot import {module_name}: {exc}; check the module "
            "path (run from the directory it is importable from) or give a .py file"
        ) from None
    found = getattr(module, name, None)
    if found is not None and not isinstance(found, Pipeline) and callable(found):
        found = found()
    if not isinstance(found, Pipeline):
        if inspect.iscoroutine(found):
            found.close()  # an async function was named: never awaited, so no warning
        raise PipelineError(
            f"{option} {where!r}: {name} in {module_name} is "
            f"{'missing' if found is None else type(found).__name__}, not a Pipeline; name "
            "a Pipeline or a function with no arguments that returns one"
        )
    return found
