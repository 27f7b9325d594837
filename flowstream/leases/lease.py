"""A lease: which worker processes a shard now, and how far the shard is done. Items are
kept exactly as the Kinesis Client Library (KCL) keeps them (`DynamoDBLeaseSerializer`
in amazon-kinesis-client), so a lease table moves between a KCL application and
flowstream, either way, without reprocessing.

- ``leaseKey`` (S): the shard id, the table's hash key;
- ``leaseOwner`` (S): the worker that holds it; absent: nobody;
- ``leaseCounter`` (N): the fencing token. Every take, renewal, checkpoint and release
  adds one, each conditional on the value the writer last saw;
- ``checkpoint`` (S): a sequence number, or ``TRIM_HORIZON``, ``LATEST``, ``SHARD_END``;
- ``checkpointSubSequenceNumber`` (N): always 0 for DynamoDB Streams;
- ``ownerSwitchesSinceCheckpoint`` (N): takes by another owner since the last checkpoint;
- ``parentShardId`` (SS): the shard's parents, written when the lease is created;
- ``childShardIds`` (SS): the shard's children, written when it ends;
- ``entityType`` (S): ``LEASE``. KCL 3.x keeps other entities in the same table; they
  are left alone;
- ``checkpointOwner`` (S): KCL 3.x, the old owner during a graceful hand-off.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from flowstream.checkpoints.base import SHARD_END, is_position
from flowstream.errors import CheckpointError

__all__ = [
    "LATEST",
    "LEASE_KEY",
    "TRIM_HORIZON",
    "Lease",
    "from_item",
    "to_item",
]

LEASE_KEY: Final = "leaseKey"
OWNER: Final = "leaseOwner"
COUNTER: Final = "leaseCounter"
CHECKPOINT: Final = "checkpoint"
SUB_SEQUENCE: Final = "checkpointSubSequenceNumber"
OWNER_SWITCHES: Final = "ownerSwitchesSinceCheckpoint"
PARENTS: Final = "parentShardId"  # singular, although it holds a set (KCL's name)
CHILDREN: Final = "childShardIds"
ENTITY_TYPE: Final = "entityType"
CHECKPOINT_OWNER: Final = "checkpointOwner"
PENDING: Final = ("pendingCheckpoint", "pendingCheckpointSubSequenceNumber")

ENTITY_LEASE: Final = "LEASE"
TRIM_HORIZON: Final = "TRIM_HORIZON"
LATEST: Final = "LATEST"
_SENTINELS: Final = frozenset({TRIM_HORIZON, LATEST, SHARD_END})


class Lease(msgspec.Struct, frozen=True):
    """A lease as the table holds it (one item)."""

    key: str
    owner: str | None = None
    counter: int = 0
    checkpoint: str = TRIM_HORIZON
    owner_switches: int = 0
    parents: frozenset[str] = frozenset()
    children: frozenset[str] = frozenset()
    #: KCL 3.x: set while a graceful hand-off is pending (the old owner).
    checkpoint_owner: str | None = None

    @property
    def finished(self) -> bool:
        """Read to its end and done: its children may be processed."""
        return self.checkpoint == SHARD_END


def to_item(lease: Lease) -> dict[str, Any]:
    """The item the KCL would write for `lease` (DynamoDB JSON)."""
    item: dict[str, Any] = {
        LEASE_KEY: {"S": lease.key},
        COUNTER: {"N": str(lease.counter)},
        OWNER_SWITCHES: {"N": str(lease.owner_switches)},
        CHECKPOINT: {"S": lease.checkpoint},
        SUB_SEQUENCE: {"N": "0"},
        ENTITY_TYPE: {"S": ENTITY_LEASE},
    }
    if lease.owner is not None:
        item[OWNER] = {"S": lease.owner}
    if lease.parents:
        item[PARENTS] = {"SS": sorted(lease.parents)}
    if lease.children:
        item[CHILDREN] = {"SS": sorted(lease.children)}
    if lease.checkpoint_owner is not None:
        item[CHECKPOINT_OWNER] = {"S": lease.checkpoint_owner}
    return item


def from_item(item: dict[str, Any], *, table: str = "") -> Lease | None:
    """The lease an item holds; None for an item of another entity (KCL 3.x keeps its
    leader lock, worker metrics and migration state in the lease table too)."""
    entity = _string(item, ENTITY_TYPE)
    if entity is not None and entity != ENTITY_LEASE:
        return None
    key = _string(item, LEASE_KEY)
    if not key:
        raise CheckpointError(f"lease table {table!r}: an item has no leaseKey: {item!r}")
    checkpoint = _string(item, CHECKPOINT) or TRIM_HORIZON
    if checkpoint not in _SENTINELS and not is_position(checkpoint):
        raise CheckpointError(
            f"lease table {table!r}: the lease of shard {key!r} has the checkpoint "
            f"{checkpoint!r}, which is not a DynamoDB Streams position (a sequence number, "
            f"{TRIM_HORIZON}, {LATEST} or {SHARD_END}); is this the lease table of a "
            "DynamoDB stream's application?"
        )
    return Lease(
        key=key,
        owner=_string(item, OWNER) or None,
        counter=_number(item, COUNTER),
        checkpoint=checkpoint,
        owner_switches=_number(item, OWNER_SWITCHES),
        parents=frozenset(item.get(PARENTS, {}).get("SS", ())),
        children=frozenset(item.get(CHILDREN, {}).get("SS", ())),
        checkpoint_owner=_string(item, CHECKPOINT_OWNER),
    )


def _string(item: dict[str, Any], name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _number(item: dict[str, Any], name: str) -> int:
    value = item.get(name, {}).get("N")
    return int(value) if isinstance(value, str) else 0
