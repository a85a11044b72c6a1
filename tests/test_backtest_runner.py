"""The backtest loop on real klines: no look-ahead, fast mode == full mode, the walk-forward
learner on and off, entries filled at the next open within the engine's slippage model."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR
from decimal import Decimal as D
from typing import Any

import numpy as np
import pytest

from backtest.broker import ACCOUNT
from backtest.data import OPEN, BarFeed, load_feed
from backtest.results import RunConfig
from backtest.runner import Runner
from backtest.session import BUY_AND_HOLD, make_learner, run_session
from shared.config import load_settings
from shared.testing import KLINES_DIR

DATA = str(KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv")
SYMBOLS = ["BNBUSDT", "BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
FAST_MODEL = {"n_estimators": 20, "min_train_samples": 100, "retrain_after_trades": 20}


@pytest.fixture(scope="module")
def feed() -> BarFeed:
    """Two and a half days of the six real symbols (21,600 bars)."""
    return load_feed([DATA], SYMBOLS, start="2023-07-18T12:00", end="2023-07-21T00:00")


def config(mode: str = "fast", cold: float = 0.25) -> RunConfig:
    return RunConfig(load_settings(model=FAST_MODEL), cold_start_days=cold, mode=mode)


def trades_of(result: Any) -> list[tuple]:
    return [(t.trade_id, t.side, t.quantity, t.entry_price, t.exit_price, t.exit_time,
             t.exit_reason, t.fees, t.funding, t.net_pnl) for t in result.trades]  # fmt: skip


class RecordingCube:
    """The feed's cube behind an accessor that remembers the highest minute index read."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr, self.max_read = arr, -1

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arr.shape

    def __getitem__(self, key: Any) -> Any:
        first = key[0] if isinstance(key, tuple) else key
        if isinstance(first, slice):
            hi = (len(self.arr) if first.stop is None else first.stop) - 1
        elif isinstance(first, int | np.integer):
            hi = int(first)
        else:
            raise TypeError(f"unexpected index {key!r}")
        self.max_read = max(self.max_read, hi)
        return self.arr[key]


def recorded_run(
    feed: BarFeed, cube: Any, learner: bool
) -> tuple[Any, list[tuple[int, int, list[dict]]]]:
    """A run that logs every decide call: (minute, highest index read so far, decisions)."""
    f = BarFeed(feed.symbols, feed.specs, feed.interval_ms, feed.times, cube)
    cfg = config(cold=1.5 if learner else 0.25)
    runner = Runner(f, cfg, make_learner(cfg, seed=3) if learner else None)
    log: list[tuple[int, int, list[dict]]] = []
    decide = runner.trader.decide

    def spy(t: int, *args: Any) -> Any:
        out = decide(t, *args)
        log.append((t, getattr(cube, "max_read", -1), [d.to_dict() for d in out]))
        return out

    runner.trader.decide = spy  # type: ignore[method-assign]
    return runner.run(), log


@pytest.mark.parametrize("learner", [False, True], ids=["learner_off", "learner_on"])
def test_no_look_ahead_poisoned_future_is_never_read(feed: BarFeed, learner: bool) -> None:
    k = 3000  # T: 50 hours in (the learner's cold start covers the first 36)
    t_cut = int(feed.times[k])
    poisoned = np.array(feed.cube, copy=True)
    poisoned[k:, :, :4] *= 1000.0  # prices x1000 after T (still valid bars)
    poisoned[k:, :, 4:] *= 9.0
    spy_cube = RecordingCube(poisoned)
    full, log_a = recorded_run(feed, spy_cube, learner)
    cut = BarFeed(feed.symbols, feed.specs, feed.interval_ms, feed.times[:k], feed.cube[:k])
    short, log_b = recorded_run(cut, cut.cube, learner)
    index = {int(t): i for i, t in enumerate(feed.times)}
    for t, max_read, _ in log_a:  # when deciding minute t, nothing after t had been read
        assert max_read <= index[t], (t, max_read)
    assert spy_cube.max_read == len(feed) - 1  # (it did read the future - when it got there)
    before_a = [(t, d) for t, _, d in log_a if t < t_cut]
    before_b = [(t, d) for t, _, d in log_b if t < t_cut]
    assert before_a == before_b and sum(len(d) for _, d in before_a) > 20
    closed_a = [x for x in trades_of(full) if x[5] < t_cut]
    closed_b = [x for x in trades_of(short) if x[5] < t_cut and x[6] != "end_of_data"]
    assert closed_a == closed_b
    if learner:  # the same cold start from the same past; the model scored the candidates
        assert full.learning[0] == short.learning[0] and full.learning[0]["samples"] > 100
        versions = {d["model_version"] for _, ds in before_a for d in ds}
        assert versions and "baseline" not in versions
    else:
        assert len(closed_a) >= 3 and any(d["taken"] for _, ds in before_a for d in ds)


