"""The trader shell's parts on their own: the minute gate (pure), account arithmetic
(Hypothesis), the account view and the decision publisher on a real Redis, REST history
paging and the entry executor against the simulator."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from decimal import Decimal as D
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.exchange_sim.server import SimConfig, SimServer
from services.trader.account_view import AccountUnavailable, AccountView, from_cache, from_rest
from services.trader.core import Decision
from services.trader.execution import EntryExecutor, ExecutionOptions, Outcome
from services.trader.latency import DecisionTiming, GcHold
from services.trader.minute_gate import MinuteGate
from services.trader.model_io import fetch_closed_klines, symbol_of_file
from services.trader.order_ids import client_order_id
from services.trader.redis_io import TraderRedis
from shared.binance.client import BinanceClient
from shared.codec import decode_event, encode_event, pack
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import Balance, DecisionRecord, OrderIntent, Position

pytestmark = pytest.mark.timeout(60)
MIN = 60_000
START = 1_767_225_600_000


# ---- MinuteGate ----------------------------------------------------------------------------
def test_gate_decides_when_every_symbol_is_in() -> None:
    g = MinuteGate(["A", "B", "C"], grace_ms=2000, timeout_ms=5000)
    assert g.before(MIN) is None and g.after("A", MIN, MIN + 100, 0) is None
    assert g.after("A", MIN, MIN + 150, 1) is None  # a duplicate symbol completes nothing
    assert g.after("B", MIN, MIN + 200, 2) is None
    assert g.after("C", MIN, MIN + 300, 3) == MIN and g.by_rule["complete"] == 1
    assert g.after("A", MIN, MIN + 400, 4) is None and g.late == 1  # decided: never again
    assert g.deadline() is None


def test_gate_grace_is_event_time_not_receive_time() -> None:
    g = MinuteGate(["A", "B", "C"], grace_ms=2000, timeout_ms=60_000)
    assert g.after("A", MIN, 120_000, received_ms=0) is None
    assert g.after("B", MIN, 121_999, received_ms=50_000) is None  # late by the clock only
    assert g.after("B", MIN, 122_000, received_ms=50_001) == MIN  # 2 s of exchange time
    assert g.by_rule["grace"] == 1


def test_gate_next_minute_and_timer() -> None:
    g = MinuteGate(["A", "B"], grace_ms=10_000, timeout_ms=3000, last_decided=0)
    assert g.after("A", 0, 60_005, 0) is None and g.late == 1  # replayed decided minute
    g.after("A", MIN, MIN + 60_005, received_ms=1000)
    assert g.before(MIN) is None and g.before(2 * MIN) == MIN  # decide M before feeding M+1
    assert g.by_rule["next_minute"] == 1 and g.deadline() is None
    g.after("A", 2 * MIN, 3 * MIN, received_ms=5000)
    assert g.deadline() == 8000 and g.expire(7999) is None and g.expire(8000) == 2 * MIN
    assert g.after("B", 2 * MIN, 3 * MIN + 1, 8001) is None and g.last_decided == 2 * MIN


# ---- account arithmetic ----------------------------------------------------------------------
money = st.decimals(min_value=D("0.01"), max_value=D("1000000"), places=2)
pnl = st.decimals(min_value=D("-1000"), max_value=D("1000"), places=2)


@given(
    wallet=money,
    cross=money,
    rows=st.lists(st.tuples(st.decimals(D("-50"), D("50"), places=3), money, pnl,
                            st.one_of(st.none(), st.integers(1, 125))), max_size=6),
)  # fmt: skip
def test_equity_and_available_from_cache(wallet, cross, rows) -> None:
    bal = Balance("USDT", wallet, cross, D(0), 1)
    pos = [Position(f"S{i}USDT", size, price, price, upnl, "cross", D(0), lev, 1)
           for i, (size, price, upnl, lev) in enumerate(rows)]  # fmt: skip
    equity, available = from_cache(bal, pos)
    upnl = sum((p.unrealized_pnl for p in pos), D(0))
    assert equity == wallet + upnl
    margin = sum((abs(p.size) * p.entry_price / (p.leverage or 1) for p in pos), D(0))
    assert available == min(equity, cross + upnl) - margin and available <= equity


def test_balance_from_rest_rows() -> None:
    rows = [{"asset": "BNB", "balance": "1"},
            {"asset": "USDT", "balance": "100.5", "crossUnPnl": "-0.5", "availableBalance": "80"}]  # fmt: skip
    assert from_rest(rows, "USDT") == (D("100.0"), D("80"))
    with pytest.raises(MessageError):
        from_rest(rows[:1], "USDT")
    with pytest.raises(MessageError):
        from_rest([{"asset": "USDT", "balance": "NaN"}], "USDT")


@pytest.mark.parametrize(
    ("spec", "symbol"),
    [("/d/AVAXUSDT-1m-2023-02.csv", "AVAXUSDT"), ("x/BTC_USDT_USDT-1m-futures.csv.gz", "BTCUSDT"),
     ("ethusdt=/tmp/any.csv", "ETHUSDT")],
)  # fmt: skip
def test_symbol_of_history_file(spec: str, symbol: str) -> None:
    assert symbol_of_file(spec)[0] == symbol


def test_symbol_of_history_file_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        symbol_of_file("/d/x.csv")


# ---- Redis -------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def sim_and_client(**kw: Any) -> AsyncIterator[tuple[SimServer, BinanceClient]]:
    cfg = SimConfig(symbols=("BTCUSDT", "ETHUSDT"), paused=True, start_ms=START,
                    funding_enabled=False, **kw)  # fmt: skip
    async with SimServer(cfg) as sim:
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                                  breaker_open_seconds=0.2) as client:  # fmt: skip
            yield sim, client


async def test_account_view_cache_first_rest_fallback(redis_client, prefix) -> None:
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (_sim, client):
        view = AccountView(redis_client, keys, client, ["BTCUSDT", "ETHUSDT"])
        snap = await view.snapshot()  # no account_feed: REST
        assert snap.source == "rest" and snap.equity == D("10000") and not snap.positions
        assert (await view.snapshot()).source == "rest_cached"
        await redis_client.hset(keys.health("account_feed"), "status", "ok")
        await redis_client.hset(keys.balance("USDT"),
                                mapping=Balance("USDT", D("500"), D("500"), D(0), 1).to_hash())  # fmt: skip
        pos = Position("ETHUSDT", D("-2"), D("100"), D("100"), D("-3"), "cross", D(0), 10, 1)
        await redis_client.hset(keys.position("ETHUSDT"), mapping=pos.to_hash())
        await redis_client.set(keys.halt, "1")
        snap = await view.snapshot()
        assert snap.source == "cache" and snap.halted and list(snap.positions) == ["ETHUSDT"]
        assert snap.equity == D("497") and snap.available == D("477")
        await redis_client.hset(keys.position("BTCUSDT"), mapping={"symbol": "BTCUSDT"})
        assert (await view.snapshot()).source == "rest_cached"  # damaged hash: not trusted
        async with BinanceClient.from_credentials("http://127.0.0.1:9", "k", "s") as dead:
            with pytest.raises(AccountUnavailable):  # neither source answers
                await AccountView(redis_client, keys, dead, ["BTCUSDT"]).snapshot()


async def test_packed_decisions_are_written_as_encode_event_writes_them(
    redis_client, prefix
) -> None:
    """publish_events sends the constant fields once; each entry must still be exactly
    encode_event's (field order and bytes), so decode_event and `slt tail` read it."""
    keys = Keys(prefix)
    io = TraderRedis(redis_client, keys)
    datas = [{"symbol": s, "rank": i, "price": D("1.10"), "x": 0.1 * i, "none": None}
             for i, s in enumerate(["AUSDT", "BUSDT", "CUSDT"])]  # fmt: skip
    n = await io.publish_events("decision", 9 * MIN, [(d["symbol"], pack(d)) for d in datas],
                                8 * MIN, 1000)  # fmt: skip
    assert n == 3 and await redis_client.get(keys.trader_last_decided) == str(8 * MIN).encode()
    rows = [f for _i, f in await redis_client.xrange(keys.stream_signals)]
    want = [encode_event("decision", d, symbol=d["symbol"], event_time=9 * MIN) for d in datas]
    assert [list(f.items()) for f in rows] == [
        [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in w.items()]
        for w in want
    ]
    assert [decode_event(f)[1] for f in rows] == datas
    assert await io.publish_events("decision", 10 * MIN, [], 9 * MIN, 1000) == 0
    assert await redis_client.get(keys.trader_last_decided) == str(9 * MIN).encode()


