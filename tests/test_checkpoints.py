"""Tests of the checkpoint stores: memory() and sqlite(path), against real SQLite files."""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flowstream.checkpoints.base import SHARD_END, CheckpointStore
from flowstream.checkpoints.memory import MemoryCheckpoints, memory
from flowstream.checkpoints.sqlite import SqliteCheckpoints, sqlite
from flowstream.checkpoints.sqlite import _save as save_rows
from flowstream.errors import CheckpointError

SHARD_A = "shardId-00000001700000000000-aaaaaaaa"
SHARD_B = "shardId-00000001700000000000-bbbbbbbb"
STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/Users/stream/2024-01-01T00:00:00.000"
OTHER_STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/Users/stream/2024-02-01T00:00:00.000"

# Real DynamoDB sequence numbers are 21 to 40 digits long.
SEQ_1 = "100000000000000000001"
SEQ_2 = "100000000000000000002"
SEQ_3 = "100000000000000000003"
LONGEST_21 = "999999999999999999999"
SHORTEST_22 = "1000000000000000000000"
SEQ_40 = "1" + "0" * 39

StoreFactory = Callable[[Path], CheckpointStore]

FACTORIES: dict[str, StoreFactory] = {
    "memory": lambda tmp_path: memory(),
    "sqlite": lambda tmp_path: sqlite(tmp_path / "state.db"),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    factory: StoreFactory = FACTORIES[request.param]
    return factory(tmp_path)


async def save(
    store: CheckpointStore, positions: dict[str, str], *, pipeline: str = "p", stream: str = STREAM
) -> None:
    async with store.open(pipeline, stream) as session:
        await session.save(positions)


async def load(
    store: CheckpointStore, *, pipeline: str = "p", stream: str = STREAM
) -> dict[str, str]:
    async with store.open(pipeline, stream) as session:
        return await session.load()


class TestLoad:
    async def test_empty_store_loads_nothing(self, store: CheckpointStore) -> None:
        assert await load(store) == {}

    async def test_unknown_pipeline_loads_nothing(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_1})
        assert await load(store, pipeline="other") == {}


class TestSave:
    async def test_save_then_load_in_one_session(self, store: CheckpointStore) -> None:
        async with store.open("p", STREAM) as session:
            await session.save({SHARD_A: SEQ_1, SHARD_B: SHARD_END})
            assert await session.load() == {SHARD_A: SEQ_1, SHARD_B: SHARD_END}

    async def test_next_session_resumes(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_1})
        await save(store, {SHARD_B: SEQ_2})
        assert await load(store) == {SHARD_A: SEQ_1, SHARD_B: SEQ_2}

    async def test_later_position_replaces_earlier(self, store: CheckpointStore) -> None:
        async with store.open("p", STREAM) as session:
            await session.save({SHARD_A: SEQ_1})
            await session.save({SHARD_A: SEQ_3})
            assert await session.load() == {SHARD_A: SEQ_3}

    async def test_empty_save_changes_nothing(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_1})
        await save(store, {})
        assert await load(store) == {SHARD_A: SEQ_1}

    async def test_pipelines_do_not_see_each_other(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_1}, pipeline="user-cache")
        await save(store, {SHARD_A: SEQ_3}, pipeline="audit-log")
        assert await load(store, pipeline="user-cache") == {SHARD_A: SEQ_1}
        assert await load(store, pipeline="audit-log") == {SHARD_A: SEQ_3}

    async def test_streams_do_not_see_each_other(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_1}, stream=STREAM)
        await save(store, {SHARD_A: SEQ_3}, stream=OTHER_STREAM)
        assert await load(store, stream=STREAM) == {SHARD_A: SEQ_1}
        assert await load(store, stream=OTHER_STREAM) == {SHARD_A: SEQ_3}


