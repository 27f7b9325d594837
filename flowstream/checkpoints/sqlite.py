"""A durable checkpoint store in an SQLite file: one process (or a few) on one machine.

Each save is one committed transaction, so a position that `save()` returned survives a
crash of the process. The never-backwards rule is part of the SQL statement, so it holds
for every connection to the file, including other processes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar, final

import anyio
import anyio.to_thread

from flowstream.checkpoints.base import (
    SHARD_END,
    CheckpointSession,
    CheckpointStore,
    StoredCheckpoints,
    check_flush_records,
    check_position,
    check_seconds,
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

__all__ = ["SqliteCheckpoints", "sqlite"]

_T = TypeVar("_T")

_TABLE: Final = "flowstream_checkpoints"

_CREATE: Final = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    pipeline   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    shard      TEXT NOT NULL,
    position   TEXT NOT NULL,  -- a sequence number (decimal digits) or 'SHARD_END'
    updated_at TEXT NOT NULL,  -- UTC, ISO 8601
    PRIMARY KEY (pipeline, stream, shard)
) WITHOUT ROWID
"""

_LOAD: Final = f"SELECT shard, position FROM {_TABLE} WHERE pipeline = ? AND stream = ?"

# Which process runs a pipeline on this file now (checkpoints/owner.py).
_OWNERS: Final = "flowstream_owners"
_CREATE_OWNERS: Final = f"""
CREATE TABLE IF NOT EXISTS {_OWNERS} (
    pipeline  TEXT NOT NULL,
    stream    TEXT NOT NULL,
    owner     TEXT NOT NULL,
    host      TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    heartbeat REAL NOT NULL,  -- seconds since the epoch
    PRIMARY KEY (pipeline, stream)
) WITHOUT ROWID
"""

# Sequence numbers have no leading zeros, so a longer one is larger and two of the same
# length compare as text; SHARD_END is past every sequence number and final. Keeping
# this in the WHERE clause (rather than in Python) means a concurrent writer in another
# process cannot move a position backwards either.
_SAVE: Final = f"""
INSERT INTO {_TABLE} (pipeline, stream, shard, position, updated_at)
VALUES (?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
ON CONFLICT (pipeline, stream, shard) DO UPDATE
SET position = excluded.position, updated_at = excluded.updated_at
WHERE {_TABLE}.position <> '{SHARD_END}' AND (
    excluded.position = '{SHARD_END}'
    OR length(excluded.position) > length({_TABLE}.position)
    OR (
        length(excluded.position) = length({_TABLE}.position)
        AND excluded.position > {_TABLE}.position
    )
)
"""


