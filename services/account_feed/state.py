"""Account state from events and REST snapshots, ordered by event time (pure).

WHY writes, not a state object: the state that matters lives in Redis, shared by every
process (account_feed, and rest_fallback / position_controller when they repair it).
So an event is first turned into a list of *writes* — "position BTCUSDT as of E is X",
"balance USDT as of E is Y", "leverage BTCUSDT as of E is 20" — and one applier decides
atomically whether each write is newer than what is stored.  There are two appliers
with one rule, and a test drives both with the same random writes:

- `AccountState` below, the reference model (tests, backtests, reasoning);
- the Lua script in `cache.py`, which runs the rule inside Redis so that two processes
  can never regress a hash between a read and a write.

The rule: every *slot* (`position:<SYM>`, `balance:<ASSET>`, `leverage:<SYM>`) keeps the
event time of the write that set it; a write whose time is OLDER than the slot's is
dropped; an equal time is applied (arrival order is all we know then; ACCOUNT_UPDATE
numbers are absolute, so applying the same state twice is harmless).

Closed positions (size 0) are deleted from the cache, and their slot keeps the close's
event time, so a late older event cannot resurrect them.  `leverage` is never part of a
position write: it is filled in from the leverage slot when the position is applied, and
a leverage write updates an existing position hash.

Reconciliation (`snapshot_writes`) turns REST rows into the same writes, timed
`max(as_of, updateTime)` where `as_of` is the exchange's time taken just BEFORE the
snapshot was requested: the snapshot is at least that new, so a streamed event older
than it is superseded and one newer than it still wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from shared.errors import MessageError, as_decimal, as_int, as_str, as_symbol, excerpt
from shared.models import AccountUpdate, Balance, ConfigUpdate, Position, PositionUpdate

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


@dataclass(frozen=True, slots=True)
class PositionWrite:
    """The position of `symbol` as of `event_time`; None = closed (hash deleted)."""

    symbol: str
    event_time: int
    position: Position | None

    @property
    def slot(self) -> str:
        return f"position:{self.symbol}"


@dataclass(frozen=True, slots=True)
class BalanceWrite:
    asset: str
    event_time: int
    balance: Balance

    @property
    def slot(self) -> str:
        return f"balance:{self.asset}"


@dataclass(frozen=True, slots=True)
class LeverageWrite:
    symbol: str
    event_time: int
    leverage: int

    @property
    def slot(self) -> str:
        return f"leverage:{self.symbol}"


Write = PositionWrite | BalanceWrite | LeverageWrite


def position_fields(position: Position) -> dict[str, str]:
    """The position hash without `leverage` (the applier adds it from the leverage slot)."""
    fields = position.to_hash()
    fields.pop("leverage", None)
    return fields


# ---- events -> writes ---------------------------------------------------------------------


def _pick(items: Iterable[Any]) -> dict[str, Any]:
    """One item per symbol (`PositionUpdate` or `Position`).  The cache is one hash per
    symbol (one-way mode, side `BOTH`); in hedge mode Binance reports LONG and SHORT
    too: the `BOTH` entry wins, else the first non-zero one, else the first."""
    chosen: dict[str, Any] = {}
    for e in items:
        have = chosen.get(e.symbol)
        size, have_size = _size(e), _size(have) if have is not None else _ZERO
        if (
            have is None
            or (e.position_side == "BOTH" and have.position_side != "BOTH")
            or (have.position_side != "BOTH" and have_size == 0 and size != 0)
        ):
            chosen[e.symbol] = e
    return chosen


def _size(item: Any) -> Decimal:
    return item.amount if isinstance(item, PositionUpdate) else item.size  # type: ignore[no-any-return]


def account_update_writes(update: AccountUpdate) -> list[Write]:
    """Balances and positions of one ACCOUNT_UPDATE, all timed by its event time `E`."""
    t = update.event_time
    out: list[Write] = [BalanceWrite(b.asset, t, b) for b in update.balances]
    for e in _pick(update.positions).values():
        pos = None if e.amount == 0 else Position.from_update(e, t, None)
        out.append(PositionWrite(e.symbol, t, pos))
    return out


def config_update_writes(update: ConfigUpdate) -> list[Write]:
    """ACCOUNT_CONFIG_UPDATE: a leverage change (multi-assets mode changes no cache)."""
    if update.symbol is None or update.leverage is None:
        return []
    return [LeverageWrite(update.symbol, update.event_time, update.leverage)]


# ---- REST snapshot -> writes (reconciliation) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What reconciliation fetched.  `as_of`: the exchange's time just before the
    requests; `leverage` empty when it could not be fetched (positions keep theirs)."""

    as_of: int
    positions: tuple[Position, ...]
    balances: tuple[Balance, ...]
    leverage: Mapping[str, int] = field(default_factory=dict)


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
    """`/fapi/v3/balance` rows -> balances (`balance` is the wallet balance)."""
    if not isinstance(rows, list):
        raise MessageError("balance answer is not a list", excerpt(rows))
    out, bad = [], 0
    for row in rows:
        try:
            if not isinstance(row, dict):
                raise MessageError("balance row is not a mapping", excerpt(row))
            updated = as_int(row.get("updateTime", 0), "updateTime")
            out.append(
                Balance(
                    as_str(row["asset"], "asset"),
                    as_decimal(row["balance"], "balance"),
                    as_decimal(row.get("crossWalletBalance", row["balance"]), "cw"),
                    _ZERO,
                    max(as_of, updated),
                )
            )
        except (MessageError, KeyError):
            bad += 1
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


