"""`sinks.http(url, ...)`: sends elements to an HTTP endpoint (a webhook, an API, an API
Gateway route), one request per element or one JSON array per `batch_size` elements.

One aiohttp connection pool per open sink. Within a shard's batch, requests go out one
after another, in order; shards send concurrently. A request that fails ends its batch:
the items after it are reported as not sent, so nothing reaches the endpoint ahead of an
item that will be retried. Every request carries an `Idempotency-Key` built from the
event ids of its records, the same on every retry and replay of the same items.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from flowstream.aws import configuration_error
from flowstream.errors import DeliveryError, FlowstreamError, NotSentError, SinkError
from flowstream.record import Record
from flowstream.serialize import SerializationError, to_bytes
from flowstream.sinks.base import Batch, SendResult, Sink, SinkWriter

if TYPE_CHECKING:
    import aiohttp
    from aiobotocore.session import AioSession
    from yarl import URL

__all__ = [
    "Basic",
    "Bearer",
    "HttpAuth",
    "HttpSink",
    "SigV4",
    "http",
    "retry_after_seconds",
]

#: Statuses retried unless `retry_on=` says otherwise: timeouts, throttling, server trouble.
DEFAULT_RETRY_ON: Final = (408, 429, 500, 502, 503, 504)

#: How much of an error response is read, and how much of it is quoted in the error.
_PREVIEW_BYTES: Final = 4096
_PREVIEW_CHARS: Final = 200

_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


def _user_agent() -> str:
    try:
        return f"flowstream/{metadata.version('flowstream')}"
    except metadata.PackageNotFoundError:
        return "flowstream"


_USER_AGENT: Final = _user_agent()
_RAW_JSON: Final = msgspec.json.Decoder(msgspec.Raw)  # validates without building objects


# -- auth ---------------------------------------------------------------------------------


class HttpAuth(ABC):
    """Credentials for the requests of an http sink: `http.bearer(token)`,
    `http.basic(user, password)`, `http.sigv4(...)`, or a subclass of your own."""

    async def prepare(self) -> None:  # noqa: B027 - an optional hook: no-op by default
        """Called once when the sink opens, before any request: load what `sign` needs,
        and raise `SinkError` naming what is missing. The default does nothing."""

    @abstractmethod
    async def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        """Add this request's credentials to `headers`; called for every attempt."""

    @abstractmethod
    def describe(self) -> str:
        """A short description without any secret, e.g. ``bearer(***)``."""

    def __repr__(self) -> str:
        return self.describe()


