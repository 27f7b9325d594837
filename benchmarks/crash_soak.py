"""Crash soak: a pipeline killed with SIGKILL at random moments, cycle after cycle, then
drained; prove from its delivery log that nothing was lost (tests/crash/harness.py).

    python benchmarks/crash_soak.py [--cycles N] [--records N] [--shards N] [--seed N]
                                    [--store {sqlite,dynamodb}] [--per-cycle] [--keep DIR]

`--cycles` kills (then one draining run) over a stream of `--records` records in
`--shards` shards (one of them split halfway). The table gives cycles, deliveries,
duplicates per cycle (max/mean), the largest replay per shard next to its in-flight
window, lost records (must be 0) and wall time. `--store dynamodb` keeps the checkpoints
in moto's server (started here). Exits 1 when a check fails; the message names the
seed, cycle, shard and sequence numbers.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from functools import partial
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from crash.harness import (
    CrashConfig,
    StoreFactory,
    dynamodb_store,
    format_report,
    run_crash_test,
    sqlite_store,
)
from moto_server import MotoServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="kill/restart cycles")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--store", choices=["sqlite", "dynamodb"], default="sqlite")
    parser.add_argument("--page-limit", type=int, default=50)
    parser.add_argument("--polls-per-second", type=float, default=20.0)
    parser.add_argument("--flush-interval", type=float, default=0.05)
    parser.add_argument("--per-cycle", action="store_true", help="a row per cycle too")
    parser.add_argument("--keep", type=Path, help="keep the logs in this directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    config = CrashConfig(
        records=args.records,
        shards=args.shards,
        kills=args.cycles,
        seed=seed,
        page_limit=args.page_limit,
        polls_per_second=args.polls_per_second,
        flush_interval=args.flush_interval,
    )
    print(f"seed {seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        progress = None if args.quiet else partial(print, flush=True)
        run = partial(run_crash_test, progress=progress)
        if args.store == "dynamodb":
            with MotoServer() as moto:
                factory: StoreFactory = dynamodb_store(moto.url, f"crash-soak-{seed}")
                report = anyio.run(run, config, factory, workdir)
        else:
            report = anyio.run(run, config, sqlite_store, workdir)
    print()
    if report.violations:
        print(report.failure_message())
        return 1
    print(format_report(report, per_cycle=args.per_cycle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
