"""Position controller exit rules and protection check: each fires on its scenario and not
on a near miss (thresholds +/- epsilon), with reduce-only closes and deterministic ids."""

from __future__ import annotations

import math
from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from services.position_controller.protection import ProtectiveOrder, check_protection
from services.position_controller.rules import (
    ExitDecision,
    ExitRule,
    PositionView,
    ProtectionDecision,
    RuleConfig,
    TrendView,
    Urgency,
    close_order_id,
    counter_trend_rule,
    emergency_rule,
    estimate_liquidation_price,
    evaluate_exits,
    invalidation_rule,
    liquidation_rule,
    no_progress_rule,
    reason_from_order_id,
    time_stop_rule,
    trend_view,
)
from shared.config import load_settings
from shared.filters import SymbolFilters
from shared.market_context import MarketContext
from shared.models import CLIENT_ORDER_ID_RE, AlgoUpdate, DecisionRecord, Position

T0 = 1_730_000_000_000
MIN = 60_000
CFG = RuleConfig()
EPS = D("0.0001")


def pos(size: str = "1", entry: str = "100", lev: int | None = 10, *, margin: str = "cross",
        wallet: str = "0", upnl: str = "0", symbol: str = "BTCUSDT") -> Position:  # fmt: skip
    return Position(symbol, D(size), D(entry), D(entry), D(upnl), margin, D(wallet), lev, T0)


def record(side: str = "LONG", stop: str = "98", tp: str = "104", inval: str | None = None,
           trend: float | None = None) -> DecisionRecord:  # fmt: skip
    feats = {} if trend is None else {"trend_regime": trend}
    return DecisionRecord(
        "slt-e-abc", "BTCUSDT", side, T0, feats, "m1", 0.8, 0.55, 10, D(stop), D(tp), D("100"),
        None if inval is None else D(inval),
    )  # fmt: skip


def view(p: Position, price: D | str | None = None, **kw: object) -> PositionView:
    px = D(price) if isinstance(price, str) else price
    return PositionView(p, T0, px, **kw)  # type: ignore[arg-type]


def filters(tick: str = "0.1", market_max: str = "1000") -> SymbolFilters:
    return SymbolFilters("BTCUSDT", D(tick), D("0.001"), D("0.001"), D("0.001"), D("1000"),
                         D(market_max), D("5"), 1, 3)  # fmt: skip


def assert_close(d: ExitDecision | None, side: str, qty: str) -> ExitDecision:
    assert d is not None
    i = d.intent
    assert (i.order_type, i.side, i.quantity, i.reduce_only, i.purpose) == (
        "MARKET", side, D(qty), True, "exit")  # fmt: skip
    assert i.to_params()["reduceOnly"] == "true"
    assert d.reason
    return d


# ---- emergency ------------------------------------------------------------------------


def test_emergency_fires_at_minus_99_percent_of_margin_and_not_a_hair_above() -> None:
    p = pos()  # margin = 1 * 100 / 10 = 10; -99% = -9.9 -> price 90.1
    d = assert_close(emergency_rule(view(p, "90.1"), CFG), "SELL", "1")
    assert d.rule is ExitRule.EMERGENCY and d.urgency is Urgency.IMMEDIATE
    assert d.client_order_id == close_order_id("BTCUSDT", T0, "emergency")
    assert emergency_rule(view(p, D("90.1") - EPS), CFG) is not None
    assert emergency_rule(view(p, D("90.1") + EPS), CFG) is None


def test_emergency_short_and_isolated_wallet_as_margin() -> None:
    short = pos("-2", "100", 20)  # margin 10; -9.9 over 2 -> price 104.95
    assert_close(emergency_rule(view(short, "104.95"), CFG), "BUY", "2")
    assert emergency_rule(view(short, D("104.95") - EPS), CFG) is None
    iso = pos("1", "100", 10, margin="isolated", wallet="20")  # margin 20 -> price 80.2
    assert emergency_rule(view(iso, "80.2"), CFG) is not None
    assert emergency_rule(view(iso, D("80.2") + EPS), CFG) is None


