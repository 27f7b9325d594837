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

from flowstream.errors import FlowstreamError, PipelineError
from flowstream.pipeline import Pipeline

__all__ = ["load_pipeline", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowstream", description="Process DynamoDB change streams."
    )
    parser.add_argument("--version", action="version", version=f"flowstream {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
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
