"""Rate-limited warnings: during an outage the same warning would be written for every
retry of every shard; an operator needs one line per shard and cause per interval, with
a count of the lines held back.

A run sets its limiter in a context variable, so the tasks it starts (runners, readers)
use the run's interval; code outside a run shares a process-wide limiter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "LogLimiter", "current", "use", "warn"]

#: Seconds between two lines about the same shard and cause, unless a run says otherwise.
DEFAULT_INTERVAL = 30.0

#: Keys are forgotten once quiet this many intervals (an outage's keys do not pile up).
_FORGET_AFTER = 10


@dataclass(slots=True)
class _Seen:
    last: float
    held: int = 0
    #: the latest line held back (formatted: its arguments may hold whole pages),
    #: written by `flush()`
    latest: tuple[logging.Logger, str] | None = None


class LogLimiter:
    """Writes a warning at once the first time a key is seen, then at most once per
    `interval` seconds for that key; a line that follows held-back ones says how many."""

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._seen: dict[Hashable, _Seen] = {}
        self._swept = clock()

    def warn(self, logger: logging.Logger, key: Hashable, msg: str, *args: Any) -> bool:
        """Log `msg % args` as a warning unless `key` was logged less than an interval
        ago; True when it was written."""
        now = self._clock()
        if now - self._swept > self.interval * _FORGET_AFTER:
            self._sweep(now)
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < self.interval:
            seen.held += 1
            seen.latest = (logger, msg % args if args else msg)
            return False
        if seen is not None and seen.held:
            msg += " (%d more like this in the last %.0fs)"
            args = (*args, seen.held, now - seen.last)
        self._seen[key] = _Seen(now)
        logger.warning(msg, *args)
        return True

    def flush(self) -> None:
        """Write the latest held-back line of each key, with its count (a run calls this
        when it ends, so the end of an outage is not left uncounted)."""
        now = self._clock()
        for seen in self._seen.values():
            self._write_held(seen, now)

    @staticmethod
    def _write_held(seen: _Seen, now: float) -> None:
        if seen.held and seen.latest is not None:
            logger, line = seen.latest
            logger.warning("%s (%d like this in the last %.0fs)", line, seen.held, now - seen.last)
            seen.held, seen.latest, seen.last = 0, None, now

    def _sweep(self, now: float) -> None:
        horizon = self.interval * _FORGET_AFTER
        for seen in self._seen.values():
            if now - seen.last > horizon:
                self._write_held(seen, now)  # what was held is told before it is forgotten
        self._seen = {k: s for k, s in self._seen.items() if now - s.last <= horizon}
        self._swept = now


_process = LogLimiter()
_current: ContextVar[LogLimiter] = ContextVar("flowstream_log_limiter", default=_process)


def current() -> LogLimiter:
    """The limiter of the run this task belongs to (the process's outside a run)."""
    return _current.get()


def use(limiter: LogLimiter) -> None:
    """Make `limiter` the one this task and the tasks it starts from now on use."""
    _current.set(limiter)


def warn(logger: logging.Logger, key: Hashable, msg: str, *args: Any) -> bool:
    """`LogLimiter.warn` on the current run's limiter."""
    return _current.get().warn(logger, key, msg, *args)
