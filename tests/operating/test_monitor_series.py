"""What a `Monitor` exports over a long life: a pipeline is watched once at a time,
shards never read are not series, and ended shards leave once their last counts were
seen."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowstream import monitor as monitor_module
from flowstream.errors import PipelineError
from flowstream.monitor import Monitor
from flowstream.report import RunReport, ShardReport, ShardState


def shards_in(m: Monitor) -> set[str]:
    return {
        s.labels["shard"]
        for family in text_string_to_metric_families(m.metrics_text().decode())
        for s in family.samples
        if s.name == "flowstream_records_read_total"
    }


def report(*states: ShardState) -> RunReport:
    run = RunReport(pipeline="orders")
    for n, state in enumerate(states):
        run.shards[f"s{n}"] = ShardReport(f"s{n}", state=state, read=n)
    return run


def test_a_second_run_of_a_running_pipeline_is_refused_and_a_finished_one_is_replaced() -> None:
    m = Monitor()
    first = report(ShardState.RUNNING)
    m.watch(first)
    m.set_phase(first, "running")
    with pytest.raises(PipelineError, match="already watches a running pipeline named 'orders'"):
        m.watch(report(ShardState.RUNNING))
    m.set_phase(first, "finished")
    m.watch(report(ShardState.RUNNING, ShardState.RUNNING))
    assert shards_in(m) == {"s0", "s1"}


def test_skipped_shards_are_not_series_and_ended_ones_leave_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = Monitor()
    run = report(ShardState.SKIPPED, ShardState.RUNNING, ShardState.ENDED)
    m.watch(run)
    assert shards_in(m) == {"s1", "s2"}  # the ended shard's last counts are still seen
    monkeypatch.setattr(monitor_module, "_GONE_FOR", 0.0)
    assert shards_in(m) == {"s1"}
    states = {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(m.metrics_text().decode())
        for s in family.samples
        if s.name == "flowstream_shards"
    }
    assert states["ended"] == 1.0  # still counted by state
    assert states["skipped"] == 1.0
