"""Crash harness: run a real pipeline in a child process, SIGKILL it at random moments,
restart it, and prove from its delivery log that nothing was lost or reordered and that
each crash replayed no more than was in flight.

The test process holds a `MemoryStream` (pre-filled, one shard split halfway) served by
a `LocalStreamsServer`, which outlives the children. Each cycle starts `child.py` (the
pipeline: `sources.dynamodb()` over HTTP -> a sink that appends one line per element to
the cycle's log with `os.write` -> `checkpoints.<store>`), waits until it has delivered
something (and a random number of new records), waits a random extra moment of up to one
checkpoint flush interval (or `kill_spread`), and kills it with SIGKILL. The last cycle
runs until the pipeline drains and exits. Children are started ahead of their cycle
(`spares`) and wait for a "go" line on stdin, so the ~1 s of imports overlaps the
previous cycle; a child touches neither the stream nor the store before "go".

The in-flight window (what a crash may replay), from runtime/runner.py and checkpointer.py:
a shard runner delivers one page at a time and notes its frontier in memory right after
the sink acknowledged it (`Checkpointer.advance`); every `flush_interval` the checkpointer
takes a snapshot of those frontiers and saves it. After SIGKILL the next run resumes from
the last snapshot whose save completed, so it replays exactly the records delivered after
that snapshot. Those came from
- at most 2 pages read before the snapshot but not yet delivered (the page in the
  runner's one-page buffer, and the page its producer holds or is reading), and
- pages read after it: the reader calls GetRecords at most `max_polls_per_second` (R)
  times a second, so at most floor(R * T) + 1 calls start in the T seconds between the
  snapshot and the kill.
Hence, per shard: replayed <= page_limit * (floor(R * T) + 3), where T runs from the last
durable snapshot (or the load, when no save of the cycle completed) to the kill: the
pages of one checkpoint flush period, plus the two read ahead, plus one for a call at
each end of T. T is measured (the child logs each snapshot's time; saves take time, and
a kill during a save leaves the snapshot before it as the durable one), so the window is
computed per kill; with T = flush_interval it is the nominal page_limit *
(floor(R * flush_interval) + 3). The sink in child.py acknowledges without awaiting, so
no page is half-delivered at a snapshot; a sink that awaits would add one page.

In general (`CrashConfig.pages_ahead`), the pages read before the snapshot and not yet
settled (checkpointed in memory) at it are the producer's page and the channel's, 2, plus
the works the consumer holds, each of at most P pages:
- held works: none with an acknowledging sink and `per_shard=1` (above); 1 when the sink
  awaits (`sink_latency`) or a batching window gathers; with `per_shard>1`, up to
  `_PAGES_IN_FLIGHT` (4, runtime/runner.py) pages delivered at once, settled strictly in
  order, plus the one the consumer holds while it waits for room: 5;
- P: 1 page; with a batching window of w seconds, the work it starts from, the page the
  producer holds then, and floor(R * w) + 1 reads started within the window:
  floor(R * w) + 3 pages.
The snapshot's frontier is the end of the last settled page (pages settle in order, also
with per-key concurrency), so every record a kill leaves to replay is in one of those
pages or in one read after the snapshot: replayed <= page_limit * (floor(R * T) + 1 +
pages_ahead). That is the "in flight" bound of per-key concurrency: `per_shard` bounds the
sink calls at once, but the records delivered and not yet durable are bounded by pages
(a fast key's later pages are delivered while a slow key holds the frontier). The
duplicates of a run, per shard, are bounded by the sum of the windows of the kills whose
deliveries reach past the position it loaded (usually just the kill before it).

With `per_shard>1` records of different keys may be delivered in any order, so order is
checked per key (`keys`: records carry `keys` distinct partition keys, round-robin, not
one key each): within a run each key's records come in order with no gap from the loaded
position on, and each key's first deliveries are its records in order. A save must not
pass a record that is not delivered, counting every run (the contiguous delivered prefix)
and counting this run alone from its loaded position (a run must not skip a record an
earlier run happened to deliver).

Every check is made from the logs alone (see `check`), so a failure names the seed,
the cycle, the shard and the sequence numbers.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

import anyio
from anyio.abc import Process
from support import wait_until

from flowstream.checkpoints.base import SHARD_END, is_ahead
from flowstream.testing import LocalStreamsServer, MemoryStream

__all__ = [
    "CrashConfig",
    "CrashReport",
    "CycleLog",
    "CycleStats",
    "HarnessError",
    "StoreFactory",
    "StoreSpec",
    "StreamLayout",
    "build_stream",
    "check",
    "dynamodb_store",
    "format_report",
    "parse_log",
    "run_crash_test",
    "sqlite_store",
]

CHILD: Final = Path(__file__).with_name("child.py")

#: Fake AWS settings for the children: they sign requests as a real client does.
CHILD_ENV: Final = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: Slack on the snapshot time: the child logs it just after the runtime took it.
_CLOCK_SLACK: Final = 0.002

#: Pages of a shard the runtime delivers at once with per-key concurrency
#: (`_PAGES_IN_FLIGHT` in runtime/runner.py; the in-flight window grows with it).
PAGES_IN_FLIGHT: Final = 4


class HarnessError(RuntimeError):
    """The harness could not do what it was asked (a child did not start, the records
    ran out before the last kill); not a finding about the pipeline."""


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSpec:
    """The checkpoint store a child builds: `kind` is a key of `child.STORES`, `options`
    (JSON) its arguments."""

    kind: str
    options: Mapping[str, Any]

    def describe(self) -> str:
        shown = {k: v for k, v in self.options.items() if k != "flush_interval"}
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in shown.items())})"


#: Builds the store of one run from the run's directory and the flush interval. The
#: hook for another store: a factory here and an entry in `child.STORES`.
StoreFactory = Callable[[Path, float], StoreSpec]


def sqlite_store(workdir: Path, flush_interval: float) -> StoreSpec:
    """`checkpoints.sqlite()` in a file of the run's directory."""
    return StoreSpec(
        "sqlite", {"path": str(workdir / "checkpoints.db"), "flush_interval": flush_interval}
    )


