"""The ONE exactly-once path for closed klines into Redis, shared by kline_feed and
rest_fallback, plus the REST backfill both use to fill gaps.

Identity of a kline is (symbol, open time).  The publish script compares the open time
with the symbol's field in the guard hash `<prefix>klines:last_published` and only when it
is newer does, atomically: `XADD <prefix>stream:klines` (the bus format of `shared.codec`)
and set the guard field.  Anything not newer is a duplicate and changes nothing.  So a
reconnect, a duplicate message, a backfill, a second feed instance or rest_fallback can
all offer the same kline: it reaches the stream once.  The check lives in Redis, not in
process memory, because several processes publish.

The `<prefix>kline:<SYMBOL>` cache hash (the seed's format, `Kline.to_cache_hash()`) is
written by a second script, sent after the publish script's chunks: it writes a hash
only with a newer kline, so it never goes back, and it is idempotent.  WHY two scripts:
a minute's 200 closes are latency-bound, and the cache's 17 text fields cost Redis as
much as the stream entry and the feed the float formatting; split, the stream entries
are in Redis before any of that work starts.  The cache may trail the stream by the time
the cache script takes (a few ms), or by a minute if the writer dies between the two.
(Upgrade: a symbol with no guard field is read from its cache hash's `open_time`, the
guard of the previous deployment; the older `kline:last_open_time` hash is not read.)

What the script cannot do is fill a hole: once minute M is in, M-1 can never be added.
Gaps are therefore prevented by the CALLER: per symbol, publishing is sequential, and a
kline whose open time is more than one interval past the last one is only published after
the missing ones were fetched over REST and published in order (`Backfiller.fill`).
A caller that pipelines (kline_feed's `PublishLane`) may also pass, per kline, the open
time that must be the last one in Redis (`expect`): if it is not (an earlier command on
the pipeline failed), the kline is refused (`PublishResult.refused`) rather than
published over a hole, and the caller backfills.

A batch goes in pipelined `EVALSHA`s of CHUNK klines each (the scripts loop over a chunk;
the encoding is `shared.kline_encoding`), so a minute's 200 closes take one round trip
and their encoding overlaps the script's run.  Redis Cluster: every key a script touches
must hash to one slot, so there use a prefix with a hash tag, e.g. `{slt}:`; the scripts
declare all their keys in KEYS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

from shared.errors import MessageError
from shared.keys import Keys
from shared.kline_encoding import (
    CACHE_FIELDS,
    ENTRY_TYPE,
    ENTRY_VERSION,
    NO_EXPECT,
    STREAM_FIELDS,
    AnyKline,
    kline_entry,
    pack_cache,
    pack_publish,
)
from shared.models import Kline
from shared.resp import resp_command

__all__ = [
    "Backfiller",
    "FillResult",
    "KlinePublisher",
    "CACHE_FIELDS",
    "NO_EXPECT",
    "STREAM_FIELDS",
    "PublishResult",
    "closed_rest_klines",
    "get_cached_kline",
    "get_price",
    "interval_ms",
    "kline_entry",
]

MAX_REST_LIMIT = 1500
CHUNK = 32  # klines per EVALSHA (the chunks of a batch are pipelined)

# The publish script.  KEYS[1] the stream, KEYS[2] the guard hash (symbol -> last open
# time in the stream), KEYS[2 + i] the cache hash of kline i (read only when the guard has
# no field for the symbol: a deployment from before the guard hash kept it there).
# ARGV[1] maxlen, ARGV[2] / ARGV[3] the entry's `type` / `v`, ARGV[4] the chunk as ONE flat
# msgpack array, per kline [symbol, open time, expect, event time, data] (one blob instead
# of ~10 arguments per kline keeps redis-py's per-argument packing off the hot path).
# A symbol may come several times in a chunk (a backfill): `cur` holds its latest value.
# `expect` >= 0: Redis must hold exactly that open time; -1: anything older; below -1
# (`first_or_after`): nothing, or exactly -expect - 2.
# Returns, per kline, two items: the entry id (published), 0 (duplicate) or -1 (refused:
# the last open time in Redis is not the expected one), and the last open time after it
# (-1: none).
# The stream is trimmed once per call (`XTRIM ~` per XADD cost more than the XADD).
PUBLISH_LUA = """
local stream, guard = KEYS[1], KEYS[2]
local b = cmsgpack.unpack(ARGV[4])
local n = #KEYS - 2
local call = redis.call
local syms = {}
for i = 1, n do syms[i] = b[5 * i - 4] end
local lasts = call('HMGET', guard, unpack(syms))
local sa = {'type', ARGV[2], 'symbol', '', 'event_time', '', 'v', ARGV[3], 'data', ''}
local out, cur, changed, any = {}, {}, {}, false
for i = 1, n do
  local p = 5 * i - 4
  local sym, ot, expect = b[p], b[p + 1], b[p + 2]
  local last = cur[sym]
  if last == nil then
    last = tonumber(lasts[i]) or tonumber(call('HGET', KEYS[2 + i], 'open_time')) or false
  end
  if last and last >= ot then
    out[2 * i - 1], out[2 * i] = 0, last
  elseif (expect >= 0 and last ~= expect) or (expect < -1 and last and last ~= -expect - 2) then
    out[2 * i - 1], out[2 * i] = -1, last or -1
  else
    sa[4], sa[6], sa[10] = sym, b[p + 3], b[p + 4]
    out[2 * i - 1], out[2 * i] = call('XADD', stream, '*', unpack(sa)), ot
    last, changed[sym], any = ot, ot, true
  end
  cur[sym] = last
