"""A checkpoint store in a DynamoDB table: durable, shared by every machine that can reach it.

One item per (pipeline, stream, shard): partition key ``pipeline_stream``, sort key
``shard``. Saves update only the position attributes (UpdateItem, never a whole-item
put). Workers that share a stream keep their checkpoints in a lease table instead
(`flowstream.leases`), in the Kinesis Client Library's format.

The never-backwards rule is the ConditionExpression of each write, so it holds for every
writer of the table. Sequence numbers are decimal strings of up to 40 digits (more than
a DynamoDB Number keeps exactly), so each item also holds ``position_order``, a string
that sorts as the position does: the digit count in three digits, a colon and the
digits, or ``SHARD_END``, which sorts after every digit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.abc

from flowstream.aws import create_client, error_code
from flowstream.checkpoints.base import (
    SHARD_END,
    CheckpointSession,
    CheckpointStore,
    StoredCheckpoints,
    check_flush_records,
    check_position,
    check_seconds,
    is_position,
)
from flowstream.checkpoints.owner import (
    HEARTBEAT,
    Claim,
    busy_error,
    claim_error,
    lost_error,
    may_take,
)
from flowstream.errors import CheckpointError
from flowstream.state_table import Retry, StateTable, TableSpec

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["DynamoDBCheckpoints", "dynamodb"]

#: The key schema of a checkpoint table (both strings).
PARTITION_KEY: Final = "pipeline_stream"
SORT_KEY: Final = "shard"

_POSITION: Final = "position"
_ORDER: Final = "position_order"
_UPDATED_AT: Final = "updated_at"

# DynamoDB's limits on key values (Developer Guide, "Service, account and table quotas").
_MAX_PARTITION_KEY_BYTES: Final = 2048
_MAX_SORT_KEY_BYTES: Final = 1024
#: Digits of the longest position `position_order` can sort (three-digit count).
_MAX_DIGITS: Final = 999
_TABLE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{3,255}")
#: The sort key of the item that says which process runs the pipeline (no shard id has
#: a '#').
_OWNER_SORT_KEY: Final = "#owner"

# Every save is one conditional update per shard; the position moves only forward, and
# SHARD_END (which sorts after every "NNN:digits") is final. A missing position_order
# (an item a lease wrote before any checkpoint) counts as nothing done yet.
_UPDATE: Final = "SET #position = :position, #order = :order, #updated_at = :updated_at"
_CONDITION: Final = "attribute_not_exists(#order) OR #order < :order"
_NAMES: Final = {"#position": _POSITION, "#order": _ORDER, "#updated_at": _UPDATED_AT}


@final
class DynamoDBCheckpoints(CheckpointStore):
    """Checkpoints in a DynamoDB table; build it with `checkpoints.dynamodb(table)`."""

    def __init__(
        self,
        table: str,
        *,
        create: bool,
        endpoint_url: str | None,
        region: str | None,
        session: AioSession | None,
        flush_interval: float,
        timeout: float,
        max_connections: int,
        flush_records: int | None = None,
    ) -> None:
        self.table = table
        self.create = create
        self.endpoint_url = endpoint_url
        self.region = region
        self.session = session
        self.flush_interval = flush_interval
        self.flush_records = flush_records
        self.timeout = timeout
        self.max_connections = max_connections

    def describe(self) -> str:
        return f"dynamodb({self.table})"

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    async def inspect(self, pipeline: str, stream_id: str) -> StoredCheckpoints:
        # Reading never creates the table: a mistyped name must not look like "nothing
        # saved yet".
        async with self._session(pipeline, stream_id, create=False) as session:
            positions = await session.load()
            return StoredCheckpoints(positions, await session.current_claim())

    async def overwrite(
        self, pipeline: str, stream_id: str, positions: Mapping[str, str | None]
    ) -> None:
        async with self._session(pipeline, stream_id, create=self.create) as session:
            writes = {
                shard: None if position is None else session._order(shard, position)
                for shard, position in positions.items()
            }
            existing = await session.current_claim()
            now = time.time()
            if existing is not None and not may_take(existing, session._claim, now):
                raise busy_error(self.describe(), pipeline, existing, now)
            # Claimed while writing, so that a run starting meanwhile is refused rather
            # than loading the positions half changed.
            await session.claim()
            try:
                await session.overwrite(positions, writes)
            finally:
                with anyio.CancelScope(shield=True):
                    await session.release()

    @asynccontextmanager
    async def _session(
        self, pipeline: str, stream_id: str, *, create: bool
    ) -> AsyncIterator[_DynamoDBSession]:
        """A session on the table that has not claimed the checkpoints."""
        key = partition_key(pipeline, stream_id)
        spec = dataclasses.replace(self._spec(), create=create)
        async with create_client(
            "dynamodb",
            session=self.session,
            region=self.region,
            endpoint_url=self.endpoint_url,
        ) as client:
            table = StateTable(spec, client)
            await table.ensure()
            yield _DynamoDBSession(self, table, key, pipeline)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        key = partition_key(pipeline, stream_id)
        if len(key.encode()) > _MAX_PARTITION_KEY_BYTES:
            raise CheckpointError(
                f"{self.describe()}: pipeline name and stream id together are "
                f"{len(key.encode())} bytes, over DynamoDB's {_MAX_PARTITION_KEY_BYTES}-byte "
                "limit for a partition key; use a shorter pipeline name"
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
                table = StateTable(self._spec(), None)
                raise table.error("cannot open the checkpoint table", exc) from None
            table = StateTable(self._spec(), client)
            await table.ensure()
            session = _DynamoDBSession(self, table, key, pipeline)
            await session.claim()
            try:
                yield session
            finally:
                session.closed = True
                with anyio.CancelScope(shield=True):
                    await session.release()

    def _spec(self) -> TableSpec:
        return TableSpec(
            name=self.table,
            kind="checkpoint table",
            store=self.describe(),
            keys={PARTITION_KEY: "HASH", SORT_KEY: "RANGE"},
            create=self.create,
            timeout=self.timeout,
            endpoint_url=self.endpoint_url,
            error_type=CheckpointError,
            throttled_fix="write less often with a longer flush_interval=",
        )


@final
class _DynamoDBSession(CheckpointSession):
    def __init__(
        self, store: DynamoDBCheckpoints, table: StateTable, key: str, pipeline: str
    ) -> None:
        self._store = store
        self._table = table
        self._key = key
        self._pipeline = pipeline
        self._claim = Claim.mine()
        self.closed = False
        self.heartbeat_interval = HEARTBEAT

    # -- the claim (checkpoints/owner.py): an item beside the positions ------------------

    def _owner_key(self) -> dict[str, Any]:
        return {PARTITION_KEY: {"S": self._key}, SORT_KEY: {"S": _OWNER_SORT_KEY}}

    async def claim(self) -> None:
        """Claim the pipeline's checkpoints for this run, or refuse: another live
        process runs it."""
        me = self._claim
        for _ in range(2):  # once more if another process claimed between read and write
            item = await self._owner_call(
                "get_item",
                {"TableName": self._store.table, "Key": self._owner_key(), "ConsistentRead": True},
                "cannot read the claim",
                "GetItem",
            )
            existing = _claim_of(item.get("Item"))
            now = time.time()
            if not may_take(existing, me, now):
                assert existing is not None
                raise claim_error(self._store.describe(), self._pipeline, existing, now)
            params: dict[str, Any] = {
                "TableName": self._store.table,
                "Item": {
                    **self._owner_key(),
                    "owner": {"S": me.owner},
                    "host": {"S": me.host},
                    "pid": {"N": str(me.pid)},
                    "heartbeat": {"N": f"{now:.3f}"},
                },
            }
            if existing is None:
                params["ConditionExpression"] = "attribute_not_exists(#owner)"
                params["ExpressionAttributeNames"] = {"#owner": "owner"}
            else:
                params["ConditionExpression"] = "#owner = :owner AND #heartbeat = :heartbeat"
                params["ExpressionAttributeNames"] = {"#owner": "owner", "#heartbeat": "heartbeat"}
                params["ExpressionAttributeValues"] = {
                    ":owner": {"S": existing.owner},
                    ":heartbeat": item["Item"]["heartbeat"],
                }
            try:
                await self._owner_call(
                    "put_item", params, "cannot claim the checkpoints", "PutItem"
                )
            except _ClaimRefused:
                continue
            return
        raise CheckpointError(
            f"{self._store.describe()}: pipeline {self._pipeline!r}: another process claimed "
            "these checkpoints at the same moment; only one process may run a pipeline on "
            "one store (use run(leases=...) for several, docs/scaling.md)"
        )

    async def current_claim(self) -> Claim | None:
        """The claim on the pipeline's checkpoints as the table holds it now."""
        item = await self._owner_call(
            "get_item",
            {"TableName": self._store.table, "Key": self._owner_key(), "ConsistentRead": True},
            "cannot read the claim",
            "GetItem",
        )
        return _claim_of(item.get("Item"))

    async def overwrite(
        self, positions: Mapping[str, str | None], orders: Mapping[str, str | None]
    ) -> None:
        """Write `positions` unconditionally (None deletes): the operator's move, made
        while this session holds the claim."""
        retry = Retry()
        changed: list[str] = []  # one write per shard: an error says how far it got
        with anyio.move_on_after(self._store.timeout):
            for shard, position in positions.items():
                key = {PARTITION_KEY: {"S": self._key}, SORT_KEY: {"S": shard}}
                order = orders[shard]
                try:
                    if position is None or order is None:
                        await self._table.call(
                            "delete_item", {"TableName": self._store.table, "Key": key}, retry
                        )
                        changed.append(shard)
                        continue
                    updated_at = (
                        datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    )
                    params = {
                        "TableName": self._store.table,
                        "Key": key,
                        "UpdateExpression": _UPDATE,
                        "ExpressionAttributeNames": _NAMES,
                        "ExpressionAttributeValues": {
                            ":position": {"S": position},
                            ":order": {"S": order},
                            ":updated_at": {"S": updated_at},
                        },
                    }
                    await self._table.call("update_item", params, retry)
                    changed.append(shard)
                except Exception as exc:
                    raise self._table.error(
                        f"cannot change the checkpoint of shard {shard!r} (already changed: "
                        f"{', '.join(changed) or 'none'}; the same command again finishes it)",
                        exc,
                        action="DeleteItem" if position is None else "UpdateItem",
                    ) from None
            return
        raise self._table.timed_out(
            f"cannot change checkpoints (already changed: {', '.join(changed) or 'none'}; the "
            "same command again finishes it)",
            retry.last,
        )

    async def heartbeat(self) -> None:
        params = {
            "TableName": self._store.table,
            "Key": self._owner_key(),
            "UpdateExpression": "SET #heartbeat = :now",
            "ConditionExpression": "#owner = :me",
            "ExpressionAttributeNames": {"#owner": "owner", "#heartbeat": "heartbeat"},
            "ExpressionAttributeValues": {
                ":now": {"N": f"{time.time():.3f}"},
                ":me": {"S": self._claim.owner},
            },
        }
        try:
            await self._owner_call("update_item", params, "cannot renew the claim", "UpdateItem")
        except _ClaimRefused:
            raise lost_error(self._store.describe(), self._pipeline) from None

    async def release(self) -> None:
        params = {
            "TableName": self._store.table,
            "Key": self._owner_key(),
            "ConditionExpression": "#owner = :me",
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":me": {"S": self._claim.owner}},
        }
        with contextlib.suppress(_ClaimRefused, CheckpointError):  # it goes stale by itself
            await self._owner_call("delete_item", params, "cannot release the claim", "DeleteItem")

    async def _owner_call(
        self, operation: str, params: dict[str, Any], doing: str, action: str
    ) -> Any:
        retry = Retry()
        with anyio.move_on_after(self._store.timeout):
            try:
                return await self._table.call(operation, params, retry)
            except Exception as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    raise _ClaimRefused from None
                raise self._table.error(doing, exc, action=action) from None
        raise self._table.timed_out(doing, retry.last)

    async def load(self) -> dict[str, str]:
        self._check_open()
        retry = Retry()
        positions: dict[str, str] = {}
        params: dict[str, Any] = {
            "TableName": self._store.table,
            "KeyConditionExpression": "#pk = :pk",
            "ProjectionExpression": "#shard, #position",
            "ExpressionAttributeNames": {
                "#pk": PARTITION_KEY,
                "#shard": SORT_KEY,
                "#position": _POSITION,
            },
            "ExpressionAttributeValues": {":pk": {"S": self._key}},
            # A position saved just before a restart must be seen by the next run.
            "ConsistentRead": True,
        }
        with anyio.move_on_after(self._store.timeout) as scope:
            try:
                while True:
                    page = await self._table.call("query", params, retry)
                    for item in page.get("Items", ()):
                        position = item.get(_POSITION, {}).get("S")
                        if position is not None:  # an item without a checkpoint yet
                            positions[item[SORT_KEY]["S"]] = position
                    last = page.get("LastEvaluatedKey")
                    if not last:
                        return positions
                    params["ExclusiveStartKey"] = last
            except Exception as exc:
                raise self._table.error("cannot load checkpoints", exc, action="Query") from None
        assert scope.cancelled_caught
        raise self._table.timed_out("cannot load checkpoints", retry.last)

    async def save(self, positions: Mapping[str, str]) -> None:
        self._check_open()
        # Check every position first, so that a bad one saves nothing.
        writes = [
            (shard, position, self._order(shard, position)) for shard, position in positions.items()
        ]
        if not writes:
            return
        updated_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        retry = Retry()
        failures: list[Exception] = []
        pending = iter(writes)

        async def worker(group: anyio.abc.TaskGroup) -> None:
            # Workers share one iterator: at most max_connections writes at once.
            for shard, position, order in pending:
                try:
                    await self._update(shard, position, order, updated_at, retry)
                except Exception as exc:
                    failures.append(
                        self._table.error(
                            f"cannot save the checkpoint of shard {shard!r}",
                            exc,
                            action="UpdateItem",
                        )
                    )
                    group.cancel_scope.cancel()  # the save fails; the rest need not go out
                    return

        with anyio.move_on_after(self._store.timeout) as scope:
            async with anyio.create_task_group() as group:
                for _ in range(min(len(writes), self._store.max_connections)):
                    group.start_soon(worker, group)
        if failures:
            raise failures[0]
        if scope.cancelled_caught:
            raise self._table.timed_out(f"cannot save {len(writes)} checkpoint(s)", retry.last)

    async def _update(
        self, shard: str, position: str, order: str, updated_at: str, retry: Retry
    ) -> None:
        params = {
            "TableName": self._store.table,
            "Key": {PARTITION_KEY: {"S": self._key}, SORT_KEY: {"S": shard}},
            "UpdateExpression": _UPDATE,
            "ConditionExpression": _CONDITION,
            "ExpressionAttributeNames": _NAMES,
            "ExpressionAttributeValues": {
                ":position": {"S": position},
                ":order": {"S": order},
                ":updated_at": {"S": updated_at},
            },
        }
        try:
            await self._table.call("update_item", params, retry)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return  # not ahead of the stored position: ignored, as save() promises
            raise

    def _order(self, shard: str, position: str) -> str:
        if not shard or len(shard.encode()) > _MAX_SORT_KEY_BYTES:
            raise CheckpointError(
                f"{self._store.describe()}: shard id {shard!r} cannot be a key of the "
                f"checkpoint table (DynamoDB takes 1 to {_MAX_SORT_KEY_BYTES} bytes)"
            )
        check_position(self._store.describe(), shard, position)
        order = position_order(position)
        if order is None:
            raise CheckpointError(
                f"{self._store.describe()}: checkpoint for shard {shard!r}: {position!r} has "
                f"more than {_MAX_DIGITS} digits, longer than any stream sequence number"
            )
        return order

    def _check_open(self) -> None:
        if self.closed:
            raise CheckpointError(
                f"{self._store.describe()}: the checkpoint session is closed; load and save "
                "only inside `async with store.open(pipeline, stream_id) as session:`"
            )