def dynamodb_store(endpoint_url: str, table: str) -> StoreFactory:
    """`checkpoints.dynamodb(table, endpoint_url=...)` (created on first use)."""

    def factory(workdir: Path, flush_interval: float) -> StoreSpec:
        return StoreSpec(
            "dynamodb",
            {
                "table": table,
                "endpoint_url": endpoint_url,
                "region": "us-east-1",
                "flush_interval": flush_interval,
            },
        )

    return factory


@dataclass(frozen=True)
class CrashConfig:
    """One crash run. `kills` cycles end in SIGKILL, one more runs to the end."""

    records: int = 10_000
    shards: int = 8
    #: Split one shard halfway: its children are read only after its end is saved.
    split: bool = True
    kills: int = 30
    seed: int = 0
    page_limit: int = 50
    #: The reader's rate limit; it is what bounds the in-flight window (see above).
    polls_per_second: float = 20.0
    flush_interval: float = 0.05
    #: Share of the records left for the last (draining) run, so the kills never run
    #: out of records to interrupt.
    reserve: float = 0.15
    #: Children started ahead of their cycle.
    spares: int = 2
    #: Longest wait for a cycle to deliver what it is waited for, or to drain.
    cycle_timeout: float = 60.0
    #: Distinct partition keys, given round-robin (0: each record its own key).
    keys: int = 0
    #: `Pipeline.concurrency(per_shard)` (1: off); order is then checked per key.
    per_shard: int = 1
    #: Seconds each sink call awaits before it acknowledges (0: at once).
    sink_latency: float = 0.0
    #: `Pipeline.batching(max_window)` in seconds (0: off).
    batching_window: float = 0.0
    #: The kill comes up to this many seconds after what the cycle waits for (None: one
    #: checkpoint flush interval); a batching window's length lands kills while it gathers.
    kill_spread: float | None = None

    @property
    def pages_ahead(self) -> int:
        """Pages read before a snapshot that may not be settled at it (module docstring)."""
        if self.per_shard > 1:
            held = PAGES_IN_FLIGHT + 1
        elif self.sink_latency > 0 or self.batching_window > 0:
            held = 1
        else:
            held = 0
        per_work = 1
        if self.batching_window > 0:
            per_work = math.floor(self.polls_per_second * self.batching_window) + 3
        return held * per_work + 2

    def window(self, since_snapshot: float) -> int:
        """The most records of a shard a kill `since_snapshot` seconds after the last
        durable snapshot may leave to replay."""
        pages = math.floor(self.polls_per_second * (since_snapshot + _CLOCK_SLACK))
        return self.page_limit * (pages + 1 + self.pages_ahead)

    def describe_pipeline(self) -> str:
        text = (
            f"page_limit={self.page_limit}, max_polls_per_second={self.polls_per_second:g}, "
            f"flush_interval={self.flush_interval:g}s"
        )
        if self.per_shard > 1:
            text += f", concurrency({self.per_shard}) over {self.keys or 'unique'} keys"
        if self.batching_window > 0:
            text += f", batching({self.batching_window:g}s)"
        if self.sink_latency > 0:
            text += f", sink latency {self.sink_latency * 1000:g}ms"
        return text


# -- the stream -------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamLayout:
    """What the stream holds: each shard's sequence numbers in order, and parents."""

    records: Mapping[str, Sequence[str]]
    parents: Mapping[str, str]
    closed: frozenset[str]
    #: Each record's partition key, per shard, in record order (missing: the sequence
    #: number, each record its own key).
    keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    index: Mapping[str, Mapping[str, int]] = field(init=False)
    #: shard -> key -> the indices of its records, in order
    by_key: Mapping[str, Mapping[str, Sequence[int]]] = field(init=False)

    def __post_init__(self) -> None:
        index = {s: {seq: i for i, seq in enumerate(seqs)} for s, seqs in self.records.items()}
        object.__setattr__(self, "index", index)
        by_key: dict[str, dict[str, list[int]]] = {}
        for shard in self.records:
            groups: dict[str, list[int]] = {}
            for i in range(len(self.records[shard])):
                groups.setdefault(self.key_of(shard, i), []).append(i)
            by_key[shard] = groups
        object.__setattr__(self, "by_key", by_key)

    def key_of(self, shard: str, index: int) -> str:
        keys = self.keys.get(shard)
        return keys[index] if keys is not None else self.records[shard][index]

    @property
    def total(self) -> int:
        return sum(len(seqs) for seqs in self.records.values())


