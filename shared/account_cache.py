"""The account cache in Redis (`position:<SYM>`, `balance:<ASSET>`): its ONE writer.

WHY here: account_feed (stream events, reconciliation) and rest_fallback (while
account_feed is down) both write these hashes; with two writers, each with its own
rules, a REST snapshot could regress newer streamed state or wipe `leverage`.  So every
writer turns what it saw into *writes* — "position BTCUSDT as of E is X", "balance USDT
as of E is Y", "leverage BTCUSDT as of E is 20" — and `AccountCache.apply` applies them
in ONE Lua call by the event-time rule:

- every *slot* (`position:<SYM>`, `balance:<ASSET>`, `leverage:<SYM>`) keeps the event
  time of the write that set it; a write OLDER than the slot's is dropped; an equal time
  is applied (ACCOUNT_UPDATE numbers are absolute: applying a state twice is harmless);
- closed positions (None) are deleted and their slot keeps the close's time, so a late
  older write cannot resurrect them;
- `leverage` is never part of a position write: the script fills it in from the
  leverage hash, and a leverage write updates an existing position hash.  A writer
  without leverage (v3 positionRisk has none) therefore cannot wipe it.

A script, not read-compare-write from Python, because two processes may write at once.
The same call XADDs the batch's stream entries after the state, so a consumer that reads
an event finds the caches already updated.  `AccountState` is the in-memory reference
model of the same rule (tests drive both with the same random writes).

Layout written (plain strings, readable in redis-cli):
  position:<SYM>        `Position.to_hash()`; `leverage` from account:leverage ("" unknown)
  balance:<ASSET>       `Balance.to_hash()`
  account:leverage      symbol -> leverage
  account:event_time    slot -> event time (ms) of the write that set it
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import msgpack
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.models import Balance, Position, PositionUpdate

__all__ = [
    "APPLY_LUA",
    "AccountCache",
    "AccountState",
    "BalanceWrite",
    "LeverageWrite",
    "PositionWrite",
    "Snapshot",
    "Write",
    "build_call",
    "pick_per_symbol",
    "position_fields",
    "snapshot_writes",
]

_ZERO = Decimal(0)


# ---- writes -----------------------------------------------------------------------------


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


def pick_per_symbol(items: Iterable[Any]) -> dict[str, Any]:
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


# ---- REST snapshot -> writes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a REST repair fetched.  `as_of`: the exchange's time just BEFORE the requests
    (a lower bound of the snapshot's time).  `leverage` empty when not fetched: positions
    keep the cached one.

    `floor`: how a row is timed.  True (account_feed's reconciliation, which owns the
    stream): `max(as_of, updateTime)` — the snapshot is at least `as_of` new, so stream
    state older than the request is superseded.  False (rest_fallback, a stand-in while
    the feed is down): the row's own `updateTime`, `as_of` only for a row without one (0)
    and for removals — the most conservative claim, so a repair never beats a state the
    feed wrote after the row last changed."""

    as_of: int
    positions: tuple[Position, ...]
    balances: tuple[Balance, ...]
    leverage: Mapping[str, int] = field(default_factory=dict)
    floor: bool = True

    def row_time(self, updated: int) -> int:
        if self.floor:
            return max(self.as_of, updated)
        return updated if updated > 0 else self.as_of


def snapshot_writes(snapshot: Snapshot, cached_symbols: Iterable[str]) -> list[Write]:
    """Writes that make the cache equal the exchange: leverage first (positions pick it
    up), then every position the exchange has, then removals of positions it no longer
    has (zero rows and cached symbols absent from the answer), then balances."""
    t = snapshot.as_of
    out: list[Write] = [LeverageWrite(s, t, lev) for s, lev in sorted(snapshot.leverage.items())]
    rows = pick_per_symbol(snapshot.positions)
    for symbol, p in sorted(rows.items()):
        if p.size != 0:
            when = snapshot.row_time(p.updated_at)
            out.append(PositionWrite(symbol, when, replace(p, leverage=None, updated_at=when)))
    for symbol in sorted(set(rows) | set(cached_symbols)):
        p = rows.get(symbol)
        if p is None or p.size == 0:
            out.append(PositionWrite(symbol, snapshot.row_time(p.updated_at) if p else t, None))
    for b in snapshot.balances:
        when = snapshot.row_time(b.updated_at)
        out.append(BalanceWrite(b.asset, when, replace(b, updated_at=when)))
    return out


# ---- the reference applier ----------------------------------------------------------------


class AccountState:
    """In-memory account cache with the event-time rule (see module doc).  The Redis
    applier (`AccountCache`) must end in the same state for the same writes."""

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


# ---- the Redis applier ------------------------------------------------------------------

