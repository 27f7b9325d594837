"""`flowstream describe` and `flowstream status` as real processes: the lineage tree of a
stream with many shards (LocalStreamsServer) and of moto's table, each shard's checkpoint
and how far behind it is, read without taking a running pipeline's claim."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli.cli_support import Aws, flowstream

from flowstream import checkpoints
from flowstream.testing import LocalStreamsServer, MemoryStream

# -- a stream with lineage: A split into B and C, C split into D and E ------------------


def lineage() -> tuple[MemoryStream, dict[str, str]]:
    stream = MemoryStream(table="Orders")
    a = stream.add_shard()
    for n in range(3):
        stream.put(a, "INSERT", {"pk": f"a{n}"}, {"pk": f"a{n}", "n": n})
    b, c = stream.split(a)
    old = datetime.now(UTC) - timedelta(minutes=5)
    stream.put(b, "INSERT", {"pk": "b0"}, {"pk": "b0"}, created_at=old)
    stream.put(b, "MODIFY", {"pk": "b0"}, {"pk": "b0", "n": 1}, {"pk": "b0"})
    stream.put(c, "INSERT", {"pk": "c0"}, {"pk": "c0"})
    d, e = stream.split(c)
    stream.put(d, "INSERT", {"pk": "d0"}, {"pk": "d0"})
    return stream, {"A": a, "B": b, "C": c, "D": d, "E": e}


def shard_line(out: str, shard_id: str) -> str:
    (line,) = [line for line in out.splitlines() if shard_id in line.split()]
    return line


async def test_the_shards_of_a_stream_as_a_lineage_tree() -> None:
    stream, ids = lineage()
    async with LocalStreamsServer(stream) as server:
        by_table = await flowstream("--endpoint-url", server.endpoint_url, "describe", "Orders")
        by_arn = await flowstream(
            "--endpoint-url", server.endpoint_url, "describe", "--stream-arn", server.stream_arn
        )
    assert by_table.returncode == 0, by_table.stderr
    assert by_table.stdout == by_arn.stdout
    lines = by_table.stdout.splitlines()
    assert lines[0] == f"stream {stream.stream_arn}: 5 shard(s), 3 open"
    a, b, c, d, e = (ids[k] for k in "ABCDE")
    shards = {s.shard_id: s for s in (stream._shard(i).describe() for i in ids.values())}
    tree = [
        (a, "", "closed"),
        (b, "├── ", "open"),
        (c, "└── ", "closed"),
        (d, "    ├── ", "open"),
        (e, "    └── ", "open"),
    ]
    assert len(lines) == 1 + len(tree)
    for line, (shard_id, branch, state) in zip(lines[1:], tree, strict=True):
        shard = shards[shard_id]
        ending = shard.ending_sequence_number or ""
        assert line == (f"{branch}{shard_id}  {state}  {shard.starting_sequence_number}..{ending}")


async def test_status_shows_each_checkpoint_and_how_far_behind_it_is(tmp_path: Path) -> None:
    stream, ids = lineage()
    records = {key: stream.records(shard_id) for key, shard_id in ids.items()}
    store = checkpoints.sqlite(tmp_path / "state.db")
    async with store.open("orders", stream.stream_arn) as session:
        await session.save(
            {
                ids["A"]: "SHARD_END",
                # B: before its first record (5 minutes old) was done
                ids["B"]: str(int(records["B"][0].sequence_number) - 1),
                ids["C"]: records["C"][-1].sequence_number,  # C: its last record, not ended
                ids["D"]: records["D"][-1].sequence_number,  # D: open, at its last record
            }
        )
    spec = f"sqlite:{tmp_path / 'state.db'}"
    async with LocalStreamsServer(stream) as server:
        text = await flowstream(
            "--endpoint-url", server.endpoint_url, "status", "Orders",
            "--pipeline", "orders", "--checkpoints", spec,
        )  # fmt: skip
        as_json = await flowstream(
            "--endpoint-url", server.endpoint_url, "describe", "Orders",
            "--pipeline", "orders", "--checkpoints", spec, "--format", "json",
        )  # fmt: skip
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.splitlines()[1] == f"checkpoints sqlite({tmp_path / 'state.db'}): not running"
    assert shard_line(out, ids["A"]).endswith("checkpoint SHARD_END: done")
    assert re.search(r"checkpoint \d+: behind, next record 5m0\ds old$", shard_line(out, ids["B"]))
    assert shard_line(out, ids["C"]).endswith(": read to its end (SHARD_END not saved yet)")
    assert shard_line(out, ids["D"]).endswith(": caught up")
    assert shard_line(out, ids["E"]).endswith("  not started")

    document = json.loads(as_json.stdout)
    assert document["stream_arn"] == stream.stream_arn
    assert document["pipeline"] == "orders"
    progress = {s["shard_id"]: s["progress"] for s in document["shards"]}
    assert progress == {
        ids["A"]: "done",
        ids["B"]: "behind",
        ids["C"]: "ended",
        ids["D"]: "caught_up",
        ids["E"]: "not_started",
    }
    (b,) = [s for s in document["shards"] if s["shard_id"] == ids["B"]]
    assert 299 <= b["next_record_age"] < 400
    assert b["parent_shard_id"] == ids["A"]


async def test_status_reads_a_running_pipelines_checkpoints_without_taking_them(
    tmp_path: Path,
) -> None:
    stream, ids = lineage()
    store = checkpoints.sqlite(tmp_path / "state.db")
    async with LocalStreamsServer(stream) as server, store.open("orders", stream.stream_arn) as run:
        await run.save({ids["A"]: "SHARD_END"})
        done = await flowstream(
            "--endpoint-url", server.endpoint_url, "status", "--stream-arn", server.stream_arn,
            "--pipeline", "orders", "--checkpoints", f"sqlite:{tmp_path / 'state.db'}",
            "--no-lag",
        )  # fmt: skip
        await run.heartbeat()  # still this run's: raises when the claim was taken
    assert done.returncode == 0, done.stderr
    assert re.search(r"running in \S+:\d+:\w+ \(heartbeat \ds ago\)$", done.stdout.splitlines()[1])
    assert shard_line(done.stdout, ids["A"]).endswith("checkpoint SHARD_END: done")
    # --no-lag: what the checkpoint alone says, without reading the stream
    assert shard_line(done.stdout, ids["D"]).endswith("  not started")


async def test_describe_a_moto_table_and_its_lease_table(moto_url: str) -> None:
    aws = Aws(moto_url)
    stream_arn = aws.create_table("Orders")
    aws.put("Orders", pk="a", n=1)
    aws.put("Orders", pk="b", n=2)
    first = aws.records(stream_arn)[0]["dynamodb"]["SequenceNumber"]
    shard_id = aws.streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0][
        "ShardId"
    ]
    aws.dynamodb.create_table(
        TableName="orders-leases",
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.dynamodb.put_item(
        TableName="orders-leases",
        Item={
            "leaseKey": {"S": shard_id},
            "leaseOwner": {"S": "worker-1"},
            "leaseCounter": {"N": "7"},
            "checkpoint": {"S": first},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
        },
    )
    plain = await flowstream("--endpoint-url", moto_url, "describe", "Orders")
    leased = await flowstream(
        "--endpoint-url", moto_url, "describe", "Orders", "--leases", "orders-leases"
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        f"stream {stream_arn}: 1 shard(s), 1 open",
        f"{shard_id}  open  {first}..",
    ]
    assert leased.returncode == 0, leased.stderr
    lines = leased.stdout.splitlines()
    assert lines[1] == "lease table orders-leases: held by worker-1"
    assert re.fullmatch(
        rf"{shard_id}  open  {first}\.\.  checkpoint {first}: behind, next record \ds old  "
        r"\[lease: worker-1\]",
        lines[2],
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["describe", "NoSuchTable"], 1, "table 'NoSuchTable' does not exist in us-east-1"),
        (["describe", "Plain"], 1, "table 'Plain' has no enabled stream"),
        (["describe"], 2, "give TABLE or --stream-arn ARN"),
        (["describe", "Plain", "--stream-arn", "arn:x"], 2, "give TABLE or --stream-arn ARN"),
        (["describe", "Plain", "--checkpoints", "sqlite:x.db"], 2,
         "--checkpoints needs --pipeline"),
        (["status", "Plain", "--checkpoints", "sqlite:x.db"], 2, "--pipeline"),
        (["status", "Plain", "--pipeline", "p", "--checkpoints", "redis:x"], 1,
         "--checkpoints 'redis:x' is not a checkpoint store; write sqlite:PATH"),
        (["status", "Plain", "--pipeline", "p", "--checkpoints", "sqlite:missing.db"], 1,
         "there is no file missing.db"),
        (["status", "Plain", "--pipeline", "p", "--checkpoints", "memory"], 1,
         "in-memory checkpoints live and die with the process"),
    ],
)  # fmt: skip
async def test_errors_are_one_line_with_their_exit_status(
    moto_url: str, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    Aws(moto_url).create_table("Plain", view_type=None)
    done = await flowstream("--endpoint-url", moto_url, *args, cwd=str(tmp_path))
    assert done.returncode == code, done
    assert message in done.stderr
    assert done.stdout == ""
    if code == 1:
        assert done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"flowstream {args[0]}: error: ")
