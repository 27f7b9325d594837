"""The `flowstream` command."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import anyio

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowstream", description="Process DynamoDB change streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the embedded demo pipeline")
    demo.add_argument("--changes", type=int, default=200, help="changes to write (200)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from flowstream.demo import run_demo

        anyio.run(lambda: run_demo(changes=args.changes))
    return 0
