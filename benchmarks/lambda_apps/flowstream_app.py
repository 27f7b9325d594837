"""bench_lambda.py's flowstream function: the pipeline a worker would run, as a Lambda
handler (`handler`, and `quiet_handler` without the metrics line)."""

from __future__ import annotations

from typing import Any

from lambda_apps.work import user_message

import flowstream as fs
from flowstream import sinks, sources

#: what the sink got (the benchmark empties it between invocations)
delivered: list[Any] = []

pipeline = (
    fs.Pipeline(sources.dynamodb(table="users"), name="users")
    .map(user_message)
    .to(sinks.callback(delivered.extend))
)

handler = pipeline.lambda_handler()
quiet_handler = pipeline.lambda_handler(metrics=False)