# KEYS: 1 state hash, 2 leverage hash, 3 stream, 3+i the hash of write i.
# ARGV: 1 stream maxlen, 2 the batch as msgpack: [writes, entries], where a write is
#       [kind (P/X/B/L), slot, event time (decimal string), name, [field, value, ...]]
#       and an entry is [field, value, ...].  One packed argument instead of ~50 per
#       event: redis-py packs every argument in Python, which costs more than the script.
# Returns one 0/1 per write (1 = applied, 0 = older than the stored state: dropped).
APPLY_LUA = """
local state, levkey, stream = KEYS[1], KEYS[2], KEYS[3]
local maxlen = ARGV[1]
local batch = cmsgpack.unpack(ARGV[2])
local writes, entries = batch[1], batch[2]
local applied = {}
for w = 1, #writes do
  local op = writes[w]
  local kind, slot, et, name, fv = op[1], op[2], op[3], op[4], op[5]
  local key = KEYS[3 + w]
  local prev = redis.call('HGET', state, slot)
  if prev and tonumber(prev) > tonumber(et) then
    applied[w] = 0
  else
    if kind == 'L' then
      local lev = fv[2]
      redis.call('HSET', levkey, name, lev)
      if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'leverage', lev) end
    else
      redis.call('DEL', key)
      if kind ~= 'X' then
        if kind == 'P' then
          fv[#fv + 1] = 'leverage'
          fv[#fv + 1] = redis.call('HGET', levkey, name) or ''
        end
        redis.call('HSET', key, unpack(fv))
      end
    end
    redis.call('HSET', state, slot, et)
    applied[w] = 1
  end
end
for e = 1, #entries do
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entries[e]))
end
return applied
"""

Fields = Mapping[str, str | bytes]


def _write_parts(keys: Keys, w: Write) -> tuple[str, str, str, dict[str, str]]:
    """(hash key, kind, name, fields) of one write."""
    if isinstance(w, PositionWrite):
        if w.position is None:
            return keys.position(w.symbol), "X", w.symbol, {}
        return keys.position(w.symbol), "P", w.symbol, position_fields(w.position)
    if isinstance(w, BalanceWrite):
        return keys.balance(w.asset), "B", w.asset, w.balance.to_hash()
    if isinstance(w, LeverageWrite):
        return keys.position(w.symbol), "L", w.symbol, {"leverage": str(w.leverage)}
    raise TypeError(f"not a write: {w!r}")


def build_call(
    keys: Keys, writes: Sequence[Write], entries: Sequence[Fields], maxlen: int
) -> tuple[list[str], list[str | bytes | int]]:
    """KEYS and ARGV of one APPLY_LUA call (pure, so a test can run the script itself)."""
    script_keys = [keys.account_state, keys.account_leverage, keys.stream_account]
    ops = []
    for w in writes:
        key, kind, name, fields = _write_parts(keys, w)
        script_keys.append(key)
        flat = [x for pair in fields.items() for x in pair]
        ops.append([kind, w.slot, str(int(w.event_time)), name, flat])
    flat_entries = [[x for pair in e.items() for x in pair] for e in entries]
    # raw (str) types only: the cmsgpack bundled with Redis does not read msgpack `bin`
    payload = msgpack.packb([ops, flat_entries], use_bin_type=False)
    return script_keys, [maxlen, payload]


class AccountCache:
    """Applies writes (and publishes stream entries) atomically, one round trip."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, stream_maxlen: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.stream_maxlen = stream_maxlen
        self._script = redis.register_script(APPLY_LUA)

    async def apply(self, writes: Sequence[Write], entries: Sequence[Fields] = ()) -> list[bool]:
        """Apply `writes` by the event-time rule and XADD `entries`; one flag per write
        (False: older than the stored state, dropped).  Raises redis errors as they are."""
        if not writes and not entries:
            return []
        script_keys, args = build_call(self.keys, writes, entries, self.stream_maxlen)
        result = await self._script(keys=script_keys, args=args)
        return [bool(x) for x in result]

    async def cached_symbols(self) -> list[str]:
        """Symbols that have a position hash now (for reconciliation's removals)."""
        head = self.keys.position("")
        out = []
        async for raw in self.redis.scan_iter(match=self.keys.position("*"), count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            out.append(key[len(head) :])
        return sorted(out)

    async def read(self) -> dict[str, Any]:
        """Everything cached, decoded (tests and tools): positions, balances, leverage."""
        positions = {}
        for symbol in await self.cached_symbols():
            raw = await self.redis.hgetall(self.keys.position(symbol))
            if raw:
                positions[symbol] = Position.from_hash(raw)
        balances = {}
        head = self.keys.balance("")
        async for raw_key in self.redis.scan_iter(match=self.keys.balance("*"), count=500):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            raw = await self.redis.hgetall(key)
            if raw:
                balances[key[len(head) :]] = Balance.from_hash(raw)
        lev = await self.redis.hgetall(self.keys.account_leverage)
        leverage = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in lev.items()}
        return {"positions": positions, "balances": balances, "leverage": leverage}
