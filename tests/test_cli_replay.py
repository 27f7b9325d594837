"""`flowstream replay`: dead letters back through a pipeline named on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flowstream as fs
from flowstream import cli
from flowstream.testing import MemoryStream

PIPELINE = """
import flowstream as fs
from flowstream import sinks
from flowstream.testing import MemoryStream

OUT = {out!r}

def build():
    return (
        fs.Pipeline(MemoryStream(), name="orders")
        .map(lambda r: {{"pk": r.keys["pk"], "n": r.new_image["n"]}})
        .to(sinks.jsonl(OUT))
        .on_failure(retries=0)
    )

pipeline = build()
not_a_pipeline = 42
"""


def write_letters(path: Path, count: int, *, pipeline: str = "orders") -> list[fs.Record]:
    stream = MemoryStream()
    shard = stream.add_shard()
    records = [stream.put(shard, "INSERT", {"pk": f"o{n}"}, {"n": n}) for n in range(count)]
    with path.open("ab") as f:
        for record in records:
            letter = fs.DeadLetter.of(
                record,
                pipeline=pipeline,
                stream=stream.stream_arn,
                step="sink http(...)",
                reason="retries_exhausted",
                error=ConnectionError("down"),
                attempts=4,
                first_failure=None,
                last_failure=None,
            )
            f.write(letter.to_json() + b"\n")
    return records


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.py"
    path.write_text(PIPELINE.format(out=str(tmp_path / "out.jsonl")))
    return path


@pytest.mark.parametrize("name", ["pipeline", "build"])
def test_replays_letters_through_a_pipeline_in_a_file(
    tmp_path: Path, module: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = tmp_path / "dead.jsonl"
    write_letters(letters, 3)
    write_letters(letters, 2, pipeline="other")
    code = cli.main(
        ["replay", str(letters), "--pipeline", f"{module}:{name}", "--only-pipeline", "orders"]
    )
    assert code == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out == [{"pk": f"o{n}", "n": n} for n in range(3)]
    assert "pipeline 'orders': 3 records read" in capsys.readouterr().out


def test_runs_as_a_command(tmp_path: Path, module: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    write_letters(letters, 2)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowstream",
            "replay",
            str(letters),
            "--pipeline",
            f"{module}:build",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("nocolon", "is not MODULE:NAME"),
        ("no_such_module_xyz:pipeline", "cannot import no_such_module_xyz"),
        ("{module}:not_a_pipeline", "not_a_pipeline in"),
        ("{module}:missing", "is missing, not a Pipeline"),
    ],
)
def test_a_bad_pipeline_reference_is_a_clear_error(
    tmp_path: Path, module: Path, where: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = tmp_path / "dead.jsonl"
    write_letters(letters, 1)
    code = cli.main(["replay", str(letters), "--pipeline", where.format(module=module)])
    assert code == 1
    assert problem in capsys.readouterr().err


def test_a_letter_failing_again_exits_1_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.py"
    path.write_text(
        "import flowstream as fs\n"
        "from flowstream import sinks\n"
        "from flowstream.testing import MemoryStream\n"
        "def boom(r):\n"
        "    raise ValueError('still broken')\n"
        "pipeline = fs.Pipeline(MemoryStream()).map(boom).to(sinks.collect())\n"
        "pipeline = pipeline.on_failure(retries=0)\n"
    )
    letters = tmp_path / "dead.jsonl"
    write_letters(letters, 1)
    assert cli.main(["replay", str(letters), "--pipeline", f"{path}:pipeline"]) == 1
    captured = capsys.readouterr()
    assert "still broken" in captured.err
    assert "1 failed" in captured.out
