"""TraderCore end to end on hand-made klines; deterministic client order ids."""

from __future__ import annotations

import math
from decimal import Decimal as D
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.trader import ranking
from services.trader.core import BASELINE_VERSION, NO_FILTERS, TraderCore
from services.trader.learner import Learner
from services.trader.order_ids import OrderIdError, client_order_id
from services.trader.signals import MODEL_FEATURE_NAMES, model_row
from shared.codec import pack, unpack
from shared.config import load_settings
from shared.filters import SymbolFilters
from shared.models import CLIENT_ORDER_ID_RE, ClosedTrade, Kline, Position

T0 = 1_675_209_600_000
MIN = 60_000
BREAK = T0 + 300 * MIN  # the minute of the breakout bar
SYMBOLS = ["AAAUSDT", "BBBUSDT"]


# ---- client order ids ------------------------------------------------------------------
@given(
    symbol=st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True),
    side=st.sampled_from(["LONG", "SHORT", "BUY", "SELL"]),
    t=st.integers(0, 2**45),
    version=st.text(max_size=40),
)
def test_client_order_id_deterministic_and_valid(symbol, side, t, version) -> None:
    ids = {
        p: client_order_id(symbol, side, t, p, version)
        for p in ("entry", "stop", "take_profit", "exit")
    }
    for purpose, cid in ids.items():
        assert len(cid) <= 36 and CLIENT_ORDER_ID_RE.fullmatch(cid)
        assert cid == client_order_id(symbol, side, t, purpose, version)
    assert len(set(ids.values())) == 4
    assert client_order_id(symbol, side, t + 60_000, "entry", version) != ids["entry"]
    assert client_order_id(symbol, side, t, "entry", version + "x") != ids["entry"]


@pytest.mark.parametrize(
    "args", [("BTCUSDT", "LONG", 1, "bogus", "v"), ("BTC/USDT", "LONG", 1, "entry", "v"),
             ("BTCUSDT", "UP", 1, "entry", "v"), ("BTCUSDT", "LONG", -1, "entry", "v")],
)  # fmt: skip
def test_client_order_id_rejects_bad_input(args) -> None:
    with pytest.raises(OrderIdError):
        client_order_id(*args)


# ---- the core --------------------------------------------------------------------------
def kline(symbol: str, i: int, o: float, c: float, v: float) -> Kline:
    h, lo = max(o, c) + 0.02, min(o, c) - 0.02
    t = T0 + i * MIN
    return Kline(symbol, "1m", t, t + MIN - 1, o, h, lo, c, v, v * c, 10, v / 2, v * c / 2, True,
                 t + MIN, t + MIN + 5)  # fmt: skip


def feed_breakouts(core: TraderCore, symbols=SYMBOLS, last=301) -> None:
    """Quiet range for 300 bars, then bar 300 breaks up (first symbol) / down (second)."""
    for n, sym in enumerate(symbols):
        prev = 100.0
        for i in range(300):
            c = 100 + 0.1 * math.sin(i * 0.7)
            core.on_closed_kline(kline(sym, i, prev, c, 100 + 10 * (i % 3)), T0 + i * MIN)
            prev = c
        close = 101.5 if n % 2 == 0 else 98.5
        core.on_closed_kline(kline(sym, 300, prev, close, 1000.0), BREAK + MIN)
        if last > 301:
            for i in range(301, last):
                core.on_closed_kline(kline(sym, i, close, close, 100.0), T0 + i * MIN)


def make_filters(symbols=SYMBOLS) -> dict[str, SymbolFilters]:
    return {s: SymbolFilters(s, D("0.01"), D("0.001"), D("0.001"), D("0.001"), D("10000"),
                             D("10000"), D("5"), 2, 3, 20) for s in symbols}  # fmt: skip


def make_core(learner=None, symbols=SYMBOLS, filters=None, **trading) -> TraderCore:
    st_ = load_settings(
        exchange={"symbols": symbols}, trading={"max_total_exposure": 10.0, **trading}
    )
    return TraderCore(st_, make_filters(symbols) if filters is None else filters, learner)


