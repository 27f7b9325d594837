"""bench_lambda.py's aws-lambda-powertools function: `BatchProcessor` for DynamoDB
streams with `process_partial_response`, doing the flowstream pipeline's work with
powertools' record type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

if TYPE_CHECKING:  # as powertools imports them itself: no cost at a cold start
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
        DynamoDBRecord,
    )
    from aws_lambda_powertools.utilities.typing import LambdaContext

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)

#: what the function delivered (the benchmark empties it between invocations)
delivered: list[Any] = []


def user_message(record: DynamoDBRecord) -> dict[str, Any]:
    data = record.dynamodb
    assert data is not None
    keys, new = data.keys, data.new_image
    assert record.event_name is not None
    return {
        "pk": keys["pk"],
        "sk": keys["sk"],
        "op": record.event_name.name,
        "version": new.get("version"),
        "email": new.get("email"),
    }


def record_handler(record: DynamoDBRecord) -> None:
    delivered.append(user_message(record))


def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
