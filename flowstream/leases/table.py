"""The lease table's operations, each one DynamoDB call in the KCL's form.

Every write that a lease's holder makes (renew, checkpoint, release) is conditional on
the counter the holder last saw and on its own name as the owner: a worker that lost a
lease (stolen, or expired while it was paused) can never change it. A take is
conditional on the counter the taker saw in its scan. A write refused by its condition
is read back once: a retried write whose first try went through (the answer was lost)
is then recognised as done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio

from flowstream.aws import error_code
from flowstream.leases.lease import (
    CHECKPOINT,
    CHECKPOINT_OWNER,
    CHILDREN,
    COUNTER,
    LEASE_KEY,
    OWNER,
    OWNER_SWITCHES,
    PENDING,
    SUB_SEQUENCE,
    Lease,
    from_item,
    to_item,
)
from flowstream.state_table import Retry, StateTable

__all__ = ["LeaseTable"]

_REFUSED: Final = "ConditionalCheckFailedException"
_HELD: Final = "#counter = :counter AND #owner = :owner"
#: Writes of a holder that find the counter moved by its own unseen writes.
_ATTEMPTS: Final = 3


class LeaseTable:
    """The leases of one application (pipeline) in one DynamoDB table."""

    def __init__(self, table: StateTable) -> None:
        self._table = table
        self.name = table.spec.name

    async def scan(self) -> list[Lease]:
        """Every lease in the table (consistent reads; other entities left out)."""
        retry = Retry()
        params: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        leases: list[Lease] = []
        with anyio.move_on_after(self._table.spec.timeout):
            try:
                while True:
                    page = await self._table.call("scan", params, retry)
                    for item in page.get("Items", ()):
                        lease = from_item(item, table=self.name)
                        if lease is not None:
                            leases.append(lease)
                    last = page.get("LastEvaluatedKey")
                    if not last:
                        return leases
                    params["ExclusiveStartKey"] = last
            except Exception as exc:
                raise self._table.error("cannot read the leases", exc, action="Scan") from None
        raise self._table.timed_out("cannot read the leases", retry.last)

    async def get(self, key: str) -> Lease | None:
        params = {"TableName": self.name, "Key": _key(key), "ConsistentRead": True}
        response = await self._run("get_item", params, f"cannot read the lease of {key!r}")
        item = response.get("Item")
        return None if item is None else from_item(item, table=self.name)

    async def create(self, lease: Lease) -> bool:
        """Create `lease` unless a lease of that shard exists; True when created."""
        params = {
            "TableName": self.name,
            "Item": to_item(lease),
            "ConditionExpression": "attribute_not_exists(#key)",
            "ExpressionAttributeNames": {"#key": LEASE_KEY},
        }
        try:
            await self._run("put_item", params, f"cannot create the lease of {lease.key!r}")
        except _Refused:
            return False
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take `lease` (as last scanned) for `owner`; None when it changed since."""
        switched = lease.owner is not None and lease.owner != owner
        update = "SET #owner = :owner, #counter = :next REMOVE #checkpoint_owner"
        if switched:
            update = (
                "SET #owner = :owner, #counter = :next ADD #switches :one REMOVE #checkpoint_owner"
            )
        names = {"#owner": OWNER, "#counter": COUNTER, "#checkpoint_owner": CHECKPOINT_OWNER}
        values: dict[str, Any] = {
            ":owner": {"S": owner},
            ":next": {"N": str(lease.counter + 1)},
            ":counter": {"N": str(lease.counter)},
        }
        if switched:
            names["#switches"] = OWNER_SWITCHES
            values[":one"] = {"N": "1"}
        return await self._update(
            lease,
            update,
            "#counter = :counter",
            names,
            values,
            doing=f"cannot take the lease of {lease.key!r}",
            done=lambda now, base: now.owner == owner and now.counter == base.counter + 1,
        )

    async def renew(self, lease: Lease) -> Lease | None:
        """Renew a held lease; None when it is lost."""
        return await self._update(
            lease,
            "SET #counter = :next",
            _HELD,
            {"#counter": COUNTER, "#owner": OWNER},
            _held_values(lease),
            doing=f"cannot renew the lease of {lease.key!r}",
            done=lambda now, base: now.owner == base.owner and now.counter == base.counter + 1,
            holder=True,
        )

    async def checkpoint(
        self, lease: Lease, position: str, children: Sequence[str] = ()
    ) -> Lease | None:
        """Write a held lease's checkpoint (fenced); None when the lease is lost."""
        update = "SET #checkpoint = :checkpoint, #sub = :zero, #switches = :zero, #counter = :next"
        names = {
            "#checkpoint": CHECKPOINT,
            "#sub": SUB_SEQUENCE,
            "#switches": OWNER_SWITCHES,
            "#counter": COUNTER,
            "#owner": OWNER,
            "#pending": PENDING[0],
            "#pending_sub": PENDING[1],
        }
        values = {
            **_held_values(lease),
            ":checkpoint": {"S": position},
            ":zero": {"N": "0"},
        }
        if children:
            update += ", #children = :children"
            names["#children"] = CHILDREN
            values[":children"] = {"SS": sorted(children)}
        return await self._update(
            lease,
            update + " REMOVE #pending, #pending_sub",
            _HELD,
            names,
            values,
            doing=f"cannot save the checkpoint of shard {lease.key!r}",
            done=lambda now, base: (
                now.owner == base.owner
                and now.counter == base.counter + 1
                and now.checkpoint == position
            ),
            holder=True,
        )

    async def release(self, lease: Lease) -> Lease | None:
        """Give a held lease up (no owner), so that peers take it in their next round;
        None when it was lost already."""
        return await self._update(
            lease,
            "SET #counter = :next REMOVE #owner",
            _HELD,
            {"#counter": COUNTER, "#owner": OWNER},
            _held_values(lease),
            doing=f"cannot release the lease of {lease.key!r}",
            done=lambda now, base: now.owner is None and now.counter == base.counter + 1,
            holder=True,
        )

    async def add_children(self, key: str, children: Sequence[str]) -> None:
        """Note a finished shard's children on its lease (whoever holds it)."""
        params = {
            "TableName": self.name,
            "Key": _key(key),
            "UpdateExpression": "ADD #children :children",
            "ConditionExpression": "attribute_exists(#key)",
            "ExpressionAttributeNames": {"#children": CHILDREN, "#key": LEASE_KEY},
            "ExpressionAttributeValues": {":children": {"SS": sorted(children)}},
        }
        with contextlib.suppress(_Refused):  # the lease was cleaned up meanwhile
            await self._run("update_item", params, f"cannot note the children of {key!r}")

    async def delete(self, lease: Lease) -> bool:
        """Delete a finished lease nobody holds (cleanup); True when deleted."""
        params = {
            "TableName": self.name,
            "Key": _key(lease.key),
            "ConditionExpression": "#counter = :counter AND attribute_not_exists(#owner)",
            "ExpressionAttributeNames": {"#counter": COUNTER, "#owner": OWNER},
            "ExpressionAttributeValues": {":counter": {"N": str(lease.counter)}},
        }
        try:
            await self._run("delete_item", params, f"cannot delete the lease of {lease.key!r}")
        except _Refused:
            return False
        return True

    # -- calls ---------------------------------------------------------------------------

    async def _update(
        self,
        lease: Lease,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
        *,
        doing: str,
        done: Callable[[Lease, Lease], bool],
        holder: bool = False,
    ) -> Lease | None:
        """One conditional write; the lease as written, or None when refused.

        A refused write is read back: it may be our own retried write that went through
        the first time (`done`). A holder's write may also find the counter moved by an
        earlier write of its own whose answer it never saw (a call cut off by a stop);
        while the holder is still the owner, nobody else moved it: the write is made
        again on the counter found."""
        for _ in range(_ATTEMPTS):
            params = {
                "TableName": self.name,
                "Key": _key(lease.key),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValues": "ALL_NEW",
            }
            try:
                response = await self._run("update_item", params, doing)
            except _Refused:
                now = await self.get(lease.key)
                if now is None:
                    return None
                if done(now, lease):
                    return now
                if holder and now.owner == lease.owner and now.counter > lease.counter:
                    lease = now
                    values = {**values, **_held_values(now)}
                    continue
                return None
            return from_item(response["Attributes"], table=self.name)
        return None

    async def _run(self, operation: str, params: dict[str, Any], doing: str) -> Any:
        """One call, retried within the table's timeout; a refused condition raises
        `_Refused`, every other error the store's error."""
        retry = Retry()
        with anyio.move_on_after(self._table.spec.timeout):
            try:
                return await self._table.call(operation, params, retry)
            except Exception as exc:
                if error_code(exc) == _REFUSED:
                    raise _Refused from None
                action = "".join(part.title() for part in operation.split("_"))
                raise self._table.error(doing, exc, action=action) from None
        raise self._table.timed_out(doing, retry.last)


class _Refused(Exception):
    """A write's condition did not hold."""


def _key(key: str) -> dict[str, Any]:
    return {LEASE_KEY: {"S": key}}


def _held_values(lease: Lease) -> dict[str, Any]:
    assert lease.owner is not None, "only a held lease is renewed, checkpointed or released"
    return {
        ":counter": {"N": str(lease.counter)},
        ":next": {"N": str(lease.counter + 1)},
        ":owner": {"S": lease.owner},
    }
