"""The `flowstream` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from flowstream.errors import FlowstreamError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowstream", description="Process DynamoDB change streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
    return 0