async def test_account_read_leaves_out_symbols_without_a_position_hash(
    redis_client, prefix
) -> None:
    keys = Keys(prefix)
    pos = Position("ETHUSDT", D("-2"), D("100"), D("100"), D("-3"), "cross", D(0), 10, 1)
    await redis_client.hset(keys.position("ETHUSDT"), mapping=pos.to_hash())
    await redis_client.hset(keys.balance("USDT"),
                            mapping=Balance("USDT", D("5"), D("5"), D(0), 1).to_hash())  # fmt: skip
    symbols = ["AUSDT", "ETHUSDT", "ZUSDT"]
    halted, _status, balance, hashes, _slots = await TraderRedis(redis_client, keys).read_account(
        "USDT", symbols
    )
    assert not halted and Balance.from_hash(balance).wallet_balance == D("5")
    assert [Position.from_hash(h) for h in hashes] == [pos]


async def test_rest_history_pages_backwards() -> None:
    async with sim_and_client(history_minutes=2000) as (sim, client):
        got = await fetch_closed_klines(client, "BTCUSDT", "1m", 1700)
        assert len(got) == 1700 and all(k.closed for k in got)
        times = [k.open_time for k in got]
        assert times == list(range(times[0], times[0] + 1700 * MIN, MIN))
        assert times[-1] == START - MIN  # the open candle at START is not proven closed
        rows = await client.klines("BTCUSDT", "1m", start_time=times[0], limit=3)
        assert [float(r[4]) for r in rows] == [k.close for k in got[:3]]
        assert sim.rest_counters["requests"] >= 2


