"""`sinks.redis(url, ...)`: deletes, sets or publishes one Redis key per element.

The cache invalidator's sink. Each element becomes one command — ``DEL key``,
``SET key value [EX|PX ttl]`` (``DEL key`` for a REMOVE record: a cache mirror) or
``PUBLISH channel value`` — and one shard's batch goes out as one plain pipeline (no
MULTI/EXEC): one round trip, run by Redis in order. Shards send concurrently, each on a
connection of the one pool the sink opens per run.

Order under failure. Redis runs a pipeline to its end, so an item after a failed one has
already been applied when the failure is seen. The earliest failure decides:

- retryable (a lost connection or timeout, which fails the whole batch; or a command
  refused with OOM, LOADING, BUSY, READONLY, MISCONF, ...): that item *and every item
  after it* are reported failed, so the runtime sends them again, in order, after the
  failed one. Items after it may be applied twice, but the last write Redis sees for
  every key follows stream order: a stale SET is never left on top of a later DEL.
- not retryable (NOPERM, a key function that raises, a value that cannot be
  serialised): that item fails alone; the items after it are sent and acknowledged.
  The failed item is never applied by this run: the shard stops before it (or the
  policy dead-letters it), and a run that resumes from the checkpoint replays it and
  everything after it, in order. So here too the last write follows stream order.

The optional dependency (``pip install 'flowstream[redis]'``) is imported when a sink
is built, not with this module: ``import flowstream`` does not pay for it.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import string
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, final
from urllib.parse import urlsplit

import anyio

from flowstream.callables import callable_name, is_async_callable
from flowstream.errors import (
    AttributeValueError,
    DeliveryError,
    PipelineError,
    RecordDecodeError,
    SinkError,
)
from flowstream.record import EventName, Record
from flowstream.serialize import to_bytes
from flowstream.sinks.base import Batch, SendResult, Sink, SinkWriter, item_key

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.client import Pipeline

__all__ = ["Action", "KeySpec", "RedisSink", "redis"]

Action: TypeAlias = Literal["delete", "set", "publish"]
#: A key (or channel): a template over the record's key attributes (``"user:{pk}"``,
#: formatted with ``str.format_map(record.keys)``), or a function of the element and
#: its record returning the name.
KeySpec: TypeAlias = "str | Callable[[Any, Record], str | bytes]"

_ACTIONS: Final = ("delete", "set", "publish")
_INSTALL: Final = "pip install 'flowstream[redis]'"
# Refusals that can pass: the server is short of memory, loading, busy with a script,
# a replica during failover, failing to persist, or a cluster that is re-forming.
_RETRYABLE_CODES: Final = frozenset(
    [
        "OOM",
        "LOADING",
        "BUSY",
        "READONLY",
        "MISCONF",
        "NOREPLICAS",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
    ]
)

_Command: TypeAlias = tuple[Literal["del", "set", "publish"], "str | bytes", bytes]


def _check_name_spec(option: str, spec: object) -> str | Callable[[Any, Record], str | bytes]:
    """A key= or channel= option, checked: a template naming only key attributes, or a
    plain (not async) function."""
    if isinstance(spec, str):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(spec) if f is not None]
        except ValueError as exc:
            raise PipelineError(
                f"sinks.redis({option}={spec!r}) is not a valid template: {exc}; write "
                "attribute names in braces, e.g. 'user:{pk}', and double literal braces"
            ) from None
        for field in fields:
            name = field.partition(".")[0].partition("[")[0]
            if not name or name.isdigit():
                raise PipelineError(
                    f"sinks.redis({option}={spec!r}) has a positional field {{{field}}}; "
                    "name a key attribute of the record instead, e.g. 'user:{pk}'"
                )
        return spec
    if not callable(spec):
        raise PipelineError(
            f"sinks.redis({option}=...) got {type(spec).__name__}; pass a template over the "
            "record's key attributes, e.g. 'user:{pk}', or a function (value, record) -> str"
        )
    if is_async_callable(spec):
        raise PipelineError(
            f"sinks.redis({option}={callable_name(spec)}) is an async function; pass a plain "
            "function (value, record) -> str (compute slow parts in a .map() step before)"
        )
    return spec


def _ttl_millis(ttl: object) -> int:
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise PipelineError(f"sinks.redis(ttl={ttl!r}) must be a number of seconds or a timedelta")
    millis = round(seconds * 1000) if math.isfinite(seconds) else 0
    if millis < 1:
        raise PipelineError(
            f"sinks.redis(ttl={ttl!r}) must be a positive, finite time of at least 1 ms; "
            "leave ttl=None for keys that do not expire"
        )
    return millis


def _describe_url(url: str) -> str:
    """The URL without user name, password or options: what a report may show.
    Raises ValueError for a URL redis-py does not take."""
    from redis.asyncio.connection import parse_url

    parts = parse_url(url)
    db = parts.get("db", 0)
    path = parts.get("path")
    if path is not None:
        return f"unix://{path}?db={db}"
    host = str(parts.get("host", "localhost"))
    if ":" in host:
        host = f"[{host}]"
    return f"{urlsplit(url).scheme}://{host}:{parts.get('port', 6379)}/{db}"


@final
class RedisSink(Sink):
    """Runs one Redis command per element, a shard's batch per pipeline. Built by
    `sinks.redis()`; see the module docstring for the order kept under failures."""

    def __init__(
        self,
        url: str,
        *,
        action: Action,
        key: str | Callable[[Any, Record], str | bytes] | None,
        value: Callable[[Any, Record], Any] | None,
        ttl_ms: int | None,
        channel: str | Callable[[Any, Record], str | bytes] | None,
        timeout: float,
        max_connections: int,
    ) -> None:
        self.url = url
        self.action = action
        self.key = key
        self.value = value
        self.ttl_ms = ttl_ms
        self.channel = channel
        self.timeout = timeout
        self.max_connections = max_connections
        self._where = _describe_url(url)

    def describe(self) -> str:
        return f"redis({self._where} {self.action})"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        # No connection is made here: a server that is down fails the first batches
        # (retryable), not the whole run. The pool caps connections; shards beyond the
        # cap wait for one, each use bounded by the socket timeouts.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # the runtime's policy retries (with backoff, and order kept); redis-py's
            # own retries would hide failures and re-send pipelines behind its back
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            yield _RedisWriter(self, client)
        finally:
            with anyio.CancelScope(shield=True):  # close even when the run is cancelled
                await client.aclose()


class _RedisWriter(SinkWriter):
    def __init__(self, sink: RedisSink, client: aioredis.Redis) -> None:
        self._sink = sink
        self._client = client
        self._where = sink._where
        action = sink.action
        self._publish = action == "publish"
        self._set = action == "set"
        self._name = sink.channel if self._publish else sink.key
        self._value = sink.value
        ttl = sink.ttl_ms
        self._ex = ttl // 1000 if ttl is not None and ttl % 1000 == 0 else None
        self._px = ttl if ttl is not None and self._ex is None else None

    async def send(self, batch: Batch) -> SendResult | None:
        from redis import exceptions as redis_errors

        failed: dict[int, BaseException] = {}
        indices: list[int] = []  # batch index of each command sent
        commands: list[_Command] = []
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            try:
                commands.append(self._command(value, record))
            except DeliveryError as exc:
                failed[i] = exc  # not retryable: sending the rest keeps order (module doc)
            except (RecordDecodeError, AttributeValueError) as exc:
                failed[i] = DeliveryError(
                    f"record {record.sequence_number} cannot be read: {exc}", retryable=False
                )
            else:
                indices.append(i)
        if not commands:
            return SendResult(failed) if failed else None
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    self._queue(pipe, command)
                replies = await pipe.execute(raise_on_error=False)
        except (redis_errors.RedisError, OSError) as exc:
            # Which commands ran is unknown: all are sent again (they are idempotent,
            # PUBLISH aside), in order.
            error = self._batch_error(exc)
            if not failed:
                raise error from exc
            failed.update(dict.fromkeys(indices, error))
            return SendResult(failed)
        first: int | None = None  # batch index of the earliest retryable refusal
        for i, command, reply in zip(indices, commands, replies, strict=True):
            if isinstance(reply, redis_errors.ResponseError):
                error = self._refused(command, reply)
                failed[i] = error
                if error.retryable and first is None:
                    first = i
        if first is not None:
            later = DeliveryError(
                f"not acknowledged: item {first} of this batch failed before it; it is sent "
                "again after that item so that the last write follows stream order (Redis "
                "runs a pipeline to its end, so it may have been applied already)",
                retryable=True,
            )
            for i in indices:
                if i > first:
                    failed.setdefault(i, later)
        return SendResult(failed) if failed else None

    def _queue(self, pipe: Pipeline, command: _Command) -> None:
        op, name, payload = command
        if op == "del":
            pipe.delete(name)
        elif op == "set":
            pipe.set(name, payload, ex=self._ex, px=self._px)
        else:
            pipe.publish(name, payload)

    def _command(self, value: Any, record: Record) -> _Command:
        name = self._name_for(value, record)
        if self._publish:
            return ("publish", name, self._payload(value, record))
        if self._set and record.event_name != EventName.REMOVE:
            return ("set", name, self._payload(value, record))
        return ("del", name, b"")

    def _name_for(self, value: Any, record: Record) -> str | bytes:
        spec = self._name
        what = "channel" if self._publish else "key"
        if spec is None:
            return item_key(record)
        if isinstance(spec, str):
            try:
                return spec.format_map(record.keys)
            except KeyError as exc:
                attribute = exc.args[0] if exc.args else "?"
                raise DeliveryError(
                    f"{what} template {spec!r} names {attribute!r}, which is not a key "
                    f"attribute of record {record.sequence_number} (it has "
                    f"{', '.join(map(repr, record.keys)) or 'none'}); fix the template, or "
                    f"pass a function as {what}=",
                    retryable=False,
                ) from None
            except (LookupError, AttributeError, ValueError, TypeError) as exc:
                raise DeliveryError(
                    f"{what} template {spec!r} cannot be formatted with the keys of record "
                    f"{record.sequence_number}: {type(exc).__name__}: {exc}",
                    retryable=False,
                ) from None
        try:
            name = spec(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"{what} function {callable_name(spec)} raised on record "
                f"{record.sequence_number}: {type(exc).__name__}: {exc}",
                retryable=False,
            ) from exc
        if not isinstance(name, str | bytes):
            raise DeliveryError(
                f"{what} function {callable_name(spec)} returned {type(name).__name__} for "
                f"record {record.sequence_number}; return a str (or bytes)",
                retryable=False,
            )
        return name

    def _payload(self, value: Any, record: Record) -> bytes:
        pick = self._value
        if pick is not None:
            try:
                value = pick(value, record)
            except Exception as exc:
                raise DeliveryError(
                    f"value function {callable_name(pick)} raised on record "
                    f"{record.sequence_number}: {type(exc).__name__}: {exc}",
                    retryable=False,
                ) from exc
        return to_bytes(value)  # SerializationError: a DeliveryError, not retryable

    def _refused(self, command: _Command, reply: redis_errors.ResponseError) -> DeliveryError:
        code = _error_code(reply)
        op, name, _ = command
        shown = name.decode(errors="replace") if isinstance(name, bytes) else name
        target = f"channel {shown!r}" if op == "publish" else f"key {shown!r}"
        message = str(reply)
        if code and not message.startswith(code):
            message = f"{code} {message}"
        return DeliveryError(
            f"Redis at {self._where} refused {op.upper()} of {target}: {message}",
            retryable=code in _RETRYABLE_CODES,
            code=code,
        )

    def _batch_error(self, exc: BaseException) -> DeliveryError:
        from redis import exceptions as redis_errors

        if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
            return DeliveryError(
                f"Redis at {self._where} refused the credentials: {exc}; fix the user name "
                "and password in the sink's url (redis://user:password@host:port/db)",
                retryable=False,
            )
        if isinstance(exc, redis_errors.TimeoutError):
            return DeliveryError(
                f"Redis at {self._where} did not answer within {self._sink.timeout} s "
                f"({exc}); check the server's load, or raise the sink's timeout=",
                retryable=True,
            )
        return DeliveryError(
            f"cannot reach Redis at {self._where}: {type(exc).__name__}: {exc}; check that "
            "the server runs and that the sink's url points at it",
            retryable=True,
        )


def _error_code(reply: redis_errors.ResponseError) -> str | None:
    code = getattr(reply, "status_code", None)  # redis-py >= 7 keeps the code
    if isinstance(code, str) and code:
        return code
    for cls, known in _codes_by_class():
        if isinstance(reply, cls):
            return known
    word = str(reply).partition(" ")[0]
    return word if word.isalpha() and word.isupper() else None


@functools.cache
def _codes_by_class() -> tuple[tuple[type[redis_errors.ResponseError], str], ...]:
    from redis import exceptions as redis_errors

    return (
        (redis_errors.OutOfMemoryError, "OOM"),
        (redis_errors.ReadOnlyError, "READONLY"),
        (redis_errors.NoPermissionError, "NOPERM"),
        (redis_errors.TryAgainError, "TRYAGAIN"),
        (redis_errors.MasterDownError, "MASTERDOWN"),
        (redis_errors.ClusterDownError, "CLUSTERDOWN"),
        (redis_errors.ExecAbortError, "EXECABORT"),
        (redis_errors.NoScriptError, "NOSCRIPT"),
    )


def redis(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    key: KeySpec | None = None,
    action: Action = "delete",
    value: Callable[[Any, Record], Any] | None = None,
    ttl: float | timedelta | None = None,
    channel: KeySpec | None = None,
    timeout: float = 10.0,
    max_connections: int = 32,
) -> RedisSink:
    """A sink that runs one Redis command per element, one pipeline per batch.

    `action`: ``"delete"`` (``DEL key``), ``"set"`` (``SET key value``, with ``EX``/``PX``
    when `ttl` is given; a REMOVE record deletes the key instead) or ``"publish"``
    (``PUBLISH channel value``). `key` and `channel` are templates over the record's
    key attributes (``"user:{pk}"``) or functions ``(value, record) -> str``; the default
    key is the record's keys as sorted compact JSON (``{"pk":"user#1"}``). `value`
    picks what is stored or published, ``(value, record) -> Any`` (default: the element),
    serialised like every sink does. `timeout` bounds connecting and each round trip, in
    seconds; `max_connections` caps the pool that the shards share.
    """
    if importlib.util.find_spec("redis") is None:
        raise SinkError(f"sinks.redis() needs redis-py, which is not installed; {_INSTALL}")
    if action not in _ACTIONS:
        raise PipelineError(
            f"sinks.redis(action={action!r}) is not an action; use one of "
            + ", ".join(map(repr, _ACTIONS))
        )
    if not isinstance(url, str):
        raise PipelineError(f"sinks.redis() url must be a str, got {type(url).__name__}")
    try:
        _describe_url(url)
    except ValueError as exc:
        raise PipelineError(
            f"sinks.redis() cannot use url {urlsplit(url).scheme + '://...'!r}: {exc}"
        ) from None
    if action == "publish":
        if channel is None:
            raise PipelineError(
                "sinks.redis(action='publish') needs channel=: a name, a template over the "
                "record's key attributes ('changes:{pk}') or a function (value, record) -> str"
            )
        if key is not None:
            raise PipelineError(
                "sinks.redis(action='publish') publishes to channel= and uses no key=; remove key="
            )
        channel = _check_name_spec("channel", channel)
    else:
        if channel is not None:
            raise PipelineError(
                f"sinks.redis(action={action!r}) uses no channel=; remove it, or use "
                "action='publish'"
            )
        if key is not None:
            key = _check_name_spec("key", key)
    if value is not None:
        if action == "delete":
            raise PipelineError(
                "sinks.redis(action='delete') stores no value; remove value=, or use "
                "action='set' or 'publish'"
            )
        if not callable(value) or is_async_callable(value):
            raise PipelineError(
                "sinks.redis(value=...) must be a plain function (value, record) -> the "
                "value to store or publish"
            )
    ttl_ms: int | None = None
    if ttl is not None:
        if action != "set":
            raise PipelineError(
                f"sinks.redis(action={action!r}) sets no expiry; ttl= works with action='set' only"
            )
        ttl_ms = _ttl_millis(ttl)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise PipelineError(f"sinks.redis(timeout={timeout!r}) must be a positive number")
    if (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or (max_connections < 1)
    ):
        raise PipelineError(
            f"sinks.redis(max_connections={max_connections!r}) must be a positive int"
        )
    return RedisSink(
        url,
        action=action,
        key=key,
        value=value,
        ttl_ms=ttl_ms,
        channel=channel,
        timeout=float(timeout),
        max_connections=max_connections,
    )
