"""Baseline entry signals: candidate long/short entries with a heuristic score.

Two documented setups, evaluated on every closed kline of a ready `MarketContext`:

(a) trend + pullback ("trend_pullback"): the EMAs are stacked in one direction
    (long: EMA20 > EMA50 > EMA200), the close is still on the trend side of EMA50, the trend
    regime is at least `pullback_min_regime`, and RSI(14) has pulled back against the trend
    (long: RSI <= `pullback_rsi_long_max`).  Score = 0.45 + 0.30*|regime| + 0.25*depth,
    depth = how far RSI went past its threshold, over 20 points, capped at 1.
(b) range breakout with a volatility filter ("breakout"): the close leaves the high/low range
    of the previous 60 bars, ATR(14)/ATR(100) >= `breakout_atr_ratio_min` (volatility is
    expanding) and the volume z-score >= `breakout_volume_z_min`.  Score = 0.45 +
    0.20*min(1, ATR ratio - 1) + 0.20*min(1, volume z / 4) + 0.15*max(0, regime in the
    trade's direction).

Every candidate carries entry = close, stop = entry -/+ stop_atr_mult x ATR, take-profit =
entry +/- take_profit_atr_mult x ATR, and an invalidation level (where the setup's thesis is
wrong before the stop is hit: EMA50 for a pullback, the broken range edge for a breakout,
each `invalidation_atr` x ATR beyond it, never beyond the stop).  The score is a heuristic in
[0, 1]; it is the confidence only while no trained model exists.

The per-bar check reads a few floats and returns an empty list in the common case, so it is
cheap enough for the backtest's per-bar path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.market_context import FEATURE_NAMES, FEATURES_VERSION, WARMUP_BARS, MarketContext

Side = Literal["LONG", "SHORT"]
STRATEGIES = ("trend_pullback", "breakout")

CANDIDATE_FEATURE_NAMES: tuple[str, ...] = (
    "side", "is_breakout", "raw_score", "stop_pct", "reward_risk",
)  # fmt: skip
MODEL_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES + CANDIDATE_FEATURE_NAMES
MODEL_FEATURES_VERSION = f"{FEATURES_VERSION}+cand-1"

# Context features whose sign means "up": mirrored for shorts so one model learns both sides.
_SIGNED = frozenset(
    FEATURE_NAMES.index(n)
    for n in FEATURE_NAMES
    if n.startswith(("ret_", "ema")) or n in ("body_ratio", "trend_regime")
)
_RSI, _TAKER, _RPOS = (FEATURE_NAMES.index(n) for n in ("rsi_14", "taker_buy_ratio", "range_pos"))
_UPW, _LOW = FEATURE_NAMES.index("upper_wick_ratio"), FEATURE_NAMES.index("lower_wick_ratio")
_SIGNED_COLS = np.array(sorted(_SIGNED))
_NF = len(FEATURE_NAMES)


@dataclass(frozen=True, slots=True)
class SignalParams:
    stop_atr_mult: float = 2.0
    take_profit_atr_mult: float = 3.0
    pullback_rsi_long_max: float = 45.0
    pullback_rsi_short_min: float = 55.0
    pullback_min_regime: float = 0.2
    breakout_atr_ratio_min: float = 1.2
    breakout_volume_z_min: float = 1.5
    invalidation_atr: float = 0.5

    @classmethod
    def from_risk(cls, risk: object, **overrides: float) -> SignalParams:
        """Stop/target multipliers come from `settings.risk` so labels and live agree."""
        return cls(
            stop_atr_mult=float(risk.stop_atr_mult),  # type: ignore[attr-defined]
            take_profit_atr_mult=float(risk.take_profit_atr_mult),  # type: ignore[attr-defined]
            **overrides,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    symbol: str
    open_time: int  # the kline that produced it
    side: Side
    strategy: str
    score: float
    entry: float
    atr: float
    stop: float
    take_profit: float
    invalidation: float
    reasons: tuple[str, ...]

    @property
    def direction(self) -> int:
        return 1 if self.side == "LONG" else -1

    @property
    def risk_pct(self) -> float:
        return abs(self.entry - self.stop) / self.entry

    @property
    def reward_pct(self) -> float:
        return abs(self.take_profit - self.entry) / self.entry


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _make(
    ctx: MarketContext, side: Side, strategy: str, score: float, level: float,
    p: SignalParams, reasons: tuple[str, ...],
) -> Candidate | None:  # fmt: skip
    """Entry/stop/target/invalidation around the close; None if a level would be <= 0."""
    c, atr = ctx.close, ctx.atr
    s = 1.0 if side == "LONG" else -1.0
    stop = c - s * p.stop_atr_mult * atr
    target = c + s * p.take_profit_atr_mult * atr
    inv = level - s * p.invalidation_atr * atr
    inv = max(inv, stop) if s > 0 else min(inv, stop)
    if min(stop, target, inv) <= 0.0:
        return None
    return Candidate(ctx.symbol, ctx.open_time, side, strategy, _clip01(score), c, atr, stop,
                     target, inv, reasons)  # fmt: skip


def _pullback(ctx: MarketContext, p: SignalParams) -> Candidate | None:
    c, e20, e50, e200 = ctx.close, ctx.ema20, ctx.ema50, ctx.ema200
    if e20 > e50 > e200 and c > e50:
        rsi = ctx.rsi()
        if rsi > p.pullback_rsi_long_max:
            return None
        regime = ctx.trend_regime()
        if regime < p.pullback_min_regime:
            return None
        depth = min(1.0, (p.pullback_rsi_long_max - rsi) / 20.0)
        why = ("ema_stack_up", f"rsi={rsi:.1f}", f"regime={regime:.2f}")
        return _make(ctx, "LONG", "trend_pullback", 0.45 + 0.3 * regime + 0.25 * depth, e50, p, why)
    if e20 < e50 < e200 and c < e50:
        rsi = ctx.rsi()
        if rsi < p.pullback_rsi_short_min:
            return None
        regime = ctx.trend_regime()
        if regime > -p.pullback_min_regime:
            return None
        depth = min(1.0, (rsi - p.pullback_rsi_short_min) / 20.0)
        why = ("ema_stack_down", f"rsi={rsi:.1f}", f"regime={regime:.2f}")
        return _make(
            ctx, "SHORT", "trend_pullback", 0.45 - 0.3 * regime + 0.25 * depth, e50, p, why
        )
    return None


def _breakout(ctx: MarketContext, p: SignalParams) -> Candidate | None:
    c = ctx.close
    up = c > ctx.range_high
    if not (up or c < ctx.range_low):
        return None
    ratio = ctx.atr_ratio()
    if ratio < p.breakout_atr_ratio_min:
        return None
    vz = ctx.volume_z()
    if vz < p.breakout_volume_z_min:
        return None
    regime = ctx.trend_regime() * (1.0 if up else -1.0)
    score = 0.45 + 0.2 * min(1.0, ratio - 1.0) + 0.2 * min(1.0, vz / 4.0) + 0.15 * max(0.0, regime)
    side: Side = "LONG" if up else "SHORT"
    level = ctx.range_high if up else ctx.range_low
    why = (f"range_{'high' if up else 'low'}_break", f"atr_ratio={ratio:.2f}", f"volume_z={vz:.2f}")
    return _make(ctx, side, "breakout", score, level, p, why)


def evaluate(ctx: MarketContext, params: SignalParams) -> list[Candidate]:
    """Candidates of this bar (usually none).  Not ready or zero ATR -> none.  The cheap
    preconditions (EMA stack, range break) are checked inline: this runs on every bar."""
    if ctx.n < WARMUP_BARS or not ctx.atr > 0.0:
        return []
    out = []
    c, e50 = ctx.close, ctx.ema50
    if (ctx.ema20 > e50 > ctx.ema200 and c > e50) or (ctx.ema20 < e50 < ctx.ema200 and c < e50):
        cand = _pullback(ctx, params)
        if cand is not None:
            out.append(cand)
    if c > ctx.range_high or c < ctx.range_low:
        cand = _breakout(ctx, params)
        if cand is not None:
            out.append(cand)
    return out


def model_row(features: list[float], cand: Candidate) -> list[float]:
    """Model input for one candidate, MODEL_FEATURE_NAMES order.

    WHY mirror: a short is a long on the inverted price, so directional context features are
    expressed "in the trade's favour" (sign flips, RSI -> 100-RSI, wicks swapped...).  One
    model then learns from both sides' trades, which matters when samples are scarce."""
    row = list(features)
    if cand.side == "SHORT":
        for i in _SIGNED:
            row[i] = -row[i]
        row[_RSI] = 100.0 - row[_RSI]
        row[_TAKER] = 1.0 - row[_TAKER]
        row[_RPOS] = 1.0 - row[_RPOS]
        row[_UPW], row[_LOW] = row[_LOW], row[_UPW]
    risk = cand.risk_pct
    rr = cand.reward_pct / risk if risk > 0.0 else 0.0
    row += [float(cand.direction), float(cand.strategy == "breakout"), cand.score, risk, rr]
    return row