class TestNeverBackwards:
    @pytest.mark.parametrize(
        ("stored", "new", "expected"),
        [
            pytest.param(SEQ_2, SEQ_1, SEQ_2, id="lower-is-ignored"),
            pytest.param(SEQ_2, SEQ_2, SEQ_2, id="equal-is-ignored"),
            pytest.param(SEQ_2, SEQ_3, SEQ_3, id="higher-is-saved"),
            pytest.param(SHORTEST_22, LONGEST_21, SHORTEST_22, id="shorter-is-lower"),
            pytest.param(LONGEST_21, SHORTEST_22, SHORTEST_22, id="longer-is-higher"),
            pytest.param(SEQ_40, LONGEST_21, SEQ_40, id="40-digits-over-21"),
            pytest.param(SEQ_1, SHARD_END, SHARD_END, id="shard-end-beats-sequence"),
            pytest.param(SEQ_40, SHARD_END, SHARD_END, id="shard-end-beats-40-digits"),
            pytest.param(SHARD_END, SEQ_40, SHARD_END, id="shard-end-is-final"),
            pytest.param(SHARD_END, SHARD_END, SHARD_END, id="shard-end-again"),
        ],
    )
    async def test_save_over_stored(
        self, store: CheckpointStore, stored: str, new: str, expected: str
    ) -> None:
        await save(store, {SHARD_A: stored})
        await save(store, {SHARD_A: new})
        assert await load(store) == {SHARD_A: expected}

    async def test_one_save_moves_some_shards_and_not_others(self, store: CheckpointStore) -> None:
        await save(store, {SHARD_A: SEQ_2, SHARD_B: SEQ_2})
        await save(store, {SHARD_A: SEQ_1, SHARD_B: SEQ_3})
        assert await load(store) == {SHARD_A: SEQ_2, SHARD_B: SEQ_3}


class TestInvalidPositions:
    @pytest.mark.parametrize(
        "position",
        [
            pytest.param("", id="empty"),
            pytest.param("abc", id="letters"),
            pytest.param("0100000000000000000001", id="leading-zero"),
            pytest.param("-100000000000000000001", id="negative"),
            pytest.param("1e21", id="exponent"),
            pytest.param("\u0661\u0662\u0663", id="non-ascii-digits"),
            pytest.param("shard_end", id="shard-end-lowercase"),
        ],
    )
    async def test_rejected_and_nothing_saved(self, store: CheckpointStore, position: str) -> None:
        async with store.open("p", STREAM) as session:
            with pytest.raises(CheckpointError, match=r"is not a position.*SHARD_END") as info:
                await session.save({SHARD_A: SEQ_1, SHARD_B: position})
            assert SHARD_B in str(info.value)
            assert await session.load() == {}


class TestSession:
    async def test_closed_session_refuses_save(self, store: CheckpointStore) -> None:
        async with store.open("p", STREAM) as session:
            pass
        with pytest.raises(CheckpointError, match="session is closed"):
            await session.save({SHARD_A: SEQ_1})
        with pytest.raises(CheckpointError, match="session is closed"):
            await session.load()

    async def test_session_closes_when_cancelled(self, store: CheckpointStore) -> None:
        with anyio.CancelScope() as scope:
            async with store.open("p", STREAM) as session:
                await session.save({SHARD_A: SEQ_1})
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        with pytest.raises(CheckpointError, match="session is closed"):
            await session.save({SHARD_A: SEQ_2})
        assert await load(store) == {SHARD_A: SEQ_1}

    async def test_two_pipelines_open_at_once_keep_their_own(self, store: CheckpointStore) -> None:
        # (two sessions of one pipeline at once: refused by the durable stores,
        # tests/test_checkpoint_claims.py)
        async with store.open("p", STREAM) as first, store.open("q", STREAM) as second:
            await first.save({SHARD_A: SEQ_2})
            await second.save({SHARD_A: SEQ_1, SHARD_B: SEQ_1})
            assert await first.load() == {SHARD_A: SEQ_2}
            assert await second.load() == {SHARD_A: SEQ_1, SHARD_B: SEQ_1}


