"""The ledger's parts: a lot (one symbol's open round trip), the bounded memories that make
fills and trades exactly-once, and the exit reason a closing fill carries (from our own
client order ids, the exchange's order types, or "manual")."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Decimal

from services.position_controller.order_ids import reason_from_order_id
from services.position_controller.protection import STOP_TYPES, TAKE_PROFIT_TYPES
from services.trader.order_ids import PURPOSE_CODES
from shared.models import OrderUpdate

_ZERO = Decimal(0)
EXIT_REASONS = frozenset(
    {"stop_loss", "take_profit", "emergency", "invalidation", "counter_trend", "time_stop",
     "liquidation", "manual", "flip", "external"}
)  # fmt: skip
_PROTECT = {"protect_stop": "stop_loss", "protect_take_profit": "take_profit"}
# The trader's protective orders: `slt-s-...` stop, `slt-t-...` take-profit.
_TRADER_IDS = {
    f"slt-{PURPOSE_CODES[p]}-": reason
    for p, reason in (("stop", "stop_loss"), ("take_profit", "take_profit"))
}


@dataclass(slots=True)
class Lot:
    """One open position's life so far (mutable; owned by the Ledger)."""

    symbol: str
    side: str  # LONG | SHORT
    open_time: int
    entry_client_id: str
    qty: Decimal = _ZERO  # open size, > 0
    entry_qty: Decimal = _ZERO
    entry_notional: Decimal = _ZERO
    exit_qty: Decimal = _ZERO
    exit_notional: Decimal = _ZERO
    realized: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO
    last_time: int = 0
    leverage: int | None = None
    estimated: bool = False  # part of it was inferred (adopted / external), not filled
    est_qty: Decimal = _ZERO  # of exit_qty: reduced by `resync` at an estimated price
    est_notional: Decimal = _ZERO
    est_realized: Decimal = _ZERO

    @property
    def direction(self) -> int:
        return 1 if self.side == "LONG" else -1

    @property
    def entry_price(self) -> Decimal:
        return self.entry_notional / self.entry_qty if self.entry_qty else _ZERO

    @property
    def trade_id(self) -> str:
        return f"{self.symbol}-{self.open_time}"

    def add_entry(self, qty: Decimal, price: Decimal, time_ms: int) -> None:
        self.qty += qty
        self.entry_qty += qty
        self.entry_notional += qty * price
        self.last_time = max(self.last_time, time_ms)

    def add_exit(self, qty: Decimal, price: Decimal, time_ms: int) -> None:
        self.qty -= qty
        self.exit_qty += qty
        self.exit_notional += qty * price
        self.last_time = max(self.last_time, time_ms)


class Lru:
    """A bounded set: remembers the last `limit` keys."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._d: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True when the key is new."""
        if key in self._d:
            self._d.move_to_end(key)
            return False
        self._d[key] = None
        if len(self._d) > self.limit:
            self._d.popitem(last=False)
        return True

    def discard(self, key: Hashable) -> None:
        self._d.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._d


def fill_key(fill: OrderUpdate) -> Hashable:
    """(symbol, trade id `t`), or (order id, filled quantity) when `t` is 0."""
    if fill.trade_id:
        return (fill.symbol, fill.trade_id)
    return (fill.symbol, "o", fill.order_id, fill.filled_qty)


def exit_reason(fill: OrderUpdate, algo_types: dict[int, str] | None = None) -> str:
    """Why the fill that closed a position happened, from its order type and client id.

    Binance liquidation orders have type LIQUIDATION and client ids `autoclose-...`; ADL
    uses `adl_autoclose`; a delisting settlement `settlement_autoclose-...` (external).
    Our own ids carry their reason; a triggered conditional order keeps its original type
    (`ot`).  Anything else is a manual order (an id we do not know)."""
    cid = fill.client_order_id
    if "LIQUIDATION" in (fill.order_type, fill.original_type):
        return "liquidation"
    if cid.startswith(("autoclose-", "adl_autoclose")):
        return "liquidation"
    if cid.startswith("settlement_autoclose"):
        return "external"
    ours = reason_from_order_id(cid)
    if ours is not None:
        return _PROTECT.get(ours, ours)
    for prefix, reason in _TRADER_IDS.items():
        if cid.startswith(prefix):
            return reason
    otype = fill.original_type or fill.order_type
    if algo_types is not None and otype not in STOP_TYPES | TAKE_PROFIT_TYPES:
        otype = algo_types.get(fill.order_id, otype)
    if otype in STOP_TYPES:
        return "stop_loss"
    if otype in TAKE_PROFIT_TYPES:
        return "take_profit"
    return "manual"
