"""Tests of the sinks with nothing remote behind them: collect(), callback(fn), stdout()
and jsonl(path), driven through their writers as the runtime drives them."""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowstream as fs
from flowstream import sinks, sources
from flowstream.errors import PipelineError, SinkError
from flowstream.record import Record, decode_records
from flowstream.serialize import SerializationError
from flowstream.sinks import Batch, SendResult, Sink
from flowstream.sinks.base import SimpleSink, SinkWriter
from flowstream.sources.base import TRIM_HORIZON, Page
from flowstream.testing import MemoryStream

SHARD_A = "shardId-00000001700000000000-aaaaaaaa"
SHARD_B = "shardId-00000001700000000000-bbbbbbbb"


def make_record(sequence: int, shard_id: str = SHARD_A, *, name: str = "INSERT") -> Record:
    line = (
        f'{{"eventID":"e{sequence}","eventName":"{name}","dynamodb":{{'
        f'"Keys":{{"pk":{{"S":"k{sequence}"}}}},"NewImage":{{"pk":{{"S":"k{sequence}"}},'
        f'"n":{{"N":"{sequence}.5"}},"b":{{"B":"AAE="}}}},'
        f'"SequenceNumber":"{10**20 + sequence}","StreamViewType":"NEW_IMAGE"}}}}'
    )
    (record,) = decode_records(f'{{"Records":[{line}]}}', shard_id=shard_id)
    return record


def batch(values: list[Any], shard_id: str = SHARD_A, first: int = 1) -> Batch:
    records = [make_record(first + i, shard_id) for i in range(len(values))]
    return Batch(shard_id, values, records)


async def send_all(sink: Sink, *batches: Batch) -> list[SendResult | None]:
    async with sink.open() as writer:
        return [await writer.send(b) for b in batches]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class TestCollect:
    async def test_keeps_items_records_and_shards_in_arrival_order(self) -> None:
        sink = sinks.collect()
        b1, b2, b3 = batch(["a1", "a2"]), batch(["b1"], SHARD_B), batch(["a3"], first=3)
        assert await send_all(sink, b1, b2, b3) == [None, None, None]

        assert sink.items == ["a1", "a2", "b1", "a3"]
        assert sink.records == [*b1.records, *b2.records, *b3.records]
        assert sink.shards == [SHARD_A, SHARD_A, SHARD_B, SHARD_A]
        assert sink.by_shard() == {SHARD_A: ["a1", "a2", "a3"], SHARD_B: ["b1"]}

    async def test_values_sharing_a_record_after_flat_map(self) -> None:
        record = make_record(1)
        sink = sinks.collect()
        await send_all(sink, Batch(SHARD_A, ["x", "y"], [record, record]))
        assert sink.items == ["x", "y"]
        assert sink.records == [record, record]

    async def test_concurrent_shards_keep_their_own_order(self) -> None:
        sink = sinks.collect()
        async with sink.open() as writer:

            async def feed(shard_id: str) -> None:
                for i in range(20):
                    await writer.send(batch([f"{shard_id}-{i}"], shard_id, first=i + 1))
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed, SHARD_A)
                tg.start_soon(feed, SHARD_B)

        grouped = sink.by_shard()
        assert grouped[SHARD_A] == [f"{SHARD_A}-{i}" for i in range(20)]
        assert grouped[SHARD_B] == [f"{SHARD_B}-{i}" for i in range(20)]
        assert len(sink.items) == 40

    async def test_clear(self) -> None:
        sink = sinks.collect()
        await send_all(sink, batch([1, 2]))
        sink.clear()
        assert (sink.items, sink.records, sink.shards, sink.by_shard()) == ([], [], [], {})

    def test_name(self) -> None:
        assert sinks.collect().name == "collect"
        assert sinks.collect("audit").describe() == "audit"


async def _async_store(seen: list[list[Any]], values: list[Any]) -> None:
    await anyio.lowlevel.checkpoint()
    seen.append(values)