class TestMemory:
    async def test_positions_accessor(self) -> None:
        store = memory()
        assert store.positions("p", STREAM) == {}
        await save(store, {SHARD_A: SEQ_1})
        positions = store.positions("p", STREAM)
        assert positions == {SHARD_A: SEQ_1}
        positions[SHARD_A] = SEQ_3  # a copy: changing it changes nothing in the store
        assert await load(store) == {SHARD_A: SEQ_1}

    def test_factory_and_describe(self) -> None:
        store = memory()
        assert isinstance(store, MemoryCheckpoints)
        assert store.flush_interval == 0.0
        assert store.describe() == "memory()"

    async def test_separate_stores_are_separate(self) -> None:
        first = memory()
        await save(first, {SHARD_A: SEQ_1})
        assert await load(memory()) == {}


KILL_AFTER_SAVE = """
import os, signal, sys
import anyio
from flowstream.checkpoints.sqlite import sqlite

async def main() -> None:
    store = sqlite(sys.argv[1])
    async with store.open("p", sys.argv[2]) as session:
        await session.save({sys.argv[3]: sys.argv[4]})
        # Die before the session closes: no WAL checkpoint, no clean shutdown.
        os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


class TestSqlite:
    def test_factory_and_describe(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        store = sqlite("state.db")
        assert isinstance(store, SqliteCheckpoints)
        assert store.flush_interval == 1.0
        assert store.describe() == "sqlite(state.db)"
        assert sqlite(tmp_path / "x.db", flush_interval=0.25).flush_interval == 0.25

    @pytest.mark.parametrize("name", ["flush_interval", "timeout"])
    @pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
    def test_bad_intervals(self, tmp_path: Path, name: str, value: float) -> None:
        options: dict[str, Any] = {name: value}
        with pytest.raises(CheckpointError, match=rf"{name}=.* is not a number of seconds"):
            sqlite(tmp_path / "state.db", **options)

    async def test_relative_path_is_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        await save(sqlite("state.db"), {SHARD_A: SEQ_1})
        assert (tmp_path / "state.db").is_file()

    async def test_new_store_object_resumes(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        await save(sqlite(path), {SHARD_A: SEQ_2, SHARD_B: SHARD_END})
        assert await load(sqlite(str(path))) == {SHARD_A: SEQ_2, SHARD_B: SHARD_END}

    async def test_rows_carry_updated_at(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        await save(sqlite(path), {SHARD_A: SEQ_1}, pipeline="user-cache")
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT pipeline, stream, shard, position, updated_at FROM flowstream_checkpoints"
            ).fetchall()
        conn.close()
        [(pipeline, stream, shard, position, updated_at)] = rows
        assert (pipeline, stream, shard, position) == ("user-cache", STREAM, SHARD_A, SEQ_1)
        assert updated_at.endswith("Z")
        assert updated_at[:2] == "20"

    async def test_database_refuses_backwards_from_another_connection(self, tmp_path: Path) -> None:
        # The rule lives in the SQL, so a writer that bypasses the store (or another
        # process with a stale view) cannot move a position backwards either.
        path = tmp_path / "state.db"
        await save(sqlite(path), {SHARD_A: SEQ_2})
        async with sqlite(path).open("p", STREAM) as first:
            await first.save({SHARD_A: SHARD_END})
            other = sqlite3.connect(path, isolation_level=None)
            try:
                save_rows(other, [("p", STREAM, SHARD_A, SEQ_3)])
            finally:
                other.close()
            assert await first.load() == {SHARD_A: SHARD_END}

    async def test_concurrent_writers_end_at_the_highest(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        numbers = [str(10**20 + n) for n in range(60)]
        random.Random(7).shuffle(numbers)

        await save(sqlite(path), {})  # creates the database

        def write(positions: list[str]) -> None:
            # a connection of its own each, as two processes would have
            conn = sqlite3.connect(path, isolation_level=None, timeout=10)
            try:
                for position in positions:
                    rows = [("p", STREAM, shard, position) for shard in (SHARD_A, SHARD_B)]
                    save_rows(conn, rows)
            finally:
                conn.close()

        async def writer(positions: list[str]) -> None:
            await anyio.to_thread.run_sync(write, positions)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, numbers[::2])
            tg.start_soon(writer, numbers[1::2])
        highest = str(10**20 + 59)
        assert await load(sqlite(path)) == {SHARD_A: highest, SHARD_B: highest}

    async def test_save_survives_sigkill_of_another_process(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        await save(sqlite(path), {SHARD_A: SEQ_1})
        result = await anyio.run_process(
            [sys.executable, "-c", KILL_AFTER_SAVE, str(path), STREAM, SHARD_A, SEQ_40],
            check=False,
        )
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()
        # The killed process never closed its connection: the save is in the WAL file.
        assert await anyio.Path(f"{path}-wal").exists()
        assert await load(sqlite(path)) == {SHARD_A: SEQ_40}

    async def test_load_goes_on_while_another_connection_writes(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        await save(sqlite(path), {SHARD_A: SEQ_1})
        async with sqlite(path, timeout=0).open("p", STREAM) as session:
            writer = sqlite3.connect(path, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                assert await session.load() == {SHARD_A: SEQ_1}
            finally:
                writer.close()

    async def test_save_fails_when_locked_past_timeout(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        store = sqlite(path, timeout=0)
        async with store.open("p", STREAM) as session:
            writer = sqlite3.connect(path, isolation_level=None)
            try:
                writer.execute("BEGIN IMMEDIATE")
                with pytest.raises(CheckpointError) as info:
                    await session.save({SHARD_A: SEQ_1})
                message = str(info.value)
                assert str(path) in message
                assert "locked" in message
                assert "timeout=" in message
                writer.execute("ROLLBACK")
            finally:
                writer.close()
            # The failed save left no transaction open: the next one goes through.
            await session.save({SHARD_A: SEQ_2})
            assert await session.load() == {SHARD_A: SEQ_2}


class TestSqliteOpenErrors:
    async def test_missing_directory(self, tmp_path: Path) -> None:
        path = tmp_path / "missing" / "state.db"
        with pytest.raises(CheckpointError) as info:
            await load(sqlite(path))
        message = str(info.value)
        assert str(path) in message
        assert "does not exist" in message
        assert f"mkdir -p {path.parent}" in message
        assert not path.parent.exists()  # creating directories is not the store's job

    async def test_parent_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "notes.txt").write_text("not a directory")
        path = tmp_path / "notes.txt" / "state.db"
        with pytest.raises(CheckpointError, match="is a file, not a directory") as info:
            await load(sqlite(path))
        assert str(path) in str(info.value)

    async def test_path_is_a_directory(self, tmp_path: Path) -> None:
        with pytest.raises(CheckpointError, match="is a directory; pass the path of a") as info:
            await load(sqlite(tmp_path))
        assert str(tmp_path) in str(info.value)

    async def test_file_is_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        path.write_bytes(b"these are not the checkpoints you are looking for" * 100)
        expected = "not a database; pass the path of a flowstream"
        with pytest.raises(CheckpointError, match=expected) as info:
            await load(sqlite(path))
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)

    async def test_memory_database_is_refused(self) -> None:
        with pytest.raises(CheckpointError, match=r"checkpoints\.memory\(\)"):
            await load(sqlite(":memory:"))

    def test_read_only_error_says_what_to_do(self, tmp_path: Path) -> None:
        # Tests may run as root, who writes to any file whatever its mode, so the
        # read-only case is checked through the translation of SQLite's own error.
        path = tmp_path / "state.db"
        error = sqlite(path)._error(
            "cannot save checkpoints",
            sqlite3.OperationalError("attempt to write a readonly database"),
        )
        assert str(path) in str(error)
        assert "make the file and its directory writable" in str(error)
