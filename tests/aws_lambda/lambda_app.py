"""A Lambda function built on `pipeline.lambda_handler()`, run by the real runtime
interface client in tests/aws_lambda/test_lambda_runtime.py
(``python -m awslambdaric lambda_app.handler``).

Its sink writes to the file named by $LAMBDA_APP_LOG: ``open <pid>`` each time it is
opened, then ``deliver <sequence number> <pk>`` for each element, so that the test sees
what was delivered, in which process, and how often the sink was opened. An order whose
new image has ``poison`` always fails; one with ``delay`` takes that many seconds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

import flowstream as fs
from flowstream import sources
from flowstream.sinks import Batch, SendResult, Sink, SinkWriter

#: the environment variable naming the sink's file
LOG_VARIABLE = "LAMBDA_APP_LOG"


class DeliveryLog(Sink):
    """Appends what it delivers to the file $LAMBDA_APP_LOG names (see the module
    docstring); the file stays open while the sink is."""

    def describe(self) -> str:
        return "delivery-log"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        async with await anyio.open_file(os.environ[LOG_VARIABLE], "a") as file:
            await file.write(f"open {os.getpid()}\n")
            await file.flush()
            yield _DeliveryLogWriter(file)


class _DeliveryLogWriter(SinkWriter):
    def __init__(self, file: anyio.AsyncFile[str]) -> None:
        self._file = file

    async def send(self, batch: Batch) -> SendResult | None:
        lines = [
            f"deliver {record.sequence_number} {value['pk']}\n"
            for value, record in zip(batch.values, batch.records, strict=True)
        ]
        await self._file.write("".join(lines))
        # flushed before the handler answers: the test reads the file once it has the answer
        await self._file.flush()
        return None


async def order_message(record: fs.Record) -> dict[str, Any]:
    pk = record.keys["pk"]
    if record.new_value("poison"):
        raise ValueError(f"order {pk} is poison")
    delay = record.new_value("delay")
    if delay:
        await anyio.sleep(float(delay))
    return {"pk": pk, "total": record.new_value("total")}


# The same pipeline a worker would run() against the table's stream; in Lambda the
# source is never opened: the event source mapping reads the stream.
pipeline = (
    fs.Pipeline(sources.dynamodb(table="orders"), name="orders")
    .filter(events=["INSERT", "MODIFY"])
    .map(order_message)
    .to(DeliveryLog())
    .on_failure(retries=0)
)

handler = pipeline.lambda_handler()
strict_handler = pipeline.lambda_handler(partial_failures=False)