class _AsyncCallable:
    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    async def __call__(self, values: list[Any]) -> None:
        await _async_store(self.seen, values)


class TestCallback:
    async def test_sync_function_gets_the_list(self) -> None:
        seen: list[list[Any]] = []
        sink = sinks.callback(seen.append)
        assert await send_all(sink, batch([1, 2]), batch([3], SHARD_B)) == [None, None]
        assert seen == [[1, 2], [3]]
        assert all(type(values) is list for values in seen)

    @pytest.mark.parametrize(
        "kind", ["async-def", "async-partial", "async-callable-object", "sync-returning-coroutine"]
    )
    async def test_async_callbacks_are_awaited(self, kind: str) -> None:
        seen: list[list[Any]] = []
        fn: Callable[[list[Any]], Awaitable[None] | None]
        if kind == "async-def":

            async def fn(values: list[Any]) -> None:
                await _async_store(seen, values)

        elif kind == "async-partial":
            fn = functools.partial(_async_store, seen)
        elif kind == "async-callable-object":
            obj = _AsyncCallable()
            seen = obj.seen
            fn = obj
        else:
            fn = lambda values: _async_store(seen, values)  # noqa: E731

        await send_all(sinks.callback(fn), batch(["x", "y"]))
        assert seen == [["x", "y"]]

    @pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
    async def test_an_exception_propagates_from_send(self, is_async: bool) -> None:
        class Boom(Exception):
            pass

        def sync_fail(values: list[Any]) -> None:
            raise Boom(values)

        async def async_fail(values: list[Any]) -> None:
            await anyio.lowlevel.checkpoint()
            raise Boom(values)

        sink = sinks.callback(async_fail if is_async else sync_fail)
        async with sink.open() as writer:
            with pytest.raises(Boom) as info:
                await writer.send(batch(["x"]))
        assert info.value.args == (["x"],)

    async def test_a_function_that_consumes_its_list_gets_it_whole_on_retry(self) -> None:
        handled: list[Any] = []
        calls = 0

        def handle(values: list[Any]) -> None:
            nonlocal calls
            calls += 1
            while values:
                value = values.pop(0)
                if value == "b" and calls == 1:
                    raise RuntimeError("b failed")
                handled.append(value)

        b = batch(["a", "b", "c"])
        async with sinks.callback(handle).open() as writer:
            with pytest.raises(RuntimeError):
                await writer.send(b)
            assert b.values == ["a", "b", "c"]
            assert len(b) == 3
            assert await writer.send(b) is None  # the runtime retries the same batch
        assert handled == ["a", "a", "b", "c"]

    def test_not_callable_is_a_pipeline_error(self) -> None:
        with pytest.raises(PipelineError, match=r"got str, which is not callable"):
            sinks.callback("print")  # type: ignore[arg-type]

    def test_describe_names_the_function(self) -> None:
        def invalidate(values: list[Any]) -> None:
            pass

        assert "invalidate" in sinks.callback(invalidate).describe()

    def test_a_name_replaces_the_function_name_in_plans_and_reports(self) -> None:
        sink = sinks.callback(_AsyncCallable(), name="tally")
        assert sink.name == sink.describe() == "tally"

    @pytest.mark.parametrize("name", ["", 3])
    def test_a_name_must_be_a_non_empty_str(self, name: Any) -> None:
        with pytest.raises(PipelineError, match=r"name=.* must be a non-empty str"):
            sinks.callback(print, name=name)


