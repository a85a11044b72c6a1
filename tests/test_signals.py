"""Baseline signals on hand-made paths, and the model row built from a candidate."""

from __future__ import annotations

import math

import pytest

from services.trader.signals import (
    MODEL_FEATURE_NAMES,
    Candidate,
    SignalParams,
    evaluate,
    model_row,
)
from shared.market_context import FEATURE_NAMES, MarketContext

T0 = 1_675_209_600_000
MIN = 60_000
P = SignalParams()


def bar(ctx: MarketContext, i: int, o: float, c: float, v: float = 100.0, w: float = 0.02) -> None:
    assert ctx.update(T0 + i * MIN, o, max(o, c) + w, min(o, c) - w, c, v)


def quiet_range(symbol: str, mirror: bool = False) -> tuple[MarketContext, float]:
    """300 bars oscillating +-0.1 around 100 with varying volume."""
    ctx, prev = MarketContext(symbol), 100.0
    for i in range(300):
        c = 100 + 0.1 * math.sin(i * 0.7) * (-1 if mirror else 1)
        bar(ctx, i, prev, c, 100 + 10 * (i % 3))
        prev = c
    return ctx, prev


def check_levels(cand: Candidate, p: SignalParams = P) -> None:
    s = cand.direction
    assert cand.entry == pytest.approx(cand.entry)
    assert cand.stop == pytest.approx(cand.entry - s * p.stop_atr_mult * cand.atr)
    assert cand.take_profit == pytest.approx(cand.entry + s * p.take_profit_atr_mult * cand.atr)
    # invalidation sits between the stop and the entry
    assert (cand.entry - cand.invalidation) * s > 0
    assert (cand.invalidation - cand.stop) * s >= 0
    assert 0.0 <= cand.score <= 1.0
    assert cand.reasons


@pytest.mark.parametrize("side", ["LONG", "SHORT"])
def test_breakout_with_volume_and_atr_expansion(side: str) -> None:
    ctx, prev = quiet_range("BRK")
    assert evaluate(ctx, P) == []
    close = 101.5 if side == "LONG" else 98.5
    bar(ctx, 300, prev, close, 1000.0)
    cands = evaluate(ctx, P)
    assert [(c.side, c.strategy) for c in cands] == [(side, "breakout")]
    check_levels(cands[0])
    assert cands[0].open_time == T0 + 300 * MIN and cands[0].entry == close


def test_breakout_needs_volume() -> None:
    ctx, prev = quiet_range("BRK")
    bar(ctx, 300, prev, 101.5, 105.0)  # range break on ordinary volume
    assert evaluate(ctx, P) == []


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_trend_pullback(direction: float) -> None:
    """A zig-zag trend, then bars against it: a pullback entry fires within a few bars."""
    ctx, prev, c = MarketContext("PB"), 100.0, 100.0
    side = "LONG" if direction > 0 else "SHORT"
    for i in range(300):
        c += direction * (0.3 if i % 2 == 0 else -0.1)
        bar(ctx, i, prev, c)
        prev = c
    assert evaluate(ctx, P) == []  # no pullback yet: RSI is on the trend side
    found = []
    for j in range(300, 320):
        c -= direction * 0.25
        bar(ctx, j, prev, c)
        prev = c
        found = evaluate(ctx, P)
        if found:
            break
    assert [(x.side, x.strategy) for x in found] == [(side, "trend_pullback")]
    cand = found[0]
    check_levels(cand)
    rsi = ctx.rsi()
    assert rsi <= P.pullback_rsi_long_max if side == "LONG" else rsi >= P.pullback_rsi_short_min
    assert (ctx.close - ctx.ema50) * direction > 0


def test_not_ready_or_flat_gives_nothing() -> None:
    ctx = MarketContext("X")
    for i in range(150):
        bar(ctx, i, 100.0, 100.0 + i)
    assert evaluate(ctx, P) == []
    flat = MarketContext("F")
    for i in range(300):
        flat.update(T0 + i * MIN, 5.0, 5.0, 5.0, 5.0, 1.0)
    assert evaluate(flat, P) == []  # ATR 0: no stop distance, no trade


def test_model_row_mirrors_shorts() -> None:
    ctx, prev = quiet_range("M")
    bar(ctx, 300, prev, 98.5, 1000.0)
    (short,) = evaluate(ctx, P)
    feats = ctx.features_list()
    row = model_row(feats, short)
    assert len(row) == len(MODEL_FEATURE_NAMES)
    f = dict(zip(FEATURE_NAMES, feats, strict=False))
    r = dict(zip(MODEL_FEATURE_NAMES, row, strict=True))
    assert r["ret_1"] == -f["ret_1"] and r["ema50_dist_atr"] == -f["ema50_dist_atr"]
    assert r["rsi_14"] == 100.0 - f["rsi_14"]
    assert r["range_pos"] == 1.0 - f["range_pos"]
    assert r["upper_wick_ratio"] == f["lower_wick_ratio"]
    assert r["volume_z"] == f["volume_z"] and r["tod_sin"] == f["tod_sin"]
    assert r["side"] == -1.0 and r["is_breakout"] == 1.0
    assert r["reward_risk"] == pytest.approx(P.take_profit_atr_mult / P.stop_atr_mult)
    assert r["stop_pct"] == pytest.approx(short.risk_pct)
    # the mirrored short looks like the long breakout of the mirrored path
    ctx2, prev2 = quiet_range("M2", mirror=True)
    bar(ctx2, 300, prev2, 101.5, 1000.0)
    (long,) = evaluate(ctx2, P)
    long_row = model_row(ctx2.features_list(), long)
    assert r["ret_1"] == pytest.approx(
        dict(zip(MODEL_FEATURE_NAMES, long_row, strict=True))["ret_1"], rel=0.05
    )
