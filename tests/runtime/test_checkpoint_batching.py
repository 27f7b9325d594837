"""Checkpoint writes are batched by time and by count: `flush_records` bounds how much a
crash replays on a busy stream even with a long `flush_interval`."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import CheckpointError
from flowstream.testing import MemoryStream


def saved(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT shard, position FROM flowstream_checkpoints"))


async def test_a_write_goes_out_once_enough_records_are_done(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    stream = MemoryStream(page_size=10)
    shard = stream.add_shard()
    records = [stream.put(shard, "INSERT", {"pk": n}, {"pk": n}) for n in range(60)]
    seen_in_store: list[str | None] = []

    async def check(batch: list[fs.Record]) -> None:
        # At the fourth page, the first three (30 records >= flush_records=20) must be
        # in the file although the interval is an hour.
        if batch[0].sequence_number == records[30].sequence_number:
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: written_past(records[19]), timeout=10)
            seen_in_store.append(saved(db).get(shard))

    def written_past(record: fs.Record) -> bool:
        position = saved(db).get(shard)
        return position is not None and int(position) >= int(record.sequence_number)

    store = checkpoints.sqlite(db, flush_interval=3600, flush_records=20)
    pipeline = fs.Pipeline(stream, name="busy").to(sinks.callback(check))
    await pipeline.run(checkpoints=store, drain=True)
    (position,) = seen_in_store
    assert position is not None
    assert int(position) >= int(records[19].sequence_number)
    assert saved(db)[shard] == records[-1].sequence_number


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_flush_records_must_be_a_positive_whole_number(tmp_path: Path, bad: object) -> None:
    with pytest.raises(CheckpointError, match="flush_records="):
        checkpoints.sqlite(tmp_path / "x.db", flush_records=bad)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="flush_records="):
        checkpoints.dynamodb("table-name", flush_records=bad)  # type: ignore[arg-type]
