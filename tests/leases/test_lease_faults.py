"""Lease-table faults while a worker runs (`run(leases=...)` with the lease table behind
tests/dynamo_proxy.py; the test reads the table directly): throttling and 5xx on every
lease operation lose neither records nor leases, a write refused because another worker
holds the lease stops that shard and never moves its checkpoint, a refusal of our own
write that went through keeps the lease, and finished leases are deleted only once
nothing needs them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from dynamo_proxy import (
    INTERNAL,
    PROVISIONED,
    THROTTLING,
    UNAVAILABLE,
    DynamoProxy,
    Fault,
)
from leases.test_run_with_leases import PROMPT, Fleet, Worker, fleet
from support import eventually, wait_until

import flowstream as fs
from flowstream.checkpoints.base import SHARD_END
from flowstream.leases.lease import Lease
from flowstream.testing import MemoryStream

CLEANUP_AFTER = 1.0


class LossyProxy(DynamoProxy):
    """The fault proxy that can also lose answers: the call goes through to moto, and
    the client gets a 500 instead of moto's answer (its retry then meets its own write).
    It notes every conditional write moto refused, with the write's parameters."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.lost_answers: Counter[str] = Counter()
        self.refused: list[dict[str, Any]] = []
        self._to_lose: Counter[str] = Counter()

    def lose_answers(self, operation: str, times: int) -> None:
        self._to_lose[operation] = times

    async def _forward(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        answer = await super()._forward(request, operation, body)
        text = answer.body if isinstance(answer.body, bytes) else b""
        if answer.status == 400 and b"ConditionalCheckFailed" in text:
            self.refused.append(json.loads(body))
        elif answer.status == 200 and self._to_lose[operation] > 0:
            self._to_lose[operation] -= 1
            self.lost_answers[operation] += 1
            status, payload = INTERNAL
            return web.json_response(
                payload, status=status, content_type="application/x-amz-json-1.0"
            )
        return answer

    def refusals_of(self, key: str) -> list[str]:
        """The update expressions of the refused writes of the lease of `key`."""
        return [
            write.get("UpdateExpression", "")
            for write in self.refused
            if write["Key"]["leaseKey"]["S"] == key
        ]


@pytest.fixture
async def lossy(moto_url: str) -> AsyncIterator[LossyProxy]:
    async with LossyProxy(moto_url) as server:
        yield server


@asynccontextmanager
async def behind(proxy: DynamoProxy, moto_url: str, shards: int) -> AsyncIterator[Fleet]:
    """A fleet whose workers reach the lease table through `proxy`, while the test reads
    and writes it directly (its calls neither meet the faults nor use them up)."""
    async with fleet(moto_url, shards) as f:
        f.moto_url = proxy.url
        yield f


def put_each(stream: MemoryStream, shards: list[str], count: int) -> None:
    for shard in shards:
        for n in range(count):
            stream.put(shard, "INSERT", {"pk": f"{shard[-8:]}-{n}"})


def delivered(worker: Worker) -> dict[str, list[str]]:
    """The sequence numbers `worker` delivered, per shard, in the order it did."""
    grouped: dict[str, list[str]] = {}
    for record in worker.out.records:
        grouped.setdefault(record.shard_id, []).append(record.sequence_number)
    return grouped


def written(stream: MemoryStream, shards: list[str]) -> dict[str, list[str]]:
    return {shard: [r.sequence_number for r in stream.records(shard)] for shard in shards}


def everything_delivered(f: Fleet, worker: Worker, shards: list[str]) -> bool:
    return all(
        len(delivered(worker).get(shard, ())) >= len(f.stream.records(shard)) for shard in shards
    )


async def checkpoints_at_the_ends(f: Fleet, shards: list[str]) -> bool:
    """True once every lease of `shards` has its shard's last record (or, for a closed
    shard, SHARD_END) as its checkpoint."""
    table = await f.leases()
    return all(
        shard in table and table[shard].checkpoint == last_position(f.stream, shard)
        for shard in shards
    )


def saved(f: Fleet, worker: Worker, shards: list[str]) -> bool:
    """True once `worker` knows the checkpoints of `shards` are at their ends (the
    writes are done, not only landed in the table)."""
    report = worker.live
    return report is not None and all(
        shard in report.shards and report.shards[shard].checkpoint == last_position(f.stream, shard)
        for shard in shards
    )


def last_position(stream: MemoryStream, shard: str) -> str:
    return SHARD_END if stream.is_closed(shard) else stream.records(shard)[-1].sequence_number


class TestTransientFaults:
    @pytest.mark.parametrize(
        ("operation", "fault"),
        [
            ("Scan", THROTTLING),
            ("Scan", INTERNAL),
            ("PutItem", PROVISIONED),
            ("PutItem", UNAVAILABLE),
            ("UpdateItem", THROTTLING),
            ("UpdateItem", PROVISIONED),
            ("UpdateItem", INTERNAL),
            ("UpdateItem", UNAVAILABLE),
        ],
        ids=[
            "scan-throttling",
            "scan-500",
            "put-provisioned",
            "put-503",
            "update-throttling",
            "update-provisioned",
            "update-500",
            "update-503",
        ],
    )
    async def test_a_few_failed_calls_lose_no_record_and_no_lease(
        self, proxy: DynamoProxy, moto_url: str, operation: str, fault: Fault
    ) -> None:
        """Three calls fail at each stage that uses the operation: starting (the first
        scans, the leases created, taken), running (scans, checkpoints and renewals, a
        split: its end written and released, its children created and taken) and
        stopping (the last checkpoints, the releases)."""
        async with behind(proxy, moto_url, shards=3) as f:
            shards = f.stream.shard_ids
            put_each(f.stream, shards, 5)
            proxy.fail(operation, fault, times=3)
            worker = f.start("a")
            await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
            await wait_until(lambda: proxy.failed[operation] == 3)

            proxy.fail(operation, fault, times=3)
            children = list(f.stream.split(shards[0]))
            put_each(f.stream, [*shards[1:], *children], 5)
            shards += children
            await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
            await wait_until(lambda: proxy.failed[operation] == 6, PROMPT)
            await eventually(lambda: checkpoints_at_the_ends(f, shards), PROMPT)

            if operation == "UpdateItem":
                put_each(f.stream, children, 3)  # checkpoints still to write when stopping
                await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
                proxy.fail(operation, fault, times=3)
            report = await f.stop("a")
            table = await f.leases()
        assert proxy.failed[operation] == (9 if operation == "UpdateItem" else 6)
        assert delivered(worker) == written(f.stream, shards)  # each once, in order
        assert {key: lease.checkpoint for key, lease in table.items()} == {
            shard: last_position(f.stream, shard) for shard in shards
        }
        assert {lease.owner for lease in table.values()} == {None}
        assert table[shards[0]].children == set(children)
        assert report.leases is not None
        assert (report.leases.lost, report.leases.taken, report.leases.released) == (0, 5, 4)
        assert report.shards[shards[0]].state is fs.ShardState.ENDED


class TestRefusedWrites:
    @pytest.mark.parametrize("refused", ["renewal", "checkpoint"])
    async def test_a_lease_another_worker_holds_stops_its_shard_here(
        self, lossy: LossyProxy, moto_url: str, refused: str
    ) -> None:
        """Another worker takes a lease and keeps it (renewing). This worker's next
        write of it (a renewal of an idle shard, or a checkpoint of a busy one) is
        refused: the shard's runner stops, nothing of the shard written after that is
        delivered here, and its checkpoint stays where the other worker found it."""
        async with behind(lossy, moto_url, shards=2) as f:
            stolen, kept = f.stream.shard_ids
            put_each(f.stream, [stolen, kept], 5)
            worker = f.start("a")
            await wait_until(lambda: everything_delivered(f, worker, [stolen, kept]), PROMPT)
            await eventually(lambda: checkpoints_at_the_ends(f, [stolen, kept]), PROMPT)
            async with anyio.create_task_group() as tg:
                if refused == "checkpoint":
                    # Checkpoints every 0.1 s keep the lease fresh: no renewal is due.
                    tg.start_soon(keep_writing, f.stream, stolen)
                    await wait_until(lambda: len(delivered(worker).get(stolen, ())) > 10, PROMPT)
                thief = await Thief.take(f, stolen)
                tg.start_soon(thief.keep_renewing)
                await wait_until(lambda: worker.lost() == 1, PROMPT)
                known = len(f.stream.records(stolen))  # written before the loss was known
                put_each(f.stream, [stolen, kept], 5)
                await wait_until(lambda: everything_delivered(f, worker, [kept]), PROMPT)
                scans = lossy.calls["Scan"]
                await wait_until(lambda: lossy.calls["Scan"] >= scans + 2, PROMPT)  # 2 rounds
                tg.cancel_scope.cancel()
            report = await f.stop("a")
            table = await f.leases()
        assert table[stolen] == thief.lease  # only the thief wrote it since it took it
        assert table[stolen].checkpoint == thief.found.checkpoint
        first = lossy.refusals_of(stolen)[0]
        assert ("#checkpoint = :checkpoint" in first) == (refused == "checkpoint")
        got = delivered(worker)
        assert len(got[stolen]) <= known  # none written after the loss was known
        assert got[stolen] == written(f.stream, [stolen])[stolen][: len(got[stolen])]
        assert got[kept] == written(f.stream, [kept])[kept]
        assert table[kept].checkpoint == last_position(f.stream, kept)
        assert table[kept].owner is None
        assert report.leases is not None
        assert (report.leases.lost, report.leases.released) == (1, 1)
        assert report.shards[stolen].state is fs.ShardState.LOST
        # the report says what this worker last wrote, not a position the table refused
        assert report.shards[stolen].checkpoint in (None, thief.found.checkpoint)
        assert report.shards[kept].state is fs.ShardState.PAUSED

    @pytest.mark.parametrize(
        "read_back", [None, THROTTLING, UNAVAILABLE], ids=["read-back", "throttled", "503"]
    )
    async def test_a_refusal_of_our_own_write_that_went_through_keeps_the_lease(
        self, lossy: LossyProxy, moto_url: str, read_back: Fault | None
    ) -> None:
        """Writes land but their answers are lost (a 500): each retry is refused by its
        own write, and the read-back (itself throttled or failing a few times) shows the
        write held. Checkpoints, renewals and the releases at the stop all count."""
        async with behind(lossy, moto_url, shards=2) as f:
            shards = f.stream.shard_ids
            put_each(f.stream, shards, 5)
            worker = f.start("a")
            await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
            if read_back is not None:
                lossy.fail("GetItem", read_back, times=2)
            lossy.lose_answers("UpdateItem", 2)
            put_each(f.stream, shards, 5)
            await wait_until(lambda: lossy.lost_answers["UpdateItem"] == 2, PROMPT)
            await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
            await wait_until(lambda: saved(f, worker, shards), PROMPT)
            lossy.lose_answers("UpdateItem", 2)
            report = await f.stop("a")
            table = await f.leases()
        assert lossy.lost_answers["UpdateItem"] == 4
        # Each retry met its own write (and so may a write that the stop cut off, when
        # the last checkpoints and the releases are made).
        assert len(lossy.refused) >= 4
        assert lossy.failed["GetItem"] == (0 if read_back is None else 2)
        assert delivered(worker) == written(f.stream, shards)
        assert {key: lease.checkpoint for key, lease in table.items()} == {
            shard: last_position(f.stream, shard) for shard in shards
        }
        assert {lease.owner for lease in table.values()} == {None}
        assert report.leases is not None
        assert (report.leases.lost, report.leases.released) == (0, 2)


async def keep_writing(stream: MemoryStream, shard: str) -> None:
    for n in range(10_000):
        stream.put(shard, "INSERT", {"pk": f"busy-{n}"})
        await anyio.sleep(0.02)


class Thief:
    """Another worker (a KCL one, say) that takes a lease and keeps it."""

    def __init__(self, f: Fleet, found: Lease, lease: Lease) -> None:
        self.f = f
        self.found = found  # the lease as it was taken
        self.lease = lease  # as the thief last wrote it

    @classmethod
    async def take(cls, f: Fleet, key: str) -> Thief:
        with anyio.fail_after(PROMPT):
            while True:  # the holder's writes may move the counter between scan and take
                found = (await f.leases())[key]
                taken = await f.table.take(found, "thief")
                if taken is not None:
                    return cls(f, found, taken)

    async def keep_renewing(self) -> None:
        while True:
            await anyio.sleep(0.2)
            renewed = await self.f.table.renew(self.lease)
            assert renewed is not None, "the lease was moved behind the thief's back"
            self.lease = renewed


class TestCleanup:
    async def test_finished_leases_go_once_nothing_needs_them_parents_first(
        self, proxy: DynamoProxy, moto_url: str
    ) -> None:
        """A finished lease is deleted once its shard is no longer listed, its children
        have leases and its parents' leases are gone, after `cleanup_after`; a finished
        lease whose shard is listed, or whose children have no leases, stays. Deletes
        that are throttled or fail are retried."""
        async with behind(proxy, moto_url, shards=0) as f:
            stream = f.stream
            grandparent, listed, other = stream.add_shard(), stream.add_shard(), stream.add_shard()
            orphan = Lease(
                "shardId-00000001690000000000-0rphan00",
                checkpoint=SHARD_END,
                children=frozenset({"shardId-00000001690000014400-0rphan01"}),
            )
            assert await f.table.create(orphan)
            put_each(stream, stream.shard_ids, 3)
            worker = f.start("a", cleanup_after=CLEANUP_AFTER)
            parent, sibling = stream.split(grandparent)
            listed_children = stream.split(listed)
            put_each(stream, [parent, sibling, *listed_children], 3)
            await wait_until(lambda: everything_delivered(f, worker, [parent]), PROMPT)
            children = stream.split(parent)
            put_each(stream, [*children, other], 3)
            shards = [grandparent, listed, other, parent, sibling, *listed_children, *children]
            await wait_until(lambda: everything_delivered(f, worker, shards), PROMPT)
            await eventually(lambda: noted(f, [grandparent, parent, listed]), PROMPT)
            expected = written(stream, shards)

            proxy.fail("DeleteItem", THROTTLING, times=1)
            removed = anyio.current_time()
            stream.remove_shard(grandparent)
            stream.remove_shard(parent)
            await eventually(lambda: gone(f, grandparent), PROMPT)
            grandparent_gone = anyio.current_time()
            proxy.fail("DeleteItem", UNAVAILABLE, times=2)
            assert parent in await f.leases()  # its parent's lease was there until now
            await eventually(lambda: gone(f, parent), PROMPT)
            parent_gone = anyio.current_time()
            scans = proxy.calls["Scan"]
            await wait_until(lambda: proxy.calls["Scan"] >= scans + 2, PROMPT)  # two rounds
            table = await f.leases()
            report = await f.stop("a")
        assert grandparent_gone - removed >= CLEANUP_AFTER
        # the parent's lease waited its own cleanup_after, from a round after its parent's went
        assert parent_gone - grandparent_gone >= CLEANUP_AFTER - 0.1
        assert proxy.failed["DeleteItem"] == 3
        assert set(table) == {orphan.key, *shards} - {grandparent, parent}
        assert table[listed].finished  # finished but still listed
        assert table[orphan.key] == orphan  # its children have no leases
        assert delivered(worker) == expected
        assert report.leases is not None
        assert report.leases.lost == 0


async def noted(f: Fleet, parents: list[str]) -> bool:
    """True once each of `parents` is finished with its children noted on its lease."""
    table = await f.leases()
    return all(table[key].finished and len(table[key].children) == 2 for key in parents)


async def gone(f: Fleet, key: str) -> bool:
    return key not in await f.leases()
