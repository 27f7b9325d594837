"""The README's demo and every example run and say what they did."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto_server import MotoServer

from flowstream import cli
from flowstream.demo import load_example
from flowstream.errors import FlowstreamError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
#: Examples that read a real table: they run against moto's server.
AGAINST_A_TABLE = {"cache_invalidator", "table_replicator", "webhook_forwarder", "sqs_fanout"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def count(pattern: str, text: str) -> tuple[int, ...]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{pattern!r} not in the output:\n{text}"
    return tuple(int(group) for group in match.groups())


class TestDemo:
    def test_runs_live_on_moto_and_the_counts_add_up(self) -> None:
        out = run("-m", "flowstream", "demo", "--seconds", "1").stdout
        assert "a local DynamoDB (moto) at http://127.0.0.1:" in out
        assert "pipeline 'user-cache'" in out
        assert "source: dynamodb(table='Users')" in out

        writes, inserts, modifies, removes, user_modifies, user_removes = count(
            r"^wrote (\d+) changes: (\d+) INSERT, (\d+) MODIFY, (\d+) REMOVE; "
            r"of users: (\d+) MODIFY, (\d+) REMOVE$",
            out,
        )
        (read,) = count(r"^read (\d+) records$", out)
        invalidations, purged, evicted = count(
            r"^(\d+) invalidations reached the sinks: (\d+) purged \(MODIFY\), "
            r"(\d+) evicted \(REMOVE\)$",
            out,
        )
        assert writes > 10
        assert writes == inserts + modifies + removes == read
        assert (purged, evicted) == (user_modifies, user_removes)
        assert invalidations == purged + evicted
        assert 0 < user_modifies <= modifies
        assert user_removes <= removes

        # one line per invalidation, as it happened
        lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"key":')]
        assert len(lines) == invalidations
        assert Counter(m["op"] for m in lines) == Counter(MODIFY=purged, REMOVE=evicted)
        assert all(m["key"].startswith("user#") for m in lines)
        assert all("visits" in m["changed"] for m in lines if m["op"] == "MODIFY")

        # the run's own report agrees
        (reported_read,) = count(r"^pipeline 'user-cache': (\d+) read", out)
        assert reported_read == read
        assert count(r"^  sink purge-queue: (\d+) delivered, 0 failed", out) == (purged,)
        assert count(r"^  sink evictions: (\d+) delivered, 0 failed", out) == (evicted,)
        assert "0 failed in" in out
        assert "(stop requested)" in out
        assert "counts add up" in out
        assert "werkzeug" not in out
        assert "HTTP/1.1" not in out  # no request logs

    def test_a_missing_example_file_is_a_clear_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = tmp_path / "examples" / "cache_invalidator.py"
        monkeypatch.setattr("flowstream.demo.EXAMPLE", missing)
        assert cli.main(["demo", "--seconds", "0"]) == 1
        error = capsys.readouterr().err
        assert f"flowstream demo runs the pipeline in {missing}, which is missing" in error
        assert "python3 -m pip install -e '.[local]' && python3 -m flowstream demo" in error

    def test_an_example_without_build_pipeline_is_a_clear_error(self, tmp_path: Path) -> None:
        broken = tmp_path / "cache_invalidator.py"
        broken.write_text("def main() -> None: ...\n")
        with pytest.raises(FlowstreamError, match=r"has no build_pipeline\(source"):
            load_example(broken)


@pytest.mark.parametrize(
    "example",
    [p for p in EXAMPLES if p.stem not in AGAINST_A_TABLE],
    ids=[p.stem for p in EXAMPLES if p.stem not in AGAINST_A_TABLE],
)
def test_example_runs(example: Path) -> None:
    out = run(str(example)).stdout
    assert "0 failed" in out


@pytest.fixture
def users_table(moto_server: MotoServer) -> str:
    """A Users table on a fresh moto server with a few changes in its stream."""
    moto_server.reset()
    client: Any = boto3.client("dynamodb", endpoint_url=moto_server.url, region_name="us-east-1")
    client.create_table(
        TableName="Users",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    for pk in ("user#1", "user#2", "team#1"):
        client.put_item(TableName="Users", Item={"pk": {"S": pk}, "plan": {"S": "free"}})
    for pk in ("user#1", "team#1"):
        client.update_item(
            TableName="Users",
            Key={"pk": {"S": pk}},
            UpdateExpression="SET #p = :p",
            ExpressionAttributeNames={"#p": "plan"},
            ExpressionAttributeValues={":p": {"S": "pro"}},
        )
    client.delete_item(TableName="Users", Key={"pk": {"S": "user#2"}})
    return moto_server.url


def test_cache_invalidator_runs_against_a_table(users_table: str, tmp_path: Path) -> None:
    evicted = tmp_path / "evicted.jsonl"
    args = ["Users", "--endpoint-url", users_table, "--drain"]
    args += ["--checkpoints", str(tmp_path / "state.db"), "--evicted", str(evicted)]
    example = str(ROOT / "examples" / "cache_invalidator.py")
    done = run(example, *args)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines == [
        {"key": "user#1", "op": "MODIFY", "changed": ["plan"]},
        {"key": "user#2", "op": "REMOVE"},
    ]
    assert [json.loads(line) for line in evicted.read_text().splitlines()] == [lines[1]]
    assert "6 read" in done.stderr
    assert "0 failed" in done.stderr
    assert "(drained)" in done.stderr

    # run again: it resumes from its checkpoints, so nothing is new
    again = run(example, *args)
    assert again.stdout == ""
    assert "0 read" in again.stderr


class _Receiver:
    """A real local HTTP server (in a thread) that keeps every JSON body it gets."""

    def __init__(self) -> None:
        import http.server
        import threading

        bodies: list[Any] = []
        headers: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                bodies.append(json.loads(self.rfile.read(length)))
                headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.headers = headers
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cache_invalidator_clears_redis_and_purges_over_http(
    users_table: str, redis_url: str, tmp_path: Path
) -> None:
    import redis

    cache = redis.Redis.from_url(redis_url)
    cache.mset({"user-cache:user#1": "cached", "user-cache:user#2": "cached", "other": "x"})
    with _Receiver() as purges:
        args = ["Users", "--endpoint-url", users_table, "--drain", "--redis", redis_url]
        args += ["--purge-url", purges.url, "--checkpoints", str(tmp_path / "state.db")]
        args += ["--evicted", str(tmp_path / "evicted.jsonl")]
        run(str(ROOT / "examples" / "cache_invalidator.py"), *args)
    assert sorted(cache.keys("*")) == [b"other"]
    purged = [item for body in purges.bodies for item in body]
    assert [(m["key"], m["op"]) for m in purged] == [("user#1", "MODIFY"), ("user#2", "REMOVE")]
    cache.close()


def test_table_replicator_copies_the_table(users_table: str, tmp_path: Path) -> None:
    args = ["Users", "UsersCopy", "--endpoint-url", users_table, "--create", "--drain"]
    done = run(
        str(ROOT / "examples" / "table_replicator.py"),
        *args,
        "--checkpoints",
        str(tmp_path / "r.db"),
    )
    assert "0 failed" in done.stderr
    client: Any = boto3.client("dynamodb", endpoint_url=users_table, region_name="us-east-1")
    source = client.scan(TableName="Users")["Items"]
    copy = client.scan(TableName="UsersCopy")["Items"]
    assert sorted(map(str, copy)) == sorted(map(str, source))
    assert len(copy) == 2  # user#1 (pro) and team#1 (pro); user#2 was deleted


def test_webhook_forwarder_posts_every_change(users_table: str, tmp_path: Path) -> None:
    with _Receiver() as hook:
        args = ["Users", hook.url, "--endpoint-url", users_table, "--drain"]
        done = run(
            str(ROOT / "examples" / "webhook_forwarder.py"),
            *args,
            "--checkpoints",
            str(tmp_path / "w.db"),
        )
    assert "0 failed" in done.stderr
    events = [event for body in hook.bodies for event in body]
    assert [(e["type"], e["keys"]["pk"]) for e in events] == [
        ("INSERT", "user#1"),
        ("INSERT", "user#2"),
        ("INSERT", "team#1"),
        ("MODIFY", "user#1"),
        ("MODIFY", "team#1"),
        ("REMOVE", "user#2"),
    ]
    assert all(h.get("Idempotency-Key") for h in hook.headers)


def test_sqs_fanout_routes_each_event_type_to_its_queue(users_table: str, tmp_path: Path) -> None:
    args = ["Users", "--endpoint-url", users_table, "--create", "--drain"]
    done = run(
        str(ROOT / "examples" / "sqs_fanout.py"), *args, "--checkpoints", str(tmp_path / "f.db")
    )
    assert "0 failed" in done.stderr
    client: Any = boto3.client("sqs", endpoint_url=users_table, region_name="us-east-1")
    got = {}
    for suffix in ("inserts", "updates", "removes"):
        url = client.get_queue_url(QueueName=f"users-{suffix}")["QueueUrl"]
        messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        records = [json.loads(m["Body"]) for m in messages]
        got[suffix] = sorted((r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records)
    assert got == {
        "inserts": [("INSERT", "team#1"), ("INSERT", "user#1"), ("INSERT", "user#2")],
        "updates": [("MODIFY", "team#1"), ("MODIFY", "user#1")],
        "removes": [("REMOVE", "user#2")],
    }
