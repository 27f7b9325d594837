"""`LogLimiter` with a clock the test moves: a key's first warning is written at once,
then at most one per interval, and the next line written says how many were held back;
keys are independent; keys quiet for long are forgotten. And a run's limiter is the one
its tasks use."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest

from flowstream import log_limit
from flowstream.log_limit import LogLimiter

logger = logging.getLogger("flowstream.test_log_limit")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """The messages written, as they come."""
    messages: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Handler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def test_the_first_line_of_a_key_is_written_at_once(clock: Clock, lines: list[str]) -> None:
    limiter = LogLimiter(30.0, clock)
    assert limiter.warn(logger, "k", "shard %s: retry %d", "s1", 1) is True
    assert lines == ["shard s1: retry 1"]


def test_lines_within_the_interval_are_held_and_counted_in_the_next(
    clock: Clock, lines: list[str]
) -> None:
    limiter = LogLimiter(30.0, clock)
    limiter.warn(logger, "k", "retry %d", 1)
    for n in range(2, 6):
        clock.now += 5
        assert limiter.warn(logger, "k", "retry %d", n) is False
    assert lines == ["retry 1"]
    clock.now = 1000.0 + 30  # an interval after the first line
    assert limiter.warn(logger, "k", "retry %d", 6) is True
    assert lines == ["retry 1", "retry 6 (4 more like this in the last 30s)"]
    # the count starts again after each line written
    clock.now += 30
    assert limiter.warn(logger, "k", "retry %d", 7) is True
    assert lines[-1] == "retry 7"


def test_at_most_one_line_per_interval_whatever_the_rate(clock: Clock, lines: list[str]) -> None:
    limiter = LogLimiter(5.0, clock)
    for _ in range(3000):  # 100 a second for 30 s
        limiter.warn(logger, "k", "retry")
        clock.now += 0.01
    assert 6 <= len(lines) <= 7
    held = sum(int(line.split("(")[1].split()[0]) for line in lines[1:])
    pending = limiter._seen["k"].held  # for the next line, should one come
    assert held + pending + len(lines) == 3000  # every warning is written or counted


def test_keys_are_independent(clock: Clock, lines: list[str]) -> None:
    limiter = LogLimiter(30.0, clock)
    assert limiter.warn(logger, ("s1", "sink a", ConnectionError), "s1 a")
    assert limiter.warn(logger, ("s2", "sink a", ConnectionError), "s2 a")
    assert limiter.warn(logger, ("s1", "sink a", TimeoutError), "s1 a timeout")
    assert not limiter.warn(logger, ("s1", "sink a", ConnectionError), "s1 a again")
    clock.now += 10
    assert not limiter.warn(logger, ("s2", "sink a", ConnectionError), "s2 a again")
    clock.now += 20
    # s1's held line is counted in s1's next line only
    assert limiter.warn(logger, ("s1", "sink a", ConnectionError), "s1 a")
    assert lines[-1] == "s1 a (1 more like this in the last 30s)"
    assert limiter.warn(logger, ("s1", "sink a", TimeoutError), "s1 a timeout")
    assert lines[-1] == "s1 a timeout"


def test_quiet_keys_are_forgotten(clock: Clock, lines: list[str]) -> None:
    limiter = LogLimiter(1.0, clock)
    for n in range(100):
        limiter.warn(logger, ("shard", n), "first of %d", n)
    assert len(limiter._seen) == 100
    clock.now += 11  # quiet for more than ten intervals
    limiter.warn(logger, "new", "another")
    assert list(limiter._seen) == ["new"]
    # a forgotten key is new again: written at once, with no stale count
    limiter.warn(logger, ("shard", 3), "again %d", 3)
    assert lines[-1] == "again 3"


def test_a_recent_key_is_kept_with_its_count(clock: Clock, lines: list[str]) -> None:
    limiter = LogLimiter(1.0, clock)
    limiter.warn(logger, "old", "old")
    clock.now += 9
    limiter.warn(logger, "busy", "busy")
    limiter.warn(logger, "busy", "busy")  # held
    clock.now += 2  # "old" is quiet 11 intervals, "busy" 2
    limiter.warn(logger, "trigger", "trigger")
    assert set(limiter._seen) == {"busy", "trigger"}
    limiter.warn(logger, "busy", "busy")
    assert lines[-1] == "busy (1 more like this in the last 2s)"


async def test_a_run_uses_its_own_limiter_in_the_tasks_it_starts() -> None:
    outer = log_limit.current()
    mine = LogLimiter(0.5)
    seen: list[LogLimiter] = []

    async def task() -> None:
        seen.append(log_limit.current())

    async def run() -> None:
        log_limit.use(mine)
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
    assert seen == [mine]
    assert log_limit.current() is outer  # the caller's context is left as it was


def test_flush_writes_what_was_held_back_since_the_last_line(
    clock: Clock, lines: list[str]
) -> None:
    limiter = LogLimiter(10.0, clock)
    for n in range(5):
        limiter.warn(logger, "k", "retry %d", n)
        clock.now += 1.0
    limiter.flush()
    limiter.flush()  # nothing more was held back: nothing more is written
    assert lines == ["retry 0", "retry 4 (4 like this in the last 5s)"]


def test_a_key_forgotten_after_a_quiet_spell_first_writes_what_it_held(
    clock: Clock, lines: list[str]
) -> None:
    limiter = LogLimiter(1.0, clock)
    limiter.warn(logger, "outage", "retry %d", 1)
    limiter.warn(logger, "outage", "retry %d", 2)  # held
    clock.now += 100.0  # quiet far longer than the keys are kept
    limiter.warn(logger, "other", "something else")  # sweeps
    assert lines == ["retry 1", "retry 2 (1 like this in the last 100s)", "something else"]
