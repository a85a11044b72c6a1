"""The trader's two Redis round trips per decided minute, each ONE script call.

WHY scripts: a minute with 200 symbols means ~200 position hashes to read and ~200-400
decisions to XADD.  As pipelines, redis-py packs every command in Python (~20-40 us each,
more on a busy 2-core machine), which alone ate most of the 50 ms budget in the benchmark;
as one EVALSHA with the keys (read) or one msgpack blob (write) the loop runs inside Redis.

- `read_account`: EXISTS halt, HGET account_feed's heartbeat status, HMGET the event times
  of the position slots the trader holds, HGETALL balance, then HGETALL of every position
  hash - returned as flat field/value lists, the empty ones left out (a symbol never
  traded has no hash; 200 empty replies would cost the trader more to parse than the
  few real ones).
- `publish_events`: XADD (MAXLEN ~) each of a minute's events (decisions), then SET the
  decided minute, atomically: a minute is never marked decided without its decisions, or
  published without being marked.  The constant fields (type, event time, version) go
  once and the script writes each entry exactly as `shared.codec.encode_event` would (so
  `decode_event` / `slt tail` read them as before): only symbol and packed data travel
  per decision, which keeps the blob and the Python work per decision small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from shared.codec import SCHEMA_VERSION
from shared.keys import Keys

# KEYS[1] halt, KEYS[2] health hash, KEYS[3] account event-time hash, KEYS[4] balance hash,
# KEYS[5..] position hashes; ARGV: event-time fields to read (symbols the trader holds).
READ_ACCOUNT_LUA = """
local slots = {}
if #ARGV > 0 then
  local got = redis.call('HMGET', KEYS[3], unpack(ARGV))
  for i = 1, #ARGV do slots[i] = got[i] or '' end
end
local out = {redis.call('EXISTS', KEYS[1]), redis.call('HGET', KEYS[2], 'status') or '', slots}
out[4] = redis.call('HGETALL', KEYS[4])
for i = 5, #KEYS do
  local h = redis.call('HGETALL', KEYS[i])
  if #h > 0 then out[#out + 1] = h end
end
return out
"""

# KEYS[1] stream, KEYS[2] last-decided key; ARGV[1] maxlen, ARGV[2] minute, ARGV[3] type,
# ARGV[4] event time, ARGV[5] schema version, ARGV[6] msgpack flat list [symbol, data,
# symbol, data, ...] (no bin type: Redis 7.0's cmsgpack does not read it).  The field
# order is encode_event's: type, symbol, event_time, v, data.
PUBLISH_EVENTS_LUA = """
local batch = cmsgpack.unpack(ARGV[6])
local stream, maxlen, etype, etime, v = KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5]
for i = 1, #batch, 2 do
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', etype, 'symbol', batch[i],
             'event_time', etime, 'v', v, 'data', batch[i + 1])
end
redis.call('SET', KEYS[2], ARGV[2])
return #batch / 2
"""


def _pairs(flat: Sequence[Any]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class TraderRedis:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._read = redis.register_script(READ_ACCOUNT_LUA)
        self._publish_events = redis.register_script(PUBLISH_EVENTS_LUA)

    async def read_account(
        self, asset: str, symbols: Sequence[str], watch: Sequence[str] = ()
    ) -> tuple[bool, bytes, dict[bytes, bytes], list[dict[bytes, bytes]], dict[str, int]]:
        """(halted, account_feed status, balance hash, the non-empty position hashes in
        symbol order, event time of each `watch` symbol's position slot that has one) - one
        snapshot."""
        k = self.keys
        keys = [k.halt, k.health("account_feed"), k.account_state, k.balance(asset),
                *map(k.position, symbols)]  # fmt: skip
        raw = await self._read(keys=keys, args=[k.position_slot(s) for s in watch])
        status = raw[1] if isinstance(raw[1], bytes) else str(raw[1]).encode()
        slots: dict[str, int] = {}
        for symbol, value in zip(watch, raw[2], strict=False):
            try:
                slots[symbol] = int(value)
            except (TypeError, ValueError):
                continue  # no slot (never traded) or damaged: confirms nothing
        return bool(raw[0]), status, _pairs(raw[3]), [_pairs(h) for h in raw[4:]], slots

    async def publish_events(
        self, etype: str, event_time: int, events: Sequence[tuple[str, bytes]], minute: int,
        maxlen: int,
    ) -> int:  # fmt: skip
        """One minute's `(symbol, packed data)` events (`shared.codec.pack`), in order."""
        blob = msgpack.packb([x for e in events for x in e], use_bin_type=False)
        keys = [self.keys.stream_signals, self.keys.trader_last_decided]
        args = [maxlen, str(minute), etype, str(int(event_time)), str(SCHEMA_VERSION), blob]
        return int(await self._publish_events(keys=keys, args=args))
