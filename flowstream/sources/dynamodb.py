"""`sources.dynamodb(...)`: a DynamoDB stream, read through aiobotocore.

GetRecords, the call every shard makes several times a second, skips botocore's request
pipeline and shape parser: it is signed by flowstream and sent through the client's
aiobotocore HTTP session (`get_records.py`), and msgspec decodes the raw body into lazy
records (DESIGN.md §4). Every other call goes through the aiobotocore client. A client
that path cannot serve makes GetRecords itself, with a ``before-parse`` handler that
hands the raw body through; should that handler not run either, the parsed response is
decoded instead: slower, same records.

Each shard reader paces itself: it polls again at once after a page with records, waits
longer after each empty page up to `idle_interval`, and never calls GetRecords more
than `max_polls_per_second` times a second. Throttling, server errors and broken
connections are retried with backoff and jitter; an expired iterator is renewed after
the last record read; trimmed data is an error unless `on_trimmed="skip"`.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, final

import anyio
import msgspec

from flowstream import log_limit
from flowstream.aws import (
    configuration_error,
    create_client,
    error_code,
    error_message,
    is_retryable,
    is_setup_error,
)
from flowstream.backoff import Backoff
from flowstream.errors import (
    FlowstreamError,
    SourceError,
    StreamNotFoundError,
    TrimmedDataError,
)
from flowstream.record import decode_page, decode_records
from flowstream.sources.base import (
    TRIM_HORIZON,
    Page,
    Position,
    Shard,
    ShardReader,
    Source,
    StartSpec,
    StreamSession,
    parse_start,
)
from flowstream.sources.lag import PollLag

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["DynamoDBSource", "dynamodb"]

logger = logging.getLogger("flowstream")

_ARN: Final = re.compile(
    r"^arn:aws[a-z-]*:dynamodb:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"table/(?P<table>[A-Za-z0-9_.-]{1,255})/stream/(?P<label>[^/\s]+)$"
)
_RAW_BODY: Final = "_flowstream_raw_body"
_STREAMS: Final = "DynamoDB Streams"
_OPENING_ATTEMPTS: Final = 5
_SHARDS_PER_DESCRIBE: Final = 100  # DescribeStream's largest Limit
#: Empty pages in a row that count as read to the shard's current end.
_EMPTY_PAGES_CAUGHT_UP: Final = 2


def _keep_raw_body(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
) -> None:
    """``before-parse`` handler for GetRecords: hand the body through untouched and give
    the shape parser an empty object to walk. Error bodies parse as usual."""
    if response_dict.get("status_code", 500) < 300:
        customized_response_dict[_RAW_BODY] = response_dict["body"]
        response_dict["body"] = b"{}"


@final
class DynamoDBSource(Source):
    """A DynamoDB stream as a pipeline source; build it with `sources.dynamodb()`."""

    def __init__(
        self,
        table: str | None,
        *,
        stream_arn: str | None,
        start: StartSpec,
        endpoint_url: str | None,
        region: str | None,
        session: AioSession | None,
        idle_interval: float,
        max_polls_per_second: float,
        page_limit: int,
        discovery_interval: float,
        on_trimmed: Literal["error", "skip"],
        max_connections: int,
    ) -> None:
        if (table is None) == (stream_arn is None):
            raise SourceError(
                "sources.dynamodb() needs exactly one of table= (a table name; its latest "
                "stream is read) or stream_arn= (a stream ARN)"
            )
        if stream_arn is not None:
            match = _ARN.match(stream_arn)
            if match is None:
                raise SourceError(
                    f"stream_arn={stream_arn!r} is not a DynamoDB stream ARN; it looks like "
                    "arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL (DescribeTable's "
                    "LatestStreamArn), or pass table= instead"
                )
            region = region or match["region"]
        if not 1 <= page_limit <= 1000:
            raise SourceError(
                f"page_limit={page_limit} must be between 1 and 1000 (GetRecords' Limit)"
            )
        if not (
            math.isfinite(idle_interval)
            and math.isfinite(max_polls_per_second)
            and idle_interval >= 0
            and max_polls_per_second > 0
        ):
            raise SourceError(
                f"idle_interval={idle_interval} must be a finite number of seconds >= 0 and "
                f"max_polls_per_second={max_polls_per_second} a finite number > 0 (DynamoDB "
                "allows 5 GetRecords per second per shard)"
            )
        if on_trimmed not in ("error", "skip"):
            raise SourceError(f"on_trimmed={on_trimmed!r} must be 'error' or 'skip'")
        self.table = table
        self.stream_arn = stream_arn
        self.start = parse_start(start)
        self.endpoint_url = endpoint_url
        self.region = region
        self.session = session
        self.idle_interval = idle_interval
        self.min_poll_gap = 1.0 / max_polls_per_second
        self.page_limit = page_limit
        self.discovery_interval = discovery_interval
        self.on_trimmed = on_trimmed
        self.max_connections = max_connections
        # False: GetRecords through the aiobotocore client, as every other call (tests
        # compare both paths)
        self.fast_get_records = True

    def describe(self) -> str:
        target = f"table={self.table!r}" if self.table else f"stream_arn={self.stream_arn!r}"
        return f"dynamodb({target})"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        async with AsyncExitStack() as stack:
            stream_arn = self.stream_arn or await self._latest_stream_arn(stack)
            try:
                streams = await stack.enter_async_context(
                    create_client(
                        "dynamodbstreams",
                        session=self.session,
                        region=self.region,
                        endpoint_url=self.endpoint_url,
                        max_connections=self.max_connections,
                    )
                )
            except Exception as exc:
                raise self._setup_error(exc, _STREAMS) from None
            streams.meta.events.register("before-parse.dynamodb-streams.GetRecords", _keep_raw_body)
            session = _DynamoDBSession(self, streams, stream_arn)
            await session.check()
            yield session

    async def _latest_stream_arn(self, stack: AsyncExitStack) -> str:
        try:
            dynamodb = await stack.enter_async_context(
                create_client(
                    "dynamodb",
                    session=self.session,
                    region=self.region,
                    endpoint_url=self.endpoint_url,
                )
            )
        except Exception as exc:
            raise self._setup_error(exc, "DynamoDB") from None
        try:
            table = (await dynamodb.describe_table(TableName=self.table))["Table"]
        except Exception as exc:
            if error_code(exc) == "ResourceNotFoundException":
                region = self.region or dynamodb.meta.region_name
                raise SourceError(
                    f"table {self.table!r} does not exist in {region}"
                    f"{' at ' + self.endpoint_url if self.endpoint_url else ''}; check the "
                    "table name, the region (region= or AWS_DEFAULT_REGION) and the endpoint"
                ) from None
            raise self._setup_error(exc, "DynamoDB") from None
        spec = table.get("StreamSpecification") or {}
        arn = table.get("LatestStreamArn")
        if not arn or not spec.get("StreamEnabled", False):
            raise SourceError(
                f"table {self.table!r} has no enabled stream; enable one with "
                "StreamSpecification={'StreamEnabled': True, 'StreamViewType': "
                "'NEW_AND_OLD_IMAGES'} (UpdateTable), or pass stream_arn= of an existing stream"
            )
        return str(arn)

    def _setup_error(self, exc: Exception, what: str) -> Exception:
        error = configuration_error(exc, SourceError, what=what, endpoint_url=self.endpoint_url)
        if error is not None:
            return error
        if isinstance(exc, SourceError):
            return exc
        return SourceError(
            f"{what} failed while opening {self.describe()}: {type(exc).__name__}: {exc}"
        )


class _DynamoDBSession(StreamSession):
    def __init__(self, source: DynamoDBSource, client: Any, stream_arn: str) -> None:
        self.source = source
        self.client = client
        self.stream_id = stream_arn
        self.discovery_interval = source.discovery_interval
        # Tickets order events in this session: a listing that began after a shard's
        # end was read holds that shard's children (a closed shard's children exist).
        self._tickets = itertools.count()
        self._ended: dict[str, int] = {}  # shard -> ticket of its end; children not looked up
        self._listing: tuple[int, list[Shard]] | None = None  # the latest full listing
        if source.fast_get_records:
            from flowstream.sources.get_records import fast_get_records  # botocore's parser

            self._fast_get_records = fast_get_records(client)
        else:
            self._fast_get_records = None
        self.lag = PollLag(stream_arn, source.idle_interval)

    async def get_records(self, iterator: str, limit: int) -> bytes | dict[str, Any]:
        """One GetRecords: the raw body, or (through the client) its response."""
        fast = self._fast_get_records
        if fast is not None and fast.ready:
            return await fast(iterator, limit)
        response: dict[str, Any] = await self.client.get_records(
            ShardIterator=iterator, Limit=limit
        )
        return response

    async def check(self) -> None:
        """Fail fast, with a clear error, when the stream cannot be read at all."""
        try:
            response = await self._call(
                "describe_stream", _opening=True, StreamArn=self.stream_id, Limit=1
            )
        except FlowstreamError:
            raise  # _call already said what is wrong and how to fix it
        except Exception as exc:
            raise self._error(exc, opening=True) from None
        description = response["StreamDescription"]
        status = description.get("StreamStatus")
        if status in ("DISABLED", "DISABLING"):
            logger.warning(
                "stream %s is %s: its shards are read to their end, no new records will come",
                self.stream_id,
                status,
            )

    def _error(self, exc: Exception, *, opening: bool = False) -> Exception:
        if error_code(exc) == "ResourceNotFoundException":
            return StreamNotFoundError(
                f"stream {self.stream_id} does not exist (deleted, or the table's stream was "
                f"disabled and replaced): {error_message(exc)}; point the source at the table's "
                "current stream (table= follows LatestStreamArn)"
            )
        error = configuration_error(
            exc, SourceError, what=_STREAMS, endpoint_url=self.source.endpoint_url
        )
        if error is not None:
            return error
        if opening:
            return SourceError(
                f"DescribeStream of {self.stream_id} failed: {type(exc).__name__}: {exc}"
            )
        return exc

    async def _call(self, operation: str, *, _opening: bool = False, **params: Any) -> Any:
        """Call `operation`, retrying throttling and server errors with backoff. While
        opening, an endpoint that cannot be reached fails at once and throttling is
        retried a few times only: a setup problem must not look like a hang."""
        backoff = Backoff()
        method = getattr(self.client, operation)
        while True:
            try:
                return await method(**params)
            except Exception as exc:
                give_up = _opening and (backoff.attempt >= _OPENING_ATTEMPTS or is_setup_error(exc))
                if give_up or not is_retryable(exc):
                    error = self._error(exc)
                    if error is exc:
                        raise
                    raise error from exc
                delay = backoff.next_delay()
                code = error_code(exc) or type(exc).__name__
                log_limit.warn(
                    logger,
                    (self.stream_id, operation, code),
                    "%s on %s failed (%s); retrying in %.2fs",
                    operation,
                    self.stream_id,
                    code,
                    delay,
                )
                await anyio.sleep(delay)

    async def _describe(self, **extra: Any) -> list[Shard]:
        ticket = next(self._tickets)
        shards: list[Shard] = []
        start: str | None = None
        while True:
            params: dict[str, Any] = {"StreamArn": self.stream_id, "Limit": 100, **extra}
            if start is not None:
                params["ExclusiveStartShardId"] = start
            description = (await self._call("describe_stream", **params))["StreamDescription"]
            for item in description.get("Shards", ()):
                ranges = item.get("SequenceNumberRange") or {}
                shards.append(
                    Shard(
                        item["ShardId"],
                        item.get("ParentShardId"),
                        closed="EndingSequenceNumber" in ranges,
                        starting_sequence_number=ranges.get("StartingSequenceNumber"),
                        ending_sequence_number=ranges.get("EndingSequenceNumber"),
                    )
                )
            start = description.get("LastEvaluatedShardId")
            if not start:
                if not extra:
                    self._listing = (ticket, shards)
                return shards

    async def list_shards(self) -> Sequence[Shard]:
        shards = await self._describe()
        # The scheduler takes the children of shards that ended before a relisting from
        # the listing itself: it will not ask for them.
        listed = self._listing[0] if self._listing is not None else -1
        self._ended = {s: t for s, t in self._ended.items() if t > listed}
        return shards

    def shard_ended(self, shard_id: str) -> None:
        """A reader read `shard_id` to its end: its children may be looked up."""
        self._ended[shard_id] = next(self._tickets)

    async def children_of(self, shard_id: str) -> Sequence[Shard]:
        ended = self._ended.pop(shard_id, None)
        listed, listing = self._listing or (-1, [])
        if ended is not None and listed > ended:
            shards = listing  # listed after the end was read: the children are in it
        elif self._listing_is_cheaper(1 + sum(t > listed for t in self._ended.values())):
            shards = await self._describe()
        else:
            shards = await self._describe(ShardFilter={"Type": "CHILD_SHARDS", "ShardId": shard_id})
        # An endpoint that ignores the filter answers with every shard.
        return [s for s in shards if s.parent_shard_id == shard_id]

    def _listing_is_cheaper(self, waiting: int) -> bool:
        """Whether listing every shard takes fewer calls than a filtered call for each of
        the `waiting` ended shards: it does when many end together (the rollover ends
        them all), and the one listing answers them all."""
        known = len(self._listing[1]) if self._listing is not None else 0
        return waiting > max(1, math.ceil(known / _SHARDS_PER_DESCRIBE))

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return _DynamoDBReader(self, shard, start)


class _DynamoDBReader(ShardReader):
    """Reads one shard: iterator management, pacing, retries, trimmed data."""

    def __init__(self, session: _DynamoDBSession, shard: Shard, start: Position) -> None:
        self._session = session
        self._source = session.source
        self._shard = shard
        self._start = start
        self._iterator: str | None = None
        self._last_read: str | None = None
        self._next_poll = 0.0
        self._polled_at = 0.0  # when the last GetRecords was sent
        self._idle_wait = 0.0  # the last wait after an empty page; 0 after records
        self._empty_pages = 0  # empty pages in a row

    async def read(self) -> Page:
        now = anyio.current_time()
        gap = self._next_poll - now
        if gap > 0:
            await anyio.sleep(gap)
            now = anyio.current_time()
        if self._idle_wait:  # idle: a late start is this process falling behind
            self._session.lag.note(now - self._next_poll, now)
        backoff = Backoff()
        note: str | None = None
        while True:
            if self._iterator is None:
                note = await self._renew_iterator() or note
                if self._iterator is None:  # the shard ended before the position
                    self._session.shard_ended(self._shard.shard_id)
                    return Page([], caught_up=True, ended=True, note=note)
            self._polled_at = anyio.current_time()
            self._next_poll = self._polled_at + self._source.min_poll_gap
            try:
                response = await self._session.get_records(self._iterator, self._source.page_limit)
            except Exception as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    # Iterators live 15 minutes; renew after the last record read.
                    self._iterator = None
                    continue
                if code == "TrimmedDataAccessException":
                    note = self._trimmed(exc)
                    continue
                if is_retryable(exc):
                    delay = backoff.next_delay()
                    log_limit.warn(
                        logger,
                        (self._shard.shard_id, "GetRecords", code or type(exc)),
                        "GetRecords on shard %s failed (%s); retrying in %.2fs",
                        self._shard.shard_id,
                        code or type(exc).__name__,
                        delay,
                    )
                    await anyio.sleep(delay)
                    continue
                error = self._session._error(exc)
                if error is exc:
                    raise
                raise error from exc
            return self._page(response, note)

    def _page(self, response: bytes | dict[str, Any], note: str | None) -> Page:
        if isinstance(response, bytes):
            records, next_iterator = decode_page(response)
        elif (raw := response.get(_RAW_BODY)) is not None:
            records, next_iterator = decode_page(raw)
        else:  # botocore parsed it (the raw-body handler did not run): same records
            records = decode_records(response)
            next_iterator = response.get("NextShardIterator")
        shard_id = self._shard.shard_id
        for record in records:
            msgspec.structs.force_setattr(record, "shard_id", shard_id)
        self._iterator = next_iterator
        ended = next_iterator is None
        if ended:
            self._session.shard_ended(shard_id)
        if records:
            self._last_read = records[-1].sequence_number
            self._idle_wait = 0.0
            self._empty_pages = 0
        else:
            self._empty_pages += 1
            if not ended:
                # Counted from when the last poll was sent: one poll per interval.
                self._next_poll = max(self._next_poll, self._polled_at + self._next_idle_wait())
        # DynamoDB may answer an empty page with records behind it (aws-cli issue 4893):
        # only a second empty page in a row is taken as caught up (docs/running.md).
        caught_up = ended or self._empty_pages >= _EMPTY_PAGES_CAUGHT_UP
        return Page(records, caught_up=caught_up, ended=ended, note=note)

    def _next_idle_wait(self) -> float:
        """The wait after one more empty page: twice the last (from the poll gap), up to
        the idle interval, so an idle shard is polled less and less often."""
        interval = self._source.idle_interval
        if self._idle_wait >= interval:
            return interval
        self._idle_wait = self._idle_wait * 2 or self._source.min_poll_gap
        if self._idle_wait < interval:
            return self._idle_wait
        # The first wait that reaches the interval is cut short at random: shards that
        # went idle together (all of them, at startup) then poll spread over the interval
        # rather than in one burst that queues every interval. It costs one poll per
        # shard each time it goes idle.
        return random.uniform(self._source.min_poll_gap, interval)

    async def _renew_iterator(self) -> str | None:
        position = Position.after(self._last_read) if self._last_read is not None else self._start
        params: dict[str, Any] = {
            "StreamArn": self._session.stream_id,
            "ShardId": self._shard.shard_id,
            "ShardIteratorType": position.kind.value,
        }
        if position.sequence_number is not None:
            params["SequenceNumber"] = position.sequence_number
        try:
            response = await self._session._call("get_shard_iterator", **params)
        except Exception as exc:
            if error_code(exc) == "TrimmedDataAccessException":
                return self._trimmed(exc)
            raise
        self._iterator = response.get("ShardIterator")
        return None

    def _trimmed(self, exc: BaseException) -> str:
        after = self._last_read or self._start.sequence_number
        where = f"after sequence number {after}" if after else "at its start"
        if self._source.on_trimmed == "error":
            raise TrimmedDataError(
                f"shard {self._shard.shard_id}: records {where} were trimmed from the stream "
                "(older than its 24-hour retention) before they were read, so they are lost; "
                "to go on from the oldest record still there, use "
                "sources.dynamodb(..., on_trimmed='skip'), which reports the gap"
            ) from None
        note = (
            f"records {where} were trimmed before they were read; skipped to the oldest "
            "record still in the shard"
        )
        logger.error("shard %s: %s", self._shard.shard_id, note)
        self._last_read = None
        self._start = TRIM_HORIZON
        self._iterator = None
        return note


def dynamodb(
    table: str | None = None,
    *,
    stream_arn: str | None = None,
    start: StartSpec = "trim_horizon",
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    idle_interval: float = 0.25,
    max_polls_per_second: float = 5.0,
    page_limit: int = 1000,
    discovery_interval: float = 30.0,
    on_trimmed: Literal["error", "skip"] = "error",
    max_connections: int = 64,
) -> DynamoDBSource:
    """A DynamoDB stream as a source: `table=` (its latest stream) or `stream_arn=`.

    AWS settings come from the standard chain (environment, profiles, instance roles),
    `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`, or `endpoint_url=`,
    `region=` and an aiobotocore `session=`. `start` applies to shards without a
    checkpoint when the run starts: "trim_horizon" (everything still in the stream),
    "latest" (only new records) or `Position.at(seq)` / `Position.after(seq)`.
    """
    return DynamoDBSource(
        table,
        stream_arn=stream_arn,
        start=start,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        idle_interval=idle_interval,
        max_polls_per_second=max_polls_per_second,
        page_limit=page_limit,
        discovery_interval=discovery_interval,
        on_trimmed=on_trimmed,
        max_connections=max_connections,
    )
