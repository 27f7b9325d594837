"""The pipeline's leading filters as an event source mapping's `FilterCriteria`, so that
Lambda drops records before it invokes the function at all (it bills no invocation
for them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from flowstream.errors import PipelineError
from flowstream.patterns import Pattern, to_json
from flowstream.plan import Filter, Step
from flowstream.record import EventName

__all__ = ["filter_criteria"]


#: Filters per event source mapping: 5 by default, 10 with a raised quota.
_MAX_FILTERS: Final = 10
#: The longest pattern a filter takes, in characters.
_MAX_PATTERN: Final = 4096


def filter_criteria(steps: Sequence[Step], pipeline: str) -> dict[str, Any]:
    """``{"Filters": [{"Pattern": ...}, ...]}`` for the filters that lead `steps`, as far
    as they can be written as Lambda filter patterns (`events=` and `pattern=` can; a
    Python predicate, `n_as_numbers=True`, a second `pattern=` filter or a `map` cannot,
    and end what the patterns cover). What Lambda lets through is never less than what
    the pipeline keeps: the handler applies every filter again. Raises `PipelineError`
    naming the step when nothing can be written."""
    events: frozenset[EventName] | None = None
    patterns: tuple[Pattern, ...] | None = None
    stopped_by = ""
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, Filter):
            stopped_by = f"step {number}, {step.describe()}, changes the elements"
            break
        if step.n_as_numbers:
            stopped_by = (
                f"step {number}, {step.describe()}, compares N values as numbers, which "
                "Lambda's filters cannot"
            )
            break
        if step.patterns is not None and patterns is not None:
            stopped_by = (
                f"step {number}, {step.describe()}, is a second pattern filter: Lambda ORs "
                "the filters of a mapping and cannot AND two patterns"
            )
            break
        if step.events is not None:
            events = step.events if events is None else events & step.events
        if step.patterns is not None:
            patterns = step.patterns
        if step.predicate is not None:
            stopped_by = (
                f"step {number}, {step.describe()}, is a Python predicate Lambda cannot run"
            )
            break
    if events is None and patterns is None:
        why = stopped_by or "the pipeline has no filter"
        raise PipelineError(
            f"{pipeline}.lambda_filter_criteria(): nothing before the first step that "
            f"cannot be a filter pattern ({why}); start the pipeline with "
            ".filter(events=[...]) or .filter(pattern=...) to let Lambda drop records "
            "before invoking the function"
        )
    if events is not None and not events:
        raise PipelineError(
            f"{pipeline}.lambda_filter_criteria(): the leading filters keep no event name "
            "at all (their events= do not overlap), so every record would be dropped; "
            "check the events= of the pipeline's filters"
        )
    if patterns is None:
        assert events is not None
        written = [to_json({"eventName": sorted(events)})]
    else:
        written = [to_json(merged) for p in patterns if (merged := _with_events(p, events))]
        if not written:
            raise PipelineError(
                f"{pipeline}.lambda_filter_criteria(): no pattern of the leading filters "
                "can match the event names their events= keep, so every record would be "
                "dropped; check the pipeline's filters"
            )
    if len(written) > _MAX_FILTERS:
        raise PipelineError(
            f"{pipeline}.lambda_filter_criteria(): {len(written)} patterns, but an event "
            f"source mapping takes at most {_MAX_FILTERS} filters (5 unless the quota was "
            "raised); merge patterns with $or"
        )
    for text in written:
        if len(text) > _MAX_PATTERN:
            raise PipelineError(
                f"{pipeline}.lambda_filter_criteria(): a pattern of {len(text)} characters, "
                f"but Lambda takes at most {_MAX_PATTERN}: {text[:80]}..."
            )
    return {"Filters": [{"Pattern": text} for text in written]}


def _with_events(pattern: Pattern, events: frozenset[EventName] | None) -> Mapping[str, Any] | None:
    """`pattern` narrowed to `events` (None when no event name can match both). A
    pattern whose own eventName uses operators stays as it is: broader, never narrower,
    than the pipeline (the handler applies `events=` again)."""
    source = dict(pattern.source)
    if events is None:
        return source
    names = sorted(events)
    own = source.get("eventName")
    if own is None:
        source["eventName"] = names
    elif isinstance(own, list) and all(isinstance(name, str) for name in own):
        both = [name for name in names if name in own]
        if not both:
            return None
        source["eventName"] = both
    return source
