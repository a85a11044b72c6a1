"""Triple-barrier labels on hand-made paths, and the cold-start dataset from real klines."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader.labels import (
    STOP,
    TARGET,
    TIME,
    LabelInputError,
    build_cold_start,
    read_kline_csv,
    triple_barrier,
)
from services.trader.signals import MODEL_FEATURE_NAMES, SignalParams
from shared.testing import KLINES_DIR

AVAX = KLINES_DIR / "binance_usdtm_2023-02_vision_csv/AVAXUSDT-1m-2023-02.csv"
BNB_GZ = KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv/BNBUSDT-1m.csv.gz"
FEE = 0.0005


def path(rows: list[tuple[float, float, float]]):
    """(high, low, close) rows -> arrays; bar 0 is the entry bar (entry = its close)."""
    a = np.array(rows, dtype=float)
    return a[:, 0], a[:, 1], a[:, 2]


def label_one(rows, side=1, stop=98.0, target=103.0, horizon=4, open_=None):
    h, lo, c = path(rows)
    return triple_barrier(h, lo, c, np.array([0]), np.array([side]), np.array([stop]),
                          np.array([target]), horizon, FEE, open=open_)  # fmt: skip


def test_stop_first() -> None:
    r = label_one(
        [(100, 100, 100), (100.5, 97.5, 99), (104, 99, 103.5), (100, 100, 100), (1, 1, 1)]
    )
    assert r.outcome[0] == STOP and r.exit_index[0] == 1 and r.exit_price[0] == 98.0
    assert r.label[0] == 0 and r.valid[0]
    assert r.net_return[0] == pytest.approx(-0.02 - FEE * (1 + 0.98))


def test_target_first() -> None:
    r = label_one([(100, 100, 100), (101, 99, 100.5), (103.5, 100, 103), (100, 97, 97), (1, 1, 1)])
    assert r.outcome[0] == TARGET and r.exit_index[0] == 2 and r.exit_price[0] == 103.0
    assert r.label[0] == 1
    assert r.net_return[0] == pytest.approx(0.03 - FEE * (1 + 1.03))


def test_both_in_one_bar_counts_as_stop() -> None:
    r = label_one([(100, 100, 100), (103.5, 97.5, 101), (110, 100, 110), (1, 1, 1), (1, 1, 1)])
    assert r.outcome[0] == STOP and r.label[0] == 0


def test_time_barrier_exits_at_horizon_close() -> None:
    rows = [
        (100, 100, 100),
        (101, 99.5, 100.5),
        (101, 99.5, 101),
        (102, 100, 101.5),
        (102, 101, 102),
    ]
    r = label_one(rows, horizon=3)
    assert r.outcome[0] == TIME and r.exit_index[0] == 3 and r.exit_price[0] == 101.5
    assert r.label[0] == 1
    # a gain smaller than the round-trip fees is a loss
    tiny = [(100, 100, 100), (100.05, 99.95, 100.05), (100.06, 99.95, 100.05), (1, 1, 1)]
    r2 = label_one(tiny, horizon=2)
    assert r2.outcome[0] == TIME and 0 < r2.exit_price[0] / 100 - 1 < 2 * FEE
    assert r2.label[0] == 0 and r2.net_return[0] < 0


def test_short_mirror_and_gap_fill_at_open() -> None:
    rows = [(100, 100, 100), (101, 99, 100), (103, 101.5, 102.5), (100, 100, 100), (1, 1, 1)]
    r = label_one(rows, side=-1, stop=102.0, target=97.0)
    assert r.outcome[0] == STOP and r.exit_price[0] == 102.0
    opens = np.array([100, 100, 102.8, 100, 1.0])  # bar 2 opens above the stop: filled there
    r = label_one(rows, side=-1, stop=102.0, target=97.0, open_=opens)
    assert r.exit_price[0] == 102.8
    assert r.net_return[0] == pytest.approx(-(1.028 - 1) - FEE * (1 + 1.028))
    r = label_one([(100, 100, 100), (100, 96.5, 97.5), (1, 1, 1)] + [(1, 1, 1)] * 3, side=-1,
                  stop=102.0, target=97.0)  # fmt: skip
    assert r.outcome[0] == TARGET and r.label[0] == 1


def test_near_the_end_without_a_hit_is_invalid() -> None:
    h, lo, c = path([(100, 100, 100), (101, 99, 100), (101, 99, 100)])
    r = triple_barrier(h, lo, c, np.array([0, 1]), np.array([1, 1]), np.array([98.0, 98.0]),
                       np.array([103.0, 103.0]), 5, FEE)  # fmt: skip
    assert not r.valid.any() and (r.label == 0).all()
    h, lo, c = path([(100, 100, 100), (101, 97, 100)])
    r = triple_barrier(
        h, lo, c, np.array([0]), np.array([1]), np.array([98.0]), np.array([103.0]), 5, FEE
    )
    assert r.valid[0] and r.outcome[0] == STOP  # a hit inside the data is known


def test_bad_inputs_are_typed_errors() -> None:
    h, lo, c = path([(100, 100, 100), (101, 99, 100)])
    with pytest.raises(LabelInputError):
        triple_barrier(
            h, lo, c, np.array([0]), np.array([1]), np.array([101.0]), np.array([103.0]), 2, FEE
        )
    with pytest.raises(LabelInputError):
        triple_barrier(
            h, lo, c, np.array([5]), np.array([1]), np.array([99.0]), np.array([103.0]), 2, FEE
        )
    with pytest.raises(LabelInputError):
        triple_barrier(
            h, lo, c, np.array([0]), np.array([0]), np.array([99.0]), np.array([103.0]), 2, FEE
        )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), horizon=st.integers(1, 30))
def test_vectorized_matches_a_bar_by_bar_walk(seed: int, horizon: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, n)))
    h, lo = c * (1 + rng.uniform(0, 0.004, n)), c * (1 - rng.uniform(0, 0.004, n))
    idx = rng.choice(n, 30, replace=False)
    side = rng.choice([-1, 1], 30)
    stop, tgt = c[idx] * (1 - side * 0.006), c[idx] * (1 + side * 0.009)
    r = triple_barrier(h, lo, c, idx, side, stop, tgt, horizon, FEE)
    for k, i in enumerate(idx):
        outcome, exit_i = TIME, i + horizon
        for j in range(i + 1, min(i + horizon, n - 1) + 1):
            s_hit = lo[j] <= stop[k] if side[k] > 0 else h[j] >= stop[k]
            t_hit = h[j] >= tgt[k] if side[k] > 0 else lo[j] <= tgt[k]
            if s_hit or t_hit:
                outcome, exit_i = (STOP if s_hit else TARGET), j
                break
        assert r.valid[k] == (outcome != TIME or i + horizon < n)
        if r.valid[k]:
            assert r.outcome[k] == outcome and r.exit_index[k] == exit_i


def test_read_csv_with_empty_columns() -> None:
    bars = read_kline_csv(BNB_GZ, limit=100)
    assert len(bars) == 100 and np.isnan(bars.taker_buy_volume).all()
    assert (np.diff(bars.open_time) == 60_000).all() and (bars.high >= bars.low).all()


def test_cold_start_dataset_from_real_klines() -> None:
    bars = read_kline_csv(AVAX, limit=6000)
    data = build_cold_start({"AVAXUSDT": bars}, SignalParams(), horizon=60, fee_rate=FEE)
    assert data.X.shape == (len(data.y), len(MODEL_FEATURE_NAMES)) and len(data.y) > 20
    assert np.isfinite(data.X).all() and set(np.unique(data.y)) <= {0, 1}
    assert (np.diff(data.times) >= 0).all()
    assert ((data.net_return > 0) == (data.y == 1)).all()
    assert data.meta()["window_start_ms"] == data.times[0]
