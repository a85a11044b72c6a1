"""Protection check: every open position must have a stop-loss and a take-profit
conditional order on the exchange.

WHY separate from the exit rules: it answers a different question (what is missing on the
exchange, given its open algo orders) and returns orders to place rather than a close.
Missing legs are re-placed as STOP_MARKET / TAKE_PROFIT_MARKET with closePosition=true,
on the closing side, at the entry record's trigger (else entry -/+ ATR multiples, else a
fixed fraction), once `protection_grace` has passed since the position opened.  A leg whose
trigger is already crossed would fire at once (Binance -2021), so the position is closed
at market instead (an ExitDecision).  `rules.check_protection` is this function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.position_controller.rules import (
    ExitDecision,
    ExitRule,
    PositionView,
    ProtectionDecision,
    RuleConfig,
    Urgency,
    close_order_id,
    exit_decision,
)
from shared.filters import SymbolFilters, round_price
from shared.models import AlgoUpdate, OrderIntent, Position

_ZERO = Decimal(0)

# ---- protective orders --------------------------------------------------------------------------

STOP_TYPES = frozenset({"STOP_MARKET", "STOP", "TRAILING_STOP_MARKET"})
TAKE_PROFIT_TYPES = frozenset({"TAKE_PROFIT_MARKET", "TAKE_PROFIT"})
_OPEN_ALGO = frozenset({"NEW", "TRIGGERING", "TRIGGERED", ""})


@dataclass(frozen=True, slots=True)
class ProtectiveOrder:
    """An open conditional order as the protection check needs it."""

    symbol: str
    order_type: str
    side: str
    trigger_price: Decimal
    close_position: bool
    reduce_only: bool
    client_id: str = ""
    status: str = "NEW"
    algo_id: int = 0
    create_time: int = 0  # exchange ms; 0: unknown (never newer than a flat time)

    @classmethod
    def from_algo_update(cls, u: AlgoUpdate) -> ProtectiveOrder:
        return cls(u.symbol, u.order_type, u.side, u.trigger_price, u.close_position,
                   u.reduce_only, u.client_algo_id, u.status, u.algo_id,
                   u.transaction_time)  # fmt: skip

    @classmethod
    def from_rest(cls, row: Mapping[str, Any]) -> ProtectiveOrder:
        """A row of GET /fapi/v1/openAlgoOrders (or a legacy /openOrders row)."""
        trig = row.get("triggerPrice", row.get("stopPrice", "0"))

        def flag(k: str) -> bool:
            return str(row.get(k, "false")).lower() == "true"

        return cls(
            str(row["symbol"]), str(row.get("orderType", row.get("type", ""))),
            str(row["side"]), Decimal(str(trig or "0")), flag("closePosition"),
            flag("reduceOnly"), str(row.get("clientAlgoId", row.get("clientOrderId", ""))),
            str(row.get("algoStatus", row.get("status", "NEW"))),
            int(row.get("algoId") or 0), int(row.get("createTime") or row.get("time") or 0),
        )  # fmt: skip


def as_protective(order: ProtectiveOrder | AlgoUpdate | Mapping[str, Any]) -> ProtectiveOrder:
    if isinstance(order, ProtectiveOrder):
        return order
    if isinstance(order, AlgoUpdate):
        return ProtectiveOrder.from_algo_update(order)
    return ProtectiveOrder.from_rest(order)


def _covers(order: ProtectiveOrder, pos: Position, types: frozenset[str]) -> bool:
    closing_side = "SELL" if pos.size > 0 else "BUY"
    return (
        order.symbol == pos.symbol
        and order.order_type in types
        and order.side == closing_side
        and (order.close_position or order.reduce_only)
        and order.status in _OPEN_ALGO
    )


def protection_triggers(
    view: PositionView, cfg: RuleConfig, atr: float | None, filters: SymbolFilters | None
) -> tuple[Decimal, Decimal]:
    """(stop, take-profit) trigger prices: the entry record's, else entry -/+ ATR multiples,
    else fixed fractions of entry; rounded to the tick toward the entry (tighter stop,
    nearer target)."""
    pos, d, sign = view.position, view.matching_decision(), view.direction
    entry = pos.entry_price
    if d is not None and d.stop_price > 0 and d.take_profit_price > 0:
        stop, tp = d.stop_price, d.take_profit_price
    elif atr is not None and atr > 0 and math.isfinite(atr):
        a = Decimal(repr(atr))
        stop, tp = entry - sign * cfg.stop_atr_mult * a, entry + sign * cfg.take_profit_atr_mult * a
    else:
        stop = entry * (1 - sign * cfg.fallback_stop_fraction)
        tp = entry * (1 + sign * cfg.fallback_take_profit_fraction)
    if filters is not None:
        stop = round_price(max(stop, _ZERO), filters.tick_size, "up" if sign > 0 else "down")
        tp = round_price(max(tp, _ZERO), filters.tick_size, "down" if sign > 0 else "up")
    return stop, tp


def check_protection(
    view: PositionView,
    open_orders: Iterable[ProtectiveOrder | AlgoUpdate | Mapping[str, Any]],
    cfg: RuleConfig,
    now_ms: int,
    *,
    atr: float | None = None,
    filters: SymbolFilters | None = None,
) -> ProtectionDecision | ExitDecision | None:
    """A position must have a stop and a take-profit on the exchange once the grace after
    opening has passed (a fresh entry's stops may still be in flight)."""
    if not cfg.protection_enabled or now_ms - view.open_time_ms < cfg.protection_grace_ms:
        return None
    if view.position.size == 0:
        return None
    pos = view.position
    orders = [as_protective(o) for o in open_orders]
    has_stop = any(_covers(o, pos, STOP_TYPES) for o in orders)
    has_tp = any(_covers(o, pos, TAKE_PROFIT_TYPES) for o in orders)
    if has_stop and has_tp:
        return None
    stop, tp = protection_triggers(view, cfg, atr, filters)
    price, sign = view.mark(), view.direction
    if not has_stop and (price - stop) * sign <= 0:
        text = f"stop missing and already crossed: price {price} vs stop {stop}"
        return exit_decision(view, ExitRule.STOP_LOSS, text, Urgency.IMMEDIATE, filters)
    if not has_tp and (tp - price) * sign <= 0:
        text = f"take-profit missing and already reached: price {price} vs target {tp}"
        return exit_decision(view, ExitRule.TAKE_PROFIT, text, Urgency.NORMAL, filters)
    side = "SELL" if sign > 0 else "BUY"
    legs: list[tuple[str, str, Decimal, str]] = []
    if not has_stop and stop > 0:
        legs.append(("stop", "STOP_MARKET", stop, "protect_stop"))
    if not has_tp and tp > 0:
        legs.append(("take_profit", "TAKE_PROFIT_MARKET", tp, "protect_take_profit"))
    if not legs:
        return None
    intents = tuple(
        OrderIntent(
            symbol=pos.symbol,
            side=side,
            order_type=otype,
            quantity=None,
            client_order_id=close_order_id(pos.symbol, view.open_time_ms, code),
            purpose=purpose,
            stop_price=trig,
            close_position=True,
            reason=f"re-place missing {purpose} at {trig}",
        )  # fmt: skip
        for purpose, otype, trig, code in legs
    )
    missing = tuple(leg[0] for leg in legs)
    return ProtectionDecision(
        pos.symbol, missing, intents, f"missing on exchange: {', '.join(missing)}"
    )


def group_by_symbol(
    orders: Iterable[ProtectiveOrder | AlgoUpdate | Mapping[str, Any]],
) -> dict[str, list[ProtectiveOrder]]:
    out: dict[str, list[ProtectiveOrder]] = {}
    for o in orders:
        p = as_protective(o)
        out.setdefault(p.symbol, []).append(p)
    return out
