"""Filter patterns: `.filter(pattern=...)`'s matching against the same filter written as
a Python predicate, over the decode benchmark's pages, on one core.

    python3 benchmarks/bench_patterns.py [--quick]

Every case decodes the pages (`decode_page`, fresh records each run, so no case finds
images another one decoded) and keeps the records that are MODIFY events whose new
image has ``active`` true; the figure is records per CPU second, median over the runs,
the cases taking turns in each run. The first row is decoding alone: the floor.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from bench_decode import one_core
from pages import make_pages, stats
from report import Section, text_table

from flowstream import patterns
from flowstream.record import EventName, Record, decode_page
from flowstream.record_view import lambda_view

COMMAND = "python3 benchmarks/bench_patterns.py"
PATTERN = {"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"active": {"BOOL": [True]}}}}
COMPILED = patterns.compile(PATTERN)


def decode_only(records: list[Record]) -> int:
    return len(records)


def by_pattern(records: list[Record]) -> int:
    matches = COMPILED.matches
    return sum(1 for r in records if matches(lambda_view(r)))


def by_images(records: list[Record]) -> int:
    """What a user writes without patterns: the decoded new image."""
    return sum(
        1
        for r in records
        if r.event_name is EventName.MODIFY and (r.new_image or {}).get("active") is True
    )


def by_new_value(records: list[Record]) -> int:
    """flowstream's own lazy attribute read: only `active` is decoded."""
    return sum(
        1 for r in records if r.event_name is EventName.MODIFY and r.new_value("active") is True
    )


CASES: list[tuple[str, Callable[[list[Record]], int]]] = [
    ("decode only (the floor)", decode_only),
    (".filter(pattern=...) (matching in Lambda's shape)", by_pattern),
    ("Python predicate over decoded images (r.new_image)", by_images),
    ("Python predicate with r.new_value('active')", by_new_value),
]


def measure(pages: list[bytes], runs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    rates: dict[str, list[float]] = {name: [] for name, _ in CASES}
    kept: dict[str, int] = {}
    total = sum(len(decode_page(body)[0]) for body in pages)
    for _ in range(runs):
        for name, case in CASES:
            gc.collect()
            started = time.process_time()
            count = 0
            for body in pages:
                records, _ = decode_page(body)
                count += case(records)
            elapsed = time.process_time() - started
            rates[name].append(total / elapsed)
            kept[name] = count
    return rates, kept


def sections(*, quick: bool = False) -> list[Section]:
    pages = make_pages(20 if quick else 100)
    page_stats = stats(pages)
    with one_core():
        rates, kept = measure(pages, 3 if quick else 9)
    filtering = [count for name, count in kept.items() if name != CASES[0][0]]
    assert len(set(filtering)) == 1, f"the cases disagree on what matches: {kept}"
    floor = statistics.median(rates[CASES[0][0]])
    rows: list[tuple[str, ...]] = []
    for name, _ in CASES:
        rate = statistics.median(rates[name])
        per_record = 1e6 / rate - (0.0 if name == CASES[0][0] else 1e6 / floor)
        rows.append(
            (
                name,
                f"{rate:,.0f}",
                "" if name == CASES[0][0] else f"{per_record:.2f}",
                f"{kept[name]:,}" if name != CASES[0][0] else f"{kept[name]:,} read",
            )
        )
    notes = [
        f"Pattern: `{COMPILED.json()}`; the predicates test the same.",
        f"The pages: {page_stats.describe()}.",
        "Records per CPU second of decoding plus filtering, one core, median of the runs; "
        "'µs/record over decoding' is what the filter adds to the floor.",
        "The pattern's matcher splits the new image into raw attributes and decodes only "
        "`active`; the first predicate decodes the whole image into Python values.",
    ]
    return [
        Section(
            "Filter patterns",
            ("case", "records/s", "µs/record over decoding", "kept"),
            rows,
            COMMAND,
            notes,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer pages and runs")
    args = parser.parse_args()
    for section in sections(quick=args.quick):
        print(section.title)
        print(text_table(section.header, section.rows))
        print(*(f"- {note}" for note in section.notes), sep="\n")


if __name__ == "__main__":
    main()
