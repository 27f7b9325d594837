"""`flowstream run TARGET` as an operator runs it: a real process against a live local
table (moto's server), stopped by SIGTERM, drained, ended by a stopped shard, scraped
over HTTP, and watched on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto_server import free_port
from prometheus_client.parser import text_string_to_metric_families

REGION = "us-east-1"
#: A whole process: start (imports), open the stream, drain, stop.
PROCESS_TIMEOUT = 60.0

PIPELINE = """
import os

import flowstream as fs
from flowstream import sinks, sources


def fail_on_poison(record):
    if record.new_image.get("poison"):
        raise ValueError(f"poison item {record.keys['pk']}")
    return record.new_image


def build():
    source = sources.dynamodb(
        os.environ["TABLE"], start="trim_horizon", idle_interval=0.05, max_polls_per_second=50.0
    )
    return (
        fs.Pipeline(source, name="orders")
        .map(fail_on_poison)
        .to(sinks.jsonl(os.environ["OUT"]))
        .on_failure(retries=0)
    )
"""


@pytest.fixture
def table(moto_url: str) -> str:
    client: Any = boto3.client("dynamodb", endpoint_url=moto_url, region_name=REGION)
    name = f"orders{time.monotonic_ns()}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return name


def _value(value: object) -> dict[str, Any]:
    return {"BOOL": value} if isinstance(value, bool) else {"S": str(value)}


def put(moto_url: str, table: str, *items: dict[str, Any]) -> None:
    client: Any = boto3.client("dynamodb", endpoint_url=moto_url, region_name=REGION)
    for item in items:
        client.put_item(
            TableName=table,
            Item={k: _value(v) for k, v in item.items()},
        )


class Job:
    """The files and environment of one `flowstream run`."""

    def __init__(self, tmp_path: Path, moto_url: str, table: str) -> None:
        self.target = tmp_path / "orders_pipeline.py"
        self.target.write_text(textwrap.dedent(PIPELINE))
        self.out = tmp_path / "out.jsonl"
        self.moto_url = moto_url
        self.env = {**os.environ, "TABLE": table, "OUT": str(self.out)}
        self.env.pop("AWS_ENDPOINT_URL", None)  # --endpoint-url must be what points at moto

    def command(self, *options: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "flowstream",
            "--endpoint-url",
            self.moto_url,
            "run",
            f"{self.target}:build",
            *options,
        ]

    def run(self, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*options),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            check=False,
        )

    def start(self, *options: str, **popen: Any) -> subprocess.Popen[str]:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.command(*options), env=self.env, text=True, **popen)

    def delivered(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]


@pytest.fixture
def job(tmp_path: Path, moto_url: str, table: str) -> Job:
    return Job(tmp_path, moto_url, table)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_drain_reads_a_live_table_through_the_endpoint_option_and_exits_0(
    job: Job, moto_url: str, table: str, tmp_path: Path
) -> None:
    put(moto_url, table, *({"pk": f"order#{n}"} for n in range(5)))
    db = tmp_path / "checkpoints.db"
    result = job.run("--drain", "--checkpoints", f"sqlite:{db}")
    assert result.returncode == 0, result.stderr
    assert [r["pk"] for r in job.delivered()] == [f"order#{n}" for n in range(5)]
    assert "5 records read" in result.stderr
    # the checkpoints were kept: a second drain delivers only what is new
    put(moto_url, table, {"pk": "order#5"})
    again = job.run("--drain", "--checkpoints", f"sqlite:{db}")
    assert again.returncode == 0, again.stderr
    assert [r["pk"] for r in job.delivered()] == [f"order#{n}" for n in range(6)]
    assert "1 record read" in again.stderr


def test_sigterm_stops_gracefully_with_exit_0_after_serving_metrics_and_readiness(
    job: Job, moto_url: str, table: str
) -> None:
    put(moto_url, table, *({"pk": f"order#{n}"} for n in range(3)))
    port = free_port()
    process = job.start("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/ready")[0] == 200 and len(job.delivered()) == 3)
        assert http_get(f"{base}/healthz") == (200, "ok\n")
        put(moto_url, table, {"pk": "order#3"})
        wait_for(lambda: len(job.delivered()) == 4)

        def read_total() -> float:
            status, text = http_get(f"{base}/metrics")
            return sum(samples(text, "flowstream_records_read_total").values()) if status else 0

        wait_for(lambda: read_total() == 4)
        text = http_get(f"{base}/metrics")[1]
        delivered = samples(text, "flowstream_records_delivered_total")
        ((labels, count),) = delivered.items()
        assert dict(labels)["sink"] == f"jsonl({job.out})"
        assert count == 4.0
        assert samples(text, "flowstream_shards_stopped") == {(("pipeline", "orders"),): 0.0}
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "stopping (SIGTERM)" in stderr
    assert "4 records read" in stderr


def test_a_stopped_shard_fails_readiness_and_exit_ends_the_run_with_status_3(
    job: Job, moto_url: str, table: str
) -> None:
    put(moto_url, table, {"pk": "order#0"}, {"pk": "order#1", "poison": True}, {"pk": "order#2"})
    port = free_port()
    process = job.start("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/ready")[0] == 503 and len(job.delivered()) == 1)
        body = http_get(f"{base}/ready")[1]
        assert "stopped" in body
        assert "poison item order#1" in body
        text = http_get(f"{base}/metrics")[1]
        assert samples(text, "flowstream_shards_stopped") == {(("pipeline", "orders"),): 1.0}
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        process.kill()
    # a stopped shard with --on-shard-stopped exit: the run ends by itself, status 3
    result = job.run("--on-shard-stopped", "exit")
    assert result.returncode == 3, result.stderr
    assert "poison item order#1" in result.stderr
    assert "fix the cause and run again" in result.stderr
    # and a drain that leaves a shard stopped says so the same way
    assert job.run("--drain").returncode == 3


def test_json_logs_off_a_terminal_are_one_object_per_line(
    job: Job, moto_url: str, table: str
) -> None:
    put(moto_url, table, {"pk": "order#0", "poison": True})
    result = job.run("--drain", "--log-format", "json")
    assert result.returncode == 3
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    errors = [line for line in logged if line["level"] == "error"]
    assert errors
    assert "poison item order#0" in errors[0]["message"]
    assert {"time", "level", "logger", "message"} <= set(errors[0])


def test_the_live_view_on_a_terminal_shows_shards_and_sinks_and_stops_on_sigterm(
    job: Job, moto_url: str, table: str
) -> None:
    put(moto_url, table, *({"pk": f"order#{n}"} for n in range(3)))
    primary, secondary = pty.openpty()
    env = {**job.env, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        job.command(), env=env, stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    screen = b""

    def shows(*words: bytes) -> bool:
        nonlocal screen
        while select.select([primary], [], [], 0.05)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        return all(word in screen for word in words)

    try:
        wait_for(lambda: shows(b"pipeline orders", b"iterator age", b"delivered", b"jsonl"))
        wait_for(lambda: len(job.delivered()) == 3)
        wait_for(lambda: shows(b"ready"))
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            shows()
    finally:
        process.kill()
        process.wait()
        os.close(primary)
    assert process.returncode == 0
    assert b"running" in screen  # a shard's state, in the table


def test_a_target_that_is_not_a_pipeline_is_one_line_and_exit_1(job: Job) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowstream", "run", f"{job.target}:missing"],
        env=job.env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("flowstream run: error:")
    assert "not a Pipeline" in result.stderr