class TestWritingASink:
    """A sink of the user's own whose writer's send() is a plain def is refused when the
    run opens it, before anything is read, with the fix."""

    async def test_a_simple_sink_with_a_plain_send(self) -> None:
        class PlainSend(SimpleSink):
            def describe(self) -> str:
                return "plain-send"

            def send(self, batch: Batch) -> None:  # type: ignore[override]
                raise AssertionError("never called")

        await self._refused(PlainSend(), "sink plain-send: PlainSend.send()")

    async def test_a_writer_with_a_plain_send(self) -> None:
        class Writer(SinkWriter):
            def send(self, batch: Batch) -> None:  # type: ignore[override]
                raise AssertionError("never called")

        class Opens(Sink):
            def describe(self) -> str:
                return "opens"

            @asynccontextmanager
            async def _open(self) -> AsyncIterator[SinkWriter]:
                yield Writer()

            def open(self) -> AbstractAsyncContextManager[SinkWriter]:
                return self._open()

        await self._refused(Opens(), "sink opens: Writer.send()")

    @staticmethod
    async def _refused(sink: Sink, names: str) -> None:
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", {"pk": "a"})
        with pytest.raises(PipelineError) as info:
            await fs.Pipeline(stream).to(sink).run(drain=True)
        message = str(info.value)
        assert message.startswith(names)
        assert "is a plain function" in message
        assert "async def send(self, batch)" in message


