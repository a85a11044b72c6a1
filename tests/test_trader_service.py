"""The trader service against the simulator and a real Redis.

How entries are forced: the model is off (`model.cold_start=off`, an empty model dir), so
the confidence is the baseline signal score, and the test publishes a hand-made BREAKOUT
kline (close 12 ATR above the 60-bar range, 1000x volume) for BTCUSDT; the simulator is
paused and its price is moved to that close first, so the MARKET entry fills there and
the protective prices are on the right side.  ETHUSDT gets a quiet kline of the same minute,
so the minute is complete at once.  Risk per trade is lowered so the entry fits the
exposure cap.  Klines go in through `KlinePublisher` (kline_feed's exactly-once path), or
raw XADD where a duplicate must reach the trader.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.exchange_sim.specs import make_brackets
from services.trader.__main__ import main as trader_main
from services.trader.execution import Outcome
from services.trader.service import TraderService
from shared.binance.client import BinanceClient
from shared.codec import decode_event, encode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.kline_publisher import KlinePublisher
from shared.models import ClosedTrade, DecisionRecord, Kline
from shared.runtime import serve
from shared.testing import KLINES_DIR
from tests.polling import until

pytestmark = pytest.mark.timeout(60)

START = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a minute boundary
MIN = 60_000
SYMS = ("BTCUSDT", "ETHUSDT")
VISION = KLINES_DIR / "binance_usdtm_2023-02_vision_csv"
VISION_FILES = sorted(str(p) for p in VISION.glob("*.csv"))  # real Binance klines, Feb 2023


# ---- harness -------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def paused_sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(symbols=SYMS, paused=True, start_ms=START,
                                   history_minutes=400, funding_enabled=False)) as sim:  # fmt: skip
        yield sim


def settings_for(
    sim: SimServer, redis_url: str, prefix: str, tmp: Path, **sections: Any
) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "exchange": {"mode": "sim", "rest_url": sim.rest_url, "ws_url": sim.ws_url,
                     "user_ws_url": sim.user_ws_url, "symbols": list(SYMS),
                     "breaker_open_seconds": 0.5},
        "redis": {"url": redis_url, "prefix": prefix},
        "trading": {"risk_per_trade": 0.002, "max_total_exposure": 10.0,
                    "decision_grace": 2.0, "decision_timeout": 1.0},
        "risk": {"protection_grace": 2},
        "model": {"dir": str(tmp / "models"), "cold_start": "off", "min_train_samples": 50,
                  "n_estimators": 20, "max_depth": 3},
        "service": {"heartbeat_interval": 0.5},
    }  # fmt: skip
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(**base)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TraderService]:
    svc = TraderService(settings)
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False,
                                     drain_timeout=5, connect_attempts=3, connect_delay=0.1))  # fmt: skip
    try:
        await until(lambda: task.done() or svc.phase == "running", 30)
        if task.done():
            raise RuntimeError(f"trader ended at start-up with {task.result()}")
        yield svc
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 20)


def breakout(svc: TraderService, symbol: str, minute: int) -> Kline:
    """A closed kline that breaks the 60-bar range upwards on huge volume and range."""
    ctx = svc.core.bank[symbol]
    o, atr = ctx.close, ctx.atr
    c = max(ctx.range_high, o) + 12 * atr
    v = ctx.volume * 1000 + 1000
    return Kline(symbol, "1m", minute, minute + MIN - 1, o, c + 0.5 * atr, o - 0.5 * atr, c, v,
                 v * c, 5000, v / 2, v * c / 2, True, minute + MIN + 5, minute + MIN + 7)  # fmt: skip


def quiet(svc: TraderService, symbol: str, minute: int) -> Kline:
    ctx = svc.core.bank[symbol]
    c, v = ctx.close, max(ctx.volume, 1.0)
    return Kline(symbol, "1m", minute, minute + MIN - 1, c, c * 1.0001, c * 0.9999, c, v, v * c,
                 100, v / 2, v * c / 2, True, minute + MIN + 5, minute + MIN + 7)  # fmt: skip


def set_price(sim: SimServer, symbol: str, price: float) -> Decimal:
    tick = sim.specs[symbol].tick_size
    p = (Decimal(repr(price)) / tick).to_integral_value() * tick
    sim.push_events(sim.exchange.advance_price(symbol, p, sim.clock.now_ms()))
    return p


async def publish(redis: aioredis.Redis, keys: Keys, *klines: Kline) -> None:
    await KlinePublisher(redis, keys, 10_000).publish_many(list(klines))


async def xadd_raw(redis: aioredis.Redis, keys: Keys, k: Kline) -> None:
    """The same kline again, bypassing the publisher's exactly-once guard."""
    fields = encode_event("kline", k.to_dict(), symbol=k.symbol, event_time=k.event_time)
    await redis.xadd(keys.stream_klines, fields)  # type: ignore[arg-type]


