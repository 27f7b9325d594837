"""SIGKILL at random moments loses nothing: a real pipeline (aiobotocore over HTTP to a
LocalStreamsServer, real checkpoint stores) is killed and restarted cycle after cycle,
then drained; its delivery log proves every record arrived, in order per shard, with no
more replayed than was in flight (tests/crash/harness.py says how that is computed).

The seed fixes the kill choices (timing still varies); set FLOWSTREAM_CRASH_SEED to try
another, or run the longer soak: python benchmarks/crash_soak.py --seed N.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crash.harness import (
    CrashConfig,
    CycleLog,
    StoreFactory,
    StreamLayout,
    check,
    dynamodb_store,
    format_report,
    parse_log,
    run_crash_test,
    sqlite_store,
)

SEED = int(os.environ.get("FLOWSTREAM_CRASH_SEED", "20260101"))

#: Kills per store: DynamoDB saves go to moto's server and take longer.
KILLS = {"sqlite": 30, "dynamodb": 20}


@pytest.fixture(params=sorted(KILLS))
def store(request: pytest.FixtureRequest) -> tuple[str, StoreFactory]:
    if request.param == "sqlite":
        return "sqlite", sqlite_store
    # The DynamoDB store in moto's server (reset for this test).
    moto_url: str = request.getfixturevalue("moto_url")
    return "dynamodb", dynamodb_store(moto_url, "crash-checkpoints")


async def test_sigkill_at_random_moments_loses_nothing(
    store: tuple[str, StoreFactory], tmp_path: Path
) -> None:
    kind, factory = store
    config = CrashConfig(kills=KILLS[kind], seed=SEED)
    report = await run_crash_test(config, factory, tmp_path)
    print(format_report(report, per_cycle=True))
    assert not report.violations, report.failure_message()
    assert report.lost == 0
    # The kills interrupted work that was delivered but not yet durable: the run tested
    # recovery, not just restarts.
    assert any(s.in_flight for s in report.cycles), report.failure_message()


# -- the checks catch what they look for ---------------------------------------------------
#
# One small run written by hand: shard A (4 records), shard P (2 records, closed) and its
# child K (2 records). Cycle 0 is killed at t=0.7, cycle 1 drains. Each case breaks one
# promise in the log and expects `check` to name it.

LAYOUT = StreamLayout(
    {"A": ["101", "102", "103", "104"], "P": ["201", "202"], "K": ["301", "302"]},
    {"K": "P"},
    frozenset({"P"}),
)
CONFIG = CrashConfig(records=8, kills=1, page_limit=2, polls_per_second=10.0)

KILLED = """\
R 0 0.1
L 0 0.2 -
D 0 1 A 101
D 0 1 A 102
D 0 2 P 201
D 0 2 P 202
S 0 0.5 A=102,P=SHARD_END
C 0 0.6
D 0 3 K 301
D 0 4 A 103
"""
DRAINED = """\
R 1 2.0
L 1 2.1 A=102,P=SHARD_END
D 1 1 K 301
D 1 1 K 302
D 1 2 A 103
D 1 2 A 104
S 1 2.5 A=104,K=302
C 1 2.6
E 1 2.7 drained 4
"""


def logs(killed: str = KILLED, drained: str = DRAINED, returncode: int = 0) -> list[CycleLog]:
    first = CycleLog(0, killed=True, returncode=-9, kill_time=0.7)
    parse_log(first, killed.encode())
    last = CycleLog(1, killed=False, returncode=returncode, go_time=1.9, exit_time=2.8)
    parse_log(last, drained.encode())
    return [first, last]


class TestCheck:
    def test_a_correct_run_passes(self) -> None:
        report = check(CONFIG, LAYOUT, logs())
        assert report.violations == []
        assert [c.duplicates for c in report.cycles] == [0, 2]  # K 301, A 103 again
        # 0.2 s from the durable snapshot to the kill: 2 x (floor(10 x 0.2) + 3)
        assert report.cycles[0].window == 10
        assert report.cycles[0].in_flight == 1

    @pytest.mark.parametrize(
        ("killed_edit", "drained_edit", "found"),
        [
            pytest.param(
                None,
                ("D 1 2 A 104\n", ""),
                "1 record(s) never delivered, e.g. 104",
                id="lost",
            ),
            pytest.param(
                None,
                ("D 1 2 A 103\nD 1 2 A 104", "D 1 2 A 104\nD 1 2 A 103"),
                "shard A delivered 104 where 103 was next",
                id="out-of-order",
            ),
            pytest.param(
                ("S 0 0.5 A=102", "S 0 0.5 A=103"),
                None,
                "saved A=103 while only 102 and before were delivered",
                id="checkpoint-ahead-of-sink",
            ),
            pytest.param(
                None,
                ("L 1 2.1 A=102", "L 1 2.1 A=101\nD 1 1 A 102"),
                "shard A loaded 101 although the save of 102 had returned",
                id="checkpoint-lost",
            ),
            pytest.param(
                (
                    "S 0 0.5 A=102,P=SHARD_END\nC 0 0.6\nD 0 3 K 301\n",
                    "D 0 3 K 301\nS 0 0.5 A=102,P=SHARD_END\nC 0 0.6\n",
                ),
                None,
                "delivered K 301 before its parent P's SHARD_END was durable",
                id="child-before-parent",
            ),
            pytest.param(
                None,
                ("E 1 2.7 drained 4\n", ""),
                "the last run did not drain",
                id="no-drain",
            ),
            pytest.param(
                None,
                ("S 1 2.5 A=104,K=302\nC 1 2.6\n", ""),
                "after draining, the saved position is 102, not 104",
                id="end-not-saved",
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

    def test_a_save_cut_off_by_the_kill_counts_once_it_is_loaded(self) -> None:
        # The kill came after the save of A=103 was durable but before the line saying so.
        killed = KILLED + "S 0 0.65 A=103\n"
        drained = DRAINED.replace("L 1 2.1 A=102", "L 1 2.1 A=103").replace("D 1 2 A 103\n", "")
        report = check(CONFIG, LAYOUT, logs(killed, drained))
        assert report.violations == []
        assert report.cycles[0].in_save

    def test_a_replay_larger_than_the_window_is_reported(self) -> None:
        # Nothing saved before the kill, 0.3 s after the load: with 1-record pages and one
        # poll a second, the window is 1 x (floor(1 x 0.3) + 3) = 3 records; 4 replay.
        config = CrashConfig(records=8, kills=1, page_limit=1, polls_per_second=1.0)
        killed = "L 0 0.4 -\n" + "".join(f"D 0 1 A {s}\n" for s in LAYOUT.records["A"])
        drained = (
            "L 1 2.1 -\n"
            + "".join(f"D 1 1 A {s}\n" for s in LAYOUT.records["A"])
            + "D 1 2 P 201\nD 1 2 P 202\nS 1 2.2 A=104,P=SHARD_END\nC 1 2.3\n"
            + "D 1 3 K 301\nD 1 3 K 302\nS 1 2.4 K=302\nC 1 2.5\nE 1 2.6 drained 8\n"
        )
        report = check(config, LAYOUT, logs(killed, drained))
        assert len(report.violations) == 2, report.violations
        assert "the kill left 4 delivered records (101 .. 104) to replay" in report.violations[0]
        assert "delivered 4 records again, over the in-flight window 3" in report.violations[1]
