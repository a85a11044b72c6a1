"""kline_feed: every closed kline of this shard's symbols into `stream:klines`, once.

Wiring (the decisions live elsewhere): `sharding` picks the symbols and groups them into
connections, `connections.FeedConnection` keeps each group subscribed, `on_message` is the
hot path, `pipeline.KlinePipeline` orders closed klines per symbol and fills gaps over
REST through `shared.kline_publisher`, `watchdog` says which klines are overdue.

Hot path (`on_message`, ~9 of 10 messages are open-candle updates): the symbol comes from
the combined-stream wrapper's `stream` name (a slice and a dict lookup), the exchange time
`E` from a substring search; an open candle only gives its last price (`schemas.last_price`,
no full parse) into a dict of latest prices that `_price_loop` writes to Redis every
`price_flush_s` in one pipeline (memory: one entry per symbol, never a queue).  Only
`x:true` messages are fully parsed and validated (`parse_kline_message` + `KlineRow`); a bad
message is counted and dropped.  An update that follows closes still queued hands them
to the publish lane first (the burst is over: see `pipeline`).  Cycles are collected
between bursts, not inside them (`quiet_gc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, ClassVar

from redis.exceptions import RedisError

from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.binance.schemas import is_closed_kline_fast, last_price, parse_kline_message
from shared.config import Settings
from shared.errors import MessageError, excerpt
from shared.kline_encoding import KlineRow
from shared.kline_publisher import Backfiller, KlinePublisher, interval_ms
from shared.runtime import Service

from .connections import FeedConnection
from .lease import LeaseLost, ShardLease, new_token
from .pipeline import KlinePipeline
from .quiet_gc import QuietGC
from .sharding import chunk, shard_symbols, stream_name, streams_url
from .watchdog import ExchangeClock, LatenessTracker, effective_grace_ms

log = logging.getLogger("services.kline_feed")

_PREFIX = b'{"stream":"'
_P = len(_PREFIX)
_wall = time.time
_turn = asyncio.sleep  # `_turn(0)`: one loop turn
OBSERVE_EVERY_S = 0.01
QUIET_MAX_S = 0.05  # housekeeping waits at most this long for a burst to be in Redis
COUNTERS = ("messages_in", "klines_published", "duplicates_suppressed", "reconnects",
            "backfilled_klines", "watchdog_fetches", "early_rest_fetches", "bad_messages",
            "publish_errors", "fill_errors", "price_flushes")  # fmt: skip


def _iso(ms: float) -> str:
    if ms <= 0:
        return ""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class KlineFeedService(Service):
    name = "kline_feed"
    counter_keys: ClassVar[frozenset[str]] = frozenset(COUNTERS)

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        claimed_lease: tuple[str, str, int] | None = None,
        price_flush_s: float = 0.2,
        max_watchdog_tick_s: float = 0.05,
    ) -> None:
        super().__init__(settings)
        self._claimed = claimed_lease  # (key, token, ttl ms) claimed by __main__ (AUTO)
        self.lease: ShardLease | None = None
        self.shard = (0, 1)
        self.price_flush_s = price_flush_s
        self.max_watchdog_tick_s = max_watchdog_tick_s
        self.symbols: list[str] = []
        self.connections: list[FeedConnection] = []
        self.clock = ExchangeClock()
        self.lateness = LatenessTracker()
        self.prices: dict[str, float] = {}
        self.price_times: dict[str, float] = {}  # wall seconds
        self._observed_at = 0.0
        self.bad_messages = 0
        self.price_flushes = 0
        self.early_rest_fetches = 0
        self.last_update = 0.0  # wall seconds of the last message (to OBSERVE_EVERY_S)
        self.grace_ms = 0
        self.client: BinanceClient | None = None
        self.pipeline: KlinePipeline = None  # type: ignore[assignment]
        self._stream_symbols: dict[bytes, str] = {}
        self._own_tasks: list[asyncio.Task[Any]] = []
        self._flusher: asyncio.Task[Any] | None = None
        self._lane: asyncio.Task[Any] | None = None
        self.quiet_gc = QuietGC()

    # ---- lifecycle ------------------------------------------------------------------
    async def setup(self) -> None:
        s = self.settings
        ws, ex, svc = s.websocket, s.exchange, s.service
        index, count = svc.instance_index, svc.instance_count
        if self._claimed is not None:
            self.lease = ShardLease(self.redis, *self._claimed)
        elif index < 0:  # AUTO without a pre-claimed lease (in-process use)
            ttl = int(max(svc.heartbeat_ttl, 3 * svc.heartbeat_interval) * 1000)
            index, self.lease = await ShardLease.claim(
                self.redis, self.keys, self.name, count, new_token(), ttl
            )
        self.shard = (index, count)
        self.interval = ws.kline_interval
        self.iv = interval_ms(self.interval)
        self.symbols = shard_symbols(ex.symbols, index, count)
        self.client = BinanceClient(s, self.redis)
        publisher = KlinePublisher(
            self.redis, self.keys, s.redis.stream_maxlen.get("klines", 500_000)
        )
        self.pipeline = KlinePipeline(
            publisher, Backfiller(self.client, publisher, self.interval), self.symbols,
            self.interval, spawn=lambda coro, name: self.spawn(coro, name),
            exchange_now=self.exchange_now,
        )  # fmt: skip
        self.pipeline.load(await publisher.last_open_times(self.symbols))
        await self._anchor_clock()
        streams = [stream_name(sym, self.interval) for sym in self.symbols]
        self._stream_symbols = {
            n.encode(): sym for n, sym in zip(streams, self.symbols, strict=True)
        }
        for i, group in enumerate(chunk(streams, ws.streams_per_connection)):
            self.connections.append(FeedConnection(
                f"c{i}", streams_url(ex.ws_url, group), group, self.on_message,
                reconnect_delay=ws.reconnect_delay, max_delay=ws.reconnect_max_delay,
                stall_timeout=ws.stall_timeout, max_age_ms=ws.max_connection_age * 1000,
                exchange_now=self.exchange_now, on_open=self._on_open,
            ))  # fmt: skip
        gc.freeze()  # start-up objects (modules, settings, clients) leave the GC's scans
        self.quiet_gc.start()  # cycles are collected between bursts (see quiet_gc)
        log.info("feeding", extra={"symbols": len(self.symbols), "shard": f"{index}/{count}",
                                   "connections": len(self.connections)})  # fmt: skip

    async def _anchor_clock(self) -> None:
        """Exchange time before the first message, so the watchdog can backfill a
        restart's gap at once.  Best effort: the socket's event times follow anyway."""
        try:
            t0 = time.monotonic()
            server = await self.client.server_time()  # type: ignore[union-attr]
            self.clock.observe(int(server["serverTime"]), (t0 + time.monotonic()) / 2)
        except (ExchangeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "server time unavailable; waiting for the socket", extra={"error": repr(exc)}
            )
        self._clock_known()

    def _clock_known(self) -> None:
        now = self.exchange_now()
        if now is not None:
            self.pipeline.set_floor(now)

    async def run(self) -> None:
        self._flusher = self.spawn(self.pipeline.run_flusher(), "flusher", critical=True)
        self._lane = self.spawn(self.pipeline.lane.run(), "lane", critical=True)
        for conn in self.connections:
            self._own_tasks.append(self.spawn(conn.run(), f"conn.{conn.id}", critical=True))
        self._own_tasks.append(self.spawn(self._watchdog_loop(), "watchdog", critical=True))
        self._own_tasks.append(self.spawn(self._price_loop(), "prices", critical=True))
        if self.lease is not None:
            self._own_tasks.append(self.spawn(self._lease_loop(), "lease", critical=True))
        await self.stop_event.wait()
        # drain: stop reading, publish what is queued, write the last prices
        for task in self._own_tasks:
            task.cancel()
        _, stuck = await asyncio.wait(self._own_tasks, timeout=3.0)
        for task in stuck:
            log.warning("task did not stop when cancelled", extra={"task": task.get_name()})
        await self.pipeline.close()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._flusher), 3.0)
        self.pipeline.lane.close()  # its replies are read until every chunk is settled
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._lane), 3.0)
        with contextlib.suppress(RedisError, OSError):
            await self._flush_prices()

    async def teardown(self) -> None:
        self.quiet_gc.stop()
        if self.client is not None:
            await self.client.close()
        if self.lease is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.lease.release()

    # ---- hot path ---------------------------------------------------------------------
    def on_message(self, raw: bytes, conn: FeedConnection) -> Awaitable[None] | None:
        """One socket message (see module doc).  Returns an awaitable only when the
        closed-kline queue is full (the reader waits: back-pressure)."""
        end = raw.find(b'"', _P)
        symbol = self._stream_symbols.get(raw[_P:end])
        if symbol is None or not raw.startswith(_PREFIX):
            return self._bad(raw, "not a kline stream of this shard")
        now = _wall()
        if now - self._observed_at >= OBSERVE_EVERY_S and not self._observe(raw, end, now):
            return self._bad(raw, "bad event time")
        if is_closed_kline_fast(raw):
            return self._closed(raw, symbol, now)
        try:
            self.prices[symbol] = last_price(raw)
        except MessageError as exc:
            return self._bad(raw, exc.reason)
        self.price_times[symbol] = now
        if self.pipeline.has_unsent and not self.pipeline.send_now():
            return _turn(0)  # an update after closes: the burst is over, send it now
        return None

    def _observe(self, raw: bytes, start: int, now: float) -> bool:
        """Feed the exchange clock with this message's `E` (at most every
        OBSERVE_EVERY_S: the clock needs a recent stamp, not every stamp)."""
        i = raw.find(b'"E":', start)
        if i < 0:
            return True  # not a kline event: the parse below says what is wrong
        try:
            e = int(raw[i + 4 : raw.find(b",", i)])
        except ValueError:
            return False
        self.clock.observe(e, time.monotonic())
        self._observed_at = self.last_update = now
        return True

    def _closed(self, raw: bytes, symbol: str, now: float) -> Awaitable[None] | None:
        now_ms = int(now * 1000)
        try:
            ev = parse_kline_message(raw)
            if ev.s != symbol or ev.k.i != self.interval:
                raise MessageError(f"{ev.s}@{ev.k.i} on the stream of {symbol}")
            k = KlineRow.from_event(ev, now_ms)  # checked by the parse: see KlineRow
        except MessageError as exc:
            return self._bad(raw, exc.reason)
        self.clock.observe(ev.E, time.monotonic())
        self.lateness.record(ev.E, k.close_time)
        self.prices[symbol] = k.close
        self.price_times[symbol] = self.last_update = now
        if self.last_event_time is None or ev.E > self.last_event_time:
            self.last_event_time = ev.E
        return self.pipeline.on_closed(k)

    def _bad(self, raw: bytes, reason: str) -> None:
        self.bad_messages += 1
        if self.bad_messages <= 20 or self.bad_messages % 1000 == 0:
            log.warning("bad message dropped",
                        extra={"reason": reason, "raw": excerpt(raw, 120), "count": self.bad_messages})  # fmt: skip
        return None

    def _on_open(self, conn: FeedConnection) -> None:
        self._clock_known()

    def exchange_now(self) -> int | None:
        return self.clock.now(time.monotonic())

    # ---- loops ------------------------------------------------------------------------
    async def _watchdog_loop(self) -> None:
        ws = self.settings.websocket
        close_grace = int(ws.close_grace * 1000)
        early = int(ws.early_rest_close * 1000)
        # one REST request per symbol per interval must fit in a quarter of the budget
        per_min = len(self.symbols) * 60_000 / self.iv
        budget_ok = per_min <= self.settings.exchange.weight_limit_1m * 0.25
        while True:
            now = self.exchange_now()
            tick = self.max_watchdog_tick_s
            if now is not None:
                self.pipeline.set_floor(now)
                self.grace_ms = effective_grace_ms(
                    close_grace, early, self.lateness.median(), budget_ok
                )
                started = self.pipeline.check_overdue(now, self.grace_ms, time.monotonic())
                if self.grace_ms < close_grace:
                    self.early_rest_fetches += started
                to_next = self.iv - (now - self.grace_ms) % self.iv
                tick = min(tick, max(0.002, self.clock.local_seconds(to_next)))
            await asyncio.sleep(tick)

    async def between_bursts(self) -> None:
        """Hold the heartbeat and the price flush while closes are on their way into
        Redis: either would add its whole run to that minute's latency.  At most
        QUIET_MAX_S, so a feed that is never idle still beats and flushes."""
        end = time.monotonic() + QUIET_MAX_S
        p = self.pipeline
        # polled, not an Event: an Event would cost the per-close path a flag and a call
        while p is not None and p.backlog and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def _price_loop(self) -> None:
        while True:
            await asyncio.sleep(self.price_flush_s)
            await self.between_bursts()
            try:
                await self._flush_prices()
            except (RedisError, OSError) as exc:
                log.warning("price flush failed", extra={"error": repr(exc)})
            self.quiet_gc.maybe_collect(idle=self.pipeline.backlog == 0)

    async def _flush_prices(self) -> None:
        if not self.prices:
            return
        prices, times = self.prices, self.price_times
        self.prices, self.price_times = {}, {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.prices, mapping={s: repr(p) for s, p in prices.items()})
            pipe.hset(
                self.keys.prices_updated, mapping={s: int(t * 1000) for s, t in times.items()}
            )
            await pipe.execute()
        self.price_flushes += 1

    async def _lease_loop(self) -> None:
        assert self.lease is not None
        while True:
            await asyncio.sleep(self.settings.service.heartbeat_interval)
            try:
                await self.lease.renew()
            except LeaseLost as exc:
                self.request_stop(str(exc), exit_code=1)
                return
            except (RedisError, OSError) as exc:
                log.warning("lease renewal failed", extra={"error": repr(exc)})

    # ---- health -----------------------------------------------------------------------
    def _stale(self) -> bool:
        mono = time.monotonic()
        stall = self.settings.websocket.stall_timeout
        if any(c.silent_for(mono) > stall for c in self.connections):
            return True
        now = self.exchange_now()
        grace = int(self.settings.websocket.close_grace * 2000)
        return now is not None and self.pipeline.lagging(now, grace) > 0

    def healthy(self) -> bool | str:
        if not self.connections or self.pipeline is None:
            return True
        if not all(c.connected for c in self.connections) or self._stale():
            return "degraded"
        return True

    def stats(self) -> dict[str, Any]:
        if self.pipeline is None:
            return {"connected": False, "symbols": 0}
        p = self.pipeline.counters
        now = self.exchange_now()
        late = self.lateness.median()
        return {
            "connected": bool(self.connections) and all(c.connected for c in self.connections),
            "symbols": len(self.symbols),
            "last_update": _iso(self.last_update * 1000),
            "last_update_ms": int(self.last_update * 1000),
            "messages_in": sum(c.messages for c in self.connections),
            "klines_published": p["klines_published"] + p["backfilled_klines"],
            "duplicates_suppressed": p["duplicates_suppressed"],
            "reconnects": sum(c.counters["reconnects"] for c in self.connections),
            "backfilled_klines": p["backfilled_klines"],
            "watchdog_fetches": p["watchdog_fetches"],
            "early_rest_fetches": self.early_rest_fetches,
            "bad_messages": self.bad_messages,
            "publish_errors": p["publish_errors"],
            "fill_errors": p["fill_errors"],
            "gaps": p["gaps"],
            "price_flushes": self.price_flushes,
            "refused_klines": p["refused"],
            "cache_errors": p["cache_errors"],
            "gc_collections": dict(
                zip(("gen0", "gen1", "gen2"), self.quiet_gc.collections, strict=True)
            ),
            "backlog": self.pipeline.backlog,
            "symbols_lagging": self.pipeline.lagging(
                now, int(self.settings.websocket.close_grace * 2000)
            )
            if now
            else 0,
            "close_lateness_ms": late if late is not None else "",
            "grace_ms": self.grace_ms,
            "exchange_time": now or "",
            "clock_rate": round(self.clock.rate, 3),
            "shard": {
                "index": self.shard[0],
                "count": self.shard[1],
                "auto": self.lease is not None,
            },
            "rest": self.client.stats() if self.client else {},
            "connections": {c.id: c.state() for c in self.connections},
        }
