"""Webhook: retried with bounded jittered backoff against a real local server; a dead
webhook (connection refused, or hanging) never blocks the daily report."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from services.reporter.webhook import RetryPolicy, WebhookSender, post_json, redact_url
from shared.codec import encode_event
from shared.keys import Keys
from shared.testing import free_port
from tests.polling import until
from tests.test_reporter_report import (
    DAY,
    HAND,
    START,
    H,
    publish_trades,
    reporter_settings,
    serving_reporter,
    webhook_server,
)

FAST = RetryPolicy(
    attempts=4, base_delay=0.01, max_delay=0.05, attempt_timeout=0.3, total_timeout=2.0
)


async def test_retried_until_the_server_accepts() -> None:
    async with webhook_server(fail_first=2) as (url, got), aiohttp.ClientSession() as http:
        result = await post_json(http, url, {"date": DAY, "net": "49.5"}, FAST)
    assert result.ok and result.attempts == 3 and result.status == 200
    assert got == [{"date": DAY, "net": "49.5"}] * 3


async def test_gives_up_after_the_bounded_attempts() -> None:
    async with webhook_server(fail_first=100) as (url, got), aiohttp.ClientSession() as http:
        result = await post_json(http, url, {"x": 1}, FAST)
    assert not result.ok and result.attempts == 4 and len(got) == 4 and result.error == "HTTP 500"


async def test_a_refusal_is_not_retried() -> None:
    calls = 0

    async def handle(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=400)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as http:
            result = await post_json(http, f"http://127.0.0.1:{runner.addresses[0][1]}/", {}, FAST)
    finally:
        await runner.cleanup()
    assert not result.ok and result.attempts == 1 and result.status == 400 and calls == 1


async def test_connection_refused_is_bounded() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        result = await post_json(http, url, {"x": 1}, FAST)
    assert not result.ok and result.attempts == 4 and result.status is None
    assert "Connect" in (result.error or "")
    assert time.monotonic() - started < 2


async def test_sender_runs_in_background_with_a_total_timeout() -> None:
    policy = RetryPolicy(
        attempts=10, base_delay=0.01, max_delay=0.01, attempt_timeout=5, total_timeout=0.4
    )
    async with webhook_server(hang=True) as (url, got):
        sender = WebhookSender(url, policy)
        started = time.monotonic()
        task = sender.submit({"kind": "test"})
        assert task is not None and time.monotonic() - started < 0.05  # returned at once
        result = await asyncio.wait_for(task, 3)
        assert not result.ok and "gave up" in (result.error or "")
        assert 0.35 < time.monotonic() - started < 2
        assert sender.stats() == {"sent_total": 0, "failed_total": 1, "in_flight": 0}
        await sender.close()
    assert len(got) == 1


async def test_sender_without_url_is_a_no_op() -> None:
    sender = WebhookSender("")
    assert sender.submit({"x": 1}) is None and not sender.enabled
    await sender.close()


@given(st.integers(1, 50), st.floats(0, 1))
def test_backoff_is_jittered_and_bounded(attempt: int, r: float) -> None:
    p = RetryPolicy(base_delay=0.5, max_delay=8.0)
    d = p.delay(attempt, lambda: r)
    assert 0 <= d <= min(8.0, 0.5 * 2 ** (attempt - 1))
    assert d == r * min(8.0, 0.5 * 2 ** (attempt - 1))


def test_redact_url_drops_credentials_and_query() -> None:
    assert redact_url("https://u:pw@hooks.example/x/y?token=abc") == "https://hooks.example/x/y"


async def _report_with_webhook(
    redis: aioredis.Redis, redis_url: str, prefix: str, tmp: Path, url: str
) -> tuple[float, dict[str, int]]:
    """(seconds from the boundary-crossing event to the report on the stream, webhook
    stats at that moment)."""
    keys = Keys(prefix)
    await publish_trades(redis, keys, HAND[1:6])
    settings = reporter_settings(redis_url, prefix, tmp, webhook_url=url)
    async with serving_reporter(settings, poll_interval=0.02) as svc:
        await redis.xadd(keys.stream_klines, encode_event("kline", {}, event_time=START + 23 * H))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await redis.xadd(keys.stream_klines, encode_event("kline", {}, event_time=START + 25 * H))
        await until(lambda: svc.reports == 1, 10)
        elapsed = time.monotonic() - t0
        assert await redis.xlen(keys.stream_reports) == 1 and svc.webhook is not None
        stats = svc.webhook.stats()
    return elapsed, stats


async def test_hanging_webhook_does_not_block_the_report(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    async with webhook_server(hang=True) as (url, got):
        elapsed, stats = await _report_with_webhook(redis_client, redis_url, prefix, tmp_path, url)
        assert len(got) == 1 and got[0]["kind"] == "daily_report" and got[0]["date"] == DAY
    assert elapsed < 3  # the default policy would take 30 s to give up
    assert stats["in_flight"] == 1 and stats["sent_total"] == 0  # still hanging in the background
    assert (tmp_path / DAY / "report.md").exists()


async def test_refused_webhook_does_not_block_the_report(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    elapsed, stats = await _report_with_webhook(redis_client, redis_url, prefix, tmp_path, url)
    assert elapsed < 3
    assert stats["sent_total"] == 0 and stats["in_flight"] + stats["failed_total"] >= 1
    assert await redis_client.smembers(Keys(prefix).report_days) == {DAY.encode()}
