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

Speed (>= 50k kline messages/s from one process): a minute's updates for all symbols are
computed up front in one numpy pass (`klines.plan_minute`) and laid out as one schedule entry
per (time, kind) holding every symbol's event in symbol order, so the hot loop per update is
one tuple store, one engine call and, when somebody listens, one bytes `%` per wire form
(`Formatter.update_template`), handed to `MarketHub.publish_encoded` once per entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from .auth import ApiError
from .klines import MINUTE_MS, F, Formatter, N, OpenBar, Series, parse_query, plan_minute, query
from .listenkeys import ListenKeyRegistry
from .specs import SymbolSpec
from .ws_market import COMBINED, RAW, MarketHub
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
        if not 1 <= updates_per_minute <= MINUTE_MS:
            raise ValueError("updates_per_minute must be in [1, 60000] (one per ms at most)")
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
        self._marks_wanted: tuple[int, list[str]] = (-1, [])  # (hub version, streams)
        self.last_closed: list[bytes | None] = [None for _ in self.symbols]
        # the record: open times of the first and last `x:true` klines published
        self.emitted_from = [-1 for _ in self.symbols]
        self.emitted_upto = [-1 for _ in self.symbols]
        self._next_trade_id = [1 for _ in self.symbols]
        self._t0 = -1  # open time of the minute whose schedule is loaded
        # (time, kind, data), sorted by (time, kind): closes [(i, row)], updates
        # [klines.Update] (symbol order), or the second of a mark tick
        self._sched: list[tuple[int, int, Any]] = []
        self._pos = 0  # next entry of `_sched`
        self._sub = 0  # events of that entry already done (a budget can stop mid-entry)
        # this minute's update templates per symbol, built when a stream first needs them
        self._tpl: list[tuple[int, bytes | None, bytes | None] | None] = []
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

    # ---- the schedule ----------------------------------------------------------------------
    def _load_minute(self, t0: int) -> None:
        """Close the previous candles and lay out every event of minute `t0`, sorted.

        Order as if every event were its own (time, kind, symbol) entry: closes, then
        updates, then the mark tick at equal times; symbols in order within a kind."""
        closes: list[tuple[int, tuple[Any, ...]]] = []
        opened: list[tuple[int, Any, int]] = []
        for i, sym in enumerate(self.symbols):
            ob = self.open[i]
            if ob.t >= 0 and ob.t < t0:
                row = ob.row()
                self.series[i].append(row)
                self._next_trade_id[i] = int(row[F]) + int(row[N])
                closes.append((i, row))
            bar = self.market_bar(sym, t0)
            if bar is None:
                ob.t = -1
                continue
            ob.start(t0, float(bar.open), self._next_trade_id[i])
            opened.append((i, bar, self._next_trade_id[i]))
        sched: list[tuple[int, int, Any]] = []
        if closes:
            sched.append((t0 + self.close_delay_ms, _CLOSE, closes))
        plan = plan_minute(t0, opened, self.updates_per_minute - 1, self.fmt)
        sched.extend((ts, _UPDATE, group) for ts, group in plan.items())
        sched.extend((t0 + k * 1000, _MARK, k) for k in range(60))
        sched.sort()  # (time, kind) is unique per entry, so `data` is never compared
        self._tpl = [None] * len(self.symbols)
        self._sched, self._pos, self._sub, self._t0 = sched, 0, 0, t0
        self.counters["minutes"] += 1

    def next_due_ms(self) -> int:
        if self._pos < len(self._sched):
            return self._sched[self._pos][0]
        return self._t0 + MINUTE_MS

    def step(self, now_ms: int, budget: int | None = None) -> bool:
        """Do everything due at or before `now_ms`, or at most `budget` events.

        Returns True when events due by `now_ms` are left (budget exhausted). One event is
        one symbol's close or update, or one mark tick."""
        left = budget if budget is not None else -1
        if self._t0 < 0:
            self._load_minute(now_ms - now_ms % MINUTE_MS)
        while True:
            sched = self._sched
            while self._pos < len(sched) and sched[self._pos][0] <= now_ms:
                if left == 0:
                    return True
                ts, kind, data = sched[self._pos]
                if kind == _MARK:
                    left -= 1
                    self._pos += 1
                    self._marks(data, ts)
                    continue
                start = self._sub
                stop = len(data) if left < 0 else min(len(data), start + left)
                if left > 0:
                    left -= stop - start
                if kind == _UPDATE:
                    self._updates(ts, data, start, stop)
                else:
                    for j in range(start, stop):
                        self._sub = j + 1
                        self._close(ts, *data[j])
                if stop < len(data):
                    self._sub = stop
                    return True
                self._pos, self._sub = self._pos + 1, 0
            if now_ms >= self._t0 + MINUTE_MS:
                self._load_minute(self._t0 + MINUTE_MS)
                self.registry.cut_older_than(now_ms, self.max_conn_age_ms)
                continue
            break
        for lk in self.listen_keys.pop_expired(now_ms):
            self.user_hub.expire(lk, now_ms)
        return False

    def _updates(self, ts: int, group: list[Any], start: int, stop: int) -> None:
        """Events `start:stop` of one update entry: the open candles move (`x:false`).

        The hot loop: everything per event was precomputed by `plan_minute`; `_sub` is
        kept exact so an exception skips only the event that raised, as before."""
        opens, last, symbols, streams = self.open, self.last, self.symbols, self.kline_streams
        advance, forms_of, tpls = self.exchange.advance_price, self.market_hub.forms.get, self._tpl
        encoded: list[tuple[str, bytes | None, bytes | None]] = []
        j = start
        try:
            for i, args, price in group[start:stop]:
                j += 1
                opens[i].last = args
                last[i] = args[2]
                events = advance(symbols[i], price, ts)
                if events:
                    self.push_events(events)
                stream = streams[i]
                forms = forms_of(stream)
                if forms:
                    tpl = tpls[i]
                    if tpl is None or tpl[0] != forms:
                        tpl = self._templates(i, forms)
                    raw, wrapped = tpl[1], tpl[2]
                    encoded.append((stream, raw and raw % args, wrapped and wrapped % args))
        finally:
            self._sub = j
            self.counters["updates"] += j - start
            if encoded:
                self.market_hub.publish_encoded(encoded)

    def _templates(self, i: int, forms: int) -> tuple[int, bytes | None, bytes | None]:
        """(forms, raw, combined) update templates of symbol i for this minute; a form
        `forms` does not ask for is None."""
        ob, fmt = self.open[i], self.fmt[i]
        raw = fmt.update_template(ob.t, ob.o, ob.first_id) if forms & RAW else None
        wrapped = (
            fmt.update_template(ob.t, ob.o, ob.first_id, self.kline_streams[i])
            if forms & COMBINED
            else None
        )
        self._tpl[i] = tpl = (forms, raw, wrapped)
        return tpl

    def _close(self, ts: int, i: int, row: tuple[float, ...]) -> None:
        payload = self.fmt[i].event(row, True, ts)
        self.last_closed[i] = payload
        self.emitted_upto[i] = int(row[0])
        if self.emitted_from[i] < 0:
            self.emitted_from[i] = int(row[0])
        self.counters["closes"] += 1
        self.market_hub.publish(self.kline_streams[i], payload)

    def _marks(self, second: int, ts: int) -> None:
        """Mark-price events for subscribed symbols only (looked up again only after a
        subscription changed: this runs every simulated second)."""
        hub = self.market_hub
        version, wanted = self._marks_wanted
        if version != hub.version:
            wanted = sorted(hub.active.intersection(self._mark_streams))
            self._marks_wanted = (hub.version, wanted)
        if not wanted:
            return
        three = second % 3 == 0
        for stream in wanted:
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