def test_emergency_uses_unrealized_pnl_without_price_and_respects_flag() -> None:
    assert emergency_rule(view(pos(upnl="-9.9")), CFG) is not None
    assert emergency_rule(view(pos(upnl="-9.8999")), CFG) is None
    off = RuleConfig(emergency_enabled=False)
    assert emergency_rule(view(pos(), "50"), off) is None
    assert emergency_rule(view(pos(lev=None), "50"), CFG) is None  # margin unknown


def test_same_position_and_reason_give_the_same_id() -> None:
    a = emergency_rule(view(pos(), "80"), CFG)
    b = emergency_rule(view(pos(), "70"), CFG)
    assert a is not None and b is not None and a.client_order_id == b.client_order_id
    other = PositionView(pos(), T0 + 1, D("80"))
    c = emergency_rule(other, CFG)
    assert c is not None and c.client_order_id != a.client_order_id


# ---- liquidation guard ------------------------------------------------------------------


def test_liquidation_guard_inclusive_buffer_both_sides() -> None:
    long = pos()
    assert liquidation_rule(view(long, "100", liquidation_price=D(99)), CFG) is not None
    assert liquidation_rule(view(long, D(100) + EPS, liquidation_price=D(99)), CFG) is None
    d = liquidation_rule(view(long, "99.5", liquidation_price=D(99)), CFG)
    assert d is not None and d.rule.exit_reason == "emergency" and d.urgency is Urgency.IMMEDIATE
    short = pos("-1")
    assert liquidation_rule(view(short, "100", liquidation_price=D(101)), CFG) is not None
    assert liquidation_rule(view(short, D(100) - EPS, liquidation_price=D(101)), CFG) is None
    off = RuleConfig(liquidation_guard_enabled=False)
    assert liquidation_rule(view(long, "99.5", liquidation_price=D(99)), off) is None


def test_isolated_liquidation_estimate_matches_the_margin_equation() -> None:
    p = pos("1", "100", 10, margin="isolated", wallet="10")
    liq = estimate_liquidation_price(p, D("0.004"))
    assert liq is not None
    assert abs(D(10) + (liq - 100) - liq * D("0.004")) < D("1e-20")
    assert liquidation_rule(view(p, liq * D("1.009")), CFG) is not None
    assert liquidation_rule(view(p, liq * D("1.0102")), CFG) is None
    assert estimate_liquidation_price(pos(), D("0.004")) is None  # cross: unknown


# ---- entry invalidation and no progress --------------------------------------------------


def test_invalidation_level_touch_fires_near_miss_does_not() -> None:
    rec = record(inval="95")
    assert_close(invalidation_rule(view(pos(), "95", decision=rec), CFG), "SELL", "1")
    assert invalidation_rule(view(pos(), D(95) + EPS, decision=rec), CFG) is None
    srec = record("SHORT", stop="102", tp="96", inval="103")
    assert_close(invalidation_rule(view(pos("-1"), "103", decision=srec), CFG), "BUY", "1")
    assert invalidation_rule(view(pos("-1"), D(103) - EPS, decision=srec), CFG) is None
    # a record for the other side (the position flipped) is ignored
    assert invalidation_rule(view(pos("-1"), "90", decision=rec), CFG) is None


def test_no_progress_by_excursion_after_the_time() -> None:
    rec = record(stop="98")  # stop distance 2, needs 0.25 * 2 = 0.5 of excursion
    held = T0 + 60 * MIN
    stuck = view(pos(), "100", best_price=D("100.5") - EPS, decision=rec)
    d = no_progress_rule(stuck, CFG, held)
    assert d is not None and d.rule is ExitRule.NO_PROGRESS and d.rule.exit_reason == "invalidation"
    assert no_progress_rule(stuck, CFG, held - 1) is None
    moved = view(pos(), "99", best_price=D("100.5"), decision=rec)
    assert no_progress_rule(moved, CFG, held) is None


def test_no_progress_without_stop_uses_pnl() -> None:
    held = T0 + 60 * MIN
    assert no_progress_rule(view(pos(), "100"), CFG, held) is not None
    assert no_progress_rule(view(pos(), D(100) + EPS), CFG, held) is None
    assert no_progress_rule(view(pos("-1"), D(100) + EPS), CFG, held) is not None


# ---- counter trend and time stop ---------------------------------------------------------


