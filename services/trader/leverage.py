"""Leverage from win rate x confidence (the seed's rule), as fractional Kelly.

Formula (all inputs are per trade):
    p  = recent win rate, Beta-prior posterior mean over the last `model.win_rate_window`
         closed trades: (prior * w + wins) / (w + n), w = `model.win_rate_prior_weight`
    c  = model confidence (calibrated P(profit))
    q  = sqrt(p * c)          the seed's "win rate x confidence", kept on the probability
                              scale (p = c = 0.6 gives q = 0.6, not 0.36)
    b  = reward / risk        take-profit distance / stop distance
    f* = q - (1 - q) / b      Kelly fraction of equity to risk on a b:1 bet
    f  = kelly_fraction * max(f*, 0)
    raw = f / stop_pct        notional / equity at which a stop-out costs f of equity: a wider
                              stop (more volatility) means less leverage
    cap = min(risk.max_leverage, symbol bracket max, floor(1 / (stop_pct + liquidation_buffer
                + maintenance_margin)))   -- the last term keeps liquidation beyond the stop
    leverage = clamp(floor(raw + 0.5), 1, max(cap, 1))

Properties (Hypothesis-tested): 1 <= leverage <= min(max_leverage, bracket max); non-decreasing
in p and in c.  Bad inputs raise `LeverageInputError`, never a silent default.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NO_BRACKET = 1 << 62  # "no bracket maximum" in leverage_many's integer array


class LeverageInputError(ValueError):
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value
        super().__init__(f"leverage input {name}={value!r} out of range")


@dataclass(frozen=True, slots=True)
class LeverageResult:
    leverage: int
    q: float  # combined success probability
    kelly: float  # full Kelly fraction f* (may be <= 0: no edge)
    raw: float  # unclamped leverage
    cap: int  # the binding maximum


def _check(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = float(value)
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        raise LeverageInputError(name, value)
    return v


def compute_leverage(
    win_rate: float,
    confidence: float,
    reward_risk: float,
    stop_pct: float,
    *,
    kelly_fraction: float,
    max_leverage: int,
    bracket_max: int | None = None,
    maintenance_margin: float = 0.005,
    liquidation_buffer: float = 0.01,
) -> LeverageResult:
    p = _check("win_rate", win_rate, 0.0, 1.0)
    c = _check("confidence", confidence, 0.0, 1.0)
    b = _check("reward_risk", reward_risk, 0.0, math.inf, lo_open=True)
    s = _check("stop_pct", stop_pct, 0.0, 1.0, lo_open=True)
    k = _check("kelly_fraction", kelly_fraction, 0.0, 1.0)
    if max_leverage < 1:
        raise LeverageInputError("max_leverage", max_leverage)
    q = math.sqrt(p * c)
    kelly = q - (1.0 - q) / b
    raw = k * max(kelly, 0.0) / s
    cap = min(int(max_leverage), int(1.0 / (s + liquidation_buffer + maintenance_margin)))
    if bracket_max is not None:
        cap = min(cap, int(bracket_max))
    cap = max(cap, 1)
    lev = int(math.floor(raw + 0.5)) if raw < cap else cap
    return LeverageResult(min(max(lev, 1), cap), q, kelly, raw, cap)


def _valid(value: float, lo: float, hi: float, lo_open: bool = False) -> bool:
    v = float(value)
    return math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi


def leverage_many(
    win_rate: float,
    confidence: np.ndarray,
    reward_risk: np.ndarray,
    stop_pct: np.ndarray,
    *,
    kelly_fraction: float,
    max_leverage: int,
    bracket_max: Sequence[int | None],
    maintenance_margin: float = 0.005,
    liquidation_buffer: float = 0.01,
) -> list[int]:
    """`[compute_leverage(win_rate, confidence[i], ...).leverage for i ...]` in one pass.

    WHY: a minute can score hundreds of candidates and the scalar function costs ~1.5 us
    each.  The array operations are the same IEEE operations in the same order (sqrt, +, -,
    *, /, floor, truncation of a positive quotient), so the integers are the same
    (tests/test_trader_vectorized.py).  When an input is out of range, the scalar function
    is called on the row the loop would have failed on, so the same `LeverageInputError`
    is raised."""
    n = len(confidence)
    if n == 0:
        return []
    c = np.asarray(confidence, dtype=np.float64)
    b = np.asarray(reward_risk, dtype=np.float64)
    s = np.asarray(stop_pct, dtype=np.float64)
    scalars_ok = (_valid(win_rate, 0.0, 1.0) and _valid(kelly_fraction, 0.0, 1.0)
                  and max_leverage >= 1)  # fmt: skip
    with np.errstate(invalid="ignore"):
        ok = (c >= 0.0) & (c <= 1.0) & np.isfinite(b) & (b > 0.0) & (s > 0.0) & (s <= 1.0)
    if not (scalars_ok and ok.all()):
        i = 0 if not scalars_ok else int(np.argmin(ok))
        kw = {"kelly_fraction": kelly_fraction, "max_leverage": max_leverage}
        compute_leverage(win_rate, c[i], b[i], s[i], **kw)  # raises
    p, k = float(win_rate), float(kelly_fraction)
    q = np.sqrt(p * c)
    kelly = q - (1.0 - q) / b
    raw = k * np.maximum(kelly, 0.0) / s
    cap = np.minimum(int(max_leverage),
                     (1.0 / (s + liquidation_buffer + maintenance_margin)).astype(np.int64))  # fmt: skip
    bracket = np.array([_NO_BRACKET if x is None else int(x) for x in bracket_max], np.int64)
    cap = np.maximum(np.minimum(cap, bracket), 1)
    lev = np.where(raw < cap, np.floor(raw + 0.5), cap)
    return np.minimum(np.maximum(lev, 1), cap).astype(np.int64).tolist()  # type: ignore[no-any-return]


class WinRateTracker:
    """Recent closed-trade win rate with a Beta prior, so the first trades after a cold
    start do not swing leverage (the prior weighs like `prior_weight` trades)."""

    def __init__(self, prior: float, prior_weight: float, window: int) -> None:
        self.prior, self.prior_weight = _check("prior", prior, 0.0, 1.0), float(prior_weight)
        self._wins: deque[bool] = deque(maxlen=int(window))
        self._seen: dict[str, None] = {}
        self._window = int(window)

    @classmethod
    def from_config(cls, model_cfg: object) -> WinRateTracker:
        return cls(
            model_cfg.win_rate_prior,  # type: ignore[attr-defined]
            model_cfg.win_rate_prior_weight,  # type: ignore[attr-defined]
            model_cfg.win_rate_window,  # type: ignore[attr-defined]
        )

    def add(self, trade_id: str, won: bool) -> bool:
        """Count a closed trade once; False if the id was already counted."""
        if trade_id in self._seen:
            return False
        self._seen[trade_id] = None
        if len(self._seen) > 20 * self._window + 1000:
            for old in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[old]
        self._wins.append(bool(won))
        return True

    @property
    def n(self) -> int:
        return len(self._wins)

    @property
    def wins(self) -> int:
        return sum(self._wins)

    @property
    def rate(self) -> float:
        w = self.prior_weight
        n = len(self._wins)
        if n == 0 and w == 0:
            return self.prior
        return (self.prior * w + sum(self._wins)) / (w + n)