# ---- EntryExecutor on the simulator -------------------------------------------------------------
def decision(sim: SimServer, order_type: str = "MARKET", offset: D = D(0)) -> Decision:
    last = sim.exchange.last_price("BTCUSDT")
    tick = sim.specs["BTCUSDT"].tick_size
    cid = lambda p: client_order_id("BTCUSDT", "LONG", START, p, "test")  # noqa: E731
    price = last + offset if order_type == "LIMIT" else None
    entry = OrderIntent("BTCUSDT", "BUY", order_type, D("0.010"), cid("entry"), "entry",
                        price=price, leverage=7,
                        time_in_force="GTC" if order_type == "LIMIT" else None)  # fmt: skip
    sl, tp = ((last * f / tick).to_integral_value() * tick for f in (D("0.98"), D("1.03")))
    stop = OrderIntent("BTCUSDT", "SELL", "STOP_MARKET", None, cid("stop"), "stop",
                       stop_price=sl, close_position=True)  # fmt: skip
    take = OrderIntent("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", None, cid("take_profit"),
                       "take_profit", stop_price=tp, close_position=True)  # fmt: skip
    rec = DecisionRecord(entry.client_order_id, "BTCUSDT", "LONG", START, {"x": 1.0}, "baseline",
                         0.7, 0.5, 7, sl, tp, last)  # fmt: skip
    return Decision("BTCUSDT", "LONG", "breakout", START, 1, True, "taken", 0.7, 0.7, 0.01, 0.5,
                    7, "baseline", (), "", (entry, stop, take), rec)  # fmt: skip