def test_counter_trend_thresholds() -> None:
    long = view(pos(), "100")
    d = counter_trend_rule(long, TrendView(-0.5, 0.7), CFG)
    assert_close(d, "SELL", "1")
    assert d is not None and d.rule is ExitRule.COUNTER_TREND
    assert counter_trend_rule(long, TrendView(-0.5, 0.7 - 1e-9), CFG) is None
    assert counter_trend_rule(long, TrendView(-0.2 + 1e-9, 0.9), CFG) is None
    assert counter_trend_rule(long, TrendView(0.9, 1.0), CFG) is None  # with the position
    assert counter_trend_rule(view(pos("-1")), TrendView(0.5, 0.8), CFG) is not None
    assert counter_trend_rule(long, None, CFG) is None
    # the trend was already against the long at entry: it did not turn
    against_at_entry = view(pos(), "100", decision=record(trend=-0.6))
    assert counter_trend_rule(against_at_entry, TrendView(-0.6, 0.9), CFG) is None
    with_at_entry = view(pos(), "100", decision=record(trend=0.4))
    assert counter_trend_rule(with_at_entry, TrendView(-0.6, 0.9), CFG) is not None


def test_time_stop_at_max_holding_and_not_before() -> None:
    v = view(pos(), "101")
    d = time_stop_rule(v, CFG, T0 + 240 * MIN)
    assert d is not None and d.client_order_id == close_order_id("BTCUSDT", T0, "time_stop")
    assert time_stop_rule(v, CFG, T0 + 240 * MIN - 1) is None
    assert time_stop_rule(v, RuleConfig(time_stop_enabled=False), T0 + 999 * MIN) is None


def test_priority_and_market_lot_split() -> None:
    v = view(pos("25"), "50")  # emergency and time stop both true: emergency wins
    d = evaluate_exits(v, None, CFG, T0 + 999 * MIN, filters(market_max="10"))
    assert d is not None and d.rule is ExitRule.EMERGENCY
    assert [i.quantity for i in d.intents] == [D(10), D(10), D(5)]
    ids = [i.client_order_id for i in d.intents]
    assert ids[1:] == [ids[0] + "-2", ids[0] + "-3"] and all(len(i) <= 36 for i in ids)
    assert evaluate_exits(view(pos(), "101"), TrendView(0.5, 0.9), CFG, T0 + MIN) is None


def test_rule_config_from_settings() -> None:
    s = load_settings(risk={"emergency_close_pnl": -0.5, "counter_trend_enabled": False},
                      trading={"max_holding_minutes": 30})  # fmt: skip
    cfg = RuleConfig.from_settings(s)
    assert cfg.emergency_close_pnl == D("-0.5") and not cfg.counter_trend_enabled
    assert cfg.max_holding_ms == 30 * MIN
    assert emergency_rule(view(pos(), "95"), cfg) is not None  # -50% of margin


# ---- trend view ------------------------------------------------------------------------


def test_trend_view_from_market_context() -> None:
    up, down = MarketContext("X"), MarketContext("X")
    assert trend_view(up) == TrendView(0.0, 0.0)  # not warmed up: no opinion
    for i in range(260):
        c = 100 * math.exp(0.001 * i + 0.0005 * math.sin(i))
        up.update(i * MIN, c, c * 1.001, c * 0.999, c, 10.0)
        c2 = 100 * math.exp(-0.001 * i + 0.0005 * math.sin(i))
        down.update(i * MIN, c2, c2 * 1.001, c2 * 0.999, c2, 10.0)
    tu, td = trend_view(up), trend_view(down)
    assert tu.trend > 0.5 and tu.confidence >= 0.8
    assert td.trend < -0.5 and td.confidence >= 0.8
    assert counter_trend_rule(view(pos(), "100"), td, CFG) is not None


# ---- ids ------------------------------------------------------------------------------


@given(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=30),
    st.integers(min_value=0, max_value=4_102_444_800_000),
    st.sampled_from(["emergency", "invalidation", "counter_trend", "time_stop", "stop_loss",
                     "take_profit", "protect_stop", "protect_take_profit"]),
)  # fmt: skip
def test_close_ids_are_valid_deterministic_and_carry_their_reason(
    symbol: str, t: int, reason: str
) -> None:
    cid = close_order_id(symbol, t, reason)
    assert CLIENT_ORDER_ID_RE.fullmatch(cid) and len(cid + "-9") <= 36
    assert cid == close_order_id(symbol, t, reason)
    assert reason_from_order_id(cid) == reason
    assert reason_from_order_id("slt-e-0123") is None


