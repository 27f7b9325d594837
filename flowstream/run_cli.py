"""`flowstream run TARGET`: run a pipeline until stopped (being built)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `run`'s own arguments (TARGET and its options) to its subparser."""
    parser.add_argument("target", metavar="TARGET")


def main(args: argparse.Namespace) -> int:
    """Run the pipeline the parsed `args` name; the process's exit status."""
    raise NotImplementedError("flowstream run is being built")
