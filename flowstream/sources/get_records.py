"""GetRecords without botocore's request pipeline: the call every shard makes several
times a second, idle or not.

Through the client, one idle GetRecords costs about 1.3 ms of CPU: parameter validation,
serialisation, endpoint rules, a dozen events, botocore's general signer, retry
bookkeeping. That caps one process at a few hundred idle shards polled on time. Here
the body is encoded by msgspec, signed by `flowstream.sigv4` with the client's own
(refreshing) credentials, region and signing name, and sent by the client's aiobotocore
HTTP session (its connection pool, timeouts, proxies and TLS settings, and its mapping
of connection failures to botocore's exceptions): about 0.3 ms. Error answers are rare,
so they are parsed by botocore's own parser and raised as the client's own exception
classes, exactly as `client.get_records()` raises them.

The endpoint and the signing scope are the ones botocore itself used for the stream's
DescribeStream (a ``before-send`` handler reads them off that request): endpoint rules
(FIPS, dual-stack, custom endpoints) can send a call elsewhere than the client's
`endpoint_url`, and the fast path must go where botocore goes. Until that first
DescribeStream, and for clients this path cannot serve (another signature version, no
credentials, an endpoint with a path, an aiobotocore without these parts), the source
calls `client.get_records()`.
"""

from __future__ import annotations

import platform
import re
from typing import Any, Final

import aiobotocore
import botocore
import botocore.parsers
import msgspec
from botocore.awsrequest import AWSPreparedRequest

from flowstream.sigv4 import Credentials, JsonSigner

__all__ = ["FastGetRecords", "fast_get_records"]

_OPERATION: Final = "GetRecords"
_SCOPE: Final = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
)


class _Params(msgspec.Struct, rename="pascal"):
    shard_iterator: str
    limit: int


_ENCODE: Final = msgspec.json.Encoder().encode


class FastGetRecords:
    """``await call(iterator, limit)`` -> the raw JSON body of a GetRecords answer, once
    `ready` (after the client's first DescribeStream showed the endpoint and scope)."""

    def __init__(self, client: Any, credentials: Any) -> None:
        self._credentials = credentials
        self._http = client._endpoint.http_session
        self._signer: JsonSigner | None = None
        self._model = model = client.meta.service_model
        self._target = f"{model.metadata['targetPrefix']}.{_OPERATION}"
        self._exceptions = client.exceptions
        self._parser = botocore.parsers.create_parser(model.protocol)
        self._output_shape = model.operation_model(_OPERATION).output_shape
        self._user_agent = (
            f"flowstream aiobotocore/{aiobotocore.__version__} "
            f"botocore/{botocore.__version__} Python/{platform.python_version()}"
        )
        client.meta.events.register(
            f"before-send.{model.service_id.hyphenize()}.DescribeStream", self._learn
        )

    @property
    def ready(self) -> bool:
        return self._signer is not None

    @property
    def endpoint(self) -> tuple[str, str, str] | None:
        """(URL, signing region, signing name) learnt from DescribeStream, else None."""
        signer = self._signer
        return None if signer is None else (signer.url, signer.region, signer.service)

    def _learn(self, request: Any, **_: Any) -> None:
        """``before-send`` handler: sign for, and send to, what botocore did."""
        if self._signer is not None:
            return
        authorization = request.headers.get("Authorization") or b""
        if isinstance(authorization, bytes):
            authorization = authorization.decode("ascii", "replace")
        scope = _SCOPE.match(authorization)
        if scope is None:
            return  # not SigV4 (another signer): the client keeps making GetRecords
        try:
            self._signer = JsonSigner(request.url, region=scope["region"], service=scope["service"])
        except ValueError:
            return  # an endpoint with a path

    async def __call__(self, iterator: str, limit: int) -> bytes:
        body = _ENCODE(_Params(iterator, limit))
        signer = self._signer
        assert signer is not None, "call only when ready"
        frozen = await self._credentials.get_frozen_credentials()
        headers = signer.headers(
            self._target, body, Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        )
        headers["User-Agent"] = self._user_agent
        request = AWSPreparedRequest("POST", signer.url, headers, body, False)
        response = await self._http.send(request)
        content: bytes = await response.content
        if response.status_code < 300:
            return content
        raise self._error(response.status_code, response.headers, content)

    def _error(self, status: int, headers: Any, body: bytes) -> Exception:
        """The exception `client.get_records()` raises for this answer."""
        answer = {"status_code": status, "headers": headers, "body": body}
        parsed = self._parser.parse(answer, self._output_shape)
        code = parsed.get("Error", {}).get("Code")
        # As the client does: the error shape's own members (e.g. "message"), and the
        # retry metadata of a client allowed one attempt (`flowstream.aws.client_config`).
        shape = self._model.shape_for_error_code(code) if code else None
        if shape is not None:
            parsed.update(self._parser.parse(answer, shape))
        metadata = parsed.setdefault("ResponseMetadata", {})
        metadata.update(RetryAttempts=0, MaxAttemptsReached=True)
        error: Exception = self._exceptions.from_code(code)(parsed, _OPERATION)
        return error


def fast_get_records(client: Any) -> FastGetRecords | None:
    """The fast GetRecords of an aiobotocore DynamoDB Streams client, or None when the
    client must make the call itself (see the module's docstring)."""
    try:
        request_signer = client._request_signer
        credentials = request_signer._credentials
        if (
            request_signer.signature_version != "v4"
            or credentials is None
            or not hasattr(credentials, "get_frozen_credentials")
            or client.meta.service_model.protocol != "json"
            or not hasattr(client._endpoint.http_session, "send")
        ):
            return None
        return FastGetRecords(client, credentials)
    except (AttributeError, KeyError):
        return None
