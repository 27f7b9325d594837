"""`FailurePolicy(retries=None)`: accepted (also through `on_failure`), described as
retrying until success, and allowed every retry; a bad `retries` is refused naming
`retries` and the None choice."""

from __future__ import annotations

import re
from typing import Any

import pytest

import flowstream as fs
from flowstream import sinks
from flowstream.policy import is_transient
from flowstream.testing import MemoryStream

TRANSIENT = [
    fs.DeliveryError("HTTP 503", retryable=True, status=503),
    TimeoutError("read timed out"),
    ConnectionRefusedError(111, "Connection refused"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_retries_none_retries_a_transient_failure_for_as_long_as_it_lasts(
    error: BaseException,
) -> None:
    policy = fs.FailurePolicy(retries=None)
    assert policy.retries is None
    assert is_transient(error)
    assert all(policy.may_retry(n, error) for n in (1, 10, 10_000_000))
    assert policy.retry_limit(error) == "unlimited"


@pytest.mark.parametrize(
    "error",
    [KeyError("price"), ValueError("bad value"), fs.DeliveryError("HTTP 400", retryable=False)],
    ids=lambda e: type(e).__name__,
)
def test_retries_none_gives_a_bug_or_a_poison_record_three_retries(error: Exception) -> None:
    policy = fs.FailurePolicy(retries=None)
    assert not is_transient(error)
    assert [policy.may_retry(n, error) for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert policy.retry_limit(error) == "3"


def test_a_count_allows_that_many_retries() -> None:
    policy = fs.FailurePolicy(retries=2)
    error = TimeoutError()
    assert [policy.may_retry(n, error) for n in (1, 2, 3)] == [True, True, False]
    assert policy.retry_limit(error) == "2"
    assert not fs.FailurePolicy(retries=0).may_retry(1, error)


def test_describe_says_until_success() -> None:
    assert fs.FailurePolicy(retries=None, backoff=(1, 60)).describe() == (
        "on failure: retries until success (transient failures; others 3), backoff 1-60s, "
        "then stop the shard"
    )
    aged = fs.FailurePolicy(retries=None, max_record_age=3600, dead_letter=sinks.collect())
    assert aged.describe() == (
        "on failure: retries until success (transient failures; others 3), backoff 0.1-5s, "
        "max record age 3600s, dead-letter to collect"
    )
    assert fs.FailurePolicy(retries=3).describe().startswith("on failure: 3 retries,")


def test_on_failure_takes_it_and_the_plan_shows_it() -> None:
    pipeline = (
        fs.Pipeline(MemoryStream(), name="p")
        .to(sinks.collect())
        .on_failure(retries=None, backoff=(1, 60), dead_letter=sinks.collect())
    )
    assert pipeline.failure_policy.retries is None
    assert (
        "on failure: retries until success (transient failures; others 3), backoff 1-60s, "
        "dead-letter to collect"
    ) in pipeline.describe()


@pytest.mark.parametrize("retries", [-1, "x", 2.5, True, "3"])
def test_bad_retries_are_refused_naming_retries_and_none(retries: Any) -> None:
    message = (
        f"on_failure got retries={retries!r}; give a whole number of retries, 0 or more, "
        "or None to retry transient failures until they succeed"
    )
    with pytest.raises(fs.PipelineError, match=re.escape(message)):
        fs.FailurePolicy(retries=retries)
    with pytest.raises(fs.PipelineError, match=re.escape(message)):
        fs.Pipeline(MemoryStream()).on_failure(retries=retries)


async def test_retries_none_still_dead_letters_a_record_a_step_fails_on_every_time() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    for n in range(3):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})

    def price(record: fs.Record) -> Any:
        image = record.new_image or {}
        if image["n"] == 1:
            raise KeyError("price")  # a bug: no number of retries fixes it
        return image["n"]

    out, dead = sinks.collect(), sinks.collect()
    pipeline = (
        fs.Pipeline(stream, name="p")
        .map(price)
        .to(out)
        .on_failure(retries=None, backoff=(0, 0), dead_letter=dead)
    )
    report = await pipeline.run(drain=True)
    assert out.items == [0, 2]
    (letter,) = dead.items
    assert letter.reason == "retries_exhausted"
    assert letter.attempts == 4  # the first try and the 3 retries a non-transient error gets
    assert report.shards[shard].retries == 3