def build_stream(config: CrashConfig) -> tuple[MemoryStream, StreamLayout]:
    """`config.records` INSERTs round-robin over `config.shards` shards; with `split`,
    the last shard splits after the first half and its children take its share of the
    second half."""
    stream = MemoryStream(table="crash")
    shards = [stream.add_shard() for _ in range(config.shards)]
    half = config.records // 2 if config.split else config.records
    n = 0
    for n in range(half):
        _put(stream, shards[n % len(shards)], n, config.keys)
    parents: dict[str, str] = {}
    if config.split:
        parent = shards[-1]
        children = stream.split(parent)
        parents = dict.fromkeys(children, parent)
        shards = [*shards[:-1], *children]
        for k, n in enumerate(range(half, config.records)):
            _put(stream, shards[k % len(shards)], n, config.keys)
    layout = StreamLayout(
        {s: [r.sequence_number for r in stream.records(s)] for s in stream.shard_ids},
        parents,
        frozenset(parents.values()),
        {s: [str(r.keys["pk"]) for r in stream.records(s)] for s in stream.shard_ids},
    )
    assert layout.total == config.records
    return stream, layout


def _put(stream: MemoryStream, shard: str, n: int, keys: int) -> None:
    pk = f"item#{n % keys if keys else n:06d}"
    stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk, "n": n})


# -- the logs ---------------------------------------------------------------------------


@dataclass
class CycleLog:
    """One child's log, parsed, and how the child ended."""

    cycle: int
    killed: bool
    returncode: int | None = None
    go_time: float = 0.0
    kill_time: float | None = None
    exit_time: float = 0.0
    started: float | None = None  # R
    loaded: dict[str, str] | None = None  # L
    loaded_time: float | None = None
    #: ("D", shard, sequence, batch) | ("S", t, positions) | ("C", t), in log order
    events: list[tuple[Any, ...]] = field(default_factory=list)
    end: tuple[str, int] | None = None  # E: stop reason, delivered
    torn: str = ""  # an incomplete last line (a write cut short by SIGKILL)
    errors: list[str] = field(default_factory=list)
    output: str = ""  # the end of the child's stderr, when it failed


def _parse_positions(text: str) -> dict[str, str]:
    if text == "-":
        return {}
    return dict(item.split("=", 1) for item in text.split(","))


def parse_log(cycle: CycleLog, data: bytes) -> None:
    """Fill `cycle` from the bytes of its log."""
    text = data.decode()
    lines = text.split("\n")
    cycle.torn = lines.pop()  # "" when the log ends with a newline
    events = cycle.events
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        kind = parts[0]
        try:
            if int(parts[1]) != cycle.cycle:
                raise ValueError(f"cycle {parts[1]} in the log of cycle {cycle.cycle}")
            if kind == "D":
                events.append(("D", parts[3], parts[4], int(parts[2])))
            elif kind == "S":
                events.append(("S", float(parts[2]), _parse_positions(parts[3])))
            elif kind == "C":
                events.append(("C", float(parts[2])))
            elif kind == "L":
                cycle.loaded_time = float(parts[2])
                cycle.loaded = _parse_positions(parts[3])
            elif kind == "R":
                cycle.started = float(parts[2])
            elif kind == "E":
                cycle.end = (parts[3], int(parts[4]))
            else:
                raise ValueError(f"unknown line kind {kind!r}")
        except (IndexError, ValueError) as exc:
            cycle.errors.append(f"log line {number} {line!r}: {exc}")


class _Tail:
    """Follows a cycle's log while the child runs: counts deliveries, and deliveries of
    records no earlier cycle delivered."""

    def __init__(self, path: Path, known: set[tuple[str, str]]) -> None:
        self._path = path
        self._known = known
        self._offset = 0
        self._rest = b""
        self._seen: set[tuple[str, str]] = set()
        self.deliveries = 0
        self.new = 0

    def poll(self) -> None:
        try:
            with self._path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            if line.startswith(b"D "):
                _, _, _, shard, seq = line.decode().split(" ")
                self.deliveries += 1
                key = (shard, seq)
                if key not in self._known and key not in self._seen:
                    self._seen.add(key)
                    self.new += 1

    def reached(self, new: int) -> bool:
        """The cycle delivered something, and at least `new` records for the first time."""
        return self.deliveries >= 1 and self.new >= new


def _never() -> bool:
    return False


# -- the checks -------------------------------------------------------------------------


@dataclass
class CycleStats:
    """What one cycle did, as the checks saw it."""

    cycle: int
    killed: bool
    deliveries: int = 0
    new: int = 0
    duplicates: int = 0
    saves: int = 0
    #: Run time from "go" to the kill (or the exit).
    seconds: float = 0.0
    #: From "go" to the loaded checkpoints (source, store and sinks open).
    startup: float = 0.0
    #: Kill cycles: seconds from the last durable snapshot to the kill ...
    since_snapshot: float | None = None
    #: ... the per-shard window that allows ...
    window: int | None = None
    #: ... and the largest per-shard replay this kill caused (known after the next load).
    in_flight: int | None = None
    #: The kill came while a save was under way (it began and had not returned).
    in_save: bool = False
    #: Deliveries that came after a later record of their shard in the same run (per-key
    #: concurrency at work).
    reordered: int = 0
    #: Sink calls, and the most records one carried (a batching window merges pages).
    calls: int = 0
    largest_call: int = 0