def _header_value(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or "\r" in value or "\n" in value:
        raise SinkError(f"{what} must be a non-empty str without line breaks")
    return value


@final
class Bearer(HttpAuth):
    """``Authorization: Bearer <token>`` on every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {_header_value(token, 'http.bearer(token)')}"

    async def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        headers["Authorization"] = self._header

    def describe(self) -> str:
        return "bearer(***)"


@final
class Basic(HttpAuth):
    """``Authorization: Basic ...`` (RFC 7617) on every request."""

    def __init__(self, username: str, password: str) -> None:
        if ":" in _header_value(username, "http.basic(username)"):
            raise SinkError("http.basic(username) cannot hold ':' (RFC 7617)")
        secret = f"{username}:{_header_value(password, 'http.basic(password)')}"
        self.username = username
        self._header = f"Basic {base64.b64encode(secret.encode()).decode()}"

    async def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        headers["Authorization"] = self._header

    def describe(self) -> str:
        return f"basic({self.username}, ***)"


@final
class SigV4(HttpAuth):
    """AWS Signature Version 4, for IAM-authorised endpoints (API Gateway with
    `AWS_IAM`, Lambda function URLs, ...).

    Credentials come from `session` (an aiobotocore session; by default a new one, which
    resolves them through the standard chain: environment, profile, container or instance
    role) and are refreshed when they expire. The region is `region`, else the session's.
    """

    def __init__(
        self,
        service: str = "execute-api",
        *,
        region: str | None = None,
        session: AioSession | None = None,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise SinkError(
                f"http.sigv4(service={service!r}) must name the signing service, e.g. "
                "'execute-api' (API Gateway) or 'lambda' (function URLs)"
            )
        self.service = service
        self.region = region
        self.session = session
        self._credentials: Any = None
        self._region: str | None = None

    async def prepare(self) -> None:
        from aiobotocore.session import get_session

        session = self.session or get_session()
        try:
            credentials = await session.get_credentials()
        except Exception as exc:
            error = configuration_error(
                exc, SinkError, what="SigV4 signing", endpoint_url=None
            ) or SinkError(f"SigV4 signing cannot load AWS credentials: {exc}")
            raise error from None
        if credentials is None:
            raise SinkError(
                "no AWS credentials for SigV4 signing; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass http.sigv4(session=...) an "
                "aiobotocore session that has credentials"
            )
        region = self.region or session.get_config_variable("region")
        if not region:
            raise SinkError(
                "no AWS region for SigV4 signing; pass http.sigv4(region='eu-west-1') or set "
                "AWS_DEFAULT_REGION"
            )
        self._credentials, self._region = credentials, region

    async def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        if self._credentials is None:
            await self.prepare()
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        # refreshable credentials (roles, SSO) renew themselves here when near expiry
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(frozen, self.service, self._region).add_auth(request)
        headers.update(request.headers.items())

    def describe(self) -> str:
        return f"sigv4({self.service}, {self.region or 'region from the session'})"


# -- responses ------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """The wait an HTTP ``Retry-After`` value asks for, in seconds: delta-seconds or an
    HTTP-date (a date in the past is no wait); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _preview(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    if len(text) > _PREVIEW_CHARS:
        text = text[:_PREVIEW_CHARS] + "…"
    return f": {text}" if text else " (empty body)"


def _permanent_hint(status: int, method: str, location: str | None) -> str:
    if 300 <= status < 400:
        where = f" to {location}" if location else ""
        return (
            f"the endpoint redirects{where}; redirects are not followed (a {method} body must "
            "not go where you did not send it): use the final address as url="
        )
    if status in (401, 403):
        return "the endpoint refused the credentials; check auth= and what it may call"
    if status in (404, 405):
        return f"check the url and method= ({method})"
    if status == 413:
        return "the body is too large; lower batch_size= or map elements to something smaller"
    if status == 415:
        return (
            "the endpoint does not take this Content-Type; set the one it expects with "
            "headers={'Content-Type': ...}"
        )
    if status >= 500:
        return f"add {status} to retry_on= if retrying can help with this endpoint"
    return (
        "retrying cannot help: map elements into what the endpoint accepts, or add "
        f"{status} to retry_on= if this endpoint uses it for temporary trouble"
    )


# -- the sink -------------------------------------------------------------------------------


@final
class HttpSink(Sink):
    """Sends elements to `url` over HTTP; build it with `sinks.http(...)`."""

    def __init__(
        self,
        url: str,
        *,
        method: str,
        headers: Mapping[str, str] | None,
        batch_size: int,
        timeout: float,
        retry_on: Iterable[int],
        auth: HttpAuth | None,
        verify: bool | ssl.SSLContext,
        max_connections: int,
        encode: Callable[[Any], bytes] | None,
        idempotency_header: str | None,
    ) -> None:
        self.url = url
        self._url = _check_url(url)
        self.method = _check_method(method)
        self.batch_size = _check_int("batch_size", batch_size, "items per request")
        self.max_connections = _check_int("max_connections", max_connections, "connections")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise SinkError(f"sinks.http(timeout={timeout!r}) must be a number of seconds > 0")
        self.timeout = float(timeout)
        self.retry_on = _check_statuses(retry_on)
        if isinstance(auth, str):
            raise SinkError(
                "sinks.http(auth=...) takes an auth object, not a str; for a bearer token "
                "write auth=sinks.http.bearer(token)"
            )
        if auth is not None and not isinstance(auth, HttpAuth):
            raise SinkError(
                f"sinks.http(auth={type(auth).__name__}) is not an auth object; use "
                "sinks.http.bearer(token), sinks.http.basic(user, password), "
                "sinks.http.sigv4(...) or a subclass of HttpAuth"
            )
        self.auth = auth
        if not isinstance(verify, bool | ssl.SSLContext):
            raise SinkError(
                f"sinks.http(verify={verify!r}) must be True (check certificates, the "
                "default), an ssl.SSLContext (e.g. one that trusts your CA), or False"
            )
        self.verify = verify
        if encode is not None and not callable(encode):
            raise SinkError(
                f"sinks.http(encode={type(encode).__name__}) must be a function from an "
                "element to bytes"
            )
        self.encode = encode
        if idempotency_header is not None:
            _check_token(idempotency_header, "idempotency_header")
        self.idempotency_header = idempotency_header
        self.headers = _check_headers(headers or {}, auth, idempotency_header)

    def describe(self) -> str:
        return f"http({self.method} {_public_url(self._url)})"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        if self.auth is not None:
            try:
                await self.auth.prepare()
            except FlowstreamError as exc:
                raise SinkError(f"cannot open {self.describe()}: {exc}") from None
        import aiohttp  # here, not with the module: `import flowstream` does not pay for it

        connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=self.verify)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as session:
            yield _HttpWriter(self, session)


def _public_url(url: URL) -> str:
    """`url` without credentials: no user and password, and no query (it may hold a key)."""
    public = url.with_user(None).with_query(None).with_fragment(None)
    return f"{public}{'?…' if url.query_string else ''}"


def _check_url(url: str) -> URL:
    from yarl import URL

    problem = None
    try:
        parsed = URL(url) if isinstance(url, str) else None
    except (TypeError, ValueError) as exc:
        parsed, problem = None, str(exc)
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise SinkError(
            f"sinks.http({url!r}) needs an absolute http:// or https:// URL with a host"
            + (f" ({problem})" if problem else "")
        )
    return parsed


def _check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise SinkError(f"sinks.http({what}={value!r}) is not a valid HTTP token")
    return value


def _check_method(method: str) -> str:
    return _check_token(method, "method").upper()


def _check_int(name: str, value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SinkError(f"sinks.http({name}={value!r}) must be a whole number of {what}, >= 1")
    return value


def _check_statuses(statuses: Iterable[int]) -> frozenset[int]:
    try:
        found = frozenset(statuses)
    except TypeError:
        found = frozenset({-1})
    bad = [s for s in found if isinstance(s, bool) or not isinstance(s, int) or s < 300 or s > 599]
    if bad:
        raise SinkError(
            f"sinks.http(retry_on={statuses!r}) must be HTTP statuses from 300 to 599, "
            f"e.g. {DEFAULT_RETRY_ON}"
        )
    return found


def _check_headers(
    headers: Mapping[str, str], auth: HttpAuth | None, idempotency_header: str | None
) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        raise SinkError(f"sinks.http(headers={headers!r}) must be a mapping of str to str")
    checked = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
    given = {name.lower(): name for name in checked}
    for name, value in headers.items():
        _check_token(name, "headers")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise SinkError(f"sinks.http(headers=) {name} must be a str without line breaks")
        lower = name.lower()
        if idempotency_header and lower == idempotency_header.lower():
            raise SinkError(
                f"sinks.http(headers=) sets {name}, which the sink sets per request; leave "
                "it out (or pass idempotency_header=None to send none)"
            )
        if lower in ("content-length", "transfer-encoding", "host"):
            raise SinkError(f"sinks.http(headers=) cannot set {name}; the sink sets it")
        if lower == "authorization" and auth is not None:
            raise SinkError(
                f"sinks.http(headers=) sets {name} and auth= is given too; keep only one"
            )
        checked.pop(given.pop(lower, name), None)
        checked[name] = value
    return checked


# -- the writer -----------------------------------------------------------------------------


def _not_sent() -> NotSentError:
    return NotSentError("not sent: an earlier item of its batch failed, and items go out in order")


def _item_keys(records: list[Record]) -> list[str]:
    """A stable idempotency key per item: its record's event id, or, for the values a
    `flat_map` made from one record, the event id and how many of that record's values
    come after it.

    Counting from the end keeps a key stable on a retry: a retried batch is always a
    suffix of the one before (a failure ends a batch), so a record's values in it are
    always its last ones.
    """
    keys = [""] * len(records)
    later = 0
    following: Record | None = None
    for i in range(len(records) - 1, -1, -1):
        record = records[i]
        same = following is not None and following.sequence_number == record.sequence_number
        later = later + 1 if same else 0
        base = record.event_id or f"{record.shard_id}-{record.sequence_number}"
        keys[i] = f"{base}.{later}" if later else base
        following = record
    return keys


def _chunk_key(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


class _HttpWriter(SinkWriter):
    def __init__(self, sink: HttpSink, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._url = sink._url
        self._url_text = str(sink._url)
        self._method = sink.method
        self._where = f"{sink.method} {_public_url(sink._url)}"
        self._headers = sink.headers
        self._batch_size = sink.batch_size
        self._timeout = sink.timeout
        self._retry_on = sink.retry_on
        self._auth = sink.auth
        self._encode = sink.encode
        self._idempotency_header = sink.idempotency_header

    async def send(self, batch: Batch) -> SendResult | None:
        size = len(batch)
        bodies, bad = self._encode_items(batch.values)
        keys = _item_keys(batch.records) if self._idempotency_header else None
        step = self._batch_size
        for start in range(0, len(bodies), step):
            stop = min(start + step, len(bodies))
            if step == 1:
                body, key = bodies[start], keys[start] if keys else None
            else:
                body = b"[" + b",".join(bodies[start:stop]) + b"]"
                key = _chunk_key(keys[start:stop]) if keys else None
            error = await self._request(body, key)
            if error is not None:
                failed: dict[int, BaseException] = dict.fromkeys(range(start, stop), error)
                failed.update(dict.fromkeys(range(stop, size), _not_sent()))
                return SendResult(failed)
        if bad is not None:
            # Everything before the bad value is delivered; what comes after it waits, so
            # it never reaches the endpoint ahead of an item that is not there.
            index, error = bad
            failed = {index: error}
            failed.update(dict.fromkeys(range(index + 1, size), _not_sent()))
            return SendResult(failed)
        return None

    # -- encoding ---------------------------------------------------------------------

    def _encode_items(
        self, values: list[Any]
    ) -> tuple[list[bytes], tuple[int, DeliveryError] | None]:
        """The body of each value, up to the first that cannot be encoded (and its error)."""
        encode = self._encode_one if self._batch_size == 1 else self._encode_json
        bodies: list[bytes] = []
        for i, value in enumerate(values):
            try:
                bodies.append(encode(value))
            except SerializationError as exc:
                return bodies, (i, exc)
        return bodies, None

    def _encode_one(self, value: Any) -> bytes:
        if self._encode is None:
            return to_bytes(value)
        return self._custom(value)

    def _encode_json(self, value: Any) -> bytes:
        """`value` as one JSON value of an array body."""
        if self._encode is None:
            if isinstance(value, str):
                return msgspec.json.encode(value)  # text in an array is a JSON string
            data = to_bytes(value)
            if not isinstance(value, bytes | bytearray | memoryview):
                return data  # msgspec wrote it: JSON already
        else:
            data = self._custom(value)
        try:
            _RAW_JSON.decode(data)
        except msgspec.DecodeError as exc:
            source = "encode= returned" if self._encode else "a bytes value is"
            raise SerializationError(
                f"{source} not JSON ({exc}), so it cannot be an item of a batch_size="
                f"{self._batch_size} request body (a JSON array); give JSON bytes (e.g. "
                "msgspec.json.encode(x)), a str (sent as a JSON string) or a dict, or use "
                "batch_size=1 to send each value as it is"
            ) from None
        return data

    def _custom(self, value: Any) -> bytes:
        assert self._encode is not None
        try:
            data = self._encode(value)
        except Exception as exc:
            raise SerializationError(
                f"encode= failed on a {type(value).__name__} value: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(data, str):
            return data.encode()
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        if not isinstance(data, bytes):
            raise SerializationError(
                f"encode= returned a {type(data).__name__} for a {type(value).__name__} "
                "value; it must return bytes (or str)"
            )
        return data

    # -- requests ---------------------------------------------------------------------

    async def _request(self, body: bytes, key: str | None) -> DeliveryError | None:
        import aiohttp

        headers = dict(self._headers)
        if key is not None:
            assert self._idempotency_header is not None
            headers[self._idempotency_header] = key
        if self._auth is not None:
            try:
                await self._auth.sign(self._method, self._url_text, headers, body)
            except Exception as exc:
                return DeliveryError(
                    f"{self._where}: auth {self._auth.describe()} could not sign the request: "
                    f"{type(exc).__name__}: {exc}",
                    retryable=True,
                )
        try:
            async with self._session.request(
                self._method, self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    await response.read()  # a fully read response frees its connection
                    return None
                return self._status_error(response, await response.content.read(_PREVIEW_BYTES))
        except aiohttp.ClientConnectorCertificateError as exc:
            return DeliveryError(
                f"{self._where}: the server's TLS certificate did not verify "
                f"({exc.certificate_error}); fix the certificate, or trust its CA with "
                "verify=ssl.create_default_context(cafile=...) (verify=False turns checking "
                "off: for testing only)",
                retryable=False,
            )
        except TimeoutError:
            return DeliveryError(
                f"{self._where}: no complete answer within timeout={self._timeout:g}s",
                retryable=True,
            )
        except aiohttp.ClientError as exc:
            return DeliveryError(
                f"{self._where} failed: {type(exc).__name__}: {exc}", retryable=True
            )

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes) -> DeliveryError:
        status = response.status
        answered = f"{self._where} answered HTTP {status} {response.reason or ''}".rstrip()
        if status in self._retry_on:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            asked = f"; it asked to wait {wait:g}s (Retry-After)" if wait else ""
            return DeliveryError(
                f"{answered}{_preview(body)}{asked}",
                retryable=True,
                status=status,
                retry_after=wait,
            )
        hint = _permanent_hint(status, self._method, response.headers.get("Location"))
        return DeliveryError(f"{answered}{_preview(body)}; {hint}", retryable=False, status=status)


# -- the factory ----------------------------------------------------------------------------


@final
class _Http:
    """`sinks.http(url, ...)` builds an http sink; `sinks.http.bearer(token)`,
    `sinks.http.basic(user, password)` and `sinks.http.sigv4(...)` build its `auth=`."""

    def __call__(
        self,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        batch_size: int = 1,
        timeout: float = 10.0,
        retry_on: Iterable[int] = DEFAULT_RETRY_ON,
        auth: HttpAuth | None = None,
        verify: bool | ssl.SSLContext = True,
        max_connections: int = 100,
        encode: Callable[[Any], bytes] | None = None,
        idempotency_header: str | None = "Idempotency-Key",
    ) -> HttpSink:
        """A sink that sends elements to `url`.

        With `batch_size=1` each element is one request whose body is the element (JSON
        for structured values, str and bytes as they are); with more, each run of up to
        `batch_size` elements of a shard is one request whose body is a JSON array.
        2xx delivers; `retry_on` statuses (and timeouts, broken connections) are
        retried, honouring ``Retry-After``; any other status fails for good.
        `headers` are sent with every request (``Content-Type`` defaults to
        ``application/json``); `auth` signs each request; `verify` checks TLS
        certificates (True, an `ssl.SSLContext`, or False); `encode` turns an element into
        bytes in place of flowstream's serialiser; `idempotency_header` names the header
        that carries the stable per-request key (None leaves it out).
        """
        return HttpSink(
            url,
            method=method,
            headers=headers,
            batch_size=batch_size,
            timeout=timeout,
            retry_on=retry_on,
            auth=auth,
            verify=verify,
            max_connections=max_connections,
            encode=encode,
            idempotency_header=idempotency_header,
        )

    @staticmethod
    def bearer(token: str) -> Bearer:
        """``Authorization: Bearer <token>`` on every request."""
        return Bearer(token)

    @staticmethod
    def basic(username: str, password: str) -> Basic:
        """HTTP Basic authentication on every request."""
        return Basic(username, password)

    @staticmethod
    def sigv4(
        service: str = "execute-api",
        *,
        region: str | None = None,
        session: AioSession | None = None,
    ) -> SigV4:
        """AWS SigV4 signing (API Gateway IAM auth, Lambda function URLs); credentials and
        region from `session` (default: the standard AWS chain and environment)."""
        return SigV4(service, region=region, session=session)

    def __repr__(self) -> str:
        return "<sink factory flowstream.sinks.http>"


http: Final = _Http()
"""`sinks.http(url, ...)`: the http sink; `.bearer()`, `.basic()`, `.sigv4()` for `auth=`."""
