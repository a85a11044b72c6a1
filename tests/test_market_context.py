"""MarketContext: hand-made windows with known answers, and incremental == vectorized."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader.labels import read_kline_csv
from shared.market_context import (
    FEATURE_NAMES,
    N_FEATURES,
    WARMUP_BARS,
    BadKline,
    ContextNotReady,
    MarketContext,
    MarketContextBank,
    compute_features_vectorized,
)
from shared.testing import KLINES_DIR

AVAX = KLINES_DIR / "binance_usdtm_2023-02_vision_csv/AVAXUSDT-1m-2023-02.csv"
T0 = 1_675_209_600_000  # 2023-02-01 00:00 UTC
MIN = 60_000
IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def feed(ctx: MarketContext, closes, spread=0.0, volume=100.0, start=T0, tbv=math.nan) -> None:
    prev = closes[0]
    for i, c in enumerate(closes):
        o = prev
        ctx.update(start + i * MIN, o, max(o, c) + spread, min(o, c) - spread, c, volume,
                   volume * c, 10, tbv)  # fmt: skip
        prev = c


def test_constant_prices_give_neutral_features() -> None:
    ctx = MarketContext("X")
    feed(ctx, [50.0] * WARMUP_BARS)
    assert ctx.ready
    f = dict(zip(FEATURE_NAMES, ctx.features_list(), strict=True))
    assert f["rsi_14"] == 50.0
    assert f["rvol_30"] == f["rvol_60"] == 0.0
    assert f["atr_pct"] == 0.0 and f["ema20_dist_atr"] == 0.0 and f["ema200_slope_atr"] == 0.0
    assert f["volume_z"] == 0.0
    assert f["ret_1"] == f["ret_60"] == 0.0
    assert f["body_ratio"] == f["upper_wick_ratio"] == f["lower_wick_ratio"] == 0.0
    assert f["range_pos"] == 0.5 and f["taker_buy_ratio"] == 0.5
    assert f["trend_regime"] == 0.0


def test_not_ready_before_warmup() -> None:
    ctx = MarketContext("X")
    feed(ctx, [50.0] * (WARMUP_BARS - 1))
    assert not ctx.ready
    with pytest.raises(ContextNotReady) as info:
        ctx.features_list()
    assert info.value.bars == WARMUP_BARS - 1


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_linear_ramp_sign_of_ema_distance_and_slope(direction: float) -> None:
    ctx = MarketContext("X")
    feed(ctx, [1000.0 + direction * 0.5 * i for i in range(WARMUP_BARS + 50)])
    f = ctx.features()
    for name in ("ema20_dist_atr", "ema50_dist_atr", "ema200_dist_atr", "ema20_slope_atr",
                 "ema50_slope_atr", "ret_1", "ret_60", "body_ratio"):  # fmt: skip
        assert np.sign(f[IDX[name]]) == direction, name
    # farther EMAs lag more on a ramp
    assert (
        abs(f[IDX["ema20_dist_atr"]])
        < abs(f[IDX["ema50_dist_atr"]])
        < abs(f[IDX["ema200_dist_atr"]])
    )
    assert f[IDX["rsi_14"]] == (100.0 if direction > 0 else 0.0)
    assert f[IDX["trend_regime"]] * direction > 0.9
    # each bar moves 0.5 and has no wicks: TR = 0.5 (the first bar's 0 has decayed away)
    assert ctx.atr == pytest.approx(0.5, rel=1e-6)


def test_atr_of_fixed_range_bars() -> None:
    ctx = MarketContext("X")
    for i in range(WARMUP_BARS):
        ctx.update(T0 + i * MIN, 100.0, 101.5, 98.5, 100.0, 10.0)  # range 3, no gaps
    assert ctx.atr == pytest.approx(3.0, rel=1e-12)
    assert ctx.atr_ratio() == pytest.approx(1.0)
    f = ctx.features()
    assert f[IDX["upper_wick_ratio"]] == pytest.approx(0.5) and f[
        IDX["lower_wick_ratio"]
    ] == pytest.approx(0.5)
    assert f[IDX["range_width_atr"]] == pytest.approx(1.0)


def test_time_of_day_from_open_time_and_taker_ratio() -> None:
    ctx = MarketContext("X")
    six_am = T0 + 6 * 3600 * 1000 - (WARMUP_BARS - 1) * MIN
    feed(ctx, [10.0] * WARMUP_BARS, start=six_am, volume=200.0, tbv=150.0)
    f = ctx.features()
    assert f[IDX["tod_sin"]] == pytest.approx(1.0) and f[IDX["tod_cos"]] == pytest.approx(
        0.0, abs=1e-12
    )
    assert f[IDX["taker_buy_ratio"]] == pytest.approx(0.75)


def test_taker_ratio_missing_columns_read_as_neutral() -> None:
    """Empty auxiliary columns arrive as NaN (CSV) or 0 (Kline.from_rest_row): both 0.5."""
    for trades, tbv in ((0, 0.0), (0, 40.0), (5, math.nan)):
        ctx = MarketContext("X")
        for i in range(WARMUP_BARS):
            ctx.update(T0 + i * MIN, 10.0, 10.5, 9.5, 10.0, 100.0, 1000.0, trades, tbv)
        assert ctx.features()[IDX["taker_buy_ratio"]] == 0.5
    ctx = MarketContext("X")
    for i in range(WARMUP_BARS):
        ctx.update(T0 + i * MIN, 10.0, 10.5, 9.5, 10.0, 100.0, 1000.0, 7, 0.0)
    assert ctx.features()[IDX["taker_buy_ratio"]] == 0.0  # all sells is real data


def test_duplicates_ignored_gaps_counted_bad_klines_rejected() -> None:
    ctx = MarketContext("X")
    assert ctx.update(T0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert not ctx.update(T0, 2.0, 2.0, 2.0, 2.0, 1.0)  # same open time: counted once
    assert not ctx.update(T0 - MIN, 2.0, 2.0, 2.0, 2.0, 1.0)
    assert ctx.n == 1 and ctx.ignored == 2 and ctx.close == 1.0
    assert ctx.update(T0 + 3 * MIN, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert ctx.gaps == 1
    for bad in [(1.0, 0.9, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, math.nan, 1.0), (0.0, 0.0, 0.0, 0.0, 1.0),
                (1.0, 1.0, 1.0, 1.0, -1.0)]:  # fmt: skip
        with pytest.raises(BadKline):
            ctx.update(T0 + 10 * MIN, *bad)
    assert ctx.n == 2


def _incremental(bars) -> np.ndarray:
    ctx = MarketContext("X")
    out = np.full((len(bars), N_FEATURES), np.nan)
    for i in range(len(bars)):
        ctx.update(int(bars.open_time[i]), bars.open[i], bars.high[i], bars.low[i],
                   bars.close[i], bars.volume[i], 0.0, bars.trades[i], bars.taker_buy_volume[i])  # fmt: skip
        if ctx.ready:
            out[i] = ctx.features_list()
    return out


def test_incremental_equals_vectorized_on_real_avax_klines() -> None:
    bars = read_kline_csv(AVAX, limit=3000)
    inc = _incremental(bars)
    ref = compute_features_vectorized(bars.open_time, bars.open, bars.high, bars.low, bars.close,
                                      bars.volume, bars.taker_buy_volume, bars.trades)  # fmt: skip
    assert np.isnan(inc[: WARMUP_BARS - 1]).all() and np.isnan(ref[: WARMUP_BARS - 1]).all()
    assert np.isfinite(ref[WARMUP_BARS - 1 :]).all()
    np.testing.assert_allclose(inc, ref, rtol=1e-9, atol=1e-10)
    # the real data is not degenerate: features vary
    assert (np.nanstd(ref, axis=0)[:-2] > 0).all()


def test_bank_matrix_matches_contexts() -> None:
    bars = read_kline_csv(AVAX, limit=WARMUP_BARS + 20)
    bank = MarketContextBank(["AVAXUSDT", "COLD"])
    for i in range(len(bars)):
        bank.update("AVAXUSDT", int(bars.open_time[i]), bars.open[i], bars.high[i], bars.low[i],
                    bars.close[i], bars.volume[i])  # fmt: skip
    m = bank.features_matrix(["AVAXUSDT", "COLD", "UNKNOWN"])
    assert m.shape == (3, N_FEATURES)
    np.testing.assert_array_equal(m[0], bank["AVAXUSDT"].features())
    assert np.isnan(m[1]).all() and np.isnan(m[2]).all()
    assert bank.symbols == ["AVAXUSDT", "COLD"]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(WARMUP_BARS - 5, WARMUP_BARS + 120),
    vol=st.floats(1e-4, 0.05),
)
def test_random_walks_incremental_equals_vectorized(seed: int, n: int, vol: float) -> None:
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, vol, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, vol, n))
    volume = rng.lognormal(5, 1, n).round(3)
    from services.trader.labels import Bars

    trades = rng.integers(0, 3, n).astype(float)  # 0: auxiliary columns missing
    bars = Bars(T0 + np.arange(n, dtype=np.int64) * MIN, open_, high, low, close, volume,
                volume, trades, volume * rng.uniform(0, 1, n))  # fmt: skip
    inc = _incremental(bars)
    ref = compute_features_vectorized(bars.open_time, open_, high, low, close, volume,
                                      bars.taker_buy_volume, trades)  # fmt: skip
    np.testing.assert_allclose(inc, ref, rtol=1e-8, atol=1e-9)
    ok = inc[WARMUP_BARS - 1 :]
    assert np.isfinite(ok).all()
    assert ((ok[:, IDX["rsi_14"]] >= 0) & (ok[:, IDX["rsi_14"]] <= 100)).all()
    assert (np.abs(ok[:, IDX["trend_regime"]]) <= 1).all()
    for name in ("upper_wick_ratio", "lower_wick_ratio", "taker_buy_ratio"):
        assert ((ok[:, IDX[name]] >= 0) & (ok[:, IDX[name]] <= 1)).all()


def _features_from_helpers(ctx: MarketContext) -> list[float]:
    """The feature row spelled with the helper methods (the definitions); features_list
    inlines them for speed and must give the very same bits."""
    t, c, atr = ctx.n - 1, ctx.close, ctx.atr
    ia = 1.0 / atr if atr > 0.0 else 0.0
    cl = ctx._closes
    out = [math.log(c / cl[(t - h) % len(cl)]) for h in (1, 5, 15, 60)]
    out += [math.sqrt(max(ctx._s30, 0.0) / 30), math.sqrt(max(ctx._s60, 0.0) / 60)]
    out += [atr / c, ctx.atr_ratio(), ctx.rsi()]
    out += [(c - ctx.ema20) * ia, (c - ctx.ema50) * ia, (c - ctx.ema200) * ia]
    out += [ctx.ema_slope_atr(20), ctx.ema_slope_atr(50), ctx.ema_slope_atr(200)]
    out.append(ctx.volume_z())
    o, h, lo = ctx.open, ctx.high, ctx.low
    ir = 1.0 / (h - lo) if h - lo > 0.0 else 0.0
    out += [(c - o) * ir, (h - max(o, c)) * ir, (min(o, c) - lo) * ir]
    v, tb = ctx.volume, ctx.taker_buy_volume
    known = v > 0.0 and tb == tb and ctx.trades > 0
    out.append(min(max(tb / v, 0.0), 1.0) if known else 0.5)
    out.append(ctx.trend_regime())
    rh, rl = ctx.range_high, ctx.range_low
    out += [(c - rl) / (rh - rl) if rh > rl else 0.5, (rh - rl) * ia]
    ang = ((ctx.open_time // 60_000) % 1440) * (2.0 * math.pi / 1440)
    return out + [math.sin(ang), math.cos(ang)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["walk", "flat", "dead", "tiny"]))
def test_features_list_is_bit_identical_to_the_helpers(seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    ctx, p = MarketContext("X"), 10 ** rng.uniform(-4, 4)
    for i in range(WARMUP_BARS + int(rng.integers(0, 150))):
        step = {"walk": 0.003, "flat": 0.0 if i > 40 else 0.003, "dead": 0.003, "tiny": 1e-9}[mode]
        o, c = p, p * (1 + step * rng.standard_normal())
        wick = 0.0 if mode == "flat" and i > 40 else 0.001
        v = 0.0 if mode == "dead" and rng.random() < 0.5 else 100 * rng.random()
        tb = math.nan if mode == "dead" else v * rng.random()
        ctx.update(T0 + i * MIN, o, max(o, c) * (1 + wick * rng.random()),
                   min(o, c) * (1 - wick * rng.random()), c, v, v * c, int(rng.integers(0, 3)), tb)  # fmt: skip
        p = c
        if ctx.ready:
            got, want = ctx.features_list(), _features_from_helpers(ctx)
            assert np.array_equal(np.array(got).view(np.int64), np.array(want).view(np.int64))
