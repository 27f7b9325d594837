"""Every benchmark in one run, written to docs/performance.md.

    python3 benchmarks/run_all.py [--quick] [--only decode,e2e,...] [--no-write]

Each module's tables put flowstream next to the baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time

from report import Section, write_page

#: (short name, module) in the order the page shows them
BENCHMARKS = [
    ("decode", "bench_decode"),
    ("e2e", "bench_e2e"),
    ("scale", "bench_scale"),
    ("latency", "bench_latency"),
    ("sinks", "bench_sinks"),
    ("leases", "bench_leases"),
    ("lambda", "bench_lambda"),
    ("patterns", "bench_patterns"),
    ("concurrency", "bench_concurrency"),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and records")
    parser.add_argument("--only", help="comma-separated: " + ",".join(n for n, _ in BENCHMARKS))
    parser.add_argument("--no-write", action="store_true", help="do not write the page")
    # with --only, the page keeps the other benchmarks' sections and replaces these
    args = parser.parse_args()
    chosen = [n for n, _ in BENCHMARKS] if not args.only else args.only.split(",")
    unknown = set(chosen) - {n for n, _ in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    # Local servers only; these credentials never leave the machine.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sections: list[Section] = []
    for name, module_name in BENCHMARKS:
        if name not in chosen:
            continue
        started = time.perf_counter()
        print(f"== {name} ==", flush=True)
        module = importlib.import_module(module_name)
        found: list[Section] = module.sections(quick=args.quick)
        for section in found:
            print(section.text(), "", sep="\n", flush=True)
        sections += found
        gc.collect()
        print(f"({name}: {time.perf_counter() - started:.0f}s)\n", flush=True)
    if not args.no_write:
        write_page(sections, merge=bool(args.only))
        print("written to docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
