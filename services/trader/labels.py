"""Triple-barrier labels and the cold-start dataset built from kline history.

WHY: before the system has closed trades of its own, the model learns from history labelled
by the strategy's own exit rules: a candidate at bar i enters at close[i], with the same stop
and take-profit the live order would carry, and a time barrier of `model.label_horizon` bars.
Whichever barrier the following bars touch first decides the exit; when one bar touches both,
the stop is assumed first (conservative: a 1m bar does not tell the order).  A stop in a bar
that opens beyond it fills at that open (gap), a target fills at the target, a time exit at
the horizon bar's close.  label = 1 iff the return net of taker fees on both legs is > 0.

The candidates come from replaying `MarketContext` + `signals.evaluate` bar by bar - the same
code the live trader runs - so history and live agree on what a candidate is.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from services.trader.signals import MODEL_FEATURE_NAMES, SignalParams, evaluate, model_row
from shared.market_context import MarketContext

TARGET, STOP, TIME = 1, -1, 0


class LabelInputError(ValueError):
    """Candidate arrays that cannot be labelled (wrong shapes, stop on the wrong side...)."""

    def __init__(self, reason: str, count: int = 0) -> None:
        self.reason, self.count = reason, count
        super().__init__(f"{reason} ({count} rows)" if count else reason)


@dataclass(frozen=True, slots=True)
class Bars:
    """Contiguous closed klines of one symbol as float64/int64 arrays."""

    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    quote_volume: np.ndarray
    trades: np.ndarray
    taker_buy_volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


def read_kline_csv(path: str | Path, limit: int | None = None) -> Bars:
    """A Binance kline CSV (12 columns, optional header, optionally .gz).  Empty auxiliary
    columns (freqtrade-made files) read as NaN, which the features treat as missing."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[list[str]] = []
    with opener(p, "rt", newline="") as fh:  # type: ignore[operator]
        for rec in csv.reader(fh):
            if not rec or not rec[0].isdigit():
                continue  # header
            rows.append(rec)
            if limit is not None and len(rows) >= limit:
                break

    def col(i: int) -> np.ndarray:
        return np.array([float(r[i]) if r[i] else math.nan for r in rows], dtype=np.float64)

    ot = np.array([int(r[0]) for r in rows], dtype=np.int64)
    return Bars(ot, col(1), col(2), col(3), col(4), col(5), col(7), col(8), col(9))


@dataclass(frozen=True, slots=True)
class BarrierResult:
    label: np.ndarray  # int8: 1 = profitable net of fees
    outcome: np.ndarray  # int8: TARGET, STOP or TIME
    exit_index: np.ndarray  # int64 bar index of the exit
    exit_price: np.ndarray
    net_return: np.ndarray  # fraction of entry notional, after round-trip taker fees
    valid: np.ndarray  # bool: the outcome is known (a barrier hit, or the horizon fits)


def triple_barrier(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    entry_index: np.ndarray,
    side: np.ndarray,
    stop: np.ndarray,
    target: np.ndarray,
    horizon: int,
    fee_rate: float,
    open: np.ndarray | None = None,
) -> BarrierResult:
    """Label candidates (entry at close[entry_index], side +1 long / -1 short).

    Vectorized over candidates x horizon: a month of 1m bars for several symbols is a few
    million booleans, labelled in well under a second."""
    n, idx = len(close), np.asarray(entry_index, dtype=np.int64)
    sd = np.asarray(side, dtype=np.int64)
    stop, target = np.asarray(stop, np.float64), np.asarray(target, np.float64)
    if horizon < 1 or not (len(idx) == len(sd) == len(stop) == len(target)):
        raise LabelInputError("horizon < 1 or candidate arrays of different lengths")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise LabelInputError("entry_index outside the bars", int(((idx < 0) | (idx >= n)).sum()))
    entry = close[idx] if len(idx) else np.zeros(0)
    bad = ~np.isin(sd, (1, -1)) | ((stop - entry) * sd >= 0) | ((target - entry) * sd <= 0)
    if bad.any():
        raise LabelInputError("side not +/-1 or stop/target on the wrong side", int(bad.sum()))
    pad = np.full(horizon, np.nan)
    hw = sliding_window_view(np.concatenate([high, pad]), horizon)[idx + 1]
    lw = sliding_window_view(np.concatenate([low, pad]), horizon)[idx + 1]
    long = (sd > 0)[:, None]
    hit_stop = np.where(long, lw <= stop[:, None], hw >= stop[:, None])
    hit_tp = np.where(long, hw >= target[:, None], lw <= target[:, None])
    k_stop = np.where(hit_stop.any(axis=1), hit_stop.argmax(axis=1), horizon)
    k_tp = np.where(hit_tp.any(axis=1), hit_tp.argmax(axis=1), horizon)
    stopped = (k_stop < horizon) & (k_stop <= k_tp)  # same bar: the stop first
    hit_target = (k_tp < horizon) & ~stopped
    outcome = np.where(stopped, STOP, np.where(hit_target, TARGET, TIME)).astype(np.int8)
    exit_index = idx + 1 + np.where(stopped, k_stop, np.where(hit_target, k_tp, horizon - 1))
    valid = (outcome != TIME) | (idx + horizon < n)
    exit_index = np.minimum(exit_index, n - 1)
    exit_price = np.where(stopped, stop, np.where(hit_target, target, close[exit_index]))
    if open is not None and len(idx):
        o = np.asarray(open, np.float64)[exit_index]
        gapped = stopped & ((o - stop) * sd < 0)  # opened beyond the stop: filled at the open
        exit_price = np.where(gapped, o, exit_price)
    ratio = exit_price / entry if len(idx) else np.zeros(0)
    net = sd * (ratio - 1.0) - fee_rate * (1.0 + ratio)
    label = ((net > 0) & valid).astype(np.int8)
    return BarrierResult(label, outcome, exit_index, exit_price, net, valid)


