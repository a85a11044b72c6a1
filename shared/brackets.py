"""Leverage brackets: how much position notional a symbol allows at which leverage.

WHY: Binance refuses an order (-2027, "Exceeded the maximum allowable position at current
leverage") when the position it would make is larger than the cap of the bracket that
still allows the symbol's leverage.  The cap falls as leverage rises (an altcoin: 10k at
50x, 50k at 25x, 250k at 20x, ...), so a trader that picks its leverage first and its size
second must check the pair against the brackets, or its largest, best-scored entries are
the ones the exchange rejects.  `GET /fapi/v1/leverageBracket` (weight 1, signed) gives
them; they rarely change, so a service reads them at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.errors import MessageError, excerpt

__all__ = ["Bracket", "max_leverage_for", "max_notional_at", "parse_leverage_brackets"]


@dataclass(frozen=True, slots=True)
class Bracket:
    """One tier: positions with notional in (floor, cap] may use up to `max_leverage`."""

    notional_floor: Decimal
    notional_cap: Decimal
    max_leverage: int
    maint_margin_ratio: Decimal
    maint_amount: Decimal  # Binance's `cum`


def _bracket(row: Mapping[str, Any]) -> Bracket:
    return Bracket(
        Decimal(str(row["notionalFloor"])), Decimal(str(row["notionalCap"])),
        int(row["initialLeverage"]), Decimal(str(row["maintMarginRatio"])),
        Decimal(str(row.get("cum", 0))),
    )  # fmt: skip


def parse_leverage_brackets(resp: Any) -> dict[str, tuple[Bracket, ...]]:
    """symbol -> its brackets by rising notional, from the endpoint's answer (a list of
    `{symbol, brackets}`, or one such object when a symbol was asked for)."""
    entries: Iterable[Any] = [resp] if isinstance(resp, dict) else resp
    if not isinstance(entries, list | tuple | Sequence):
        raise MessageError("leverageBracket: expected a list", excerpt(resp))
    out: dict[str, tuple[Bracket, ...]] = {}
    for entry in entries:
        try:
            rows = sorted((_bracket(r) for r in entry["brackets"]), key=lambda b: b.notional_cap)
            out[str(entry["symbol"])] = tuple(rows)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise MessageError(f"bad leverageBracket entry: {exc!r}", excerpt(entry)) from None
    return out


def max_leverage_for(brackets: Sequence[Bracket], notional: Decimal) -> int | None:
    """The highest leverage a position of `notional` may have (None: no brackets known,
    0: larger than the last cap, no leverage allows it)."""
    if not brackets:
        return None
    for b in brackets:
        if notional <= b.notional_cap:
            return b.max_leverage
    return 0


def max_notional_at(brackets: Sequence[Bracket], leverage: int) -> Decimal | None:
    """The largest position notional allowed at `leverage` (None: no brackets known or no
    bracket allows that leverage)."""
    caps = [b.notional_cap for b in brackets if b.max_leverage >= leverage]
    return max(caps) if caps else None