class _ClaimRefused(Exception):
    """The claim item's condition did not hold."""


def _claim_of(item: dict[str, Any] | None) -> Claim | None:
    if item is None or "owner" not in item:
        return None
    return Claim(
        item["owner"]["S"],
        item.get("host", {}).get("S", ""),
        int(item.get("pid", {}).get("N", "0")),
        float(item.get("heartbeat", {}).get("N", "0")),
    )


def partition_key(pipeline: str, stream_id: str) -> str:
    """The ``pipeline_stream`` value of a pipeline's checkpoints on a stream:
    ``<pipeline>#<stream id>``, with ``%`` and ``#`` in the pipeline name written as
    ``%25`` and ``%23`` so that no two (pipeline, stream) pairs share a key."""
    escaped = pipeline.replace("%", "%25").replace("#", "%23")
    return f"{escaped}#{stream_id}"


def position_order(position: str) -> str | None:
    """A string that sorts (by UTF-8 bytes, as DynamoDB compares strings) the way
    positions do: ``NNN:digits`` for a sequence number (NNN its digit count), and
    ``SHARD_END``, after every one of them. None when `position` is not a position."""
    if position == SHARD_END:
        return SHARD_END
    if is_position(position) and len(position) <= _MAX_DIGITS:
        return f"{len(position):03d}:{position}"
    return None