@dataclass(frozen=True, slots=True)
class ColdStartData:
    """Time-ordered samples for `Learner.fit_cold_start`."""

    X: np.ndarray  # (n, len(MODEL_FEATURE_NAMES))
    y: np.ndarray  # (n,) int8
    times: np.ndarray  # (n,) entry kline open time, ms
    symbols: np.ndarray  # (n,) str
    net_return: np.ndarray  # (n,) after fees

    def meta(self) -> dict[str, int]:
        """Training-window metadata for the model store."""
        if not len(self.times):
            return {"window_start_ms": 0, "window_end_ms": 0}
        return {"window_start_ms": int(self.times[0]), "window_end_ms": int(self.times[-1])}


def replay_candidates(symbol: str, bars: Bars, params: SignalParams) -> tuple[list, list]:
    """Run the live context + signals over history: (candidates, model rows) per bar."""
    ctx = MarketContext(symbol)
    cols = (bars.open_time, bars.open, bars.high, bars.low, bars.close, bars.volume,
            bars.quote_volume, bars.trades, bars.taker_buy_volume)  # fmt: skip
    cands, rows = [], []
    for i, rec in enumerate(zip(*(c.tolist() for c in cols), strict=True)):
        ctx.update(*rec)
        found = evaluate(ctx, params)
        if found:
            feats = ctx.features_list()
            for cand in found:
                cands.append((i, cand))
                rows.append(model_row(feats, cand))
    return cands, rows


def build_cold_start(
    series: Mapping[str, Bars], params: SignalParams, horizon: int, fee_rate: float
) -> ColdStartData:
    """Candidates of every symbol, labelled, merged and sorted by time (ties by symbol)."""
    xs, ys, ts, ss, rs = [], [], [], [], []
    for symbol in sorted(series):
        bars = series[symbol]
        cands, rows = replay_candidates(symbol, bars, params)
        if not cands:
            continue
        idx = np.array([i for i, _ in cands], dtype=np.int64)
        res = triple_barrier(
            bars.high, bars.low, bars.close, idx,
            np.array([c.direction for _, c in cands]),
            np.array([c.stop for _, c in cands]),
            np.array([c.take_profit for _, c in cands]),
            horizon, fee_rate, open=bars.open,
        )  # fmt: skip
        keep = res.valid
        xs.append(np.asarray(rows, dtype=np.float64)[keep])
        ys.append(res.label[keep])
        ts.append(bars.open_time[idx][keep])
        ss.append(np.full(int(keep.sum()), symbol))
        rs.append(res.net_return[keep])
    if not xs:
        empty = np.zeros((0, len(MODEL_FEATURE_NAMES)))
        return ColdStartData(empty, np.zeros(0, np.int8), np.zeros(0, np.int64),
                             np.zeros(0, str), np.zeros(0))  # fmt: skip
    X, y, t, s, r = (np.concatenate(a) for a in (xs, ys, ts, ss, rs))
    order = np.lexsort((s, t))
    return ColdStartData(X[order], y[order], t[order], s[order], r[order])
