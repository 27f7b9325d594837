"""A DynamoDB table that holds flowstream's own state (checkpoints, leases): opened or
created with the key schema its store needs, and called with retries.

Every call retries throttling, server errors and broken connections with backoff and
full jitter until the caller's deadline; errors become the store's own error type,
naming the table, the problem and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from flowstream.aws import (
    REFUSED_CODES,
    configuration_error,
    error_code,
    error_message,
    is_retryable,
    is_setup_error,
)
from flowstream.backoff import Backoff
from flowstream.errors import FlowstreamError

__all__ = ["Retry", "StateTable", "TableSpec"]

logger = logging.getLogger("flowstream")

#: How long opening waits for a new table to become ACTIVE.
_ACTIVE_TIMEOUT: Final = 300.0
_USABLE: Final = frozenset({"ACTIVE", "UPDATING"})
THROTTLED: Final = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What a store needs of its table, and how its errors read."""

    #: The table's name.
    name: str
    #: What the table is to the user: "checkpoint table", "lease table".
    kind: str
    #: The store, as errors name it: ``dynamodb(state)``.
    store: str
    #: The key schema: attribute name -> "HASH" or "RANGE"; every key is a string.
    keys: Mapping[str, str]
    create: bool
    #: Seconds each open, load or save may take, retries included.
    timeout: float
    endpoint_url: str | None
    error_type: type[FlowstreamError]
    #: What a throttled call's error suggests besides more capacity.
    throttled_fix: str


class Retry:
    """What the retries of one operation have seen: the last error, and whether a retry
    was logged already (once per operation, not once per item)."""

    __slots__ = ("last", "logged")

    def __init__(self) -> None:
        self.last: BaseException | None = None
        self.logged = False


