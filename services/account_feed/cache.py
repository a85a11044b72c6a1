"""The account cache in Redis: writes and stream entries applied in ONE Lua call.

WHY one script: an ACCOUNT_UPDATE must reach its position hash in one round trip (the
position controller's emergency close waits on it), and the event-time rule of
`state.py` must hold even when two processes write (account_feed and a repairing
rest_fallback / position_controller): a read-compare-write from Python could interleave
with another writer, a script cannot.  The same call XADDs the batch's events to
`slt:stream:account` (MAXLEN ~), after the state, so a consumer that reads an event
finds the caches already updated, and a failed call leaves neither half behind.

Layout written (plain strings, readable in redis-cli):
  position:<SYM>        `Position.to_hash()`; `leverage` from account:leverage ("" unknown);
                        deleted when the position closes
  balance:<ASSET>       `Balance.to_hash()`
  account:leverage      symbol -> leverage
  account:event_time    slot (`position:<SYM>`, `balance:<ASSET>`, `leverage:<SYM>`) ->
                        event time (ms) of the write that set it

Other services repairing positions should call `AccountCache.apply` too, so they obey
the same rule (a REST row older than a streamed event is dropped, never written back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis

from services.account_feed.state import (
    BalanceWrite,
    LeverageWrite,
    PositionWrite,
    Write,
    position_fields,
)
from shared.keys import Keys
from shared.models import Balance, Position

__all__ = ["APPLY_LUA", "AccountCache", "build_call"]

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