async def signals(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [decode_event(f)[1] for _i, f in await redis.xrange(keys.stream_signals)]


async def orders_log(redis: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [decode_event(f)[1] for _i, f in await redis.xrange(keys.stream_orders)]


def sim_orders(sim: SimServer, cid: str) -> list[Any]:
    return [o for o in sim.exchange.audit.orders if o.client_id == cid]


def position(sim: SimServer, symbol: str) -> Decimal:
    pos = sim.exchange.accounts[sim.demo_key].positions.get(symbol)
    return pos.amount if pos is not None else Decimal(0)


def open_algos(sim: SimServer, symbol: str) -> dict[str, dict[str, Any]]:
    return {a["clientAlgoId"]: a for a in sim.exchange.open_algo_orders(sim.demo_key, symbol)}


async def enter_btc(sim: SimServer, svc: TraderService, redis: aioredis.Redis, keys: Keys,
                    minute: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Publish a BTC breakout + quiet ETH minute; returns the BTC decision as published."""
    minute = minute if minute is not None else svc.core.bank["BTCUSDT"].open_time + MIN
    k = breakout(svc, "BTCUSDT", minute)
    set_price(sim, "BTCUSDT", k.close)
    before = len(await signals(redis, keys))
    await publish(redis, keys, k, quiet(svc, "ETHUSDT", minute))

    async def decided() -> bool:
        return any(d["symbol"] == "BTCUSDT" and d["minute_open_time"] == minute
                   for d in (await signals(redis, keys))[before:])  # fmt: skip

    await until(decided, 10)
    return next(d for d in (await signals(redis, keys))[before:] if d["symbol"] == "BTCUSDT")


# ---- tests ---------------------------------------------------------------------------------
async def test_closed_kline_to_protected_entry(
    redis_url, prefix, redis_client, tmp_path, monkeypatch
) -> None:
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        d = await enter_btc(sim, svc, redis_client, keys)
        assert d["taken"] and d["reason"] == "taken" and d["model_version"] == "baseline"
        entry, stop, take = d["intents"]
        await until(lambda: len(svc.executions) >= 1, 10)
        report = svc.executions[-1]
        assert (report.client_order_id, report.outcome) == (entry["client_order_id"],
                                                            Outcome.PROTECTED)  # fmt: skip
        assert position(sim, "BTCUSDT") == entry["quantity"] == report.filled_qty
        acct = sim.exchange.accounts[sim.demo_key]
        assert acct.position(sim.specs["BTCUSDT"]).leverage == entry["leverage"] == d["leverage"]
        algos = open_algos(sim, "BTCUSDT")
        assert set(algos) == {stop["client_order_id"], take["client_order_id"]}
        for leg in (stop, take):
            a = algos[leg["client_order_id"]]
            assert (a["orderType"], a["side"], a["closePosition"]) == (
                leg["order_type"],
                "SELL",
                True,
            )
            assert Decimal(a["triggerPrice"]) == leg["stop_price"]
        assert len(sim_orders(sim, entry["client_order_id"])) == 1
        raw = await redis_client.get(keys.decision(entry["client_order_id"]))
        rec = DecisionRecord.from_json(raw)
        assert rec == DecisionRecord.from_dict(d["record"]) and rec.stop_price == stop["stop_price"]
        log = await orders_log(redis_client, keys)
        done = {(o["client_order_id"], o["api"], o["outcome"]) for o in log}
        assert (entry["client_order_id"], "order", "accepted") in done
        assert (stop["client_order_id"], "algoOrder", "accepted") in done
        assert (take["client_order_id"], "algoOrder", "accepted") in done
        assert any(o["api"] == "leverage" for o in log)
        stats = svc.stats()
        assert stats["entries_sent"] == 1 and stats["minutes_decided"] >= 1
        # the account was read once for the minute (started before the batch was fed, and
        # that read used), and GC is back on once no minute is open
        reads = svc.account.counters
        assert reads["cache_reads"] + reads["rest_reads"] + reads["rest_reused"] == 1
        assert gc.isenabled() and not svc.gc_hold.held
        assert stats["last_decision_latency_ms"] is not None and not stats["halted"]
        decided = await redis_client.get(keys.trader_last_decided)
        assert decided == str(d["minute_open_time"]).encode()
        monkeypatch.setenv("SLT_REDIS__URL", redis_url)
        monkeypatch.setenv("SLT_REDIS__PREFIX", prefix)
        assert await asyncio.to_thread(trader_main, ["--check"]) == 0
    assert await asyncio.to_thread(trader_main, ["--check"]) == 1  # stopped: not healthy


async def test_duplicate_kline_and_restart_send_no_second_order(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    keys = Keys(prefix)
    async with paused_sim() as sim:
        settings = settings_for(sim, redis_url, prefix, tmp_path)
        async with running(settings) as svc:
            d = await enter_btc(sim, svc, redis_client, keys)
            entry = d["intents"][0]
            await until(lambda: len(svc.executions) >= 1, 10)
            raw = [Kline.from_dict(decode_event(f)[1]) for _i, f in
                   await redis_client.xrange(keys.stream_klines)][-2:]  # fmt: skip
            n_signals = len(await signals(redis_client, keys))
            for k in raw:
                await xadd_raw(redis_client, keys, k)
            await until(
                lambda: svc.klines_in.counters["acked"] >= 4, 5
            )  # handled, incl. any decision
            assert len(await signals(redis_client, keys)) == n_signals  # no second decision
            assert svc.core.counters.duplicate_klines >= 1
        # flat again (the take-profit fires), then a restart that forgot the decided minute
        take = d["intents"][2]
        set_price(sim, "BTCUSDT", float(take["stop_price"]) * 1.001)
        assert position(sim, "BTCUSDT") == 0
        await redis_client.delete(keys.trader_last_decided)
        async with running(settings) as svc2:
            for k in raw:  # the same minute replayed after the restart
                await xadd_raw(redis_client, keys, k)
            await until(lambda: len(svc2.executions) >= 1, 10)
            assert svc2.executions[-1].outcome == Outcome.DUPLICATE
        assert len(sim_orders(sim, entry["client_order_id"])) == 1
        assert position(sim, "BTCUSDT") == 0
        skipped = [o for o in await orders_log(redis_client, keys) if o["outcome"] == "skipped"]
        assert [o["client_order_id"] for o in skipped] == [entry["client_order_id"]]


async def test_halt_stops_entries_not_exits(redis_url, prefix, redis_client, tmp_path) -> None:
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        first = await enter_btc(sim, svc, redis_client, keys)
        await until(lambda: len(svc.executions) >= 1, 10)
        qty = position(sim, "BTCUSDT")
        assert qty > 0
        await redis_client.set(keys.halt, "test")
        minute = first["minute_open_time"] + MIN
        k = breakout(svc, "ETHUSDT", minute)
        set_price(sim, "ETHUSDT", k.close)
        await publish(redis_client, keys, quiet(svc, "BTCUSDT", minute), k)

        async def eth_signals() -> list[dict[str, Any]]:
            return [s for s in await signals(redis_client, keys) if s["symbol"] == "ETHUSDT"
                    and s["minute_open_time"] == minute]  # fmt: skip

        await until(eth_signals, 10)
        eth = await eth_signals()
        assert eth and all(s["reason"] == "halted" and not s["taken"] for s in eth)
        assert svc.stats()["halted"] and position(sim, "ETHUSDT") == 0
        assert not [o for o in sim.exchange.audit.orders if o.symbol == "ETHUSDT"]
        # exits still run: the protective stop closes the position while halted
        stop = first["intents"][1]
        set_price(sim, "BTCUSDT", float(stop["stop_price"]) * 0.999)
        assert position(sim, "BTCUSDT") == 0
        assert len(svc.executions) == 1


async def test_rest_failures_after_entry_end_protected(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    """Two 5xx on whatever comes next (the account read over REST), one on the entry
    (outcome unknown: looked up, then sent once) and two on the algo orders: retried after
    lookups, the position ends protected, with exactly one entry order."""
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        sim.admin.fail_rest("5xx", count=2)  # the next two calls, whatever they are
        sim.admin.fail_rest("5xx", count=1, path="/fapi/v1/order")
        sim.admin.fail_rest("5xx", count=2, path="/fapi/v1/algoOrder")
        d = await enter_btc(sim, svc, redis_client, keys)
        await until(lambda: len(svc.executions) >= 1, 15)
        entry, stop, take = d["intents"]
        assert svc.executions[-1].outcome == Outcome.PROTECTED
        assert set(open_algos(sim, "BTCUSDT")) == {stop["client_order_id"], take["client_order_id"]}
        assert len(sim_orders(sim, entry["client_order_id"])) == 1
        assert position(sim, "BTCUSDT") == entry["quantity"]
        assert sim.admin.applied["rest_5xx"] == 5
        errors = [o for o in await orders_log(redis_client, keys) if o["outcome"] == "error"]
        assert {o["api"] for o in errors} >= {"order", "algoOrder"}
        assert svc.executor.tx.counters["lookups"] >= 2


async def test_protection_impossible_closes_the_position(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    """Every algo call fails (and opens the breaker): the entry is closed reduce-only."""
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        sim.admin.fail_rest("5xx", count=10_000, path="/fapi/v1/algoOrder")
        d = await enter_btc(sim, svc, redis_client, keys)
        await until(lambda: len(svc.executions) >= 1, 20)
        sim.admin.rest_faults.clear()
        report = svc.executions[-1]
        assert report.outcome == Outcome.CLOSED and report.filled_qty > 0
        assert position(sim, "BTCUSDT") == 0 and not open_algos(sim, "BTCUSDT")
        closes = [o for o in await orders_log(redis_client, keys)
                  if o["purpose"] == "exit" and o["outcome"] in ("accepted", "found")]  # fmt: skip
        assert len(closes) == 1 and closes[0]["request"]["reduceOnly"] == "true"
        assert len(sim_orders(sim, d["intents"][0]["client_order_id"])) == 1


async def test_missing_symbol_decided_by_timer(redis_url, prefix, redis_client, tmp_path) -> None:
    """ETHUSDT never sends its kline: the minute is decided after decision_timeout."""
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        minute = svc.core.bank["BTCUSDT"].open_time + MIN
        k = breakout(svc, "BTCUSDT", minute)
        set_price(sim, "BTCUSDT", k.close)
        await publish(redis_client, keys, k)
        await asyncio.sleep(0.3)
        assert svc.c["minutes_decided"] == 0  # waiting for ETHUSDT
        assert not await signals(redis_client, keys)

        async def published() -> bool:
            return bool(await signals(redis_client, keys))

        await until(published, 5)
        assert svc.gate.by_rule["timeout"] == 1 and svc.c["minutes_decided"] == 1
        assert [s["symbol"] for s in await signals(redis_client, keys)] == ["BTCUSDT"]


def closed_trade(trade_id: str, net: str) -> ClosedTrade:
    from services.trader.signals import MODEL_FEATURE_NAMES

    rec = DecisionRecord("slt-e-0123456789abcdef0123456789", "BTCUSDT", "LONG", START,
                         {n: 0.1 for n in MODEL_FEATURE_NAMES}, "baseline", 0.7, 0.5, 3,
                         Decimal("29000"), Decimal("31000"), Decimal("30000"))  # fmt: skip
    return ClosedTrade(trade_id, "BTCUSDT", "LONG", Decimal("0.01"), Decimal("30000"),
                       Decimal("30100"), START, START + 10 * MIN, Decimal("0.3"), Decimal("0"),
                       Decimal("1"), Decimal(net), "take_profit", 3, rec)  # fmt: skip


async def test_closed_trade_learned_once(redis_url, prefix, redis_client, tmp_path) -> None:
    keys = Keys(prefix)
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        t = closed_trade("T-1", "0.7")
        fields = encode_event("closed_trade", t.to_dict(), symbol=t.symbol, event_time=t.exit_time)
        for _ in range(2):  # delivered twice
            await redis_client.xadd(keys.stream_trades, fields)
        await redis_client.xadd(keys.stream_trades, {"type": "closed_trade", "v": "1",
                                                     "event_time": "", "data": b"\xc1"})  # fmt: skip
        await until(lambda: svc.trades_in.counters["acked"] >= 3, 5)  # 2 handled + 1 dead letter
        assert svc.trades_in.counters["dead_lettered"] == 1 and svc.c["trades_in"] == 2
        assert svc.learner.n_samples == 1 and svc.core.win_rate.n == 1
        assert svc.models.counters["trades_learned"] == 1
        assert svc.models.counters["trades_duplicate"] == 1
        assert await redis_client.smembers(keys.learner_seen) == {b"T-1"}
    # a restart gives the learner its sample back, once, without counting it as new
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        assert svc.learner.n_samples == 1 and svc.models.counters["trades_restored"] == 1
        assert svc.models.counters["trades_learned"] == 0


async def test_cold_start_then_restart_loads_model(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    keys = Keys(prefix)
    files = {"cold_start": "file", "cold_start_files": VISION_FILES}
    async with paused_sim() as sim:
        settings = settings_for(sim, redis_url, prefix, tmp_path,
                                model={**files, "retrain_after_trades": 2})  # fmt: skip
        async with running(settings) as svc:
            assert svc.models.source == "cold_start" and svc.models.counters["trainings"] == 1
            version = svc.learner.current_version
            assert version and svc.stats()["model_version"] == version
        assert await redis_client.get(keys.model_current) == version.encode()
        import orjson

        meta = orjson.loads(await redis_client.hget(keys.model_history, version))
        assert meta["n_train"] > 0 and meta["window_end_ms"] > meta["window_start_ms"]
        assert meta["metrics"]["auc"] > 0.5 and meta["trigger"] == "cold_start"
        assert (tmp_path / "models" / f"{version}.ubj").exists()
        async with running(settings) as svc:
            assert svc.models.source == "redis" and svc.learner.current_version == version
            assert svc.models.counters["trainings"] == 0 and svc.models.counters["loads"] == 1
            assert svc.learner.n_samples > 0 and svc.learner.new_samples == 0
            # model.retrain_after_trades closed trades: a walk-forward retrain, off the loop
            for i, net in enumerate(("1.5", "-0.8")):
                t = closed_trade(f"R-{i}", net)
                await redis_client.xadd(keys.stream_trades, encode_event(
                    "closed_trade", t.to_dict(), symbol=t.symbol, event_time=t.exit_time))  # fmt: skip
            await until(
                lambda: svc.models.counters["trainings"] == 1 and not svc.models.training, 20
            )
            report = svc.models.last_report
            assert report["trigger"] == "retrain" and report["n_holdout"] > 0
            current = (await redis_client.get(keys.model_current)).decode()
            if report["accepted"]:  # replaced only when better on the holdout
                assert current == svc.learner.current_version != version
            else:
                assert current == version == svc.learner.current_version
                assert svc.models.counters["rejected"] == 1


async def test_cold_start_from_rest_history(redis_url, prefix, redis_client, tmp_path) -> None:
    """cold_start=rest: the simulator replays real Feb-2023 klines; the trader labels
    `model.cold_start_bars` of REST history per symbol and trains on it before trading."""
    from services.trader.labels import build_cold_start
    from services.trader.model_io import bars_of, fetch_closed_klines
    from services.trader.signals import SignalParams

    keys = Keys(prefix)
    cfg = SimConfig(source="replay", data=tuple(VISION_FILES), paused=True, history_minutes=6500,
                    funding_enabled=False)  # fmt: skip
    async with SimServer(cfg) as sim:
        syms = sorted(sim.specs)
        settings = settings_for(
            sim, redis_url, prefix, tmp_path, exchange={"symbols": syms},
            model={"cold_start": "rest", "cold_start_bars": 6000},
        )  # fmt: skip
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key,
                                                  sim.demo_secret) as client:  # fmt: skip
            history = {s: bars_of(await fetch_closed_klines(client, s, "1m", 6000)) for s in syms}
        expected = build_cold_start(history, SignalParams.from_risk(settings.risk),
                                    settings.model.label_horizon, settings.exchange.taker_fee)  # fmt: skip
        assert len(expected.y) > 100
        async with running(settings) as svc:
            assert svc.models.counters["trainings"] == 1
            report = svc.models.last_report
            assert report["trigger"] == "cold_start"
            assert report["n_holdout"] > 0 and svc.learner.n_samples == len(expected.y)
            current = await redis_client.get(keys.model_current)
            if report["accepted"]:
                assert current.decode() == svc.learner.current_version
            else:  # discarded: logged, counted, the signal scores stay in charge
                assert current is None and svc.models.counters["rejected"] == 1
                assert svc.stats()["model_version"] == "baseline"


async def test_unloadable_model_id_is_counted_not_fatal(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    keys = Keys(prefix)
    await redis_client.set(keys.model_current, "1700000000000-0123456789")
    async with paused_sim() as sim, running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        assert svc.models.source == "baseline" and svc.stats()["model_errors"] == 1
        assert svc.stats()["model_version"] == "baseline"
        d = await enter_btc(sim, svc, redis_client, keys)  # still trades on signal scores
        assert d["taken"] and d["model_version"] == "baseline"


async def stale_cache_says_flat(redis: aioredis.Redis, keys: Keys) -> None:
    """account_feed's heartbeat says ok, a balance hash exists, no position hash: the
    cache of an account_feed that stalled just before our fill (within heartbeat_ttl)."""
    from shared.models import Balance

    await redis.hset(keys.health("account_feed"), "status", "ok")
    await redis.hset(keys.balance("USDT"), mapping=Balance(
        "USDT", Decimal("10000"), Decimal("10000"), Decimal(0), 1).to_hash())  # fmt: skip


async def btc_breakout_no_move(svc: TraderService, redis: aioredis.Redis, keys: Keys,
                               minute: int) -> dict[str, Any]:  # fmt: skip
    """Like `enter_btc`, but the simulator's price stays (the open position's take-profit
    must not fire): returns the BTC decision of `minute`."""
    await publish(redis, keys, breakout(svc, "BTCUSDT", minute), quiet(svc, "ETHUSDT", minute))

    async def decided() -> list[dict[str, Any]]:
        return [d for d in await signals(redis, keys)
                if d["symbol"] == "BTCUSDT" and d["minute_open_time"] == minute]  # fmt: skip

    await until(decided, 10)
    return (await decided())[0]


async def test_stale_position_cache_never_enters_a_symbol_twice(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    """Chaos-run bug: the entry leaves the in-flight set when its order finishes, the
    position cache has not caught up, account_feed's heartbeat still says ok: the next
    minute's breakout on the same symbol must NOT become a second entry - not in this
    run, and not after a restart either."""
    keys = Keys(prefix)
    async with paused_sim() as sim:
        settings = settings_for(sim, redis_url, prefix, tmp_path)
        await stale_cache_says_flat(redis_client, keys)
        async with running(settings) as svc:
            first = await enter_btc(sim, svc, redis_client, keys)
            await until(lambda: len(svc.executions) >= 1, 10)
            assert first["taken"] and svc.executions[-1].outcome == Outcome.PROTECTED
            await until(lambda: not svc._inflight, 5)  # no longer in flight: only held
            qty = position(sim, "BTCUSDT")
            assert qty > 0 and svc.holds.watch() == ["BTCUSDT"]
            minute = first["minute_open_time"] + MIN
            second = await btc_breakout_no_move(svc, redis_client, keys, minute)
            await asyncio.sleep(0.3)  # a taken entry would be executing now
            assert not second["taken"] and second["reason"] == "already_in_position"
            assert svc.stats()["holds"]["held"] == 1 and svc.account.counters["cache_reads"] >= 2
        entries = [o for o in sim.exchange.audit.orders
                   if o.symbol == "BTCUSDT" and o.client_id.startswith("slt-e-")]  # fmt: skip
        assert len(entries) == 1 and position(sim, "BTCUSDT") == qty
        assert await redis_client.hexists(keys.trader_entries, "BTCUSDT")
        async with running(settings) as svc2:  # the hold survives a restart
            third = await btc_breakout_no_move(svc2, redis_client, keys, minute + MIN)
            await asyncio.sleep(0.3)
            assert not third["taken"] and third["reason"] == "already_in_position"
        entries = [o for o in sim.exchange.audit.orders
                   if o.symbol == "BTCUSDT" and o.client_id.startswith("slt-e-")]  # fmt: skip
        assert len(entries) == 1 and position(sim, "BTCUSDT") == qty


async def test_entry_kept_inside_the_leverage_brackets(
    redis_url, prefix, redis_client, tmp_path
) -> None:
    """BTC's brackets shrunk so that the entry's notional exceeds the cap at the leverage
    the trader would pick (the exchange would answer -2027): it is placed at the bracket's
    leverage and accepted."""
    async with paused_sim() as sim:
        spec = sim.specs["BTCUSDT"]  # its own copy of the tiers: changed for this sim only
        spec.brackets[:] = make_brackets([(5, 125, "0.004"), (10_000_000, 2, "0.01")])
        await _enter_inside_brackets(sim, spec, redis_url, prefix, redis_client, tmp_path)


async def _enter_inside_brackets(sim, spec, redis_url, prefix, redis_client, tmp_path) -> None:
    keys = Keys(prefix)
    async with running(settings_for(sim, redis_url, prefix, tmp_path)) as svc:
        assert svc.core.brackets["BTCUSDT"][1].max_leverage == 2
        d = await enter_btc(sim, svc, redis_client, keys)
        assert d["taken"] and d["leverage"] == 2
        entry = d["intents"][0]
        c = next(c for c in svc.core.pending_candidates(d["minute_open_time"])
                 if c.symbol == "BTCUSDT")  # fmt: skip
        wanted = svc.core._leverages_scalar([c], [d["confidence"]], [c.reward_pct],
                                            [c.risk_pct], d["win_rate"])[0]  # fmt: skip
        notional = entry["quantity"] * d["record"]["entry_price_ref"]
        assert wanted > 2 and notional > spec.max_notional(wanted)  # -2027 there
        await until(lambda: len(svc.executions) >= 1, 10)
        assert svc.executions[-1].outcome == Outcome.PROTECTED
        assert position(sim, "BTCUSDT") == entry["quantity"]
        assert sim.exchange.accounts[sim.demo_key].position(spec).leverage == 2
