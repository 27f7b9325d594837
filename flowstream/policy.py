"""The failure policy of a pipeline: how often and how patiently a failing record is
retried before its shard stops (set with `Pipeline.on_failure()`)."""

from __future__ import annotations

from dataclasses import dataclass

from flowstream.backoff import full_jitter

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` more attempts after the first, each after an exponential backoff with
    full jitter between 0 and min(cap, base·2ⁿ⁻¹) seconds, `backoff=(base, cap)`."""

    retries: int = 3
    backoff: tuple[float, float] = (0.1, 5.0)

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (from 1)."""
        return full_jitter(attempt, *self.backoff)

    def describe(self) -> str:
        base, cap = self.backoff
        return f"on failure: {self.retries} retries, backoff {base:g}-{cap:g}s, then stop the shard"