def decide(core: TraderCore, positions=None, halted=False):
    return core.decide(BREAK, D(10000), D(10000), positions or {}, halted)


def test_breakouts_become_orders_with_protection() -> None:
    core = make_core()
    feed_breakouts(core)
    out = decide(core)
    assert sorted((d.symbol, d.side, d.reason) for d in out) == [
        ("AAAUSDT", "LONG", "taken"), ("BBBUSDT", "SHORT", "taken")
    ]  # fmt: skip
    assert [d.rank for d in out] == [1, 2] and out[0].expected_value >= out[1].expected_value
    for d in out:
        entry, stop, take = d.intents
        buy, sell = ("BUY", "SELL") if d.side == "LONG" else ("SELL", "BUY")
        assert (entry.purpose, entry.side, entry.order_type) == ("entry", buy, "MARKET")
        assert entry.quantity > 0 and entry.leverage == d.leverage and 1 <= d.leverage <= 20
        assert (stop.order_type, stop.side, stop.close_position) == ("STOP_MARKET", sell, True)
        assert (take.order_type, take.side, take.close_position) == (
            "TAKE_PROFIT_MARKET",
            sell,
            True,
        )
        for intent in d.intents:
            assert intent.client_order_id == client_order_id(
                d.symbol, d.side, BREAK, intent.purpose, core.strategy_version
            )
        rec = d.record
        assert rec is not None and rec.client_order_id == entry.client_order_id
        assert list(rec.features) == list(MODEL_FEATURE_NAMES)
        assert (
            rec.model_version == BASELINE_VERSION == d.model_version and rec.confidence == d.score
        )
        assert rec.stop_price == stop.stop_price and rec.take_profit_price == take.stop_price
        s = 1 if d.side == "LONG" else -1
        assert (rec.entry_price_ref - rec.stop_price) * s > 0 and (
            rec.take_profit_price - rec.entry_price_ref
        ) * s > 0
        assert (
            rec.invalidation_price is not None
            and (rec.invalidation_price - rec.stop_price) * s >= 0
        )
        assert unpack(pack(d.to_dict()))["record"]["stop_price"] == rec.stop_price
    assert core.decide(BREAK + MIN, D(10000), D(10000), {}, False) == []  # no candidates then


def test_same_inputs_same_decisions() -> None:
    a, b = make_core(), make_core()
    feed_breakouts(a)
    feed_breakouts(b)
    first = [d.to_dict() for d in decide(a)]
    assert first == [d.to_dict() for d in decide(b)] == [d.to_dict() for d in decide(a)]


def test_halted_held_and_unfiltered_symbols_place_nothing() -> None:
    core = make_core()
    feed_breakouts(core)
    assert {(d.reason, d.intents) for d in decide(core, halted=True)} == {(ranking.HALTED, ())}
    pos = Position("AAAUSDT", D("1"), D("100"), D("100"), D("0"), "cross", D("0"), 5, BREAK)
    flat = Position("BBBUSDT", D("0"), D("0"), D("0"), D("0"), "cross", D("0"), 5, BREAK)
    reasons = {d.symbol: d.reason for d in decide(core, {"AAAUSDT": pos, "BBBUSDT": flat})}
    assert reasons == {"AAAUSDT": ranking.ALREADY_IN_POSITION, "BBBUSDT": "taken"}
    core2 = make_core(filters=make_filters(["AAAUSDT"]))
    feed_breakouts(core2)
    assert {d.symbol: d.reason for d in decide(core2)} == {
        "AAAUSDT": "taken",
        "BBBUSDT": NO_FILTERS,
    }
    slots = make_core(max_positions=1)
    feed_breakouts(slots)
    assert sorted(d.reason for d in decide(slots)) == [ranking.NO_SLOT, "taken"]


def _cfg():
    return SimpleNamespace(min_train_samples=50, retrain_after_trades=10, retrain_interval_hours=1,
                           n_estimators=20, max_depth=3, learning_rate=0.2)  # fmt: skip


