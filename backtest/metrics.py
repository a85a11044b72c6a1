"""Performance metrics of an equity curve and a trade list.  Pure functions, no I/O.

Definitions (the JSON and the table use exactly these):
- total return = final / initial - 1; annualized = (1 + total) ** (365 / days) - 1, days =
  the span of the equity samples plus one interval (crypto trades 365 days a year).
- Sharpe and Sortino from DAILY returns: the equity at each UTC day's last sample (the first
  day relative to the initial equity, partial first/last days included); Sharpe = mean / std
  (ddof 1) x sqrt(365); Sortino = mean / downside deviation x sqrt(365), downside deviation
  = sqrt(mean(min(r, 0)^2)) over all days.  WHY daily: per-minute returns are mostly zeros
  between trades and their autocorrelation makes a sqrt(525600) annualization meaningless.
  Fewer than 2 daily returns (or no dispersion / no down day) -> None.
- max drawdown: the largest fall from a running peak, as a fraction of that peak (the
  initial equity counts as the first peak); its duration is peak to recovery (or the end).
- trades from closed trades, net of fees and funding: win rate = share with net > 0;
  profit factor = sum of winning nets / |sum of losing nets| (None when there is no loss);
  fees = commissions paid (>= 0); funding = signed, > 0 received.
- exposure: time in market = share of samples with any open notional; average exposure =
  mean of gross notional / equity over all samples (and over in-market samples);
  average leverage = mean of the leverage each trade was opened with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared.models import ClosedTrade

DAY_MS = 86_400_000
DAYS_PER_YEAR = 365.0


@dataclass(frozen=True, slots=True)
class Metrics:
    start_ms: int
    end_ms: int
    days: float
    initial_equity: float
    final_equity: float
    total_return: float
    annualized_return: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    max_drawdown_days: float
    trades: int
    win_rate: float | None
    profit_factor: float | None
    avg_trade: float | None
    net_pnl: float
    fees: float
    funding: float
    time_in_market: float
    avg_exposure: float
    avg_exposure_in_market: float | None
    avg_leverage: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: those become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def daily_returns(times: np.ndarray, equity: np.ndarray, initial: float) -> np.ndarray:
    """Returns between consecutive UTC day ends (see module doc)."""
    t = np.asarray(times, dtype=np.int64)
    e = np.asarray(equity, dtype=np.float64)
    if len(e) == 0:
        return np.zeros(0)
    day = (t - 1) // DAY_MS  # a sample at exactly 00:00 closes the previous day
    last = np.flatnonzero(np.diff(day, append=day[-1] + 1))
    ends = np.concatenate(([initial], e[last]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return ends[1:] / ends[:-1] - 1.0


def sharpe(returns: np.ndarray, periods_per_year: float = DAYS_PER_YEAR) -> float | None:
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2 or not np.all(np.isfinite(r)):
        return None
    sd = float(np.std(r, ddof=1))
    if sd == 0.0:
        return None
    return float(np.mean(r)) / sd * math.sqrt(periods_per_year)


def sortino(returns: np.ndarray, periods_per_year: float = DAYS_PER_YEAR) -> float | None:
    r = np.asarray(returns, dtype=np.float64)
    if len(r) < 2 or not np.all(np.isfinite(r)):
        return None
    dd = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if dd == 0.0:
        return None
    return float(np.mean(r)) / dd * math.sqrt(periods_per_year)


def drawdown(equity: np.ndarray, initial: float) -> np.ndarray:
    """Fall from the running peak at each sample, as a fraction (>= 0)."""
    e = np.asarray(equity, dtype=np.float64)
    peak = np.maximum.accumulate(np.concatenate(([initial], e)))[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, 1.0 - e / peak, 0.0)


def max_drawdown(times: np.ndarray, equity: np.ndarray, initial: float) -> tuple[float, float]:
    """(max drawdown fraction, its duration in days: peak -> recovery, or -> the end)."""
    dd = drawdown(equity, initial)
    if len(dd) == 0 or float(dd.max()) <= 0.0:
        return 0.0, 0.0
    t = np.asarray(times, dtype=np.int64)
    worst = int(np.argmax(dd))
    e = np.asarray(equity, dtype=np.float64)
    peak_val = e[worst] / (1.0 - dd[worst])
    before = np.flatnonzero(e[: worst + 1] >= peak_val)
    start = int(t[before[-1]]) if len(before) else int(t[0])
    after = np.flatnonzero(e[worst:] >= peak_val)
    end = int(t[worst + after[0]]) if len(after) else int(t[-1])
    return float(dd[worst]), (end - start) / DAY_MS


def trade_stats(trades: Sequence[ClosedTrade]) -> dict[str, float | None]:
    nets = np.array([float(t.net_pnl) for t in trades], dtype=np.float64)
    n = len(nets)
    wins, losses = nets[nets > 0].sum(), nets[nets < 0].sum()
    return {
        "trades": n,
        "win_rate": float(np.mean(nets > 0)) if n else None,
        "profit_factor": float(wins / -losses) if losses < 0 else None,
        "avg_trade": float(nets.mean()) if n else None,
        "net_pnl": float(nets.sum()),
        "fees": float(sum(float(t.fees) for t in trades)),
        "funding": float(sum(float(t.funding) for t in trades)),
        "avg_leverage": float(np.mean([t.leverage for t in trades])) if n else None,
    }


def compute(
    times: np.ndarray,
    equity: np.ndarray,
    notional: np.ndarray,
    trades: Sequence[ClosedTrade],
    initial: float,
    interval_ms: int = 60_000,
) -> Metrics:
    """All metrics of one run (module doc)."""
    t = np.asarray(times, dtype=np.int64)
    e = np.asarray(equity, dtype=np.float64)
    g = np.asarray(notional, dtype=np.float64)
    if len(e) == 0:
        raise ValueError("no equity samples")
    days = (int(t[-1]) - int(t[0]) + interval_ms) / DAY_MS
    final = float(e[-1])
    total = final / initial - 1.0
    annual = None
    if days > 0:
        annual = -1.0 if final <= 0 else (final / initial) ** (DAYS_PER_YEAR / days) - 1.0
    r = daily_returns(t, e, initial)
    mdd, mdd_days = max_drawdown(t, e, initial)
    in_market = g > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(e > 0, g / e, np.nan)
    st = trade_stats(trades)
    return Metrics(
        start_ms=int(t[0]) - interval_ms, end_ms=int(t[-1]), days=days, initial_equity=initial,
        final_equity=final, total_return=total, annualized_return=annual, sharpe=sharpe(r),
        sortino=sortino(r), max_drawdown=mdd, max_drawdown_days=mdd_days,
        trades=int(st["trades"] or 0), win_rate=st["win_rate"], profit_factor=st["profit_factor"],
        avg_trade=st["avg_trade"], net_pnl=float(st["net_pnl"] or 0.0), fees=float(st["fees"] or 0.0),
        funding=float(st["funding"] or 0.0), time_in_market=float(np.mean(in_market)),
        avg_exposure=float(np.nanmean(ratio)) if len(ratio) else 0.0,
        avg_exposure_in_market=float(np.nanmean(ratio[in_market])) if in_market.any() else None,
        avg_leverage=st["avg_leverage"],
    )  # fmt: skip
