"""`flowstream tail` as a real process: records in the stream's JSON shape that read back
as the same records, the pretty diff of old and new images, filters, --limit, lines that
reach a pipe while tail runs, and quiet ends on SIGTERM, SIGINT and a closed pipe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anyio
import pytest
from cli.cli_support import Aws, base_env, flowstream, running

import flowstream as fs
from flowstream.testing import LocalStreamsServer, MemoryStream


def write_changes(aws: Aws) -> str:
    """An INSERT, a MODIFY (one attribute changed, one added, one removed) and a REMOVE."""
    stream_arn = aws.create_table("Orders")
    aws.put("Orders", pk="a", n=1, tags={"x", "y"})
    aws.put("Orders", pk="a", n=2, note="hi")
    aws.delete("Orders", "a")
    return stream_arn


async def test_json_lines_are_the_stream_records_and_read_back_as_them(moto_url: str) -> None:
    aws = Aws(moto_url)
    stream_arn = write_changes(aws)
    done = await flowstream(
        "--endpoint-url", moto_url, "tail", "Orders",
        "--from", "trim_horizon", "--format", "json", "--limit", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    wire = aws.records(stream_arn)
    for line, original in zip(lines, wire, strict=True):
        printed = json.loads(line)
        assert set(printed) >= {"eventID", "eventName", "dynamodb", "awsRegion", "shardId"}
        assert printed["eventID"] == original["eventID"]
        assert printed["eventName"] == original["eventName"]
        for part in ("Keys", "NewImage", "OldImage", "SequenceNumber", "StreamViewType"):
            assert printed["dynamodb"].get(part) == original["dynamodb"].get(part)
        (record,) = fs.decode_records([printed])
        assert json.loads(record.to_json()) == printed
    first, second, third = (fs.decode_records([json.loads(line)])[0] for line in lines)
    assert first.new_image == {"pk": "a", "n": 1, "tags": {"x", "y"}}
    assert second.old_image == first.new_image
    assert third.event_name == "REMOVE"


async def test_pretty_shows_the_event_the_keys_and_what_changed(moto_url: str) -> None:
    write_changes(Aws(moto_url))
    done = await flowstream(
        "--endpoint-url", moto_url, "tail", "Orders", "--from", "trim_horizon", "--limit", "3"
    )
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if not line.startswith("  ")]
    assert [head.split()[1:3] for head in heads] == [
        ["INSERT", 'pk="a"'],
        ["MODIFY", 'pk="a"'],
        ["REMOVE", 'pk="a"'],
    ]
    blocks = done.stdout.split("\n")
    insert = blocks[1:3]
    assert insert == ["  + n: 1", '  + tags: {"x", "y"}']
    modify = blocks[4:7]
    assert modify == ["  ~ n: 1 -> 2", '  + note: "hi"', '  - tags: {"x", "y"}']
    remove = blocks[8:10]
    assert remove == ["  - n: 2", '  - note: "hi"']


@pytest.mark.parametrize(
    ("options", "event"),
    [
        (["--events", "remove"], "REMOVE"),
        (["--events", "MODIFY,REMOVE"], "MODIFY"),
        (["--pattern", '{"dynamodb": {"NewImage": {"note": {"S": ["hi"]}}}}'], "MODIFY"),
        (["--events", "INSERT,MODIFY", "--pattern",
          '{"dynamodb": {"OldImage": {"n": {"N": [{"exists": true}]}}}}'], "MODIFY"),
    ],
)  # fmt: skip
async def test_events_and_pattern_filter_what_is_printed(
    moto_url: str, options: list[str], event: str
) -> None:
    write_changes(Aws(moto_url))
    done = await flowstream(
        "--endpoint-url", moto_url, "tail", "Orders", "--from", "trim_horizon",
        "--format", "json", "--limit", "1", *options,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["eventName"] == event


async def test_many_shards_every_record_once_in_shard_order() -> None:
    stream = MemoryStream(table="Orders")
    root = stream.add_shard()
    for n in range(5):
        stream.put(root, "INSERT", {"pk": f"r{n}"}, {"pk": f"r{n}"})
    left, right = stream.split(root)
    for n in range(5):
        stream.put(left, "INSERT", {"pk": f"l{n}"}, {"pk": f"l{n}"})
        stream.put(right, "INSERT", {"pk": f"g{n}"}, {"pk": f"g{n}"})
    async with LocalStreamsServer(stream) as server:
        done = await flowstream(
            "--endpoint-url", server.endpoint_url, "tail", "--stream-arn", server.stream_arn,
            "--from", "trim_horizon", "--format", "json", "--limit", "15",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    by_shard: dict[str, list[str]] = {}
    for record in printed:
        by_shard.setdefault(record["shardId"], []).append(record["dynamodb"]["SequenceNumber"])
    for shard_id, sequence_numbers in by_shard.items():
        assert sequence_numbers == [r.sequence_number for r in stream.records(shard_id)]
    # children after their parent
    last_parent = max(i for i, r in enumerate(printed) if r["shardId"] == root)
    assert all(r["shardId"] == root for r in printed[: last_parent + 1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_lines_reach_a_pipe_as_they_happen_and_a_signal_ends_quietly(
    moto_url: str, signum: signal.Signals
) -> None:
    aws = Aws(moto_url)
    aws.create_table("Orders")
    aws.put("Orders", pk="before", n=0)
    async with running("--endpoint-url", moto_url, "tail", "Orders", "--format", "json") as tail:
        # --from latest (the default): written before tail started reading is not shown;
        # keep writing until a change shows, which proves lines are flushed as they come
        seen: list[str] = []
        with anyio.fail_after(30):
            n = 0
            async with anyio.create_task_group() as group:

                async def read() -> None:
                    seen.append(await tail.line())
                    group.cancel_scope.cancel()

                group.start_soon(read)
                while True:
                    n += 1
                    aws.put("Orders", pk=f"live{n}", n=n)
                    await anyio.sleep(0.1)  # the pace of writing, not a wait for tail
        record = json.loads(seen[0])
        assert record["dynamodb"]["Keys"]["pk"]["S"].startswith("live")
        tail.process.send_signal(signum)
        done = await tail.wait()
    assert done.returncode == 0
    assert done.stderr == ""


def popen(*args: str) -> subprocess.Popen[bytes]:
    """``python -m flowstream ARGS`` with pipes this test can close (anyio's cannot)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flowstream", *args],
        env=base_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_a_closed_pipe_ends_tail_quietly(moto_url: str) -> None:
    aws = Aws(moto_url)
    write_changes(aws)
    process = popen(
        "--endpoint-url", moto_url, "tail", "Orders", "--from", "trim_horizon", "--format", "json"
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.fail_after(30):
            first = await anyio.to_thread.run_sync(process.stdout.readline)
            assert json.loads(first)["eventName"] == "INSERT"
            process.stdout.close()  # as `| head -1` does once it has its line
            n = 0
            while process.poll() is None:
                n += 1
                aws.put("Orders", pk=f"more{n}", n=n)
                await anyio.sleep(0.1)  # the pace of writing, not a wait for tail
        assert process.returncode == 0
        assert process.stderr.read() == b""
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tail", "NoSuchTable"], 1, "table 'NoSuchTable' does not exist"),
        (["tail", "Orders", "--events", "INSERT,UPSERT"], 2, "--events 'INSERT,UPSERT'"),
        (["tail", "Orders", "--limit", "0"], 2, "--limit must be 1 or more"),
        (["tail", "Orders", "--from", "now"], 2, "invalid choice: 'now'"),
        (["tail", "Orders", "--pattern", '{"eventName": "INSERT"}'], 1,
         '--pattern: eventName: a value must be an array'),
        (["tail", "Orders", "--pattern", "@missing.json"], 1,
         "--pattern @missing.json: cannot read the file"),
    ],
)  # fmt: skip
async def test_errors_are_one_line_with_their_exit_status(
    moto_url: str, args: list[str], code: int, message: str
) -> None:
    Aws(moto_url).create_table("Orders")
    done = await flowstream("--endpoint-url", moto_url, *args)
    assert done.returncode == code, done
    assert message in done.stderr
    assert done.stdout == ""
    if code == 1:
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith("flowstream tail: error: ")