def dynamodb(
    table: str,
    *,
    create: bool = True,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    flush_interval: float = 1.0,
    flush_records: int | None = None,
    timeout: float = 10.0,
    max_connections: int = 32,
) -> DynamoDBCheckpoints:
    """A checkpoint store in the DynamoDB table `table` (a table name).

    With `create=True` the table is created on first use (on-demand capacity, partition
    key ``pipeline_stream`` and sort key ``shard``, both strings) when it does not exist.
    Each save writes one conditional UpdateItem per shard that moved, at most
    `max_connections` at once; `flush_interval` is the number of seconds between batched
    writes while running, and `flush_records` also writes once that many records are done
    since the last write. Throttling, server errors and broken connections are retried
    with backoff for up to `timeout` seconds, then the save (or load) fails with
    `CheckpointError`. AWS settings come from the standard chain,
    `AWS_ENDPOINT_URL(_DYNAMODB)`, or `endpoint_url=`, `region=` and an aiobotocore
    `session=`. Needs ``dynamodb:DescribeTable``, ``dynamodb:Query``,
    ``dynamodb:UpdateItem``, ``dynamodb:GetItem``, ``dynamodb:PutItem``,
    ``dynamodb:DeleteItem`` (the run's claim on the pipeline, checkpoints/owner.py) and,
    with `create=True`, ``dynamodb:CreateTable``.
    """
    name = f"checkpoints.dynamodb({table!r})"
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
        raise CheckpointError(
            f"{name}: {table!r} is not a DynamoDB table name; pass 3 to 255 letters, digits, "
            "'_', '-' or '.', e.g. checkpoints.dynamodb('flowstream-checkpoints')"
        )
    check_seconds(name, "flush_interval", flush_interval, zero=True)
    check_flush_records(name, flush_records)
    # A save gets `timeout` seconds in all, its first attempt included.
    check_seconds(name, "timeout", timeout, zero=False)
    if not isinstance(max_connections, int) or max_connections < 1:
        raise CheckpointError(
            f"{name}: max_connections={max_connections!r} must be a whole number >= 1"
        )
    return DynamoDBCheckpoints(
        table,
        create=create,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        flush_interval=flush_interval,
        timeout=timeout,
        max_connections=max_connections,
        flush_records=flush_records,
    )
