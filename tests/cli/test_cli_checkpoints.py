"""Moving a pipeline's checkpoints on purpose: the stores' `inspect()` (read without
claiming) and `overwrite()` (backwards too, refused while a live run holds the claim),
and `flowstream checkpoints reset|set` as real processes, which change nothing without
--yes and refuse a running pipeline."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli.cli_support import Aws, flowstream

from flowstream import checkpoints
from flowstream.checkpoints.base import CheckpointStore
from flowstream.cli_options import checkpoint_store
from flowstream.errors import CheckpointError, PipelineError

STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-01-01T00:00:00.000"


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    if request.param == "memory":
        yield checkpoints.memory()
    elif request.param == "sqlite":
        yield checkpoints.sqlite(tmp_path / "state.db")
    else:
        moto_url = request.getfixturevalue("moto_url")
        yield checkpoints.dynamodb("flowstream-state", endpoint_url=moto_url)


async def test_overwrite_moves_backwards_and_deletes(store: CheckpointStore) -> None:
    async with store.open("p", STREAM) as run:
        await run.save({"s1": "500", "s2": "SHARD_END", "s3": "7"})
    await store.overwrite("p", STREAM, {"s1": "100", "s2": "42", "s3": None, "s4": "9"})
    stored = await store.inspect("p", STREAM)
    assert stored.positions == {"s1": "100", "s2": "42", "s4": "9"}
    assert stored.claim is None  # the run released its claim, and overwrite keeps none
    async with store.open("p", STREAM) as run:
        assert await run.load() == {"s1": "100", "s2": "42", "s4": "9"}
        await run.save({"s1": "101"})  # a run goes on forward from there
    assert (await store.inspect("p", STREAM)).positions["s1"] == "101"
    assert (await store.inspect("other", STREAM)).positions == {}


async def test_overwrite_refuses_a_position_that_is_not_one(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointError, match="'0100' is not a position"):
        await store.overwrite("p", STREAM, {"s1": "5", "s2": "0100"})
    assert (await store.inspect("p", STREAM)).positions == {}


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
async def test_a_running_pipeline_is_read_not_disturbed_and_not_overwritten(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store: CheckpointStore
    if kind == "sqlite":
        store = checkpoints.sqlite(tmp_path / "state.db")
    else:
        store = checkpoints.dynamodb(
            "flowstream-state", endpoint_url=request.getfixturevalue("moto_url")
        )
    async with store.open("p", STREAM) as run:
        await run.save({"s1": "500"})
        stored = await store.inspect("p", STREAM)
        assert stored.positions == {"s1": "500"}
        assert stored.claim is not None
        with pytest.raises(CheckpointError, match=r"'p' is running on these checkpoints in "):
            await store.overwrite("p", STREAM, {"s1": None})
        await run.heartbeat()  # the run still holds its claim
        assert await run.load() == {"s1": "500"}
    await store.overwrite("p", STREAM, {"s1": None})  # stopped: now it may
    assert (await store.inspect("p", STREAM)).positions == {}


async def test_inspect_does_not_create_what_is_not_there(tmp_path: Path, moto_url: str) -> None:
    assert (await checkpoints.sqlite(tmp_path / "none.db").inspect("p", STREAM)).positions == {}
    assert not (tmp_path / "none.db").exists()
    store = checkpoints.dynamodb("no-such-table", endpoint_url=moto_url)
    with pytest.raises(CheckpointError, match="'no-such-table' does not exist"):
        await store.inspect("p", STREAM)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sqlite:", "is not a checkpoint store; write sqlite:PATH"),
        ("redis:localhost", "is not a checkpoint store"),
        ("memory:x", "is not a checkpoint store"),
        ("dynamodb:a", "'a' is not a DynamoDB table name"),
    ],
)
def test_checkpoint_specs_that_are_not_stores(spec: str, message: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(message)) as caught:
        checkpoint_store(spec)
    assert str(caught.value).startswith(f"--checkpoints {spec!r}")


def test_checkpoint_specs(tmp_path: Path) -> None:
    assert checkpoint_store("memory").describe() == "memory()"
    assert checkpoint_store(f"sqlite:{tmp_path}/x.db").describe() == f"sqlite({tmp_path}/x.db)"
    assert checkpoint_store("dynamodb:flowstream-state").describe() == "dynamodb(flowstream-state)"


# -- the command -------------------------------------------------------------------------


class Moto:
    """A table with a stream and a pipeline's checkpoints on it in an SQLite file."""

    def __init__(self, moto_url: str, tmp_path: Path) -> None:
        self.url = moto_url
        self.aws = Aws(moto_url)
        self.stream_arn = self.aws.create_table("Orders")
        for n in range(3):
            self.aws.put("Orders", pk=f"k{n}", n=n)
        self.sequence_numbers = [
            r["dynamodb"]["SequenceNumber"] for r in self.aws.records(self.stream_arn)
        ]
        description = self.aws.streams.describe_stream(StreamArn=self.stream_arn)
        self.shard_id: str = description["StreamDescription"]["Shards"][0]["ShardId"]
        self.path = tmp_path / "state.db"
        self.store = checkpoints.sqlite(self.path)

    async def positions(self) -> dict[str, str]:
        return (await self.store.inspect("orders", self.stream_arn)).positions

    async def cli(self, *args: str) -> tuple[int, str, str]:
        done = await flowstream(
            "--endpoint-url", self.url, "checkpoints", *args[:1], "Orders",
            "--pipeline", "orders", "--checkpoints", f"sqlite:{self.path}", *args[1:],
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
async def moto(moto_url: str, tmp_path: Path) -> Moto:
    setup = Moto(moto_url, tmp_path)
    await setup.store.overwrite("orders", setup.stream_arn, {setup.shard_id: "SHARD_END"})
    return setup


async def test_reset_shows_the_change_and_makes_it_only_with_yes(moto: Moto) -> None:
    code, out, err = await moto.cli("reset")
    assert code == 1
    assert f"  {moto.shard_id}: SHARD_END -> (none" in out
    assert err == (
        "flowstream checkpoints reset: nothing changed; run again with --yes to make this change\n"
    )
    assert await moto.positions() == {moto.shard_id: "SHARD_END"}

    code, out, err = await moto.cli("reset", "--yes")
    assert (code, err) == (0, "")
    assert out.endswith("changed 1 checkpoint(s)\n")
    assert await moto.positions() == {}

    code, out, _ = await moto.cli("reset", "--yes")
    assert code == 0
    assert out.endswith("  nothing to change\n")


async def test_set_moves_a_checkpoint_backwards_and_status_shows_it(moto: Moto) -> None:
    first = moto.sequence_numbers[0]
    code, out, err = await moto.cli("set", "--position", f"{moto.shard_id}={first}", "--yes")
    assert (code, err) == (0, "")
    assert f"  {moto.shard_id}: SHARD_END -> {first}" in out
    assert await moto.positions() == {moto.shard_id: first}
    status = await flowstream(
        "--endpoint-url", moto.url, "status", "Orders",
        "--pipeline", "orders", "--checkpoints", f"sqlite:{moto.path}",
    )  # fmt: skip
    assert re.search(rf"checkpoint {first}: behind, next record \ds old$", status.stdout)


async def test_a_running_pipeline_is_refused(moto: Moto) -> None:
    async with moto.store.open("orders", moto.stream_arn) as run:
        code, _out, err = await moto.cli("reset", "--yes")
        await run.heartbeat()
    assert code == 1
    assert re.fullmatch(
        r"flowstream checkpoints reset: error: sqlite\(.*\): pipeline 'orders' is running on "
        r"these checkpoints in \S+ \(its last heartbeat \ds ago\), so they were not changed; "
        r"stop that process first .*\n",
        err,
    )
    assert await moto.positions() == {moto.shard_id: "SHARD_END"}


@pytest.mark.parametrize(
    ("position", "message"),
    [
        ("shardId-x=5", "shard shardId-x is not in the stream"),
        ("{shard}=1", "the shard starts at"),
        ("{shard}=007", "is not SHARD=POSITION"),
        ("{shard}", "is not SHARD=POSITION"),
    ],
)
async def test_set_refuses_what_is_not_a_position_of_the_stream(
    moto: Moto, position: str, message: str
) -> None:
    code, _out, err = await moto.cli(
        "set", "--position", position.format(shard=moto.shard_id), "--yes"
    )
    assert code == 1
    assert message in err
    assert err.count("\n") == 1
    assert await moto.positions() == {moto.shard_id: "SHARD_END"}


async def test_usage_errors_exit_2(moto: Moto) -> None:
    code, _, err = await moto.cli("set", "--yes")  # no --position
    assert code == 2
    assert "--position" in err
    done = await flowstream("checkpoints", "reset", "Orders", "--checkpoints", "sqlite:x.db")
    assert done.returncode == 2
    assert "--pipeline" in done.stderr
