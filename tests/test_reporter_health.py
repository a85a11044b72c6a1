"""System health: the aggregated view (pure), the rich table, and a stopped service
shown down with exactly one alert (log, stream, webhook) until it recovers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from rich.console import Console

from services.reporter.alerts import Alert, Alerter
from services.reporter.health_view import (
    CORE_SERVICES,
    aggregate,
    feed_counters,
    feed_delta,
    render_status_table,
)
from services.reporter.report import FeedHealth
from shared.codec import decode_event
from shared.health import write_heartbeat
from shared.keys import Keys
from tests.polling import until
from tests.test_reporter_report import reporter_settings, serving_reporter

NOW = 1_700_000_000_000
TTL_S = 2.0  # heartbeat TTL in the live test: long enough for a loaded CI machine


def beat(service: str, age_s: float = 0.5, status: str = "ok", **stats: str) -> dict[str, str]:
    return {"service": service, "status": status, "phase": "running",
            "heartbeat": str(int(NOW - age_s * 1000)), "uptime_s": "100", **stats}  # fmt: skip


def test_aggregate_marks_missing_stale_and_unhealthy_services_down() -> None:
    health = {
        "kline_feed:0": beat(
            "kline_feed",
            connected="true",
            symbols="10",
            last_update=str(NOW),
            **{"connections.0.connected": "true", "connections.0.reconnects_total": "3"},
        ),  # fmt: skip
        "kline_feed:1": beat("kline_feed", connected="true", symbols="10"),
        "account_feed": beat(
            "account_feed",
            listen_key_valid="true",
            connected="true",
            last_renewal=str(NOW - 60_000),
            **{"listen_key.renewals_ok_total": "9", "listen_key.renewals_failed_total": "1"},
        ),  # fmt: skip
        "rest_fallback": beat(
            "rest_fallback",
            status="degraded",
            **{"activations.stale_total": "4", "activations.ws_down_total": "2"},
        ),  # fmt: skip
        "trader": beat("trader", age_s=20),  # hung: heartbeat older than the TTL
        "position_controller": beat("position_controller", status="down"),  # says unhealthy
    }
    view = aggregate(health, now_ms=NOW, ttl_s=15, expected=CORE_SERVICES)
    by = {s.name: s for s in view.services}
    assert by["kline_feed:0"].status == "ok" and by["rest_fallback"].status == "degraded"
    assert by["trader"].status == "down" and by["trader"].reason == "heartbeat 20s old"
    assert by["position_controller"].status == "down" and by["position_controller"].alerting
    assert by["reporter"].status == "down" and by["reporter"].reason == "no heartbeat"
    assert "kline_feed" not in by  # satisfied by its instances
    assert view.overall == "down"
    feeds = view.feeds
    assert feeds["kline_feed"] == {"connected": True, "symbols": 20, "instances": 2,
                                   "last_update": "2023-11-14T22:13:20Z"}  # fmt: skip
    assert feeds["account_feed"]["listen_key_valid"] is True
    assert feeds["account_feed"]["last_renewal"] == "2023-11-14T22:12:20Z"
    assert view.connections == (
        {"service": "kline_feed:0", "id": "0", "connected": "true", "reconnects_total": "3"},
    )
    counters = feed_counters(health)
    assert counters == FeedHealth(3, {"stale": 4, "ws_down": 2}, 9, 1, 0)
    assert counters.renewal_success_rate == 0.9


def test_starting_service_is_down_but_not_alerting() -> None:
    h = beat("trader", status="down") | {"phase": "starting"}
    view = aggregate({"trader": h}, now_ms=NOW, ttl_s=15, expected=("trader",))
    assert view.services[0].status == "down" and not view.services[0].alerting
    stale = aggregate(
        {"trader": h | {"heartbeat": str(NOW - 30_000)}}, now_ms=NOW, ttl_s=15, expected=()
    )
    assert stale.services[0].alerting


def test_feed_delta_handles_restarted_counters() -> None:
    now = FeedHealth(10, {"stale": 5}, 4, 1, 2)
    base = FeedHealth(7, {"stale": 1}, 6, 0, 2)
    assert feed_delta(now, base) == FeedHealth(3, {"stale": 4}, 4, 1, 0)


def test_render_status_table() -> None:
    view = aggregate({"trader": beat("trader")}, now_ms=NOW, ttl_s=15, expected=CORE_SERVICES)
    console = Console(record=True, width=160)
    console.print(render_status_table(view))
    text = console.export_text()
    assert "trader" in text and "ok" in text and "no heartbeat" in text
    assert "DOWN" in text  # overall, since most services are missing


async def test_alerter_raises_once_and_resolves(redis_client: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    alerter = Alerter(redis_client, keys, maxlen=100)
    a = Alert("service_down:trader", "trader is down")
    assert await alerter.raise_alert(a, NOW) is True
    assert await alerter.raise_alert(a, NOW + 1) is False
    assert await Alerter(redis_client, keys).raise_alert(a, NOW + 2) is False  # another replica
    assert list(await alerter.active()) == ["service_down:trader"]
    assert await alerter.resolve(a.alert_id, "back", NOW + 3) is True
    assert await alerter.resolve(a.alert_id, "back", NOW + 4) is False
    entries = await redis_client.xrange(keys.stream_alerts)
    assert [decode_event(f)[0] for _, f in entries] == ["alert", "alert_resolved"]


@pytest.fixture
async def webhook_sink() -> AsyncIterator[tuple[str, list[dict]]]:
    """A local webhook receiver that records every JSON body."""
    got: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", got
    finally:
        await runner.cleanup()


async def _keep_beating(
    redis: aioredis.Redis, keys: Keys, names: list[str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        for name in names:
            fields = {"service": name, "status": "ok", "phase": "running",
                      "heartbeat": str(int(time.time() * 1000))}  # fmt: skip
            await write_heartbeat(redis, keys.health(name), fields, TTL_S)
        await asyncio.sleep(0.1)


async def test_stopped_service_is_down_with_exactly_one_alert(
    redis_client: aioredis.Redis,
    redis_url: str,
    prefix: str,
    webhook_sink: tuple[str, list[dict]],
    caplog: pytest.LogCaptureFixture,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    url, hooks = webhook_sink
    keys = Keys(prefix)
    settings = reporter_settings(redis_url, prefix, tmp_path, webhook_url=url, heartbeat_ttl=TTL_S)
    others = [s for s in CORE_SERVICES if s != "reporter"]
    stops = {name: asyncio.Event() for name in others}
    beaters = [
        asyncio.create_task(_keep_beating(redis_client, keys, [n], stops[n])) for n in others
    ]
    caplog.set_level(logging.WARNING, logger="services.reporter.alerts")
    try:
        async with serving_reporter(settings, health_interval=0.1, startup_grace=0.3) as svc:
            await until(lambda: svc.view is not None and svc.view.overall == "ok", 5)
            await asyncio.sleep(0.5)  # past the grace: nothing is down, nothing raised
            assert await redis_client.xlen(keys.stream_alerts) == 0

            stops["trader"].set()  # the trader stops heartbeating; its hash expires after TTL_S
            await until(lambda: redis_client.xlen(keys.stream_alerts), 5)
            await asyncio.sleep(1.0)  # ten more health cycles with trader still down
            entries = await redis_client.xrange(keys.stream_alerts)
            assert len(entries) == 1
            etype, data, _ = decode_event(entries[0][1])
            assert etype == "alert" and data["alert_id"] == "service_down:trader"
            assert svc.view.service("trader").status == "down"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{svc.http_port}/api/status") as resp:
                    status = await resp.json()
            assert {s["name"]: s["status"] for s in status["services"]}["trader"] == "down"
            assert status["overall"] == "down"
            await until(lambda: len(hooks) >= 1, 5)
            assert [h["alert_id"] for h in hooks] == ["service_down:trader"]
            raised_logs = [r for r in caplog.records if "alert raised" in r.getMessage()]
            assert len(raised_logs) == 1

            stops["trader"] = asyncio.Event()  # it comes back
            beaters.append(
                asyncio.create_task(_keep_beating(redis_client, keys, ["trader"], stops["trader"]))
            )
            await until(lambda: _len_is(redis_client, keys, 2), 5)
            entries = await redis_client.xrange(keys.stream_alerts)
            assert [decode_event(f)[0] for _, f in entries] == ["alert", "alert_resolved"]
            assert await redis_client.hlen(keys.alerts_active) == 0
            await until(lambda: svc.view.service("trader").status == "ok", 5)
    finally:
        for ev in stops.values():
            ev.set()
        await asyncio.gather(*beaters)


async def _len_is(redis: aioredis.Redis, keys: Keys, n: int) -> bool:
    return await redis.xlen(keys.stream_alerts) == n
