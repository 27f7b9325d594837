"""bench_lambda.py's hand-written function: a loop over `fs.decode_records(event)` doing
the flowstream pipeline's work, with the same answer (the first record not done)."""

from __future__ import annotations

from typing import Any

from lambda_apps.work import user_message

import flowstream as fs

#: what the function delivered (the benchmark empties it between invocations)
delivered: list[Any] = []


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    messages = []
    for record in fs.decode_records(event):
        try:
            messages.append(user_message(record))
        except Exception:
            delivered.extend(messages)
            return {"batchItemFailures": [{"itemIdentifier": record.sequence_number}]}
    delivered.extend(messages)
    return {"batchItemFailures": []}