@dataclass
class CrashReport:
    """The outcome of a crash run: per-cycle stats and every violation found."""

    config: CrashConfig
    store: str
    layout: StreamLayout
    store_kind: str = "sqlite"
    cycles: list[CycleStats] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lost: int = 0
    wall_seconds: float = 0.0

    @property
    def nominal_window(self) -> int:
        """page_limit * (pages per flush interval + 1 + pages ahead), per shard."""
        c = self.config
        pages = math.floor(c.polls_per_second * c.flush_interval)
        return c.page_limit * (pages + 1 + c.pages_ahead)

    @property
    def deliveries(self) -> int:
        return sum(c.deliveries for c in self.cycles)

    @property
    def duplicates(self) -> list[int]:
        """Duplicates in each cycle after the first."""
        return [c.duplicates for c in self.cycles[1:]]

    def failure_message(self, limit: int = 25) -> str:
        shown = self.violations[:limit]
        more = len(self.violations) - len(shown)
        return (
            f"crash run with {self.store}, seed={self.config.seed}: "
            f"{len(self.violations)} violation(s)\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nreproduce (the kill choices; timing varies): python benchmarks/crash_soak.py "
            f"--store {self.store_kind} --seed {self.config.seed} --cycles {self.config.kills} "
            f"--records {self.config.records} --shards {self.config.shards}\n\n"
            + format_report(self)
        )


def _after(layout: StreamLayout, shard: str, position: str | None) -> int | None:
    """The index of the first record after `position` (None: not a position of it)."""
    if position is None:
        return 0
    if position == SHARD_END:
        return len(layout.records[shard])
    index = layout.index[shard].get(position)
    return None if index is None else index + 1


def check(config: CrashConfig, layout: StreamLayout, logs: Sequence[CycleLog]) -> CrashReport:
    """Check the logs of a whole run against what the pipeline promises:
    - a position whose save returned is what the next run loads (or later), and a loaded
      position was asked to be saved;
    - each run delivers each shard's records in order with no gap, starting right after
      the loaded position; the first deliveries of every shard are its records in order;
    - a saved position never runs ahead of what the sink acknowledged, and SHARD_END only
      once the whole shard was delivered;
    - a child shard is delivered only after its parent's SHARD_END is durable;
    - what a kill makes the next run replay fits the in-flight window (module docstring),
      and duplicates in a run never exceed the window of the kill they come from;
    - the last run drains, saves the end of every shard, and every record was delivered.
    """
    checker = _Checker(config, layout)
    for log in logs:
        checker.cycle(log)
    return checker.finish(drained=bool(logs) and not logs[-1].killed)


@dataclass
class _Run:
    """What the checks track within one cycle."""

    log: CycleLog
    stats: CycleStats
    loaded: dict[str, str]
    #: the index each shard must deliver next
    next: dict[str, int]
    #: shards whose SHARD_END is durable
    ended: set[str]
    #: duplicates allowed per shard: the windows of the kills that left them
    allowed: dict[str, int]
    snapshot_time: float
    #: the index after the loaded position, per shard
    start: dict[str, int] = field(default_factory=dict)
    #: per-key order: (shard, key) -> the place in the key's records it must deliver next
    key_next: dict[tuple[str, str], int] = field(default_factory=dict)
    #: what this run delivered per shard, and the end of its contiguous part from `start`
    seen: dict[str, set[int]] = field(default_factory=dict)
    run_prefix: dict[str, int] = field(default_factory=dict)
    #: (lowest index, highest index) delivered per shard
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    #: records per sink call (the batch number of the D lines)
    calls: dict[int, int] = field(default_factory=dict)
    #: a save that began and has not returned: (time, positions)
    pending: tuple[float, dict[str, str]] | None = None
    reported: set[tuple[str, str]] = field(default_factory=set)

    def violation(self, text: str) -> str:
        return f"cycle {self.log.cycle}: {text}"


