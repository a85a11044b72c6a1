"""Audit trail of every accepted order id and every fill.

Why: chaos tests kill and restart services mid-order and must prove "0 duplicate orders"; the
exchange is the only party that sees every order, so it keeps the record. A hook lets a caller
stream records elsewhere; `enabled=False` keeps long backtests from growing memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class OrderRecord:
    ts: int
    account_id: str
    symbol: str
    client_id: str
    order_id: int
    kind: str  # "order" | "algo" | "liquidation" | "triggered"
    side: str
    qty: Decimal


@dataclass(frozen=True, slots=True)
class FillRecord:
    ts: int
    account_id: str
    symbol: str
    order_id: int
    client_id: str
    trade_id: int
    side: str
    qty: Decimal
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    maker: bool
    liquidation: bool


@dataclass(frozen=True, slots=True)
class RejectRecord:
    ts: int
    account_id: str
    client_id: str  # "" when the request carried none
    code: int


AuditRecord = OrderRecord | FillRecord | RejectRecord


class AuditLog:
    """Append-only lists of order and fill records (plus an optional hook per record)."""

    def __init__(
        self, enabled: bool = True, hook: Callable[[AuditRecord], None] | None = None
    ) -> None:
        self.enabled = enabled
        self.hook = hook
        self.orders: list[OrderRecord] = []
        self.fills: list[FillRecord] = []
        self.rejects: list[RejectRecord] = []

    def order(self, rec: OrderRecord) -> None:
        if self.enabled:
            self.orders.append(rec)
        if self.hook is not None:
            self.hook(rec)

    def fill(self, rec: FillRecord) -> None:
        if self.enabled:
            self.fills.append(rec)
        if self.hook is not None:
            self.hook(rec)

    def reject(self, ts: int, account_id: str, client_id: str, code: int) -> None:
        rec = RejectRecord(ts, account_id, client_id, code)
        if self.enabled:
            self.rejects.append(rec)
        if self.hook is not None:
            self.hook(rec)

    def duplicate_client_ids(
        self, kinds: tuple[str, ...] = ("order", "algo")
    ) -> list[tuple[str, str]]:
        """(account, client id) pairs accepted more than once among client-sent orders."""
        seen = Counter((r.account_id, r.client_id) for r in self.orders if r.kind in kinds)
        return sorted(k for k, n in seen.items() if n > 1)
