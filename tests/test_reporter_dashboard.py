"""Dashboard: headless Chromium shows what is in Redis and follows it live over SSE;
SSE framing; read-only; login when exposed; refusal to start exposed without a secret.

Chromium is required: if /usr/bin/chromium is missing the browser test FAILS (CI
installs it with `apt-get install -y chromium`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from playwright.async_api import async_playwright

from services.reporter.dashboard import (
    COOKIE,
    Dashboard,
    SnapshotHub,
    check_exposure,
    dashboard_token,
    is_loopback,
)
from shared.config import ConfigError, load_settings
from shared.health import write_heartbeat
from shared.keys import Keys
from shared.models import Position
from tests.polling import until
from tests.test_reporter_report import publish_trades, reporter_settings, serving_reporter, trade

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
REPO = Path(__file__).resolve().parent.parent
D = Decimal


async def seed(redis: aioredis.Redis, keys: Keys) -> None:
    now = int(time.time() * 1000)
    pos = Position(
        "BTCUSDT", D("0.015"), D("60000"), D("60000"), D("18.75"), "cross", D("0"), 12, now
    )
    await redis.hset(keys.position("BTCUSDT"), mapping=pos.to_hash())
    await redis.hset(keys.prices, "BTCUSDT", "61250")
    fields = {"service": "kline_feed", "status": "ok", "phase": "running", "heartbeat": str(now),
              "connected": "true", "symbols": "20", "connections.0.connected": "true",
              "connections.0.streams": "20"}  # fmt: skip
    await write_heartbeat(redis, keys.health("kline_feed"), fields, 120)


@asynccontextmanager
async def browser_page() -> AsyncIterator:  # type: ignore[type-arg]
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: apt-get install -y chromium"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            yield page
        finally:
            await browser.close()


async def test_dashboard_in_chromium_shows_redis_state_live(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    await seed(redis_client, keys)
    # a long TTL: the seeded heartbeat must stay fresh however slowly Chromium starts
    settings = reporter_settings(redis_url, prefix, tmp_path, heartbeat_ttl=120)
    async with serving_reporter(settings, refresh_interval=0.2, health_interval=0.1) as svc:
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{svc.http_port}/")
            positions = page.locator("#positions tbody")
            await positions.get_by_text("BTCUSDT").wait_for(timeout=10_000)
            row = await positions.locator("tr").first.inner_text()
            assert "LONG" in row and "18.75" in row and "12x" in row and "61,250" in row
            services = page.locator("#services tbody")
            kline_row = await services.locator("tr", has_text="kline_feed").inner_text()
            assert "ok" in kline_row
            trader_row = await services.locator("tr", has_text="trader").inner_text()
            assert "down" in trader_row and "no heartbeat" in trader_row
            assert "20 symbols" in await page.locator("#feeds").inner_text()
            assert await page.locator("#overall").inner_text() == "DOWN"

            # live: a new position in Redis appears without a reload
            url_before = page.url
            eth = Position(
                "ETHUSDT", D("-0.5"), D("3000"), D("3000"), D("-4.2"), "cross", D("0"), 5, 1
            )
            await redis_client.hset(keys.position("ETHUSDT"), mapping=eth.to_hash())
            await positions.get_by_text("ETHUSDT").wait_for(timeout=10_000)
            eth_row = await positions.locator("tr", has_text="ETHUSDT").inner_text()
            assert "SHORT" in eth_row and "-4.20" in eth_row
            assert page.url == url_before
            assert int(await page.evaluate("document.body.dataset.version")) >= 2

            # today's equity curve follows the trades stream (first scan, then increments)
            now = int(time.time() * 1000)
            for i, net in enumerate(("5", "-2")):
                await publish_trades(
                    redis_client, keys, [trade(f"live{i}", "BTCUSDT", net, "0", "0", now + i)]
                )
                await (
                    page.locator("#equity-info")
                    .get_by_text(f"{i + 1} trades")
                    .wait_for(timeout=10_000)
                )
            assert "max drawdown 2.00 USDT" in await page.locator("#equity-info").inner_text()
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


async def test_sse_stream_and_read_only_api(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    await seed(redis_client, keys)
    settings = reporter_settings(redis_url, prefix, tmp_path)
    async with serving_reporter(settings, refresh_interval=0.1) as svc:
        base = f"http://127.0.0.1:{svc.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/events") as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                snapshots = []
                async with asyncio.timeout(10):
                    async for line in resp.content:
                        if line.startswith(b"data: "):
                            snapshots.append(orjson.loads(line[6:]))
                            if len(snapshots) == 2:
                                break
            assert [p["symbol"] for p in snapshots[0]["positions"]] == ["BTCUSDT"]
            assert snapshots[1]["now"] >= snapshots[0]["now"]
            await until(lambda: svc.dashboard is not None and svc.dashboard.clients == 0, 5)
            for method in ("POST", "PUT", "DELETE"):
                async with http.request(method, f"{base}/api/status") as resp:
                    assert resp.status == 405
            async with http.get(f"{base}/static/../service.py") as resp:
                assert resp.status == 404
            # a client still connected when the service stops: its stream ends promptly
            async with http.get(f"{base}/api/events") as resp:
                await resp.content.readline()
                svc.request_stop("test: stop with an SSE client connected")
                async with asyncio.timeout(5):
                    rest = await resp.content.read()
                assert rest is not None


@asynccontextmanager
async def guarded_app(token: str) -> AsyncIterator[str]:
    """The dashboard routes as they run when exposed (token required), served on
    loopback for the test."""
    hub = SnapshotHub()
    hub.publish({"positions": [{"symbol": "BTCUSDT"}]})

    async def status() -> dict:
        return {"overall": "ok"}

    app = web.Application()
    app.add_routes(Dashboard(hub, status, token=token, keepalive_s=0.2).routes())
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        hub.close()
        await runner.cleanup()


async def test_exposed_dashboard_requires_the_derived_token() -> None:
    token = dashboard_token("s3cret-session")
    async with guarded_app(token) as base:
        async with aiohttp.ClientSession() as http:
            for path in ("/api/status", "/api/dashboard", "/api/events"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401, path
            async with http.get(base + "/", allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"] == "/login"
            bearer = {"Authorization": f"Bearer {token}"}
            async with http.get(base + "/api/status", headers=bearer) as resp:
                assert resp.status == 200 and await resp.json() == {"overall": "ok"}
            wrong = {"Authorization": "Bearer " + dashboard_token("other")}
            async with http.get(base + "/api/status", headers=wrong) as resp:
                assert resp.status == 401
            async with http.post(
                base + "/login", data={"token": "nope"}, allow_redirects=False
            ) as resp:
                assert resp.status == 302 and "failed" in resp.headers["Location"]
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.post(
                base + "/login", data={"token": token}, allow_redirects=False
            ) as resp:
                assert resp.status == 302 and COOKIE in resp.cookies
                assert "s3cret-session" not in str(resp.headers)
            async with http.get(base + "/api/dashboard") as resp:
                assert resp.status == 200
                assert (await resp.json())["positions"][0]["symbol"] == "BTCUSDT"
            async with http.get(base + "/") as resp:
                assert resp.status == 200 and "SelfLearningTrader" in await resp.text()


def test_exposure_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSION_SECRET", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("example.org")
    assert check_exposure(load_settings(service={"host": "127.0.0.1"})) is None
    with pytest.raises(ConfigError, match="SESSION_SECRET"):
        check_exposure(load_settings(service={"host": "0.0.0.0"}))
    monkeypatch.setenv("SESSION_SECRET", "abc123xyz")
    token = check_exposure(load_settings(service={"host": "0.0.0.0"}))
    assert token == dashboard_token("abc123xyz") and "abc123xyz" not in token


def test_refuses_to_start_exposed_without_session_secret() -> None:
    env = {
        k: v for k, v in os.environ.items() if k != "SESSION_SECRET" and not k.startswith("SLT_")
    }
    env |= {"SLT_SERVICE__HOST": "0.0.0.0", "SLT_REDIS__URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.reporter"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SESSION_SECRET" in lines[0] and "0.0.0.0" in lines[0]
    env["SESSION_SECRET"] = "tok-source-42"
    proc = subprocess.run(
        [sys.executable, "-m", "services.reporter", "--token"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == dashboard_token("tok-source-42")