class _Checker:
    def __init__(self, config: CrashConfig, layout: StreamLayout) -> None:
        self.config = config
        self.layout = layout
        self.records = layout.records
        self.report = CrashReport(config, "", layout)
        self.violations = self.report.violations
        self.delivered = {s: bytearray(len(seqs)) for s, seqs in self.records.items()}
        # records[s][:prefix[s]] are all delivered
        self.prefix = dict.fromkeys(self.records, 0)
        # Order per key, not per shard (per-key concurrency): (shard, key) -> the place
        # in the key's records of its first record never delivered.
        self.per_key = config.per_shard > 1
        self.key_prefix: dict[tuple[str, str], int] = {}
        # shard -> (killed cycle, the highest index it delivered)
        self.kills: dict[str, list[tuple[int, int]]] = {}
        self.committed: dict[str, str] = {}  # positions known to be durable
        self.requested: dict[str, str] = {}  # positions asked to be saved
        self.previous: _Run | None = None  # the last killed run, until the next load

    def cycle(self, log: CycleLog) -> None:
        stats = CycleStats(log.cycle, log.killed)
        self.report.cycles.append(stats)
        self.violations.extend(f"cycle {log.cycle}: {e}" for e in log.errors)
        if log.loaded is None or log.loaded_time is None:
            self.violations.append(f"cycle {log.cycle}: the run never loaded its checkpoints")
            return
        stats.startup = log.loaded_time - log.go_time
        stats.seconds = (log.kill_time or log.exit_time) - log.go_time
        start = {s: _after(self.layout, s, log.loaded.get(s)) or 0 for s in self.records}
        run = _Run(
            log,
            stats,
            log.loaded,
            dict(start),
            {s for s, p in log.loaded.items() if p == SHARD_END},
            {s: self._allowed(s, start[s]) for s in self.records},
            log.loaded_time,
            start,
        )
        self._load(run)
        if self.previous is not None:
            self._replayed(self.previous, run.loaded)
            self.previous = None
        for event in log.events:
            if event[0] == "D":
                self._delivered(run, event[1], event[2])
                run.calls[event[3]] = run.calls.get(event[3], 0) + 1
            elif event[0] == "S":
                self._save_began(run, event[1], event[2])
            else:
                self._save_returned(run)
        self._end(run)

    def _load(self, run: _Run) -> None:
        """The load sees every save that returned, and only positions asked for."""
        for shard, position in self.committed.items():
            if is_ahead(position, run.loaded.get(shard)):
                self.violations.append(
                    run.violation(
                        f"shard {shard} loaded {run.loaded.get(shard)} although the save of "
                        f"{position} had returned before the previous kill: a checkpoint "
                        "was lost"
                    )
                )
        for shard, position in run.loaded.items():
            if shard not in self.records:
                self.violations.append(run.violation(f"loaded a position for shard {shard}"))
                continue
            if _after(self.layout, shard, position) is None:
                self.violations.append(
                    run.violation(f"shard {shard} loaded {position}, not a record of it")
                )
            elif is_ahead(position, self.requested.get(shard)):
                self.violations.append(
                    run.violation(
                        f"shard {shard} loaded {position}, but the highest position ever "
                        f"asked to be saved was {self.requested.get(shard)}"
                    )
                )
            # A loaded position is durable, also when the kill came between the end of
            # its save and the log line that says so.
            if is_ahead(position, self.committed.get(shard)):
                self.committed[shard] = position

    def _replayed(self, killed: _Run, loaded: Mapping[str, str]) -> None:
        """What the kill of `killed` delivered that the next run (which loaded `loaded`)
        does not take as done, per shard, against the kill's in-flight window."""
        window = killed.stats.window
        assert window is not None
        worst = 0
        for shard, (first, last) in killed.ranges.items():
            start = max(first, _after(self.layout, shard, loaded.get(shard)) or 0)
            replay = last + 1 - start
            worst = max(worst, replay)
            if replay > window:
                seqs = self.records[shard]
                self.violations.append(
                    killed.violation(
                        f"shard {shard}: the kill left {replay} delivered records "
                        f"({seqs[start]} .. {seqs[last]}) to replay, over the in-flight window "
                        f"of {window} ({killed.stats.since_snapshot:.3f}s after the last "
                        "durable snapshot)"
                    )
                )
        killed.stats.in_flight = worst

    def _delivered(self, run: _Run, shard: str, seq: str) -> None:
        run.stats.deliveries += 1
        index = self.layout.index.get(shard, {}).get(seq)
        if index is None:
            self.violations.append(run.violation(f"delivered {shard} {seq}, not in the stream"))
            return
        seqs = self.records[shard]
        parent = self.layout.parents.get(shard)
        if parent is not None and parent not in run.ended:
            self._once(
                run,
                (shard, "lineage"),
                f"delivered {shard} {seq} before its parent {parent}'s SHARD_END was durable",
            )
        key = self.layout.key_of(shard, index)
        in_key = self.layout.by_key[shard][key]
        place = bisect_left(in_key, index)  # the record's place among its key's
        if self.per_key:
            expected_place = run.key_next.get((shard, key))
            if expected_place is None:
                expected_place = bisect_left(in_key, run.start[shard])
            if place != expected_place:
                self._once(
                    run,
                    (shard, f"order {key}"),
                    f"shard {shard} key {key} delivered {seq} where "
                    + (seqs[in_key[expected_place]] if expected_place < len(in_key) else "nothing")
                    + f" was next for the key (the run resumed after {run.loaded.get(shard)})"
                    ": out of order within the key, or a gap",
                )
            run.key_next[(shard, key)] = place + 1
        else:
            expected = run.next[shard]
            if index != expected:
                self._once(
                    run,
                    (shard, "order"),
                    f"shard {shard} delivered {seq} where "
                    f"{seqs[expected] if expected < len(seqs) else 'nothing'} was next (the run "
                    f"resumed after {run.loaded.get(shard)}): out of order or a gap",
                )
            run.next[shard] = index + 1
        low, high = run.ranges.get(shard, (index, index))
        if index < high:
            run.stats.reordered += 1
        run.ranges[shard] = (min(low, index), max(high, index))
        seen = run.seen.setdefault(shard, set())
        seen.add(index)
        done = run.run_prefix.get(shard, run.start[shard])
        while done in seen:
            done += 1
        run.run_prefix[shard] = done
        if self.delivered[shard][index]:
            run.duplicates[shard] = run.duplicates.get(shard, 0) + 1
            return
        self.delivered[shard][index] = 1
        run.stats.new += 1
        prefix = self.prefix[shard]
        if self.per_key:
            first = self.key_prefix.get((shard, key), 0)
            if place != first:
                self._once(
                    run,
                    (shard, f"first {key}"),
                    f"shard {shard} key {key}: the first delivery of {seq} came before the "
                    f"first delivery of {seqs[in_key[first]]}",
                )
            while first < len(in_key) and self.delivered[shard][in_key[first]]:
                first += 1
            self.key_prefix[(shard, key)] = first
        elif index != prefix:
            self._once(
                run,
                (shard, "first"),
                f"shard {shard}: the first delivery of {seq} came before the first delivery "
                f"of {seqs[prefix]}",
            )
        while prefix < len(seqs) and self.delivered[shard][prefix]:
            prefix += 1
        self.prefix[shard] = prefix

    def _save_began(self, run: _Run, at: float, positions: dict[str, str]) -> None:
        """A save never runs ahead of what the sink acknowledged."""
        run.pending = (at, positions)
        for shard, position in positions.items():
            if shard not in self.records:
                self.violations.append(run.violation(f"saved a position for shard {shard}"))
                continue
            if is_ahead(position, self.requested.get(shard)):
                self.requested[shard] = position
            done = self.prefix[shard]
            seqs = self.records[shard]
            if position == SHARD_END:
                ahead = shard not in self.layout.closed or done < len(seqs)
            else:
                index = self.layout.index[shard].get(position)
                ahead = index is None or index >= done
            if ahead:
                self.violations.append(
                    run.violation(
                        f"saved {shard}={position} while only "
                        f"{seqs[done - 1] if done else 'nothing'} and before were delivered: "
                        "the checkpoint ran ahead of the sink"
                    )
                )
                continue
            # This run alone: from its loaded position, contiguously.
            mine = run.run_prefix.get(shard, run.start[shard])
            if position == SHARD_END:
                ahead = mine < len(seqs)
            else:
                ahead = self.layout.index[shard][position] >= mine
            if ahead:
                self.violations.append(
                    run.violation(
                        f"saved {shard}={position} while this run (resumed after "
                        f"{run.loaded.get(shard)}) had delivered only up to "
                        f"{seqs[mine - 1] if mine else 'nothing'} without a gap: the "
                        "checkpoint passed a record this run did not deliver"
                    )
                )

    def _save_returned(self, run: _Run) -> None:
        if run.pending is None:
            self.violations.append(run.violation("a save returned that never began"))
            return
        run.snapshot_time, positions = run.pending
        run.pending = None
        run.stats.saves += 1
        for shard, position in positions.items():
            if is_ahead(position, self.committed.get(shard)):
                self.committed[shard] = position
            if position == SHARD_END:
                run.ended.add(shard)

    def _end(self, run: _Run) -> None:
        stats, log = run.stats, run.log
        stats.duplicates = sum(run.duplicates.values())
        stats.calls = len(run.calls)
        stats.largest_call = max(run.calls.values(), default=0)
        for shard, count in run.duplicates.items():
            if count > run.allowed[shard]:
                self.violations.append(
                    run.violation(
                        f"shard {shard} delivered {count} records again, over the in-flight "
                        f"window {run.allowed[shard]} of the kill that left them"
                    )
                )
        if log.killed:
            assert log.kill_time is not None
            stats.in_save = run.pending is not None
            stats.since_snapshot = log.kill_time - run.snapshot_time
            stats.window = self.config.window(stats.since_snapshot)
            for shard, (_, high) in run.ranges.items():
                self.kills.setdefault(shard, []).append((log.cycle, high))
            self.previous = run
            return
        if log.returncode != 0 or log.end is None or log.end[0] != "drained":
            self.violations.append(
                run.violation(
                    f"the last run did not drain and exit cleanly (exit code "
                    f"{log.returncode}, end line {log.end}); its output:\n{log.output}"
                )
            )
        if log.torn:
            self.violations.append(run.violation(f"the log ends in a cut line {log.torn!r}"))

    def finish(self, *, drained: bool) -> CrashReport:
        """Every record delivered, and the drained run saved the end of every shard."""
        for shard, seqs in self.records.items():
            missing = [seqs[i] for i, flag in enumerate(self.delivered[shard]) if not flag]
            self.report.lost += len(missing)
            if missing:
                self.violations.append(
                    f"shard {shard}: {len(missing)} record(s) never delivered, e.g. "
                    + ", ".join(missing[:5])
                )
            final = SHARD_END if shard in self.layout.closed else seqs[-1]
            if drained and self.committed.get(shard) != final:
                self.violations.append(
                    f"shard {shard}: after draining, the saved position is "
                    f"{self.committed.get(shard)}, not {final}"
                )
        return self.report

    def _once(self, run: _Run, key: tuple[str, str], text: str) -> None:
        if key not in run.reported:
            run.reported.add(key)
            self.violations.append(run.violation(text))

    def _allowed(self, shard: str, start: int) -> int:
        """The duplicates a run that resumes at index `start` of `shard` may deliver: the
        in-flight windows of the kills whose deliveries reach `start` or past it."""
        total = 0
        for cycle, high in self.kills.get(shard, []):
            window = self.report.cycles[cycle].window
            if high >= start and window is not None:
                total += window
        return total