def fast() -> ExecutionOptions:
    return ExecutionOptions(protect_deadline_s=1.0, close_deadline_s=5.0, limit_wait_s=0.5,
                            limit_poll_s=0.05, entry_deadline_s=3.0, resolve_deadline_s=3.0)  # fmt: skip


async def test_entry_timeout_is_looked_up_not_resent(redis_client, prefix) -> None:
    """The entry request hangs and the connection drops (outcome unknown): one lookup, one
    send more, exactly one order; then a replay of the decision sends nothing."""
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (sim, client):
        ex = EntryExecutor(client, redis_client, keys, options=fast(), strategy_version="test")
        d = decision(sim)
        sim.admin.fail_rest("timeout", count=1, path="/fapi/v1/order", hang_s=0.2)
        report = await ex.execute(d)
        assert report.outcome == Outcome.PROTECTED and report.filled_qty == D("0.010")
        cid = d.intents[0].client_order_id
        assert len([o for o in sim.exchange.audit.orders if o.client_id == cid]) == 1
        assert ex.tx.counters["lookups"] >= 1
        assert DecisionRecord.from_json(await redis_client.get(keys.decision(cid))) == d.record
        again = await ex.execute(d)
        assert again.outcome == Outcome.DUPLICATE
        assert len([o for o in sim.exchange.audit.orders if o.client_id == cid]) == 1
        acct = sim.exchange.accounts[sim.demo_key]
        assert acct.position(sim.specs["BTCUSDT"]).leverage == 7


async def test_limit_entry_not_filled_is_cancelled(redis_client, prefix) -> None:
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (sim, client):
        ex = EntryExecutor(client, redis_client, keys, options=fast(), strategy_version="test")
        resting = decision(sim, "LIMIT", offset=D("-500"))
        assert (await ex.execute(resting)).outcome == Outcome.NOT_FILLED
        assert not sim.exchange.open_orders(sim.demo_key, "BTCUSDT")
        log = [decode_event(f)[1] for _i, f in await redis_client.xrange(keys.stream_orders)]
        assert any(o["api"] == "cancel" and o["outcome"] == "accepted" for o in log)


async def test_halt_set_after_the_decision_sends_nothing(redis_client, prefix) -> None:
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (sim, client):
        ex = EntryExecutor(client, redis_client, keys, options=fast(), strategy_version="test")
        await redis_client.set(keys.halt, "operator")
        assert (await ex.execute(decision(sim))).outcome == Outcome.HALTED
        assert not sim.exchange.audit.orders
        assert not await redis_client.exists(keys.orders_sent)


def test_main_help_usage_and_config_errors(capsys, monkeypatch) -> None:
    from services.trader.__main__ import main

    assert main(["--help"]) == 0 and "--check" in capsys.readouterr().out
    assert main(["--bogus"]) == 2
    monkeypatch.setenv("SLT_TRADING__DECISION_GRACE", "-1")
    assert main(["--check"]) == 2 and "decision_grace" in capsys.readouterr().err


# ---- entry holds (one position per symbol while the cache lags) ---------------------------------
def _pos(symbol: str, updated_at: int, size: str = "0.1") -> Position:
    return Position(symbol, D(size), D("100"), D("100"), D(0), "cross", D(0), 5, updated_at)


@given(fill=st.integers(1, 10**13), seen=st.one_of(st.none(), st.integers(0, 10**13)),
       slot=st.one_of(st.none(), st.integers(0, 10**13)))  # fmt: skip
def test_hold_released_by_the_cache_only_when_newer_than_the_fill(fill, seen, slot) -> None:
    from services.trader.holds import EntryHolds, Hold

    h = EntryHolds()
    h.hold("BTCUSDT", Hold("cid", fill, 0, 10.0, True, 5.0))
    positions = {} if seen is None else {"BTCUSDT": _pos("BTCUSDT", seen)}
    released = h.settle_cache(positions, {} if slot is None else {"BTCUSDT": slot})
    expect = (seen is not None and seen >= fill) or (seen is None and slot is not None
                                                     and slot > fill)  # fmt: skip
    assert (released == ["BTCUSDT"]) == expect and ("BTCUSDT" in h.held()) != expect


