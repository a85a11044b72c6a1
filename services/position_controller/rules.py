"""Exit rules of the position controller: small pure functions, one per rule.

WHY pure: the live service and the backtest both call these with the same inputs (a
`PositionView`, a `TrendView`, the event time `now_ms`), so what is measured offline is
what runs live.  No clock, no I/O; every threshold comes from `RuleConfig`.

Each rule returns an `ExitDecision` (a reduce-only MARKET close of the whole position with
a deterministic client order id) or None.  Thresholds are inclusive: PnL on margin exactly
at `emergency_close_pnl` fires, a hair above does not.  `check_protection` returns a
`ProtectionDecision` (conditional orders to re-place) or, when the missing stop/target is
already crossed, an `ExitDecision` that closes at market instead (the exchange would
reject a trigger that fires at once, -2021).

Rules, in priority order (`evaluate_exits`): emergency (PnL on margin), liquidation guard,
entry invalidation (level crossed), no progress, counter-trend, time stop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from services.position_controller.order_ids import close_order_id, reason_from_order_id
from shared.config import Settings
from shared.filters import SymbolFilters
from shared.market_context import MarketContext
from shared.models import DecisionRecord, OrderIntent, Position

_ZERO = Decimal(0)
_MS_PER_MIN = 60_000


class ExitRule(StrEnum):
    """Which rule decided; `exit_reason` is the ClosedTrade exit reason it leads to."""

    EMERGENCY = "emergency"
    LIQUIDATION_GUARD = "liquidation_guard"
    INVALIDATION = "invalidation"
    NO_PROGRESS = "no_progress"
    COUNTER_TREND = "counter_trend"
    TIME_STOP = "time_stop"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    PROTECTION = "protection"

    @property
    def exit_reason(self) -> str:
        return _EXIT_REASONS.get(self.value, self.value)


# A close near liquidation is an emergency; no progress invalidates the entry.
_EXIT_REASONS = {"liquidation_guard": "emergency", "no_progress": "invalidation"}


class Urgency(StrEnum):
    IMMEDIATE = "immediate"  # send before anything else (emergency)
    NORMAL = "normal"


# ---- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrendView:
    """Trend direction/strength in [-1, 1] (> 0 up) and how sure we are of it, in [0, 1]."""

    trend: float
    confidence: float


def trend_view(ctx: MarketContext) -> TrendView:
    """The one place a MarketContext becomes a TrendView.

    trend: the context's trend regime.  confidence: the share of five independent votes
    (close vs EMA20, EMA20 vs EMA50, EMA50 vs EMA200, EMA50 slope, RSI vs 50) that agree
    with the trend's sign, so a regime carried by one indicator is not trusted.  A context
    still warming up gives (0, 0): no opinion."""
    if not ctx.ready:
        return TrendView(0.0, 0.0)
    trend = ctx.trend_regime()
    if trend == 0.0 or math.isnan(trend):
        return TrendView(0.0, 0.0)
    sign = 1.0 if trend > 0 else -1.0
    votes = (
        ctx.close - ctx.ema20,
        ctx.ema20 - ctx.ema50,
        ctx.ema50 - ctx.ema200,
        ctx.ema_slope_atr(50),
        ctx.rsi() - 50.0,
    )
    agree = sum(1 for v in votes if v * sign > 0)
    return TrendView(max(-1.0, min(1.0, trend)), agree / len(votes))


@dataclass(frozen=True, slots=True)
class PositionView:
    """What the rules see of one open position (the core builds it).

    price: the latest mark/last price, or None (then the position's own unrealized PnL is
    used).  best_price: the most favourable price since the position opened (for the
    no-progress rule).  leverage None: unknown (the emergency rule then needs an isolated
    wallet to know the margin)."""

    position: Position
    open_time_ms: int
    price: Decimal | None = None
    best_price: Decimal | None = None
    decision: DecisionRecord | None = None
    leverage: int | None = None
    liquidation_price: Decimal | None = None

    @property
    def direction(self) -> int:
        return 1 if self.position.size > 0 else -1

    @property
    def symbol(self) -> str:
        return self.position.symbol

    def mark(self) -> Decimal:
        """Latest price, else the one implied by the position's unrealized PnL."""
        if self.price is not None:
            return self.price
        p = self.position
        return p.entry_price + p.unrealized_pnl / p.size if p.size else p.entry_price

    def matching_decision(self) -> DecisionRecord | None:
        """The entry record, only if it is for this side (a flip makes it stale)."""
        d = self.decision
        side = "LONG" if self.direction > 0 else "SHORT"
        return d if d is not None and d.side == side else None


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Thresholds of every rule, from `Settings` (risk.* and trading.*)."""

    emergency_enabled: bool = True
    emergency_close_pnl: Decimal = Decimal("-0.99")
    liquidation_guard_enabled: bool = True
    liquidation_buffer: Decimal = Decimal("0.01")
    maint_margin_rate: Decimal = Decimal("0.004")
    invalidation_enabled: bool = True
    no_progress_ms: int = 60 * _MS_PER_MIN
    no_progress_fraction: Decimal = Decimal("0.25")
    counter_trend_enabled: bool = True
    counter_trend_confidence: float = 0.7
    counter_trend_min_strength: float = 0.2
    time_stop_enabled: bool = True
    max_holding_ms: int = 240 * _MS_PER_MIN
    protection_enabled: bool = True
    protection_grace_ms: int = 10_000
    stop_atr_mult: Decimal = Decimal(2)
    take_profit_atr_mult: Decimal = Decimal(3)
    fallback_stop_fraction: Decimal = Decimal("0.02")
    fallback_take_profit_fraction: Decimal = Decimal("0.03")

    @classmethod
    def from_settings(cls, s: Settings) -> RuleConfig:
        r, t = s.risk, s.trading

        def dec(x: float) -> Decimal:
            return Decimal(repr(x))

        return cls(
            emergency_enabled=r.emergency_close_enabled,
            emergency_close_pnl=dec(r.emergency_close_pnl),
            liquidation_guard_enabled=r.liquidation_guard_enabled,
            liquidation_buffer=dec(r.liquidation_buffer),
            maint_margin_rate=dec(r.maint_margin_rate),
            invalidation_enabled=r.entry_invalidation_enabled,
            no_progress_ms=t.no_progress_minutes * _MS_PER_MIN,
            no_progress_fraction=dec(r.no_progress_fraction),
            counter_trend_enabled=r.counter_trend_enabled,
            counter_trend_confidence=r.counter_trend_confidence,
            counter_trend_min_strength=r.counter_trend_min_strength,
            time_stop_enabled=r.time_stop_enabled,
            max_holding_ms=t.max_holding_minutes * _MS_PER_MIN,
            protection_enabled=r.protection_check_enabled,
            protection_grace_ms=round(r.protection_grace * 1000),
            stop_atr_mult=dec(r.stop_atr_mult),
            take_profit_atr_mult=dec(r.take_profit_atr_mult),
            fallback_stop_fraction=dec(r.fallback_stop_fraction),
            fallback_take_profit_fraction=dec(r.fallback_take_profit_fraction),
        )


# ---- outputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """Close the whole position now.  `intent` is the reduce-only MARKET order; a position
    above the MARKET_LOT_SIZE max is closed by `intent` + `more_intents` (same id + -2...)."""

    symbol: str
    rule: ExitRule
    reason: str
    urgency: Urgency
    intent: OrderIntent
    more_intents: tuple[OrderIntent, ...] = ()

    @property
    def intents(self) -> tuple[OrderIntent, ...]:
        return (self.intent, *self.more_intents)

    @property
    def client_order_id(self) -> str:
        return self.intent.client_order_id


@dataclass(frozen=True, slots=True)
class ProtectionDecision:
    """Re-place the missing conditional orders (`missing`: 'stop' and/or 'take_profit')."""

    symbol: str
    missing: tuple[str, ...]
    intents: tuple[OrderIntent, ...]
    reason: str
    rule: ExitRule = ExitRule.PROTECTION
    urgency: Urgency = Urgency.NORMAL


def close_intents(
    view: PositionView, reason: str, text: str, filters: SymbolFilters | None = None
) -> tuple[OrderIntent, ...]:
    """Reduce-only MARKET orders for the whole position, split at the market max qty."""
    pos = view.position
    qty = abs(pos.size)
    side = "SELL" if pos.size > 0 else "BUY"
    base = close_order_id(pos.symbol, view.open_time_ms, reason)
    chunks = [qty]
    if filters is not None and qty > filters.market_max_qty:
        cap = filters.market_max_qty - filters.market_max_qty % filters.market_step_size
        n_full, rest = divmod(qty, cap)
        chunks = [cap] * int(n_full) + ([rest] if rest else [])
    return tuple(
        OrderIntent(
            symbol=pos.symbol,
            side=side,
            order_type="MARKET",
            quantity=q,
            client_order_id=base if i == 0 else f"{base}-{i + 1}",
            purpose="exit",
            reduce_only=True,
            leverage=None,
            reason=text,
        )
        for i, q in enumerate(chunks)
    )


def exit_decision(
    view: PositionView, rule: ExitRule, text: str, urgency: Urgency = Urgency.NORMAL,
    filters: SymbolFilters | None = None,
) -> ExitDecision:  # fmt: skip
    intents = close_intents(view, rule.exit_reason, text, filters)
    return ExitDecision(view.symbol, rule, text, urgency, intents[0], intents[1:])


# ---- money helpers -----------------------------------------------------------------------


def initial_margin(view: PositionView) -> Decimal | None:
    """Isolated wallet for isolated positions, else |size| x entry / leverage."""
    pos = view.position
    if pos.margin_type == "isolated" and pos.isolated_wallet > 0:
        return pos.isolated_wallet
    lev = view.leverage or pos.leverage
    if not lev or pos.entry_price <= 0:
        return None
    return abs(pos.size) * pos.entry_price / lev


def unrealized_pnl(view: PositionView) -> Decimal:
    pos = view.position
    if view.price is None:
        return pos.unrealized_pnl
    return pos.size * (view.price - pos.entry_price)


def pnl_on_margin(view: PositionView) -> Decimal | None:
    margin = initial_margin(view)
    if margin is None or margin <= 0:
        return None
    return unrealized_pnl(view) / margin


def estimate_liquidation_price(pos: Position, maint_margin_rate: Decimal) -> Decimal | None:
    """Binance's isolated one-way formula with a flat maintenance rate (no bracket amount):
    wallet + size*(P - entry) = |size| * P * mmr.  None for cross (needs the whole account)."""
    if pos.margin_type != "isolated" or pos.isolated_wallet <= 0 or pos.size == 0:
        return None
    s, ep, wb = pos.size, pos.entry_price, pos.isolated_wallet
    denom = abs(s) * maint_margin_rate - s
    if denom == 0:
        return None
    liq = (wb - s * ep) / denom
    return liq if liq > 0 else None


# ---- exit rules --------------------------------------------------------------------------


def emergency_rule(view: PositionView, cfg: RuleConfig) -> ExitDecision | None:
    """Seed rule: PnL on initial margin <= emergency_close_pnl (-99%) -> close at market."""
    if not cfg.emergency_enabled:
        return None
    ratio = pnl_on_margin(view)
    if ratio is None or ratio > cfg.emergency_close_pnl:
        return None
    text = f"PnL on margin {ratio:.4%} <= {cfg.emergency_close_pnl:.2%}"
    return exit_decision(view, ExitRule.EMERGENCY, text, Urgency.IMMEDIATE)


def liquidation_rule(view: PositionView, cfg: RuleConfig) -> ExitDecision | None:
    """Close when the liquidation price is within `liquidation_buffer` of the mark."""
    if not cfg.liquidation_guard_enabled:
        return None
    liq = view.liquidation_price
    if liq is None or liq <= 0:
        liq = estimate_liquidation_price(view.position, cfg.maint_margin_rate)
    mark = view.mark()
    if liq is None or mark <= 0:
        return None
    distance = (mark - liq) / mark * view.direction
    if distance > cfg.liquidation_buffer:
        return None
    text = f"liquidation {liq} is {distance:.4%} from mark {mark} (buffer {cfg.liquidation_buffer:.2%})"
    return exit_decision(view, ExitRule.LIQUIDATION_GUARD, text, Urgency.IMMEDIATE)


def invalidation_rule(view: PositionView, cfg: RuleConfig) -> ExitDecision | None:
    """The price reached the entry's invalidation level (touching it counts)."""
    d = view.matching_decision()
    if not cfg.invalidation_enabled or d is None or d.invalidation_price is None:
        return None
    price, level = view.mark(), d.invalidation_price
    if (price - level) * view.direction > 0:
        return None
    word = "<=" if view.direction > 0 else ">="
    return exit_decision(view, ExitRule.INVALIDATION, f"price {price} {word} invalidation {level}")


