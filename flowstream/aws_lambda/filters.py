"""The pipeline's leading filters as an event source mapping's `FilterCriteria`, so that
Lambda drops records before it invokes the function at all (it bills no invocation
for them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flowstream.errors import PipelineError
from flowstream.plan import Filter, Step
from flowstream.record import EventName

__all__ = ["filter_criteria"]


def filter_criteria(steps: Sequence[Step], pipeline: str) -> dict[str, Any]:
    """``{"Filters": [{"Pattern": ...}]}`` for the filters that lead `steps`, as far as
    they can be written as Lambda filter patterns (an `events=` filter can; a Python
    predicate or a `map` cannot, and ends what the pattern covers). Raises
    `PipelineError` naming the step when nothing can be written."""
    events: frozenset[EventName] | None = None
    stopped_by = ""
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, Filter):
            stopped_by = f"step {number}, {step.describe()}, changes the elements"
            break
        if step.events is not None:
            events = step.events if events is None else events & step.events
        if step.predicate is not None:
            stopped_by = (
                f"step {number}, {step.describe()}, is a Python predicate Lambda cannot run"
            )
            break
    if events is None:
        why = stopped_by or "the pipeline has no filter"
        raise PipelineError(
            f"{pipeline}.lambda_filter_criteria(): nothing before the first step that "
            f"cannot be a filter pattern ({why}); start the pipeline with "
            ".filter(events=[...]) to let Lambda drop records before invoking the function"
        )
    if not events:
        raise PipelineError(
            f"{pipeline}.lambda_filter_criteria(): the leading filters keep no event name "
            "at all (their events= do not overlap), so every record would be dropped; "
            "check the events= of the pipeline's filters"
        )
    pattern = {"eventName": sorted(events)}
    return {"Filters": [{"Pattern": json.dumps(pattern, separators=(",", ":"))}]}
