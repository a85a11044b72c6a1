"""rest_fallback: the REST sidecar that fills caches and gaps while a feed is down or stale.

Every `service.fallback_interval` seconds, one cycle:
1. read the kline_feed / account_feed heartbeats and the klines' cache times from Redis;
2. exchange time: `GET /fapi/v1/time` (kept in an `ExchangeClock` so a REST outage
   does not blind the staleness check);
3. `freshness.decide_klines` -> for each symbol with a reason, `Backfiller.fill` from the
   last published open time: the missing closed klines over REST through the SAME
   exactly-once script kline_feed uses, so whichever publishes first wins and the
   other's copy is a counted duplicate; and prices from `premiumIndex` for symbols whose
   price has gone stale;
4. account_feed down -> `positionRisk` (v3) and `balance` (v3) into the
   `position:<SYM>` / `balance:<ASSET>` hashes through the SAME writer account_feed uses
   (`shared.account_cache`: `snapshot_writes` + `AccountCache.apply`, one Lua call), so
   the event-time rule holds across both writers: each row is timed by the exchange's
   `updateTime`; a row without one (0), and the removal of a cached position the
   exchange no longer has, by the exchange's `GET /fapi/v1/time` read just BEFORE the
   requests (a lower bound of the snapshot's time, so it never claims to be newer than
   it is; a local estimate of the exchange clock could run ahead).  A
   row older than what account_feed stored is dropped, never written back; `leverage`
   is not written (v3 positionRisk has none): the script keeps the leverage hash's.
When everything is fresh a cycle does one weight-1 REST call and a few Redis reads, so it
"stops as soon as the feeds are fresh again" by itself.  All REST goes through the shared
`BinanceClient`: rate limits and the breaker apply, and its state is in health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from redis.exceptions import RedisError

from services.kline_feed.watchdog import ExchangeClock
from shared.account_cache import AccountCache, PositionWrite, Snapshot, snapshot_writes
from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.errors import MessageError
from shared.kline_publisher import Backfiller, KlinePublisher, interval_ms
from shared.models import Balance, Position
from shared.runtime import Service

from .freshness import (
    Episodes,
    Reason,
    alive_instances,
    covered_symbols,
    decide_klines,
    heartbeat_alive,
    mark_prices,
    needs_fetch,
    stale_prices,
)

log = logging.getLogger("services.rest_fallback")

ERRORS = (ExchangeError, MessageError, RedisError, OSError, TimeoutError)


class RestFallbackService(Service):
    name = "rest_fallback"
    counter_keys: ClassVar[frozenset[str]] = frozenset(
        {"cycles", "fills", "klines_published", "duplicates_suppressed", "prices_refreshed",
         "positions_written", "positions_removed", "balances_written", "account_stale",
         "errors"}
    )  # fmt: skip

    def __init__(self, settings: Any = None, *, fill_concurrency: int = 8) -> None:
        super().__init__(settings)
        self.episodes = Episodes()
        self.clock = ExchangeClock()
        self.fill_concurrency = fill_concurrency
        self.client: BinanceClient | None = None
        self.counters = dict.fromkeys(self.counter_keys, 0)
        self.feeds_alive = {"kline_feed": False, "account_feed": False}
        self.last_reasons: dict[str, str] = {}

    async def setup(self) -> None:
        s = self.settings
        self.symbols = list(s.exchange.symbols)
        self.interval = s.websocket.kline_interval
        self.iv = interval_ms(self.interval)
        self.client = BinanceClient(s, self.redis)
        self.publisher = KlinePublisher(
            self.redis, self.keys, s.redis.stream_maxlen.get("klines", 500_000)
        )
        self.backfiller = Backfiller(self.client, self.publisher, self.interval)
        self.account = AccountCache(self.redis, self.keys)

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def run(self) -> None:
        period = self.settings.service.fallback_interval
        while not self.stopping:
            started = time.monotonic()
            try:
                await self.cycle()
            except ERRORS as exc:
                self.counters["errors"] += 1
                log.warning("fallback cycle failed", extra={"error": repr(exc)})
            if not await self.sleep(max(0.0, period - (time.monotonic() - started))):
                return

    # ---- one cycle ------------------------------------------------------------------
    async def cycle(self) -> None:
        self.counters["cycles"] += 1
        svc = self.settings.service
        wall_ms = int(time.time() * 1000)
        klines_hb = await self._heartbeats("kline_feed")
        account_hb = await self._heartbeats("account_feed")
        instances = alive_instances(klines_hb, wall_ms, svc.heartbeat_ttl)
        account_alive = any(
            heartbeat_alive(h, wall_ms, svc.heartbeat_ttl) for h in account_hb.values()
        )
        self.feeds_alive = {"kline_feed": bool(instances), "account_feed": account_alive}
        now = await self._exchange_now()
        close_times = await self._close_times()
        decisions = decide_klines(
            self.symbols, close_times, covered_symbols(self.symbols, instances), now, self.iv,
            int(svc.fallback_stale_after * 1000),
        )  # fmt: skip
        current: dict[str, Reason] = dict(decisions)
        if not account_alive:
            current["account_feed"] = Reason.ACCOUNT_FEED_DOWN
        for subject, reason in self.episodes.update(current):
            log.warning(
                "REST fallback activated", extra={"reason": reason.value, "subject": subject}
            )
        self.last_reasons = {k: v.value for k, v in current.items()}
        if decisions:
            fetch = [s for s in sorted(decisions) if needs_fetch(close_times.get(s), now, self.iv)]
            await self._fill_klines(fetch, now)
            await self._refresh_prices(sorted(decisions), wall_ms)
        if not account_alive:
            await self._refresh_account()

    async def _heartbeats(self, service: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        pattern = self.keys.health_instances_pattern(service)
        async for key in self.redis.scan_iter(match=pattern, count=200):
            raw = await self.redis.hgetall(key)
            name = key.decode() if isinstance(key, bytes) else key
            out[name] = {k.decode(): v.decode() for k, v in raw.items()}
        return out

    async def _exchange_now(self) -> int | None:
        try:
            t0 = time.monotonic()
            server = await self.client.server_time()  # type: ignore[union-attr]
            self.clock.observe(int(server["serverTime"]), (t0 + time.monotonic()) / 2)
        except (ExchangeError, KeyError, TypeError, ValueError) as exc:
            self.counters["errors"] += 1
            log.info("server time unavailable", extra={"error": repr(exc)})
        return self.clock.now(time.monotonic())

    async def _close_times(self) -> dict[str, int | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in self.symbols:
                pipe.hget(self.keys.kline(s), "close_time")
            raw = await pipe.execute()
        out: dict[str, int | None] = {}
        for s, v in zip(self.symbols, raw, strict=True):
            try:
                out[s] = int(v) if v is not None else None
            except ValueError:
                out[s] = None  # a damaged hash counts as missing
        return out

    async def _fill_klines(self, symbols: list[str], now: int | None) -> None:
        slots = asyncio.Semaphore(self.fill_concurrency)

        async def one(symbol: str) -> None:
            async with slots:
                try:
                    last = await self.publisher.last_open_time(symbol)
                    res = await self.backfiller.fill(symbol, last, exchange_ms=now)
                except ERRORS as exc:
                    self.counters["errors"] += 1
                    log.warning("fill failed", extra={"symbol": symbol, "error": repr(exc)})
                    return
                self.counters["fills"] += 1
                self.counters["klines_published"] += res.published
                self.counters["duplicates_suppressed"] += res.duplicates

        await asyncio.gather(*(one(s) for s in symbols))

    async def _refresh_prices(self, symbols: list[str], wall_ms: int) -> None:
        raw = await self.redis.hmget(self.keys.prices_updated, symbols)
        updated = {s: int(v) if v else None for s, v in zip(symbols, raw, strict=True)}
        stale = stale_prices(
            symbols, updated, wall_ms, int(self.settings.service.fallback_stale_after * 1000)
        )
        if not stale:
            return
        try:
            rows = await self.client.premium_index()  # type: ignore[union-attr]
        except ExchangeError as exc:
            self.counters["errors"] += 1
            log.info("premiumIndex unavailable", extra={"error": repr(exc)})
            return
        prices = mark_prices(rows, set(stale))
        if prices:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.keys.prices, mapping=prices)
                pipe.hset(self.keys.prices_updated, mapping=dict.fromkeys(prices, wall_ms))
                await pipe.execute()
            self.counters["prices_refreshed"] += len(prices)

    async def _refresh_account(self) -> None:
        """account_feed is down: positions and balances over REST, applied by the
        event-time rule (module doc, step 4).  A bad row aborts the refresh: skipping it
        would read as "no position" and remove a cached one."""
        client = self.client
        assert client is not None
        try:
            # The exchange's own clock, read before the snapshot: a true lower bound of
            # its time. (A local estimate of the exchange clock can run ahead: a paused or
            # sped-up simulator, a frozen process; a time from the future would make every
            # later account event look older and be dropped.)
            as_of = int((await client.server_time())["serverTime"])
            risk = await client.position_risk()
            balances = await client.balance()
            rows = tuple(Position.from_position_risk(r) for r in risk)
            bals = tuple(Balance.from_rest_row(b) for b in balances)
        except (*ERRORS, KeyError, TypeError, ValueError) as exc:
            self.counters["errors"] += 1
            log.warning("account refresh failed", extra={"error": repr(exc)})
            return
        cached = set(await self.account.cached_symbols())
        writes = snapshot_writes(Snapshot(as_of, rows, bals, floor=False), cached)
        applied = await self.account.apply(writes)
        for w, ok in zip(writes, applied, strict=True):
            if not ok:
                self.counters["account_stale"] += 1
            elif not isinstance(w, PositionWrite):
                self.counters["balances_written"] += 1
            elif w.position is not None:
                self.counters["positions_written"] += 1
            elif w.symbol in cached:
                self.counters["positions_removed"] += 1

    # ---- health -----------------------------------------------------------------------
    def healthy(self) -> bool | str:
        if self.client is not None and self.client.breaker.state.value != "closed":
            return "degraded"
        return True

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "activations": dict(self.episodes.counts),
            "active": self.episodes.active_counts(),
            "feeds_alive": dict(self.feeds_alive),
            "symbols": len(getattr(self, "symbols", [])),
            "rest": self.client.stats() if self.client else {},
        }