def snapshot_writes(snapshot: Snapshot, cached_symbols: Iterable[str]) -> list[Write]:
    """Writes that make the cache equal the exchange: leverage first (positions pick it
    up), then every position the exchange has, then removals of positions it no longer
    has (zero rows and cached symbols absent from the answer), then balances."""
    t = snapshot.as_of
    out: list[Write] = [LeverageWrite(s, t, lev) for s, lev in sorted(snapshot.leverage.items())]
    rows = _pick(snapshot.positions)
    for symbol, p in sorted(rows.items()):
        if p.size != 0:
            when = max(t, p.updated_at)
            out.append(PositionWrite(symbol, when, replace(p, leverage=None, updated_at=when)))
    for symbol in sorted(set(rows) | set(cached_symbols)):
        p = rows.get(symbol)
        if p is None or p.size == 0:
            out.append(PositionWrite(symbol, max(t, p.updated_at) if p else t, None))
    out.extend(BalanceWrite(b.asset, b.updated_at, b) for b in snapshot.balances)
    return out


# ---- the reference applier -------------------------------------------------------------------


class AccountState:
    """In-memory account cache with the event-time rule (see module doc).  The Redis
    applier (`cache.AccountCache`) must end in the same state for the same writes."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.balances: dict[str, Balance] = {}
        self.leverage: dict[str, int] = {}
        self.times: dict[str, int] = {}

    def apply(self, write: Write) -> bool:
        """Apply one write; False when it is older than the slot's state (dropped)."""
        prev = self.times.get(write.slot)
        if prev is not None and write.event_time < prev:
            return False
        self.times[write.slot] = write.event_time
        if isinstance(write, PositionWrite):
            if write.position is None:
                self.positions.pop(write.symbol, None)
            else:
                lev = self.leverage.get(write.symbol)
                self.positions[write.symbol] = replace(write.position, leverage=lev)
        elif isinstance(write, BalanceWrite):
            self.balances[write.asset] = write.balance
        else:
            self.leverage[write.symbol] = write.leverage
            pos = self.positions.get(write.symbol)
            if pos is not None:
                self.positions[write.symbol] = replace(pos, leverage=write.leverage)
        return True

    def apply_all(self, writes: Iterable[Write]) -> list[bool]:
        return [self.apply(w) for w in writes]