def no_progress_rule(view: PositionView, cfg: RuleConfig, now_ms: int) -> ExitDecision | None:
    """After no_progress_ms: the best favourable excursion never reached
    `no_progress_fraction` of the stop distance (or, with no stop known, PnL <= 0)."""
    held = now_ms - view.open_time_ms
    if not cfg.invalidation_enabled or held < cfg.no_progress_ms:
        return None
    pos, d = view.position, view.matching_decision()
    minutes = held // _MS_PER_MIN
    if d is not None and d.stop_price > 0 and d.stop_price != pos.entry_price:
        need = abs(pos.entry_price - d.stop_price) * cfg.no_progress_fraction
        best = view.best_price if view.best_price is not None else view.mark()
        mfe = max((best - pos.entry_price) * view.direction, _ZERO)
        if mfe >= need:
            return None
        text = f"no progress after {minutes} min: best excursion {mfe} < {need}"
    else:
        pnl = unrealized_pnl(view)
        if pnl > 0:
            return None
        text = f"no progress after {minutes} min: PnL {pnl} <= 0"
    return exit_decision(view, ExitRule.NO_PROGRESS, text)


def counter_trend_rule(
    view: PositionView, trend: TrendView | None, cfg: RuleConfig
) -> ExitDecision | None:
    """The trend turned against the position, strongly enough and with enough confidence.

    A trend already against the position at entry (the record's `trend_regime` feature)
    did not turn: the entry took it knowingly, and its stop and invalidation manage it."""
    if not cfg.counter_trend_enabled or trend is None:
        return None
    against = -trend.trend * view.direction
    if against < cfg.counter_trend_min_strength or trend.confidence < cfg.counter_trend_confidence:
        return None
    d = view.matching_decision()
    at_entry = d.features.get("trend_regime") if d is not None else None
    if at_entry is not None and -at_entry * view.direction >= cfg.counter_trend_min_strength:
        return None
    side = "long" if view.direction > 0 else "short"
    text = (
        f"trend {trend.trend:+.3f} against the {side} "
        f"(confidence {trend.confidence:.2f} >= {cfg.counter_trend_confidence:.2f})"
    )
    return exit_decision(view, ExitRule.COUNTER_TREND, text)


