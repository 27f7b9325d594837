"""`flowstream pattern`: check a filter pattern against records before putting it on an
event source mapping or in a pipeline."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO

import msgspec

from flowstream import patterns
from flowstream.errors import FlowstreamError
from flowstream.record import Record, decode_records
from flowstream.record_view import lambda_view

__all__ = ["test_pattern"]


def test_pattern(pattern: str, records: str, n_as_numbers: bool, count_only: bool) -> int:
    """Print the records of `records` (a jsonl path, or "-") that match `pattern` (JSON
    text, or @FILE); 0 when some matched, 1 when none did, 2 on an error."""
    try:
        text = Path(pattern[1:]).read_text() if pattern.startswith("@") else pattern
        compiled = patterns.compile(text)
    except (OSError, FlowstreamError) as exc:
        print(f"flowstream pattern: error: {exc}", file=sys.stderr)
        return 2
    matched = seen = 0
    try:
        with _open(records) as lines:
            for record in _records(lines, records):
                seen += 1
                if compiled.matches(lambda_view(record, numbers=n_as_numbers)):
                    matched += 1
                    if not count_only:
                        print(record.to_json().decode(), flush=False)
    except (OSError, _InputError) as exc:
        print(f"flowstream pattern: error: {exc}", file=sys.stderr)
        return 2
    if count_only:
        print(matched)
    print(f"{matched} of {seen} records match", file=sys.stderr)
    return 0 if matched else 1


class _InputError(Exception):
    pass


def _open(path: str) -> AbstractContextManager[IO[str]]:
    if path == "-":
        return nullcontext(sys.stdin)  # left open
    return open(path, encoding="utf-8")


def _records(lines: IO[str], where: str) -> Iterator[Record]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed = msgspec.json.decode(line)
            if not isinstance(parsed, dict):
                raise _InputError("not a JSON object")
            event = parsed if "Records" in parsed else {"Records": [parsed]}
            yield from decode_records(event)
        except (msgspec.DecodeError, FlowstreamError, _InputError) as exc:
            name = "standard input" if where == "-" else where
            raise _InputError(
                f"{name} line {number} is not a stream record or Lambda event: {exc}"
            ) from None
