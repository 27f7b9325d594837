"""The work of every flowstream-based handler in bench_lambda.py, per record: the keys,
the event name and two attributes of the new image, as one message. (The powertools
handler does the same with powertools' record type, in its own module, so that it does
not import flowstream.)"""

from __future__ import annotations

from typing import Any

from flowstream.record import Record


def user_message(record: Record) -> dict[str, Any]:
    keys = record.keys
    return {
        "pk": keys["pk"],
        "sk": keys["sk"],
        "op": str(record.event_name),
        "version": record.new_value("version"),
        "email": record.new_value("email"),
    }