def time_stop_rule(view: PositionView, cfg: RuleConfig, now_ms: int) -> ExitDecision | None:
    """Held for max_holding_ms or more."""
    held = now_ms - view.open_time_ms
    if not cfg.time_stop_enabled or held < cfg.max_holding_ms:
        return None
    limit = cfg.max_holding_ms // _MS_PER_MIN
    return exit_decision(
        view, ExitRule.TIME_STOP, f"held {held / _MS_PER_MIN:.1f} min >= {limit} min"
    )


def evaluate_exits(
    view: PositionView,
    trend: TrendView | None,
    cfg: RuleConfig,
    now_ms: int,
    filters: SymbolFilters | None = None,
) -> ExitDecision | None:
    """The first rule that fires, in priority order (emergency first), or None.  Rules
    after the first that fires are not evaluated (the emergency path stays short)."""
    if view.position.size == 0:
        return None
    rules = (
        lambda: emergency_rule(view, cfg),
        lambda: liquidation_rule(view, cfg),
        lambda: invalidation_rule(view, cfg),
        lambda: no_progress_rule(view, cfg, now_ms),
        lambda: counter_trend_rule(view, trend, cfg),
        lambda: time_stop_rule(view, cfg, now_ms),
    )
    for rule in rules:
        decision = rule()
        if decision is not None:
            if filters is not None and filters.market_max_qty < abs(view.position.size):
                return exit_decision(
                    view, decision.rule, decision.reason, decision.urgency, filters
                )
            return decision
    return None


# The protection check lives in `protection.py` (its own concern); re-exported lazily
# here, since it builds on the types above.
_PROTECTION_NAMES = frozenset(
    {"ProtectiveOrder", "check_protection", "protection_triggers", "group_by_symbol",
     "as_protective", "STOP_TYPES", "TAKE_PROFIT_TYPES"}
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _PROTECTION_NAMES:
        from services.position_controller import protection

        return getattr(protection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__: Sequence[str] = (
    "ExitDecision", "ExitRule", "PositionView", "ProtectionDecision",
    "RuleConfig", "TrendView", "Urgency", "close_order_id",
    "counter_trend_rule", "emergency_rule", "evaluate_exits", "invalidation_rule",
    "liquidation_rule", "no_progress_rule", "reason_from_order_id", "time_stop_rule",
    "trend_view",
)  # fmt: skip
