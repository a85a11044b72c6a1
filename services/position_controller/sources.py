"""What the position controller reads: the account_feed position cache and health, REST
snapshots (positionRisk, openAlgoOrders, exchangeInfo, server time) and the trader's
decision records.

WHY apart from the service: every read here can fail (Redis down, the exchange down, a
malformed row), and each failure has one answer - None, "unknown: skip that part",
counted in the shared counters - so the service reads as "if we know X, do Y".  A sweep
with no REST snapshot still runs the rules; one with no cache still reconciles the core.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from decimal import Decimal
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.position_controller.inputs import (
    decision_from_redis,
    fills_since_open,
    parse_account_event,
    position_rows,
    user_trade_fill,
)
from services.position_controller.ledger import Ledger
from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.codec import decode_event
from shared.errors import MessageError
from shared.filters import SymbolFilters, parse_exchange_info
from shared.keys import Keys
from shared.models import DecisionRecord, Kline, OrderUpdate, Position

log = logging.getLogger(__name__)
_MAX_TRADE_PAGES = 20  # 20,000 fills of one symbol in one gap: far beyond any real one

DECISION_MEMORY = 20_000
DECISION_RETRY_S = 5.0


class Snapshot(NamedTuple):
    """One positionRisk answer: positions, liquidation prices, leverages by symbol."""

    positions: list[Position]
    liquidation: dict[str, Decimal]
    leverage: dict[str, int]


class Sources:
    """Reads from Redis and REST; None means "could not be read" (see module doc)."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, client: BinanceClient, counters: dict[str, int]
    ) -> None:
        self.redis, self.keys, self.client, self.c = redis, keys, client, counters

    async def cache(self) -> dict[str, Position] | None:
        """account_feed's position hashes (`Keys.position(*)`), by symbol."""
        try:
            pattern = self.keys.position("*")
            names = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(name)
                hashes = await pipe.execute() if names else []
        except (RedisError, OSError) as exc:
            log.warning("position cache unreadable: %r", exc)
            return None
        out: dict[str, Position] = {}
        for h in hashes:
            if not h:
                continue
            try:
                pos = Position.from_hash(h)
            except MessageError:
                self.c["bad_messages"] += 1
                continue
            if pos.position_side == "BOTH":
                out[pos.symbol] = pos
        return out

    async def start_positions(
        self, persisted: Iterable[Position]
    ) -> tuple[list[Position], str, Snapshot | None]:
        """Open positions at start-up and where they came from: account_feed's cache when
        it is non-empty and account_feed is healthy ("cache"), else REST positionRisk
        ("rest", with its snapshot), else the persisted positions overlaid with whatever
        the cache has ("state") - the seed's `_fetch_all_positions` fallback."""
        cache = await self.cache() or {}
        if cache and await self.feed_alive():
            return [p for p in cache.values() if p.size != 0], "cache", None
        snapshot = await self.position_risk()
        if snapshot is not None:
            return [p for p in snapshot.positions if p.size != 0], "rest", snapshot
        merged = {p.symbol: p for p in persisted}
        for p in cache.values():
            if p.symbol not in merged or p.updated_at >= merged[p.symbol].updated_at:
                merged[p.symbol] = p
        return [p for p in merged.values() if p.size != 0], "state", None

    async def lot_fills(
        self, positions: Iterable[Position], ledger: Ledger
    ) -> dict[str, list[OrderUpdate]]:
        """For positions the ledger has no lot for (opened before our first start, or the
        state was lost): the fills that built each one, from the account stream, so its
        trade gets the real entry, fees and decision record instead of an estimate.
        Symbols whose opening is no longer in the stream are left out (adopted)."""
        bare = {p.symbol: p for p in positions if ledger.lot(p.symbol) is None}
        if not bare:
            return {}
        history = await self.recent_fills(set(bare))
        out = {}
        for symbol, pos in bare.items():
            fills = fills_since_open([f for f in history if f.symbol == symbol], pos.size)
            if fills is not None:
                out[symbol] = fills
        return out

    async def recent_klines(self, count: int) -> tuple[list[Kline], str]:
        """The newest `count` klines of the stream, oldest first per symbol, and the id a
        new consumer group should start after ("$" when the stream is empty)."""
        entries = await self.redis.xrevrange(self.keys.stream_klines, count=count)
        klines: list[Kline] = []
        for _id, fields in entries:
            try:
                etype, data, _meta = decode_event(fields)
                if etype == "kline":
                    klines.append(Kline.from_dict(data))
            except MessageError:
                self.c["bad_messages"] += 1
        klines.sort(key=lambda k: (k.symbol, k.open_time))
        raw = entries[0][0] if entries else b"$"
        return klines, raw.decode() if isinstance(raw, bytes) else str(raw)

    async def recent_fills(self, symbols: set[str], count: int = 5_000) -> list[OrderUpdate]:
        """Fills of `symbols` among the newest `count` account-stream entries (to rebuild
        the lot of a position opened before this service first started)."""
        try:
            entries = await self.redis.xrevrange(self.keys.stream_account, count=count)
        except (RedisError, OSError):
            return []
        out = []
        for _id, fields in entries:
            if fields.get(b"type") != b"ORDER_TRADE_UPDATE":
                continue
            try:
                etype, data, _meta = decode_event(fields)
                event = parse_account_event(etype, data)
            except MessageError:
                continue
            if isinstance(event, OrderUpdate) and event.symbol in symbols and event.is_fill:
                out.append(event)
        return out

    async def gap_fills(
        self, symbol: str, start_ms: int | None, ledger: Ledger
    ) -> list[OrderUpdate] | None:
        """The symbol's fills since `start_ms` from REST userTrades (weight 5), those the
        ledger has not applied yet each completed by its order (`GET /fapi/v1/order`,
        weight 1, once per order: client id, type, reduce-only) - None when the REST call
        failed.  Rows before `start_ms` are dropped here too (a server may ignore it)."""
        rows = await self.user_trades_since(symbol, start_ms)
        if rows is None:
            return None
        orders: dict[int, dict[str, Any]] = {}
        out = []
        for row in rows:
            try:
                bare = user_trade_fill(row)
            except MessageError:
                self.c["bad_messages"] += 1
                continue
            if bare.symbol != symbol or (start_ms is not None and bare.trade_time < start_ms):
                continue
            if ledger.has_seen(bare):
                continue
            if bare.order_id not in orders:
                found = await self.rest(self.client.query_order(symbol, order_id=bare.order_id))
                orders[bare.order_id] = found if isinstance(found, dict) else {}
            out.append(user_trade_fill(row, orders[bare.order_id]))
        return out

    async def user_trades_since(self, symbol: str, start_ms: int | None) -> list[Any] | None:
        """Every userTrades row since `start_ms`: Binance answers the first 1000 from the
        start, so a busy gap is read page by page (next page from the last row's time;
        rows seen twice are dropped by id).  None when a call failed."""
        rows: list[Any] = []
        seen: set[Any] = set()
        start = start_ms
        for _ in range(_MAX_TRADE_PAGES):
            page = await self.rest(self.client.user_trades(symbol, start_time=start, limit=1000))
            if page is None:
                return None
            if not isinstance(page, list):
                self.c["bad_messages"] += 1
                return None
            fresh = [r for r in page if not (isinstance(r, dict) and r.get("id") in seen)]
            seen.update(r.get("id") for r in fresh if isinstance(r, dict))
            rows += fresh
            last = page[-1].get("time") if page and isinstance(page[-1], dict) else None
            if len(page) < 1000 or not fresh or not isinstance(last, int) or start is None:
                break
            start = last
        return rows

    async def feed_alive(self) -> bool:
        """Is account_feed's heartbeat there and `ok` (so its cache is current)?"""
        return (await self.feed_state())[0]

    async def feed_state(self) -> tuple[bool, str | None]:
        """(alive, session): alive as `feed_alive`; the session (process id, start time,
        socket reconnects) changes whenever the user data stream may have lost events
        (a restart or a reconnect), even between two sweeps that both saw it alive."""
        try:
            h = await self.redis.hmget(self.keys.health("account_feed"),
                                       ["status", "pid", "started_at", "reconnects"])  # fmt: skip
        except (RedisError, OSError):
            return False, None
        if h[0] is None:
            return False, None
        session = "/".join((v or b"").decode(errors="replace") for v in h[1:])
        return h[0] == b"ok", session

    async def rest(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except ExchangeError as exc:
            self.c["rest_errors"] += 1
            log.warning("REST call failed: %s", exc)
            return None

    async def position_risk(self) -> Snapshot | None:
        raw = await self.rest(self.client.position_risk())
        if raw is None:
            return None
        try:
            positions, liq, lev, bad = position_rows(raw)
        except MessageError:
            self.c["bad_messages"] += 1
            return None
        self.c["bad_messages"] += bad
        return Snapshot(positions, liq, lev)

    async def algo_orders(self) -> list[dict[str, Any]] | None:
        rows = await self.rest(self.client.open_algo_orders())
        if rows is not None and not isinstance(rows, list):
            self.c["bad_messages"] += 1
            return None
        return rows

    async def exchange_now(self) -> int:
        """The exchange's clock, re-synced (a simulator may run fast, pause or jump)."""
        await self.rest(self.client.sync_time())
        return self.client.server_ms()

    async def filters(self) -> dict[str, SymbolFilters] | None:
        info = await self.rest(self.client.exchange_info())
        if info is None:
            return None
        try:
            return parse_exchange_info(info)
        except MessageError:
            self.c["bad_messages"] += 1
            return None


class GapWatch:
    """Which symbols' fills to fetch over REST because the user data stream may have lost
    some, and from when.  Pure (times are the exchange's, passed in).

    While account_feed is down: the symbols we hold (a lot or a snapshot position), each
    sweep, from the last sweep that saw it alive.  When it is back: every configured
    symbol once (a round trip may have opened and closed inside the gap).  Any time: the
    symbols with an orphan closing fill (the ledger's `replay_needed`)."""

    ORPHAN_LOOKBACK_MS = 6 * 3_600_000  # how far back an orphan's opening is looked for

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = list(symbols)
        self.alive_ms: int | None = None  # the last sweep that saw account_feed alive
        self.gap_start: int | None = None  # set while down (None: start unknown)
        self.down = False
        self.session: str | None = None  # account_feed's session at the last alive sweep

    def targets(
        self, now_ms: int, feed_alive: bool, held: Iterable[str], orphans: dict[str, int],
        session: str | None = None, stale_ms: int = 0,
    ) -> dict[str, int | None]:  # fmt: skip
        """symbol -> start time (None: the exchange's default window) to fetch now.
        A new account_feed `session` since the last alive sweep counts as a gap.
        `stale_ms`: how long a dead account_feed still reads alive (its heartbeat TTL, in
        exchange ms): the gap starts that much before the last alive sweep, since that
        sweep may have read a killed feed's heartbeat (found in the soak: a round trip
        between the kill and that sweep was never fetched, so never recorded)."""
        out: dict[str, int | None] = {
            s: max(t - self.ORPHAN_LOOKBACK_MS, self.gap_start or 0) for s, t in orphans.items()
        }
        alive = None if self.alive_ms is None else self.alive_ms - max(0, stale_ms)
        if feed_alive and session is not None and self.session not in (None, session):
            self.down, self.gap_start = True, alive  # restarted/reconnected between
        if feed_alive:
            self.session = session
        if not feed_alive:
            if not self.down:
                self.down, self.gap_start = True, alive
            for s in held:
                out.setdefault(s, self.gap_start)
            return out
        if self.down:
            for s in self.symbols:
                out.setdefault(s, self.gap_start)
            self.down, self.gap_start = False, None
        self.alive_ms = now_ms
        return out


class DecisionBook:
    """The trader's entry DecisionRecords (`Keys.decision(<client id>)`), loaded once each;
    `get` is the synchronous lookup the core joins trades with.  A miss is asked again
    after `DECISION_RETRY_S` (the trader may write it a moment after the fill)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, counters: dict[str, int]) -> None:
        self.redis, self.keys, self.c = redis, keys, counters
        self._records: OrderedDict[str, DecisionRecord] = OrderedDict()
        self._missing: dict[str, float] = {}

    def get(self, client_id: str) -> DecisionRecord | None:
        return self._records.get(client_id)

    async def load(self, client_id: str) -> DecisionRecord | None:
        """The record when it is newly loaded; None when unknown, unreadable or loaded."""
        if not client_id or client_id in self._records:
            return None
        tried = self._missing.get(client_id)
        if tried is not None and time.monotonic() - tried < DECISION_RETRY_S:
            return None
        try:
            raw = await self._raw(client_id)
            record = None if raw is None else decision_from_redis(raw)
        except (RedisError, OSError):
            return None
        except MessageError:
            self.c["bad_messages"] += 1
            record = None
        if record is None:
            self.c["decision_misses"] += 1
            if len(self._missing) > DECISION_MEMORY:
                self._missing.clear()
            self._missing[client_id] = time.monotonic()
            return None
        self.c["decision_hits"] += 1
        self._records[client_id] = record
        if len(self._records) > DECISION_MEMORY:
            self._records.popitem(last=False)
        self._missing.pop(client_id, None)
        return record

    async def _raw(self, client_id: str) -> Any:
        key = self.keys.decision(client_id)
        try:
            return await self.redis.get(key)
        except ResponseError:  # WRONGTYPE: stored as a hash
            return await self.redis.hgetall(key) or None
