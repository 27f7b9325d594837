"""Options the `flowstream` commands share: the aws CLI's global options, where a stream
is, and where a pipeline keeps its checkpoints.

Nothing here imports aiobotocore: the commands import it when they make a client.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from flowstream.errors import FlowstreamError, PipelineError

if TYPE_CHECKING:
    from flowstream.checkpoints.base import CheckpointStore
    from flowstream.leases.dynamodb import DynamoDBLeases
    from flowstream.sources.dynamodb import DynamoDBSource

__all__ = [
    "CHECKPOINTS_HELP",
    "add_global_options",
    "add_progress_options",
    "add_stream_arguments",
    "apply_global_options",
    "checkpoint_store",
    "fail",
    "lease_table",
    "stream_source",
]

CHECKPOINTS_HELP: Final = (
    "where the pipeline keeps its checkpoints: sqlite:PATH, dynamodb:TABLE or memory"
)

_IGNORE_ENDPOINTS: Final = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
#: Credentials the environment would give ahead of a profile (botocore's EnvProvider).
_CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The aws CLI's `--endpoint-url`, `--region` and `--profile`, before the command."""
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="send every AWS call to URL (e.g. http://localhost:4566 for a local endpoint); "
        "sets AWS_ENDPOINT_URL",
    )
    parser.add_argument("--region", help="the AWS region (sets AWS_DEFAULT_REGION and AWS_REGION)")
    parser.add_argument(
        "--profile",
        help="a named profile of ~/.aws/config and ~/.aws/credentials (sets AWS_PROFILE); "
        "its credentials win over AWS_ACCESS_KEY_ID, as with the aws CLI",
    )


def apply_global_options(args: argparse.Namespace) -> None:
    """Set the environment botocore reads, before any command (or user code a command
    imports) makes a client, so that every client in the process follows the options.

    `--endpoint-url` wins over service-specific ``AWS_ENDPOINT_URL_*`` variables and
    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``, which are dropped; `--profile` drops the
    credential variables, which botocore would otherwise take before the profile.
    Raises `PipelineError` for a profile that does not exist."""
    environ = os.environ
    if args.endpoint_url is not None:
        if not args.endpoint_url.startswith(("http://", "https://")):
            raise PipelineError(
                f"--endpoint-url {args.endpoint_url!r} is not a URL; pass one with its scheme, "
                "e.g. --endpoint-url http://localhost:4566"
            )
        for name in list(environ):
            if name.startswith("AWS_ENDPOINT_URL_") or name == _IGNORE_ENDPOINTS:
                del environ[name]
        environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    if args.region is not None:
        environ["AWS_DEFAULT_REGION"] = environ["AWS_REGION"] = args.region
    if args.profile is not None:
        from botocore.session import Session

        profiles = Session().available_profiles
        if args.profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise PipelineError(
                f"--profile {args.profile!r} is not in the AWS config or credentials files "
                f"(profiles there: {known}); check the name, or AWS_CONFIG_FILE and "
                "AWS_SHARED_CREDENTIALS_FILE"
            )
        environ.pop("AWS_DEFAULT_PROFILE", None)
        environ["AWS_PROFILE"] = args.profile
        for name in _CREDENTIAL_VARIABLES:
            environ.pop(name, None)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """TABLE (its latest stream) or --stream-arn ARN."""
    parser.add_argument(
        "table", metavar="TABLE", nargs="?", help="the table whose latest stream to read"
    )
    parser.add_argument("--stream-arn", metavar="ARN", help="a stream by its ARN, instead of TABLE")


def stream_source(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    start: Literal["trim_horizon", "latest"] = "trim_horizon",
    page_limit: int = 1000,
) -> DynamoDBSource:
    """The project's own DynamoDB source for TABLE or --stream-arn (a usage error, exit
    2, when neither or both are given)."""
    if (args.table is None) == (args.stream_arn is None):
        parser.error("give TABLE or --stream-arn ARN (one of them)")
    from flowstream import sources

    return sources.dynamodb(
        args.table, stream_arn=args.stream_arn, start=start, page_limit=page_limit
    )


def add_progress_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """--pipeline NAME with --checkpoints SPEC or --leases TABLE."""
    parser.add_argument(
        "--pipeline",
        metavar="NAME",
        required=required,
        help="the pipeline's name (fs.Pipeline(..., name=NAME)): its checkpoints' key",
    )
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--checkpoints", metavar="SPEC", help=CHECKPOINTS_HELP)
    where.add_argument(
        "--leases",
        metavar="TABLE",
        help="the pipeline's lease table (run with leases=leases.dynamodb(TABLE))",
    )


def checkpoint_store(spec: str, *, existing: bool = False) -> CheckpointStore:
    """The store `--checkpoints SPEC` names: ``sqlite:PATH``, ``dynamodb:TABLE`` or
    ``memory``. With `existing`, for commands that only read or change checkpoints, the
    file or table must be there already (a typo must not read as "nothing saved")."""
    from flowstream import checkpoints

    kind, colon, where = spec.partition(":")
    if kind == "memory" and not colon:
        if existing:
            raise PipelineError(
                f"--checkpoints {spec!r}: in-memory checkpoints live and die with the "
                "process that runs the pipeline, so there is nothing to read or change "
                "from here; give sqlite:PATH or dynamodb:TABLE"
            )
        return checkpoints.memory()
    if kind == "sqlite" and where and existing and not Path(where).is_file():
        raise PipelineError(
            f"--checkpoints {spec!r}: there is no file {where}; give the path the "
            "pipeline runs with (relative to the current directory)"
        )
    try:
        if kind == "sqlite" and where:
            return checkpoints.sqlite(where)
        if kind == "dynamodb" and where:
            return checkpoints.dynamodb(where, create=not existing)
    except FlowstreamError as exc:
        raise PipelineError(f"--checkpoints {spec!r}: {exc}") from None
    raise PipelineError(
        f"--checkpoints {spec!r} is not a checkpoint store; write sqlite:PATH (a file), "
        "dynamodb:TABLE (a table name) or memory"
    )


def lease_table(table: str) -> DynamoDBLeases:
    """The lease table `--leases TABLE` names, for reading: never created."""
    from flowstream import leases

    try:
        return leases.dynamodb(table, create=False)
    except FlowstreamError as exc:
        raise PipelineError(f"--leases {table!r}: {exc}") from None


def fail(command: str, exc: BaseException) -> int:
    """Print `exc` as the one-line error of `command`; the exit status, 1."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"flowstream {command}: error: {message}", file=sys.stderr)
    return 1
