"""account_feed's events and REST rows -> cache writes (pure).

WHY writes, not a state object: the state that matters lives in Redis, shared by every
process that writes it.  The write types, the event-time rule and its two appliers (the
reference `AccountState` and the Lua script of `AccountCache`), and `snapshot_writes`
live in `shared/account_cache.py`, because rest_fallback writes the same hashes.  Here
stays what only account_feed parses: ACCOUNT_UPDATE / ACCOUNT_CONFIG_UPDATE events and
the REST rows its reconciliation fetches (balances timed `max(as_of, updateTime)`).
The shared names are re-exported for the existing importers.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from shared.account_cache import (
    AccountState,
    BalanceWrite,
    LeverageWrite,
    PositionWrite,
    Snapshot,
    Write,
    pick_per_symbol,
    position_fields,
    snapshot_writes,
)
from shared.errors import MessageError, as_int, as_symbol, excerpt
from shared.models import AccountUpdate, Balance, ConfigUpdate, Position

__all__ = [
    "AccountState",
    "BalanceWrite",
    "LeverageWrite",
    "PositionWrite",
    "Snapshot",
    "Write",
    "account_update_writes",
    "config_update_writes",
    "parse_balance_rows",
    "parse_leverage_rows",
    "parse_position_rows",
    "position_fields",
    "snapshot_writes",
]

_ZERO = Decimal(0)


# ---- events -> writes ---------------------------------------------------------------------


def account_update_writes(update: AccountUpdate) -> list[Write]:
    """Balances and positions of one ACCOUNT_UPDATE, all timed by its event time `E`."""
    t = update.event_time
    out: list[Write] = [BalanceWrite(b.asset, t, b) for b in update.balances]
    for e in pick_per_symbol(update.positions).values():
        pos = None if e.amount == 0 else Position.from_update(e, t, None)
        out.append(PositionWrite(e.symbol, t, pos))
    return out


def config_update_writes(update: ConfigUpdate) -> list[Write]:
    """ACCOUNT_CONFIG_UPDATE: a leverage change (multi-assets mode changes no cache)."""
    if update.symbol is None or update.leverage is None:
        return []
    return [LeverageWrite(update.symbol, update.event_time, update.leverage)]


# ---- REST rows (reconciliation; the writes: shared.account_cache.snapshot_writes) ---------------------------------------------


def parse_position_rows(rows: Any) -> tuple[list[Position], int]:
    """positionRisk (v3) rows -> positions (zero sizes included); bad rows are counted."""
    if not isinstance(rows, list):
        raise MessageError("positionRisk answer is not a list", excerpt(rows))
    out, bad = [], 0
    for row in rows:
        try:
            out.append(Position.from_position_risk(row))
        except MessageError:
            bad += 1
    return out, bad


def parse_balance_rows(rows: Any, as_of: int) -> tuple[list[Balance], int]:
    """`/fapi/v3/balance` rows -> balances timed no earlier than the snapshot `as_of`."""
    if not isinstance(rows, list):
        raise MessageError("balance answer is not a list", excerpt(rows))
    out, bad = [], 0
    for row in rows:
        try:
            b = Balance.from_rest_row(row)
        except MessageError:
            bad += 1
            continue
        out.append(replace(b, updated_at=max(as_of, b.updated_at)))
    return out, bad


def parse_leverage_rows(rows: Any) -> tuple[dict[str, int], int]:
    """symbolConfig (or v2 positionRisk) rows -> symbol -> leverage."""
    if not isinstance(rows, list):
        raise MessageError("leverage answer is not a list", excerpt(rows))
    out: dict[str, int] = {}
    bad = 0
    for row in rows:
        try:
            if not isinstance(row, dict):
                raise MessageError("leverage row is not a mapping", excerpt(row))
            lev = as_int(row["leverage"], "leverage")
            if lev < 1:
                raise MessageError(f"leverage {lev} < 1")
            out[as_symbol(row["symbol"])] = lev
        except (MessageError, KeyError):
            bad += 1
    return out, bad
