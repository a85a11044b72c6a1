"""Operator commands against a real Redis: halt/resume, tail decoding, status."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from shared.codec import encode_event
from shared.config import load_settings
from shared.keys import Keys
from shared.ops import set_halt, status, tail


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str):
    monkeypatch.setenv("SLT_REDIS__URL", redis_url)
    monkeypatch.setenv("SLT_REDIS__PREFIX", prefix)
    return load_settings()


async def test_halt_and_resume_set_and_clear_the_switch(
    settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    key = Keys(prefix).halt
    assert await set_halt(settings, True, "news") == 0
    assert json.loads(await redis_client.get(key))["reason"] == "news"
    assert await set_halt(settings, False, "") == 0
    assert await redis_client.get(key) is None


async def test_tail_prints_decoded_entries(
    settings, redis_client: aioredis.Redis, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Keys(prefix).stream_klines
    for i in range(3):
        fields = encode_event("kline", {"symbol": "BTCUSDT", "close": 100 + i},
                              symbol="BTCUSDT", event_time=1_700_000_000_000 + i)  # fmt: skip
        await redis_client.xadd(stream, fields)
    await redis_client.xadd(stream, {"type": "kline", "data": b"\xc1garbage"})
    assert await tail(settings, "klines", 10, follow=False) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert '"close": 100' in lines[0] and '"close": 102' in lines[2]
    assert "2023-11-14 22:13:20" in lines[0]
    assert "undecodable" in lines[3]


async def test_status_reports_no_reachable_redis_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.testing import free_port

    monkeypatch.setenv("SLT_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")
    assert await status(load_settings()) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slt status: cannot reach Redis")
