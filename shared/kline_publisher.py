"""The ONE exactly-once path for closed klines into Redis, shared by kline_feed and
rest_fallback, plus the REST backfill both use to fill gaps.

Identity of a kline is (symbol, open time).  A Lua script compares the open time with
`HGET <prefix>kline:last_open_time <symbol>` and only when it is newer does, atomically:
`XADD <prefix>stream:klines MAXLEN ~ n` (the bus format of `shared.codec`), `HSET` the
`<prefix>kline:<SYMBOL>` cache hash (the seed's format, `Kline.to_cache_hash()`) and
`HSET` the new last open time.  Anything not newer is a duplicate and changes nothing.
So a reconnect, a duplicate message, a backfill, a second feed instance or rest_fallback
can all offer the same kline: it reaches the stream once.  The check lives in Redis, not in
process memory, because several processes publish.

What the script cannot do is fill a hole: once minute M is in, M-1 can never be added.
Gaps are therefore prevented by the CALLER: per symbol, publishing is sequential, and a
kline whose open time is more than one interval past the last one is only published after
the missing ones were fetched over REST and published in order (`Backfiller.fill`).

A batch of klines goes in a few pipelined `EVALSHA`s on one connection (the script loops
over a chunk), so a minute's 200 closes take one round trip and their encoding overlaps
the script's run.  Redis Cluster: every key a script touches must hash to one
slot, so there use a prefix with a hash tag, e.g. `{slt}:`; the script already declares
all its keys in KEYS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any, NamedTuple, get_type_hints

import msgpack
from redis.exceptions import NoScriptError

from shared.codec import encode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import Kline

__all__ = [
    "Backfiller",
    "FillResult",
    "KlinePublisher",
    "PublishResult",
    "closed_rest_klines",
    "get_cached_kline",
    "get_price",
    "interval_ms",
    "kline_entry",
]

MAX_REST_LIMIT = 1500
CHUNK = 32  # klines per EVALSHA (the chunks of a batch are pipelined)

# KEYS[1] last-open hash, KEYS[2] stream, KEYS[2+i] cache hash of kline i.
# ARGV[1] maxlen, ARGV[2] the batch as msgpack (no bin type: Redis 7.0's cmsgpack does not
# read it): [cache field names, stream field names, [symbol, open time (str), [cache
# values], [stream values]], ...].  One blob with the names once, instead of ~40 arguments
# per kline, keeps redis-py's per-argument packing (slow, in Python) off the hot path.
# Returns, per kline, two items: the entry id (published) or 0 (duplicate), and the
# symbol's last open time after the call.
PUBLISH_LUA = """
local last_key, stream, maxlen = KEYS[1], KEYS[2], ARGV[1]
local batch = cmsgpack.unpack(ARGV[2])
local cache_names, stream_names = batch[1], batch[2]
local function zip(names, values)
  local t = {}
  for j = 1, #names do
    t[2 * j - 1] = names[j]
    t[2 * j] = values[j]
  end
  return t
