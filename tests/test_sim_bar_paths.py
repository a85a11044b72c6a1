"""The simulator's vectorized intra-bar paths equal the reference `bar_updates` bit for bit.

The WebSocket bytes must not depend on which of the two built them (the backtest uses the
scalar one, the simulator's hot path the vectorized one), so this is exact equality.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.exchange_sim.market.bar import (
    Bar,
    bar_updates,
    bar_updates_many,
    round_like_python,
)
from services.exchange_sim.market.synthetic import SyntheticMarket


def _assert_same(bars: list[Bar], n: int, tick: float | None = None) -> None:
    many = bar_updates_many(bars, n, tick)
    for r, bar in enumerate(bars):
        for k, point in enumerate(bar_updates(bar, n, tick)):
            for f, name in enumerate(point._fields):
                got = getattr(many, name)[r, k].item()
                want = point[f]
                assert repr(got) == repr(want), (bar, n, k, name, got, want)


def test_synthetic_minutes_match_the_reference() -> None:
    syms = [f"S{i:03d}USDT" for i in range(40)]
    market = SyntheticMarket(syms, 5, 1_700_000_000_000)
    for idx in range(0, 120, 17):
        bars = [market.bar(s, idx) for s in syms]
        for n in (0, 1, 3, 9, 59):
            _assert_same(bars, n)


prices = st.integers(1, 10**7)


@settings(max_examples=300, deadline=None)
@given(
    pp=st.integers(0, 6),
    raw=st.lists(prices, min_size=4, max_size=4),
    vol=st.integers(0, 10**6),
    n=st.sampled_from([0, 1, 2, 5, 9, 17]),
)
def test_random_bars_with_half_way_values(pp: int, raw: list[int], vol: int, n: int) -> None:
    scale = 10.0**pp
    o, c, a, b = (round(x / scale + 0.5 / scale, pp) for x in raw)
    high, low = max(o, c, a), min(o, c, b)
    v = round(vol * 0.125, 3)
    bar = Bar(
        "X", 0, 59_999, o, high, low, c, v, round(v * c, pp + 3), vol, v / 2, v * c / 2, pp, 3
    )
    _assert_same([bar], n)


def test_round_like_python_matches_round_on_ties() -> None:
    xs = np.array([0.125, 0.375, 2.5, 0.5, 1.5, 1.005, 2.675, 0.045, 123456789.125, -2.5])
    rng = np.random.default_rng(1)
    xs = np.concatenate([xs, rng.uniform(-1e6, 1e6, 2000)])
    for nd in range(0, 9):
        got = round_like_python(xs, nd).tolist()
        assert [repr(round(x, nd)) for x in xs.tolist()] == [repr(g) for g in got]
