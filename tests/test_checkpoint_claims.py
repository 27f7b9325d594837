"""One process per pipeline and store (flowstream/checkpoints/owner.py): a second process
running the same pipeline on the same sqlite file or DynamoDB checkpoint table is
refused with an error that points to leases; a dead process's claim is taken over."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
from sink_support import new_session
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import CheckpointStore
from flowstream.checkpoints.dynamodb import DynamoDBCheckpoints, partition_key
from flowstream.checkpoints.owner import STALE_AFTER
from flowstream.checkpoints.sqlite import SqliteCheckpoints
from flowstream.errors import CheckpointError
from flowstream.testing import MemoryStream

STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2024-01-01T00:00:00.000"
SESSION = new_session()
TABLE = "claims-checkpoints"

StoreMaker = Callable[[], CheckpointStore]


@pytest.fixture(params=["sqlite", "dynamodb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        return lambda: checkpoints.sqlite(path)
    moto_url = request.getfixturevalue("moto_url")
    return lambda: checkpoints.dynamodb(TABLE, endpoint_url=moto_url, session=SESSION)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def forge_claim(store: CheckpointStore, host: str, pid: int, heartbeat: float) -> None:
    """Write the claim on pipeline "orders" that process `pid` of `host` left."""
    pipeline, owner = "orders", f"{host}:{pid}:x"
    if isinstance(store, SqliteCheckpoints):
        with sqlite3.connect(store.path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO flowstream_owners VALUES (?, ?, ?, ?, ?, ?)",
                (pipeline, STREAM, owner, host, pid, heartbeat),
            )
        return
    assert isinstance(store, DynamoDBCheckpoints)

    client: Any = boto3.client("dynamodb", endpoint_url=store.endpoint_url, region_name="us-east-1")
    client.put_item(
        TableName=TABLE,
        Item={
            "pipeline_stream": {"S": partition_key(pipeline, STREAM)},
            "shard": {"S": "#owner"},
            "owner": {"S": owner},
            "host": {"S": host},
            "pid": {"N": str(pid)},
            "heartbeat": {"N": f"{heartbeat:.3f}"},
        },
    )


class TestOneProcess:
    async def test_a_second_open_of_the_same_pipeline_is_refused(
        self, make_store: StoreMaker
    ) -> None:
        async with make_store().open("orders", STREAM):
            with pytest.raises(CheckpointError) as caught:
                async with make_store().open("orders", STREAM):
                    pass
        message = str(caught.value)
        assert "pipeline 'orders' is already running on these checkpoints in " in message
        assert f"{socket.gethostname()}:{os.getpid()}:" in message
        assert "run(leases=leases.dynamodb(table))" in message
        assert "docs/scaling.md" in message

    async def test_other_pipelines_and_later_runs_are_not(self, make_store: StoreMaker) -> None:
        async with make_store().open("orders", STREAM), make_store().open("audit", STREAM):
            pass
        async with make_store().open("orders", STREAM):  # the first one let go
            pass

    async def test_the_claim_of_a_dead_process_on_this_host_is_taken_at_once(
        self, make_store: StoreMaker
    ) -> None:
        store = make_store()
        async with store.open("warm-up", STREAM):  # creates the file or table
            pass
        pid = dead_pid()
        host = socket.gethostname()
        forge_claim(store, host, pid, time.time())
        async with store.open("orders", STREAM):
            pass

    async def test_the_claim_of_another_host_holds_until_it_goes_stale(
        self, make_store: StoreMaker
    ) -> None:
        store = make_store()
        async with store.open("warm-up", STREAM):
            pass
        forge_claim(store, "elsewhere", 1, time.time() - 5)
        with pytest.raises(
            CheckpointError, match=r"in elsewhere:1:x \(its last heartbeat 5s ago\)"
        ):
            async with store.open("orders", STREAM):
                pass
        stale = time.time() - STALE_AFTER - 1
        forge_claim(store, "elsewhere", 1, stale)
        async with store.open("orders", STREAM):
            pass

    async def test_a_run_whose_claim_was_taken_over_stops_at_its_heartbeat(
        self, make_store: StoreMaker
    ) -> None:
        store = make_store()
        async with store.open("orders", STREAM) as session:
            await session.heartbeat()
            forge_claim(store, "elsewhere", 1, time.time())
            with pytest.raises(
                CheckpointError, match="another process took over pipeline 'orders'"
            ):
                await session.heartbeat()


SECOND_PROCESS = textwrap.dedent(
    """
    import sys, anyio
    import flowstream as fs
    from flowstream import checkpoints, sinks
    from flowstream.testing import MemoryStream

    async def main():
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", {"pk": "a"})
        pipeline = fs.Pipeline(stream, name="orders").to(sinks.collect())
        try:
            await pipeline.run(checkpoints=checkpoints.sqlite(sys.argv[1]), drain=True)
        except fs.CheckpointError as exc:
            print(exc)
            sys.exit(3)

    anyio.run(main)
    """
)


async def test_a_second_process_running_the_pipeline_on_the_same_file_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    stream = MemoryStream()
    stream.put(stream.add_shard(), "INSERT", {"pk": "a"})
    out = sinks.collect()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def first() -> None:
            pipeline = fs.Pipeline(stream, name="orders").to(out)
            await pipeline.run(checkpoints=checkpoints.sqlite(path), stop=stop)

        tg.start_soon(first)
        await wait_until(lambda: len(out.items) == 1)
        # MemoryStream lives in one process: the second one has its own, same name
        second = await anyio.run_process(
            [sys.executable, "-c", SECOND_PROCESS, str(path)], check=False
        )
        stop.set()
    assert second.returncode == 3
    text = second.stdout.decode()
    assert "pipeline 'orders' is already running on these checkpoints" in text
    assert "run(leases=leases.dynamodb(table))" in text
