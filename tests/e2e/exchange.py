"""The exchange's side of the story, as the simulator reports it.

Rows have Binance's own field names (`positionAmt`, `triggerPrice`, ...): the simulator
renders its engine state with the same views its REST API serves.  Sources:
- the admin API (`/admin/...`, never rate limited, never hit by an injected REST fault),
  sampled throughout the run;
- signed REST with the planted account key (`fetch_rest`), used only when no fault is
  pending, as a cross-check of the final state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

STOP_TYPES = frozenset({"STOP_MARKET", "STOP"})


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return Decimal(0)


@dataclass(frozen=True)
class ExPosition:
    symbol: str
    size: Decimal  # signed, > 0 long
    entry_price: Decimal
    leverage: int | None
    notional: Decimal
    margin: Decimal  # initial margin of the position (notional / leverage)

    @property
    def effective_leverage(self) -> float | None:
        if self.margin <= 0:
            return None
        return float(abs(self.notional) / self.margin)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ExPosition:
        lev = row.get("leverage")
        notional = _dec(row.get("notional", "0"))
        pim = row.get("positionInitialMargin")
        if pim is None:
            margin = abs(notional) / Decimal(int(lev)) if lev else Decimal(0)
        else:
            margin = _dec(pim)
        return cls(
            str(row["symbol"]),
            _dec(row["positionAmt"]),
            _dec(row.get("entryPrice", "0")),
            int(lev) if lev not in (None, "") else None,
            notional,
            margin,
        )


@dataclass(frozen=True)
class ExAlgo:
    symbol: str
    side: str
    order_type: str
    close_position: bool
    reduce_only: bool
    quantity: Decimal
    trigger_price: Decimal
    client_id: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ExAlgo:
        def flag(v: Any) -> bool:
            return v is True or str(v).lower() == "true"

        return cls(
            str(row["symbol"]),
            str(row.get("side", "")),
            str(row.get("orderType") or row.get("type") or ""),
            flag(row.get("closePosition")),
            flag(row.get("reduceOnly")),
            _dec(row.get("quantity") or row.get("origQty") or "0"),
            _dec(row.get("triggerPrice") or row.get("stopPrice") or "0"),
            str(row.get("clientAlgoId") or row.get("clientOrderId") or ""),
        )


@dataclass
class ExchangeSnapshot:
    sim_ms: int
    positions: dict[str, ExPosition] = field(default_factory=dict)
    algos: list[ExAlgo] = field(default_factory=list)
    balances: dict[str, Decimal] = field(default_factory=dict)  # asset -> wallet balance

    def has_stop(self, symbol: str, size: Decimal) -> bool:
        """An open stop-loss that closes the whole position: opposite side, stop type,
        closePosition or reduce-only covering the size."""
        close_side = "SELL" if size > 0 else "BUY"
        for a in self.algos:
            if a.symbol != symbol or a.side != close_side or a.order_type not in STOP_TYPES:
                continue
            if a.close_position or (a.reduce_only and a.quantity >= abs(size)):
                return True
        return False

    @classmethod
    def from_rows(cls, sim_ms: int, positions: list[dict[str, Any]],
                  algos: list[dict[str, Any]], balances: list[dict[str, Any]]) -> ExchangeSnapshot:  # fmt: skip
        snap = cls(sim_ms)
        for row in positions:
            p = ExPosition.from_row(row)
            if p.size != 0:
                snap.positions[p.symbol] = p
        snap.algos = [ExAlgo.from_row(r) for r in algos]
        for row in balances:
            snap.balances[str(row["asset"])] = _dec(row.get("balance") or row.get("walletBalance"))
        return snap
