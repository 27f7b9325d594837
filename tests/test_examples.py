"""The README's demo and every example run and say what they did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_runs_live_and_reports() -> None:
    out = run("-m", "flowstream", "demo", "--changes", "120")
    assert "pipeline 'user-cache'" in out
    assert "0 failed" in out
    assert "(stop requested)" in out
    # one shard split half way: its end was reached and checkpointed
    assert "1 ended" in out


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path) -> None:
    out = run(str(example))
    assert "0 failed" in out
