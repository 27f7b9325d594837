"""`.filter(pattern=...)`: records matched in Lambda's JSON shape, as Lambda filters an
event source mapping's records, through a real run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import flowstream as fs
from flowstream import patterns, sinks
from flowstream.record_view import lambda_view
from flowstream.testing import MemoryStream, lambda_event


def orders() -> MemoryStream:
    stream = MemoryStream(table="orders")
    shard = stream.add_shard()
    created = datetime(2030, 1, 1, tzinfo=UTC)  # the others: now
    stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a", "status": "active", "total": 5})
    stream.put(shard, "MODIFY", {"pk": "b"}, {"pk": "b", "status": "closed", "total": 50})
    stream.put(
        shard,
        "MODIFY",
        {"pk": "c"},
        {"pk": "c", "status": "active", "total": 500},
        created_at=created,
    )
    stream.put(shard, "REMOVE", {"pk": "a"}, None, {"pk": "a", "status": "active", "total": 5})
    return stream


async def kept(stream: MemoryStream, **options: Any) -> list[tuple[str, str]]:
    out = sinks.collect()
    pipeline = (
        fs.Pipeline(stream)
        .filter(**options)
        .map(lambda r: (r.event_name.value, r.keys["pk"]))
        .to(out)
    )
    await pipeline.run(drain=True)
    return list(out.items)


class TestFilterPattern:
    async def test_event_name_and_a_typed_image_attribute(self) -> None:
        pattern = {"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"status": {"S": ["active"]}}}}
        assert await kept(orders(), pattern=pattern) == [("MODIFY", "c")]

    async def test_a_list_of_patterns_keeps_records_matching_any(self) -> None:
        first = {"eventName": ["REMOVE"]}
        second = '{"dynamodb": {"Keys": {"pk": {"S": ["b"]}}}}'
        assert await kept(orders(), pattern=[first, second]) == [("MODIFY", "b"), ("REMOVE", "a")]

    async def test_numeric_never_matches_n_unless_opted_in(self) -> None:
        pattern = {"dynamodb": {"NewImage": {"total": {"N": [{"numeric": [">", 10]}]}}}}
        assert await kept(orders(), pattern=pattern) == []
        assert await kept(orders(), pattern=pattern, n_as_numbers=True) == [
            ("MODIFY", "b"),
            ("MODIFY", "c"),
        ]

    async def test_old_image_and_exists(self) -> None:
        pattern = {"dynamodb": {"OldImage": {"status": {"S": [{"exists": True}]}}}}
        assert await kept(orders(), pattern=pattern) == [("REMOVE", "a")]

    async def test_creation_time_is_a_number_of_epoch_seconds(self) -> None:
        after = datetime(2029, 12, 31, tzinfo=UTC).timestamp()
        pattern = {"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", after]}]}}
        assert await kept(orders(), pattern=pattern) == [("MODIFY", "c")]

    async def test_with_events_and_a_predicate_all_must_hold(self) -> None:
        active = {"dynamodb": {"NewImage": {"status": {"S": ["active"]}}}}
        got = await kept(
            orders(),
            pattern=active,
            events=["INSERT", "MODIFY"],
            predicate=lambda r: r.keys["pk"] != "a",
        )
        assert got == [("MODIFY", "c")]

    def test_an_invalid_pattern_names_the_step(self) -> None:
        with pytest.raises(fs.PatternError) as raised:
            fs.Pipeline(orders()).filter(pattern=[{"eventName": ["INSERT"]}, {"eventName": []}])
        assert ".filter() at step 1 (pattern 2): eventName: an empty array" in str(raised.value)

    def test_a_record_the_pattern_cannot_read_is_a_failure_of_that_record_alone(self) -> None:
        def record(n: int, new_image: object) -> dict[str, Any]:
            return {
                "eventID": str(n),
                "eventName": "MODIFY",
                "eventSource": "aws:dynamodb",
                "dynamodb": {
                    "Keys": {"pk": {"S": f"k{n}"}},
                    "NewImage": new_image,
                    "SequenceNumber": str(100 + n),
                },
            }

        active = {"status": {"S": "active"}}
        event = {"Records": [record(1, active), record(2, "not an image"), record(3, active)]}
        out, letters = sinks.collect(), sinks.collect()
        handler = (
            fs.Pipeline(orders())
            .filter(pattern={"dynamodb": {"NewImage": {"status": {"S": ["active"]}}}})
            .map(lambda r: r.keys["pk"])
            .to(out)
            .on_failure(retries=0, dead_letter=letters)
            .lambda_handler(metrics=False)
        )
        try:
            assert handler(event, None) == {"batchItemFailures": []}
        finally:
            handler.close()
        assert out.items == ["k1", "k3"]
        (letter,) = letters.items
        assert letter.record.sequence_number == "102"
        assert letter.error.type == "RecordDecodeError"
        assert "NewImage is not an object of DynamoDB attributes" in letter.error.message

    def test_n_as_numbers_needs_a_pattern(self) -> None:
        with pytest.raises(fs.PipelineError, match="n_as_numbers=True but no pattern="):
            fs.Pipeline(orders()).filter(events="INSERT", n_as_numbers=True)


def test_the_lambda_view_is_the_event_lambda_sends() -> None:
    stream = orders()
    for record in stream.records():
        (sent,) = lambda_event([record])["Records"]
        view = lambda_view(record)
        parts = ("Keys", "NewImage", "OldImage")
        images = {k: dict(v) for k, v in view["dynamodb"].items() if k in parts}
        sent["eventSourceARN"] = record.event_source_arn  # a MemoryStream has no ARN
        assert {**view, "dynamodb": {**view["dynamodb"], **images}} == sent
        assert patterns.compile({"eventSource": ["aws:dynamodb"]}).matches(view)
