"""`flowstream lint TARGET` and `flowstream --version`: the plan of a pipeline that
builds, or its mistake on one line with exit status 1, without reading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowstream
from flowstream.cli import main

GOOD = """
import flowstream as fs
from flowstream import sinks, sources

orders = (
    fs.Pipeline(sources.dynamodb(table="Orders"), name="orders")
    .filter(events=["INSERT"])
    .to(sinks.stdout())
)

def build():
    return orders
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["orders", "build"])
def test_prints_the_plan_of_a_pipeline_or_a_function_returning_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = write(tmp_path, GOOD)
    assert main(["lint", f"{path}:{name}"]) == 0
    out = capsys.readouterr().out
    assert "pipeline 'orders'" in out
    assert "1. filter(events=[INSERT])" in out
    assert "2. to(stdout)" in out


@pytest.mark.parametrize(
    ("text", "target", "message"),
    [
        (
            GOOD + "\nopen_ended = fs.Pipeline(sources.dynamodb(table='T'))\n",
            "open_ended",
            "has nothing at its end",
        ),
        (
            "import flowstream as fs\nfrom flowstream import sources\n"
            "p = fs.Pipeline(sources.dynamodb(table='T')).filter()\n",
            "p",
            ".filter() at step 1 has neither a predicate",
        ),
        ("raise RuntimeError('no config')\n", "p", "RuntimeError: no config"),
        (GOOD, "missing", "missing in"),
        (GOOD, "", "is not MODULE:NAME"),
    ],
)
def test_a_mistake_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, target: str, message: str
) -> None:
    path = write(tmp_path, text)
    where = f"{path}:{target}" if target else str(path)
    assert main(["lint", where]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowstream lint: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"flowstream {flowstream.__version__}\n"
