"""`run(leases=...)` in one process: workers (pipelines with their own worker ids) share a
stream served by LocalStreamsServer through a lease table in moto's DynamoDB. The
multi-process fleet is in test_leases_fleet.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sink_support import new_session
from support import eventually, wait_until

import flowstream as fs
from flowstream import checkpoints, leases, sinks, sources
from flowstream.checkpoints.base import SHARD_END
from flowstream.errors import PipelineError
from flowstream.leases.lease import Lease
from flowstream.leases.table import LeaseTable
from flowstream.monitor import Monitor
from flowstream.sinks.collect import CollectSink
from flowstream.testing import LocalStreamsServer, MemoryStream

TABLE = "pipeline-leases"
FAILOVER = 1.5
SESSION = new_session()
PROMPT = 20.0


@dataclass
class Worker:
    name: str
    out: CollectSink = field(default_factory=sinks.collect)
    stop: anyio.Event = field(default_factory=anyio.Event)
    report: fs.RunReport | None = None
    live: fs.RunReport | None = None  # the report while the run goes on
    done: anyio.Event = field(default_factory=anyio.Event)
    monitor: Monitor = field(default_factory=Monitor)

    def lost(self) -> int:
        report = self.report or self.live
        return 0 if report is None or report.leases is None else report.leases.lost


@dataclass
class Fleet:
    stream: MemoryStream
    server: LocalStreamsServer
    moto_url: str
    table: LeaseTable
    tg: Any
    workers: dict[str, Worker] = field(default_factory=dict)

    async def leases(self) -> dict[str, Lease]:
        return {lease.key: lease for lease in await self.table.scan()}

    async def owners(self) -> Counter[str | None]:
        return Counter(lease.owner for lease in (await self.leases()).values())

    async def owned(self, expected: dict[str | None, int]) -> bool:
        return dict(await self.owners()) == dict(expected)

    def source(self, **options: Any) -> sources.Source:
        return sources.dynamodb(
            stream_arn=self.server.stream_arn,
            endpoint_url=self.server.endpoint_url,
            idle_interval=0.05,
            max_polls_per_second=50.0,
            discovery_interval=0.5,
            **options,
        )

    def start(self, name: str, **options: Any) -> Worker:
        worker = self.workers[name] = Worker(name)
        table = leases.dynamodb(
            TABLE,
            worker_id=name,
            endpoint_url=self.moto_url,
            session=SESSION,
            failover_time=FAILOVER,
            flush_interval=0.1,
            **options,
        )

        async def run() -> None:
            try:
                pipeline = fs.Pipeline(self.source(), name="orders").to(worker.out)
                worker.report = await pipeline.run(
                    stop=worker.stop,
                    leases=table,
                    on_progress=lambda report: setattr(worker, "live", report),
                    progress_interval=0.05,
                    monitor=worker.monitor,
                )
            finally:
                worker.done.set()

        self.tg.start_soon(run)
        return worker

    async def stop(self, name: str) -> fs.RunReport:
        worker = self.workers[name]
        worker.stop.set()
        await worker.done.wait()
        assert worker.report is not None
        return worker.report

    def delivered(self) -> Counter[str]:
        return Counter(r.sequence_number for w in self.workers.values() for r in w.out.records)


@asynccontextmanager
async def fleet(moto_url: str, shards: int = 8) -> AsyncIterator[Fleet]:
    stream = MemoryStream(table="Orders")
    for _ in range(shards):
        stream.add_shard()
    store = leases.dynamodb(TABLE, endpoint_url=moto_url, session=SESSION)
    async with (
        LocalStreamsServer(stream) as server,
        store.open() as table,
        anyio.create_task_group() as tg,
    ):
        running = Fleet(stream, server, moto_url, table, tg)
        try:
            yield running
        finally:
            for worker in running.workers.values():
                worker.stop.set()


def put(stream: MemoryStream, count: int, first: int = 0) -> None:
    shards = stream.shard_ids
    for n in range(first, first + count):
        stream.put(shards[n % len(shards)], "INSERT", {"pk": str(n)})


def every_record(stream: MemoryStream) -> Iterator[str]:
    return (r.sequence_number for r in stream.records())


class TestSharing:
    async def test_two_workers_split_the_shards_and_deliver_everything(self, moto_url: str) -> None:
        async with fleet(moto_url) as f:
            put(f.stream, 80)
            f.start("a")
            await eventually(lambda: f.owned({"a": 8}))
            f.start("b")
            await eventually(lambda: f.owned({"a": 4, "b": 4}))
            put(f.stream, 80, first=80)
            await wait_until(lambda: set(every_record(f.stream)) <= set(f.delivered()), PROMPT)
            a, b = await f.stop("a"), await f.stop("b")
            assert await f.owned({None: 8})  # released on stop
        assert a.leases is not None
        assert b.leases is not None
        assert b.leases.stolen == 4
        assert a.leases.lost == 4
        assert a.leases.released + b.leases.released == 8

    async def test_a_stopped_workers_leases_are_taken_within_one_round(self, moto_url: str) -> None:
        async with fleet(moto_url) as f:
            put(f.stream, 40)
            f.start("a")
            f.start("b")
            await eventually(lambda: f.owned({"a": 4, "b": 4}))
            await f.stop("b")
            stopped = anyio.current_time()
            await eventually(lambda: f.owned({"a": 8}))
            handover = anyio.current_time() - stopped
            await f.stop("a")
        # no expiry wait: the next taking round (every failover/3) picks them up
        assert handover < FAILOVER

    async def test_checkpoints_are_kept_in_the_leases_and_a_restart_resumes(
        self, moto_url: str
    ) -> None:
        async with fleet(moto_url, shards=2) as f:
            put(f.stream, 20)
            f.start("a")
            await wait_until(lambda: len(f.workers["a"].out.items) == 20, PROMPT)
            await f.stop("a")
            saved = await f.leases()
            assert {k: v.checkpoint for k, v in saved.items()} == {
                shard: f.stream.records(shard)[-1].sequence_number for shard in f.stream.shard_ids
            }
            put(f.stream, 6, first=20)
            again = f.start("a2")
            await wait_until(lambda: len(again.out.items) == 6, PROMPT)
            await f.stop("a2")
        assert sorted(int(r.keys["pk"]) for r in again.out.records) == list(range(20, 26))


class TestMetrics:
    async def test_each_worker_exports_the_leases_it_holds_took_and_lost(
        self, moto_url: str
    ) -> None:
        def lease_metrics(worker: Worker) -> dict[tuple[str, ...], float]:
            text = worker.monitor.metrics_text().decode()
            return {
                (s.name, *(s.labels.get(k, "") for k in ("worker", "event"))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name.startswith("flowstream_lease")
            }

        async with fleet(moto_url, shards=4) as f:
            f.start("a")
            await eventually(lambda: f.owned({"a": 4}))
            await wait_until(
                lambda: (
                    lease_metrics(f.workers["a"]).get(("flowstream_leases_held", "a", "")) == 4.0
                ),
                PROMPT,
            )
            f.start("b")
            await eventually(lambda: f.owned({"a": 2, "b": 2}))
            await wait_until(
                lambda: (
                    lease_metrics(f.workers["a"]).get(("flowstream_leases_held", "a", "")) == 2.0
                ),
                PROMPT,
            )
            a = lease_metrics(f.workers["a"])
            assert a[("flowstream_lease_events_total", "a", "taken")] == 4.0
            assert a[("flowstream_lease_events_total", "a", "lost")] == 2.0
            b = lease_metrics(f.workers["b"])
            assert b[("flowstream_leases_held", "b", "")] == 2.0
            assert b[("flowstream_lease_events_total", "b", "stolen")] == 2.0
            await f.stop("a")
            await f.stop("b")


class TestLineage:
    async def test_children_are_taken_once_their_parent_is_finished(self, moto_url: str) -> None:
        async with fleet(moto_url, shards=2) as f:
            put(f.stream, 20)
            parent = f.stream.shard_ids[0]
            f.start("a")
            f.start("b")
            await wait_until(lambda: len(f.delivered()) == 20, PROMPT)
            left, right = f.stream.split(parent)
            for n in range(20, 30):
                f.stream.put(left if n % 2 else right, "INSERT", {"pk": str(n)})
            await wait_until(lambda: set(every_record(f.stream)) <= set(f.delivered()), PROMPT)
            await eventually(lambda: _finished(f, parent))
            leased = await f.leases()
            await f.stop("a")
            await f.stop("b")
        assert leased[parent].checkpoint == SHARD_END
        assert leased[parent].owner is None  # released once finished
        assert leased[parent].children == {left, right}
        assert leased[left].parents == {parent}
        # a child's records were delivered only after every record of its parent
        arrival = {
            r.sequence_number: n
            for w in f.workers.values()
            for n, r in enumerate(w.out.records)
            if r.shard_id == parent
        }
        assert len(arrival) == len(f.stream.records(parent))


async def _finished(f: Fleet, parent: str) -> bool:
    lease = (await f.leases()).get(parent)
    return lease is not None and lease.finished and bool(lease.children)


class TestLosing:
    async def test_a_stolen_lease_stops_its_runner_and_its_checkpoint_stays_fenced(
        self, moto_url: str
    ) -> None:
        async with fleet(moto_url, shards=1) as f:
            put(f.stream, 5)
            worker = f.start("a")
            (shard,) = f.stream.shard_ids
            await wait_until(lambda: len(worker.out.items) == 5, PROMPT)
            await eventually(lambda: _checkpointed(f, shard))
            # another worker (a KCL one, say) takes the lease over
            lease = (await f.leases())[shard]
            assert await f.table.take(lease, "thief") is not None
            await wait_until(lambda: worker.lost() == 1, PROMPT)
            put(f.stream, 5, first=5)  # for the thief: this worker reads no more
            report = await f.stop("a")
            assert (await f.leases())[shard].owner == "thief"
        assert report.leases is not None
        assert report.leases.lost == 1
        assert report.shards[shard].state is fs.ShardState.LOST
        assert len(worker.out.items) == 5


async def _checkpointed(f: Fleet, shard: str) -> bool:
    return (await f.leases())[shard].checkpoint != "TRIM_HORIZON"


class TestKclTable:
    async def test_a_table_a_kcl_application_wrote_resumes_from_its_checkpoints(
        self, moto_url: str
    ) -> None:
        async with fleet(moto_url, shards=2) as f:
            put(f.stream, 20)
            first, second = f.stream.shard_ids
            done = f.stream.records(first)[6].sequence_number
            # the items exactly as the KCL writes them (tests/leases/test_lease_table.py)
            client: Any = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1")
            for key, checkpoint in ((first, done), (second, "TRIM_HORIZON")):
                client.put_item(
                    TableName=TABLE,
                    Item={
                        "leaseKey": {"S": key},
                        "leaseCounter": {"N": "42"},
                        "leaseOwner": {"S": "kcl-worker-1"},
                        "ownerSwitchesSinceCheckpoint": {"N": "0"},
                        "checkpoint": {"S": checkpoint},
                        "checkpointSubSequenceNumber": {"N": "0"},
                    },
                )
            worker = f.start("a")
            # the KCL worker is gone: its leases expire after the failover time
            await wait_until(lambda: len(worker.out.items) == 20 - 7, PROMPT)
            await f.stop("a")
        got = sorted(r.sequence_number for r in worker.out.records)
        expected = [r.sequence_number for r in f.stream.records(first)[7:]] + [
            r.sequence_number for r in f.stream.records(second)
        ]
        assert got == sorted(expected)


class TestRunChecks:
    def pipeline(self) -> fs.Pipeline[Any]:
        return fs.Pipeline(MemoryStream(), name="p").to(sinks.collect())

    async def test_leases_and_checkpoints_together(self) -> None:
        with pytest.raises(PipelineError, match="the lease table holds the checkpoints"):
            await self.pipeline().run(
                leases=leases.dynamodb(TABLE), checkpoints=checkpoints.memory()
            )

    async def test_leases_and_drain(self) -> None:
        with pytest.raises(PipelineError, match=r"drain=True\) with leases"):
            await self.pipeline().run(leases=leases.dynamodb(TABLE), drain=True)

    async def test_a_source_starting_at_a_sequence_number(self) -> None:
        source = MemoryStream(start=fs.sources.Position.at("100000000000000000001"))
        with pytest.raises(PipelineError, match="a lease starts at TRIM_HORIZON or LATEST"):
            await (
                fs.Pipeline(source, name="p").to(sinks.collect()).run(leases=leases.dynamodb(TABLE))
            )
