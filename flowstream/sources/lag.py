"""Saying so when a process cannot poll its idle shards as often as asked.

Past what one core can sign and send, idle shards are still all served, in turn, but
later than `idle_interval` promises, and nothing else shows it. `PollLag` counts how late
each idle shard's poll starts against when it was due, and logs a warning (at most once
a minute) when more than a tenth of them were late, with the numbers and the two fixes.
A shard with records is not counted: its next poll waits for the sinks, by design.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["PollLag"]

logger = logging.getLogger("flowstream")

#: Seconds between two looks at the counts (and so between two warnings at most).
REPORT_EVERY: Final = 60.0
#: Share of late polls in a period that earns a warning.
LATE_SHARE: Final = 0.1


class PollLag:
    """Lateness of idle polls in one stream session, counted per period."""

    __slots__ = ("_idle_interval", "_late", "_polls", "_since", "_threshold", "_worst", "stream")

    def __init__(self, stream: str, idle_interval: float) -> None:
        self.stream = stream
        self._idle_interval = idle_interval
        # Late: by more than a quarter of the interval (20 ms at least, below which a
        # busy event loop's ordinary jitter would count).
        self._threshold = max(0.25 * idle_interval, 0.02)
        self._since: float | None = None
        self._polls = 0
        self._late = 0
        self._worst = 0.0

    def note(self, late: float, now: float) -> None:
        """An idle shard's poll starts at `now`, `late` seconds after it was due."""
        if self._since is None:
            self._since = now
        self._polls += 1
        if late > self._threshold:
            self._late += 1
            self._worst = max(self._worst, late)
        period = now - self._since
        if period < REPORT_EVERY:
            return
        if self._late > LATE_SHARE * self._polls:
            logger.warning(
                "stream %s: %d of %d polls of idle shards in the last %.0f s started more "
                "than %.0f ms late (the worst %.0f ms late; %.0f polls a second): this "
                "process cannot poll its shards every %gs. Raise idle_interval=, or spread "
                "the shards over more processes (docs/dynamodb.md, 'The idle interval's "
                "price')",
                self.stream,
                self._late,
                self._polls,
                period,
                self._threshold * 1000,
                self._worst * 1000,
                self._polls / period,
                self._idle_interval,
            )
        self._since = now
        self._polls = self._late = 0
        self._worst = 0.0
