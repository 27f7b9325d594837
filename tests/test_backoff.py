"""The one backoff formula: full jitter under an exponential ceiling, and retry loops
that run for hours (an outage ridden out) keep working."""

from __future__ import annotations

import random

from flowstream.backoff import Backoff, full_jitter


def test_each_wait_is_under_its_exponential_ceiling() -> None:
    random.seed(7)
    for attempt in range(1, 12):
        ceiling = min(5.0, 0.05 * 2 ** (attempt - 1))
        waits = [full_jitter(attempt, 0.05, 5.0) for _ in range(200)]
        assert all(0.0 <= wait <= ceiling for wait in waits)
        assert max(waits) > 0.8 * ceiling  # full jitter: the whole range is used


def test_a_retry_loop_of_thousands_of_attempts_keeps_waiting_at_the_cap() -> None:
    # 2 ** 1024 does not fit a float: attempt 1,025 once raised OverflowError, which
    # stopped a shard after about 1.4 hours of throttling at a 5 s cap.
    backoff = Backoff(base=0.05, cap=5.0)
    waits = [backoff.next_delay() for _ in range(5000)]
    assert backoff.attempt == 5000
    assert all(0.0 <= wait <= 5.0 for wait in waits[-100:])
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 0.05