# -- running ----------------------------------------------------------------------------


@dataclass
class _Child:
    cycle: int
    process: Process
    stderr: IO[bytes]
    log: Path

    def stderr_tail(self, size: int = 3000) -> str:
        self.stderr.flush()
        self.stderr.seek(0, os.SEEK_END)
        end = self.stderr.tell()
        self.stderr.seek(max(0, end - size))
        return self.stderr.read().decode(errors="replace")


def _child_env() -> dict[str, str]:
    # Only the fake settings: no profile, token or endpoint of this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CHILD_ENV)
    return env


class _Children:
    """Starts each cycle's child ahead of time; kills whatever is left at the end."""

    def __init__(
        self, config: CrashConfig, store: StoreSpec, server: LocalStreamsServer, workdir: Path
    ) -> None:
        self._config = config
        self._store = store
        self._server = server
        self._workdir = workdir
        self._started: dict[int, _Child] = {}
        self._next = 0
        self._env = _child_env()

    async def take(self, cycle: int) -> _Child:
        last = self._config.kills
        while self._next <= min(last, cycle + self._config.spares):
            self._started[self._next] = await self._start(self._next)
            self._next += 1
        return self._started.pop(cycle)

    async def _start(self, cycle: int) -> _Child:
        log = self._workdir / f"cycle-{cycle:03d}.log"
        child_config = {
            "cycle": cycle,
            "log": str(log),
            "store": {"kind": self._store.kind, "options": dict(self._store.options)},
            "stream_arn": self._server.stream_arn,
            "endpoint_url": self._server.endpoint_url,
            "page_limit": self._config.page_limit,
            "polls_per_second": self._config.polls_per_second,
            "per_shard": self._config.per_shard,
            "sink_latency": self._config.sink_latency,
            "batching_window": self._config.batching_window,
            "wait": True,
        }
        stderr = (self._workdir / f"cycle-{cycle:03d}.err").open("w+b")
        try:
            process = await anyio.open_process(
                [sys.executable, str(CHILD), json.dumps(child_config)],
                stdin=subprocess.PIPE,  # for the "go" line
                stdout=stderr,
                stderr=stderr,
                env=self._env,
            )
        except BaseException:
            stderr.close()
            raise
        return _Child(cycle, process, stderr, log)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for child in self._started.values():
                await _finish(child, kill=True)
            self._started.clear()