end
if any then
  local upd, u = {}, 0
  for sym, ot in pairs(changed) do
    upd[u + 1], upd[u + 2] = sym, ot
    u = u + 2
  end
  call('HSET', guard, unpack(upd))
  call('XTRIM', stream, 'MAXLEN', '~', ARGV[1])
end
return out
"""

# The cache script: KEYS[i] the cache hash of kline i; ARGV[1] one flat msgpack array
# [#fields, index of open_time, field names..., then per kline its values].  A hash is
# only written by a newer kline, so a late backfill never turns the cache back.
CACHE_LUA = """
local b = cmsgpack.unpack(ARGV[1])
local nc, oti = b[1], b[2]
local ca = {}
for j = 1, nc do ca[2 * j - 1] = b[2 + j] end
local p, call, written = 3 + nc, redis.call, 0
for i = 1, #KEYS do
  local ot = tonumber(b[p + oti - 1])
  local last = tonumber(call('HGET', KEYS[i], 'open_time'))
  if not last or last < ot then
    for j = 1, nc do ca[2 * j] = b[p + j - 1] end
    call('HSET', KEYS[i], unpack(ca))
    written = written + 1
  end
  p = p + nc
end
return written
"""

_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def interval_ms(interval: str) -> int:
    """`1m` -> 60000.  Months have no fixed length, so `1M` is refused."""
    unit, count = interval[-1:], interval[:-1]
    if unit not in _UNITS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unsupported kline interval {interval!r}")
    return int(count) * _UNITS[unit]


class PublishResult(NamedTuple):
    """`entry_id` is the stream id when published, None otherwise; `last_open` is the
    symbol's last published open time in Redis after the call (authoritative; -1: none).
    `refused`: not published because Redis's last open time was not the `expect`ed one
    (neither published nor a duplicate: the caller must backfill first)."""

    entry_id: str | None
    last_open: int
    refused: bool = False

    @property
    def published(self) -> bool:
        return self.entry_id is not None


def parse_results(raw: Sequence[Any]) -> list[PublishResult]:
    """The script's reply -> one PublishResult per kline."""
    out = []
    for i in range(0, len(raw), 2):
        entry, last = raw[i], int(raw[i + 1])
        if isinstance(entry, bytes):
            out.append(PublishResult(entry.decode(), last))
        else:
            out.append(PublishResult(None, last, entry == -1))
    return out


