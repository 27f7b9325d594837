"""Exponential backoff with full jitter, the one formula every retry in flowstream uses."""

from __future__ import annotations

import random

__all__ = ["Backoff", "full_jitter"]


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """The wait before retry number `attempt` (from 1): uniform(0, min(cap, base·2ⁿ⁻¹)).
    Full jitter spreads retries of many shards or workers apart. The exponent stops
    growing once the cap is reached for any sane base (2⁶⁰): a retry loop that runs for
    hours (an outage) must not overflow a float at attempt 1,025."""
    return random.uniform(0.0, min(cap, base * 2 ** min(attempt - 1, 60)))


class Backoff:
    """Counts attempts of one retry loop and gives each its wait."""

    __slots__ = ("attempt", "base", "cap")

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return full_jitter(self.attempt, self.base, self.cap)

    def reset(self) -> None:
        self.attempt = 0
