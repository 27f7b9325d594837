"""flowstream's pytest plugin: the test examples of docs/testing.md run as written, in a
pytest run of their own, with nothing configured -- without pytest-asyncio, and beside it
in either of its modes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def documented_tests() -> list[str]:
    """Every Python block of docs/testing.md that holds a test."""
    return [block for block in BLOCK.findall(DOCS.read_text()) if "def test_" in block]


def pytest_run(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *options],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project of a user's: the documented tests, each in a file of its own."""
    blocks = documented_tests()
    assert len(blocks) >= 3, "docs/testing.md lost its test examples"
    for n, block in enumerate(blocks):
        (tmp_path / f"test_documented_{n}.py").write_text(block)
    return tmp_path


@pytest.mark.parametrize(
    ("setup", "options", "ini"),
    [
        pytest.param("plain", ["-p", "no:asyncio"], None, id="without-pytest-asyncio"),
        pytest.param("strict", [], None, id="pytest-asyncio-strict"),
        pytest.param("auto", [], "[pytest]\nasyncio_mode = auto\n", id="pytest-asyncio-auto"),
    ],
)
def test_the_documented_tests_pass_as_written(
    user_project: Path, setup: str, options: list[str], ini: str | None
) -> None:
    if ini is not None:
        (user_project / "pytest.ini").write_text(ini)
    result = pytest_run(user_project, *options)
    count = len(documented_tests())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} passed" in result.stdout
    assert "not natively supported" not in result.stdout + result.stderr


def test_a_test_marked_for_another_runner_is_left_to_it(tmp_path: Path) -> None:
    """A test marked asyncio stays pytest-asyncio's: in strict mode without the plugin
    it is not run by flowstream's (pytest reports it as not supported)."""
    (tmp_path / "test_marked.py").write_text(
        "import pytest\n\n\n@pytest.mark.asyncio\nasync def test_marked():\n    pass\n"
    )
    result = pytest_run(tmp_path, "-p", "no:asyncio", "-W", "ignore")
    assert "1 passed" not in result.stdout
