"""Tests of `sources.jsonl(path)`: replaying a file of stream records, shard by shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowstream import sources
from flowstream.errors import RecordDecodeError, SourceError
from flowstream.record import EventName, Record
from flowstream.sources import Position
from flowstream.sources.base import LATEST, TRIM_HORIZON, Page, Shard, ShardReader
from flowstream.sources.jsonl import DEFAULT_SHARD_ID, JsonlSource

SHARD_A = "shardId-00000001700000000000-aaaaaaaa"
SHARD_B = "shardId-00000001700000000000-bbbbbbbb"
# 21 and 22 digits: sorted as text, the longer would come first.
SEQ_21 = "999999999999999999999"
SEQ_22 = "1000000000000000000000"


def seq(n: int) -> str:
    return str(10**20 + n)


def line(sequence: str, shard_id: str | None = None, *, name: str = "INSERT") -> str:
    record: dict[str, object] = {
        "eventID": f"e{sequence}",
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1.7e9,
            "Keys": {"pk": {"S": f"k{sequence}"}},
            "NewImage": {"pk": {"S": f"k{sequence}"}, "n": {"N": "1"}},
            "SequenceNumber": sequence,
            "SizeBytes": 30,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }
    if shard_id is not None:
        record["shardId"] = shard_id
    return json.dumps(record)


def write(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    path.write_text("".join(item + newline for item in lines))
    return path


async def pages(reader: ShardReader, limit: int = 100) -> list[Page]:
    """Every page up to and including the one that ends the shard."""
    out: list[Page] = []
    for _ in range(limit):
        page = await reader.read()
        out.append(page)
        if page.ended:
            return out
    raise AssertionError(f"the reader did not end within {limit} reads")


async def read_shard(
    source: JsonlSource, shard_id: str, start: Position = TRIM_HORIZON
) -> list[str]:
    async with source.open() as session:
        reader = session.reader(Shard(shard_id, closed=True), start)
        return [r.sequence_number for page in await pages(reader) for r in page.records]


class TestShards:
    async def test_one_closed_shard_per_shard_id(self, tmp_path: Path) -> None:
        path = write(
            tmp_path / "r.jsonl",
            [line(seq(1), SHARD_A), line(seq(2), SHARD_B), line(seq(3)), line(seq(4), SHARD_A)],
        )
        async with sources.jsonl(path).open() as session:
            shards = await session.list_shards()
            assert sorted(shards, key=lambda s: s.shard_id) == sorted(
                [
                    Shard(SHARD_A, None, closed=True),
                    Shard(SHARD_B, None, closed=True),
                    Shard(DEFAULT_SHARD_ID, None, closed=True),
                ],
                key=lambda s: s.shard_id,
            )
            assert session.finite is True
            assert session.stream_id == f"jsonl:{path.resolve()}"

    async def test_lines_without_shard_id_form_the_default_shard(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1)), line(seq(2), SHARD_A), line(seq(3))])
        source = sources.jsonl(path)
        assert await read_shard(source, DEFAULT_SHARD_ID) == [seq(1), seq(3)]
        assert await read_shard(source, SHARD_A) == [seq(2)]
        async with source.open() as session:
            reader = session.reader(Shard(DEFAULT_SHARD_ID, closed=True), TRIM_HORIZON)
            (page,) = await pages(reader)
            assert {r.shard_id for r in page.records} == {DEFAULT_SHARD_ID}

    def test_default_shard_id_passes_botocore_validation(self) -> None:
        assert len(DEFAULT_SHARD_ID) >= 28
        assert DEFAULT_SHARD_ID.startswith("shardId-")

    async def test_records_are_sorted_by_sequence_number_as_numbers(self, tmp_path: Path) -> None:
        path = write(
            tmp_path / "r.jsonl",
            [
                line(SEQ_22, SHARD_A),
                line(seq(5), SHARD_A),
                line(SEQ_21, SHARD_A),
                line(seq(2), SHARD_A),
            ],
        )
        assert await read_shard(sources.jsonl(path), SHARD_A) == [seq(2), seq(5), SEQ_21, SEQ_22]

    async def test_records_keep_their_content(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1), SHARD_A, name="REMOVE")])
        async with sources.jsonl(path).open() as session:
            (page,) = await pages(session.reader(Shard(SHARD_A, closed=True), TRIM_HORIZON))
        (record,) = page.records
        assert isinstance(record, Record)
        assert record.event_name is EventName.REMOVE
        assert record.keys == {"pk": f"k{seq(1)}"}
        assert record.new_image == {"pk": f"k{seq(1)}", "n": 1}
        assert record.shard_id == SHARD_A
        assert json.loads(record.to_json()) == json.loads(line(seq(1), SHARD_A, name="REMOVE"))

    @pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
    async def test_blank_lines_and_line_endings(self, tmp_path: Path, newline: str) -> None:
        path = write(
            tmp_path / "r.jsonl", ["", line(seq(1)), "   ", line(seq(2)), ""], newline=newline
        )
        assert await read_shard(sources.jsonl(path), DEFAULT_SHARD_ID) == [seq(1), seq(2)]

    async def test_empty_file_has_no_shards(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.jsonl"
        path.write_bytes(b"")
        async with sources.jsonl(path).open() as session:
            assert await session.list_shards() == []

    def test_describe(self, tmp_path: Path) -> None:
        assert sources.jsonl(tmp_path / "r.jsonl").describe() == f"jsonl({tmp_path / 'r.jsonl'})"


class TestReader:
    @pytest.mark.parametrize(
        ("count", "page_size", "sizes"),
        [
            pytest.param(5, 2, [2, 2, 1], id="5-by-2"),
            pytest.param(4, 2, [2, 2], id="4-by-2-exact"),
            pytest.param(3, 1000, [3], id="one-page"),
            pytest.param(1, 1, [1], id="1-by-1"),
        ],
    )
    async def test_pages_of_page_size_and_the_last_one_ends(
        self, tmp_path: Path, count: int, page_size: int, sizes: list[int]
    ) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(i), SHARD_A) for i in range(count)])
        async with sources.jsonl(path, page_size=page_size).open() as session:
            got = await pages(session.reader(Shard(SHARD_A, closed=True), TRIM_HORIZON))
        assert [len(p.records) for p in got] == sizes
        assert [(p.caught_up, p.ended) for p in got] == [(False, False)] * (len(sizes) - 1) + [
            (True, True)
        ]
        assert [r.sequence_number for p in got for r in p.records] == [seq(i) for i in range(count)]

    async def test_a_read_after_the_end_is_empty_and_ended(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1), SHARD_A)])
        async with sources.jsonl(path).open() as session:
            reader = session.reader(Shard(SHARD_A, closed=True), TRIM_HORIZON)
            await reader.read()
            again = await reader.read()
        assert (again.records, again.caught_up, again.ended) == ([], True, True)

    async def test_readers_are_independent(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(i), SHARD_A) for i in range(3)])
        async with sources.jsonl(path, page_size=2).open() as session:
            first = session.reader(Shard(SHARD_A, closed=True), TRIM_HORIZON)
            await first.read()
            second = session.reader(Shard(SHARD_A, closed=True), TRIM_HORIZON)
            assert [r.sequence_number for r in (await second.read()).records] == [seq(0), seq(1)]

    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            pytest.param(TRIM_HORIZON, [1, 2, 3, 4], id="trim-horizon"),
            pytest.param(LATEST, [], id="latest"),
            pytest.param(Position.after(seq(2)), [3, 4], id="after"),
            pytest.param(Position.at(seq(2)), [2, 3, 4], id="at"),
            pytest.param(Position.after(seq(0)), [1, 2, 3, 4], id="after-before-first"),
            pytest.param(Position.after(seq(4)), [], id="after-last"),
            pytest.param(Position.at(seq(9)), [], id="at-beyond"),
        ],
    )
    async def test_start_positions(
        self, tmp_path: Path, start: Position, expected: list[int]
    ) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(i), SHARD_A) for i in (1, 2, 3, 4)])
        assert await read_shard(sources.jsonl(path), SHARD_A, start) == [seq(i) for i in expected]

    async def test_between_sequence_numbers(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(i), SHARD_A) for i in (10, 20, 30)])
        source = sources.jsonl(path)
        assert await read_shard(source, SHARD_A, Position.after(seq(15))) == [seq(20), seq(30)]
        assert await read_shard(source, SHARD_A, Position.at(seq(15))) == [seq(20), seq(30)]

    async def test_sequence_numbers_compare_as_numbers(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(SEQ_21, SHARD_A), line(SEQ_22, SHARD_A)])
        source = sources.jsonl(path)
        assert await read_shard(source, SHARD_A, Position.after(SEQ_21)) == [SEQ_22]

    async def test_latest_start_reads_nothing_and_ends(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1), SHARD_A)])
        async with sources.jsonl(path).open() as session:
            (page,) = await pages(session.reader(Shard(SHARD_A, closed=True), LATEST))
        assert (page.records, page.caught_up, page.ended) == ([], True, True)

    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            pytest.param("trim_horizon", TRIM_HORIZON, id="trim_horizon"),
            pytest.param("latest", LATEST, id="latest"),
            pytest.param(Position.after(seq(1)), Position.after(seq(1)), id="position"),
        ],
    )
    def test_start_option(self, tmp_path: Path, start: Position | str, expected: Position) -> None:
        assert sources.jsonl(tmp_path / "r.jsonl", start=start).start == expected  # type: ignore[arg-type]

    def test_bad_start_option(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"start='oldest' is not a start position"):
            sources.jsonl(tmp_path / "r.jsonl", start="oldest")  # type: ignore[arg-type]

    @pytest.mark.parametrize("page_size", [0, -1])
    def test_page_size_must_be_positive(self, tmp_path: Path, page_size: int) -> None:
        with pytest.raises(SourceError, match=rf"page_size={page_size}\) must be at least 1"):
            sources.jsonl(tmp_path / "r.jsonl", page_size=page_size)

    async def test_unknown_shard_is_a_source_error(self, tmp_path: Path) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1), SHARD_A)])
        async with sources.jsonl(path).open() as session:
            with pytest.raises(SourceError, match=rf"no shard '{SHARD_B}'"):
                session.reader(Shard(SHARD_B, closed=True), TRIM_HORIZON)


class TestErrors:
    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            pytest.param("{not json", r"malformed|invalid|Expected", id="not-json"),
            pytest.param('{"Records":[]}', r"missing required field `eventID`", id="a-page"),
            pytest.param(
                line(seq(2)).replace('"INSERT"', '"UPSERT"'),
                r"Invalid enum value 'UPSERT'",
                id="wrong-event-name",
            ),
            pytest.param(
                '{"eventID":"1","eventName":"INSERT"}',
                r"missing required field `dynamodb`",
                id="no-dynamodb",
            ),
            pytest.param(
                line("12ab"), r"has SequenceNumber '12ab'; DynamoDB sequence numbers", id="bad-seq"
            ),
            pytest.param(line(""), r"has SequenceNumber ''", id="empty-seq"),
        ],
    )
    async def test_bad_line_names_file_and_line(
        self, tmp_path: Path, bad: str, message: str
    ) -> None:
        path = write(tmp_path / "r.jsonl", [line(seq(1)), "", bad, line(seq(3))])
        with pytest.raises(RecordDecodeError, match=message) as info:
            async with sources.jsonl(path).open():
                pass
        assert str(info.value).startswith(f"{path}:3 ")

    async def test_missing_file_is_a_source_error(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.jsonl"
        with pytest.raises(SourceError, match=r"cannot read .*nope\.jsonl: No such file"):
            async with sources.jsonl(path).open():
                pass

    async def test_a_directory_is_a_source_error(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"jsonl source cannot read"):
            async with sources.jsonl(tmp_path).open():
                pass