class TestStdout:
    async def test_writes_one_line_per_element_and_flushes(self) -> None:
        out = CountingStream()
        sink = sinks.stdout(out)
        record = make_record(7)
        results = await send_all(
            sink, batch([{"op": "REMOVE", "key": "k1"}, "plain", 3]), batch([record])
        )
        assert results == [None, None]
        lines = out.getvalue().split("\n")
        assert lines[:3] == ['{"op":"REMOVE","key":"k1"}', "plain", "3"]
        assert json.loads(lines[3]) == json.loads(record.to_json())
        assert lines[4:] == [""]
        assert out.flushes == 2

    async def test_defaults_to_sys_stdout_at_send_time(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        sink = sinks.stdout()
        await send_all(sink, batch([{"a": 1}]))
        assert capsys.readouterr().out == '{"a":1}\n'

    async def test_unserialisable_item_fails_alone(self) -> None:
        out = io.StringIO()
        (result,) = await send_all(sinks.stdout(out), batch(["a", object(), "c"]))
        assert out.getvalue() == "a\nc\n"
        assert result is not None
        assert list(result.failed) == [1]
        assert isinstance(result.failed[1], SerializationError)
        assert result.retryable is False

    async def test_text_is_printed_as_it_is(self) -> None:
        out = io.StringIO()
        await send_all(sinks.stdout(out), batch(["two\nlines", b"caf\xc3\xa9", b"\xff"]))
        assert out.getvalue() == "two\nlines\ncafé\n\\xff\n"

    def test_name(self) -> None:
        assert sinks.stdout(sys.stderr).name == "stdout"


async def read_back(path: Path) -> dict[str, list[Record]]:
    by_shard: dict[str, list[Record]] = {}
    async with sources.jsonl(path).open() as session:
        for shard in await session.list_shards():
            reader = session.reader(shard, TRIM_HORIZON)
            records: list[Record] = []
            page = Page([])
            while not page.ended:
                page = await reader.read()
                records.extend(page.records)
            by_shard[shard.shard_id] = records
    return by_shard


class TestJsonl:
    async def test_appends_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "out.jsonl"
        path.write_bytes(b'{"existing":true}\n')
        results = await send_all(sinks.jsonl(path), batch([{"a": 1}, [2]]), batch(["x"]))
        assert results == [None, None]
        await send_all(sinks.jsonl(path), batch([{"b": 3}]))
        assert path.read_bytes() == b'{"existing":true}\n{"a":1}\n[2]\nx\n{"b":3}\n'

    async def test_creates_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "new.jsonl"
        await send_all(sinks.jsonl(str(path)), batch([{"a": 1}]))
        assert path.read_bytes() == b'{"a":1}\n'

    async def test_lines_are_on_disk_when_send_returns(self, tmp_path: Path) -> None:
        path = tmp_path / "out.jsonl"
        async with sinks.jsonl(path).open() as writer:
            await writer.send(batch([{"a": 1}]))
            assert path.read_bytes() == b'{"a":1}\n'  # flushed, before the sink closes

    async def test_fsync_option_syncs_each_batch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        synced: list[int] = []
        real_fsync = os.fsync

        def spy(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", spy)
        path = tmp_path / "durable.jsonl"
        async with sinks.jsonl(path, fsync=True).open() as writer:
            await writer.send(batch([{"a": 1}]))
            assert path.read_bytes() == b'{"a":1}\n'
            assert len(synced) == 1
            await writer.send(batch([{"b": 2}]))
        assert len(synced) == 2
        assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'

    async def test_without_fsync_nothing_is_synced(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        synced: list[int] = []
        monkeypatch.setattr(os, "fsync", synced.append)
        await send_all(sinks.jsonl(tmp_path / "out.jsonl"), batch([1]))
        assert synced == []

    @pytest.mark.parametrize("fsync", [False, True], ids=["buffered", "fsync"])
    async def test_concurrent_batches_never_interleave(self, tmp_path: Path, fsync: bool) -> None:
        path = tmp_path / "out.jsonl"
        async with (
            sinks.jsonl(path, fsync=fsync).open() as writer,
            anyio.create_task_group() as tg,
        ):
            for shard_id in (SHARD_A, SHARD_B):
                values = [{"shard": shard_id, "i": i} for i in range(200)]
                tg.start_soon(writer.send, batch(values, shard_id))
        lines = [json.loads(line) for line in path.read_bytes().splitlines()]
        assert len(lines) == 400
        first = lines[0]["shard"]
        assert [line["shard"] for line in lines[:200]] == [first] * 200
        assert [line["i"] for line in lines[:200]] == list(range(200))

    @pytest.mark.parametrize("fsync", [False, True], ids=["buffered", "fsync"])
    async def test_records_read_back_with_the_jsonl_source(
        self, tmp_path: Path, fsync: bool
    ) -> None:
        path = tmp_path / "records.jsonl"
        a_records = [make_record(i, SHARD_A) for i in (1, 2, 3)]
        b_records = [make_record(i, SHARD_B, name="REMOVE") for i in (4, 5)]
        for record in a_records:
            _ = record.new_image  # decoded images must not change what is written
        await send_all(
            sinks.jsonl(path, fsync=fsync),
            Batch(SHARD_A, list(a_records[:2]), a_records[:2]),
            Batch(SHARD_B, list(b_records), b_records),
            Batch(SHARD_A, a_records[2:], a_records[2:]),
        )

        read = await read_back(path)
        assert read == {SHARD_A: a_records, SHARD_B: b_records}
        for original, again in zip(
            a_records + b_records, read[SHARD_A] + read[SHARD_B], strict=True
        ):
            assert again.to_json() == original.to_json()
            assert again.new_image == original.new_image
            assert again.event_name == original.event_name

    async def test_unserialisable_item_fails_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "out.jsonl"
        (result,) = await send_all(sinks.jsonl(path), batch([{"a": 1}, {"bad": object()}, [3]]))
        assert path.read_bytes() == b'{"a":1}\n[3]\n'
        assert result is not None
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, SerializationError)
        assert "object" in str(error)
        assert result.retryable is False

    async def test_text_with_a_line_break_fails_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "out.jsonl"
        (result,) = await send_all(sinks.jsonl(path), batch(["ok", "bro\nken", {"t": "a\nb"}]))
        assert path.read_bytes() == b'ok\n{"t":"a\\nb"}\n'
        assert result is not None
        assert list(result.failed) == [1]
        assert result.retryable is False

    async def test_missing_directory_raises_sink_error_naming_the_path(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "missing" / "out.jsonl"
        sink = sinks.jsonl(path)
        with pytest.raises(SinkError, match=r"cannot open .*missing/out\.jsonl") as info:
            async with sink.open():
                pass
        assert str(path) in str(info.value)
        assert not path.parent.exists()

    def test_name(self, tmp_path: Path) -> None:
        assert sinks.jsonl(tmp_path / "x.jsonl").name == f"jsonl({tmp_path / 'x.jsonl'})"
