"""Tests of `flowstream.testing.MemoryStream`: a live in-memory stream and its session."""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from decimal import Decimal

import anyio
import pytest
from anyio.abc import TaskGroup

from flowstream.errors import SourceError
from flowstream.record import EventName, Record, StreamViewType
from flowstream.sources import Position
from flowstream.sources.base import LATEST, TRIM_HORIZON, Page, Shard, ShardReader, StreamSession
from flowstream.testing import MemoryStream

SHARD_ID_RE = re.compile(r"shardId-[0-9]{20}-[0-9a-f]{8}")
TIMEOUT = 5.0


def put_n(stream: MemoryStream, shard_id: str, n: int) -> list[Record]:
    return [stream.put(shard_id, "INSERT", {"pk": f"k{i}"}, {"pk": f"k{i}"}) for i in range(n)]


async def shard_of(session: StreamSession, shard_id: str) -> Shard:
    (shard,) = [s for s in await session.list_shards() if s.shard_id == shard_id]
    return shard


class TestAddShard:
    def test_generated_ids_look_like_dynamodb_ones(self) -> None:
        stream = MemoryStream()
        ids = [stream.add_shard() for _ in range(50)]
        for shard_id in ids:
            assert SHARD_ID_RE.fullmatch(shard_id), shard_id
            assert len(shard_id) >= 28  # botocore rejects shorter shard ids
        assert len(set(ids)) == 50
        assert stream.shard_ids == ids

    def test_given_id_and_parent(self) -> None:
        stream = MemoryStream()
        parent = stream.add_shard("shardId-00000000000000000001-00000001")
        child = stream.add_shard(parent=parent)
        assert parent == "shardId-00000000000000000001-00000001"
        assert stream.parent_of(child) == parent
        assert stream.parent_of(parent) is None

    def test_duplicate_id_is_a_source_error(self) -> None:
        stream = MemoryStream()
        shard_id = stream.add_shard()
        with pytest.raises(SourceError, match=r"already has a shard"):
            stream.add_shard(shard_id)

    def test_unknown_parent_is_a_source_error(self) -> None:
        with pytest.raises(SourceError, match=r"has no shard 'nope'; add it with add_shard"):
            MemoryStream().add_shard(parent="nope")

    @pytest.mark.parametrize("page_size", [0, -5])
    def test_page_size_must_be_positive(self, page_size: int) -> None:
        with pytest.raises(SourceError, match=r"must be at least 1"):
            MemoryStream(page_size=page_size)

    @pytest.mark.parametrize(
        ("start", "expected"),
        [("trim_horizon", TRIM_HORIZON), ("latest", LATEST), (Position.at("1"), Position.at("1"))],
        ids=["trim_horizon", "latest", "position"],
    )
    def test_start_option(self, start: Position | str, expected: Position) -> None:
        assert MemoryStream(start=start).start == expected  # type: ignore[arg-type]