def test_fast_mode_equals_full_mode(feed: BarFeed) -> None:
    fast = Runner(feed, config("fast")).run()
    full_runner = Runner(feed, config("full"))
    full = full_runner.run()
    assert trades_of(fast) == trades_of(full) and len(fast.trades) >= 10
    assert fast.ledger == full.ledger and fast.decisions == full.decisions
    assert np.array_equal(fast.equity, full.equity) and np.array_equal(fast.notional, full.notional)
    assert fast.counters["engine_ticks"] < full.counters["engine_ticks"] / 2  # it skipped work
    assert full.counters["sweeps"] == len(feed)  # full mode sweeps every minute, as live
    assert full_runner.broker.exchange.open_algo_orders(ACCOUNT) == []  # no orphaned legs
    assert fast.ledger["fees"] == sum(t.fees for t in fast.trades)  # all closed by the end


def test_entries_fill_at_the_next_open_within_the_slippage_model(feed: BarFeed) -> None:
    result = Runner(feed, config("fast")).run()
    spec_tick = {s: feed.specs[s].tick_size for s in feed.symbols}
    index = {int(t): i for i, t in enumerate(feed.times)}
    checked = 0
    for tr in result.trades:
        d = tr.decision
        assert d is not None and tr.entry_time == d.time + 60_000  # decided at t, filled at t+1m
        bar_open = D(
            repr(float(feed.cube[index[tr.entry_time], feed.symbols.index(tr.symbol), OPEN]))
        )
        tick = spec_tick[tr.symbol]
        if tr.side == "LONG":  # ask = open x (1 + 1 bp), rounded up to the tick
            want = (bar_open * D("1.0001") / tick).to_integral_value(ROUND_CEILING) * tick
        else:
            want = (bar_open * D("0.9999") / tick).to_integral_value(ROUND_FLOOR) * tick
        assert tr.entry_price == want
        checked += 1
    assert checked >= 10


def test_learner_on_and_off_in_one_session(feed: BarFeed) -> None:
    session = run_session(feed, config(cold=1.5), learner="both", seed=3)
    on, off = session.runs["learner_on"], session.runs["learner_off"]
    assert set(session.metrics) == {"learner_on", "learner_off", BUY_AND_HOLD}
    cold = on.learning[0]
    assert cold["event"] == "cold_start" and cold["samples"] > 100 and "reason" in cold
    assert off.learning == [] and off.trades
    assert {t.decision.model_version for t in off.trades} == {"baseline"}
    assert cold["accepted"]  # (deterministic: this data, this seed)
    # the model, not the signal score, decided: its calibrated P(profit) after fees is
    # below what a positive expected value needs on most candidates, so it declines them
    assert on.decisions["taken"] < off.decisions["taken"]
    assert {t.decision.model_version for t in on.trades} <= {cold["version"]}
    assert on.start_index == off.start_index == feed.index_at(int(feed.times[0]) + 129_600_000)
    assert session.metrics[BUY_AND_HOLD].trades == 0
    assert len(on.equity) == len(off.equity) == len(feed) - on.start_index
