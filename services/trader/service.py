"""trader: the async shell around `TraderCore` - closed klines in, ranked decisions and
protected entries out.  Every decision is the core's; this module only moves data.

Inputs
- `Keys.stream_klines` (consumer group, new entries only): each closed kline is fed to the
  core; the minute is decided ONCE, batched over symbols, when `MinuteGate` says it is
  complete (all symbols in, or `trading.decision_grace` s of event time after its first
  close, or a kline of the next minute, or the `trading.decision_timeout` timer).
  Malformed entries are counted and dropped; klines of other symbols are ignored.
- `Keys.stream_trades` (consumer group from the start): each closed trade reaches the core
  and the learner once (`model_io.ModelLifecycle.on_trade`); retraining runs in a worker
  thread after `model.retrain_after_trades` trades or on schedule (event time).
- Account: cache first, REST fallback (`account_view.AccountView`), used only for minutes
  with candidates; the halt switch `Keys.halt` with it, on every decision.  The read is
  started before the batch that completes a minute is fed (`_prefetch_account`), so it
  overlaps the feed instead of following it.

Outputs
- `Keys.stream_signals`: every decision, taken or not and why (`Decision.to_dict()`), in
  one pipelined round trip with `Keys.trader_last_decided` (a minute replayed after a
  restart is not decided again).
- Taken decisions go to one execution worker (`execution.EntryExecutor`: leverage, entry,
  protective algo orders or a close, every request on `Keys.stream_orders`).  Entries
  queued or in flight count as open positions in the next decision, and so does a
  symbol entered until the account cache or REST confirms that entry (`hold_keeper`,
  persisted in `Keys.trader_entries`); a symbol entered recently is only entered again
  after REST positionRisk shows it flat (`EntryExecutor.execute(confirm_flat=True)`).

Start-up: exchange filters, consumer groups (before the history, so nothing falls in
between), history over REST (`trading.history_bars` per symbol warm the contexts, so the
very next closed kline can be decided), the model (`model_io`), restored trades.

Latency (bench/bench_trader_decide.py; issue #6: a minute's 400 decisions published within
tens of ms of its last kline): kline acks ride with the next read (`ack_with_read`), the
account read overlaps the feed, cyclic GC waits until the minute is published
(`latency.GcHold`), and the core works over arrays where a minute has hundreds of rows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from services.trader.account_view import AccountSnapshot, AccountUnavailable, AccountView
from services.trader.core import Decision, TraderCore
from services.trader.execution import EntryExecutor, ExecutionOptions, ExecutionReport
from services.trader.hold_keeper import HoldKeeper
from services.trader.labels import Bars
from services.trader.latency import DecisionTiming, GcHold, drop_result
from services.trader.learner import Learner, ModelStore
from services.trader.minute_gate import MinuteGate
from services.trader.model_io import ModelLifecycle, bars_of, fetch_closed_klines, parse_trade
from services.trader.redis_io import TraderRedis
from services.trader.signals import SignalParams
from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.binance.retry import retry_async
from shared.brackets import Bracket, parse_leverage_brackets
from shared.bus import Consumer
from shared.codec import decode_event, packer
from shared.errors import MessageError
from shared.filters import SymbolFilters, parse_exchange_info
from shared.health import Status
from shared.kline_publisher import interval_ms
from shared.models import Kline
from shared.runtime import Service

log = logging.getLogger(__name__)

_COUNTERS = ("klines_in", "klines_ignored", "bad_messages", "minutes_decided", "candidates",
             "decisions", "entries_taken", "publish_errors", "account_unavailable",
             "warmup_errors", "trades_in")  # fmt: skip


COLD_START_SYMBOLS = 20  # symbols whose deep REST history labels the cold start
# Event-loop turns the prefetched account read needs to reach its socket write: one for
# the task's first step, one for redis-py's write task (it writes through asyncio.wait_for
# when the connection has a socket timeout, the default).  Fewer only loses the overlap.
PREFETCH_YIELDS = 2


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


class TraderService(Service):
    name = "trader"
    counter_keys = frozenset(_COUNTERS) | {"model_errors"}

    def __init__(
        self, settings: Any = None, *, signal_params: SignalParams | None = None,
        execution: ExecutionOptions | None = None,
    ) -> None:  # fmt: skip
        super().__init__(settings)
        self._params, self._exec_options = signal_params, execution
        self.c = dict.fromkeys(_COUNTERS, 0)
        self.not_taken: dict[str, int] = {}  # decisions not taken, by reason
        self.timing = DecisionTiming()
        self.halted = False
        self.client: BinanceClient = None  # type: ignore[assignment]  # set in setup()
        self.core: TraderCore = None  # type: ignore[assignment]
        self.learner: Learner = None  # type: ignore[assignment]
        self.models: ModelLifecycle = None  # type: ignore[assignment]
        self.gate: MinuteGate = None  # type: ignore[assignment]
        self.account: AccountView = None  # type: ignore[assignment]
        self.io: TraderRedis = None  # type: ignore[assignment]
        self.executor: EntryExecutor = None  # type: ignore[assignment]
        self.holds: HoldKeeper = None  # type: ignore[assignment]
        self.klines_in: Consumer = None  # type: ignore[assignment]
        self.trades_in: Consumer = None  # type: ignore[assignment]
        self.symbols: frozenset[str] = frozenset()
        self.executions: list[Any] = []  # recent ExecutionReports (newest last)
        self._queue: asyncio.Queue[tuple[Decision, float]] = asyncio.Queue()
        self._inflight: dict[str, float] = {}  # symbol -> notional of queued/running entries
        self._lock = asyncio.Lock()  # one minute decided at a time, klines fed in order
        self._gate_moved = asyncio.Event()
        self._iv = 60_000
        self.gc_hold = GcHold()
        self._packer = packer()  # decisions are packed on the event loop's thread only

    # ---- lifecycle ------------------------------------------------------------------
    async def setup(self) -> None:
        s = self.settings
        self._iv = interval_ms(s.websocket.kline_interval)
        self.client = BinanceClient(s, self.redis)
        filters = await self._load_filters()
        brackets = await self._load_brackets()
        filters = _with_bracket_max(filters, brackets)
        self.symbols = frozenset(s.exchange.symbols)
        params = self._params or SignalParams.from_risk(s.risk)
        self.learner = Learner(s.model, store=ModelStore(s.model.dir))
        self.core = TraderCore(s, filters, self.learner, signal_params=params, brackets=brackets)
        # acks ride with the next read: a minute's klines come in a few batches, and the
        # next one is wanted at once (bus.py, `ack_with_read`)
        self.klines_in = self.consumer(self.keys.stream_klines, start_id="$", count=1000,
                                       ack_with_read=True)  # fmt: skip
        self.trades_in = self.consumer(self.keys.stream_trades, start_id="0", count=100)
        await self.klines_in.ensure_group()  # before the history: nothing falls in between
        await self.trades_in.ensure_group()
        last = await self.redis.get(self.keys.trader_last_decided)
        self.gate = MinuteGate(self.symbols & set(filters), round(s.trading.decision_grace * 1000),
                               round(s.trading.decision_timeout * 1000),
                               int(last) if last else -1)  # fmt: skip
        history = await self._warm_up()
        self.models = ModelLifecycle(s, self.redis, self.keys, self.core, self.learner, params,
                                     lambda coro, name: self.spawn(coro, name))  # fmt: skip
        await self.models.start(history)
        await self.models.restore_trades()
        self.io = TraderRedis(self.redis, self.keys)
        self.account = AccountView(self.redis, self.keys, self.client, sorted(self.symbols))
        self.holds = HoldKeeper(self.redis, self.keys, self.client)
        await self.holds.load()
        self.executor = EntryExecutor(
            self.client, self.redis, self.keys, orders_maxlen=self.bus.maxlen(
                self.keys.stream_orders), options=self._exec_options or self._default_exec(),
            strategy_version=self.core.strategy_version,
        )  # fmt: skip
        await self._load_leverage()
        gc.collect()
        gc.freeze()  # history, model, contexts: out of every later GC pass (p99 latency)

    def _default_exec(self) -> ExecutionOptions:
        """Protection within half the position controller's grace; a close outlasts an
        open circuit breaker."""
        s = self.settings
        return ExecutionOptions(
            protect_deadline_s=max(1.0, s.risk.protection_grace / 2),
            close_deadline_s=s.exchange.breaker_open_seconds + 30.0,
        )

    async def run(self) -> None:
        self.spawn(self.klines_in.run(self._on_klines, self.stop_event), "klines", critical=True)
        self.spawn(self.trades_in.run(self._on_trade, self.stop_event, per_entry=True),
                   "trades", critical=True)  # fmt: skip
        self.spawn(self._execute_loop(), "execute", critical=True)
        self.spawn(self._timer_loop(), "minute_timer", critical=True)
        await self.stop_event.wait()
        self._gate_moved.set()  # the timer notices the stop at once

    async def teardown(self) -> None:
        self.gc_hold.release()
        if self.client is not None:
            await self.client.close()

    async def _load_filters(self) -> dict[str, SymbolFilters]:
        info = await retry_async(self.client.exchange_info, attempts=5, base_delay=0.5)
        return parse_exchange_info(info)

    async def _load_brackets(self) -> dict[str, tuple[Bracket, ...]]:
        """Leverage brackets of every symbol (one signed call, weight 1): the core keeps each
        entry's leverage and notional inside them, so the exchange never answers -2027."""
        resp = await retry_async(self.client.leverage_brackets, attempts=5, base_delay=0.5)
        return parse_leverage_brackets(resp)

    async def _warm_up(self) -> dict[str, Bars] | None:
        """History over REST for every symbol (bounded concurrency): the last
        `history_bars` warm the contexts.  With `model.cold_start=rest`, the first
        `COLD_START_SYMBOLS` symbols fetch `model.cold_start_bars` and all that is returned
        for labelling (WHY a subset: 1500-bar pages cost 10 weight each; 200 symbols x 3
        pages would wait minutes on the shared 2400/min budget at every start)."""
        s = self.settings
        keep, cold = s.trading.history_bars, s.model.cold_start == "rest"
        deep = set(sorted(self.symbols)[:COLD_START_SYMBOLS]) if cold else set()
        gate = asyncio.Semaphore(8)

        async def one(symbol: str) -> tuple[str, list[Kline]]:
            want = max(keep, s.model.cold_start_bars) if symbol in deep else keep
            async with gate:
                try:
                    got = await fetch_closed_klines(self.client, symbol,
                                                    s.websocket.kline_interval, want)  # fmt: skip
                    return symbol, got
                except (ExchangeError, MessageError) as exc:
                    self.c["warmup_errors"] += 1
                    log.warning("no history for %s: %s", symbol, exc)
                    return symbol, []

        results = await asyncio.gather(*(one(x) for x in sorted(self.symbols)))
        now = int(time.time() * 1000)
        for _symbol, klines in results:
            for k in klines[-keep:]:
                self.core.on_closed_kline(k, now)
        log.info("contexts warmed", extra={"symbols": sum(1 for _, k in results if k),
                                           "bars": keep})  # fmt: skip
        return {x: bars_of(k) for x, k in results if k and x in deep} if cold else None

    async def _load_leverage(self) -> None:
        """What the exchange has per symbol (v2 positionRisk carries it); unknown ones are
        set before their first entry."""
        try:
            rows = await self.client.position_risk_v2()
        except ExchangeError as exc:
            log.info("leverage not known yet: %s", exc)
            return
        for row in rows:
            try:
                self.executor.leverage[str(row["symbol"])] = int(row["leverage"])
            except (KeyError, TypeError, ValueError):
                continue

    # ---- klines -> decisions ---------------------------------------------------------
    async def _on_klines(self, batch: list[tuple[str, dict[bytes, bytes]]]) -> None:
        t_read = time.perf_counter()
        async with self._lock:
            self.gc_hold.hold()
            try:
                await self._feed_batch(batch, t_read)
            finally:
                if self.gate.current is None:  # no minute open: nothing waits now
                    self.gc_hold.release()
        self._gate_moved.set()

    async def _feed_batch(self, batch: list[tuple[str, dict[bytes, bytes]]], t_read: float) -> None:
        """Parse and feed each kline; decide a minute as soon as the gate closes it."""
        account = self._prefetch_account(len(batch))
        for _ in range(PREFETCH_YIELDS if account is not None else 0):
            await asyncio.sleep(0)  # the read goes out before the feed starts
        # the batch's receive time (wall for the core, monotonic for the gate)
        now_ms, mono_ms = int(time.time() * 1000), _mono_ms()
        parse, gate, feed = self._parse, self.gate, self.core.on_closed_kline
        try:
            for _entry_id, fields in batch:
                k = parse(fields)
                if k is None:
                    continue
                minute = gate.before(k.open_time)
                if minute is not None:
                    await self._decide(minute, t_read, account)
                    account = None
                feed(k, now_ms)
                self.c["klines_in"] += 1
                self.mark_event(k.event_time)
                minute = gate.after(k.symbol, k.open_time, k.event_time, mono_ms)
                if minute is not None:
                    await self._decide(minute, t_read, account)
                    account = None
        finally:
            if account is not None:  # prefetched for a minute this batch did not close
                account.add_done_callback(drop_result)

    def _prefetch_account(self, n_klines: int) -> asyncio.Task[AccountSnapshot] | None:
        """The account read for a minute this batch will probably complete (rule 1 of the
        gate), started BEFORE the batch is fed: Redis answers while the klines are parsed
        and fed, instead of after (one round trip off the decision's path).  The snapshot
        is as fresh as one read at the decision: nothing between here and there changes
        the account except an entry finishing, and that symbol is held (hold_keeper) and
        counted as open either way."""
        gate = self.gate
        if not gate.symbols or len(gate.seen) + n_klines < len(gate.symbols):
            return None
        return asyncio.ensure_future(self.account.snapshot(self.holds.watch()))

    def _parse(self, fields: dict[bytes, bytes]) -> Kline | None:
        try:
            etype, data, _meta = decode_event(fields)
            try:  # fast path: the bus carries the native types; __post_init__ validates
                k = Kline(**data)
            except (TypeError, ValueError, ArithmeticError, MessageError):
                k = Kline.from_dict(data)  # decimal strings etc., or a clear MessageError
        except MessageError as exc:
            self.c["bad_messages"] += 1
            log.warning("bad kline entry dropped: %s", exc)
            return None
        if etype != "kline" or not k.closed or k.symbol not in self.symbols:
            self.c["klines_ignored"] += 1
            return None
        return k

    async def _timer_loop(self) -> None:
        """Rule 4 of the gate: decide a minute whose missing klines never came."""
        while not self.stopping:
            deadline = self.gate.deadline()
            wait = 1.0 if deadline is None else max(0.0, (deadline - _mono_ms()) / 1000)
            self._gate_moved.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._gate_moved.wait()
                continue
            except TimeoutError:
                pass
            async with self._lock:
                minute = self.gate.expire(_mono_ms())
                if minute is not None:
                    try:
                        await self._decide(minute, time.perf_counter())
                    finally:
                        self.gc_hold.release()

    async def _decide(
        self, minute: int, t_read: float, account: asyncio.Task[AccountSnapshot] | None = None
    ) -> None:
        """Decide one minute, publish every decision, queue the taken ones.  `account`: a
        read already started for it (`_prefetch_account`), awaited instead of a new one."""
        self.c["minutes_decided"] += 1
        if not self.core.pending_candidates(minute):
            if account is not None:
                account.add_done_callback(drop_result)
            await self._publish(minute, [])
            self.models.maybe_retrain(minute + self._iv)
            return
        t_acc = time.perf_counter()
        equity, available, positions = await self._account(minute, account)
        t_core = time.perf_counter()
        decisions = self.core.decide(minute, equity, available, positions, self.halted)
        t_pub = time.perf_counter()
        if not await self._publish(minute, decisions):
            return
        self.timing.add(t_read, t_acc, t_core, t_pub, time.perf_counter())
        self.c["candidates"] += len(decisions)
        for d in decisions:
            if d.taken and d.record is not None:
                self.c["entries_taken"] += 1
                qty = d.intents[0].quantity or 0
                self._inflight[d.symbol] = float(qty) * float(d.record.entry_price_ref)
                self._queue.put_nowait((d, time.monotonic()))
            elif not d.taken:
                self.not_taken[d.reason] = self.not_taken.get(d.reason, 0) + 1
        self.models.maybe_retrain(minute + self._iv)

    async def _account(
        self, minute: int, pending: asyncio.Task[AccountSnapshot] | None = None
    ) -> tuple[Any, Any, dict[str, Any]]:
        """(equity, available, open positions incl. entries queued or in flight); when
        the account cannot be read the minute is decided as halted (fail safe, visible)."""
        try:
            snap = await (pending or self.account.snapshot(self.holds.watch()))
        except AccountUnavailable as exc:
            self.c["account_unavailable"] += 1
            log.warning("%s; minute %d decided as halted", exc, minute)
            self.halted = True
            return 0, 0, {**self.holds.held(), **self._inflight}
        self.halted = snap.halted
        await self.holds.settle(snap)
        return snap.equity, snap.available, {**self.holds.held(), **self._inflight,
                                             **snap.positions}  # fmt: skip

    async def _publish(self, minute: int, decisions: list[Decision]) -> bool:
        """Every decision to `Keys.stream_signals` + the decided minute, one round trip
        (entries as `encode_event("decision", d.to_dict(), symbol=, event_time=close)`)."""
        pack = self._packer.pack
        events = [(d.symbol, pack(d.to_dict())) for d in decisions]
        try:
            await self.io.publish_events("decision", minute + self._iv, events, minute,
                                         self.bus.maxlen(self.keys.stream_signals))  # fmt: skip
        except (RedisError, OSError) as exc:  # nothing is executed without its record
            self.c["publish_errors"] += 1
            log.error("decisions of minute %d not published: %r", minute, exc)
            return False
        self.c["decisions"] += len(decisions)
        return True

    # ---- execution -------------------------------------------------------------------
    async def _execute_loop(self) -> None:
        """One entry at a time, in decision order; an entry in flight is finished on stop
        (the runtime's drain), queued ones are dropped (their minute is gone)."""
        while not self.stopping:
            get = asyncio.ensure_future(self._queue.get())
            stop = asyncio.ensure_future(self.stop_event.wait())
            await asyncio.wait((get, stop), return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not get.done():
                get.cancel()
                break
            decision, queued_at = get.result()
            symbol, report = decision.symbol, None
            try:
                report = await self.executor.execute(
                    decision, queued_at, confirm_flat=self.holds.recently_entered(symbol)
                )
                self.executions.append(report)
                del self.executions[:-100]
            finally:  # held BEFORE it stops being in flight: no gap for a second entry
                await self._after_entry(symbol, report)
        if not self._queue.empty():
            log.warning("stopping with %d queued entries not sent", self._queue.qsize())

    async def _after_entry(self, symbol: str, report: ExecutionReport | None) -> None:
        """The symbol stays held (holds.py) until the account confirms the entry."""
        try:
            await self.holds.after_entry(symbol, report, self._inflight.get(symbol, 0.0))
        finally:
            self._inflight.pop(symbol, None)
            self.account.invalidate()

    # ---- trades ----------------------------------------------------------------------
    async def _on_trade(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        trade = parse_trade(fields)  # MessageError: poison -> dead letter, counted
        self.c["trades_in"] += 1
        await self.models.on_trade(trade)

    # ---- health ----------------------------------------------------------------------
    def healthy(self) -> bool | Status:
        if self.client is not None and self.client.breaker.state.value == "open":
            return "degraded"
        return True

    def stats(self) -> dict[str, Any]:
        core = self.core.counters if self.core is not None else None
        model: Mapping[str, Any] = self.models.stats() if self.models is not None else {}
        errors = (core.model_errors if core else 0) + int(model.get("model_errors_total", 0))
        return {
            **self.c,
            "entries_sent": self.executor.counters["entries_sent"] if self.executor else 0,
            "rejects": dict(self.not_taken),
            "model_version": self.models.version if self.models else "",
            "model_errors": errors,
            "halted": self.halted,
            **self.timing.stats(),
            "queued_entries": self._queue.qsize(),
            "gate": {"late_klines_total": self.gate.late if self.gate else 0,
                     **({f"{k}_total": v for k, v in self.gate.by_rule.items()}
                        if self.gate else {})},
            "core": {} if core is None else {"klines_total": core.klines,
                                             "duplicate_klines_total": core.duplicate_klines,
                                             "bad_klines_total": core.bad_klines,
                                             "sample_errors_total": core.sample_errors,
                                             "trades_total": core.trades},
            "model": dict(model),
            "execution": self.executor.stats() if self.executor else {},
            "account": self.account.counters if self.account else {},
            "holds": self.holds.stats() if self.holds else {},
            "rest": self.client.stats() if self.client else {},
        }  # fmt: skip


def _with_bracket_max(
    filters: dict[str, SymbolFilters], brackets: dict[str, tuple[Bracket, ...]]
) -> dict[str, SymbolFilters]:
    """Each symbol's highest bracket leverage as its `max_leverage` (leverage.py's bracket
    cap), as the backtest's filters carry the simulator spec's maximum."""
    return {s: replace(f, max_leverage=max(b.max_leverage for b in brackets[s]))
            if brackets.get(s) else f for s, f in filters.items()}  # fmt: skip
