"""Parity: the same real kline file replayed through the simulator (REST/WebSocket on
127.0.0.1) and the live services - kline_feed, account_feed, trader, position_controller,
over a real Redis - gives the same trades as `slt backtest` over that file.

How the replay is driven: the simulator's clock is paused and the test moves it, as fast
as the services keep up (the "high speed factor" taken to its limit, without the race a
real-time speed factor has between a decision and the next intra-bar tick).  Each minute
boundary is one step (the candle closes, the next one opens); in the minutes where the
backtest had something open, the clock also stops at every intra-bar update (the driver's
path) and at the whole second whose markPrice@1s frame shows it, so the services' orders
meet the same prices.  After each step the test waits until the system is done (`Quiet`).  Both sides start from the same history: the 300 klines before the start warm
the trader's contexts over REST; the same klines are in the kline stream the controller
warms from; the backtest's feed starts there too.  The learner is off on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from backtest.data import load_feed, parse_time
from backtest.results import RunConfig
from backtest.runner import Runner
from services.account_feed.service import AccountFeedService
from services.exchange_sim.market.bar import bar_updates
from services.exchange_sim.server import SimConfig, SimServer
from services.kline_feed.service import KlineFeedService
from services.position_controller.service import PositionControllerService
from services.trader.model_io import fetch_closed_klines, parse_trade
from services.trader.service import TraderService
from shared.binance.client import BinanceClient
from shared.codec import decode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.kline_publisher import KlinePublisher
from shared.runtime import serve
from shared.testing import KLINES_DIR
from tests.polling import until

pytestmark = pytest.mark.timeout(110)

CSV = KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv"
SYMS = ("DOGEUSDT", "SOLUSDT", "XRPUSDT")
FILES = tuple(str(CSV / f"{s}-1m.csv.gz") for s in SYMS)
MIN = 60_000
HISTORY = 300  # trading.history_bars: what the trader warms its contexts with
START = parse_time("2023-07-19T12:40")  # a busy afternoon of these three symbols
MINUTES = 70
STREAMS = ("klines", "account", "signals", "orders", "trades", "risk")


def settings_for(sim: SimServer, redis_url: str, prefix: str, tmp: Path) -> Settings:
    return load_settings(
        exchange={"mode": "sim", "rest_url": sim.rest_url, "ws_url": sim.ws_url,
                  "user_ws_url": sim.user_ws_url, "symbols": list(SYMS)},
        redis={"url": redis_url, "prefix": prefix},
        trading={"history_bars": HISTORY, "decision_grace": 30, "decision_timeout": 30},
        model={"dir": str(tmp / "models"), "cold_start": "off"},
        service={"heartbeat_interval": 0.5},
        websocket={"reconnect_delay": 0.2, "reconnect_max_delay": 1},
    )  # fmt: skip


def backtest(settings: Settings) -> Any:
    feed = load_feed(list(FILES), start=START - HISTORY * MIN, end=START + MINUTES * MIN)
    cfg = RunConfig(settings, cold_start_days=HISTORY / 1440, funding_rate=Decimal(0))
    return Runner(feed, cfg).run()


@contextlib.asynccontextmanager
async def served(svc: Any, settings: Settings, ready: Any) -> AsyncIterator[Any]:
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False,
                                     drain_timeout=3, connect_attempts=3, connect_delay=0.1))  # fmt: skip
    try:
        await until(lambda: task.done() or ready(svc), 30)
        if task.done():
            raise RuntimeError(f"{type(svc).__name__} ended at start-up: {task.result()}")
        yield svc
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 20)


async def publish_history(sim: SimServer, redis: aioredis.Redis, keys: Keys) -> None:
    """The kline stream as a running kline_feed would have left it: the last HISTORY
    closed klines of every symbol (the controller warms its trend views from it)."""
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        for s in SYMS:
            klines = await fetch_closed_klines(c, s, "1m", HISTORY)  # as the trader warms up
            assert len(klines) == HISTORY and klines[-1].close_time == START - 1
            await KlinePublisher(redis, keys, 100_000).publish_many(klines)


class Quiet:
    """Waits until the whole system is done with a clock step (module doc): every entry the
    trader queued was executed, no controller close is in flight, every consumer group has
    read and acknowledged its stream, and nothing (streams, the exchange's audit, the
    services' counters) moves for a while."""

    def __init__(self, sim: SimServer, redis: aioredis.Redis, keys: Keys, services: list[Any]):
        self.sim, self.redis, self.services = sim, redis, services
        self.trader, self.pc = services[-1], services[-2]
        self.streams = [keys.stream(s) for s in STREAMS]

    async def vector(self) -> tuple[Any, ...]:
        pipe = self.redis.pipeline(transaction=False)
        for s in self.streams:
            pipe.xlen(s)
        lens = await pipe.execute()
        audit = self.sim.exchange.audit
        counters = tuple(sum(v for v in getattr(svc, "c", getattr(svc, "counters", {})).values()
                             if isinstance(v, int)) for svc in self.services)  # fmt: skip
        return (*lens, len(audit.orders), len(audit.fills), len(audit.rejects), *counters)

    async def groups_caught_up(self) -> bool:
        for stream in self.streams:
            if not await self.redis.exists(stream):
                continue
            last = (await self.redis.xinfo_stream(stream))["last-generated-id"]
            for g in await self.redis.xinfo_groups(stream):
                if g["pending"] or g["last-delivered-id"] != last:
                    return False
        return True

    def services_idle(self) -> bool:
        t = self.trader
        executed = sum(t.executor.outcomes.values()) >= t.c["entries_taken"]
        closing = any(self.pc.core.close_in_flight(s) for s in SYMS)
        return executed and not closing and t._queue.empty()

    async def wait(self, limit_s: float = 20.0) -> None:
        deadline = time.monotonic() + limit_s
        last, same = await self.vector(), 0
        while same < 4:
            await asyncio.sleep(0.015)
            now = await self.vector()
            idle = self.services_idle() and await self.groups_caught_up()
            same = same + 1 if now == last and idle else 0
            last = now
            if time.monotonic() > deadline:
                raise AssertionError("the system did not settle")


def step_to(sim: SimServer, ms: int) -> None:
    """Move the paused clock to `ms`; the driver plays everything due (closes, intra-bar
    updates with their engine ticks, mark prices) and the frames go out."""
    sim.clock.advance(ms - sim.clock.now_ms())
    sim.catch_up()
    sim.flush()


def busy_minutes(result: Any) -> set[int]:
    """Minutes (bar open times) where the backtest had an order or a position."""
    out: set[int] = set()
    for t in result.trades:
        out.update(
            range(t.entry_time - t.entry_time % MIN, t.exit_time - t.exit_time % MIN + 1, MIN)
        )
    return out


def key(t: Any) -> tuple[Any, ...]:
    return (t.symbol, t.side, t.entry_time, t.exit_time, t.exit_reason, t.quantity, t.leverage)


async def test_replay_through_the_live_services_gives_the_backtests_trades(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    cfg = SimConfig(symbols=SYMS, source="replay", data=FILES, paused=True, start_ms=START,
                    history_minutes=HISTORY, funding_enabled=False,
                    slippage_bps=Decimal(1))  # the backtest's default slippage model  # fmt: skip
    async with SimServer(cfg) as sim:
        # account_feed keeps its listenKey alive every 30 REAL minutes; with the clock driven
        # this fast that is hours of sim time, so the key lives as long as the test
        sim.listen_keys.validity_ms = 24 * 3_600_000
        settings = settings_for(sim, redis_url, prefix, tmp_path)
        expected = backtest(settings)
        fine = busy_minutes(expected)
        closed = [t for t in expected.trades if t.exit_reason != "end_of_data"]
        assert len(closed) >= 4  # a busy enough window to mean something
        keys = Keys(prefix)
        redis = aioredis.from_url(redis_url, decode_responses=False)
        try:
            await publish_history(sim, redis, keys)
            async with contextlib.AsyncExitStack() as stack:
                svcs = [
                    await stack.enter_async_context(served(
                        KlineFeedService(settings), settings, lambda s: s.stats().get("connected"))),
                    await stack.enter_async_context(served(
                        AccountFeedService(settings, retry_base=0.1, retry_max=0.5), settings,
                        lambda s: s.stats().get("reconciliations", 0) >= 1)),
                    await stack.enter_async_context(served(
                        PositionControllerService(settings), settings,
                        lambda s: s.c["sweeps"] >= 1 and s.marks is not None and s.marks.connected)),
                    await stack.enter_async_context(served(
                        TraderService(settings), settings, lambda s: s.phase == "running")),
                ]  # fmt: skip
                trader = svcs[-1]
                quiet = Quiet(sim, redis, keys, svcs)
                await quiet.wait()
                offsets = [
                    u.offset_ms for u in bar_updates(sim.driver.market_bar(SYMS[0], START), 9)
                ]
                for m in range(MINUTES):
                    t = START + m * MIN
                    if t in fine:  # every intra-bar update of a busy minute, and the mark
                        for off in offsets[1:]:  # second that shows it to the controller
                            for at in sorted({t + off, t + -(-off // 1000) * 1000}):
                                if at < t + MIN:
                                    step_to(sim, at)
                                    await quiet.wait()
                    step_to(sim, t + MIN)
                    await until(lambda mm=m: trader.c["minutes_decided"] >= mm + 1, 15)
                    await quiet.wait()
            live = [parse_trade(f) for _i, f in await redis.xrange(keys.stream_trades)]
            signals = [decode_event(f)[1] for _i, f in await redis.xrange(keys.stream_signals)]
        finally:
            await redis.aclose()
    end = START + MINUTES * MIN
    want = [t for t in expected.trades if t.exit_reason != "end_of_data" and t.exit_time < end]
    got = [t for t in live if t.exit_time < end]
    assert Counter(d["reason"] for d in signals) == expected.decisions  # same decisions
    assert [key(t) for t in got] == [key(t) for t in want]
    for g, w in zip(got, want, strict=True):  # the same engine and the same path:
        assert (g.entry_price, g.exit_price) == (w.entry_price, w.exit_price)  # same fills
        assert (g.fees, g.gross_pnl, g.net_pnl) == (w.fees, w.gross_pnl, w.net_pnl)
        assert g.decision is not None and g.decision == w.decision  # same inputs, same record
