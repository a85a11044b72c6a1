"""The embedded redis-server behind `slt up` and the test fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shared.testing import RedisServer


def test_relative_data_dir_works_and_keeps_the_aof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slt up --data-dir var` passes a relative path; redis-server chdirs into it."""
    monkeypatch.chdir(tmp_path)
    server = RedisServer(Path("var") / "redis", aof=True)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.close()
    finally:
        server.stop()
    again = RedisServer(Path("var") / "redis", aof=True)
    again.start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        again.stop()
    assert (tmp_path / "var" / "redis" / "redis.log").exists()
