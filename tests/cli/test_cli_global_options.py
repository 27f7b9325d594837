"""`flowstream --endpoint-url/--region/--profile COMMAND`: set the environment botocore
reads, for every client of the process and for the user's code a command imports;
without them the AWS_* environment applies as it is."""

from __future__ import annotations

from pathlib import Path

from cli.cli_support import Aws, base_env, flowstream
from moto_server import closed_port


async def test_endpoint_url_wins_over_the_service_endpoint_variables(moto_url: str) -> None:
    stream_arn = Aws(moto_url).create_table("Orders")
    nowhere = f"http://127.0.0.1:{closed_port()}"
    env = base_env(AWS_ENDPOINT_URL_DYNAMODB=nowhere, AWS_ENDPOINT_URL_DYNAMODB_STREAMS=nowhere)
    with_option = await flowstream("--endpoint-url", moto_url, "describe", "Orders", env=env)
    assert with_option.returncode == 0, with_option.stderr
    assert with_option.stdout.startswith(f"stream {stream_arn}: 1 shard(s), 1 open\n")

    without = await flowstream("describe", "Orders", env=env)
    assert without.returncode == 1
    assert without.stderr.startswith("flowstream describe: error: cannot reach DynamoDB")
    assert without.stderr.count("\n") == 1

    # no option: AWS_ENDPOINT_URL from the environment applies as it is
    from_env = await flowstream("describe", "Orders", env=base_env(AWS_ENDPOINT_URL=moto_url))
    assert from_env.stdout == with_option.stdout


async def test_region_picks_the_region_of_the_table(moto_url: str) -> None:
    stream_arn = Aws(moto_url, region="eu-west-1").create_table("Orders")
    assert ":eu-west-1:" in stream_arn
    found = await flowstream(
        "--endpoint-url", moto_url, "--region", "eu-west-1", "describe", "Orders"
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(f"stream {stream_arn}:")
    default = await flowstream("--endpoint-url", moto_url, "describe", "Orders")
    assert default.returncode == 1
    assert "table 'Orders' does not exist in us-east-1" in default.stderr


async def test_profile_brings_its_credentials_region_and_endpoint(
    moto_url: str, tmp_path: Path
) -> None:
    stream_arn = Aws(moto_url, region="eu-west-1").create_table("Orders")
    config = tmp_path / "config"
    config.write_text(f"[profile local]\nregion = eu-west-1\nendpoint_url = {moto_url}\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[local]\naws_access_key_id = x\naws_secret_access_key = y\n")
    env = base_env(
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_DEFAULT_REGION=None,
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
    )
    done = await flowstream("--profile", "local", "describe", "Orders", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"stream {stream_arn}:")

    missing = await flowstream("--profile", "prod", "describe", "Orders", env=env)
    assert missing.returncode == 1
    assert missing.stderr == (
        "flowstream describe: error: --profile 'prod' is not in the AWS config or credentials "
        "files (profiles there: local); check the name, or AWS_CONFIG_FILE and "
        "AWS_SHARED_CREDENTIALS_FILE\n"
    )


async def test_user_code_sees_the_options(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(
        "import os\n"
        "import flowstream as fs\n"
        "from flowstream import sinks, sources\n"
        "where = os.environ['AWS_REGION'] + ' ' + os.environ['AWS_DEFAULT_REGION'] + ' ' "
        "+ os.environ['AWS_ENDPOINT_URL']\n"
        "p = fs.Pipeline(sources.dynamodb(table='T'), name=where).to(sinks.stdout())\n"
    )
    done = await flowstream(
        "--endpoint-url", "http://localhost:4566", "--region", "ap-south-1",
        "lint", f"{tmp_path / 'jobs.py'}:p",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pipeline 'ap-south-1 ap-south-1 http://localhost:4566'\n")


async def test_options_go_before_the_command() -> None:
    late = await flowstream("describe", "Orders", "--region", "eu-west-1")
    assert late.returncode == 2
    assert "unrecognized arguments: --region eu-west-1" in late.stderr
    bad = await flowstream("--endpoint-url", "localhost:4566", "describe", "Orders")
    assert bad.returncode == 1
    assert bad.stderr == (
        "flowstream describe: error: --endpoint-url 'localhost:4566' is not a URL; pass one "
        "with its scheme, e.g. --endpoint-url http://localhost:4566\n"
    )
