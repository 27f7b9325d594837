"""Helpers for the CLI's tests: the `flowstream` command run as a real process (finished,
or running with its output read line by line), and tables with streams on moto's server
made through boto3."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import boto3
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["Aws", "Done", "Running", "base_env", "flowstream", "running"]

#: A CLI run against a local endpoint: a slow start on a busy machine is a few seconds.
TIMEOUT = 30.0


def base_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a CLI process: fake credentials and region, and no endpoint
    variables of this shell (each test says where to go); None removes a variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    env.pop("PYTHONUNBUFFERED", None)  # flushing per line is the CLI's job: do not help it
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


async def flowstream(
    *args: str, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> Done:
    """Run ``python -m flowstream ARGS`` to its end."""
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(
            [sys.executable, "-m", "flowstream", *args],
            env=dict(env) if env is not None else base_env(),
            cwd=cwd,
            check=False,
            input=b"",  # stdin at its end (anyio 4.4's run_process has no stdin=)
        )
    return Done(result.returncode, result.stdout.decode(), result.stderr.decode())


class Running:
    """A `flowstream` process still running: its output line by line as it comes."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self.lines: list[str] = []

    async def line(self) -> str:
        """The next line of standard output; fails the test after `TIMEOUT` seconds."""
        with anyio.fail_after(TIMEOUT):
            data = await self._stdout.receive_until(b"\n", 1 << 20)
        text = data.decode()
        self.lines.append(text)
        return text

    async def wait(self) -> Done:
        """Wait for the process to end (`TIMEOUT`); what is left of its output."""
        rest = bytearray()
        with anyio.fail_after(TIMEOUT):
            with anyio.CancelScope():
                try:
                    while True:
                        rest += await self._stdout.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    pass
            code = await self.process.wait()
        assert self.process.stderr is not None
        err = bytearray()
        try:
            while True:
                err += await self.process.stderr.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        return Done(code, rest.decode(), err.decode())


@asynccontextmanager
async def running(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Running]:
    """``python -m flowstream ARGS`` running; killed on exit if still running."""
    process = await anyio.open_process(
        [sys.executable, "-m", "flowstream", *args],
        env=dict(env) if env is not None else base_env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        yield Running(process)
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


class Aws:
    """boto3 clients of a local endpoint."""

    def __init__(self, endpoint_url: str, region: str = "us-east-1") -> None:
        options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region}
        self.dynamodb: Any = boto3.client("dynamodb", **options)
        self.streams: Any = boto3.client("dynamodbstreams", **options)

    def create_table(self, name: str, view_type: str | None = "NEW_AND_OLD_IMAGES") -> str:
        """A table keyed by pk (S) with a stream of `view_type`; the stream's ARN."""
        options: dict[str, Any] = {}
        if view_type is not None:
            options["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
        table = self.dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            **options,
        )["TableDescription"]
        return str(table.get("LatestStreamArn", ""))

    def put(self, table: str, **item: Any) -> None:
        """PutItem of an item given as plain values (str, int, set of str)."""
        self.dynamodb.put_item(TableName=table, Item={k: _wire(v) for k, v in item.items()})

    def delete(self, table: str, pk: str) -> None:
        self.dynamodb.delete_item(TableName=table, Key={"pk": {"S": pk}})

    def records(self, stream_arn: str) -> list[dict[str, Any]]:
        """The stream's records as GetRecords returns them (moto: one shard)."""
        streams = self.streams
        shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
        records: list[dict[str, Any]] = []
        for shard in shards:
            iterator = streams.get_shard_iterator(
                StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = streams.get_records(ShardIterator=iterator)
                if not page["Records"]:
                    break
                records.extend(page["Records"])
                iterator = page.get("NextShardIterator")
        return records


def _wire(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, set):
        return {"SS": sorted(value)}
    return {"S": str(value)}