end
local out = {}
for i = 3, #batch do
  local k = batch[i]
  local sym, ots = k[1], k[2]
  local ot = tonumber(ots)
  local last = tonumber(redis.call('HGET', last_key, sym))
  if last and last >= ot then
    out[#out + 1] = 0
    out[#out + 1] = last
  else
    out[#out + 1] = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
                               unpack(zip(stream_names, k[4])))
    out[#out + 1] = ot
    redis.call('HSET', KEYS[i], unpack(zip(cache_names, k[3])))
    redis.call('HSET', last_key, sym, ots)
  end
end
return out
"""

_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def interval_ms(interval: str) -> int:
    """`1m` -> 60000.  Months have no fixed length, so `1M` is refused."""
    unit, count = interval[-1:], interval[:-1]
    if unit not in _UNITS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unsupported kline interval {interval!r}")
    return int(count) * _UNITS[unit]


class PublishResult(NamedTuple):
    """`entry_id` is the stream id when published, None for a duplicate; `last_open` is
    the symbol's last published open time in Redis after the call (authoritative)."""

    entry_id: str | None
    last_open: int

    @property
    def published(self) -> bool:
        return self.entry_id is not None


KLINE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Kline))
CACHE_FIELDS: tuple[str, ...] = (*KLINE_FIELDS, "timestamp")
STREAM_FIELDS: tuple[str, ...] = tuple(
    encode_event("kline", {}, symbol="X", event_time=0)
)  # type, symbol, event_time, v, data
_values = attrgetter(*KLINE_FIELDS)


def _bool_text(v: bool) -> str:
    return "1" if v else "0"


# How `Kline.to_cache_hash` writes each field (shared.models._hash_out), by declared type.
_HINTS = get_type_hints(Kline)
_TEXT = tuple(
    repr if _HINTS[f] is float else _bool_text if _HINTS[f] is bool else str for f in KLINE_FIELDS
)


def kline_entry(k: Kline) -> tuple[list[str], list[Any]]:
    """(cache hash values in CACHE_FIELDS order, stream entry values in STREAM_FIELDS
    order) of one kline.

    The same as `to_cache_hash()` and `encode_event("kline", to_dict(), ...)`, built from
    one C-level attribute fetch and a per-field formatter chosen once by type, instead of
    `dataclasses.fields()` and type tests per call: this runs for every closed kline
    (tests/test_kline_publisher.py checks the equivalence with Hypothesis)."""
    vals = _values(k)
    cache = [fmt(v) for fmt, v in zip(_TEXT, vals, strict=True)]
    cache.append(cache[2])  # timestamp = open time, as in the seed's example
    event = encode_event(
        "kline", dict(zip(KLINE_FIELDS, vals, strict=True)), symbol=k.symbol,
        event_time=k.event_time,
    )  # fmt: skip
    return cache, list(event.values())


class KlinePublisher:
    """Publishes closed klines exactly once (see module doc).  Needs a bytes client."""

    def __init__(self, redis: Any, keys: Keys, maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = int(maxlen)
        self._sha: str | bytes | None = None

    def _args(self, klines: Sequence[Kline]) -> tuple[list[str], list[Any]]:
        keys = [self.keys.kline_last_open, self.keys.stream_klines]
        batch: list[Any] = [CACHE_FIELDS, STREAM_FIELDS]
        kline_key = self.keys.kline
        for k in klines:
            cache, stream = kline_entry(k)
            keys.append(kline_key(k.symbol))
            batch.append((k.symbol, cache[2], cache, stream))
        return keys, [self.maxlen, msgpack.packb(batch, use_bin_type=False)]

    async def publish_many(self, klines: Sequence[Kline]) -> list[PublishResult]:
        """Offer `klines` in this order; one result per kline.  Klines of one symbol must
        be in ascending open time (an older one after a newer one is a duplicate).

        Chunks of CHUNK klines are pipelined on ONE connection: chunk 2 is encoded while
        Redis runs chunk 1 (Redis runs a connection's commands in order, so the order
        holds).  Any error drops the connection (replies may be unread); NOSCRIPT (Redis
        restarted) reloads the script and offers the batch again, which is safe: the
        script is idempotent."""
        if not klines:
            return []
        for attempt in (1, 2):
            try:
                raws = await self._pipelined(klines)
                break
            except NoScriptError:
                self._sha = None
                if attempt == 2:
                    raise
        results: list[PublishResult] = []
        for raw in raws:
            for i in range(0, len(raw), 2):
                entry = raw[i]
                entry_id = entry.decode() if isinstance(entry, bytes) else None
                results.append(PublishResult(entry_id, int(raw[i + 1])))
        return results

    async def _pipelined(self, klines: Sequence[Kline]) -> list[Any]:
        if self._sha is None:
            self._sha = await self.redis.script_load(PUBLISH_LUA)
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            chunks = 0
            for start in range(0, len(klines), CHUNK):
                keys, argv = self._args(klines[start : start + CHUNK])
                await conn.send_packed_command(
                    conn.pack_command("EVALSHA", self._sha, len(keys), *keys, *argv)
                )
                chunks += 1
            return [await conn.read_response() for _ in range(chunks)]
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def publish(self, kline: Kline) -> PublishResult:
        return (await self.publish_many([kline]))[0]

    async def last_open_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """The last published open time per symbol (None: never published)."""
        if not symbols:
            return {}
        raw = await self.redis.hmget(self.keys.kline_last_open, list(symbols))
        return {s: None if v is None else int(v) for s, v in zip(symbols, raw, strict=True)}

    async def last_open_time(self, symbol: str) -> int | None:
        return (await self.last_open_times([symbol]))[symbol]


# ---- readers ---------------------------------------------------------------------------


async def get_price(redis: Any, keys: Keys, symbol: str) -> tuple[float, int] | None:
    """(last trade price, ms we received it) from `Keys.prices`, or None when unknown.
    Written by kline_feed from open-candle updates (rest_fallback when it is down)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.prices, symbol)
        pipe.hget(keys.prices_updated, symbol)
        price, at = await pipe.execute()
    if price is None:
        return None
    return float(price), int(at or 0)


async def get_cached_kline(redis: Any, keys: Keys, symbol: str) -> Kline | None:
    """The latest closed kline from the `kline:<SYMBOL>` cache hash (MessageError if the
    hash is damaged)."""
    raw = await redis.hgetall(keys.kline(symbol))
    return Kline.from_cache_hash(raw) if raw else None


# ---- REST -> closed klines ------------------------------------------------------------------


def closed_rest_klines(
    symbol: str,
    interval: str,
    rows: Iterable[Any],
    *,
    proven_upto: int | None,
    received_ms: int,
    exchange_ms: int,
) -> list[Kline]:
    """The rows of a `/fapi/v1/klines` answer that are certainly closed, as Klines.

    Binance returns the still-open candle as the last row, and our idea of the exchange's
    clock may be off (the simulator runs a fast clock), so "closed" is proven by the data,
    not by a clock: a row followed by another row in the same answer was rolled over; a
    row at or before `proven_upto` (the open time of a closed kline we saw) is closed.
    `event_time` becomes `exchange_ms`, `received_time` `received_ms`.  Raises
    MessageError on a malformed row (or rows out of order)."""
    rows = list(rows)
    out: list[Kline] = []
    for i, row in enumerate(rows):
        k = Kline.from_rest_row(symbol, interval, row, received_ms)
        followed = i + 1 < len(rows)
        if not (followed or (proven_upto is not None and k.open_time <= proven_upto)):
            continue
        if out and k.open_time <= out[-1].open_time:
            raise MessageError(f"REST klines out of order at {k.open_time}", symbol)
        out.append(replace(k, closed=True, event_time=exchange_ms))
    return out


@dataclass(frozen=True, slots=True)
class FillResult:
    """Outcome of one `Backfiller.fill`: what was published and where the symbol is."""

    published: int
    duplicates: int
    last_open: int | None
    requests: int
    complete: bool  # caught up to `upto` (or to the latest closed kline)


class Backfiller:
    """Fetches the closed klines after the last published one over REST and publishes
    them in order through `KlinePublisher`.  `client` is a `shared.binance.BinanceClient`
    (rate limits and the breaker apply); its errors propagate to the caller."""

    def __init__(self, client: Any, publisher: KlinePublisher, interval: str) -> None:
        self.client = client
        self.publisher = publisher
        self.interval = interval
        self.iv = interval_ms(interval)

    async def fill(
        self,
        symbol: str,
        last_open: int | None,
        *,
        upto: int | None = None,
        proven_upto: int | None = None,
        exchange_ms: int | None = None,
        max_requests: int = 10,
    ) -> FillResult:
        """Publish every closed kline after `last_open`, up to open time `upto` /
        `proven_upto` when given, else up to the latest closed one.  `last_open` None
        (nothing ever published): start with the latest closed kline.  Stops early when
        REST has nothing closed yet (`complete` False)."""
        published = duplicates = requests = 0
        last = last_open
        goals = [x for x in (upto, proven_upto) if x is not None]
        goal = max(goals) if goals else None
        while requests < max_requests:
            if goal is not None and last is not None and last >= goal:
                break
            if last is None:
                start, limit = None, 2
            else:
                start = last + self.iv
                # +1: the row after the last wanted one proves that one closed
                want = (goal - last) // self.iv + 1 if goal is not None else 99
                limit = max(2, min(MAX_REST_LIMIT, want))
            rows = await self.client.klines(symbol, self.interval, start_time=start, limit=limit)
            requests += 1
            received = int(time.time() * 1000)
            klines = closed_rest_klines(
                symbol, self.interval, rows, proven_upto=proven_upto, received_ms=received,
                exchange_ms=received if exchange_ms is None else exchange_ms,
            )  # fmt: skip
            klines = [k for k in klines if last is None or k.open_time > last]
            if not klines:
                break
            for r in await self.publisher.publish_many(klines):
                published += r.published
                duplicates += not r.published
                last = r.last_open if last is None else max(last, r.last_open)
            if goal is None and (start is None or len(rows) < limit):
                break
        done = last is not None and (goal is None or last >= goal)
        return FillResult(published, duplicates, last, requests, done)