def test_hold_rules_rest_unknown_fill_recent_window_and_json() -> None:
    from services.trader.holds import EntryHolds, Hold

    h = EntryHolds(recent_ms=1000)
    h.hold("AUSDT", Hold("a", None, 100, 5.0, True, 10.0))  # outcome unknown: no fill time
    assert h.settle_cache({}, {"AUSDT": 10**13}) == []  # the cache can never release it
    assert h.settle_rest((), None, started=9.0) == []  # REST read begun before the hold
    assert h.settle_rest(("AUSDT",), None, started=11.0) == []  # REST shows it open
    assert h.settle_rest((), ("BUSDT",), started=11.0) == []  # a read about another symbol
    assert h.held() == {"AUSDT": 5.0} and h.recently_entered("AUSDT", 10**9)  # held: always
    assert h.settle_rest((), ("AUSDT",), started=11.0) == ["AUSDT"] and not h.held()
    assert h.recently_entered("AUSDT", 1099) and not h.recently_entered("AUSDT", 1100)
    assert h.prune(1099) == [] and h.prune(1100) == ["AUSDT"] and not h.entries
    h.hold("CUSDT", Hold("c", None, 100, 5.0))
    h.learn_fill_time("CUSDT", 777)  # REST saw the position: the cache may release it now
    assert h.settle_cache({"CUSDT": _pos("CUSDT", 777)}, {}) == ["CUSDT"]
    back = Hold.from_json(h.entries["CUSDT"].to_json())
    assert (back.client_order_id, back.fill_ms, back.held) == ("c", 777, False)
    for bad in (b"{", b"{}", b'{"client_order_id":"x","fill_ms":"z","at_ms":1,'
                              b'"notional":1,"held":true}'):  # fmt: skip
        with pytest.raises(MessageError):
            Hold.from_json(bad)


async def test_account_view_reads_slot_times_and_rest_start(redis_client, prefix) -> None:
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (_sim, client):
        ticks = iter(range(100, 200))
        view = AccountView(redis_client, keys, client, ["BTCUSDT", "ETHUSDT"],
                           clock=lambda: float(next(ticks)))  # fmt: skip
        snap = await view.snapshot(["BTCUSDT"])
        assert snap.source == "rest" and snap.rest_started == 100.0 and snap.slot_times == {}
        view.invalidate()
        assert (await view.snapshot()).source == "rest"
        await redis_client.hset(keys.health("account_feed"), "status", "ok")
        await redis_client.hset(keys.balance("USDT"),
                                mapping=Balance("USDT", D("500"), D("500"), D(0), 1).to_hash())  # fmt: skip
        await redis_client.hset(keys.account_state, mapping={keys.position_slot("BTCUSDT"): "42",
                                                             keys.position_slot("ETHUSDT"): "x"})  # fmt: skip
        snap = await view.snapshot(["BTCUSDT", "ETHUSDT", "XRPUSDT"])
        assert snap.source == "cache" and snap.rest_started is None
        assert snap.slot_times == {"BTCUSDT": 42}  # damaged / missing slots confirm nothing


