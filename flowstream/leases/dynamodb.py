"""`leases.dynamodb(table)`: worker processes share a stream through a lease table in
DynamoDB, in the Kinesis Client Library's format; the table holds the checkpoints too."""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Final, final

from flowstream.aws import create_client
from flowstream.errors import CheckpointError, PipelineError
from flowstream.leases.lease import LEASE_KEY
from flowstream.leases.table import LeaseTable
from flowstream.state_table import StateTable, TableSpec

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["DynamoDBLeases", "dynamodb", "default_worker_id"]

_TABLE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_WORKER_ID: Final = re.compile(r"[^\s]{1,256}")


def default_worker_id() -> str:
    """``host:pid:random``: unique, and readable in the table and in logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@final
class DynamoDBLeases:
    """A lease table; build it with `leases.dynamodb(table)` and pass it as
    `pipeline.run(leases=...)`."""

    def __init__(
        self,
        table: str,
        *,
        worker_id: str,
        failover_time: float,
        create: bool,
        endpoint_url: str | None,
        region: str | None,
        session: AioSession | None,
        timeout: float,
        max_connections: int,
        flush_interval: float,
        cleanup_after: float,
    ) -> None:
        self.table = table
        self.worker_id = worker_id
        self.failover_time = failover_time
        self.create = create
        self.endpoint_url = endpoint_url
        self.region = region
        self.session = session
        self.timeout = timeout
        self.max_connections = max_connections
        self.flush_interval = flush_interval
        self.cleanup_after = cleanup_after

    @property
    def renew_interval(self) -> float:
        """Seconds between renewals of the leases held (a third of the failover time, as
        the KCL does: two renewals may fail before a lease expires)."""
        return self.failover_time / 3

    def describe(self) -> str:
        return f"leases.dynamodb({self.table})"

    def open(self) -> AbstractAsyncContextManager[LeaseTable]:
        """Open the lease table (created with the KCL's key schema when missing)."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[LeaseTable]:
        spec = TableSpec(
            name=self.table,
            kind="lease table",
            store=self.describe(),
            keys={LEASE_KEY: "HASH"},
            create=self.create,
            timeout=self.timeout,
            endpoint_url=self.endpoint_url,
            error_type=CheckpointError,
            throttled_fix="renew less often with a longer failover_time=",
        )
        async with AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(
                    create_client(
                        "dynamodb",
                        session=self.session,
                        region=self.region,
                        endpoint_url=self.endpoint_url,
                        max_connections=self.max_connections,
                    )
                )
            except Exception as exc:
                raise StateTable(spec, None).error("cannot open the lease table", exc) from None
            table = StateTable(spec, client)
            await table.ensure()
            yield LeaseTable(table)


def dynamodb(
    table: str,
    *,
    worker_id: str | None = None,
    failover_time: float = 10.0,
    create: bool = True,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    timeout: float = 10.0,
    max_connections: int = 32,
    flush_interval: float | None = None,
    cleanup_after: float = 3600.0,
) -> DynamoDBLeases:
    """Leases in the DynamoDB table `table`, one table per pipeline (as the KCL keeps one
    per application): every process running the pipeline with this table shares the
    stream, each shard processed by one worker at a time. The table holds the
    checkpoints too, so `run()` takes no `checkpoints=` with it.

    `worker_id` names this process in the table (default ``host:pid:random``).
    `failover_time` is how long a lease may go unrenewed before another worker takes it:
    a crashed worker's shards move after about that long; leases are renewed every third
    of it. `flush_interval` is the seconds between checkpoint writes, by default the
    renewal interval: a checkpoint write renews the lease too, so a busy shard costs no
    more writes than an idle one. Finished leases
    (their shard read to its end) whose shard the stream no longer lists are deleted
    after `cleanup_after` seconds. The other options are those of
    `checkpoints.dynamodb`. Needs ``dynamodb:DescribeTable``, ``dynamodb:Scan``,
    ``dynamodb:GetItem``, ``dynamodb:PutItem``, ``dynamodb:UpdateItem``,
    ``dynamodb:DeleteItem`` and, with `create=True`, ``dynamodb:CreateTable``.
    """
    name = f"leases.dynamodb({table!r})"
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
        raise PipelineError(
            f"{name}: {table!r} is not a DynamoDB table name; pass 3 to 255 letters, digits, "
            "'_', '-' or '.', e.g. leases.dynamodb('orders-pipeline-leases')"
        )
    if worker_id is None:
        worker_id = default_worker_id()
    elif not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise PipelineError(
            f"{name}: worker_id={worker_id!r} must be 1 to 256 characters without spaces, "
            "unique among the workers (default: host:pid:random)"
        )
    for option, value, least in (
        ("failover_time", failover_time, 0.0),
        ("timeout", timeout, 0.0),
        ("flush_interval", 1.0 if flush_interval is None else flush_interval, -1.0),
        ("cleanup_after", cleanup_after, -1.0),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= least
        ):
            bound = "> 0" if least == 0.0 else ">= 0"
            raise PipelineError(
                f"{name}: {option}={value!r} is not a number of seconds; pass a finite "
                f"number {bound}"
            )
    if (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or max_connections < 1
    ):
        raise PipelineError(
            f"{name}: max_connections={max_connections!r} must be a whole number >= 1"
        )
    return DynamoDBLeases(
        table,
        worker_id=worker_id,
        failover_time=float(failover_time),
        create=create,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        timeout=float(timeout),
        max_connections=max_connections,
        flush_interval=failover_time / 3 if flush_interval is None else float(flush_interval),
        cleanup_after=float(cleanup_after),
    )
