"""Baselines in the same run, and the comparison table.

- buy and hold: equal weight over the same symbols and the same trading window - at the
  first traded minute each symbol gets initial equity / N, bought at that minute's close
  (a symbol listed later waits in cash until its first close), held at 1x and sold at the
  last close; a taker fee in and out, no funding (spot-like: it needs no margin).
- the strategy with the learner switched off is a second `Runner` (runs.py): same data,
  same settings, confidence = the signal's own score.
So "what did self-learning add" is one table of one run, not a claim.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rich.table import Table

from backtest.metrics import Metrics


def buy_and_hold(
    closes: np.ndarray, start: int, initial: float, fee: float
) -> tuple[np.ndarray, np.ndarray]:
    """(equity, notional) per minute from `start` on, for (minutes, symbols) forward-
    filled closes (NaN before a symbol's first bar).  Pure numpy."""
    c = np.asarray(closes, dtype=np.float64)[start:]
    n_sym = c.shape[1]
    share = initial / n_sym
    have = ~np.isnan(c)
    first = np.where(have.any(axis=0), have.argmax(axis=0), len(c))
    equity = np.zeros(len(c))
    notional = np.zeros(len(c))
    idx = np.arange(len(c))
    for j in range(n_sym):
        if first[j] >= len(c):
            equity += share  # never listed in the window: stays cash
            continue
        held = idx >= first[j]
        value = np.where(held, share * (1.0 - fee) / c[first[j], j] * np.nan_to_num(c[:, j]), 0.0)
        equity += np.where(held, value, share)
        notional += value
    if len(c):
        equity[-1] -= fee * notional[-1]  # the sale at the last close
    return equity, notional


_ROWS = (
    ("total return", "total_return", "ret"), ("annualized", "annualized_return", "ret"),
    ("Sharpe (daily)", "sharpe", "num"), ("Sortino (daily)", "sortino", "num"),
    ("max drawdown", "max_drawdown", "pct"), ("trades", "trades", "int"),
    ("win rate", "win_rate", "pct"), ("profit factor", "profit_factor", "num"),
    ("fees", "fees", "money"), ("funding", "funding", "money"),
    ("time in market", "time_in_market", "pct"), ("avg exposure", "avg_exposure", "num"),
    ("avg leverage", "avg_leverage", "num"), ("final equity", "final_equity", "money"),
)  # fmt: skip


def _fmt(value: object, kind: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if kind == "ret":
        return f"{float(value):+.2%}"
    if kind == "pct":
        return f"{float(value):.2%}"
    if kind == "int":
        return f"{int(value)}"  # type: ignore[call-overload]
    if kind == "money":
        return f"{float(value):,.2f}"
    return f"{float(value):.2f}"


def table(runs: Mapping[str, Metrics], title: str = "Backtest comparison") -> Table:
    """One column per run (strategy with/without learner, buy and hold)."""
    t = Table(title=title)
    t.add_column("metric")
    for name in runs:
        t.add_column(name, justify="right")
    for label, key, kind in _ROWS:
        t.add_row(label, *(_fmt(getattr(m, key), kind) for m in runs.values()))
    return t
