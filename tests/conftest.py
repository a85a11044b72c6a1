"""Shared fixtures: a real redis-server per test session, on a free loopback port.

`REDIS_URL` points the suite at another server instead.  Each test gets its own key
prefix, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from shared.testing import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for the whole test session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    return redis_server


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test (`t<hex>:`)."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()