class TestPut:
    def test_record_carries_what_was_put(self) -> None:
        stream = MemoryStream(region="eu-west-1")
        shard = stream.add_shard()
        record = stream.put(
            shard,
            EventName.MODIFY,
            {"pk": "user#1", "sk": 2},
            {"pk": "user#1", "sk": 2, "amount": Decimal("1.50"), "blob": b"\x00", "tags": {"a"}},
            {"pk": "user#1", "sk": 2, "amount": 1},
        )
        assert record.event_name is EventName.MODIFY
        assert record.keys == {"pk": "user#1", "sk": 2}
        assert record.new_image == {
            "pk": "user#1",
            "sk": 2,
            "amount": Decimal("1.5"),
            "blob": b"\x00",
            "tags": {"a"},
        }
        assert record.old_image == {"pk": "user#1", "sk": 2, "amount": 1}
        assert record.shard_id == shard
        assert record.stream_view_type is StreamViewType.NEW_AND_OLD_IMAGES
        assert record.aws_region == "eu-west-1"
        assert record.event_source == "aws:dynamodb"
        assert record.size_bytes > 0
        assert record.is_ttl_delete is False

    def test_remove_without_images_and_ttl_delete(self) -> None:
        stream = MemoryStream(view_type="KEYS_ONLY")
        shard = stream.add_shard()
        user = stream.put(shard, "REMOVE", {"pk": "a"})
        ttl = stream.put(shard, "REMOVE", {"pk": "b"}, ttl_delete=True)
        assert (user.new_image, user.old_image) == (None, None)
        assert user.stream_view_type is StreamViewType.KEYS_ONLY
        assert (user.is_ttl_delete, ttl.is_ttl_delete) == (False, True)

    def test_sequence_numbers_increase_per_shard_and_across_shards(self) -> None:
        stream = MemoryStream()
        a, b = stream.add_shard(), stream.add_shard()
        records = [
            stream.put(shard, "INSERT", {"pk": str(i)}) for i, shard in enumerate([a, b] * 5)
        ]
        numbers = [r.sequence_number for r in records]
        for number in numbers:
            assert number.isdigit()
            assert 21 <= len(number) <= 40
        as_ints = [int(n) for n in numbers]
        assert as_ints == sorted(as_ints)
        assert len(set(as_ints)) == len(as_ints)
        assert [r.shard_id for r in records] == [a, b] * 5

    def test_creation_times_are_aware_utc_and_do_not_go_back(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        first, second = put_n(stream, shard, 2)
        t1, t2 = first.approximate_creation_time, second.approximate_creation_time
        assert t1 is not None
        assert t2 is not None
        assert t1.tzinfo is not None
        assert t1.utcoffset() == timedelta(0)
        assert t1.astimezone(UTC) == t1
        assert t2 >= t1

    async def test_returns_the_record_as_read(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        put = stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a", "n": 1})
        async with stream.open() as session:
            page = await session.reader(await shard_of(session, shard), TRIM_HORIZON).read()
        (read,) = page.records
        assert read == put
        assert read.to_json() == put.to_json()
        assert read.new_image == put.new_image
        assert stream.records(shard) == [put]
        assert stream.records() == [put]

    def test_records_of_all_shards_in_shard_order(self) -> None:
        stream = MemoryStream()
        a, b = stream.add_shard(), stream.add_shard()
        rb = stream.put(b, "INSERT", {"pk": "b"})
        ra = stream.put(a, "INSERT", {"pk": "a"})
        assert stream.records() == [ra, rb]
        assert stream.records(b) == [rb]

    def test_put_into_a_closed_shard_is_a_source_error(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.close(shard)
        with pytest.raises(SourceError, match=r"is closed; put into one of its children"):
            stream.put(shard, "INSERT", {"pk": "a"})
        assert stream.records(shard) == []

    def test_put_into_an_unknown_shard_is_a_source_error(self) -> None:
        with pytest.raises(SourceError, match=r"has no shard 'shardId-x'"):
            MemoryStream().put("shardId-x", "INSERT", {"pk": "a"})

    def test_unknown_shard_in_helpers_is_a_source_error(self) -> None:
        stream = MemoryStream()
        for call in (stream.records, stream.parent_of, stream.close, stream.split):
            with pytest.raises(SourceError, match=r"has no shard 'nope'"):
                call("nope")


class TestSplitAndClose:
    async def test_split_closes_the_parent_and_opens_two_children(self) -> None:
        stream = MemoryStream()
        parent = stream.add_shard()
        left, right = stream.split(parent)
        assert left != right
        assert SHARD_ID_RE.fullmatch(left)
        assert SHARD_ID_RE.fullmatch(right)
        assert stream.parent_of(left) == stream.parent_of(right) == parent
        async with stream.open() as session:
            listed = await session.list_shards()
        assert [(s.shard_id, s.parent_shard_id, s.closed) for s in listed] == [
            (parent, None, True),
            (left, parent, False),
            (right, parent, False),
        ]
        # sequence number ranges as DescribeStream gives them: an end only once closed
        assert listed[0].ending_sequence_number == listed[0].starting_sequence_number
        assert listed[1].ending_sequence_number is None
        assert int(listed[1].starting_sequence_number or 0) >= int(
            listed[0].starting_sequence_number or 0
        )
        with pytest.raises(SourceError, match=r"is closed"):
            stream.put(parent, "INSERT", {"pk": "a"})
        assert stream.put(left, "INSERT", {"pk": "a"}).shard_id == left

    def test_a_closed_shard_cannot_split_again(self) -> None:
        stream = MemoryStream()
        parent = stream.add_shard()
        stream.split(parent)
        with pytest.raises(SourceError, match=r"is closed and cannot split again"):
            stream.split(parent)
        assert len(stream.shard_ids) == 3

    def test_close_is_idempotent(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.close(shard)
        stream.close(shard)
        with pytest.raises(SourceError):
            stream.put(shard, "INSERT", {"pk": "a"})


class TestSession:
    async def test_identity_and_shards(self) -> None:
        stream = MemoryStream(table="Users")
        shard = stream.add_shard()
        assert stream.describe().startswith("MemoryStream(Users")
        async with stream.open() as session:
            assert session.stream_id == stream.stream_arn
            assert stream.stream_arn.startswith("arn:aws:dynamodb:us-east-1:")
            assert ":table/Users/stream/" in stream.stream_arn
            assert session.finite is False
            (listed,) = await session.list_shards()
            assert (listed.shard_id, listed.parent_shard_id, listed.closed) == (shard, None, False)

    async def test_pages_of_page_size(self) -> None:
        stream = MemoryStream(page_size=2)
        shard = stream.add_shard()
        records = put_n(stream, shard, 5)
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), TRIM_HORIZON)
            got = [await reader.read() for _ in range(3)]
        assert [p.records for p in got] == [records[:2], records[2:4], records[4:]]
        assert [(p.caught_up, p.ended) for p in got] == [
            (False, False),
            (False, False),
            (True, False),
        ]

    async def test_first_read_of_an_empty_open_shard_returns_at_once(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        async with stream.open() as session:
            with anyio.fail_after(TIMEOUT):
                page = await session.reader(await shard_of(session, shard), TRIM_HORIZON).read()
        assert (page.records, page.caught_up, page.ended) == ([], True, False)

    async def test_ended_after_close(self) -> None:
        stream = MemoryStream(page_size=2)
        shard = stream.add_shard()
        records = put_n(stream, shard, 3)
        stream.close(shard)
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), TRIM_HORIZON)
            first, last = await reader.read(), await reader.read()
        assert (first.records, first.ended) == (records[:2], False)
        assert (last.records, last.caught_up, last.ended) == (records[2:], True, True)

    async def test_an_empty_closed_shard_ends_at_once(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.close(shard)
        async with stream.open() as session:
            page = await session.reader(await shard_of(session, shard), TRIM_HORIZON).read()
        assert (page.records, page.caught_up, page.ended) == ([], True, True)

    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            pytest.param(TRIM_HORIZON, [0, 1, 2, 3], id="trim-horizon"),
            pytest.param(LATEST, [], id="latest"),
            pytest.param("after-1", [2, 3], id="after"),
            pytest.param("at-1", [1, 2, 3], id="at"),
            pytest.param("after-3", [], id="after-last"),
        ],
    )
    async def test_start_positions(self, start: Position | str, expected: list[int]) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        records = put_n(stream, shard, 4)
        stream.close(shard)
        if isinstance(start, str):
            kind, index = start.split("-")
            number = records[int(index)].sequence_number
            start = Position.after(number) if kind == "after" else Position.at(number)
        async with stream.open() as session:
            page = await session.reader(await shard_of(session, shard), start).read()
        assert page.records == [records[i] for i in expected]
        assert page.ended

    async def test_latest_reads_only_what_is_put_later(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        put_n(stream, shard, 3)
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), LATEST)
            assert (await reader.read()).records == []
            later = stream.put(shard, "INSERT", {"pk": "later"})
            with anyio.fail_after(TIMEOUT):
                assert (await reader.read()).records == [later]

    async def test_unknown_shard_is_a_source_error(self) -> None:
        stream = MemoryStream()
        async with stream.open() as session:
            with pytest.raises(SourceError, match=r"has no shard"):
                session.reader(Shard("shardId-unknown"), TRIM_HORIZON)