class StateTable:
    """A state table open on one client: `ensure()` it, then `call()` it."""

    def __init__(self, spec: TableSpec, client: Any) -> None:
        self.spec = spec
        self.client = client

    @property
    def where(self) -> str:
        """The region (and endpoint) the table is in, for messages."""
        endpoint = self.spec.endpoint_url
        return f"{self.client.meta.region_name}{f' at {endpoint}' if endpoint else ''}"

    # -- calls ---------------------------------------------------------------------------

    async def call(
        self, operation: str, params: dict[str, Any], retry: Retry, *, opening: bool = False
    ) -> Any:
        """Call `operation`, retrying throttling, server errors and broken connections
        with backoff until the caller's deadline cancels it. While opening, a setup
        problem (no credentials, an endpoint that cannot be reached) fails at once: it
        must not look like a hang. Other errors are raised as botocore raised them."""
        backoff = Backoff(base=0.05, cap=2.0)
        method = getattr(self.client, operation)
        while True:
            try:
                return await method(**params)
            except Exception as exc:
                if not is_retryable(exc) or (opening and is_setup_error(exc)):
                    raise
                retry.last = exc
                delay = backoff.next_delay()
                if not retry.logged:
                    retry.logged = True
                    logger.warning(
                        "%s %s: %s failed (%s); retrying with backoff for up to %ss",
                        self.spec.kind,
                        self.spec.name,
                        operation,
                        error_code(exc) or type(exc).__name__,
                        self.spec.timeout,
                    )
                await anyio.sleep(delay)

    def error(self, doing: str, exc: BaseException, *, action: str | None = None) -> Exception:
        """Translate a botocore error into the store's error type, naming the table and
        the fix; `action` is the IAM action of the call, named when access is denied."""
        spec = self.spec
        if isinstance(exc, spec.error_type):
            return exc
        setup = configuration_error(
            exc,
            spec.error_type,
            what=f"DynamoDB ({spec.kind} {spec.name!r})",
            endpoint_url=spec.endpoint_url,
        )
        if setup is not None:
            message = str(setup)
            if action is not None and error_code(exc) in REFUSED_CODES:
                message += f"; the {spec.kind} needs dynamodb:{action} on the table"
            return spec.error_type(f"{spec.store}: {doing}: {message}")
        code = error_code(exc) or type(exc).__name__
        return spec.error_type(
            f"{spec.store}: {doing}: {code}: {error_message(exc)}"
            + self._fix_for(code, is_retryable(exc))
        )

    def timed_out(self, doing: str, last: BaseException | None) -> Exception:
        spec = self.spec
        if last is None:
            return spec.error_type(
                f"{spec.store}: {doing}: DynamoDB did not answer within "
                f"timeout={spec.timeout}s; check the endpoint, or pass a longer timeout="
            )
        error = self.error(doing, last)
        return spec.error_type(f"{error} (still failing after retrying for {spec.timeout}s)")

    def _fix_for(self, code: str, retryable: bool) -> str:
        spec = self.spec
        if code in THROTTLED:
            return (
                "; the table's throughput is exceeded: raise its capacity (or use on-demand "
                f"capacity), {spec.throttled_fix}, or wait longer with a longer timeout="
            )
        if code == "ResourceNotFoundException":
            return f"; the {spec.kind} was deleted while in use: create it again, or run again"
        if retryable:
            return (
                "; DynamoDB or the endpoint is unavailable: check endpoint_url= and region=, "
                f"or wait longer than timeout={spec.timeout}s with a longer timeout="
            )
        return ""

    # -- opening -------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Check that the table exists with the key schema, or create it and wait until
        it is ACTIVE."""
        spec = self.spec
        table = await self._describe()
        if table is None:
            if not spec.create:
                raise spec.error_type(
                    f"{spec.store}: the {spec.kind} {spec.name!r} does not exist in "
                    f"{self.where}; pass create=True to let flowstream create it, or create it "
                    f"with {self._schema_text()}, or check the table name and region="
                )
            table = await self._create()
        self._check_schema(table)
        await self._wait_until_active(table)

    def _schema_text(self) -> str:
        names = {"HASH": "the partition key", "RANGE": "the sort key"}
        return " and ".join(f"{names[kind]} {name} (S)" for name, kind in self.spec.keys.items())

    async def _describe(self) -> dict[str, Any] | None:
        """The table's description, or None when it does not exist."""
        try:
            response = await self._request(
                "describe_table",
                {"TableName": self.spec.name},
                doing=f"cannot open the {self.spec.kind}",
                action="DescribeTable",
                passing="ResourceNotFoundException",
            )
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        return dict(response["Table"])

    async def _create(self) -> dict[str, Any]:
        spec = self.spec
        params = {
            "TableName": spec.name,
            "KeySchema": [
                {"AttributeName": name, "KeyType": kind} for name, kind in spec.keys.items()
            ],
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": "S"} for name in spec.keys
            ],
            "BillingMode": "PAY_PER_REQUEST",
        }
        try:
            response = await self._request(
                "create_table",
                params,
                doing=f"cannot create the {spec.kind}",
                action="CreateTable",
                passing="ResourceInUseException",
            )
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":
                raise
            # Another process created it between our DescribeTable and CreateTable.
            table = await self._describe()
            if table is None:
                raise spec.error_type(
                    f"{spec.store}: the {spec.kind} {spec.name!r} is being deleted; wait until "
                    "it is gone and run again, or use another table"
                ) from None
            return table
        logger.info("created the %s %s in %s", spec.kind, spec.name, self.where)
        return dict(response["TableDescription"])

    async def _request(
        self, operation: str, params: dict[str, Any], *, doing: str, action: str, passing: str
    ) -> Any:
        """One call of opening, retried within the timeout. The error code `passing` is
        raised as botocore raised it; every other error is the store's error."""
        retry = Retry()
        with anyio.move_on_after(self.spec.timeout):
            try:
                return await self.call(operation, params, retry, opening=True)
            except Exception as exc:
                if error_code(exc) == passing:
                    raise
                raise self.error(doing, exc, action=action) from None
        raise self.timed_out(doing, retry.last)

    def _check_schema(self, table: Mapping[str, Any]) -> None:
        spec = self.spec
        keys = {k["AttributeName"]: k["KeyType"] for k in table.get("KeySchema", ())}
        types = {
            a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", ())
        }
        if keys == dict(spec.keys) and all(types.get(name) == "S" for name in spec.keys):
            return
        have = ", ".join(f"{name} ({types.get(name, '?')}, {kind})" for name, kind in keys.items())
        raise spec.error_type(
            f"{spec.store}: table {spec.name!r} in {self.where} is not a {spec.kind}: its key "
            f"is {have}, but {spec.kind}s need {self._schema_text()}; pass the name of a new "
            "table (created on first use) or of a table flowstream created"
        )

    async def _wait_until_active(self, table: Mapping[str, Any]) -> None:
        spec = self.spec
        deadline = anyio.current_time() + _ACTIVE_TIMEOUT
        polls = 0
        status = table.get("TableStatus", "ACTIVE")
        while status not in _USABLE:
            if status != "CREATING":
                raise spec.error_type(
                    f"{spec.store}: the {spec.kind} {spec.name!r} is {status}, so it cannot be "
                    "used; wait until it is ACTIVE (or gone, and let flowstream create it "
                    "again), or use another table"
                )
            if anyio.current_time() >= deadline:
                raise spec.error_type(
                    f"{spec.store}: the {spec.kind} {spec.name!r} is still CREATING after "
                    f"{_ACTIVE_TIMEOUT:.0f}s; check it in the AWS console and run again"
                )
            await anyio.sleep(min(2.0, 0.05 * 2**polls))
            polls += 1
            described = await self._describe()
            if described is None:
                raise spec.error_type(
                    f"{spec.store}: the {spec.kind} {spec.name!r} was deleted while "
                    "flowstream waited for it to become ACTIVE; run again"
                )
            status = described.get("TableStatus", "ACTIVE")
