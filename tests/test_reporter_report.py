"""Daily report: numbers against a hand-computed day, drawdown and stats arithmetic
(Hypothesis), the event-time day boundary, rendering, and no secret in any output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.reporter.render import render_html, render_markdown, write_report
from services.reporter.report import (
    DayBoundary,
    ModelInfo,
    PositionView,
    ReportInputs,
    build_report,
    compute_report,
    day_bounds,
    max_drawdown,
    trade_stats,
    utc_day,
)
from services.reporter.service import ReporterService
from shared.codec import decode_event, encode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.models import ClosedTrade, Position
from shared.runtime import serve
from tests.polling import until


def reporter_settings(redis_url: str, prefix: str, reports_dir: Path, **service: Any) -> Settings:
    """Settings for an in-process reporter on loopback (shared by the reporter tests)."""
    svc = {"heartbeat_interval": 0.2, "heartbeat_ttl": 5.0, "reports_dir": str(reports_dir)}
    return load_settings(redis={"url": redis_url, "prefix": prefix}, service={**svc, **service})


@asynccontextmanager
async def serving_reporter(settings: Settings, **kw: Any) -> AsyncIterator[ReporterService]:
    """A ReporterService served in this loop on port 0; stopped (and awaited) on exit."""
    svc = ReporterService(settings, **kw)
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False))
    await until(lambda: svc.phase == "running" or task.done(), 10)
    assert not task.done(), f"reporter ended early with exit code {task.result()}"
    try:
        yield svc
    finally:
        svc.request_stop("test over")
        assert await asyncio.wait_for(task, 15) == 0


D = Decimal
DAY = "2024-03-10"
START = 1_710_028_800_000  # 2024-03-10T00:00:00Z
H = 3_600_000


def trade(
    tid: str, symbol: str, gross: str, fees: str, funding: str, exit_time: int, lev: int = 5
) -> ClosedTrade:
    net = D(gross) - D(fees) + D(funding)
    return ClosedTrade(
        trade_id=tid, symbol=symbol, side="LONG", quantity=D("1"), entry_price=D("100"),
        exit_price=D("101"), entry_time=exit_time - 60_000, exit_time=exit_time, fees=D(fees),
        funding=D(funding), gross_pnl=D(gross), net_pnl=net, exit_reason="take_profit",
        leverage=lev,
    )  # fmt: skip


# Hand-computed day: nets 95, -51.5, -33, 39, 0 (breakeven); one trade on each side of
# the day must be ignored.
HAND = [
    trade("t0", "BTCUSDT", "500", "1", "0", START - 1),  # previous day
    trade("t1", "BTCUSDT", "100", "4", "-1", START + 1 * H, lev=10),
    trade("t2", "ETHUSDT", "-50", "2", "0.5", START + 2 * H, lev=20),
    trade("t3", "BTCUSDT", "-30", "3", "0", START + 3 * H, lev=5),
    trade("t4", "SOLUSDT", "40", "1", "0", START + 4 * H, lev=3),
    trade("t5", "ETHUSDT", "2", "2", "0", START + 5 * H, lev=1),
    trade("t6", "BTCUSDT", "-900", "1", "0", START + 24 * H),  # next day
]


def hand_report(**kw):  # type: ignore[no-untyped-def]
    inputs = ReportInputs(
        date=DAY, generated_at=START + 24 * H, trades=HAND, start_equity=D("1000"), **kw
    )
    return compute_report(inputs)


def test_report_numbers_match_hand_computation() -> None:
    r = hand_report()
    t = r.trades
    assert (t.count, t.wins, t.losses) == (5, 2, 2)
    assert t.win_rate == D("0.4")
    assert t.avg_win == D("67")  # (95 + 39) / 2
    assert t.avg_loss == D("-42.25")  # (-51.5 - 33) / 2
    assert t.gross_pnl == D("62")
    assert t.fees == D("12")
    assert t.funding == D("-0.5")
    assert t.net_pnl == r.realized_pnl == D("49.5")
    assert (t.best, t.worst) == (D("95"), D("-51.5"))
    # equity 1000 -> 1095 -> 1043.5 -> 1010.5 -> 1049.5 -> 1049.5
    assert [v for _, v in r.equity.points] == [1000, 1095, 1043.5, 1010.5, 1049.5, 1049.5]
    assert r.equity.max_drawdown == D("84.5")
    assert abs(r.equity.max_drawdown_pct - D("84.5") / D("1095")) < D("1e-12")
    assert r.equity.end == D("1049.5")
    by = {s.symbol: s.stats for s in r.per_symbol}
    assert list(by) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert (by["BTCUSDT"].count, by["BTCUSDT"].net_pnl, by["BTCUSDT"].fees) == (2, D("62"), D("7"))
    assert (by["ETHUSDT"].wins, by["ETHUSDT"].losses, by["ETHUSDT"].net_pnl) == (0, 1, D("-51.5"))
    assert r.exposure.trade_max_leverage == 20
    assert r.exposure.trade_avg_leverage == D("7.8")


def test_unrealized_and_exposure_from_positions() -> None:
    pos = [
        PositionView("BTCUSDT", D("0.5"), D("60000"), D("61000"), D("500"), D("10")),
        PositionView("ETHUSDT", D("-2"), D("3000"), D("0"), D("-20"), D("3")),
        PositionView("SOLUSDT", D("0"), D("0"), D("0"), D("0"), D("0")),  # flat: ignored
    ]
    r = hand_report(positions=pos)
    assert r.unrealized_pnl == D("480")
    assert r.exposure.open_positions == 2
    assert r.exposure.notional == D("30500") + D("6000")  # no mark for ETH: entry price
    assert r.exposure.ratio == D("36500") / (D("1049.5") + D("480"))
    assert r.exposure.open_max_leverage == 10


def test_unknown_opening_equity_gives_pnl_curve_without_percentage() -> None:
    r = compute_report(ReportInputs(date=DAY, generated_at=0, trades=HAND))
    assert r.equity.start is None and r.equity.max_drawdown_pct is None
    assert r.equity.max_drawdown == D("84.5")
    assert r.equity.points[0] == (START, 0.0)


def test_empty_day() -> None:
    r = compute_report(ReportInputs(date="2024-03-12", generated_at=0, trades=HAND))
    assert r.trades.count == 0 and r.trades.win_rate is None and r.realized_pnl == 0
    assert r.equity.max_drawdown == 0
    assert "(none)" in render_markdown(r)


def test_day_helpers() -> None:
    assert day_bounds(DAY) == (START, START + 24 * H)
    assert utc_day(START - 1) == "2024-03-09" and utc_day(START) == DAY


money = st.decimals(min_value=-10_000, max_value=10_000, places=2, allow_nan=False)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(money, min_size=1, max_size=40))
def test_max_drawdown_equals_brute_force(values: list[Decimal]) -> None:
    dd, _ = max_drawdown(values)
    brute = max(
        (values[i] - values[j] for i in range(len(values)) for j in range(i, len(values))),
        default=D(0),
    )
    assert dd == max(brute, D(0))


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(money, st.decimals(0, 50, places=2), money), max_size=30))
def test_trade_stats_invariants(rows: list[tuple[Decimal, Decimal, Decimal]]) -> None:
    trades = [
        trade(f"t{i}", "BTCUSDT", str(g), str(f), str(fu), START + i)
        for i, (g, f, fu) in enumerate(rows)
    ]
    s = trade_stats(trades)
    nets = [g - f + fu for g, f, fu in rows]
    assert s.count == len(rows)
    assert s.net_pnl == sum(nets, D(0)) == s.gross_pnl - s.fees + s.funding
    assert s.wins == sum(1 for n in nets if n > 0) and s.losses == sum(1 for n in nets if n < 0)
    if s.wins:
        assert abs(s.avg_win * s.wins - sum((n for n in nets if n > 0), D(0))) < D("1e-20")
        assert s.avg_win > 0
    if s.losses:
        assert abs(s.avg_loss * s.losses - sum((n for n in nets if n < 0), D(0))) < D("1e-20")


def test_day_boundary_by_event_time() -> None:
    b = DayBoundary(grace_ms=60_000)
    assert b.observe(START + 5 * H) == []
    assert b.observe(START + 24 * H + 30_000) == []  # within the grace
    assert b.observe(START + 24 * H + 61_000) == [DAY]
    assert b.observe(START + 24 * H + 120_000) == []  # same new day: nothing more
    assert b.observe(START + 23 * H) == []  # a late event of the old day
    # a gap of three days reports each missing day once
    assert b.observe(START + 4 * 24 * H + 61_000) == ["2024-03-11", "2024-03-12", "2024-03-13"]


def test_day_boundary_resumes_after_last_reported_day_and_follows_a_new_replay() -> None:
    b = DayBoundary(last_reported="2024-03-09", grace_ms=0)
    assert b.observe(START + 25 * H) == [DAY]  # down across midnight: still reported
    assert b.observe(START - 300 * 24 * H) == []  # a replay of older data restarts
    assert b.observe(START - 299 * 24 * H) == ["2023-05-15"]


def test_rendered_outputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = ModelInfo("m-7", {"auc": 0.61234, "<script>": "x"}, "2024-03-09T00:00:00Z")
    r = hand_report(model=model)
    md = render_markdown(r)
    assert "| win rate | 40.0% |" in md and "| average loss | -42.25 |" in md
    assert "m-7" in md and "84.50" in md
    html = render_html(r)
    assert "<script>" not in html and "&lt;script&gt;" in html
    files = write_report(r, tmp_path)
    assert files.directory == tmp_path / DAY
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files.markdown.read_text() == md and files.html.read_text() == html


# ---- against Redis ---------------------------------------------------------------------


@asynccontextmanager
async def webhook_server(
    fail_first: int = 0, hang: bool = False
) -> AsyncIterator[tuple[str, list[Any]]]:
    """A local webhook receiver on 127.0.0.1:0 recording every JSON body; it answers
    500 to the first `fail_first` requests, or never answers when `hang`."""
    got: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.json())
        if hang:
            await asyncio.sleep(3600)
        if len(got) <= fail_first:
            return web.Response(status=500, text="not yet")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got
    finally:
        await runner.cleanup()


async def publish_trades(redis: aioredis.Redis, keys: Keys, trades: list[ClosedTrade]) -> None:
    for t in trades:
        fields = encode_event("closed_trade", t.to_dict(), symbol=t.symbol, event_time=t.exit_time)
        await redis.xadd(keys.stream_trades, fields)


async def seed_day(redis: aioredis.Redis, keys: Keys) -> None:
    """The hand-computed day in Redis, plus model, balance, baselines, a position."""
    await publish_trades(redis, keys, HAND)
    await redis.xadd(keys.stream_trades, {"type": "closed_trade", "v": "1", "data": b"\xc1"})
    await redis.set(keys.model_current, "m-42")
    meta = {
        "metrics": {"auc": 0.61, "walk_forward_sharpe": 1.3},
        "created_at_ms": START - 12 * H,  # the learner's metadata field
    }
    await redis.hset(keys.model_history, "m-42", orjson.dumps(meta))
    await redis.hset(keys.balance("USDT"), mapping={"wallet_balance": "2049.5"})
    feed0 = {"reconnects": 2, "rest_fallbacks": {"stale": 1}, "renewals_ok": 10,
             "renewals_failed": 0, "bad_messages": 0}  # fmt: skip
    feed1 = {"reconnects": 5, "rest_fallbacks": {"stale": 4, "ws_down": 1}, "renewals_ok": 57,
             "renewals_failed": 1, "bad_messages": 3}  # fmt: skip
    await redis.hset(keys.report_baselines, DAY, orjson.dumps({"equity": "1000", "feed": feed0}))
    await redis.hset(
        keys.report_baselines, "2024-03-11", orjson.dumps({"equity": "1049.5", "feed": feed1})
    )
    pos = Position(
        "BTCUSDT", D("0.01"), D("60000"), D("60000"), D("12.5"), "cross", D("0"), 10, START
    )
    await redis.hset(keys.position("BTCUSDT"), mapping=pos.to_hash())
    await redis.hset(keys.prices, "BTCUSDT", "61250")
    alert = encode_event("alert", {"alert_id": "service_down:trader", "state": "raised",
                                   "message": "trader is down", "severity": "critical"},
                         event_time=START + 6 * H)  # fmt: skip
    await redis.xadd(keys.stream_alerts, alert)


async def test_build_report_on_demand_from_redis(
    redis_client: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    await seed_day(redis_client, keys)
    out = await build_report(
        redis_client, keys, DAY, reports_dir=str(tmp_path), now_ms=START + 25 * H
    )
    s = out["summary"]
    assert (s["realized_pnl"], s["fees"], s["funding"], s["trades"]) == ("49.5", "12", "-0.5", 5)
    assert s["win_rate"] == "0.4" and s["max_drawdown"] == "84.5" and s["unrealized_pnl"] == "12.5"
    assert s["model_version"] == "m-42" and s["alerts"] == 1
    assert out["stream_entry"] is None  # on demand: files only
    md = await asyncio.to_thread(Path(out["files"]["markdown"]).read_text)
    assert "| metric: auc | 0.61 |" in md and "| trained at | 2024-03-09T12:00:00Z |" in md
    assert "| WebSocket reconnects | 3 |" in md and "|   reason: ws_down | 1 |" in md
    assert "| listenKey renewals ok / failed | 47 / 1 |" in md
    assert "| listenKey renewal success rate | 97.9% |" in md
    assert "| bad messages dropped | 3 |" in md
    assert "| open notional | 612.50 |" in md and "| max leverage of open positions | 10x |" in md
    assert "trader is down" in md
    assert (await asyncio.to_thread(Path(out["files"]["png"]).stat)).st_size > 1000


async def test_day_boundary_in_a_replay_gives_exactly_one_report(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    settings = reporter_settings(redis_url, prefix, tmp_path)
    await publish_trades(redis_client, keys, HAND[1:6])
    await redis_client.hset(keys.balance("USDT"), mapping={"wallet_balance": "1000"})

    async def kline(event_time: int) -> None:
        await redis_client.xadd(
            keys.stream_klines, encode_event("kline", {}, symbol="BTCUSDT", event_time=event_time)
        )

    kw = {"poll_interval": 0.02, "refresh_interval": 0.2}
    async with serving_reporter(settings, **kw) as a, serving_reporter(settings, **kw) as b:
        for _ in range(2):  # across midnight twice (a replay restarted before midnight)
            for t in (
                START + 23 * H,
                START + 24 * H - 1,
                START + 24 * H + 30_000,
                START + 24 * H + 90_000,
            ):
                await kline(t)
                await asyncio.sleep(0.05)
            await until(lambda: a.reports + b.reports == 1, 10)
        await asyncio.sleep(0.3)
        assert a.reports + b.reports == 1
    assert await redis_client.smembers(keys.report_days) == {DAY.encode()}
    entries = await redis_client.xrange(keys.stream_reports)
    assert len(entries) == 1
    etype, data, meta = decode_event(entries[0][1])
    assert etype == "daily_report" and meta.event_time == START + 24 * H - 1
    assert data["summary"]["realized_pnl"] == "49.5" and data["summary"]["trades"] == 5
    assert (tmp_path / DAY / "report.html").exists() and (tmp_path / DAY / "equity.png").exists()
    # the next day's baseline was taken at the boundary: its opening equity is known
    assert (
        orjson.loads(await redis_client.hget(keys.report_baselines, "2024-03-11"))["equity"]
        == "1000"
    )


async def test_no_secret_in_any_report_output(
    redis_client: aioredis.Redis,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    planted = {
        "BINANCE_API_KEY": "PLANTEDKEY7a1f9c0e4b",
        "BINANCE_API_SECRET": "PLANTEDSECRET3d8e2f6a91",
        "SESSION_SECRET": "PLANTEDSESSION5c7b0d2e",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    keys = Keys(prefix)
    await seed_day(redis_client, keys)
    async with webhook_server() as (url, hooks):
        settings = reporter_settings(redis_url, prefix, tmp_path, webhook_url=url)
        assert settings.api_secret is not None  # the secrets are really configured
        async with serving_reporter(settings, poll_interval=0.02, startup_grace=0.0) as svc:
            for t in (START + 23 * H, START + 25 * H):
                await redis_client.xadd(keys.stream_klines, encode_event("kline", {}, event_time=t))
                await asyncio.sleep(0.1)
            await until(
                lambda: svc.reports == 1 and any(h["kind"] == "daily_report" for h in hooks), 10
            )
            await until(lambda: any(h["kind"] == "alert" for h in hooks), 10)
            async with aiohttp.ClientSession() as http:
                pages = [await (await http.get(f"http://127.0.0.1:{svc.http_port}{p}")).read()
                         for p in ("/api/status", "/api/dashboard", "/healthz")]  # fmt: skip
    blobs = [p.read_bytes() for p in (tmp_path / DAY).iterdir()]
    blobs += [orjson.dumps(hooks), *pages]
    blobs += [b"".join(e[1].values()) for e in await redis_client.xrange(keys.stream_reports)]
    health = await redis_client.hgetall(keys.health("reporter"))
    blobs.append(b" ".join(k + b"=" + v for k, v in health.items()))
    blobs.append("\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records).encode())
    assert len(blobs) >= 8 and any(b"49.5" in b for b in blobs)
    for value in planted.values():
        assert not any(value.encode() in b for b in blobs), f"secret {value[:8]}… leaked"