def _trained(feature_names) -> Learner:
    rng = np.random.default_rng(0)
    n, f = 300, len(feature_names)
    X = rng.normal(size=(n, f))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    learner = Learner(_cfg(), feature_names=feature_names)
    assert learner.fit_cold_start(X, y, {"created_at_ms": T0}).accepted
    return learner


def test_model_confidence_is_used_and_recorded() -> None:
    learner = _trained(MODEL_FEATURE_NAMES)
    core = make_core(learner)
    feed_breakouts(core)
    out = decide(core)
    assert {d.model_version for d in out} == {learner.current_version}
    cands = core.pending_candidates(BREAK)
    rows = np.array([model_row(core.bank[c.symbol].features_list(), c) for c in cands])
    expected = dict(zip([c.symbol for c in cands], learner.predict(rows).tolist(), strict=True))
    assert {d.symbol: d.confidence for d in out} == pytest.approx(expected)
    for d in out:
        assert d.taken == (d.reason == "taken") and (d.record is not None) == d.taken
        if d.record is not None:
            assert d.record.confidence == d.confidence
            assert d.record.model_version == learner.current_version


def test_model_failure_never_becomes_an_order() -> None:
    broken = _trained([f"old_{i}" for i in range(7)])  # built for other features
    core = make_core(broken)
    feed_breakouts(core)
    out = decide(core)
    assert out and all(d.reason == ranking.MODEL_ERROR and not d.intents for d in out)
    assert core.counters.model_errors == 1 and "feature mismatch" in core.counters.last_error


def test_closed_trades_feed_win_rate_and_learner_once() -> None:
    learner = Learner(_cfg())
    core = make_core(learner)
    feed_breakouts(core)
    rec = decide(core)[0].record
    trade = ClosedTrade("T1", rec.symbol, rec.side, D("1"), D("100"), D("101"), BREAK, BREAK + 10 * MIN,
                        D("0.1"), D("0"), D("1"), D("0.9"), "take_profit", 5, rec)  # fmt: skip
    before = core.win_rate.rate
    assert core.on_closed_trade(trade) and not core.on_closed_trade(trade)
    assert core.win_rate.n == 1 and core.win_rate.rate > before
    assert learner.n_samples == 1 and learner.new_samples == 1
    odd = ClosedTrade("T2", rec.symbol, rec.side, D("1"), D("100"), D("99"), BREAK, BREAK + MIN,
                      D("0.1"), D("0"), D("-1"), D("-1.1"), "stop", 5,
                      type(rec)(**{**{k: getattr(rec, k) for k in rec.__dataclass_fields__},
                                   "features": {"ret_1": 0.0}}))  # fmt: skip
    assert core.on_closed_trade(odd)  # counted for the win rate, not learned, no crash
    assert core.counters.sample_errors == 1 and learner.n_samples == 1
    assert core.maybe_retrain(BREAK + 2 * MIN) is None  # 1 sample: nothing to train yet


def test_duplicate_and_bad_klines_are_counted() -> None:
    core = make_core()
    k = kline("AAAUSDT", 0, 100.0, 100.0, 10.0)
    core.on_closed_kline(k, T0)
    core.on_closed_kline(k, T0 + 1)
    bad = SimpleNamespace(symbol="AAAUSDT", open_time=T0 + MIN, open=1.0, high=0.5, low=1.0,
                          close=1.0, volume=1.0, quote_volume=1.0, trades=1,
                          taker_buy_volume=0.5, closed=True)  # fmt: skip
    core.on_closed_kline(bad, T0 + 2)
    assert (core.counters.klines, core.counters.duplicate_klines, core.counters.bad_klines) == (
        1,
        1,
        1,
    )


def test_limit_entries() -> None:
    core = make_core(entry_order_type="LIMIT")
    feed_breakouts(core)
    for d in decide(core):
        entry = d.intents[0]
        assert entry.order_type == "LIMIT" and entry.time_in_force == "GTC"
        assert entry.price == d.record.entry_price_ref and entry.price % D("0.01") == 0
