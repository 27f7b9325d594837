"""Batching windows (`Pipeline.batching()`): on a slow trickle each page holds a record
or two, and a sink that takes ten or a hundred items a request would send one request
per record. A window lets a shard gather pages for up to `max_window` seconds (or until
`max_records` records) and deliver them as one page: fewer, fuller requests, for at most
`max_window` seconds of added latency. Lambda's MaximumBatchingWindowInSeconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowstream.errors import PipelineError

__all__ = ["Batching"]

#: The longest window: a record must not wait longer than Lambda would make it.
MAX_WINDOW = 300.0


@dataclass(frozen=True, slots=True)
class Batching:
    """Gather a shard's pages for up to `max_window` seconds, or `max_records` records,
    before delivering them together (0: deliver each page as it comes)."""

    max_window: float = 0.0
    max_records: int = 1000

    def __post_init__(self) -> None:
        window = self.max_window
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not 0 <= window <= MAX_WINDOW
            or math.isnan(window)
        ):
            raise PipelineError(
                f".batching() got max_window={window!r}; give seconds from 0 to "
                f"{MAX_WINDOW:g}, e.g. .batching(max_window=1.0)"
            )
        records = self.max_records
        if isinstance(records, bool) or not isinstance(records, int) or records < 1:
            raise PipelineError(
                f".batching() got max_records={records!r}; give a whole number of records, "
                "1 or more, e.g. max_records=500"
            )
        object.__setattr__(self, "max_window", float(window))

    @property
    def enabled(self) -> bool:
        return self.max_window > 0

    def describe(self) -> str:
        return (
            f"batching: pages gathered for up to {self.max_window:g}s or {self.max_records} records"
        )