class KlinePublisher:
    """Publishes closed klines exactly once (see module doc).  Needs a bytes client."""

    def __init__(self, redis: Any, keys: Keys, maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = int(maxlen)
        self._sha: str | bytes | None = None
        self._cache_sha: str | bytes | None = None

    def eval_args(
        self, klines: Sequence[AnyKline], expects: Sequence[int] | None = None
    ) -> list[str | bytes | int]:
        """`EVALSHA` of the publish script and its arguments for one chunk (loaded)."""
        kline_key = self.keys.kline
        assert self._sha is not None, "load_script() first"
        return ["EVALSHA", self._sha, 2 + len(klines), self.keys.stream_klines,
                self.keys.klines_last_published, *[kline_key(k.symbol) for k in klines],
                self.maxlen, ENTRY_TYPE, ENTRY_VERSION, pack_publish(klines, expects)]  # fmt: skip

    def cache_args(self, klines: Sequence[AnyKline]) -> list[str | bytes | int]:
        """`EVALSHA` of the cache script and its arguments for one chunk (loaded)."""
        kline_key = self.keys.kline
        assert self._cache_sha is not None, "load_script() first"
        return ["EVALSHA", self._cache_sha, len(klines), *[kline_key(k.symbol) for k in klines],
                pack_cache(klines)]  # fmt: skip

    async def load_script(self) -> None:
        """Load both scripts unless done (after NOSCRIPT, call `forget_script` first)."""
        if self._sha is None or self._cache_sha is None:
            self._cache_sha = await self.redis.script_load(CACHE_LUA)
            self._sha = await self.redis.script_load(PUBLISH_LUA)

    def forget_script(self) -> None:
        self._sha = self._cache_sha = None

    @property
    def script_loaded(self) -> bool:
        return self._sha is not None and self._cache_sha is not None

    async def publish_many(self, klines: Sequence[AnyKline]) -> list[PublishResult]:
        """Offer `klines` in this order; one result per kline.  Klines of one symbol must
        be in ascending open time (an older one after a newer one is a duplicate).

        Chunks of CHUNK klines are pipelined on ONE connection: chunk 2 is encoded while
        Redis runs chunk 1 (Redis runs a connection's commands in order, so the order
        holds), and the cache writes follow the last chunk.  Any error drops the
        connection (replies may be unread); NOSCRIPT (Redis restarted) reloads the scripts
        and offers the batch again, which is safe: both scripts are idempotent."""
        if not klines:
            return []
        for attempt in (1, 2):
            try:
                raws = await self._pipelined(klines)
                break
            except NoScriptError:
                self.forget_script()
                if attempt == 2:
                    raise
        return [r for raw in raws for r in parse_results(raw)]

    async def _pipelined(self, klines: Sequence[AnyKline]) -> list[Any]:
        """The publish script's replies, chunk by chunk (the cache's are checked only
        for errors: `read_response` raises on an error reply)."""
        await self.load_script()
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            chunks = [klines[i : i + CHUNK] for i in range(0, len(klines), CHUNK)]
            for chunk in chunks:
                await conn.send_packed_command(resp_command(self.eval_args(chunk)))
            for chunk in chunks:
                await conn.send_packed_command(resp_command(self.cache_args(chunk)))
            replies = [await conn.read_response() for _ in chunks]
            for _ in chunks:
                await conn.read_response()
            return replies
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def publish(self, kline: AnyKline) -> PublishResult:
        return (await self.publish_many([kline]))[0]

    async def last_open_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """The last published open time per symbol (None: never published): the guard
        hash, or for a symbol it has no field for, the `open_time` of its cache hash (as
        the publish script reads it)."""
        if not symbols:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.klines_last_published, list(symbols))
            for s in symbols:
                pipe.hget(self.keys.kline(s), "open_time")
            guard, *cached = await pipe.execute()
        out: dict[str, int | None] = {}
        for s, g, c in zip(symbols, guard, cached, strict=True):
            v = g if g is not None else c
            out[s] = None if v is None else int(v)
        return out

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