# ---- protection ------------------------------------------------------------------------


def test_protection_waits_for_the_grace_then_replaces_both_legs() -> None:
    v = view(pos(), "100.5", decision=record(stop="98", tp="104"))
    assert check_protection(v, [], CFG, T0 + 10_000 - 1) is None
    res = check_protection(v, [], CFG, T0 + 10_000)
    assert isinstance(res, ProtectionDecision) and res.missing == ("stop", "take_profit")
    stop, tp = res.intents
    assert (stop.order_type, stop.side, stop.stop_price, stop.close_position) == (
        "STOP_MARKET", "SELL", D(98), True)  # fmt: skip
    assert (tp.order_type, tp.side, tp.stop_price, tp.close_position) == (
        "TAKE_PROFIT_MARKET", "SELL", D(104), True)  # fmt: skip
    params = stop.to_params()
    assert params["closePosition"] == "true" and "quantity" not in params
    assert stop.client_order_id == close_order_id("BTCUSDT", T0, "protect_stop")


def test_protection_short_sides_from_atr_rounded_toward_entry() -> None:
    v = view(pos("-1"), "100")
    res = check_protection(v, [], CFG, T0 + MIN, atr=1.234, filters=filters("0.1"))
    assert isinstance(res, ProtectionDecision)
    stop, tp = res.intents
    # short: stop above (100 + 2 * 1.234 = 102.468 -> 102.4), target below (96.298 -> 96.3)
    assert (stop.side, stop.stop_price) == ("BUY", D("102.4"))
    assert (tp.side, tp.stop_price) == ("BUY", D("96.3"))
    long = check_protection(view(pos(), "100"), [], CFG, T0 + MIN, atr=1.234, filters=filters())
    assert isinstance(long, ProtectionDecision)
    assert [i.stop_price for i in long.intents] == [D("97.6"), D("103.7")]
    assert [i.side for i in long.intents] == ["SELL", "SELL"]


def test_protection_counts_only_closing_orders_on_the_right_side() -> None:
    v = view(pos(), "100", decision=record())
    rest_stop = {"symbol": "BTCUSDT", "orderType": "STOP_MARKET", "side": "SELL",
                 "triggerPrice": "98", "closePosition": True, "algoStatus": "NEW"}  # fmt: skip
    res = check_protection(v, [rest_stop], CFG, T0 + MIN)
    assert isinstance(res, ProtectionDecision) and res.missing == ("take_profit",)
    tp_algo = AlgoUpdate("BTCUSDT", "x", 1, "CONDITIONAL", "TAKE_PROFIT_MARKET", "SELL", "BOTH",
                         D(0), "NEW", D(104), D(0), "", D(0), D(0), True, False, "MARK_PRICE",
                         0, "", T0, T0)  # fmt: skip
    assert check_protection(v, [rest_stop, tp_algo], CFG, T0 + MIN) is None
    wrong = ProtectiveOrder("BTCUSDT", "STOP_MARKET", "BUY", D(98), True, False)
    cancelled = ProtectiveOrder(
        "BTCUSDT", "STOP_MARKET", "SELL", D(98), True, False, "", "CANCELED"
    )
    res = check_protection(v, [wrong, cancelled, tp_algo], CFG, T0 + MIN)
    assert isinstance(res, ProtectionDecision) and res.missing == ("stop",)
    off = RuleConfig(protection_enabled=False)
    assert check_protection(v, [], off, T0 + MIN) is None


def test_protection_with_stop_already_crossed_closes_at_market() -> None:
    v = view(pos(), "97.9", decision=record(stop="98", tp="104"))
    res = check_protection(v, [], CFG, T0 + MIN)
    assert isinstance(res, ExitDecision) and res.rule is ExitRule.STOP_LOSS
    assert_close(res, "SELL", "1")
    assert reason_from_order_id(res.client_order_id) == "stop_loss"
    v2 = view(pos("-1"), "95", decision=record("SHORT", stop="102", tp="96"))
    res2 = check_protection(v2, [], CFG, T0 + MIN)
    assert isinstance(res2, ExitDecision) and res2.rule is ExitRule.TAKE_PROFIT
