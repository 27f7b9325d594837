"""The lease table against moto's DynamoDB: items exactly in the KCL's form, both ways,
and every operation's condition (fencing), also when DynamoDB throttles, fails or a
retried write went through the first time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest
from dynamo_proxy import CONDITION_FAILED, INTERNAL, THROTTLING, DynamoProxy
from sink_support import new_session

from flowstream import leases
from flowstream.checkpoints.base import SHARD_END
from flowstream.errors import CheckpointError, PipelineError
from flowstream.leases.lease import Lease, from_item, to_item
from flowstream.leases.table import LeaseTable

TABLE = "orders-leases"
SESSION = new_session()
SHARD = "shardId-00000001700000000000-0a1b2c3d"
CHILD = "shardId-00000001700000014400-1b2c3d4e"
SEQ = "4421584500000000017450439091"

# Items as amazon-kinesis-client writes them (DynamoDBLeaseSerializer.toDynamoRecord):
# KCL 2.x (no entityType) and KCL 3.x (entityType, hash range, throughput, handoff).
KCL2_ITEM: dict[str, Any] = {
    "leaseKey": {"S": SHARD},
    "leaseCounter": {"N": "112"},
    "leaseOwner": {"S": "ip-10-0-1-17.ec2.internal:8b9f0c8e-1d5e-4ad1-9f6e-3c3c2b1a0f9d"},
    "ownerSwitchesSinceCheckpoint": {"N": "0"},
    "checkpoint": {"S": SEQ},
    "checkpointSubSequenceNumber": {"N": "0"},
    "parentShardId": {"SS": ["shardId-00000001699999985600-9f8e7d6c"]},
}
KCL3_ITEM: dict[str, Any] = {
    **KCL2_ITEM,
    "leaseKey": {"S": CHILD},
    "checkpoint": {"S": "TRIM_HORIZON"},
    "parentShardId": {"SS": [SHARD]},
    "pendingCheckpoint": {"S": "4421584500000000017450439999"},
    "pendingCheckpointSubSequenceNumber": {"N": "0"},
    "startingHashKey": {"S": "0"},
    "endingHashKey": {"S": "340282366920938463463374607431768211455"},
    "throughputKBps": {"N": "12.5"},
    "checkpointOwner": {"S": "old-worker"},
    "entityType": {"S": "LEASE"},
}
# Other entities KCL 3.5 keeps in the lease table: left alone.
LEADER_ITEM = {"leaseKey": {"S": "Leader"}, "entityType": {"S": "LEADER"}}
METRICS_ITEM = {"leaseKey": {"S": "worker-1"}, "entityType": {"S": "WORKER_METRIC_STATS"}}


class TestItemFormat:
    def test_reads_a_kcl_2_lease(self) -> None:
        lease = from_item(KCL2_ITEM)
        assert lease == Lease(
            key=SHARD,
            owner="ip-10-0-1-17.ec2.internal:8b9f0c8e-1d5e-4ad1-9f6e-3c3c2b1a0f9d",
            counter=112,
            checkpoint=SEQ,
            parents=frozenset({"shardId-00000001699999985600-9f8e7d6c"}),
        )

    def test_reads_a_kcl_3_lease(self) -> None:
        lease = from_item(KCL3_ITEM)
        assert lease is not None
        assert (lease.key, lease.checkpoint, lease.parents) == (
            CHILD,
            "TRIM_HORIZON",
            frozenset({SHARD}),
        )
        assert lease.checkpoint_owner == "old-worker"

    @pytest.mark.parametrize("item", [LEADER_ITEM, METRICS_ITEM], ids=["leader", "metrics"])
    def test_other_entities_are_not_leases(self, item: dict[str, Any]) -> None:
        assert from_item(item) is None

    def test_writes_what_the_kcl_writes(self) -> None:
        lease = Lease(
            SHARD,
            owner="w1",
            counter=4,
            checkpoint=SHARD_END,
            parents=frozenset({"p"}),
            children=frozenset({"c2", "c1"}),
        )
        assert to_item(lease) == {
            "leaseKey": {"S": SHARD},
            "leaseOwner": {"S": "w1"},
            "leaseCounter": {"N": "4"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "checkpoint": {"S": "SHARD_END"},
            "checkpointSubSequenceNumber": {"N": "0"},
            "parentShardId": {"SS": ["p"]},
            "childShardIds": {"SS": ["c1", "c2"]},
            "entityType": {"S": "LEASE"},
        }
        assert from_item(to_item(lease)) == lease

    def test_a_new_lease_has_no_owner_and_starts_at_trim_horizon(self) -> None:
        item = to_item(Lease(SHARD))
        assert "leaseOwner" not in item
        assert item["checkpoint"] == {"S": "TRIM_HORIZON"}
        assert item["leaseCounter"] == {"N": "0"}

    def test_a_checkpoint_that_is_no_stream_position_names_the_lease(self) -> None:
        item = {**KCL2_ITEM, "checkpoint": {"S": "AT_TIMESTAMP"}}
        with pytest.raises(CheckpointError, match=rf"lease of shard '{SHARD}'.*'AT_TIMESTAMP'"):
            from_item(item, table=TABLE)


@pytest.fixture
async def table(moto_url: str) -> AsyncIterator[LeaseTable]:
    async with leases.dynamodb(TABLE, endpoint_url=moto_url, session=SESSION).open() as opened:
        yield opened


def put_items(endpoint_url: str, *items: dict[str, Any]) -> None:
    client: Any = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")
    for item in items:
        client.put_item(TableName=TABLE, Item=item)


def raw_item(endpoint_url: str, key: str) -> dict[str, Any]:
    client: Any = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1")
    item: dict[str, Any] = client.get_item(
        TableName=TABLE, Key={"leaseKey": {"S": key}}, ConsistentRead=True
    )["Item"]
    return item


class TestTable:
    async def test_created_with_the_kcl_key_schema(self, table: LeaseTable, moto_url: str) -> None:
        client: Any = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1")
        described = client.describe_table(TableName=TABLE)["Table"]
        assert described["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
        assert described["AttributeDefinitions"] == [
            {"AttributeName": "leaseKey", "AttributeType": "S"}
        ]

    async def test_scan_reads_kcl_items_and_leaves_other_entities_out(
        self, table: LeaseTable, moto_url: str
    ) -> None:
        put_items(moto_url, KCL2_ITEM, KCL3_ITEM, LEADER_ITEM, METRICS_ITEM)
        assert sorted(lease.key for lease in await table.scan()) == [SHARD, CHILD]

    async def test_create_is_idempotent(self, table: LeaseTable, moto_url: str) -> None:
        assert await table.create(Lease(SHARD)) is True
        assert await table.create(Lease(SHARD, checkpoint=SHARD_END)) is False
        assert raw_item(moto_url, SHARD)["checkpoint"] == {"S": "TRIM_HORIZON"}

    def test_a_bad_table_name_or_worker_id(self) -> None:
        with pytest.raises(PipelineError, match="is not a DynamoDB table name"):
            leases.dynamodb("x")
        with pytest.raises(PipelineError, match="worker_id='a b' must be"):
            leases.dynamodb(TABLE, worker_id="a b")
        with pytest.raises(PipelineError, match="failover_time=0 is not a number of seconds"):
            leases.dynamodb(TABLE, failover_time=0)

    def test_the_default_worker_id_is_readable_and_unique(self) -> None:
        first, second = leases.dynamodb(TABLE), leases.dynamodb(TABLE)
        assert first.worker_id != second.worker_id
        assert first.worker_id.count(":") == 2


class TestFencing:
    async def test_take_renew_checkpoint_release(self, table: LeaseTable, moto_url: str) -> None:
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        mine = await table.take(free, "w1")
        assert mine is not None
        assert (mine.owner, mine.counter) == ("w1", 1)
        renewed = await table.renew(mine)
        assert renewed is not None
        assert renewed.counter == 2
        saved = await table.checkpoint(renewed, SEQ)
        assert saved is not None
        assert (saved.checkpoint, saved.counter) == (SEQ, 3)
        released = await table.release(saved)
        assert released is not None
        assert released.owner is None
        assert raw_item(moto_url, SHARD) == {
            "leaseKey": {"S": SHARD},
            "leaseCounter": {"N": "4"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "checkpoint": {"S": SEQ},
            "checkpointSubSequenceNumber": {"N": "0"},
            "entityType": {"S": "LEASE"},
        }

    async def test_a_stolen_lease_cannot_be_renewed_checkpointed_or_released(
        self, table: LeaseTable, moto_url: str
    ) -> None:
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        mine = await table.take(free, "w1")
        assert mine is not None
        stolen = await table.take(mine, "w2")
        assert stolen is not None
        assert stolen.owner_switches == 1
        assert await table.renew(mine) is None
        assert await table.checkpoint(mine, SEQ) is None
        assert await table.release(mine) is None
        item = raw_item(moto_url, SHARD)
        assert item["leaseOwner"] == {"S": "w2"}
        assert item["checkpoint"] == {"S": "TRIM_HORIZON"}  # w1 never moved it

    async def test_two_takers_of_one_lease_one_wins(self, table: LeaseTable) -> None:
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        results = [await table.take(free, "w1"), await table.take(free, "w2")]
        assert [r.owner if r else None for r in results] == ["w1", None]

    async def test_a_checkpoint_clears_owner_switches_and_pending_and_notes_children(
        self, table: LeaseTable, moto_url: str
    ) -> None:
        put_items(moto_url, KCL3_ITEM)
        (lease,) = await table.scan()
        taken = await table.take(lease, "flowstream-1")
        assert taken is not None
        assert taken.checkpoint_owner is None  # a KCL hand-off in progress is overruled
        done = await table.checkpoint(taken, SHARD_END, children=["c2", "c1"])
        assert done is not None
        item = raw_item(moto_url, CHILD)
        assert item["checkpoint"] == {"S": "SHARD_END"}
        assert item["ownerSwitchesSinceCheckpoint"] == {"N": "0"}
        assert item["childShardIds"] == {"SS": ["c1", "c2"]}
        assert "pendingCheckpoint" not in item
        assert "checkpointOwner" not in item
        # KCL's own attributes stay for a move back
        assert item["startingHashKey"] == KCL3_ITEM["startingHashKey"]

    async def test_delete_only_a_finished_lease_nobody_holds(self, table: LeaseTable) -> None:
        await table.create(Lease(SHARD, checkpoint=SHARD_END))
        await table.create(Lease(CHILD))
        held = await table.take(Lease(CHILD), "w1")
        assert held is not None
        (finished,) = [lease for lease in await table.scan() if lease.key == SHARD]
        assert await table.delete(held) is False
        assert await table.delete(finished) is True
        assert [lease.key for lease in await table.scan()] == [CHILD]


@pytest.fixture
async def proxied(proxy: DynamoProxy) -> AsyncIterator[tuple[LeaseTable, DynamoProxy]]:
    store = leases.dynamodb(TABLE, endpoint_url=proxy.url, session=SESSION, timeout=5.0)
    async with store.open() as opened:
        yield opened, proxy


class TestFaults:
    @pytest.mark.parametrize("fault", [THROTTLING, INTERNAL], ids=["throttling", "5xx"])
    @pytest.mark.parametrize("operation", ["take", "renew", "checkpoint", "release", "scan"])
    async def test_throttling_and_server_errors_are_retried(
        self, proxied: tuple[LeaseTable, DynamoProxy], fault: Any, operation: str
    ) -> None:
        table, proxy = proxied
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        held = free if operation in ("take", "scan") else await table.take(free, "w1")
        assert held is not None
        proxy.fail("Scan" if operation == "scan" else "UpdateItem", fault, times=2)
        if operation == "scan":
            assert [lease.key for lease in await table.scan()] == [SHARD]
        elif operation == "take":
            assert await table.take(held, "w1") is not None
        elif operation == "renew":
            assert await table.renew(held) is not None
        elif operation == "checkpoint":
            assert await table.checkpoint(held, SEQ) is not None
        else:
            assert await table.release(held) is not None
        assert proxy.failed["Scan" if operation == "scan" else "UpdateItem"] == 2

    async def test_a_write_refused_after_it_went_through_counts_as_done(
        self, proxied: tuple[LeaseTable, DynamoProxy], moto_url: str
    ) -> None:
        """The answer of a renewal is lost (a 5xx after the write), the retry is refused
        by its condition: the lease is not lost, the read-back shows the write held."""
        table, proxy = proxied
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        held = await table.take(free, "w1")
        assert held is not None
        # the renewal lands in moto, then its retry sees the counter it moved
        put_items(moto_url, {**to_item(held), "leaseCounter": {"N": str(held.counter + 1)}})
        proxy.fail("UpdateItem", CONDITION_FAILED, times=1)
        renewed = await table.renew(held)
        assert renewed is not None
        assert renewed.counter == held.counter + 1

    async def test_a_checkpoint_after_an_unseen_write_of_its_own_still_goes_through(
        self, proxied: tuple[LeaseTable, DynamoProxy], moto_url: str
    ) -> None:
        """A renewal cut off by a stop landed, unseen: the counter moved, the owner is
        still this worker, so the final checkpoint is written on the counter found."""
        table, _ = proxied
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        held = await table.take(free, "w1")
        assert held is not None
        put_items(moto_url, {**to_item(held), "leaseCounter": {"N": str(held.counter + 1)}})
        saved = await table.checkpoint(held, SEQ)
        assert saved is not None
        assert (saved.checkpoint, saved.counter, saved.owner) == (SEQ, held.counter + 2, "w1")

    async def test_a_refused_condition_with_another_owner_is_a_loss(
        self, proxied: tuple[LeaseTable, DynamoProxy]
    ) -> None:
        table, proxy = proxied
        await table.create(Lease(SHARD))
        (free,) = await table.scan()
        held = await table.take(free, "w1")
        assert held is not None
        proxy.fail("UpdateItem", CONDITION_FAILED, times=1)
        assert await table.renew(held) is None

    async def test_a_failure_that_outlasts_the_timeout_names_the_table_and_the_fix(
        self, proxy: DynamoProxy
    ) -> None:
        store = leases.dynamodb(TABLE, endpoint_url=proxy.url, session=SESSION, timeout=0.3)
        async with store.open() as table:
            await table.create(Lease(SHARD))
            proxy.fail("Scan", THROTTLING)
            with pytest.raises(CheckpointError) as caught:
                await table.scan()
        message = str(caught.value)
        assert message.startswith(f"leases.dynamodb({TABLE}): cannot read the leases: ")
        assert "renew less often with a longer failover_time=" in message
        assert "still failing after retrying for 0.3s" in message
