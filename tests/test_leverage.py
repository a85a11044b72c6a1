"""Leverage: clamps and monotonicity (Hypothesis), worked examples, win-rate prior."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.trader.leverage import LeverageInputError, WinRateTracker, compute_leverage

prob = st.floats(0.0, 1.0)
rr = st.floats(0.2, 10.0)
stop = st.floats(1e-4, 0.2)
cap = st.integers(1, 125)
bracket = st.one_of(st.none(), st.integers(1, 125))
kelly = st.floats(0.05, 1.0)


@given(prob, prob, rr, stop, kelly, cap, bracket)
def test_never_above_caps_never_below_one(p, c, b, s, k, max_lev, br) -> None:
    r = compute_leverage(p, c, b, s, kelly_fraction=k, max_leverage=max_lev, bracket_max=br)
    assert 1 <= r.leverage <= max_lev
    if br is not None:
        assert r.leverage <= br
    # liquidation (~1/L - maintenance) stays beyond the stop, unless the floor of 1 binds
    assert r.leverage == 1 or 1.0 / r.leverage - 0.005 >= s


@given(prob, prob, prob, rr, stop, kelly, cap, bracket)
def test_monotone_in_win_rate_and_confidence(p1, p2, c, b, s, k, max_lev, br) -> None:
    lo, hi = sorted((p1, p2))
    kw = dict(kelly_fraction=k, max_leverage=max_lev, bracket_max=br)
    assert (
        compute_leverage(lo, c, b, s, **kw).leverage <= compute_leverage(hi, c, b, s, **kw).leverage
    )
    assert (
        compute_leverage(c, lo, b, s, **kw).leverage <= compute_leverage(c, hi, b, s, **kw).leverage
    )


@given(prob, prob, rr, st.floats(1e-4, 0.1), st.floats(1e-4, 0.1))
def test_wider_stop_never_more_leverage(p, c, b, s1, s2) -> None:
    lo, hi = sorted((s1, s2))
    kw = dict(kelly_fraction=0.5, max_leverage=125)
    assert (
        compute_leverage(p, c, b, hi, **kw).leverage <= compute_leverage(p, c, b, lo, **kw).leverage
    )


def test_worked_example() -> None:
    # q = sqrt(0.6 * 0.6) = 0.6; b = 1.5: f* = 0.6 - 0.4/1.5 = 1/3; half Kelly = 1/6;
    # stop 1 %: raw = 16.67 -> 17; liquidation cap 1/(0.01+0.01+0.005) = 40
    r = compute_leverage(0.6, 0.6, 1.5, 0.01, kelly_fraction=0.5, max_leverage=125)
    assert r.q == pytest.approx(0.6) and r.kelly == pytest.approx(1 / 3)
    assert r.raw == pytest.approx(50 / 3) and r.leverage == 17 and r.cap == 40
    assert compute_leverage(0.6, 0.6, 1.5, 0.01, kelly_fraction=0.5, max_leverage=10).leverage == 10
    assert (
        compute_leverage(
            0.6, 0.6, 1.5, 0.01, kelly_fraction=0.5, max_leverage=125, bracket_max=8
        ).leverage
        == 8
    )
    assert (
        compute_leverage(0.3, 0.5, 1.5, 0.01, kelly_fraction=0.5, max_leverage=125).leverage == 1
    )  # no edge


@pytest.mark.parametrize(
    "args",
    [(1.1, 0.5, 1.5, 0.01), (0.5, -0.1, 1.5, 0.01), (0.5, 0.5, 0.0, 0.01), (0.5, 0.5, 1.5, 0.0),
     (math.nan, 0.5, 1.5, 0.01), (0.5, 0.5, math.inf, 0.01)],
)  # fmt: skip
def test_bad_inputs_raise(args) -> None:
    with pytest.raises(LeverageInputError):
        compute_leverage(*args, kelly_fraction=0.5, max_leverage=20)


def test_win_rate_prior_window_and_idempotence() -> None:
    wr = WinRateTracker(prior=0.5, prior_weight=20, window=10)
    assert wr.rate == 0.5 and wr.n == 0
    assert wr.add("a", True) and not wr.add("a", True)
    assert wr.rate == pytest.approx((10 + 1) / 21)
    for i in range(30):
        wr.add(f"w{i}", True)
    assert wr.n == 10 and wr.wins == 10  # only the window counts
    assert wr.rate == pytest.approx(20 / 30)
    for i in range(10):
        wr.add(f"l{i}", False)
    assert wr.rate == pytest.approx(10 / 30)
    assert WinRateTracker(0.4, 0, 5).rate == 0.4  # no prior weight and no trades: the prior