async def read_in_background(reader: ShardReader, into: list[Page], task_group: TaskGroup) -> None:
    """Start `reader.read()` in a task and return once it is waiting."""

    async def read() -> None:
        into.append(await reader.read())

    task_group.start_soon(read)
    await anyio.wait_all_tasks_blocked()
    assert into == [], "the read returned instead of waiting for new records"


class TestWaiting:
    async def test_a_caught_up_reader_wakes_when_a_record_is_put(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        (old,) = put_n(stream, shard, 1)
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), TRIM_HORIZON)
            assert (await reader.read()).records == [old]
            got: list[Page] = []
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    await read_in_background(reader, got, tg)
                    new = stream.put(shard, "MODIFY", {"pk": "k0"}, {"pk": "k0"})
        (page,) = got
        assert page.records == [new]
        assert (page.caught_up, page.ended) == (True, False)

    async def test_a_reader_wakes_when_put_comes_from_another_task(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), TRIM_HORIZON)
            assert (await reader.read()).records == []
            got: list[Page] = []
            put: list[Record] = []

            async def writer() -> None:
                await anyio.wait_all_tasks_blocked()
                put.append(stream.put(shard, "INSERT", {"pk": "x"}))

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    await read_in_background(reader, got, tg)
                    tg.start_soon(writer)
        assert [p.records for p in got] == [put]

    async def test_a_put_into_another_shard_does_not_wake_the_reader(self) -> None:
        stream = MemoryStream()
        watched, other = stream.add_shard(), stream.add_shard()
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, watched), TRIM_HORIZON)
            await reader.read()
            got: list[Page] = []
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    await read_in_background(reader, got, tg)
                    stream.put(other, "INSERT", {"pk": "elsewhere"})
                    await anyio.wait_all_tasks_blocked()
                    assert got == []
                    mine = stream.put(watched, "INSERT", {"pk": "mine"})
        assert [p.records for p in got] == [[mine]]

    @pytest.mark.parametrize("how", ["close", "split"])
    async def test_a_waiting_reader_ends_when_its_shard_closes(self, how: str) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        async with stream.open() as session:
            reader = session.reader(await shard_of(session, shard), TRIM_HORIZON)
            await reader.read()
            got: list[Page] = []
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    await read_in_background(reader, got, tg)
                    if how == "close":
                        stream.close(shard)
                    else:
                        stream.split(shard)
        (page,) = got
        assert (page.records, page.caught_up, page.ended) == ([], True, True)

    @pytest.mark.parametrize("change", ["add_shard", "split", "close"])
    async def test_wait_for_shards_wakes_on_a_topology_change(self, change: str) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        woke: list[bool] = []
        async with stream.open() as session:

            async def wait() -> None:
                await session.wait_for_shards(3600)
                woke.append(True)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    assert woke == []
                    if change == "add_shard":
                        stream.add_shard()
                    elif change == "split":
                        stream.split(shard)
                    else:
                        stream.close(shard)
            assert woke == [True]
            assert (
                len(await session.list_shards()) == {"add_shard": 2, "split": 3, "close": 1}[change]
            )

    async def test_wait_for_shards_returns_after_max_wait(self) -> None:
        stream = MemoryStream()
        async with stream.open() as session:
            with anyio.fail_after(TIMEOUT):
                for _ in range(100):
                    await session.wait_for_shards(0)
        # Timed-out waits leave nothing behind for the next change to wake.
        assert stream._topology_waiters == []

    async def test_a_put_does_not_wake_wait_for_shards(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        woke: list[bool] = []
        async with stream.open() as session:

            async def wait() -> None:
                await session.wait_for_shards(3600)
                woke.append(True)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    stream.put(shard, "INSERT", {"pk": "a"})
                    await anyio.wait_all_tasks_blocked()
                    assert woke == []
                    stream.add_shard()
        assert woke == [True]
