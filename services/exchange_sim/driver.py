"""The clock driver: turns simulated minutes into kline/mark-price events and engine ticks.

WHY a separate object: one place decides WHAT happens at each simulated millisecond, in a
fixed order, so the WebSocket streams, the REST answers and the matching engine always
agree. It is synchronous and clock-free (`step(now_ms)` does everything due up to `now_ms`);
`run()` is the thin async loop that sleeps between due events. REST handlers call `step`
first too, so a request never sees a state older than the clock.

Per simulated minute `t0`, for every symbol, in this order at equal timestamps:
1. at `t0`: the previous candle closes: it enters the history (REST has it immediately);
2. at `t0 + close_delay_ms`: its `x:true` kline is published and added to the record
   (Binance sends it ~2 s late; default 0 for tests, `BINANCE_CLOSE_DELAY_MS` = 2000);
3. at each `bar_updates` offset: the open candle moves (`x:false` event), and
   `exchange.advance_price` runs; the engine's user events go to the account's sockets;
4. every 1 s (and 3 s): `markPrice@1s` (and `markPrice`) events for subscribed symbols.
Events are only serialized for streams somebody listens to; the engine always ticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from .auth import ApiError
from .klines import MINUTE_MS, Formatter, OpenBar, Series, parse_query, query
from .listenkeys import ListenKeyRegistry
from .market.bar import bar_updates
from .specs import SymbolSpec
from .ws_market import MarketHub
from .ws_user import UserHub
from .wsconn import ConnRegistry

BINANCE_CLOSE_DELAY_MS = 2_000
_CLOSE, _UPDATE, _MARK = 0, 1, 2


class Driver:
    """Owns the per-minute schedule, the kline store and the fan-out of what happens."""

    def __init__(
        self,
        *,
        market: Any,
        exchange: Any,
        specs: dict[str, SymbolSpec],
        market_hub: MarketHub,
        user_hub: UserHub,
        registry: ConnRegistry,
        listen_keys: ListenKeyRegistry,
        updates_per_minute: int = 10,
        close_delay_ms: int = 0,
        history_cap: int = 10_080,
        max_conn_age_ms: int = 24 * 3600 * 1000,
    ) -> None:
        if not 0 <= close_delay_ms < MINUTE_MS:
            raise ValueError("close_delay_ms must be in [0, 60000)")
        if updates_per_minute < 1:
            raise ValueError("updates_per_minute must be >= 1")
        self.market, self.exchange = market, exchange
        self.market_hub, self.user_hub = market_hub, user_hub
        self.registry, self.listen_keys = registry, listen_keys
        self.updates_per_minute = updates_per_minute
        self.close_delay_ms = close_delay_ms
        self.max_conn_age_ms = max_conn_age_ms
        self.symbols: list[str] = list(specs)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.specs = specs
        self.fmt = [Formatter(specs[s]) for s in self.symbols]
        self.series = [Series(history_cap) for _ in self.symbols]
        self.open = [OpenBar() for _ in self.symbols]
        self.last = [0.0 for _ in self.symbols]
        self.kline_streams = [f"{s.lower()}@kline_1m" for s in self.symbols]
        self._mark_streams: dict[str, tuple[int, bool]] = {}
        for i, s in enumerate(self.symbols):
            self._mark_streams[f"{s.lower()}@markPrice@1s"] = (i, False)
            self._mark_streams[f"{s.lower()}@markPrice"] = (i, True)
        self.last_closed: list[bytes | None] = [None for _ in self.symbols]
        # the record: open times of the first and last `x:true` klines published
        self.emitted_from = [-1 for _ in self.symbols]
        self.emitted_upto = [-1 for _ in self.symbols]
        self._next_trade_id = [1 for _ in self.symbols]
        self._t0 = -1  # open time of the minute whose schedule is loaded
        self._sched: list[tuple[int, int, int, Any]] = []
        self._pos = 0
        self._bars: list[Any] = [None for _ in self.symbols]
        self._waiter: asyncio.Future[None] | None = None
        self.budget = 4000  # events per pass of `run`
        self.counters = {"minutes": 0, "updates": 0, "closes": 0, "marks": 0, "engine_events": 0}

    # ---- history before the start ----------------------------------------------------
    def warm_up(self, start_ms: int, minutes: int) -> None:
        """Fill the history with `minutes` closed bars before `start_ms` (no events), and
        give the engine each symbol's last price so orders can be placed at once."""
        t0 = start_ms - start_ms % MINUTE_MS
        for m in range(minutes, 0, -1):
            t = t0 - m * MINUTE_MS
            for i, sym in enumerate(self.symbols):
                bar = self.market_bar(sym, t)
                if bar is None:
                    continue
                row = (t, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume,
                       bar.trades, bar.taker_buy_volume, bar.taker_buy_quote_volume,
                       self._next_trade_id[i])  # fmt: skip
                self.series[i].append(row)
                self._next_trade_id[i] += bar.trades
                self.last[i] = bar.close
        for i, sym in enumerate(self.symbols):
            if self.last[i] > 0:
                self.exchange.advance_price(sym, Decimal(self.fmt[i].p(self.last[i])), t0 - 1)
        self._load_minute(t0)  # the start minute is always the first one played

    # ---- market adapter ------------------------------------------------------------------
    def market_bar(self, symbol: str, t0: int) -> Any:
        """The market's bar opening at `t0`, or None (before/after the data)."""
        index = self.market.index_at(t0)
        return None if index < 0 else self.market.bar(symbol, index)

    def _start_bar(self, i: int, t0: int, bar: Any) -> OpenBar:
        ob = self.open[i]
        price = float(bar.open)
        ob.t, ob.o, ob.h, ob.l, ob.c = t0, price, price, price, price
        ob.v = ob.q = ob.tv = ob.tq = 0.0
        ob.n = 0
        ob.first_id = self._next_trade_id[i]
        self._bars[i] = bar
        return ob

    # ---- the schedule ----------------------------------------------------------------------
    def _load_minute(self, t0: int) -> None:
        """Close the previous candles and lay out every event of minute `t0`, sorted."""
        sched: list[tuple[int, int, int, Any]] = []
        for i, sym in enumerate(self.symbols):
            ob = self.open[i]
            if ob.t >= 0 and ob.t < t0:
                row = ob.row()
                self.series[i].append(row)
                self._next_trade_id[i] = ob.first_id + ob.n
                sched.append((t0 + self.close_delay_ms, _CLOSE, i, row))
            bar = self.market_bar(sym, t0)
            if bar is None:
                ob.t = -1
                continue
            self._start_bar(i, t0, bar)
            for upd in bar_updates(bar, self.updates_per_minute - 1):
                sched.append((t0 + int(upd[0]), _UPDATE, i, upd))
        sched.extend((t0 + k * 1000, _MARK, k, None) for k in range(60))
        sched.sort()  # (ts, kind, index) is unique, so `data` is never compared
        self._sched, self._pos, self._t0 = sched, 0, t0
        self.counters["minutes"] += 1

    def next_due_ms(self) -> int:
        if self._pos < len(self._sched):
            return self._sched[self._pos][0]
        return self._t0 + MINUTE_MS

    def step(self, now_ms: int, budget: int | None = None) -> bool:
        """Do everything due at or before `now_ms`, or at most `budget` events.

        Returns True when events due by `now_ms` are left (budget exhausted)."""
        left = budget if budget is not None else -1
        if self._t0 < 0:
            self._load_minute(now_ms - now_ms % MINUTE_MS)
        while True:
            sched, pos = self._sched, self._pos
            while pos < len(sched) and sched[pos][0] <= now_ms:
                if left == 0:
                    self._pos = pos
                    return True
                left -= 1
                ts, kind, i, data = sched[pos]
                pos += 1
                self._pos = pos
                if kind == _UPDATE:
                    self._update(i, ts, data)
                elif kind == _CLOSE:
                    self._close(i, ts, data)
                else:
                    self._marks(i, ts)
            self._pos = pos
            if now_ms >= self._t0 + MINUTE_MS:
                self._load_minute(self._t0 + MINUTE_MS)
                self.registry.cut_older_than(now_ms, self.max_conn_age_ms)
                continue
            break
        for lk in self.listen_keys.pop_expired(now_ms):
            self.user_hub.expire(lk, now_ms)
        return False

    def _update(self, i: int, ts: int, upd: tuple[Any, ...]) -> None:
        ob = self.open[i]
        _, price, cum_v, cum_q, cum_n, high, low = upd
        ob.c = price
        ob.h, ob.l, ob.v, ob.q, ob.n = high, low, cum_v, cum_q, cum_n
        bar = self._bars[i]
        if cum_v >= bar.volume:  # the last point equals the bar exactly
            ob.tv, ob.tq = bar.taker_buy_volume, bar.taker_buy_quote_volume
        elif bar.volume:
            share = cum_v / bar.volume
            ob.tv, ob.tq = bar.taker_buy_volume * share, bar.taker_buy_quote_volume * share
        self.last[i] = price
        self.counters["updates"] += 1
        events = self.exchange.advance_price(self.symbols[i], Decimal(self.fmt[i].p(price)), ts)
        if events:
            self.push_events(events)
        stream = self.kline_streams[i]
        if self.market_hub.wants(stream):
            self.market_hub.publish(stream, self.fmt[i].event(ob.row(), False, ts))

    def _close(self, i: int, ts: int, row: tuple[float, ...]) -> None:
        payload = self.fmt[i].event(row, True, ts)
        self.last_closed[i] = payload
        self.emitted_upto[i] = int(row[0])
        if self.emitted_from[i] < 0:
            self.emitted_from[i] = int(row[0])
        self.counters["closes"] += 1
        self.market_hub.publish(self.kline_streams[i], payload)

    def _marks(self, second: int, ts: int) -> None:
        """Mark-price events for subscribed symbols only (a set intersection in C)."""
        hub = self.market_hub
        wanted = hub.active.intersection(self._mark_streams)
        if not wanted:
            return
        three = second % 3 == 0
        for stream in sorted(wanted):
            i, every_3s = self._mark_streams[stream]
            if every_3s and not three:
                continue
            hub.publish(stream, self._mark_payload(i, ts))
            self.counters["marks"] += 1

    def push_events(self, events: list[Any]) -> None:
        for ev in events:
            self.counters["engine_events"] += 1
            self.user_hub.push_event(ev.account_id, ev.payload)

    # ---- prices --------------------------------------------------------------------------
    def _mark_payload(self, i: int, ts: int) -> bytes:
        """`markPriceUpdate` from the engine's mark and funding state (one source of truth)."""
        pi = self.exchange.premium_index(self.symbols[i], ts)
        return orjson.dumps(
            {"e": "markPriceUpdate", "E": ts, "s": pi["symbol"], "p": pi["markPrice"],
             "i": pi["indexPrice"], "P": pi["estimatedSettlePrice"], "r": pi["lastFundingRate"],
             "T": pi["nextFundingTime"]}
        )  # fmt: skip

    def premium_index(self, symbol: str | None, now_ms: int) -> Any:
        """`GET /fapi/v1/premiumIndex`: one object for a symbol, a list without one."""
        if symbol is not None:
            if symbol not in self.index:
                raise ApiError(400, -1121, "Invalid symbol.")
            return self.exchange.premium_index(symbol, now_ms)
        return [self.exchange.premium_index(s, now_ms) for s in self.symbols]

    # ---- klines for REST and the record ---------------------------------------------------
    def rest_klines(
        self, symbol: str, interval: str, start: str | None, end: str | None,
        limit: str | None, now_ms: int,
    ) -> list[list[Any]]:  # fmt: skip
        i = self.index.get(symbol)
        if i is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        interval_ms, s, e, lim = parse_query(interval, start, end, limit)
        rows = query(self.series[i], self.open[i], interval_ms, s, e, lim)
        fmt = self.fmt[i]
        return [fmt.rest_row(r, interval_ms) for r in rows]

    def closed_klines(self, symbol: str) -> list[dict[str, Any]]:
        """The simulator's record: every closed 1m kline it published on the WebSocket
        (`k` objects, oldest first; history served only over REST is not in it). Kept
        as long as the history (`history_cap` rows per symbol)."""
        i = self.index[symbol]
        lo, hi = self.emitted_from[i], self.emitted_upto[i]
        if lo < 0:
            return []
        fmt = self.fmt[i]
        return [fmt.k(r, True) for r in self.series[i].rows if lo <= r[0] <= hi]

    def last_closed_payload(self, symbol: str) -> bytes | None:
        return self.last_closed[self.index[symbol]]

    # ---- the loop --------------------------------------------------------------------------
    def wake(self) -> None:
        """Cut the current sleep short (speed/pause/advance changed the schedule)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(
        self, clock: Any, tick_s: float = 0.002, idle_s: float = 0.25,
        may_resume: Callable[[], bool] = lambda: True,
    ) -> None:  # fmt: skip
        """Advance with the clock forever; `wake()` cuts a sleep short.

        Each pass does at most `budget` events so the server stays responsive while the
        driver catches up after a burst (a clock jump, a slow machine)."""
        loop = asyncio.get_running_loop()
        while True:
            behind = self.step(clock.now_ms(), budget=self.budget)
            self.registry.flush_all()
            await self.registry.relieve(clock, may_resume)
            if behind:
                await asyncio.sleep(0)
                continue
            delay = clock.sleep_seconds_until(self.next_due_ms())
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(min(max(delay, tick_s), idle_s), _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
