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

`fast_get_records(client)` returns None when the client is not one this path can serve
(another signature version, no credentials, an endpoint with a path, an aiobotocore
without these parts); the source then calls `client.get_records()` as before.
"""

from __future__ import annotations

import platform
from typing import Any, Final

import aiobotocore
import botocore
import botocore.parsers
import msgspec
from botocore.awsrequest import AWSPreparedRequest

from flowstream.sigv4 import Credentials, JsonSigner

__all__ = ["FastGetRecords", "fast_get_records"]

_OPERATION: Final = "GetRecords"


class _Params(msgspec.Struct, rename="pascal"):
    shard_iterator: str
    limit: int


_ENCODE: Final = msgspec.json.Encoder().encode


class FastGetRecords:
    """``await call(iterator, limit)`` -> the raw JSON body of a GetRecords answer."""

    def __init__(self, client: Any, credentials: Any, signer: JsonSigner) -> None:
        self._credentials = credentials
        self._http = client._endpoint.http_session
        self._signer = signer
        self._target = f"{client.meta.service_model.metadata['targetPrefix']}.{_OPERATION}"
        self._exceptions = client.exceptions
        self._parser = botocore.parsers.create_parser(client.meta.service_model.protocol)
        self._output_shape = client.meta.service_model.operation_model(_OPERATION).output_shape
        self._user_agent = (
            f"flowstream aiobotocore/{aiobotocore.__version__} "
            f"botocore/{botocore.__version__} Python/{platform.python_version()}"
        )

    async def __call__(self, iterator: str, limit: int) -> bytes:
        body = _ENCODE(_Params(iterator, limit))
        frozen = await self._credentials.get_frozen_credentials()
        headers = self._signer.headers(
            self._target, body, Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        )
        headers["User-Agent"] = self._user_agent
        request = AWSPreparedRequest("POST", self._signer.url, headers, body, False)
        response = await self._http.send(request)
        content: bytes = await response.content
        if response.status_code < 300:
            return content
        raise self._error(response.status_code, response.headers, content)

    def _error(self, status: int, headers: Any, body: bytes) -> Exception:
        """The exception `client.get_records()` raises for this answer."""
        parsed = self._parser.parse(
            {"status_code": status, "headers": headers, "body": body}, self._output_shape
        )
        code = parsed.get("Error", {}).get("Code")
        error_class = self._exceptions.from_code(code)
        error: Exception = error_class(parsed, _OPERATION)
        return error


def fast_get_records(client: Any) -> FastGetRecords | None:
    """The fast GetRecords of an aiobotocore DynamoDB Streams client, or None when the
    client must make the call itself (see the module's docstring)."""
    try:
        request_signer = client._request_signer
        credentials = request_signer._credentials
        model = client.meta.service_model
        if (
            request_signer.signature_version != "v4"
            or credentials is None
            or not hasattr(credentials, "get_frozen_credentials")
            or model.protocol != "json"
            or not hasattr(client._endpoint.http_session, "send")
        ):
            return None
        signer = JsonSigner(
            client.meta.endpoint_url,
            region=request_signer.region_name,
            service=request_signer.signing_name,
        )
        return FastGetRecords(client, credentials, signer)
    except (AttributeError, KeyError, ValueError):
        return None
