"""`flowstream pattern`: which records of a jsonl file or standard input a filter
pattern keeps, with grep's exit status."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from flowstream.cli import main
from flowstream.testing import MemoryStream, lambda_event

PATTERN = '{"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"status": {"S": ["active"]}}}}'


@pytest.fixture
def changes(tmp_path: Path) -> tuple[Path, MemoryStream]:
    stream = MemoryStream(table="users")
    shard = stream.add_shard()
    stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a", "status": "active"})
    stream.put(shard, "MODIFY", {"pk": "b"}, {"pk": "b", "status": "active"})
    stream.put(shard, "MODIFY", {"pk": "c"}, {"pk": "c", "status": "closed"})
    path = tmp_path / "changes.jsonl"
    path.write_text("".join(r.to_json().decode() + "\n" for r in stream.records()))
    return path, stream


def test_prints_the_matching_records(
    changes: tuple[Path, MemoryStream], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _stream = changes
    assert main(["pattern", PATTERN, str(path)]) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert json.loads(line)["dynamodb"]["Keys"] == {"pk": {"S": "b"}}
    assert "1 of 3 records match" in err


def test_reads_lambda_events_from_stdin_and_a_pattern_from_a_file(
    changes: tuple[Path, MemoryStream],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _, stream = changes
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(lambda_event(stream.records()))))
    (tmp_path / "pattern.json").write_text('{"eventName": ["INSERT", "MODIFY"]}')
    assert main(["pattern", f"@{tmp_path / 'pattern.json'}", "--count"]) == 0
    assert capsys.readouterr().out == "3\n"


def test_no_match_exits_1_and_n_as_numbers_is_offered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = MemoryStream(table="users")
    stream.put(stream.add_shard(), "INSERT", {"pk": "a"}, {"pk": "a", "total": 50})
    path = tmp_path / "one.jsonl"
    path.write_text(stream.records()[0].to_json().decode())
    over = '{"dynamodb": {"NewImage": {"total": {"N": [{"numeric": [">", 10]}]}}}}'
    assert main(["pattern", over, str(path)]) == 1  # as Lambda: numeric never matches N
    assert main(["pattern", over, str(path), "--n-as-numbers"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("pattern", "content", "message"),
    [
        ('{"eventName": []}', "", "eventName: an empty array matches nothing"),
        ('{"eventName": ["INSERT"]}', "not json\n", "line 1 is not a stream record"),
    ],
)
def test_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str, content: str, message: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    assert main(["pattern", pattern, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowstream pattern: error: ")
    assert message in err
