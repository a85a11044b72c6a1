"""position_controller: exits within milliseconds of an account event or a price tick, with
a periodic sweep as reconciliation and safety net.  The async shell around
`PositionControllerCore`; every decision is the core's.

Inputs, each acted on at once:
- `Keys.stream_account` (consumer group): ACCOUNT_UPDATE, ORDER_TRADE_UPDATE, ALGO_UPDATE,
  ACCOUNT_CONFIG_UPDATE from account_feed.  Each entry is acknowledged after its effect
  (close sent, trade written, state saved); a redelivered one is harmless (see below).
- Mark prices: the exchange's `<symbol>@markPrice@1s` WebSocket, directly, for the
  configured symbols.  WHY not `Keys.prices`: the emergency rule is PnL on margin, which
  the exchange computes from the MARK price; polling a hash adds its poll period, and a
  stream hop adds Redis on the close path.  A tick becomes a close with no Redis call.
- `Keys.stream_klines` (consumer group): closed klines -> trend view (counter-trend
  rule), ATR (protective stop distance), favourable excursion (no-progress rule).
- The sweep, every `trading.position_check_interval` s (`service.fallback_interval` while
  account_feed is not healthy, since the cache is then stale): REST positionRisk
  (reconciles the position cache and the core; liquidation prices; leverage), REST
  openAlgoOrders (protection check), every rule, unanswered closes re-sent.  Before
  reconciling, fills the user data stream may have lost (account_feed down or restarted,
  or an orphan closing fill) are fetched over REST userTrades and replayed into the
  ledger (`_replay_gaps`, `sources.GapWatch`), so a round trip inside the gap is recorded.

Start-up: restore the persisted state, positions from the account_feed cache (REST
positionRisk when it is empty or account_feed is not healthy), catch up on the account
stream (own pending entries first), then go live and sweep at once.

No double close across restarts and Redis outages: the last applied account event per
symbol is persisted (an older redelivered event is dropped), close ids are deterministic
and reduce-only, and the executor remembers what it sent (see executor.py).  Writes go
through the outbox (persistence.py), so an outage delays them; closes never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from redis.exceptions import RedisError

from services.kline_feed.connections import FeedConnection
from services.position_controller.core import Action, PositionControllerCore
from services.position_controller.executor import Executor
from services.position_controller.inputs import (
    AccountEvent,
    mark_stream_url,
    parse_account_event,
    parse_mark_price,
)
from services.position_controller.persistence import (
    ControllerState,
    Outbox,
    StateError,
    load_sent_orders,
    load_state,
)
from services.position_controller.reconcile import PositionDiff, reconcile
from services.position_controller.sources import DecisionBook, GapWatch, Sources
from shared.binance.breaker import BreakerState
from shared.binance.client import BinanceClient
from shared.bus import Consumer
from shared.codec import decode_event
from shared.config import Settings
from shared.errors import MessageError
from shared.health import Status
from shared.models import AccountUpdate, AlgoUpdate, ConfigUpdate, Kline, Position
from shared.models import OrderUpdate as OrderUpdateEvent
from shared.runtime import Service

log = logging.getLogger(__name__)

_WARMUP_MAX = 50_000
_COUNTERS = ("events_in", "events_ignored", "prices_in", "klines_in", "klines_old", "sweeps",
             "sweep_errors", "rest_fallbacks", "rest_errors", "bad_messages", "stale_events",
             "decision_hits", "decision_misses", "lots_rebuilt", "gap_replays")  # fmt: skip


class PositionControllerService(Service):
    name = "position_controller"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.client: BinanceClient = None  # type: ignore[assignment]  # set in setup()
        self.core: PositionControllerCore = None  # type: ignore[assignment]
        self.outbox: Outbox = None  # type: ignore[assignment]
        self.executor: Executor = None  # type: ignore[assignment]
        self.marks: FeedConnection | None = None
        self.account_in: Consumer = None  # type: ignore[assignment]
        self.klines_in: Consumer = None  # type: ignore[assignment]
        self.c = dict.fromkeys(_COUNTERS, 0)
        self.events_by_type: dict[str, int] = {}
        self.reconcile_diffs: dict[str, int] = {}  # cache vs exchange, by kind
        self.state_diffs: dict[str, int] = {}  # the core's memory vs exchange, by kind
        self.position_source = ""
        self.last_sweep_ms: int | None = None
        self.feed_alive = False
        self.sources: Sources = None  # type: ignore[assignment]
        self.decisions: DecisionBook = None  # type: ignore[assignment]
        self.gaps: GapWatch = None  # type: ignore[assignment]
        self._event_times: dict[str, int] = {}
        self._kline_last: dict[str, int] = {}
        self._leverage: dict[str, int] = {}
        self._sweep_now = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------
    async def setup(self) -> None:
        s = self.settings
        self.client = BinanceClient(s, self.redis)
        self.outbox = Outbox(self.redis, self.keys, self.bus.maxlen)
        self.sources = Sources(self.redis, self.keys, self.client, self.c)
        self.decisions = DecisionBook(self.redis, self.keys, self.c)
        self.gaps = GapWatch(s.exchange.symbols)
        self.core = PositionControllerCore(s, {}, decision_lookup=self.decisions.get)
        await self._load_filters()
        self.account_in = self.consumer(self.keys.stream_account, block_ms=1000, start_id="$")
        await self.account_in.ensure_group()  # before reading positions: no gap after them
        kline_start = await self._warm_up()
        self.klines_in = self.consumer(self.keys.stream_klines, block_ms=1000, count=500,
                                       start_id=kline_start)  # fmt: skip
        state = await self._load_state()
        retry_ms = round(s.risk.close_retry_seconds * 1000)
        sent = await load_sent_orders(self.redis, self.keys, int(time.time() * 1000), 86_400_000)
        self.executor = Executor(self.client, self.outbox, self.keys, sent=sent,
                                 replay_window_ms=int(retry_ms * 0.8),
                                 on_flat=self._sweep_now.set)  # fmt: skip
        await self._load_positions(state)
        for lot in list(self.core.ledger.lots.values()):
            await self._ensure_decision(lot.entry_client_id)
        ws = s.websocket
        self.marks = FeedConnection(
            "mark_prices", mark_stream_url(s.exchange.ws_url, s.exchange.symbols),
            [f"{x.lower()}@markPrice@1s" for x in s.exchange.symbols], self._on_mark,
            reconnect_delay=ws.reconnect_delay, max_delay=ws.reconnect_max_delay,
            stall_timeout=ws.stall_timeout, max_age_ms=ws.max_connection_age * 1000,
            exchange_now=lambda: None,
        )  # fmt: skip

    async def run(self) -> None:
        await self._catch_up()
        self.spawn(self.outbox.run(self.stop_event), "outbox", critical=True)
        self.spawn(self.account_in.run(self._on_account_entry, self.stop_event, per_entry=True),
                   "account_events", critical=True)  # fmt: skip
        self.spawn(self.klines_in.run(self._on_kline_entry, self.stop_event, per_entry=True),
                   "klines", critical=True)  # fmt: skip
        assert self.marks is not None
        marks = self.spawn(self.marks.run(), "mark_prices")
        self.spawn(self._sweep_loop(), "sweep", critical=True)
        await self.stop_event.wait()
        marks.cancel()

    async def teardown(self) -> None:
        if self.core is not None and self.outbox is not None:
            self._save_state()
            try:
                await asyncio.wait_for(self.outbox.flush(), 2.0)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("final flush failed, %d writes lost: %r", self.outbox.pending, exc)
        if self.client is not None:
            await self.client.close()

    async def _catch_up(self) -> None:
        """Handle what the account stream holds for us (own pending entries first) before
        going live, so a restart applies the fills it missed before judging positions."""
        work = self.account_in.per_entry(self._on_account_entry)
        try:
            await self.account_in.recover(work, self.stop_event, 100)
            while not self.stopping and (batch := await self.account_in.read(block_ms=1)):
                await self.account_in.handle(work, batch, recovered=False)
        except (RedisError, OSError) as exc:
            log.warning("catch-up on the account stream interrupted: %r", exc)

    # ---- account events -------------------------------------------------------------
    async def _on_account_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            etype, data, _meta = decode_event(fields)
            if etype == "listenKeyExpired":  # events may have been missed: reconcile now
                self._sweep_now.set()
                return
            event = parse_account_event(etype, data)
        except MessageError:
            self.c["bad_messages"] += 1
            raise  # the consumer dead-letters it
        if event is None:
            self.c["events_ignored"] += 1
            return
        self.c["events_in"] += 1
        self.events_by_type[etype] = self.events_by_type.get(etype, 0) + 1
        self.mark_event(event.event_time)
        await self._execute(await self._apply(event), event.event_time)
        self._save_state()
        await self.outbox.flush()  # trades and state written before the entry is acked

    async def _apply(self, event: AccountEvent) -> list[Action]:
        core, now = self.core, event.event_time
        if isinstance(event, AccountUpdate):
            return core.on_account_update(self._fresh(event), now)
        if isinstance(event, OrderUpdateEvent):
            self.executor.on_order_update(event)
            lot = core.ledger.lot(event.symbol)
            if lot is not None:  # a closing fill: the trade joins the entry's record
                await self._ensure_decision(lot.entry_client_id)
            actions = core.on_order_update(event, now)
            lot = core.ledger.lot(event.symbol)
            if lot is not None and event.is_fill:  # an entry: its record feeds the rules
                await self._ensure_decision(lot.entry_client_id)
            return actions
        if isinstance(event, AlgoUpdate):
            return core.on_algo_update(event, now)
        if event.symbol and event.leverage:
            self._leverage[event.symbol] = event.leverage
        core.on_config_update(event)
        return []

    def _fresh(self, update: AccountUpdate) -> AccountUpdate:
        """Drop position entries older than the last applied one (kept across restarts,
        so a redelivered old event cannot revive a position that has since closed)."""
        keep = []
        for p in update.positions:
            last = self._event_times.get(p.symbol)
            if last is not None and update.event_time < last:
                self.c["stale_events"] += 1
                continue
            self._event_times[p.symbol] = update.event_time
            keep.append(p)
        if len(keep) == len(update.positions):
            return update
        return replace(update, positions=tuple(keep))

    # ---- prices and klines ----------------------------------------------------------
    def _on_mark(self, raw: bytes, _conn: Any) -> None:
        """Hot path: one mark price -> the core -> a close, with no Redis call before it.
        The sending runs as its own tracked task, so a slow REST answer for one symbol
        never holds up the prices of the others."""
        try:
            parsed = parse_mark_price(raw)
        except MessageError as exc:
            self.c["bad_messages"] += 1
            log.warning("bad mark price frame: %s", exc.reason)
            return
        if parsed is None:
            return
        symbol, price, event_time = parsed
        self.c["prices_in"] += 1
        actions = self.core.on_price(symbol, price, event_time)
        if actions:
            self.spawn(self._execute_logged(actions, event_time), f"act:{symbol}")

    async def _on_kline_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            etype, data, _meta = decode_event(fields)
            kline = Kline.from_dict(data) if etype == "kline" else None
        except MessageError:
            self.c["bad_messages"] += 1
            raise
        if kline is None or not kline.closed:
            return
        if kline.open_time <= self._kline_last.get(kline.symbol, -1):
            self.c["klines_old"] += 1
            return
        self._kline_last[kline.symbol] = kline.open_time
        self.c["klines_in"] += 1
        now = max(kline.event_time, kline.close_time)
        await self._execute(self.core.on_kline(kline, now), now)

    async def _warm_up(self) -> str:
        """Feed the newest closed klines of the stream to the core (trend views and ATR
        ready at once); returns the id a new consumer group starts after."""
        n = min(self.settings.trading.history_bars * len(self.settings.exchange.symbols),
                _WARMUP_MAX)  # fmt: skip
        klines, last_id = await self.sources.recent_klines(n)
        for k in klines:
            if k.closed and k.open_time > self._kline_last.get(k.symbol, -1):
                self._kline_last[k.symbol] = k.open_time
                self.core.on_kline(k, k.event_time)
        return last_id

    # ---- the sweep ------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while not self.stopping:
            try:
                await self.sweep_once()
            except Exception:
                self.c["sweep_errors"] += 1
                log.exception("sweep failed")
            every = float(self.settings.trading.position_check_interval)
            if not self.feed_alive:
                every = min(every, self.settings.service.fallback_interval)
            stop = asyncio.ensure_future(self.stop_event.wait())
            soon = asyncio.ensure_future(self._sweep_now.wait())
            await asyncio.wait((stop, soon), timeout=every, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            soon.cancel()

    async def sweep_once(self) -> list[Action]:
        """One safety-net pass (also the first thing after start-up); returns its actions."""
        self._sweep_now.clear()
        now = await self.sources.exchange_now()
        snapshot = await self.sources.position_risk()
        held = self.core.positions or snapshot is None or any(p.size for p in snapshot.positions)
        # weight 40: only if a position needs protection or a closed one may have left legs
        watch = held or not self.c["sweeps"] or self.core.recently_flat(now)
        algos = await self.sources.algo_orders() if watch else []
        if not self.core.filters:
            await self._load_filters()
        self.feed_alive, session = await self.sources.feed_state()  # before _replay_gaps
        rows = snapshot.positions if snapshot is not None else None
        liq = snapshot.liquidation if snapshot is not None else None
        if snapshot is not None:
            self._note_leverage(snapshot.leverage, now)
            if not self.feed_alive:  # the cache is stale: REST rows are the positions
                self.c["rest_fallbacks"] += 1
            self._reconcile_cache(await self.sources.cache(), snapshot.positions, now)
        replayed = await self._replay_gaps(now, rows, session)
        for lot in list(self.core.ledger.lots.values()):
            await self._ensure_decision(lot.entry_client_id)
        actions = replayed + self.core.sweep(now, rows, algos, liq)
        if rows is not None and self.core.last_reconcile is not None:
            self._note_repairs(self.core.last_reconcile.diffs, now)
        await self._execute(actions, now)
        self.c["sweeps"] += 1
        self.last_sweep_ms = now
        self._save_state()
        try:
            await self.outbox.flush()
        except (RedisError, OSError):
            pass  # kept in the outbox; its own loop retries
        return actions

    async def _replay_gaps(
        self, now: int, rows: list[Position] | None, session: str | None
    ) -> list[Action]:
        """Fills the user data stream may have lost (account_feed down, or an orphan
        closing fill) fetched over REST and applied before reconciling, so a round trip
        inside the gap is recorded with its real fills (once: trade ids and the
        `trades:recorded` guard), not estimated or dropped.  See `GapWatch`."""
        ledger = self.core.ledger
        held = set(ledger.lots) | {p.symbol for p in rows or () if p.size != 0}
        actions: list[Action] = []
        rate = float(self.client.stats().get("clock_rate") or 1.0)  # a fast sim: > 1
        stale_ms = round(self.settings.service.heartbeat_ttl * 1000 * rate)
        targets = self.gaps.targets(now, self.feed_alive, held, ledger.replay_needed, session,
                                    stale_ms)  # fmt: skip
        for symbol, start in targets.items():
            fills = await self.sources.gap_fills(symbol, start, ledger)
            if fills is None:
                continue  # REST failed: the orphan stays in `replay_needed` for next sweep
            self.c["gap_replays"] += 1
            actions += self.core.replay(symbol, fills, now)
        return actions

    def _reconcile_cache(self, cache: dict[str, Position] | None, rows: list[Position],
                         now: int) -> None:  # fmt: skip
        """The position-cache hashes against the exchange: count and repair differences.
        Positions changed within `risk.reconcile_grace` are left to account_feed."""
        if cache is None:
            return
        grace = round(self.settings.risk.reconcile_grace * 1000)
        skip = {p.symbol for p in (*cache.values(), *rows) if p.updated_at > now - grace}
        tol = self.core.config.entry_rel_tol
        result = reconcile(cache, rows, skip=skip, entry_rel_tol=tol)
        for diff in result.diffs:
            self.reconcile_diffs[diff.kind.value] = self.reconcile_diffs.get(diff.kind.value, 0) + 1
            detail = {"kind": diff.kind.value, "reason": diff.detail}
            self.executor.risk("cache_diff", diff.symbol, now, detail)
        for repair in result.repairs:
            self.outbox.position(repair.symbol, repair.position, now)

    # ---- carrying out actions -------------------------------------------------------
    async def _execute(self, actions: Iterable[Action], now: int) -> None:
        await self.executor.carry_out(actions, now)

    async def _execute_logged(self, actions: list[Action], now: int) -> None:
        try:
            await self.executor.carry_out(actions, now)
        except Exception:
            log.exception("carrying out actions failed")

    # ---- state ----------------------------------------------------------------------
    def _save_state(self) -> None:
        core = self.core
        positions = core.positions
        opened = {s: t for s in positions if (t := core.open_time(s)) is not None}
        state = ControllerState(opened, dict(self._event_times), tuple(positions.values()),
                                core.ledger.to_state())  # fmt: skip
        self.outbox.state(state.to_json())

    async def _load_state(self) -> ControllerState | None:
        try:
            state = await load_state(self.redis, self.keys)
            if state is not None:
                self.core.ledger.restore(state.ledger)
                self._event_times.update(state.event_times)
            return state
        except (StateError, KeyError, TypeError, ValueError) as exc:
            self.c["bad_messages"] += 1
            log.error("persisted state ignored (the exchange will be reconciled): %r", exc)
            return None

    async def _load_positions(self, state: ControllerState | None) -> None:
        """Positions from the fresh cache, else REST, else the persisted ones (see
        `Sources.start_positions`); lots the state lacks are rebuilt from the stream."""
        positions, self.position_source, snapshot = await self.sources.start_positions(
            state.positions if state is not None else ()
        )
        self.feed_alive = self.position_source == "cache"
        if snapshot is not None:
            self.c["rest_fallbacks"] += 1
            self._note_leverage(snapshot.leverage, self.client.server_ms())
        for symbol, fills in (await self.sources.lot_fills(positions, self.core.ledger)).items():
            lev = self._leverage.get(symbol)
            for fill in fills:
                self.core.ledger.on_fill(fill, lev)
            self.c["lots_rebuilt"] += 1
        opened = state.open_times if state is not None else {}
        self.core.load_positions(positions, opened)

    # ---- helpers ------------------------------------------------------------------
    async def _ensure_decision(self, client_id: str) -> None:
        """Load the entry's DecisionRecord into the core (once; see DecisionBook)."""
        record = await self.decisions.load(client_id)
        if record is not None:
            self.core.on_decision(record)

    async def _load_filters(self) -> None:
        found = await self.sources.filters()
        if found:
            self.core.filters.update(found)

    def _note_repairs(self, diffs: Iterable[PositionDiff], now: int) -> None:
        """Count the core's repairs; like the core, a repaired symbol's event time moves
        on (to the snapshot's), so an older event redelivered after a restart is dropped."""
        for diff in diffs:
            kind = diff.kind.value
            self.state_diffs[kind] = self.state_diffs.get(kind, 0) + 1
            when = now if diff.exchange is None else diff.exchange.updated_at
            self._event_times[diff.symbol] = max(self._event_times.get(diff.symbol, 0), when)

    def _note_leverage(self, leverage: dict[str, int], now: int) -> None:
        for symbol, lev in leverage.items():
            if self._leverage.get(symbol) != lev:
                self._leverage[symbol] = lev
                self.core.on_config_update(ConfigUpdate(symbol, lev, None, now, now))

    # ---- health ---------------------------------------------------------------------
    def healthy(self) -> bool | Status:
        if self.client is not None and self.client.breaker.state is BreakerState.OPEN:
            return "degraded"
        if self.marks is not None and not self.marks.connected:
            return "degraded"
        return True if self.feed_alive else "degraded"

    def stats(self) -> dict[str, Any]:
        if self.core is None:
            return {"positions": 0}
        ex = self.executor.stats() if self.executor else {}
        out = self.outbox.stats()
        return {
            "positions": len(self.core.positions),
            "position_source": self.position_source,
            **{f"{k}_total": v for k, v in self.c.items()},
            "events_by_type": {f"{k}_total": v for k, v in self.events_by_type.items()},
            "closes_sent_total": ex.get("closes_sent_total", 0),
            "protections_replaced_total": ex.get("protections_replaced_total", 0),
            "trades_recorded_total": out["trades_recorded_total"],
            "reconcile_diffs": {f"{k}_total": v for k, v in self.reconcile_diffs.items()},
            "state_diffs": {f"{k}_total": v for k, v in self.state_diffs.items()},
            "last_sweep_ms": self.last_sweep_ms,
            "account_feed_alive": self.feed_alive,
            "executor": ex,
            "outbox": out,
            "core": asdict(self.core.counters),
            "ledger": asdict(self.core.ledger.counters),
            "exchange": self.client.stats() if self.client else {},
            "mark_prices": self.marks.state() if self.marks else {},
        }
