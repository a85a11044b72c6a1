"""The position controller shell's parts on their own: input parsing (Hypothesis for the
leverage arithmetic), the persisted state, the outbox on real Redis (a trade is written
once), the executor against the simulator (replays skipped, -2022 read as closed, a
timed-out order looked up before it is sent again), and the command line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from services.exchange_sim.server import SimConfig, SimServer
from services.position_controller.__main__ import main
from services.position_controller.executor import Executor, Outcome, algo_params
from services.position_controller.inputs import (
    decision_from_redis,
    derived_leverage,
    fills_since_open,
    parse_account_event,
    parse_mark_price,
    position_rows,
)
from services.position_controller.ledger import Ledger
from services.position_controller.persistence import ControllerState, Outbox, StateError
from services.position_controller.rules import (
    ExitDecision,
    ExitRule,
    PositionView,
    Urgency,
    close_intents,
)
from services.position_controller.sources import Sources
from shared.account_cache import AccountCache, PositionWrite
from shared.binance.client import BinanceClient
from shared.codec import decode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import (
    AccountUpdate,
    ClosedTrade,
    DecisionRecord,
    OrderIntent,
    OrderUpdate,
    Position,
)

T0 = 1_790_000_000_000
RECORD = DecisionRecord("slt-e-1", "BTCUSDT", "LONG", T0, {"rsi_14": 55.0}, "m1", 0.7, 0.5, 10,
                        D(98), D(104), D(100))  # fmt: skip


# ---- inputs --------------------------------------------------------------------------------------


@given(lev=st.integers(1, 125), notional=st.decimals("5", "10000000", places=2))
def test_leverage_is_recovered_from_a_v3_row_as_the_exchange_rounds_it(
    lev: int, notional: D
) -> None:
    pim = (notional / lev).quantize(D("0.00000001"))
    row = {"notional": f"-{notional}", "positionInitialMargin": str(pim)}
    assert derived_leverage(row) == lev
    assert derived_leverage({"leverage": str(lev)}) == lev


def test_leverage_is_unknown_without_margin() -> None:
    assert derived_leverage({"notional": "0", "positionInitialMargin": "0"}) is None
    assert derived_leverage({"notional": "x"}) is None


def test_mark_price_frames() -> None:
    raw = b'{"e":"markPriceUpdate","E":5,"s":"BTCUSDT","p":"30000.10","r":"0.0001"}'
    assert parse_mark_price(raw) == ("BTCUSDT", D("30000.10"), 5)
    wrapped = b'{"stream":"btcusdt@markPrice@1s","data":' + raw + b"}"
    assert parse_mark_price(wrapped) == ("BTCUSDT", D("30000.10"), 5)
    assert parse_mark_price(b'{"result":null,"id":1}') is None
    for bad in (b"{", b'{"e":"markPriceUpdate","E":5,"s":"BTCUSDT","p":"NaN"}',
                b'{"e":"markPriceUpdate","E":5,"s":"BTCUSDT","p":"-1"}',
                b'{"e":"markPriceUpdate","E":5,"s":"BTCUSDT"}', b'{"e":"kline"}', b"[1]"):  # fmt: skip
        with pytest.raises(MessageError):
            parse_mark_price(bad)


def test_account_events_from_the_wire_and_from_domain_dicts() -> None:
    wire = {"e": "ACCOUNT_CONFIG_UPDATE", "E": 7, "T": 7, "ac": {"s": "BTCUSDT", "l": 25}}
    ev = parse_account_event("ACCOUNT_CONFIG_UPDATE", wire)
    assert ev is not None and ev.leverage == 25  # type: ignore[union-attr]
    upd = AccountUpdate("ORDER", (), (), 9, 9)
    assert parse_account_event("ACCOUNT_UPDATE", upd.to_dict()) == upd
    assert parse_account_event("TRADE_LITE", {"e": "TRADE_LITE", "E": 1}) is None
    assert parse_account_event("SOMETHING", {"x": 1}) is None
    with pytest.raises(MessageError):
        parse_account_event("ORDER_TRADE_UPDATE", {"e": "ORDER_TRADE_UPDATE", "E": 1, "o": {}})


def test_position_rows_skip_and_count_bad_rows() -> None:
    good = {"symbol": "BTCUSDT", "positionAmt": "0.010", "entryPrice": "30000",
            "unRealizedProfit": "-1", "updateTime": 5, "isolatedWallet": "0",
            "liquidationPrice": "1500", "notional": "300", "positionInitialMargin": "15"}  # fmt: skip
    flat = {**good, "symbol": "ETHUSDT", "positionAmt": "0", "liquidationPrice": "0"}
    positions, liq, lev, bad = position_rows([good, flat, {"symbol": "X"}, "junk"])
    assert [p.symbol for p in positions] == ["BTCUSDT", "ETHUSDT"] and bad == 2
    assert liq == {"BTCUSDT": D(1500)} and lev == {"BTCUSDT": 20}
    with pytest.raises(MessageError):
        position_rows({"not": "a list"})


def test_decision_records_are_read_however_they_were_stored() -> None:
    assert decision_from_redis(RECORD.to_json()) == RECORD
    assert decision_from_redis({b"json": RECORD.to_json()}) == RECORD
    flat = {k: (orjson.dumps(v).decode() if isinstance(v, dict) else str(v))
            for k, v in RECORD.to_dict().items() if v is not None}  # fmt: skip
    assert decision_from_redis(flat) == RECORD
    for bad in (b"{", {"features": "{"}, 5):
        with pytest.raises(MessageError):
            decision_from_redis(bad)


# ---- persisted state -----------------------------------------------------------------------------


def test_state_round_trips_with_the_ledger_and_rejects_garbage() -> None:
    ledger = Ledger()
    fill = OrderUpdate("BTCUSDT", "slt-e-1", "BUY", "MARKET", "MARKET", "GTC", D("0.010"), D(0),
                       D("30000.1"), D(0), "TRADE", "FILLED", 1, D("0.010"), D("0.010"),
                       D("30000.1"), "USDT", D("0.15"), D(0), 3, T0, False, False, False,
                       "BOTH", "CONTRACT_PRICE", T0, T0)  # fmt: skip
    ledger.on_fill(fill)
    pos = Position("BTCUSDT", D("0.010"), D("30000.1"), D("30000.1"), D(0), "cross", D(0), 20, T0)
    state = ControllerState({"BTCUSDT": T0}, {"BTCUSDT": T0 + 5}, (pos,), ledger.to_state())
    back = ControllerState.from_json(state.to_json())
    assert (back.open_times, back.event_times, back.positions) == (
        state.open_times, state.event_times, state.positions)  # fmt: skip
    again = Ledger()
    again.restore(back.ledger)
    assert again.lots == ledger.lots
    for bad in (b"{", b"[]", b'{"v":2}', b'{"v":1,"open_times":{"X":"y"}}'):
        with pytest.raises(StateError):
            ControllerState.from_json(bad)


# ---- the outbox ----------------------------------------------------------------------------------


def trade(trade_id: str = "BTCUSDT-1") -> ClosedTrade:
    return ClosedTrade(trade_id, "BTCUSDT", "LONG", D(1), D(100), D(99), 1, 2, D("0.1"), D(0),
                       D(-1), D("-1.1"), "stop_loss", 10, RECORD)  # fmt: skip


async def test_outbox_writes_a_trade_once_and_replaces_cache_hashes(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    first = Outbox(redis_client, keys, lambda s: 1000)
    first.trade(trade())
    first.trade(trade())  # the same trade twice in one batch
    pos = Position("BTCUSDT", D(1), D(100), D(100), D(0), "cross", D(0), 10, 5)
    first.position("BTCUSDT", pos, 10)
    first.state(b'{"v":1}')
    assert not first.state(b'{"v":1}')  # coalesced
    await first.flush()
    second = Outbox(redis_client, keys, lambda s: 1000)  # a restarted process
    second.trade(trade())
    second.position("BTCUSDT", None, 20)
    await second.flush()
    entries = await redis_client.xrange(keys.stream_trades)
    assert len(entries) == 1
    etype, data, meta = decode_event(entries[0][1])
    assert etype == "closed_trade" and ClosedTrade.from_dict(data) == trade()
    assert meta.symbol == "BTCUSDT" and meta.event_time == 2
    assert first.counters["trades_recorded"] == 1 and first.counters["trades_duplicate"] == 1
    assert second.counters["trades_duplicate"] == 1
    assert not await redis_client.exists(keys.position("BTCUSDT"))
    assert await redis_client.get(keys.pc_state) == b'{"v":1}'


async def test_outbox_cache_repairs_follow_the_account_cache_event_time_rule(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """A sweep repair older than what account_feed wrote is dropped, a newer one applied,
    and the repair keeps the leverage it knows (one writer: shared.account_cache)."""
    keys = Keys(prefix)
    feed_pos = Position("BTCUSDT", D(2), D(100), D(100), D(0), "cross", D(0), 20, 50)
    await AccountCache(redis_client, keys).apply([PositionWrite("BTCUSDT", 50, feed_pos)])
    box = Outbox(redis_client, keys, lambda s: 1000)
    stale = Position("BTCUSDT", D(1), D(100), D(100), D(0), "cross", D(0), 10, 40)
    box.position("BTCUSDT", stale, 40)  # the sweep's REST snapshot predates the event
    await box.flush()
    cached = Position.from_hash(await redis_client.hgetall(keys.position("BTCUSDT")))
    assert cached.size == D(2)
    newer = Position("BTCUSDT", D(3), D(101), D(101), D(0), "cross", D(0), 15, 60)
    box.position("BTCUSDT", newer, 60)
    await box.flush()
    cached = Position.from_hash(await redis_client.hgetall(keys.position("BTCUSDT")))
    assert (cached.size, cached.leverage) == (D(3), 15)
    box.position("BTCUSDT", None, 55)  # an older "flat" cannot delete the newer position
    await box.flush()
    assert await redis_client.exists(keys.position("BTCUSDT"))


async def test_outbox_keeps_everything_while_redis_is_unreachable(prefix: str) -> None:
    from shared.testing import free_port

    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    box = Outbox(dead, Keys(prefix), lambda s: 1000, max_ops=3)
    box.trade(trade())
    for i in range(5):
        box.xadd("s", {"i": str(i)})
    with pytest.raises(RedisConnectionError):
        await box.flush()
    assert box.pending == 3 and box.counters["dropped"] == 3  # logs dropped, the trade kept
    assert [op.kind for op in box._ops] == ["trade", "xadd", "xadd"]
    await dead.aclose()


# ---- the executor against the simulator ----------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(symbols=("BTCUSDT",), history_minutes=30)) as server:
        yield server


def close_decision(sim: SimServer, qty: str = "0.010") -> ExitDecision:
    pos = Position("BTCUSDT", D(qty), sim.exchange.last_price("BTCUSDT"), D(0), D(0), "cross",
                   D(0), 20, T0)  # fmt: skip
    (intent,) = close_intents(PositionView(pos, T0), "emergency", "test")
    return ExitDecision("BTCUSDT", ExitRule.EMERGENCY, "test", Urgency.IMMEDIATE, intent)


async def test_executor_skips_a_replay_and_reads_2022_as_already_closed(
    sim: SimServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    box = Outbox(redis_client, keys, lambda s: 1000)
    wall = [1_000_000]
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        await c.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")
        ex = Executor(c, box, keys, replay_window_ms=5_000, wall_ms=lambda: wall[0])
        d = close_decision(sim)
        assert [r.outcome for r in await ex.close(d, T0)] == [Outcome.ACCEPTED]
        assert [r.outcome for r in await ex.close(d, T0)] == [Outcome.SKIPPED]
        wall[0] += 5_000  # past the window: sent again, and the exchange says flat
        assert [r.outcome for r in await ex.close(d, T0)] == [Outcome.ALREADY_CLOSED]
    pos = sim.exchange.accounts[sim.demo_key].positions["BTCUSDT"]
    assert pos.amount == 0  # never flipped
    await box.flush()
    logged = [decode_event(f)[1] for _i, f in await redis_client.xrange(keys.stream_orders)]
    assert [x["outcome"] for x in logged] == ["accepted", "skipped", "already_closed"]
    assert logged[0]["request"] == {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET",
                                    "newClientOrderId": d.client_order_id,
                                    "quantity": "0.010", "reduceOnly": "true"}  # fmt: skip
    stored = await redis_client.hget(keys.pc_orders, d.client_order_id)
    assert stored is not None and orjson.loads(stored)["status"] == "already_closed"


async def test_executor_looks_a_timed_out_order_up_before_sending_it_again(
    sim: SimServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    box = Outbox(redis_client, keys, lambda s: 1000)
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                              request_timeout=0.3) as c:  # fmt: skip
        await c.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.020")
        ex = Executor(c, box, keys)
        sim.admin.fail_rest("timeout", path="/fapi/v1/order", hang_s=1.0)  # never arrives
        (first,) = await ex.close(close_decision(sim, "0.010"), T0)
        assert first.outcome is Outcome.ACCEPTED and ex.counters["unknown_outcomes"] == 1
        sim.admin.fail_rest("5xx", path="/fapi/v1/order")  # a busy exchange: retried at once
        d2 = close_decision(sim, "0.010")
        d2 = ExitDecision(d2.symbol, ExitRule.TIME_STOP, "t", Urgency.NORMAL,
                          OrderIntent(**{**d2.intent.to_dict(), "client_order_id": "pc-x-2"}))  # fmt: skip
        (second,) = await ex.close(d2, T0)
        assert second.outcome is Outcome.ACCEPTED and ex.counters["retries"] == 1
    ids = [o.client_id for o in sim.exchange.audit.orders]
    assert ids.count(first.client_order_id) == 1 and ids.count("pc-x-2") == 1
    assert sim.exchange.accounts[sim.demo_key].positions["BTCUSDT"].amount == 0


def test_protective_orders_use_the_algo_api_names() -> None:
    stop = OrderIntent("BTCUSDT", "SELL", "STOP_MARKET", None, "pc-ps-x", "stop",
                       stop_price=D("29000.10"), close_position=True)  # fmt: skip
    assert algo_params(stop) == {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET",
                                 "triggerPrice": "29000.10", "workingType": "MARK_PRICE",
                                 "clientAlgoId": "pc-ps-x", "closePosition": True}  # fmt: skip


# ---- command line --------------------------------------------------------------------------------


def test_main_help_and_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str,
    prefix: str,
) -> None:  # fmt: skip
    assert main(["--help"]) == 0
    assert "--check" in capsys.readouterr().out
    monkeypatch.setenv("SLT_REDIS__URL", redis_url)
    monkeypatch.setenv("SLT_REDIS__PREFIX", prefix)
    assert main(["--check"]) == 1  # no heartbeat under this prefix
    assert "no heartbeat" in capsys.readouterr().out
    monkeypatch.setenv("SLT_TRADING__POSITION_CHECK_INTERVAL", "0")
    assert main(["--check"]) == 2
    assert "position_check_interval" in capsys.readouterr().err


# ---- rebuilding a lot from the fill history ------------------------------------------------------


def signed_fill(i: int, qty: int) -> OrderUpdate:
    q = D(abs(qty))
    return OrderUpdate("BTCUSDT", f"c{i}", "BUY" if qty > 0 else "SELL", "MARKET", "MARKET",
                       "GTC", q, D(0), D(100), D(0), "TRADE", "FILLED", i, q, q, D(100), "USDT",
                       D(0), D(0), i + 1, T0 + i, False, False, False, "BOTH", "CONTRACT_PRICE",
                       T0 + i, T0 + i)  # fmt: skip


@given(st.lists(st.integers(-5, 5).filter(bool), min_size=1, max_size=12), st.randoms())
def test_the_fills_since_the_position_opened_are_found_walking_back(
    qtys: list[int], rnd: object
) -> None:
    fills = [signed_fill(i, q) for i, q in enumerate(qtys)]
    running = [0]
    for q in qtys:
        running.append(running[-1] + q)
    size = running[-1]
    if size == 0:
        return
    start = max(i for i, r in enumerate(running[:-1]) if r == 0) if 0 in running[:-1] else None
    flipped = start is None or any((r > 0) != (size > 0) for r in running[start + 1 :])
    shuffled = fills + fills[:2]  # any order, with duplicates
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    got = fills_since_open(shuffled, D(size))
    assert got == (None if flipped else fills[start:])


async def test_gap_fills_read_every_page_of_a_busy_gap(
    sim: SimServer, redis_client: aioredis.Redis, prefix: str
) -> None:
    """Binance answers userTrades with the first 1000 rows from startTime: 2,150 fills
    since the gap started come back whole, each once, in order."""
    start = sim.clock.now_ms()
    for i in range(2150):
        side = "BUY" if i % 2 == 0 else "SELL"
        sim.exchange.place_order(sim.demo_key, {"symbol": "BTCUSDT", "side": side,
                                                "type": "MARKET", "quantity": "0.010"},
                                 sim.clock.now_ms())  # fmt: skip
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        rows = await Sources(redis_client, Keys(prefix), c, {}).user_trades_since("BTCUSDT", start)
        one = await c.user_trades("BTCUSDT", start_time=start, limit=1000)
    assert len(one) == 1000  # a single call stops there
    assert rows is not None and len(rows) == 2150
    ids = [r["id"] for r in rows]
    assert ids == sorted(set(ids))
