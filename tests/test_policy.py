"""`FailurePolicy(retries=None)`: accepted (also through `on_failure`), described as
retrying until success, and allowed every retry; a bad `retries` is refused naming
`retries` and the None choice."""

from __future__ import annotations

import re
from typing import Any

import pytest

import flowstream as fs
from flowstream import sinks
from flowstream.testing import MemoryStream


def test_retries_none_is_accepted_and_allows_every_retry() -> None:
    policy = fs.FailurePolicy(retries=None)
    assert policy.retries is None
    assert all(policy.may_retry(n) for n in (1, 10, 10_000_000))
    assert policy.retries_text == "unlimited"


def test_a_count_allows_that_many_retries() -> None:
    policy = fs.FailurePolicy(retries=2)
    assert [policy.may_retry(n) for n in (1, 2, 3)] == [True, True, False]
    assert policy.retries_text == "2"
    assert not fs.FailurePolicy(retries=0).may_retry(1)


def test_describe_says_until_success() -> None:
    assert fs.FailurePolicy(retries=None, backoff=(1, 60)).describe() == (
        "on failure: retries until success, backoff 1-60s, then stop the shard"
    )
    aged = fs.FailurePolicy(retries=None, max_record_age=3600, dead_letter=sinks.collect())
    assert aged.describe() == (
        "on failure: retries until success, backoff 0.1-5s, max record age 3600s, "
        "dead-letter to collect"
    )
    assert fs.FailurePolicy(retries=3).describe().startswith("on failure: 3 retries,")


def test_on_failure_takes_it_and_the_plan_shows_it() -> None:
    pipeline = (
        fs.Pipeline(MemoryStream(), name="p")
        .to(sinks.collect())
        .on_failure(retries=None, backoff=(1, 60), dead_letter=sinks.collect())
    )
    assert pipeline.failure_policy.retries is None
    assert "on failure: retries until success, backoff 1-60s, dead-letter to collect" in (
        pipeline.describe()
    )


@pytest.mark.parametrize("retries", [-1, "x", 2.5, True, "3"])
def test_bad_retries_are_refused_naming_retries_and_none(retries: Any) -> None:
    message = (
        f"on_failure got retries={retries!r}; give a whole number of retries, 0 or more, "
        "or None to retry retryable failures until they succeed"
    )
    with pytest.raises(fs.PipelineError, match=re.escape(message)):
        fs.FailurePolicy(retries=retries)
    with pytest.raises(fs.PipelineError, match=re.escape(message)):
        fs.Pipeline(MemoryStream()).on_failure(retries=retries)
