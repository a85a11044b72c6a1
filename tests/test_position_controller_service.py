"""position_controller service end to end: the simulator as the exchange, real Redis.

account_feed is played by `UserStreamRelay` (tests/pc_harness.py) in most tests: the
simulator's real user-data WebSocket relayed into `Keys.stream_account` (event dicts as
the exchange sends them).  The last test runs the real account_feed service instead
(domain dicts on the bus, its position cache and heartbeat).  Each rule fires on a
constructed scenario and stays quiet on a near miss; the order counts asserted are the
simulator's own audit of the orders it accepted.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.position_controller.rules import close_order_id
from shared.binance.client import BinanceClient
from shared.codec import encode_event
from shared.keys import Keys
from shared.models import ClosedTrade, DecisionRecord, Kline, Position
from shared.testing import RedisServer
from tests.pc_harness import (
    UserStreamRelay,
    orders_with_prefix,
    pc_settings,
    publish_user_event,
    push_mark,
    running_account_feed,
    running_service,
    sim_position,
    stream_events,
    tick,
)
from tests.polling import until

BTC = "BTCUSDT"
ETH = "ETHUSDT"
QTY = "0.010"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(symbols=(BTC, ETH), history_minutes=60)) as server:
        yield server


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[BinanceClient]:
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        yield c


@pytest.fixture
async def relay(sim: SimServer, redis_url: str, prefix: str) -> AsyncIterator[UserStreamRelay]:
    r = await UserStreamRelay(sim, redis_url, Keys(prefix)).start()
    try:
        yield r
    finally:
        await r.stop()


async def open_long(client: BinanceClient, symbol: str = BTC, qty: str = QTY,
                    cid: str | None = None, leverage: int = 20) -> None:  # fmt: skip
    await client.change_leverage(symbol, leverage)
    params = {"symbol": symbol, "side": "BUY", "type": "MARKET", "quantity": qty}
    if cid:
        params["newClientOrderId"] = cid
    await client.new_order(**params)


async def tracked(svc: object, symbol: str = BTC) -> None:
    await until(lambda: symbol in svc.core.positions, 5)  # type: ignore[attr-defined]


async def trades(redis: aioredis.Redis, keys: Keys) -> list[ClosedTrade]:
    return [ClosedTrade.from_dict(d) for _t, d in await stream_events(redis, keys.stream_trades)]


# ---- emergency close ------------------------------------------------------------------------


async def test_emergency_close_on_a_mark_price_breach_not_on_a_near_miss(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await open_long(client)
        await tracked(svc)
        entry = svc.core.positions[BTC].entry_price
        opened = svc.core.open_time(BTC)
        assert opened is not None
        # leverage 20: PnL on margin = 20 x price change; the threshold is -99 %
        near = tick(sim, BTC, entry * D("0.952"))
        push_mark(sim, BTC, near)  # -96 %: a near miss
        await until(lambda: svc.core.view(BTC).price == near, 5)
        assert svc.core.close_in_flight(BTC) is None
        assert orders_with_prefix(sim, "pc-") == []
        push_mark(sim, BTC, tick(sim, BTC, entry * D("0.9495")))  # -101 %: close now
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id == close_order_id(BTC, opened, "emergency")
        assert order.side == "SELL" and order.qty == D(QTY)
        await until(
            lambda: svc.executor.counters["trades_closed"] == 1 and svc.outbox.pending == 0, 5
        )
        (trade,) = await trades(redis_client, keys)
        assert trade.exit_reason == "emergency" and trade.net_pnl < 0
        risk = [d for t, d in await stream_events(redis_client, keys.stream_risk) if t == "exit"]
        assert [d["rule"] for d in risk] == ["emergency"]
        assert "PnL on margin" in risk[0]["reason"] and risk[0]["outcomes"] == ["accepted"]
        logged = [d for _t, d in await stream_events(redis_client, keys.stream_orders)]
        assert logged[0]["request"]["reduceOnly"] == "true"
        assert logged[0]["request"]["type"] == "MARKET"


def breach_event(sim: SimServer, symbol: str, size: D, entry: D, loss: D, at: int) -> dict:
    """An ACCOUNT_UPDATE as the exchange sends it, showing `loss` of unrealized PnL."""
    return {
        "e": "ACCOUNT_UPDATE", "E": at, "T": at,
        "a": {"m": "ORDER", "B": [{"a": "USDT", "wb": "10000", "cw": "10000", "bc": "0"}],
              "P": [{"s": symbol, "pa": str(size), "ep": str(entry), "bep": str(entry),
                     "cr": "0", "up": str(-loss), "mt": "cross", "iw": "0", "ps": "BOTH"}]},
    }  # fmt: skip


async def test_the_same_breach_event_twice_sends_one_close(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    # no BTC mark prices for this service: a mark frame newer than the event would
    # rightly override the event's PnL
    settings = pc_settings(sim, redis_url, prefix, exchange={"symbols": [ETH]})
    async with running_service(settings) as svc:
        await open_long(client)
        await tracked(svc)
        pos = svc.core.positions[BTC]
        margin = abs(pos.size) * pos.entry_price / 20
        sim.clock.advance(1)  # newer than the opening fill's update
        at = sim.clock.now_ms()
        event = breach_event(sim, BTC, pos.size, pos.entry_price, margin * D("0.995"), at)
        for _ in range(2):  # delivered twice, back to back
            await publish_user_event(redis_client, keys, event)
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        await until(lambda: svc.executor.counters["trades_closed"] == 1, 5)
        await until(lambda: svc.events_by_type.get("ACCOUNT_UPDATE", 0) >= 4, 5)
        await until(lambda: svc.core.positions == {}, 5)  # the flat update was applied
        assert len(orders_with_prefix(sim, "pc-em-")) == 1
        assert len(orders_with_prefix(sim, "pc-")) == 1
        suppressed = svc.core.counters.duplicate_closes_suppressed + svc.c["stale_events"]
        assert suppressed >= 1
        assert [t.exit_reason for t in await trades(redis_client, keys)] == ["emergency"]


async def test_a_bad_account_entry_is_counted_and_dead_lettered(
    sim: SimServer, redis_url: str, prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await redis_client.xadd(keys.stream_account, {"type": "ACCOUNT_UPDATE", "v": "1",
                                                      "event_time": "1", "data": b"\xc1"})  # fmt: skip
        bad = breach_event(sim, BTC, D(1), D(100), D(1), 5)
        bad["a"]["P"][0]["mt"] = "sideways"
        await publish_user_event(redis_client, keys, bad)
        await until(lambda: svc.c["bad_messages"] == 2, 5)
        await until(lambda: redis_client.xlen(Keys.dead_letter(keys.stream_account)), 5)
        assert svc.core.positions == {} and svc.phase == "running"


# ---- time stop ------------------------------------------------------------------------------


async def test_time_stop_fires_after_the_maximum_holding_time_not_before(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    settings = pc_settings(sim, redis_url, prefix, trading={"max_holding_minutes": 1})
    async with running_service(settings) as svc:
        await open_long(client)
        await tracked(svc)
        opened = svc.core.open_time(BTC)
        assert opened is not None
        sim.clock.advance(50_000)  # held 50 s of 60
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert orders_with_prefix(sim, "pc-") == [] and sim_position(sim, BTC) == D(QTY)
        sim.clock.advance(12_000)
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id == close_order_id(BTC, opened, "time_stop")
        await until(
            lambda: svc.executor.counters["trades_closed"] == 1 and svc.outbox.pending == 0, 5
        )
        assert [t.exit_reason for t in await trades(redis_client, Keys(prefix))] == ["time_stop"]


# ---- protection ------------------------------------------------------------------------------


async def algo_ids(client: BinanceClient, symbol: str) -> dict[str, str]:
    """Open algo orders of `symbol` on the exchange: client id -> order type."""
    return {o["clientAlgoId"]: o["orderType"] for o in await client.open_algo_orders(symbol)}


async def test_a_missing_stop_is_placed_again_on_the_exchange(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    settings = pc_settings(sim, redis_url, prefix,
                           risk={"protection_grace": 0, "close_retry_seconds": 0.2})  # fmt: skip
    async with running_service(settings) as svc:
        await open_long(client)
        await tracked(svc)
        entry = svc.core.positions[BTC].entry_price
        for cid, otype, f in (("slt-s-test", "STOP_MARKET", "0.97"),
                              ("slt-t-test", "TAKE_PROFIT_MARKET", "1.05")):  # fmt: skip
            await client.new_algo_order(symbol=BTC, side="SELL", type=otype, closePosition=True,
                                        triggerPrice=str(tick(sim, BTC, entry * D(f))),
                                        clientAlgoId=cid)  # fmt: skip
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert set(await algo_ids(client, BTC)) == {"slt-s-test", "slt-t-test"}  # both there
        await client.cancel_algo_order(client_algo_id="slt-s-test")  # the stop disappears
        await until(lambda: svc.executor.counters["protections_replaced"] >= 1, 5)
        opened = svc.core.open_time(BTC)
        assert opened is not None
        placed = await algo_ids(client, BTC)
        assert placed == {"slt-t-test": "TAKE_PROFIT_MARKET",
                          close_order_id(BTC, opened, "protect_stop"): "STOP_MARKET"}  # fmt: skip
        await until(lambda: svc.outbox.pending == 0, 5)
        risk = [d for t, d in await stream_events(redis_client, Keys(prefix).stream_risk)
                if t == "protection"]  # fmt: skip
        assert risk[0]["missing"] == ["stop"] and risk[0]["outcomes"] == ["accepted"]
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert svc.executor.counters["protections_replaced"] == 1  # present now: not again


async def test_a_position_opened_behind_our_back_is_found_by_the_sweep_and_protected(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    settings = pc_settings(sim, redis_url, prefix,
                           risk={"protection_grace": 0, "reconcile_grace": 0})  # fmt: skip
    async with running_service(settings) as svc:
        # straight into the engine: no user-data event reaches anyone
        sim.exchange.place_order(sim.demo_key, {"symbol": ETH, "side": "SELL", "type": "MARKET",
                                                "quantity": "0.500"}, sim.clock.now_ms())  # fmt: skip
        await until(lambda: ETH in svc.core.positions, 5)
        assert svc.core.positions[ETH].size == D("-0.500")
        assert svc.state_diffs.get("missing_in_cache") == 1 and svc.core.counters.adopted == 1
        await until(lambda: svc.executor.counters["protections_replaced"] >= 2, 5)
        placed = await algo_ids(client, ETH)
        assert sorted(placed.values()) == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
        assert all(cid.startswith(("pc-ps-", "pc-pt-")) for cid in placed)
        await until(lambda: svc.reconcile_diffs.get("missing_in_cache", 0) >= 1, 5)
        await until(lambda: svc.outbox.pending == 0, 5)
        cached = Position.from_hash(await redis_client.hgetall(Keys(prefix).position(ETH)))
        assert cached.size == D("-0.500")
        assert {e["e"] for e in relay.received} == {"ALGO_UPDATE"}  # only our protection


async def test_a_cache_that_drifts_from_the_exchange_is_repaired(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    settings = pc_settings(sim, redis_url, prefix, risk={"reconcile_grace": 0})
    async with running_service(settings) as svc:
        await open_long(client)
        await tracked(svc)
        await until(lambda: redis_client.exists(keys.position(BTC)), 5)  # cache written
        before = dict(svc.reconcile_diffs)
        # drift 1: the exchange changes with no event (a lost user-data message)
        sim.exchange.place_order(sim.demo_key, {"symbol": BTC, "side": "SELL", "type": "MARKET",
                                                "quantity": "0.004", "reduceOnly": "true"},
                                 sim.clock.now_ms())  # fmt: skip
        # drift 2: the cache holds a position the exchange does not have
        ghost = Position(ETH, D(2), D(2000), D(2000), D(0), "cross", D(0), 20, 1)
        await redis_client.hset(keys.position(ETH), mapping=ghost.to_hash())
        await until(lambda: svc.core.positions[BTC].size == D("0.006"), 5)
        await until(lambda: not svc.outbox.pending and svc.reconcile_diffs.get(
            "missing_on_exchange", 0) > before.get("missing_on_exchange", 0), 5)  # fmt: skip
        assert svc.reconcile_diffs["size_mismatch"] == before.get("size_mismatch", 0) + 1
        assert svc.state_diffs["size_mismatch"] == 1
        cached = Position.from_hash(await redis_client.hgetall(keys.position(BTC)))
        assert cached.size == D("0.006") and not await redis_client.exists(keys.position(ETH))
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert svc.state_diffs["size_mismatch"] == 1  # repaired once, clean since
        assert orders_with_prefix(sim, "pc-") == []


# ---- closed trades ---------------------------------------------------------------------------


async def test_a_stop_fill_on_the_exchange_gives_exactly_one_trade_with_its_decision(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    entry_id = "slt-e-0123456789abcdef0123456789"
    price = sim.exchange.last_price(BTC)
    record = DecisionRecord(
        entry_id, BTC, "LONG", sim.clock.now_ms(), {"rsi_14": 55.5, "ret_1": float("nan")},
        "m42", 0.71, 0.56, 20, tick(sim, BTC, price * D("0.98")),
        tick(sim, BTC, price * D("1.03")), price,
    )  # fmt: skip
    await redis_client.set(keys.decision(entry_id), record.to_json())  # as the trader stores it
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await open_long(client, cid=entry_id)
        await tracked(svc)
        await client.new_algo_order(symbol=BTC, side="SELL", type="STOP_MARKET", closePosition=True,
                                    triggerPrice=str(record.stop_price), workingType="MARK_PRICE",
                                    clientAlgoId="slt-s-0123456789abcdef0123456789")  # fmt: skip
        push_mark(sim, BTC, tick(sim, BTC, price * D("0.975")))  # through the stop
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        await until(
            lambda: svc.executor.counters["trades_closed"] == 1 and svc.outbox.pending == 0, 5
        )
        (trade,) = await trades(redis_client, keys)
        assert trade.exit_reason == "stop_loss" and trade.side == "LONG"
        assert trade.quantity == D(QTY) and trade.entry_price == price
        assert trade.net_pnl == trade.gross_pnl - trade.fees + trade.funding < 0
        assert trade.decision is not None and trade.decision.client_order_id == entry_id
        assert trade.decision.features["rsi_14"] == 55.5 and trade.decision.model_version == "m42"
        assert orders_with_prefix(sim, "pc-") == []  # the exchange's stop did it, not us
        # the fill delivered again (a replay) and the service restarted: still one trade
        fills = [e for e in relay.received if e["e"] == "ORDER_TRADE_UPDATE"
                 and e["o"]["x"] == "TRADE"]  # fmt: skip
        events = svc.c["events_in"]
        for event in fills:
            await publish_user_event(redis_client, keys, event)
        await until(lambda: svc.c["events_in"] >= events + len(fills), 5)
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        for event in fills:
            await publish_user_event(redis_client, keys, event)
        await until(lambda: svc.c["events_in"] >= len(fills), 5)
        assert svc.core.positions == {}
    assert len(await trades(redis_client, keys)) == 1
    assert await redis_client.sismember(keys.trades_recorded, trade.trade_id)


# ---- Redis outage -----------------------------------------------------------------------------


async def test_with_redis_briefly_down_the_service_resumes_without_a_double_close(
    sim: SimServer, client: BinanceClient, tmp_path: Path, prefix: str,
) -> None:  # fmt: skip
    server = RedisServer(tmp_path / "redis", aof=True)  # our own: this test stops it
    server.start()
    keys = Keys(prefix)
    relay = await UserStreamRelay(sim, server.url, keys).start()
    rc = aioredis.from_url(server.url)
    settings = pc_settings(sim, server.url, prefix)
    try:
        async with running_service(settings) as svc:
            await open_long(client)
            await tracked(svc)
            opened = svc.core.open_time(BTC)
            assert opened is not None
            pos = svc.core.positions[BTC]
            crash = tick(sim, BTC, pos.entry_price * D("0.94"))
            await until(lambda: svc.outbox.pending == 0, 5)
            server.stop()  # Redis goes away ...
            push_mark(sim, BTC, crash)  # ... and the price collapses: the close needs no Redis
            await until(lambda: sim_position(sim, BTC) == 0, 5)
            await asyncio.sleep(0.3)
            assert svc.outbox.pending > 0  # its logs wait for Redis
            server.start()  # back, with its data (append-only file)
            await until(
                lambda: svc.executor.counters["trades_closed"] == 1 and svc.outbox.pending == 0, 15
            )
        # a restart on the same Redis; an old breach event is delivered again and the
        # price is still down: nothing may be sent
        async with running_service(settings) as svc:
            assert svc.core.positions == {}
            old = breach_event(sim, BTC, pos.size, pos.entry_price, pos.size * pos.entry_price,
                               opened + 1)  # fmt: skip
            await publish_user_event(rc, keys, old)
            push_mark(sim, BTC, crash - 10)
            await until(lambda: svc.c["stale_events"] == 1, 5)
            await until(lambda: svc.c["prices_in"] >= 1, 5)
            sweeps = svc.c["sweeps"]
            await until(lambda: svc.c["sweeps"] >= sweeps + 1, 5)
            assert svc.core.positions == {}
        assert len(orders_with_prefix(sim, "pc-")) == 1  # one close, ever
        assert [t.exit_reason for t in await trades(rc, keys)] == ["emergency"]
        logged = [d for _t, d in await stream_events(rc, keys.stream_orders)]
        assert [d["outcome"] for d in logged] == ["accepted"]  # written after the outage
        sent = svc.executor.sent[close_order_id(BTC, opened, "emergency")]
        assert sent.status == "filled"  # the restarted service knew what was sent
    finally:
        await relay.stop()
        await rc.aclose()
        server.stop()


# ---- entry invalidation and counter-trend -------------------------------------------------------


async def test_entry_invalidation_closes_when_the_level_is_crossed_not_before(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    entry_id = "slt-e-aaaaaaaaaaaaaaaaaaaaaaaaaa"
    price = sim.exchange.last_price(BTC)
    level = tick(sim, BTC, price * D("0.99"))
    record = DecisionRecord(entry_id, BTC, "LONG", sim.clock.now_ms(), {}, "m1", 0.7, 0.5, 20,
                            tick(sim, BTC, price * D("0.97")), tick(sim, BTC, price * D("1.03")),
                            price, invalidation_price=level)  # fmt: skip
    await redis_client.set(keys.decision(entry_id), record.to_json())
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await open_long(client, cid=entry_id)
        await tracked(svc)
        await until(lambda: svc.core.view(BTC).decision == record, 5)
        above = level + sim.specs[BTC].tick_size
        push_mark(sim, BTC, above)  # one tick above the level: a near miss
        await until(lambda: svc.core.view(BTC).price == above, 5)
        assert svc.core.close_in_flight(BTC) is None
        push_mark(sim, BTC, level)  # touching it counts
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id.startswith("pc-iv-")
        await until(
            lambda: svc.executor.counters["trades_closed"] == 1 and svc.outbox.pending == 0, 5
        )
        (trade,) = await trades(redis_client, keys)
        assert trade.exit_reason == "invalidation" and trade.decision == record


def bar(i: int, t0: int, close: float, prev: float) -> Kline:
    hi, lo = max(close, prev) * 1.0005, min(close, prev) * 0.9995
    start = t0 + i * 60_000
    return Kline(BTC, "1m", start, start + 59_999, prev, hi, lo, close, 10.0, 10.0 * close, 5,
                 5.0, 5.0 * close, True, start + 60_000, start + 60_000)  # fmt: skip


async def publish_kline(redis: aioredis.Redis, keys: Keys, k: Kline) -> None:
    fields = encode_event("kline", k.to_dict(), symbol=k.symbol, event_time=k.event_time)
    await redis.xadd(keys.stream_klines, fields)  # type: ignore[arg-type]


async def test_counter_trend_closes_when_the_trend_turns_against_the_position(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    t0 = sim.clock.now_ms() // 60_000 * 60_000 - 400 * 60_000
    price = float(sim.exchange.last_price(BTC))
    for i in range(250):  # a steady rise, before the service starts (it warms up on it)
        nxt = price * math.exp(0.001)
        await publish_kline(redis_client, keys, bar(i, t0, nxt, price))
        price = nxt
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        up = svc.core.trend(BTC)
        assert up is not None and up.trend > 0.5
        await open_long(client)
        await tracked(svc)
        for i in range(250, 320):  # then it turns down, one closed kline at a time
            nxt = price * math.exp(-0.0015)
            seen = svc.c["klines_in"]
            await publish_kline(redis_client, keys, bar(i, t0, nxt, price))
            price = nxt
            await until(lambda s=seen: svc.c["klines_in"] > s, 5)
            if svc.core.close_in_flight(BTC) is not None or orders_with_prefix(sim, "pc-"):
                break  # decided on this kline (the close may be done already)
            trend = svc.core.trend(BTC)
            assert trend is not None and not (trend.trend <= -0.2 and trend.confidence >= 0.7)
        trend = svc.core.trend(BTC)
        assert trend is not None and trend.trend <= -0.2 and trend.confidence >= 0.7
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id.startswith("pc-ct-") and i > 250


async def test_liquidation_guard_closes_an_isolated_long_near_its_liquidation_price(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    await client.change_margin_type(BTC, "ISOLATED")
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await open_long(client)
        await tracked(svc)
        pos = svc.core.positions[BTC]
        assert pos.margin_type == "isolated" and pos.isolated_wallet > 0
        rows = await client.position_risk(BTC)
        liq = D(rows[0]["liquidationPrice"])  # about 4.6 % under entry at 20x
        assert liq > 0
        outside = tick(sim, BTC, liq * D("1.02"))  # 2 % above it: buffer is 1 %
        push_mark(sim, BTC, outside)
        await until(lambda: svc.core.view(BTC).price == outside, 5)
        assert svc.core.close_in_flight(BTC) is None and orders_with_prefix(sim, "pc-") == []
        inside = tick(sim, BTC, liq * D("1.008"))  # within 1 %, PnL on margin still > -99 %
        push_mark(sim, BTC, inside)
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id.startswith("pc-em-")  # a guard close is an emergency close
        await until(lambda: svc.outbox.pending == 0 and svc.executor.counters["risk_actions"], 5)
        exits = [d for t, d in await stream_events(redis_client, Keys(prefix).stream_risk)
                 if t == "exit"]  # fmt: skip
        assert [d["rule"] for d in exits] == ["liquidation_guard"]


async def test_no_progress_invalidates_the_entry_after_n_minutes_not_before(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    entry_id = "slt-e-bbbbbbbbbbbbbbbbbbbbbbbbbb"
    price = sim.exchange.last_price(BTC)
    # a wide stop: 25 % of its distance (2.5 %) is out of reach within a minute
    record = DecisionRecord(entry_id, BTC, "LONG", sim.clock.now_ms(), {}, "m1", 0.7, 0.5, 20,
                            tick(sim, BTC, price * D("0.90")), tick(sim, BTC, price * D("1.2")),
                            price)  # fmt: skip
    await redis_client.set(keys.decision(entry_id), record.to_json())
    settings = pc_settings(sim, redis_url, prefix, trading={"no_progress_minutes": 1})
    async with running_service(settings) as svc:
        await open_long(client, cid=entry_id)
        await tracked(svc)
        await until(lambda: svc.core.view(BTC).decision == record, 5)
        sim.clock.advance(50_000)
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert orders_with_prefix(sim, "pc-") == []
        sim.clock.advance(12_000)
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        (order,) = orders_with_prefix(sim, "pc-")
        assert order.client_id.startswith("pc-iv-")
        await until(lambda: svc.executor.counters["trades_closed"] == 1, 5)
        await until(lambda: svc.outbox.pending == 0, 5)
        exits = [d for t, d in await stream_events(redis_client, keys.stream_risk) if t == "exit"]
        assert exits[0]["rule"] == "no_progress" and "no progress after 1 min" in exits[0]["reason"]


# ---- where positions come from at start-up ------------------------------------------------------


async def test_positions_come_from_a_fresh_cache_else_from_rest(
    sim: SimServer, client: BinanceClient, redis_url: str, prefix: str,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    await open_long(client)
    (row,) = await client.position_risk(BTC)
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        assert svc.position_source == "rest"  # no account_feed: its cache is not trusted
        assert svc.c["rest_fallbacks"] >= 1 and BTC in svc.core.positions
    cached = Position.from_position_risk(row, 20)
    await redis_client.hset(keys.position(BTC), mapping=cached.to_hash())
    await redis_client.hset(keys.health("account_feed"), mapping={"status": "ok"})
    await redis_client.expire(keys.health("account_feed"), 30)
    settings = pc_settings(sim, redis_url, prefix, trading={"position_check_interval": 60})
    async with running_service(settings) as svc:
        assert svc.position_source == "cache" and svc.c["rest_fallbacks"] == 0
        assert svc.core.positions[BTC].size == cached.size and svc.healthy() is True


# ---- trades the exchange ended ----------------------------------------------------------------


async def test_a_manual_close_and_a_liquidation_each_give_one_trade(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    async with running_service(pc_settings(sim, redis_url, prefix)) as svc:
        await open_long(client)
        await tracked(svc)
        await client.new_order(symbol=BTC, side="SELL", type="MARKET", quantity=QTY,
                               reduceOnly="true", newClientOrderId="by-hand-1")  # fmt: skip
        await until(lambda: svc.executor.counters["trades_closed"] == 1, 5)
        await client.change_margin_type(BTC, "ISOLATED")
        await open_long(client)
        await until(lambda: BTC in svc.core.positions and svc.core.positions[BTC].isolated_wallet
                    > 0, 5)  # fmt: skip
        (row,) = await client.position_risk(BTC)
        push_mark(sim, BTC, tick(sim, BTC, D(row["liquidationPrice"]) * D("0.99")))  # a gap
        await until(lambda: sim_position(sim, BTC) == 0, 5)
        await until(lambda: svc.executor.counters["trades_closed"] == 2, 5)
        await until(lambda: svc.outbox.pending == 0, 5)
    reasons = [t.exit_reason for t in await trades(redis_client, keys)]
    assert reasons == ["manual", "liquidation"]
    assert orders_with_prefix(sim, "pc-") == []  # a late close of ours found nothing to reduce


# ---- orphaned legs: a closed position's stop/target is cancelled (Binance does not) ----


async def place_legs(sim: SimServer, client: BinanceClient, entry: D, tag: str) -> None:
    for cid, otype, f in ((f"slt-s-{tag}", "STOP_MARKET", "0.97"),
                          (f"slt-t-{tag}", "TAKE_PROFIT_MARKET", "1.05")):  # fmt: skip
        await client.new_algo_order(symbol=BTC, side="SELL", type=otype, closePosition=True,
                                    triggerPrice=str(tick(sim, BTC, entry * D(f))),
                                    clientAlgoId=cid)  # fmt: skip


async def test_a_closed_positions_legs_are_cancelled_and_a_new_positions_kept(
    sim: SimServer, client: BinanceClient, relay: UserStreamRelay, redis_url: str,
    prefix: str, redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    settings = pc_settings(sim, redis_url, prefix, risk={"protection_grace": 600})
    async with running_service(settings) as svc:
        await open_long(client)
        await tracked(svc)
        await place_legs(sim, client, svc.core.positions[BTC].entry_price, "old")
        assert set(await algo_ids(client, BTC)) == {"slt-s-old", "slt-t-old"}
        await client.new_order(symbol=BTC, side="SELL", type="MARKET", quantity=QTY,
                               reduceOnly="true", newClientOrderId="by-hand-1")  # fmt: skip
        await until(lambda: svc.executor.counters["orphans_cancelled"] == 2, 5)
        assert await algo_ids(client, BTC) == {}
        # a new position and its own legs: the next sweeps leave them alone
        await open_long(client)
        await tracked(svc)
        await place_legs(sim, client, svc.core.positions[BTC].entry_price, "new")
        sweeps = svc.c["sweeps"]
        await until(lambda: svc.c["sweeps"] >= sweeps + 2, 5)
        assert set(await algo_ids(client, BTC)) == {"slt-s-new", "slt-t-new"}
        assert svc.executor.counters["orphans_cancelled"] == 2
        await until(lambda: svc.outbox.pending == 0, 5)
    risk = [d for t, d in await stream_events(redis_client, Keys(prefix).stream_risk)
            if t == "orphan_cancel"]  # fmt: skip
    assert sorted(d["client_algo_id"] for d in risk) == ["slt-s-old", "slt-t-old"]
    assert {d["outcome"] for d in risk} == {"cancelled"}


# ---- with the real account_feed ---------------------------------------------------------------


async def test_with_the_real_account_feed_cache_first_and_a_stop_fill_gives_one_trade(
    sim: SimServer, client: BinanceClient, redis_url: str, prefix: str,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    entry_id = "slt-e-cccccccccccccccccccccccccc"
    price = sim.exchange.last_price(BTC)
    record = DecisionRecord(entry_id, BTC, "LONG", sim.clock.now_ms(), {"rsi_14": 40.0}, "m9",
                            0.66, 0.52, 20, tick(sim, BTC, price * D("0.98")),
                            tick(sim, BTC, price * D("1.03")), price)  # fmt: skip
    await redis_client.set(keys.decision(entry_id), record.to_json())
    settings = pc_settings(sim, redis_url, prefix, service={"heartbeat_interval": 0.2})
    async with running_account_feed(settings) as feed:
        await open_long(client, cid=entry_id)
        await until(lambda: redis_client.exists(keys.position(BTC)), 5)
        await until(lambda: feed.status() == "ok", 5)
        health = keys.health("account_feed")

        async def heartbeat_ok() -> bool:
            return await redis_client.hget(health, "status") == b"ok"

        await until(heartbeat_ok, 5)
        async with running_service(settings) as svc:
            assert svc.position_source == "cache" and svc.feed_alive
            assert svc.core.positions[BTC].size == D(QTY) and svc.c["rest_fallbacks"] == 0
            lot = svc.core.ledger.lot(BTC)  # rebuilt from the stream's fills: the real entry
            assert svc.c["lots_rebuilt"] == 1 and lot is not None
            assert lot.entry_client_id == entry_id and not lot.estimated
            await client.new_algo_order(symbol=BTC, side="SELL", type="STOP_MARKET",
                                        closePosition=True, triggerPrice=str(record.stop_price),
                                        workingType="MARK_PRICE", clientAlgoId="slt-s-feed")  # fmt: skip
            push_mark(sim, BTC, tick(sim, BTC, price * D("0.975")))
            await until(lambda: svc.executor.counters["trades_closed"] == 1, 5)
            await until(lambda: svc.outbox.pending == 0 and svc.core.positions == {}, 5)
            sweeps = svc.c["sweeps"]
            await until(lambda: svc.c["sweeps"] >= sweeps + 1, 5)
            assert svc.reconcile_diffs == {} and svc.state_diffs == {}  # the feed kept up
    (trade,) = await trades(redis_client, keys)
    assert trade.exit_reason == "stop_loss" and trade.decision == record
    assert orders_with_prefix(sim, "pc-") == []
