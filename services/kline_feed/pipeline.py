"""Per-symbol ordering of closed klines into the exactly-once publisher, gaps filled first.

Every closed kline of a symbol goes one of two ways, and a symbol is never on both at once:
- fast path: it directly follows the last one (open time = last + interval), or nothing
  was ever published for the symbol: it joins the send queue, which goes to the publish
  lane (`lane.PublishLane`: one ordered, pipelined connection) in chunks of CHUNK,
  written from the socket reader itself as each chunk fills (`send_now`, no loop turn),
  the rest when an open-candle update follows the closes (the burst is over) or when
  the reader has nothing buffered (the flusher task).  So a minute's 200 closes stream
  into Redis while the rest are still being parsed, and nothing waits for a reply.
  Each kline carries the open time Redis must already hold before it (`expect`), so if
  an earlier chunk failed, the script refuses it (it is then held, as behind a gap)
  instead of publishing over a hole;
  once no publish chunk is in flight (the burst is in Redis), the cache hashes of what was
  published go out the same way (`kline_publisher`'s second script);
  one already known to be in Redis (`last` comes only from the script's answers) is
  counted as a duplicate without a round trip;
- gap: its open time is more than one interval past the last one (a reconnect, a stall,
  a restart, a lost message, a failed publish): it is held, and a fill task for the symbol
  fetches the missing closed klines over REST, publishes them in order, then the held
  ones.  The watchdog starts the same fill task for a kline that is overdue.
So the one rule "publish M only after M - interval" covers every way to lose data, and
the Lua guard makes every overlap (two instances, rotation, backfill vs live) harmless.

A fill task waits out REST failures (the breaker included) with a backoff and never
publishes past a hole, so during a long REST outage a symbol with a gap stops until REST
is back, rather than skipping minutes forever.

Bounded: the send queue plus the lane's unsettled klines apply back-pressure to the
socket readers at `max_pending`; each symbol holds at most `max_held` klines behind a gap
(older ones are dropped: REST brings them, since their open time is below the proven one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from shared.binance.errors import CircuitOpenError, ExchangeError
from shared.errors import MessageError
from shared.kline_encoding import AnyKline, first_or_after
from shared.kline_publisher import (
    CHUNK,
    Backfiller,
    KlinePublisher,
    PublishResult,
    interval_ms,
)

from .lane import PublishLane
from .watchdog import due_open_time

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
FILL_ERRORS = (ExchangeError, MessageError, RedisError, OSError, TimeoutError)
NOT_YET_RETRY_S = 0.25  # REST has not closed the wanted kline yet: look again after this
CACHE_DUE_MAX = 1024  # cache writes waiting this long go out even with publish chunks in flight


@dataclass(slots=True)
class SymbolState:
    symbol: str
    last: int | None = None  # last open time published (Redis's word; None: never)
    floor: int = -1  # the watchdog's stand-in for `last` while it is None
    proven: int = -1  # newest open time seen closed (x:true)
    wanted: int = -1  # newest open time the watchdog wants published
    queued: int = 0  # klines in the send queue or in the lane
    queued_upto: int = -1
    held: dict[int, AnyKline] = field(default_factory=dict)
    filling: bool = False
    needs_fill: bool = False
    retry_at: float = 0.0  # monotonic: no watchdog fill before this

    def base(self) -> int | None:
        """What the next kline must follow: the last published one, or for a symbol
        never published, the floor (the feed's start) once known."""
        if self.last is not None:
            return self.last
        return self.floor if self.floor >= 0 else None

    def head(self) -> int | None:
        """Newest open time published or on its way (or the floor)."""
        if self.queued:
            return self.queued_upto
        return self.base()


class KlinePipeline:
    """See module doc.  `spawn(coro, name)` runs a tracked task (the service's)."""

    def __init__(
        self,
        publisher: KlinePublisher,
        backfiller: Backfiller,
        symbols: list[str],
        interval: str,
        *,
        spawn: Spawn,
        exchange_now: Callable[[], int | None],
        max_pending: int = 4096,
        max_held: int = 16,
        fill_concurrency: int = 16,
        max_backoff: float = 10.0,
    ) -> None:
        self.publisher = publisher
        self.backfiller = backfiller
        self.iv = interval_ms(interval)
        self.states = {s: SymbolState(s) for s in symbols}
        self._spawn = spawn
        self._exchange_now = exchange_now
        self.max_pending = max_pending
        self.max_held = max_held
        self.max_backoff = max_backoff
        self._fill_slots = asyncio.Semaphore(fill_concurrency)
        self.lane = PublishLane(publisher, self._settle, self._cache_settled)
        self._pending: list[AnyKline] = []  # not yet handed to the lane
        self._cache_due: list[AnyKline] = []  # published, their cache hash not yet sent
        self._expects: list[int] = []  # per pending kline: what Redis must hold before it
        self._sending = 0  # taken by the flusher, not yet in the lane
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self.counters = dict.fromkeys(
            ("klines_published", "duplicates_suppressed", "backfilled_klines",
             "watchdog_fetches", "fills", "fill_errors", "publish_errors", "held_dropped",
             "gaps", "refused", "cache_errors"), 0,
        )  # fmt: skip

    # ---- state --------------------------------------------------------------------
    def load(self, last: dict[str, int | None]) -> None:
        for s, t in last.items():
            if s in self.states:
                self.states[s].last = t

    def set_floor(self, now_ms: int) -> None:
        """Fresh symbols (never published): the first kline the watchdog expects is the
        one open at `now_ms`, i.e. nothing before the feed first started."""
        floor = now_ms // self.iv * self.iv - self.iv
        for st in self.states.values():
            if st.floor < 0:
                st.floor = floor

    @property
    def backlog(self) -> int:
        return len(self._pending) + self._sending + self.lane.inflight

    @property
    def has_unsent(self) -> bool:
        """Closes wait in the send queue (the reader hands them over: `send_now`)."""
        return bool(self._pending)

    def lagging(self, now_ms: int, grace_ms: int) -> int:
        """Symbols missing a kline that closed more than `grace_ms` ago."""
        due = due_open_time(now_ms, self.iv, grace_ms)
        return sum(1 for st in self.states.values() if _last(st) < due and st.floor >= 0)

    # ---- live klines (called from the socket readers, synchronous) ------------------
    def on_closed(self, k: AnyKline) -> Awaitable[None] | None:
        """Route one validated closed kline; an awaitable means "wait, queue is full"."""
        st = self.states[k.symbol]
        if k.open_time > st.proven:
            st.proven = k.open_time
        if st.last is not None and k.open_time <= st.last:
            # `last` only ever comes from the script's answers, so Redis already holds
            # this one (or newer): skip the round trip (the x:true after an early REST
            # fetch, a rotation overlap, a resent message)
            self.counters["duplicates_suppressed"] += 1
            return None
        if st.filling or st.needs_fill:
            self._hold(st, k)
            return None
        head = st.head()
        if head is not None and k.open_time > head + self.iv:
            self.counters["gaps"] += 1
            self._hold(st, k)
            st.needs_fill = True
            if not st.queued:
                self._start_fill(st)
            return None
        # the predecessor Redis must hold; for a symbol with nothing published yet, it
        # may also hold nothing (not: anything older, which would leave a hole)
        pred = k.open_time - self.iv
        expect = first_or_after(pred) if st.last is None and not st.queued else pred
        self._pending.append(k)
        self._expects.append(expect)
        st.queued += 1
        if k.open_time > st.queued_upto:
            st.queued_upto = k.open_time
        self._wake.set()
        if self.backlog >= self.max_pending:
            self._room.clear()
            return self._room.wait()
        if len(self._pending) >= CHUNK and not self.send_now():
            return asyncio.sleep(0)  # a full chunk: let the flusher send it now
        return None

    def _hold(self, st: SymbolState, k: AnyKline) -> None:
        st.held[k.open_time] = k
        while len(st.held) > self.max_held:
            del st.held[min(st.held)]
            self.counters["held_dropped"] += 1

    def send_now(self) -> bool:
        """Hand the queued klines to the lane without yielding (see `PublishLane.send_now`);
        False when some are left for the flusher (it has been woken)."""
        if self._sending:  # the flusher holds earlier klines: they go first
            return False
        klines, expects = self._pending, self._expects
        for i in range(0, len(klines), CHUNK):
            if not self.lane.send_now(klines[i : i + CHUNK], expects[i : i + CHUNK]):
                self._pending, self._expects = klines[i:], expects[i:]
                return False
        self._pending, self._expects = [], []
        return True

    # ---- the flusher -----------------------------------------------------------------
    async def run_flusher(self) -> None:
        """Hand queued klines to the lane in chunks, whenever the readers pause; once no
        publish chunk is in flight, the cache writes of what was published.  After
        `close()`: sends what is queued, lets the lane settle it, writes the caches."""
        while True:
            if self._pending:
                await self._flush_pending()
            elif self._cache_due and (not self.lane.inflight
                                      or len(self._cache_due) >= CACHE_DUE_MAX):  # fmt: skip
                await self._flush_cache()
            elif self._closing and not self.lane.inflight:
                self.lane.close()
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _flush_pending(self) -> None:
        klines, expects = self._pending, self._expects
        self._pending, self._expects = [], []
        self._sending = len(klines)
        for i in range(0, len(klines), CHUNK):
            chunk = klines[i : i + CHUNK]
            await self.lane.send(chunk, expects[i : i + CHUNK])
            self._sending -= len(chunk)

    async def _flush_cache(self) -> None:
        """WHY only with no publish chunk in flight: the cache script's run would sit in
        Redis between a burst's publish chunks, and the stream is what is waited for."""
        due, self._cache_due = self._cache_due, []
        chunks = [due[i : i + CHUNK] for i in range(0, len(due), CHUNK)]
        if not self.lane.send_cache_now(chunks):
            for chunk in chunks:
                await self.lane.send_cache(chunk)

    def _cache_settled(self, batch: list[AnyKline], ok: bool) -> None:
        """A cache chunk's outcome: on failure the hashes trail until the next kline."""
        if not ok:
            self.counters["cache_errors"] += 1

    def _settle(self, batch: list[AnyKline], results: list[PublishResult] | None) -> None:
        """The lane's word on one chunk (None: unknown, the fill re-reads Redis)."""
        if results is None:
            self.counters["publish_errors"] += 1
        touched: dict[str, SymbolState] = {}
        for i, k in enumerate(batch):
            st = self.states[k.symbol]
            st.queued -= 1
            touched[k.symbol] = st
            if results is None:
                st.needs_fill = True
                continue
            r = results[i]
            if r.last_open >= 0:
                st.last = r.last_open if st.last is None else max(st.last, r.last_open)
            if r.published:
                self.counters["klines_published"] += 1
                self._cache_due.append(k)
            elif r.refused:  # its predecessor is not in Redis: fill first, then it
                self.counters["refused"] += 1
                self._hold(st, k)
                st.needs_fill = True
            else:
                self.counters["duplicates_suppressed"] += 1
        for st in touched.values():
            if not st.queued:
                st.queued_upto = -1
                if (st.needs_fill or st.held) and not st.filling:
                    self._start_fill(st)
        if self.backlog < self.max_pending // 2:
            self._room.set()
        if not self.lane.inflight and (self._cache_due or self._closing):
            self._wake.set()  # the flusher writes the caches (or, closing, returns)

    async def close(self) -> None:
        """Stop taking work: the flusher sends what is queued, then the lane's `run`
        returns once it is settled (bounded by the caller's timeout)."""
        self._closing = True
        self._wake.set()

    # ---- watchdog ----------------------------------------------------------------------
    def check_overdue(self, now_ms: int, grace_ms: int, mono: float) -> int:
        """Start a fill for every symbol whose kline closed `grace_ms` before `now_ms`
        (exchange time) and is not published; returns how many were started."""
        due = due_open_time(now_ms, self.iv, grace_ms)
        started = 0
        for st in self.states.values():
            if st.filling or st.queued or mono < st.retry_at or st.floor < 0:
                continue
            if _last(st) < due:
                st.wanted = max(st.wanted, due)
                self.counters["watchdog_fetches"] += 1
                self._start_fill(st)
                started += 1
        return started

    # ---- fills -------------------------------------------------------------------------
    def _start_fill(self, st: SymbolState) -> None:
        st.filling = True
        st.needs_fill = False
        self.counters["fills"] += 1
        self._spawn(self._fill(st), f"fill.{st.symbol}")

    async def _fill(self, st: SymbolState) -> None:
        attempt = 0
        try:
            async with self._fill_slots:
                while not self._closing:
                    try:
                        done = await self._fill_step(st)
                    except CircuitOpenError as exc:
                        self.counters["fill_errors"] += 1
                        await asyncio.sleep(min(max(exc.retry_after, 0.05), self.max_backoff))
                        continue
                    except FILL_ERRORS as exc:
                        self.counters["fill_errors"] += 1
                        delay = min(self.max_backoff, 0.05 * 2**attempt) * (0.5 + random.random())
                        attempt += 1
                        log.warning(
                            "backfill failed, retrying",
                            extra={"symbol": st.symbol, "error": repr(exc), "retry_in_s": delay},
                        )  # fmt: skip
                        await asyncio.sleep(delay)
                        continue
                    attempt = 0
                    if done:
                        return
        finally:
            st.filling = False

    async def _fill_step(self, st: SymbolState) -> bool:
        """One round: re-read Redis, publish held klines that now follow, else fetch
        over REST.  True when the symbol is caught up (or REST has nothing yet)."""
        st.last = await self.publisher.last_open_time(st.symbol)
        base = st.base()
        for t in [t for t in st.held if base is not None and t <= base]:
            del st.held[t]
            self.counters["duplicates_suppressed"] += 1
        chain = self._chain(st, base)
        if chain:
            self._count(await self.publisher.publish_many(chain), st, backfill=False)
            return False
        goal = max(st.proven, st.wanted)
        if base is not None and goal <= base and not st.held:
            return True
        res = await self.backfiller.fill(
            st.symbol, base, upto=goal if goal >= 0 else None,
            proven_upto=st.proven if st.proven >= 0 else None, exchange_ms=self._exchange_now(),
        )  # fmt: skip
        self.counters["backfilled_klines"] += res.published
        self.counters["duplicates_suppressed"] += res.duplicates
        if res.published or res.duplicates:
            st.last = res.last_open  # the script's word (else it is just our `base`)
            return False
        # REST has nothing closed after `last` yet
        if st.held or st.proven > _last(st):
            await asyncio.sleep(NOT_YET_RETRY_S)  # the socket saw it close: REST will follow
            return False
        st.retry_at = time.monotonic() + NOT_YET_RETRY_S
        return True

    def _chain(self, st: SymbolState, base: int | None) -> list[AnyKline]:
        """Held klines that follow `base` without a hole (any first one without a base)."""
        out: list[AnyKline] = []
        nxt = None if base is None else base + self.iv
        for t in sorted(st.held):
            if nxt is not None and t != nxt:
                break
            out.append(st.held.pop(t))
            nxt = t + self.iv
        return out

    def _count(self, results: list[Any], st: SymbolState, *, backfill: bool) -> None:
        for r in results:
            if r.published:
                self.counters["backfilled_klines" if backfill else "klines_published"] += 1
            else:
                self.counters["duplicates_suppressed"] += 1
            st.last = r.last_open if st.last is None else max(st.last, r.last_open)


def _last(st: SymbolState) -> int:
    base = st.base()
    return -1 if base is None else base
