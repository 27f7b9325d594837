"""A Lambda function's cold start imports only what its pipeline uses: building and
invoking a handler whose sinks call no AWS service loads neither aiobotocore, botocore,
aiohttp nor redis-py (together about 300 ms of imports), though the pipeline names a
DynamoDB source; the sinks that need them load them when they are built or opened.
Checked in a fresh interpreter, as Lambda starts one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HEAVY = ("aiobotocore", "botocore", "aiohttp", "redis")

EVENT = Path(__file__).resolve().parent.parent / "events" / "lambda-dynamodb-event.json"

HANDLER = f"""
import json, sys
import flowstream as fs
from flowstream import sinks, sources

got = []
pipeline = (
    fs.Pipeline(sources.dynamodb(table="users"), name="users")
    .filter(events=["INSERT"])
    .map(lambda r: r.keys["Id"])
    .to(sinks.callback(got.extend))
)
handler = pipeline.lambda_handler(metrics=False)
with open({str(EVENT)!r}) as f:
    event = json.load(f)
answer = handler(event, None)
print(json.dumps({{"answer": answer, "got": got,
                  "loaded": sorted(m for m in HEAVY if m in sys.modules)}}))
"""


def run(code: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def test_a_handler_without_aws_sinks_imports_no_aws_or_http_client() -> None:
    out = run(HANDLER)
    assert out["answer"] == {"batchItemFailures": []}
    assert out["got"] == [101, 102]
    assert out["loaded"] == []


def test_a_redis_sink_loads_redis_py_when_it_is_built() -> None:
    code = """
import json, sys
import flowstream as fs
before = sorted(m for m in HEAVY if m in sys.modules)
fs.sinks.redis("redis://127.0.0.1:6379/0", key="user:{pk}")
print(json.dumps({"before": before, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""
    out = run(code)
    assert out["before"] == []
    assert out["loaded"] == ["redis"]
