"""`flowstream tail TABLE`: print a table's changes as they happen, like ``kcat -C``.

It is a real pipeline (`sources.dynamodb` → `.filter(events=, pattern=)` → a sink that
prints), so what it shows is what a pipeline would see, with the same filters. Progress
is kept in memory: tail never writes checkpoints. Every line is flushed, so a pipe sees
it at once; Ctrl-C, SIGTERM and a closed pipe end it quietly with status 0.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from flowstream.cli_options import add_stream_arguments, fail, stream_source
from flowstream.errors import FlowstreamError, PipelineError

if TYPE_CHECKING:
    from flowstream.record import Record

__all__ = ["add_arguments", "main", "pretty"]

_EVENTS: Final = ("INSERT", "MODIFY", "REMOVE")
#: Longest value text in pretty output; longer ones end in "...".
_MAX_VALUE: Final = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stream_arguments(parser)
    parser.add_argument(
        "--from",
        dest="start",
        choices=("trim_horizon", "latest"),
        default="latest",
        help="latest: only changes made from now on (default); trim_horizon: everything "
        "still in the stream (up to 24 hours), then new changes",
    )
    parser.add_argument(
        "--events",
        metavar="NAMES",
        help="only these events, comma-separated: INSERT,MODIFY,REMOVE",
    )
    parser.add_argument(
        "--pattern",
        help="only records matching this Lambda/EventBridge filter pattern (JSON text, or "
        "@FILE); see docs/patterns.md",
    )
    parser.add_argument("--limit", metavar="N", type=int, help="exit after printing N records")
    parser.add_argument(
        "--format",
        choices=("pretty", "json"),
        default="pretty",
        help="pretty: the event, keys and what changed (default); json: one stream record "
        "per line, in the stream's own shape",
    )


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be 1 or more")
    events = None
    if args.events is not None:
        events = [name.strip().upper() for name in args.events.split(",") if name.strip()]
        unknown = [name for name in events if name not in _EVENTS]
        if unknown or not events:
            parser.error(
                f"--events {args.events!r}: name events among INSERT, MODIFY and REMOVE, "
                "comma-separated"
            )
    # A SIGTERM before the run installs its own handlers (while the stream is being
    # opened) ends tail as quietly as one after.
    signal.signal(signal.SIGTERM, _interrupt)
    tail = _Tail(args.format, args.limit)
    try:
        pipeline = _pipeline(args, parser, events, tail)
        anyio.run(tail.run, pipeline)
    except KeyboardInterrupt:
        pass
    except FlowstreamError as exc:
        return fail("tail", exc)
    if tail.pipe_closed:
        # The reader went away: later flushes (at exit too) would fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _pipeline(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    events: list[str] | None,
    tail: _Tail,
) -> Any:
    import flowstream as fs
    from flowstream import sinks

    source = stream_source(args, parser, start=args.start)
    pipeline = fs.Pipeline(source, name="flowstream-tail")
    if events is not None or args.pattern is not None:
        pattern = None if args.pattern is None else _pattern(args.pattern)
        pipeline = pipeline.filter(events=events, pattern=pattern)
    return pipeline.to(sinks.callback(tail.write, name="print"))


def _pattern(text: str) -> Any:
    from flowstream import patterns

    try:
        return patterns.compile(Path(text[1:]).read_text() if text.startswith("@") else text)
    except FlowstreamError as exc:
        raise PipelineError(f"--pattern: {exc}") from None
    except OSError as exc:
        raise PipelineError(f"--pattern {text}: cannot read the file: {exc}") from None


class _Tail:
    """Prints records as the sink receives them, and stops the run at --limit."""

    def __init__(self, format: str, limit: int | None) -> None:
        self.format = format
        self.limit = limit
        self.printed = 0
        self.pipe_closed = False
        self.stop: anyio.Event | None = None

    async def run(self, pipeline: Any) -> None:
        self.stop = anyio.Event()
        await pipeline.run(handle_signals=True, stop=self.stop, grace_period=2.0)

    def write(self, records: list[Record]) -> None:
        """The sink: one line (json) or a few (pretty) per record, flushed at once."""
        out = sys.stdout
        for record in records:
            if self.pipe_closed or (self.limit is not None and self.printed >= self.limit):
                break
            text = record.to_json().decode() if self.format == "json" else pretty(record)
            try:
                out.write(text + "\n")
                out.flush()
            except BrokenPipeError:
                self.pipe_closed = True
                break
            self.printed += 1
        if self.pipe_closed or (self.limit is not None and self.printed >= self.limit):
            assert self.stop is not None
            self.stop.set()


def pretty(record: Record) -> str:
    """The event, the item's keys and what changed between the old and new image:
    ``+`` added, ``-`` removed, ``~`` changed (old -> new)."""
    keys = record.keys
    created = record.approximate_creation_time
    when = created.strftime("%H:%M:%SZ") if created is not None else "--:--:--Z"
    event = record.event_name.value + (" (TTL)" if record.is_ttl_delete else "")
    key_text = " ".join(f"{name}={_value(value)}" for name, value in keys.items())
    lines = [f"{when} {event:<6} {key_text}  seq {record.sequence_number}"]
    old = _without(record.old_image, keys)
    new = _without(record.new_image, keys)
    if old is not None and new is not None:
        for name in sorted(old.keys() | new.keys()):
            if name not in old:
                lines.append(f"  + {name}: {_value(new[name])}")
            elif name not in new:
                lines.append(f"  - {name}: {_value(old[name])}")
            elif old[name] != new[name]:
                lines.append(f"  ~ {name}: {_value(old[name])} -> {_value(new[name])}")
        if len(lines) == 1 and record.event_name.value == "MODIFY":
            lines.append("  (no attribute changed)")
    elif new is not None:
        mark = "+" if record.event_name.value == "INSERT" else "="
        lines.extend(f"  {mark} {name}: {_value(value)}" for name, value in sorted(new.items()))
    elif old is not None:
        lines.extend(f"  - {name}: {_value(value)}" for name, value in sorted(old.items()))
    return "\n".join(lines)


def _without(image: Mapping[str, Any] | None, keys: Mapping[str, Any]) -> dict[str, Any] | None:
    if image is None:
        return None
    return {name: value for name, value in image.items() if name not in keys}


def _value(value: Any) -> str:
    text = _text(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _text(value: Any) -> str:
    """A value as JSON would write it; sets in braces, binary as base64 with ``b64:``."""
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes | bytearray):
        return "b64:" + base64.b64encode(value).decode()
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(sorted(_text(v) for v in value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_text(v)}" for k, v in value.items()) + "}"
    return repr(value)