@dataclass(frozen=True, slots=True)
class ModelInputs:
    """`model_matrix`'s result: the model rows and the candidates' distances, as arrays."""

    X: np.ndarray  # (n, len(MODEL_FEATURE_NAMES)), row i = model_row(features, cands[i])
    reward_pct: np.ndarray  # cands[i].reward_pct
    risk_pct: np.ndarray  # cands[i].risk_pct (= the stop_pct column)


def model_matrix(
    features: np.ndarray, feature_row: Sequence[int], cands: Sequence[Candidate]
) -> ModelInputs:
    """`model_row` for a minute's candidates at once: candidate i's context features are
    `features[feature_row[i]]`.

    WHY: the trader scores every candidate of a minute (hundreds in the worst case) on its
    latency path; per-row Python lists cost ~1.5 us each plus the conversion to the model's
    array.  The numpy operations here are the same IEEE operations as in `model_row`
    (negation, 100 - x, 1 - x, |a - b| / a, division), so every value is bit-identical
    (tests/test_trader_vectorized.py)."""
    n = len(cands)
    num = np.array(
        [(c.entry, c.stop, c.take_profit, c.score, c.side == "SHORT", c.strategy == "breakout")
         for c in cands],
        dtype=np.float64,
    ).reshape(n, 6)  # fmt: skip
    entry, short, breakout = num[:, 0], num[:, 4] > 0.0, num[:, 5]
    X = np.empty((n, len(MODEL_FEATURE_NAMES)), dtype=np.float64)
    X[:, :_NF] = features[np.asarray(feature_row, dtype=np.intp)]
    if short.any():
        S = X[short]  # a copy: mirror the short rows, then put them back
        S[:, _SIGNED_COLS] = -S[:, _SIGNED_COLS]
        S[:, _RSI] = 100.0 - S[:, _RSI]
        S[:, _TAKER] = 1.0 - S[:, _TAKER]
        S[:, _RPOS] = 1.0 - S[:, _RPOS]
        S[:, [_UPW, _LOW]] = S[:, [_LOW, _UPW]]
        X[short] = S
    risk = np.abs(entry - num[:, 1]) / entry
    reward = np.abs(num[:, 2] - entry) / entry
    rr = np.zeros(n)
    np.divide(reward, risk, out=rr, where=risk > 0.0)
    X[:, _NF] = np.where(short, -1.0, 1.0)
    X[:, _NF + 1] = breakout
    X[:, _NF + 2] = num[:, 3]
    X[:, _NF + 3] = risk
    X[:, _NF + 4] = rr
    return ModelInputs(X, reward, risk)
