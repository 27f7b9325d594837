"""SIGKILL during per-key concurrent delivery, and during a batching window, loses
nothing: the crash harness (tests/crash/harness.py) runs a real pipeline with
`.concurrency(8)` (and one with `.batching(0.2)`) over a stream whose records share 64
partition keys, against a sink that takes a few milliseconds per call, kills it at seeded
random moments, restarts it, and drains it at the end. From the delivery log it proves:

- every record was delivered at least once;
- within a run, each key's records came in order with no gap from the loaded position
  (per shard with a batching window alone), and each key's first deliveries in order;
- no save passed a record that was not delivered: a saved position is below the
  contiguous delivered prefix of every run so far, and of the saving run alone;
- what a kill leaves to replay, per shard, fits the in-flight window
  page_limit x (floor(R x T) + 1 + pages_ahead), T the time from the last durable
  snapshot to the kill, R the reader's polls a second; pages_ahead is what may be read
  and not settled at a snapshot: with concurrency 4 pages delivered at once + 1 the
  consumer holds + 2 read ahead = 7; with a 0.2 s window (R = 20), one gathered work of
  at most floor(20 x 0.2) + 3 = 7 pages + 2 read ahead = 9. Duplicates per run and shard
  never exceed the windows of the kills whose deliveries reach past its loaded position.

Only the sqlite store: the stores' own crash behaviour is test_crash.py's. The seed fixes
the kill choices (timing still varies); FLOWSTREAM_CRASH_SEED tries another.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from crash.harness import (
    CrashConfig,
    CrashReport,
    CycleLog,
    StreamLayout,
    check,
    format_report,
    parse_log,
    run_crash_test,
    sqlite_store,
)

SEED = int(os.environ.get("FLOWSTREAM_CRASH_SEED", "20260101"))

#: Shared by both runs: 4 shards (one split), 64 keys round-robin (16 per shard before the
#: split), 50-record pages, 20 polls a second, a save every 50 ms, a 3 ms sink.
BASE = CrashConfig(
    records=4000,
    shards=4,
    keys=64,
    kills=12,
    seed=SEED,
    page_limit=50,
    polls_per_second=20.0,
    flush_interval=0.05,
    sink_latency=0.003,
)


def _passed(report: CrashReport) -> None:
    print(format_report(report, per_cycle=True))
    assert not report.violations, report.failure_message()
    assert report.lost == 0
    # The kills interrupted work that was delivered but not yet durable.
    assert any(s.in_flight for s in report.cycles), report.failure_message()


async def test_sigkill_during_concurrent_delivery_loses_nothing(tmp_path: Path) -> None:
    config = replace(BASE, per_shard=8)
    assert config.pages_ahead == 7
    report = await run_crash_test(config, sqlite_store, tmp_path)
    _passed(report)
    # Keys overtook each other: delivery was concurrent, not in shard order.
    assert sum(s.reordered for s in report.cycles) > 0, report.failure_message()


async def test_sigkill_during_a_batching_window_loses_nothing(tmp_path: Path) -> None:
    # Kills spread over the window, so that some land while it gathers.
    # Smaller pages and more records: a window delivers ~5 pages of each shard at once,
    # and the kills must not run out of records.
    config = replace(
        BASE, records=8000, page_limit=20, batching_window=0.2, kill_spread=0.2, reserve=0.25
    )
    assert config.pages_ahead == 9
    report = await run_crash_test(config, sqlite_store, tmp_path)
    _passed(report)
    # The window merged pages: some sink call carried more than one page.
    assert max(s.largest_call for s in report.cycles) > config.page_limit


# -- the per-key checks catch what they look for -------------------------------------------
#
# Shard A, 6 records whose keys alternate x, y; concurrency 2. Cycle 0 delivers y's 102
# before x's 101 (allowed: other keys), saves 102, delivers 103 and 104 and is killed at
# t=0.7; cycle 1 resumes after 102 and drains.

LAYOUT = StreamLayout(
    {"A": ["101", "102", "103", "104", "105", "106"]},
    {},
    frozenset(),
    {"A": ["x", "y", "x", "y", "x", "y"]},
)
CONFIG = CrashConfig(records=6, kills=1, page_limit=2, polls_per_second=10.0, per_shard=2)

KILLED = """\
R 0 0.1
L 0 0.2 -
D 0 1 A 102
D 0 2 A 101
S 0 0.5 A=102
C 0 0.6
D 0 3 A 104
D 0 4 A 103
"""
DRAINED = """\
R 1 2.0
L 1 2.1 A=102
D 1 1 A 104
D 1 2 A 103
D 1 3 A 106
D 1 4 A 105
S 1 2.5 A=106
C 1 2.6
E 1 2.7 drained 4
"""


def logs(killed: str, drained: str) -> list[CycleLog]:
    first = CycleLog(0, killed=True, returncode=-9, kill_time=0.7)
    parse_log(first, killed.encode())
    last = CycleLog(1, killed=False, returncode=0, go_time=1.9, exit_time=2.8)
    parse_log(last, drained.encode())
    return [first, last]


class TestPerKeyCheck:
    def test_keys_overtaking_each_other_pass(self) -> None:
        report = check(CONFIG, LAYOUT, logs(KILLED, DRAINED))
        assert report.violations == []
        assert [c.reordered for c in report.cycles] == [2, 2]  # 101 after 102, 103 after 104
        assert [c.duplicates for c in report.cycles] == [0, 2]
        # 0.2 s after the durable snapshot: 2 x (floor(10 x 0.2) + 1 + 7)
        assert report.cycles[0].window == 20

    @pytest.mark.parametrize(
        ("killed_edit", "drained_edit", "found"),
        [
            pytest.param(
                None,
                ("D 1 2 A 103\nD 1 3 A 106\nD 1 4 A 105", "D 1 2 A 105\nD 1 3 A 106"),
                "key x delivered 105 where 103 was next for the key",
                id="key-gap",
            ),
            pytest.param(
                ("D 0 2 A 101", "D 0 2 A 103\nD 0 2 A 101"),
                None,
                "key x delivered 103 where 101 was next for the key",
                id="key-backwards",
            ),
            pytest.param(
                None,
                ("D 1 1 A 104\n", "D 1 1 A 104\nS 1 2.2 A=104\nC 1 2.3\n"),
                "saved A=104 while this run (resumed after 102) had delivered only up to "
                "102 without a gap",
                id="save-passes-what-this-run-skipped",
            ),
            pytest.param(
                ("S 0 0.5 A=102", "S 0 0.5 A=103"),
                None,
                "saved A=103 while only 102 and before were delivered",
                id="save-passes-an-undelivered-record",
            ),
        ],
    )
    def test_a_broken_promise_is_reported(
        self,
        killed_edit: tuple[str, str] | None,
        drained_edit: tuple[str, str] | None,
        found: str,
    ) -> None:
        killed = KILLED.replace(*killed_edit) if killed_edit else KILLED
        drained = DRAINED.replace(*drained_edit) if drained_edit else DRAINED
        assert (killed, drained) != (KILLED, DRAINED)
        report = check(CONFIG, LAYOUT, logs(killed, drained))
        assert any(found in v for v in report.violations), report.violations