@final
class SqliteCheckpoints(CheckpointStore):
    """Checkpoints in the SQLite file at `path`; build it with `checkpoints.sqlite(path)`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float,
        timeout: float,
        flush_records: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.flush_records = flush_records
        self.timeout = timeout
        self._name = os.fspath(path)

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        # One thread at a time uses the session's connection: sqlite3 connections are not
        # safe to share between threads at once, and the limiter serialises the calls.
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(self._connect, limiter=limiter)
        session = _SqliteSession(self, conn, limiter, pipeline, stream_id)
        try:
            await session.claim()
            yield session
        finally:
            # Close even when the run is being cancelled: a half-open connection would
            # keep the file's WAL and locks around until the process exits.
            with anyio.CancelScope(shield=True):
                await session.aclose()

    def describe(self) -> str:
        return f"sqlite({self._name})"

    async def inspect(self, pipeline: str, stream_id: str) -> StoredCheckpoints:
        if not self.path.exists():  # nothing saved; reading must not create the file
            return StoredCheckpoints()
        return await anyio.to_thread.run_sync(self._inspect, pipeline, stream_id)

    async def overwrite(
        self, pipeline: str, stream_id: str, positions: Mapping[str, str | None]
    ) -> None:
        for shard_id, position in positions.items():
            if position is not None:
                check_position(self.describe(), shard_id, position)
        await anyio.to_thread.run_sync(self._overwrite, pipeline, stream_id, dict(positions))

    def _inspect(self, pipeline: str, stream_id: str) -> StoredCheckpoints:
        conn = self._connect()
        try:
            rows = conn.execute(_LOAD, (pipeline, stream_id)).fetchall()
            claim = conn.execute(
                f"SELECT owner, host, pid, heartbeat FROM {_OWNERS} "
                "WHERE pipeline = ? AND stream = ?",
                (pipeline, stream_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read checkpoints", exc) from exc
        finally:
            conn.close()
        return StoredCheckpoints(dict(rows), None if claim is None else Claim(*claim))

    def _overwrite(self, pipeline: str, stream_id: str, positions: dict[str, str | None]) -> None:
        conn = self._connect()
        try:
            # One transaction under the write lock: a run that claims the pipeline does
            # so before it (and is refused here) or after it (and loads what is written).
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT owner, host, pid, heartbeat FROM {_OWNERS} "
                "WHERE pipeline = ? AND stream = ?",
                (pipeline, stream_id),
            ).fetchone()
            existing = None if row is None else Claim(*row)
            now = time.time()
            if existing is not None and not may_take(existing, Claim.mine(), now):
                conn.execute("ROLLBACK")
                raise busy_error(self.describe(), pipeline, existing, now)
            for shard_id, position in positions.items():
                if position is None:
                    conn.execute(
                        f"DELETE FROM {_TABLE} WHERE pipeline = ? AND stream = ? AND shard = ?",
                        (pipeline, stream_id, shard_id),
                    )
                else:
                    conn.execute(
                        f"INSERT OR REPLACE INTO {_TABLE} VALUES "
                        "(?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                        (pipeline, stream_id, shard_id, position),
                    )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error("cannot change checkpoints", exc) from exc
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if self._name == ":memory:" or not self._name:
            raise CheckpointError(
                f"sqlite({self._name!r}): checkpoints in an in-memory SQLite database do not "
                "survive the connection; pass a file path, or use checkpoints.memory()"
            )
        if self.path.is_dir():
            raise CheckpointError(
                f"sqlite({self._name}): {self._name} is a directory; pass the path of a "
                f"database file, e.g. {os.path.join(self._name, 'checkpoints.db')}"
            )
        parent = self.path.parent
        if parent.exists() and not parent.is_dir():
            raise CheckpointError(
                f"sqlite({self._name}): cannot create the checkpoint database because "
                f"{parent} is a file, not a directory; pass a path in a directory"
            )
        if not parent.exists():
            raise CheckpointError(
                f"sqlite({self._name}): cannot create the checkpoint database because its "
                f"directory {parent} does not exist; create the directory first "
                f"(e.g. `mkdir -p {parent}`) or pass a path in an existing directory"
            )
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; save() opens its own so
            # that all positions of one save commit together.
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            # WAL lets loads and other readers go on while a save writes. synchronous=FULL
            # fsyncs the WAL at every commit, so a returned save also survives power loss
            # and OS crashes, not just a killed process (NORMAL would be enough for that).
            # Saves are batched (flush_interval), so the fsync per save costs little, and
            # every checkpoint lost to a crash is records replayed.
            mode = self._journal_mode_wal(conn)
            if str(mode).lower() != "wal":
                raise CheckpointError(
                    f"sqlite({self._name}): the database cannot use WAL journal mode "
                    f"(it reports {mode!r}); put it on a local file system"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_CREATE)
            conn.execute(_CREATE_OWNERS)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot open the checkpoint database", exc) from exc
            raise
        return conn

    def _journal_mode_wal(self, conn: sqlite3.Connection) -> object:
        """Switch a new database to WAL. Two connections making the same new file at once
        can get SQLITE_BUSY here without the busy timeout being applied, so wait for the
        other one within the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _error(self, doing: str, exc: sqlite3.Error) -> CheckpointError:
        """Translate an sqlite3 error into a CheckpointError that says what to do."""
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            fix = (
                f"another connection held a lock on the file for more than {self.timeout}s; "
                "stop the other writer, or pass a larger timeout= to checkpoints.sqlite()"
            )
        elif "readonly" in lowered or "read-only" in lowered:
            fix = "make the file and its directory writable, or choose another path"
        elif "not a database" in lowered:
            fix = (
                "pass the path of a flowstream checkpoint database, or of a file that does "
                "not exist yet"
            )
        elif "unable to open" in lowered:
            fix = "check that the file and its directory exist and are writable"
        elif "disk" in lowered or "full" in lowered:
            fix = "free space on the file system or choose another path"
        else:
            fix = "check the file (sqlite3 CLI: PRAGMA integrity_check) or choose another path"
        return CheckpointError(f"sqlite({self._name}): {doing}: {text}; {fix}")


