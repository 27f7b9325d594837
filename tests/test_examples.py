"""The README's demo and every example run and say what they did."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto_server import MotoServer
from server_process import free_port

import flowstream as fs
from flowstream import cli
from flowstream.demo import load_example
from flowstream.errors import FlowstreamError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
#: Examples that read a real table: they run against moto's server.
AGAINST_A_TABLE = {"cache_invalidator", "table_replicator", "webhook_forwarder", "sqs_fanout"}


def run(*args: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == returncode, done.stderr
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
        (reported_read,) = count(r"^pipeline 'user-cache': (\d+) records read", out)
        assert reported_read == read
        assert count(r"^  sink purge-queue: (\d+) delivered, 0 failed", out) == (purged,)
        assert count(r"^  sink evictions: (\d+) delivered, 0 failed", out) == (evicted,)
        assert count(r"^  sink tally: (\d+) delivered, 0 failed", out) == (invalidations,)
        assert "_Tally" not in out  # no internal names in the plan or the report
        assert count(
            r"^  elements: \d+ filtered out, \d+ dropped by routing, (\d+) failed", out
        ) == (0,)
        assert "(stop requested)" in out
        assert "shards: 1 (1 paused)" in out
        assert "counts add up" in out
        assert "werkzeug" not in out
        assert "HTTP/1.1" not in out  # no request logs

    def test_serve_keeps_an_endpoint_that_the_commands_it_prints_run_against(
        self, tmp_path: Path
    ) -> None:
        """`flowstream demo --serve` prints example commands; each runs (with --drain)
        against the endpoint while it writes, and Ctrl-C (SIGINT) stops it."""
        port = free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "flowstream", "demo", "--serve", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert serve.stdout is not None
            printed = []
            for line in serve.stdout:
                printed.append(line)
                if line.startswith("Ctrl-C stops it."):
                    break
            commands = [line.split() for line in printed if " examples/" in line]
            assert [c[4] for c in commands] == [
                "examples/cache_invalidator.py",
                "examples/sqs_fanout.py",
                "examples/table_replicator.py",
            ]
            for command in commands:
                env = dict(word.split("=", 1) for word in command[:3])
                argv = [sys.executable, str(ROOT / command[4]), *command[5:], "--drain"]
                assert f"http://127.0.0.1:{port}" in argv
                done = subprocess.run(
                    argv,
                    cwd=tmp_path,
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, done.stderr
                assert re.search(r"^pipeline '[\w-]+': [1-9]\d* records read", done.stderr, re.M)
            serve.send_signal(signal.SIGINT)
            out, _ = serve.communicate(timeout=30)
            assert serve.returncode == 0
            assert re.search(r"^stopped after \d+ changes$", out, re.M)
        finally:
            serve.kill()
            serve.wait()

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
    assert "6 records read" in done.stderr
    assert "0 failed" in done.stderr
    assert "(drained)" in done.stderr

    # run again: it resumes from its checkpoints, so nothing is new
    again = run(example, *args)
    assert again.stdout == ""
    assert "0 records read" in again.stderr


class _Receiver:
    """A real local HTTP server (in a thread) that keeps every JSON body it gets.

    With `reject`, it answers 400 to every request holding an event of that key (the
    webhook forwarder's ``keys.pk``) and keeps those apart, in `rejected`.
    """

    def __init__(self, reject: str | None = None) -> None:
        import http.server
        import threading

        bodies: list[Any] = []
        headers: list[dict[str, str]] = []
        rejected: list[tuple[Any, dict[str, str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                events = body if isinstance(body, list) else [body]
                if reject is not None and any(e["keys"]["pk"] == reject for e in events):
                    rejected.append((body, dict(self.headers)))
                    answer = f"{reject} is not accepted".encode()
                    self.send_response(400)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                bodies.append(body)
                headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.headers = headers
        self.rejected = rejected
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


def test_webhook_forwarder_with_concurrency_keeps_each_items_order(
    users_table: str, tmp_path: Path
) -> None:
    with _Receiver() as hook:
        args = ["Users", hook.url, "--endpoint-url", users_table, "--drain"]
        done = run(
            str(ROOT / "examples" / "webhook_forwarder.py"),
            *args,
            "--batch-size",
            "1",
            "--concurrency",
            "4",
            "--checkpoints",
            str(tmp_path / "w.db"),
        )
    assert "0 failed" in done.stderr
    assert "concurrency: up to 4 per shard" in done.stderr  # the plan it printed
    events = hook.bodies  # one event per request with --batch-size 1
    by_item: dict[str, list[str]] = {}
    for e in events:
        by_item.setdefault(e["keys"]["pk"], []).append(e["type"])
    assert by_item == {
        "user#1": ["INSERT", "MODIFY"],
        "user#2": ["INSERT", "REMOVE"],
        "team#1": ["INSERT", "MODIFY"],
    }


WEBHOOK_FORWARDER = str(ROOT / "examples" / "webhook_forwarder.py")


def _stream_changes(endpoint_url: str) -> dict[str, list[tuple[str, str, str]]]:
    """The Users stream as moto holds it: (event id, event name, pk) per shard, in order."""
    streams: Any = boto3.client(
        "dynamodbstreams", endpoint_url=endpoint_url, region_name="us-east-1"
    )
    arn = streams.list_streams(TableName="Users")["Streams"][0]["StreamArn"]
    changes = {}
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = streams.get_records(ShardIterator=iterator)["Records"]
        changes[shard["ShardId"]] = [
            (r["eventID"], r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records
        ]
    return changes


class TestWebhookForwarderDeadLetters:
    @pytest.fixture
    def table(self, users_table: str) -> str:
        """The Users table with user#13 (which the endpoint rejects) and a change after it."""
        client: Any = boto3.client("dynamodb", endpoint_url=users_table, region_name="us-east-1")
        for pk in ("user#13", "user#14"):
            client.put_item(TableName="Users", Item={"pk": {"S": pk}, "plan": {"S": "free"}})
        return users_table

    def test_a_rejected_change_is_dead_lettered_and_replayed(
        self, table: str, tmp_path: Path
    ) -> None:
        dead = tmp_path / "dead.jsonl"
        args = ["--endpoint-url", table, "--drain", "--checkpoints", str(tmp_path / "w.db")]
        with _Receiver(reject="user#13") as hook:
            done = run(WEBHOOK_FORWARDER, "Users", hook.url, *args, "--dead-letters", str(dead))
        assert "1 dead-lettered" in done.stderr

        # every other change arrived once, each shard in its order, past the rejected one
        stream = _stream_changes(table)
        (rejected,) = [c for changes in stream.values() for c in changes if c[2] == "user#13"]
        arrived = [(e["id"], e["type"], e["keys"]["pk"]) for body in hook.bodies for e in body]
        for changes in stream.values():
            assert [c for c in arrived if c in changes] == [c for c in changes if c != rejected]
        assert len(arrived) == sum(map(len, stream.values())) - 1
        assert arrived[-1][2] == "user#14"

        # the change, alone, as a dead letter
        (line,) = dead.read_bytes().splitlines()
        letter = fs.decode_dead_letter(line)
        assert letter.pipeline == "webhook-forwarder"
        assert letter.reason == "not_retryable"
        assert letter.error is not None
        assert "HTTP 400" in letter.error.message
        assert "user#13 is not accepted" in letter.error.message
        assert letter.step.startswith("sink http(POST http://127.0.0.1:")
        assert letter.record.event_id == rejected[0]
        assert letter.record.keys == {"pk": "user#13"}
        assert letter.record.new_image == {"pk": "user#13", "plan": "free"}
        # bisect isolated it: the last request the endpoint rejected held it alone
        last_body, last_headers = hook.rejected[-1]
        assert [e["id"] for e in last_body] == [rejected[0]]

        # replayed to an endpoint that now takes it: the same event, the same request
        with _Receiver() as fixed:
            again = run(WEBHOOK_FORWARDER, "Users", fixed.url, "--replay", str(dead))
        assert again.returncode == 0
        assert "1 record read" in again.stderr
        assert "1 delivered, 0 failed" in again.stderr
        assert fixed.bodies == [last_body]
        assert fixed.headers[0]["Idempotency-Key"] == last_headers["Idempotency-Key"]

    def test_without_dead_letters_the_shard_stops_at_the_rejected_change(
        self, table: str, tmp_path: Path
    ) -> None:
        args = ["--endpoint-url", table, "--drain", "--checkpoints", str(tmp_path / "w.db")]
        with _Receiver(reject="user#13") as hook:
            done = run(WEBHOOK_FORWARDER, "Users", hook.url, *args, returncode=1)
        assert "error: 1 shard(s) stopped at a failing record" in done.stderr
        assert "HTTP 400" in done.stderr
        arrived = [e["keys"]["pk"] for body in hook.bodies for e in body]
        assert arrived == ["user#1", "user#2", "team#1", "user#1", "team#1", "user#2"]

    def test_replay_refuses_to_write_its_letters_into_the_file_it_reads(
        self, tmp_path: Path
    ) -> None:
        dead = str(tmp_path / "dead.jsonl")
        args = ["Users", "http://127.0.0.1:9/hook", "--replay", dead, "--dead-letters", dead]
        done = run(WEBHOOK_FORWARDER, *args, returncode=2)
        assert "--dead-letters must be another file than --replay" in done.stderr


def test_sqs_fanout_without_its_queues_says_how_to_create_them(
    users_table: str, tmp_path: Path
) -> None:
    args = ["Users", "--endpoint-url", users_table, "--drain"]
    done = run(
        str(ROOT / "examples" / "sqs_fanout.py"),
        *args,
        "--checkpoints",
        str(tmp_path / "f.db"),
        returncode=1,
    )
    assert done.stderr == (
        "error: queue 'users-inserts' does not exist; pass --create to create the queues, "
        "or --queue-prefix for queues that exist\n"
    )


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
