"""Backtest metrics on a hand-computed equity series and trade list; baselines; the table."""

from __future__ import annotations

import math
from decimal import Decimal as D

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtest.compare import buy_and_hold, table
from backtest.metrics import (
    compute,
    daily_returns,
    drawdown,
    max_drawdown,
    sharpe,
    sortino,
    trade_stats,
)
from shared.models import ClosedTrade

DAY = 86_400_000
H12 = DAY // 2
D0 = 1_689_811_200_000  # 2023-07-20T00:00Z
# minute ends: noon day 0, midnight (closes day 0), noon day 1, midnight (closes day 1), noon day 2
TIMES = np.array([D0 + H12, D0 + DAY, D0 + DAY + H12, D0 + 2 * DAY, D0 + 2 * DAY + H12])
EQUITY = np.array([10_100.0, 10_200.0, 9_690.0, 9_800.0, 10_290.0])
NOTIONAL = np.array([0.0, 20_000.0, 10_000.0, 0.0, 0.0])


def trade(i: int, net: str, fees: str, funding: str, lev: int) -> ClosedTrade:
    n, f, fu = D(net), D(fees), D(funding)
    return ClosedTrade(f"X-{i}", "BTCUSDT", "LONG", D("0.1"), D(30000), D(30100), D0 + i,
                       D0 + i + 60_000, f, fu, n + f - fu, n, "take_profit", lev)  # fmt: skip


TRADES = [trade(1, "50", "3", "-1", 10), trade(2, "-20", "2", "0.5", 20),
          trade(3, "30", "1", "0", 5), trade(4, "-10", "4", "-0.5", 15)]  # fmt: skip


def test_daily_returns_use_utc_day_ends() -> None:
    # day 0 ends at 10200 (the midnight sample belongs to day 0), day 1 at 9800, day 2 at 10290
    r = daily_returns(TIMES, EQUITY, 10_000.0)
    assert r == pytest.approx([0.02, -2 / 51, 0.05], rel=1e-12)


def test_metrics_on_hand_computed_series() -> None:
    m = compute(TIMES, EQUITY, NOTIONAL, TRADES, 10_000.0, 60_000)
    mean = (0.02 - 2 / 51 + 0.05) / 3  # 0.0102614379
    sd = math.sqrt(((0.02 - mean) ** 2 + (-2 / 51 - mean) ** 2 + (0.05 - mean) ** 2) / 2)
    assert sd == pytest.approx(0.0453981207, rel=1e-8)
    assert m.sharpe == pytest.approx(4.3183394588, rel=1e-9)
    assert m.sharpe == pytest.approx(mean / sd * math.sqrt(365), rel=1e-12)
    # downside deviation = sqrt((2/51)^2 / 3)
    assert m.sortino == pytest.approx(8.6587552031, rel=1e-9)
    assert m.total_return == pytest.approx(0.029)
    assert m.days == pytest.approx(2 + 60_000 / DAY)
    assert m.annualized_return == pytest.approx(1.029 ** (365 / (2 + 60_000 / DAY)) - 1)
    # peak 10200 at day-0 midnight, trough 9690: 5 %; recovered at day-2 noon (1.5 days)
    assert m.max_drawdown == pytest.approx(0.05)
    assert m.max_drawdown_days == pytest.approx(1.5)
    assert (m.trades, m.win_rate) == (4, 0.5)
    assert m.profit_factor == pytest.approx(80 / 30)
    assert m.avg_trade == pytest.approx(12.5)
    assert m.net_pnl == pytest.approx(50.0)
    assert (m.fees, m.funding) == (pytest.approx(10.0), pytest.approx(-1.0))
    assert m.avg_leverage == pytest.approx(12.5)
    assert m.time_in_market == pytest.approx(0.4)
    assert m.avg_exposure == pytest.approx((20_000 / 10_200 + 10_000 / 9_690) / 5)
    assert m.avg_exposure_in_market == pytest.approx((20_000 / 10_200 + 10_000 / 9_690) / 2)
    assert m.final_equity == 10_290.0 and m.start_ms == TIMES[0] - 60_000


def test_degenerate_inputs_give_none_not_nan() -> None:
    flat = compute(TIMES[:1], np.array([10_000.0]), np.zeros(1), [], 10_000.0)
    d = flat.to_dict()
    assert d["sharpe"] is None and d["sortino"] is None and d["win_rate"] is None
    assert d["profit_factor"] is None and d["max_drawdown"] == 0.0 and d["trades"] == 0
    only_wins = trade_stats([TRADES[0], TRADES[2]])
    assert only_wins["profit_factor"] is None and only_wins["win_rate"] == 1.0
    assert sharpe(np.array([0.01, 0.01])) is None  # no dispersion
    assert sortino(np.array([0.01, 0.02])) is None  # no down day
    with pytest.raises(ValueError):
        compute(np.zeros(0), np.zeros(0), np.zeros(0), [], 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1.0, 1e6, allow_nan=False), min_size=1, max_size=60),
       st.floats(1.0, 1e6))  # fmt: skip
def test_drawdown_properties(values: list[float], initial: float) -> None:
    e = np.array(values)
    dd = drawdown(e, initial)
    assert np.all(dd >= 0) and np.all(dd < 1)
    peak = np.maximum.accumulate(np.concatenate(([initial], e)))[1:]
    assert np.allclose(e, peak * (1 - dd))
    times = D0 + 60_000 * np.arange(1, len(e) + 1)
    mdd, days = max_drawdown(times, e, initial)
    assert mdd == pytest.approx(float(dd.max())) and days >= 0
    if np.all(np.diff(np.concatenate(([initial], e))) >= 0):
        assert mdd == 0.0


def test_buy_and_hold_equal_weight_with_fees_and_late_listing() -> None:
    # two symbols; B has no price until minute 2 (cash until then)
    closes = np.array([[100.0, np.nan], [110.0, np.nan], [120.0, 10.0], [90.0, 12.0]])
    eq, gross = buy_and_hold(closes, 0, 1000.0, 0.001)
    qa = 500 * 0.999 / 100.0
    qb = 500 * 0.999 / 10.0
    assert eq[0] == pytest.approx(qa * 100 + 500)
    assert eq[1] == pytest.approx(qa * 110 + 500)
    assert eq[2] == pytest.approx(qa * 120 + qb * 10)
    assert eq[3] == pytest.approx((qa * 90 + qb * 12) * (1 - 0.001))  # sold at the last close
    assert gross[0] == pytest.approx(qa * 100) and gross[3] == pytest.approx(qa * 90 + qb * 12)


def test_table_has_a_column_per_run() -> None:
    m = compute(TIMES, EQUITY, NOTIONAL, TRADES, 10_000.0)
    t = table({"learner_on": m, "learner_off": m, "buy_and_hold": m})
    assert [c.header for c in t.columns] == ["metric", "learner_on", "learner_off", "buy_and_hold"]
    cells = list(t.columns[1].cells)
    assert "+2.90%" in cells and "4.32" in cells and "5.00%" in cells
