"""The failure policy: how a failing record is retried, isolated and, in the end, either
dead-lettered (the shard goes on) or left where it is (its shard stops just before it).

Set for a whole pipeline with `Pipeline.on_failure()`, or for one step with
``.map(fn, on_failure=fs.FailurePolicy(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from flowstream.backoff import full_jitter
from flowstream.errors import PipelineError

if TYPE_CHECKING:
    from flowstream.record import Record
    from flowstream.sinks.base import Sink

__all__ = ["FailurePolicy", "is_transient"]

#: Retries of a failure that is not transient, under ``retries=None``.
_DEFAULT_RETRIES = 3


def is_transient(error: BaseException) -> bool:
    """True for a failure that goes away by itself: one that says it is retryable
    (a sink's `DeliveryError` for throttling, 5xx, timeouts, broken or refused
    connections), a timeout or connection error, or an AWS throttling or server error."""
    if getattr(error, "retryable", None) is True:
        return True
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    from flowstream.aws import is_retryable

    return is_retryable(error)


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What happens to a record that fails (a user function raised for it, or a sink
    reported it failed).

    - `retries`: attempts after the first, each after an exponential backoff with full
      jitter between 0 and min(cap, base·2ⁿ⁻¹) seconds, `backoff=(base, cap)`. An error
      that says retrying cannot help (``retryable=False``, e.g. an HTTP 400) is not
      retried. `retries=None` retries transient failures (throttling, 5xx, refused
      connections, timeouts: `is_transient`) until they succeed or the record passes
      `max_record_age`: a sink outage holds its shards back, in order, instead of
      dead-lettering them; other failures (a bug, a poison record) get 3 retries.
    - `bisect`: when a sink fails a whole batch without saying which item is to blame,
      split the batch in halves and send them in order until the failing items stand
      alone; every other item is delivered.
    - `max_record_age`: seconds (or a timedelta); a record older than this (by its
      approximate creation time) is dead-lettered without being processed or retried.
      Needs `dead_letter`.
    - `dead_letter`: a sink that receives a `DeadLetter` (the full record, the step,
      the error and the attempts) for each record that failed for good; its shard then
      goes on. Without one, the shard stops just before the record.
    """

    retries: int | None = 3
    backoff: tuple[float, float] = (0.1, 5.0)
    max_record_age: float | None = None
    bisect: bool = True
    dead_letter: Sink | None = None

    def __post_init__(self) -> None:
        _check(self)

    def may_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether retry number `attempt` (from 1) of a failure with `error` is allowed.
        With ``retries=None`` a transient error (`is_transient`) is retried for as long
        as it lasts; any other gets the default number of retries, so that a bug or a
        poison record still ends in the dead letter (or a stopped shard)."""
        if self.retries is not None:
            return attempt <= self.retries
        return attempt <= _DEFAULT_RETRIES or is_transient(error)

    def retry_limit(self, error: BaseException) -> str:
        """The retry limit for a failure with `error`, as log lines say it."""
        if self.retries is not None:
            return str(self.retries)
        return "unlimited" if is_transient(error) else str(_DEFAULT_RETRIES)

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (from 1)."""
        return full_jitter(attempt, *self.backoff)

    def too_old(self, record: Record, now: datetime | None = None) -> bool:
        """True when `record` is older than `max_record_age`."""
        if self.max_record_age is None:
            return False
        created = record.approximate_creation_time
        if created is None:
            return False
        now = now or datetime.now(UTC)
        return (now - created).total_seconds() > self.max_record_age

    def describe(self) -> str:
        base, cap = self.backoff
        retries = (
            f"retries until success (transient failures; others {_DEFAULT_RETRIES})"
            if self.retries is None
            else f"{self.retries} retries"
        )
        parts = [f"{retries}, backoff {base:g}-{cap:g}s"]
        if not self.bisect:
            parts.append("no bisect")
        if self.max_record_age is not None:
            parts.append(f"max record age {self.max_record_age:g}s")
        end = (
            f"dead-letter to {self.dead_letter.name}"
            if self.dead_letter is not None
            else "then stop the shard"
        )
        return f"on failure: {', '.join(parts)}, {end}"


def _check(policy: FailurePolicy) -> None:
    """Validate a policy when it is built; errors name the field and the fix."""
    from flowstream.sinks.base import Sink

    where = "on_failure"
    retries = policy.retries
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise PipelineError(
            f"{where} got retries={retries!r}; give a whole number of retries, 0 or more, "
            "or None to retry transient failures until they succeed"
        )
    try:
        base, cap = (float(x) for x in policy.backoff)
    except (TypeError, ValueError):
        raise PipelineError(
            f"{where} got backoff={policy.backoff!r}; give (base, cap) in seconds, e.g. (0.1, 5.0)"
        ) from None
    if not (0 <= base <= cap) or cap != cap or cap == float("inf"):
        raise PipelineError(
            f"{where} got backoff={policy.backoff!r}; base and cap must be finite seconds "
            "with 0 <= base <= cap, e.g. (0.1, 5.0)"
        )
    object.__setattr__(policy, "backoff", (base, cap))
    age = policy.max_record_age
    if age is not None:
        if isinstance(age, timedelta):
            age = age.total_seconds()
        if isinstance(age, bool) or not isinstance(age, int | float) or not age > 0:
            raise PipelineError(
                f"{where} got max_record_age={policy.max_record_age!r}; give a positive "
                "number of seconds or a timedelta, e.g. max_record_age=3600"
            )
        if age == float("inf"):
            age = None
        object.__setattr__(policy, "max_record_age", None if age is None else float(age))
    if not isinstance(policy.bisect, bool):
        raise PipelineError(f"{where} got bisect={policy.bisect!r}; give True or False")
    if policy.dead_letter is not None and not isinstance(policy.dead_letter, Sink):
        raise PipelineError(
            f"{where} got dead_letter={type(policy.dead_letter).__name__}; give a sink "
            "that takes the dead letters, e.g. sinks.jsonl('dead.jsonl') or sinks.sqs(url)"
        )
    if policy.max_record_age is not None and policy.dead_letter is None:
        raise PipelineError(
            f"{where} got max_record_age={policy.max_record_age:g} without dead_letter=; "
            "records over the age go to the dead-letter sink, never silently away: give "
            "dead_letter=sink, or drop old records on purpose with a filter on "
            "record.approximate_creation_time"
        )