@final
class _SqliteSession(CheckpointSession):
    def __init__(
        self,
        store: SqliteCheckpoints,
        conn: sqlite3.Connection,
        limiter: anyio.CapacityLimiter,
        pipeline: str,
        stream_id: str,
    ) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = conn
        self._limiter = limiter
        self._pipeline = pipeline
        self._stream_id = stream_id
        self._claim = Claim.mine()
        self._claimed = False
        self.heartbeat_interval = HEARTBEAT

    async def claim(self) -> None:
        """Claim the pipeline's checkpoints for this run, or refuse: another live
        process runs it (checkpoints/owner.py)."""
        held = await self._run(self._take_claim, "cannot claim the checkpoints")
        if held is not None:
            raise claim_error(self._store.describe(), self._pipeline, held, time.time())
        self._claimed = True

    async def heartbeat(self) -> None:
        renewed = await self._run(self._renew_claim, "cannot renew the claim")
        if not renewed:
            self._claimed = False
            raise lost_error(self._store.describe(), self._pipeline)

    def _take_claim(self, conn: sqlite3.Connection) -> Claim | None:
        me = self._claim
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                f"SELECT owner, host, pid, heartbeat FROM {_OWNERS} "
                "WHERE pipeline = ? AND stream = ?",
                (self._pipeline, self._stream_id),
            ).fetchone()
            existing = None if row is None else Claim(*row)
            now = time.time()
            if not may_take(existing, me, now):
                conn.execute("ROLLBACK")
                return existing
            conn.execute(
                f"INSERT OR REPLACE INTO {_OWNERS} VALUES (?, ?, ?, ?, ?, ?)",
                (self._pipeline, self._stream_id, me.owner, me.host, me.pid, now),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return None

    def _renew_claim(self, conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            f"UPDATE {_OWNERS} SET heartbeat = ? WHERE pipeline = ? AND stream = ? AND owner = ?",
            (time.time(), self._pipeline, self._stream_id, self._claim.owner),
        )
        return cursor.rowcount == 1

    def _release_claim(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"DELETE FROM {_OWNERS} WHERE pipeline = ? AND stream = ? AND owner = ?",
            (self._pipeline, self._stream_id, self._claim.owner),
        )

    async def load(self) -> dict[str, str]:
        return await self._run(self._load, "cannot load checkpoints")

    async def save(self, positions: Mapping[str, str]) -> None:
        rows = []
        for shard_id, position in positions.items():
            check_position(self._store.describe(), shard_id, position)
            rows.append((self._pipeline, self._stream_id, shard_id, position))
        if rows:
            await self._run(lambda conn: _save(conn, rows), "cannot save checkpoints")

    async def aclose(self) -> None:
        if self._claimed:
            self._claimed = False
            with contextlib.suppress(CheckpointError):  # it goes stale by itself
                await self._run(self._release_claim, "cannot release the claim")
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    def _load(self, conn: sqlite3.Connection) -> dict[str, str]:
        cursor = conn.execute(_LOAD, (self._pipeline, self._stream_id))
        return {shard: position for shard, position in cursor.fetchall()}

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], doing: str) -> _T:
        conn = self._conn
        if conn is None:
            raise CheckpointError(
                f"{self._store.describe()}: the checkpoint session is closed; load and save "
                "only inside `async with store.open(pipeline, stream_id) as session:`"
            )
        try:
            return await anyio.to_thread.run_sync(fn, conn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise self._store._error(doing, exc) from exc


def _save(conn: sqlite3.Connection, rows: list[tuple[str, str, str, str]]) -> None:
    # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout),
    # and one transaction means one commit (one fsync) for the whole batch.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_SAVE, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def sqlite(
    path: str | os.PathLike[str],
    *,
    flush_interval: float = 1.0,
    flush_records: int | None = None,
    timeout: float = 5.0,
) -> SqliteCheckpoints:
    """A checkpoint store in the SQLite database file at `path` (created if missing; its
    directory must exist).

    `flush_interval` is the number of seconds between batched writes while running;
    `flush_records` also writes once that many records are done since the last write;
    `timeout` is how long a save waits for another connection's lock before it fails.
    """
    name = f"sqlite({os.fspath(path)})"
    check_flush_records(name, flush_records)
    check_seconds(name, "flush_interval", flush_interval, zero=True)
    check_seconds(name, "timeout", timeout, zero=True)
    return SqliteCheckpoints(
        path, flush_interval=flush_interval, timeout=timeout, flush_records=flush_records
    )