async def test_confirm_flat_sends_nothing_into_an_open_position(redis_client, prefix) -> None:
    """A symbol entered recently: REST positionRisk shows the position, so the next entry
    is not sent (nor claimed); with REST down nothing is sent either."""
    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (sim, client):
        ex = EntryExecutor(client, redis_client, keys, options=fast(), strategy_version="test")
        first = await ex.execute(decision(sim), confirm_flat=True)  # flat: goes out
        assert first.outcome == Outcome.PROTECTED and first.fill_time is not None
        from dataclasses import replace

        d2 = decision(sim)  # the next minute's entry on the same symbol
        cid2 = client_order_id("BTCUSDT", "LONG", START + MIN, "entry", "test")
        d2 = replace(d2, intents=(replace(d2.intents[0], client_order_id=cid2), *d2.intents[1:]))
        again = await ex.execute(d2, confirm_flat=True)
        assert again.outcome == Outcome.IN_POSITION and "0.010" in again.detail
        assert not await redis_client.sismember(keys.orders_sent, cid2)
        sim.admin.fail_rest("5xx", count=10_000, path="/fapi/v3/positionRisk")
        assert (await ex.execute(d2, confirm_flat=True)).outcome == Outcome.FAILED
        assert len([o for o in sim.exchange.audit.orders if o.client_id.startswith("slt-e-")]) == 1
        assert ex.counters["flat_checks"] == 3


async def test_hold_keeper_persists_and_asks_rest_when_the_cache_lags(redis_client, prefix) -> None:
    from services.trader.account_view import AccountSnapshot
    from services.trader.execution import ExecutionReport
    from services.trader.hold_keeper import HoldKeeper
    from services.trader.holds import Hold

    keys = Keys(prefix)
    async with sim_and_client(history_minutes=10) as (sim, client):
        wall = [1_000_000]
        hk = HoldKeeper(redis_client, keys, client, rest_after_ms=5000, wall_ms=lambda: wall[0])
        report = ExecutionReport("slt-e-x", "BTCUSDT", Outcome.PROTECTED, D("0.01"), "", 500)
        await hk.after_entry("BTCUSDT", report, 0.0)  # a 0 notional still counts as held
        await hk.after_entry("ETHUSDT", ExecutionReport("slt-e-y", "ETHUSDT", Outcome.REJECTED), 1)
        assert list(hk.held()) == ["BTCUSDT"] and hk.held()["BTCUSDT"] > 0
        restored = HoldKeeper(redis_client, keys, client)
        await restored.load()
        assert restored.watch() == ["BTCUSDT"] and restored.recently_entered("BTCUSDT")
        stale = AccountSnapshot(D(1), D(1), {}, False, "cache", {"BTCUSDT": 400})
        await hk.settle(stale)  # the cache is older than the fill, REST not due yet
        assert hk.watch() == ["BTCUSDT"] and hk.counters["rest_checks"] == 0
        wall[0] += 5000
        await hk.settle(stale)  # lagging: one positionRisk for BTCUSDT, flat -> released
        assert hk.watch() == [] and hk.counters["rest_checks"] == 1
        assert sim.rest_counters["requests"] >= 1
        back = Hold.from_json(await redis_client.hget(keys.trader_entries, "BTCUSDT"))
        assert not back.held and hk.recently_entered("BTCUSDT")


def test_gc_hold_pauses_and_restores_only_its_own_pause() -> None:
    hold = GcHold()
    assert gc.isenabled()
    hold.hold()
    hold.hold()
    assert not gc.isenabled() and hold.held
    hold.release()
    assert gc.isenabled() and not hold.held
    gc.disable()  # someone else's pause is left alone
    try:
        hold.hold()
        hold.release()
        assert not gc.isenabled() and not hold.held
    finally:
        gc.enable()


def test_decision_timing_percentiles_per_stage() -> None:
    timing = DecisionTiming(keep=50)
    assert timing.stats() == {"last_decision_latency_ms": None}
    for i in range(80):  # more than kept: the oldest fall out
        timing.add(0.0, 0.001 * i, 0.002 * i, 0.004 * i, 0.005 * i)
    got = timing.stats()
    for stage, xs in timing.samples.items():
        assert len(xs) == 50
        p50, p99 = np.percentile(list(xs), (50, 99))
        assert (got[f"latency_{stage}_p50_ms"], got[f"latency_{stage}_p99_ms"]) == (
            round(float(p50), 3), round(float(p99), 3))  # fmt: skip
    assert got["latency_total_p50_ms"] == got["latency_feed_p50_ms"] * 5
    assert got["last_decision_latency_ms"] == 395.0
