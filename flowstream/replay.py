"""Replaying dead letters: their records go through a pipeline's steps and sinks again,
once the cause of their failure is fixed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowstream.errors import PipelineError
from flowstream.pipeline import Pipeline
from flowstream.sources.dead_letters import Letters, dead_letters

if TYPE_CHECKING:
    from flowstream.report import RunReport

__all__ = ["replay_dead_letters"]


async def replay_dead_letters(
    pipeline: Pipeline[Any], letters: Letters, *, only_pipeline: str | None = None
) -> RunReport:
    """Feed the records of dead letters through `pipeline` again and return the report.

    `letters` is the path of a jsonl file of letters or an iterable of letters (see
    `sources.dead_letters()`); `only_pipeline` replays only the letters that pipeline
    wrote. The records keep their original shards, each in sequence order and each
    record once; the pipeline's source is not read and no checkpoint is written.

    A record that fails again follows the pipeline's `on_failure()`: it becomes a new
    dead letter in the pipeline's dead-letter sink, or its shard stops and
    `ShardStoppedError` is raised (its `report` says where) after the other shards are
    done. `max_record_age` does not apply, in the pipeline's policy or a step's own: a
    dead letter is old by the time it is replayed. Nothing is removed from `letters`:
    delete them only once this returns.
    """
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(
            f"replay_dead_letters() got {type(pipeline).__name__} as its pipeline; pass the "
            "fs.Pipeline whose steps and sinks the records should go through again"
        )
    source = dead_letters(letters, only_pipeline=only_pipeline)
    replay = pipeline.with_source(source)._without_record_age()
    return await replay.run(drain=True)
