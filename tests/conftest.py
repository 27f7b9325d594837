"""Shared test setup: fake AWS settings for every test, and moto's server as fixtures."""

from __future__ import annotations

import os

import pytest

# moto's server for every test that asks for it: `moto_server` (session) and `moto_url`.
pytest_plugins = ["moto_server", "redis_server", "sink_support", "dynamo_proxy"]

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