async def _finish(child: _Child, *, kill: bool) -> None:
    if kill and child.process.returncode is None:
        child.process.kill()
    await child.process.wait()
    await child.process.aclose()
    child.stderr.close()


async def run_crash_test(
    config: CrashConfig,
    store: StoreFactory,
    workdir: Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> CrashReport:
    """Run `config.kills` kill/restart cycles and a final draining run over a fresh
    stream, with the store `store` builds, logs in `workdir`; return what `check` found."""
    started = time.monotonic()
    rng = random.Random(config.seed)
    stream, layout = build_stream(config)
    spec = store(workdir, config.flush_interval)
    logs: list[CycleLog] = []
    known: set[tuple[str, str]] = set()
    overshoot = 0.0  # mean of new records beyond the target, over the kills so far
    async with LocalStreamsServer(stream) as server:
        children = _Children(config, spec, server, workdir)
        try:
            for cycle in range(config.kills + 1):
                log = CycleLog(cycle, killed=cycle < config.kills)
                logs.append(log)
                target, delay = 0, 0.0
                if log.killed:
                    # New records to wait for: random, around an equal share of what the
                    # reserve leaves, less what the kills overshoot on average.
                    remaining = config.records - len(known)
                    spare = max(0, remaining - int(config.reserve * config.records))
                    budget = spare / (config.kills - cycle) - overshoot
                    target = min(spare, rng.randint(0, max(0, int(2 * budget))))
                    spread = config.kill_spread
                    delay = rng.uniform(0.0, config.flush_interval if spread is None else spread)
                    if not spare:
                        delay = 0.0  # into the reserve: kill at the first delivery
                child = await children.take(cycle)
                await _run_cycle(child, log, known, target, delay, config.cycle_timeout)
                before = len(known)
                known.update((e[1], e[2]) for e in log.events if e[0] == "D")
                if log.killed:
                    new = len(known) - before
                    overshoot += (max(0, new - target) - overshoot) / (cycle + 1)
                if progress is not None:
                    progress(
                        f"cycle {cycle:3d}: {'killed' if log.killed else 'drained'}, "
                        f"{len(known)}/{config.records} delivered"
                    )
        finally:
            await children.aclose()
    report = check(config, layout, logs)
    report.store = spec.describe()
    report.store_kind = spec.kind
    report.wall_seconds = time.monotonic() - started
    return report


async def _run_cycle(
    child: _Child,
    log: CycleLog,
    known: set[tuple[str, str]],
    target: int,
    delay: float,
    within: float,
) -> None:
    """Let `child` go; kill it once it delivered something and `target` new records,
    `delay` seconds later (or, for the last cycle, wait until it exits); fill `log`. Each
    wait gives up after `within` seconds."""
    tail = _Tail(child.log, known)
    try:
        log.go_time = time.monotonic()
        assert child.process.stdin is not None
        await child.process.stdin.send(b"go\n")
        if log.killed:
            what = f"cycle {log.cycle}: waiting for a delivery and {target} new records"
            await _wait_for(child, partial(tail.reached, target), tail, what, within=within)
            # The kill moment: a random phase of the checkpoint flush cycle.
            await anyio.sleep(delay)
            if child.process.returncode is None:
                child.process.kill()
                log.kill_time = time.monotonic()
        else:
            await _wait_for(child, _never, tail, "the last run", within=within)
        log.returncode = await child.process.wait()
        log.exit_time = time.monotonic()
        if log.returncode not in (0, -signal.SIGKILL):
            log.output = child.stderr_tail()
    finally:
        await _finish(child, kill=True)
    parse_log(log, child.log.read_bytes() if child.log.exists() else b"")
    if log.killed and (log.kill_time is None or log.end is not None):
        raise HarnessError(
            f"cycle {log.cycle}: the child exited ({log.returncode}) before the kill"
            + (
                ": it drained every record; leave more records to the last run (reserve=)"
                if log.returncode == 0
                else f"; its output:\n{log.output}"
            )
        )


async def _wait_for(
    child: _Child, condition: Callable[[], bool], tail: _Tail, what: str, *, within: float
) -> None:
    """Wait until `condition` holds or the child exits (then the caller sees why)."""

    def ready() -> bool:
        tail.poll()
        return child.process.returncode is not None or condition()

    try:
        await wait_until(ready, within)
    except TimeoutError:
        raise HarnessError(
            f"{what}: nothing after {within}s ({tail.deliveries} deliveries, {tail.new} "
            f"new); the child's output:\n{child.stderr_tail()}"
        ) from None


# -- reporting --------------------------------------------------------------------------


def format_report(report: CrashReport, *, per_cycle: bool = False) -> str:
    """A table of the run: cycles, deliveries, duplicates per cycle, lost, wall time,
    and the in-flight window next to the largest replay seen."""
    c = report.config
    dups = report.duplicates or [0]
    in_flight = [s.in_flight for s in report.cycles if s.in_flight is not None] or [0]
    windows = [s.window for s in report.cycles if s.window is not None] or [0]
    since = [s.since_snapshot for s in report.cycles if s.since_snapshot is not None] or [0.0]
    startup = [s.startup for s in report.cycles] or [0.0]
    kills = [s for s in report.cycles if s.killed]
    in_save = sum(s.in_save for s in kills)
    no_save = sum(not s.in_save and s.saves == 0 for s in kills)
    rows = [
        ("store", report.store),
        ("seed", str(c.seed)),
        (
            "stream",
            f"{c.records} records, {c.shards} shards" + (", one split" if c.split else ""),
        ),
        ("pipeline", c.describe_pipeline()),
        ("cycles", f"{len(report.cycles)} ({c.kills} killed, 1 drained)"),
        (
            "kill moments",
            f"{in_save} during a save, {no_save} before the run's first save, "
            f"{len(kills) - in_save - no_save} between saves",
        ),
        ("deliveries", f"{report.deliveries} for {report.layout.total} records"),
        (
            "duplicates per cycle",
            f"max {max(dups)}, mean {sum(dups) / len(dups):.1f}, total {sum(dups)}",
        ),
        (
            "replay per shard per kill",
            f"max {max(in_flight)}; window per kill max {max(windows)} (nominal "
            f"{report.nominal_window} = {c.page_limit} x (floor({c.polls_per_second:g} x "
            f"{c.flush_interval:g}) + 1 + {c.pages_ahead})); snapshot-to-kill max "
            f"{max(since):.3f}s",
        ),
        (
            "sink calls",
            f"{sum(s.calls for s in report.cycles)}, at most "
            f"{max((s.largest_call for s in report.cycles), default=0)} records; "
            f"{sum(s.reordered for s in report.cycles)} deliveries after a later record "
            "of their shard",
        ),
        ("startup (go to load)", f"max {max(startup):.3f}s"),
        ("lost", str(report.lost)),
        ("violations", str(len(report.violations))),
        ("wall time", f"{report.wall_seconds:.1f}s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if per_cycle:
        lines.append("")
        lines.append(
            "cycle  end      deliveries   new  dups  saves  run(s)  snap->kill(s)  window  replay"
        )
        for s in report.cycles:
            lines.append(
                f"{s.cycle:5d}  {'killed' if s.killed else 'drained':7}  {s.deliveries:10d}"
                f"  {s.new:4d}  {s.duplicates:4d}  {s.saves:5d}  {s.seconds:6.2f}"
                f"  {_opt(s.since_snapshot, '.3f'):>13}  {_opt(s.window, 'd'):>6}"
                f"  {_opt(s.in_flight, 'd'):>6}"
            )
    return "\n".join(lines)


def _opt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
