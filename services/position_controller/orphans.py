"""Orphaned protective orders: the stop or target a closed position left on the exchange.

WHY: Binance does not cancel the other leg when a closePosition stop or target fires, nor
both legs when a position is closed at market (a known trap: Binance-docs/
Binance_Futures_python#100).  A leftover take-profit at 110 from yesterday's long would
close today's long at 110 whatever today's target is.  So when the controller sees a
position go flat it asks for the symbol's open algo orders and cancels every close-only
one (closePosition or reduceOnly) created at or before the moment the position went flat.

The time rule is what makes this safe against a fast re-entry: the trader's protective
orders for a NEW position are created after the old one closed, so they are never taken
for orphans.  The sweep runs the same check over its full openAlgoOrders snapshot as the
safety net (for symbols it has not seen flat, an order must be older than `grace_ms`).
The backtest's broker applies the same rule on its own engine (`backtest/broker.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.position_controller.protection import ProtectiveOrder, as_protective

_OPEN = frozenset({"NEW", ""})


@dataclass(frozen=True, slots=True)
class OrphanCheck:
    """Fetch `symbol`'s open algo orders and cancel the orphans (see `orphaned`);
    `orders` given: cancel these (already known to be orphans, from a sweep snapshot)."""

    symbol: str
    flat_since: int
    orders: tuple[ProtectiveOrder, ...] = ()


def orphaned(
    orders: Iterable[ProtectiveOrder | Mapping[str, Any]], symbol: str, flat_since: int
) -> list[ProtectiveOrder]:
    """The open close-only orders of `symbol` created at or before `flat_since`."""
    out = []
    for raw in orders:
        o = as_protective(raw)
        if o.symbol != symbol or o.status not in _OPEN:
            continue
        if (o.close_position or o.reduce_only) and o.create_time <= flat_since:
            out.append(o)
    return out
