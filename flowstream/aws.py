"""Shared AWS plumbing for sources, sinks and checkpoint stores: clients configured the
way flowstream needs them, and the one place where botocore's errors are classified
(retry, or stop with an error that names the fix).

aiobotocore and botocore are imported when a client is made or an error is classified,
not with this module: a Lambda function whose sinks call no AWS service does not pay
their import on a cold start.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio

from flowstream.errors import FlowstreamError

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

__all__ = [
    "REFUSED_CODES",
    "configuration_error",
    "create_client",
    "error_code",
    "error_message",
    "is_retryable",
    "is_setup_error",
]

#: Error codes that say "try again later" across the services flowstream calls.
RETRYABLE_CODES: Final = frozenset(
    {
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
        "RequestThrottled",
        "KmsThrottled",
    }
)

#: Error codes of a service refusing the caller: bad, expired or unauthorised credentials.
REFUSED_CODES: Final = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "AccessDeniedException",
        "AccessDenied",
    }
)


@functools.cache
def _transient() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as botocore_errors

    return (
        botocore_errors.EndpointConnectionError,
        botocore_errors.ConnectionClosedError,
        botocore_errors.ConnectTimeoutError,
        botocore_errors.ReadTimeoutError,
        botocore_errors.HTTPClientError,
        ConnectionError,
        TimeoutError,
    )


def error_code(exc: BaseException) -> str | None:
    """The service's error code of a botocore `ClientError`, else None."""
    from botocore import exceptions as botocore_errors

    if isinstance(exc, botocore_errors.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def error_message(exc: BaseException) -> str:
    """The service's own message of a `ClientError`, else the exception text."""
    from botocore import exceptions as botocore_errors

    if isinstance(exc, botocore_errors.ClientError):
        message = exc.response.get("Error", {}).get("Message")
        if message:
            return str(message)
    return str(exc)


def _status(exc: BaseException) -> int:
    from botocore import exceptions as botocore_errors

    if isinstance(exc, botocore_errors.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else 0
    return 0


def is_retryable(exc: BaseException) -> bool:
    """True for throttling, server errors and broken connections: worth another try."""
    if isinstance(exc, _transient()):
        return True
    code = error_code(exc)
    status = _status(exc)
    return code in RETRYABLE_CODES or status >= 500 or status == 429


def configuration_error(
    exc: BaseException,
    error_type: type[FlowstreamError],
    *,
    what: str,
    endpoint_url: str | None,
) -> FlowstreamError | None:
    """A clear error for a setup problem that retrying cannot fix, else None.

    `what` names the thing being reached (e.g. "DynamoDB Streams"); `endpoint_url` the
    endpoint the client used, if one was set.
    """
    from botocore import exceptions as botocore_errors

    where = f" at {endpoint_url}" if endpoint_url else ""
    if isinstance(
        exc, botocore_errors.NoCredentialsError | botocore_errors.PartialCredentialsError
    ):
        return error_type(
            f"no usable AWS credentials for {what}{where} ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass session= an aiobotocore session "
            "that has credentials"
        )
    if isinstance(exc, botocore_errors.NoRegionError):
        return error_type(
            f"no AWS region for {what}; set AWS_DEFAULT_REGION (or AWS_REGION), or pass region="
        )
    if isinstance(
        exc, botocore_errors.EndpointConnectionError | botocore_errors.ConnectTimeoutError
    ):
        return error_type(
            f"cannot reach {what}{where or ' (the endpoint botocore resolved)'}: {exc}; check "
            "endpoint_url= or AWS_ENDPOINT_URL / the service's AWS_ENDPOINT_URL_* variable, and "
            "that the endpoint is up"
        )
    if isinstance(exc, botocore_errors.ParamValidationError):
        return error_type(f"{what} rejected a request before sending it: {exc}")
    code = error_code(exc)
    if code in REFUSED_CODES:
        return error_type(
            f"{what}{where} refused the credentials ({code}: {error_message(exc)}); check the "
            "credentials and the permissions of the role or user"
        )
    return None


def is_setup_error(exc: BaseException) -> bool:
    """True for a setup problem retrying cannot fix (credentials, region, an endpoint
    that cannot be reached, a refused caller): what `configuration_error` explains."""
    return configuration_error(exc, FlowstreamError, what="", endpoint_url=None) is not None


def client_config(max_connections: int) -> AioConfig:
    """No hidden botocore retries (flowstream retries with its own backoff, so stops are
    prompt and retries are visible); a connection pool sized for the shards."""
    from aiobotocore.config import AioConfig

    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_connections,
        connect_timeout=5,
        read_timeout=30,
    )


def get_session() -> AioSession:
    """A new aiobotocore session (aiobotocore is imported on the first call)."""
    from aiobotocore.session import get_session as new_session

    return new_session()


@asynccontextmanager
async def create_client(
    service: str,
    *,
    session: AioSession | None,
    region: str | None,
    endpoint_url: str | None,
    max_connections: int = 10,
) -> AsyncIterator[Any]:
    """An aiobotocore client for `service`, closed on exit, also when the exit is a
    cancellation (an interrupted close leaves aiohttp's session and connections open
    until garbage collection). Credentials, profiles and endpoint variables resolve
    through botocore's standard chain."""
    session = session or get_session()
    creating = session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=client_config(max_connections),
    )
    client = await creating.__aenter__()
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await creating.__aexit__(None, None, None)
