"""GetRecords page decode rate: flowstream's fast path against what aiobotocore users
get (botocore's GetRecords parser + boto3's TypeDeserializer), in one process.

    python benchmarks/bench_decode.py [--pages N] [--runs N]

Records per second, min/median/max over the runs, garbage collector on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import botocore.parsers
import botocore.session
from boto3.dynamodb.types import TypeDeserializer
from pages import make_pages

import flowstream as fs
from flowstream.record import decode_page

_OUTPUT = (
    botocore.session.get_session()
    .get_service_model("dynamodbstreams")
    .operation_model("GetRecords")
    .output_shape
)


def botocore_typedeserializer(body: bytes) -> int:
    """Baseline A: parse the body with botocore's GetRecords shape parser, then
    TypeDeserializer on keys and both images of every record."""
    parser = botocore.parsers.create_parser("json")
    parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, _OUTPUT)
    deserialize = TypeDeserializer().deserialize
    n = 0
    for record in parsed["Records"]:
        data = record["dynamodb"]
        for part in ("Keys", "NewImage", "OldImage"):
            image = data.get(part)
            if image is not None:
                {k: deserialize(v) for k, v in image.items()}
        n += 1
    return n


def flowstream_lazy(body: bytes) -> int:
    """flowstream's fast path: page -> lazy records; images never touched."""
    records, _ = decode_page(body)
    return len(records)


def flowstream_filter_keys(body: bytes) -> int:
    """Fast path + what a cache invalidator does: MODIFY/REMOVE, their keys."""
    records, _ = decode_page(body)
    return len([r.keys for r in records if r.event_name != "INSERT"])


def flowstream_images(body: bytes) -> int:
    """Fast path, then keys and both images of every record decoded to Python."""
    records, _ = decode_page(body)
    for r in records:
        r.keys, r.new_image, r.old_image  # noqa: B018 - decoding is the work measured
    return len(records)


CASES: dict[str, Callable[[bytes], int]] = {
    "botocore parser + TypeDeserializer (baseline A)": botocore_typedeserializer,
    "flowstream: page -> records, images lazy": flowstream_lazy,
    "flowstream: + MODIFY/REMOVE keys": flowstream_filter_keys,
    "flowstream: + keys and both images": flowstream_images,
}


def measure(fn: Callable[[bytes], int], pages: list[bytes], runs: int) -> list[float]:
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        count = sum(fn(page) for page in pages)
        rates.append(count / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    pages = make_pages(args.pages)
    total = sum(len(fs.decode_records(p)) for p in pages)
    size = sum(map(len, pages)) / len(pages) / 1024
    print(f"{args.pages} pages, {total} records, {size:.0f} KiB per page, gc on\n")
    results: dict[str, Any] = {}
    for name, fn in CASES.items():
        results[name] = measure(fn, pages, args.runs)
    base = statistics.median(results[next(iter(CASES))])
    print(f"{'path':<50} {'min':>10} {'median':>10} {'max':>10} {'x baseline':>11}")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(
            f"{name:<50} {min(rates):>10,.0f} {median:>10,.0f} {max(rates):>10,.0f} "
            f"{median / base:>10.1f}x"
        )


if __name__ == "__main__":
    main()
