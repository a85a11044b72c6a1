"""The backtest's event loop: one pass over time, every symbol minute by minute, driving the
SAME objects the live services drive - `TraderCore`, `PositionControllerCore` (with its
ledger) and the simulator's `Exchange` behind `SimBroker`.

One minute `t` (bar open), in the order the simulator's driver keeps (driver.py):
A. open tick: the engine moves to the bar's open for symbols with something open or an
   order to send (fast mode: only bars watch.py wakes); the controller sees the price, as
   it sees the exchange's mark price (`markPrice@1s`: at the next whole second of a tick;
   the candle's last tick never, its frame already shows the next open).
B. what was decided at the previous close is sent now: the controller's exits and sweep
   orders first, then the trader's entries (entry, then its stop and take-profit).  WHY at
   the open: live, the closed kline, the next candle's first tick and the services'
   reaction all happen within about a second, so their orders fill at the next candle's
   open, not at the close they were decided on.
C. the rest of the intra-bar path, `bar_updates(bar, updates_per_minute - 1)` - the
   simulator's own path (up bar: open -> low -> high -> close, down bar: open -> high ->
   low -> close), so a bar touching both a long's stop and its target stops it out on an
   up bar and takes the profit on a down bar, exactly as the simulator would - tick by tick
   across symbols; engine events go through the live parsers to the controller and its
   ledger, and its exits are sent at once, as the live controller sends them on an event.
D. the close: every closed kline to `TraderCore.on_closed_kline` (fast mode: `on_bar`, the
   same with the kline's fields as arguments, no kline object per bar); to the controller
   (full mode: `on_kline`; fast mode: positions only - the trend view from the trader's
   context via `set_trend`, then the close as a price - when the bar may matter).
E. sweep (full: every `trading.position_check_interval`; fast: when protection or a
   liquidation band asks), then `TraderCore.decide` if the minute has candidates, with
   equity and available balance from the engine's balance endpoint.
Closed trades go to `TraderCore.on_closed_trade` (win rate, learner samples) at once; the
learner retrains when it wants to (`maybe_retrain` after each trade and every hour).

No look-ahead: minute k reads `feed.cube[k]` and nothing later; the cold start reads
`cube[:k0]` when the loop reaches the trading start k0.  Intra-bar, the controller sees
the path up to the current tick only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from backtest.broker import SimBroker
from backtest.data import BarFeed
from backtest.flow import OrderFlow
from backtest.results import BarKline, RunConfig, RunResult
from backtest.watch import Watcher
from services.exchange_sim.market.bar import Bar, bar_updates
from services.exchange_sim.specs import leverage_brackets, symbol_info
from services.position_controller.core import PositionControllerCore
from services.position_controller.rules import trend_view
from services.trader.account_view import from_cache
from services.trader.core import TraderCore
from services.trader.labels import build_cold_start
from shared.brackets import Bracket, parse_leverage_brackets
from shared.filters import SymbolFilters
from shared.models import ClosedTrade

_new = tuple.__new__
MARK_MS = 1000  # the mark-price stream's cadence (markPrice@1s)
Row = list[float]


def symbol_filters(feed: BarFeed) -> dict[str, SymbolFilters]:
    """Exchange filters from the same specs the engine enforces (exchangeInfo shape)."""
    return {s: SymbolFilters.from_exchange_info(symbol_info(spec), spec.max_leverage)
            for s, spec in feed.specs.items()}  # fmt: skip


def symbol_brackets(feed: BarFeed) -> dict[str, tuple[Bracket, ...]]:
    """Leverage brackets from the same specs, through the REST answer's shape, as the live
    trader reads them (`GET /fapi/v1/leverageBracket`)."""
    return parse_leverage_brackets([leverage_brackets(spec) for spec in feed.specs.values()])


class Runner(OrderFlow):
    """One run over one feed (module doc).  `learner`: a `Learner` for the walk-forward
    run; None for the baseline, where the signal's own score is the confidence."""

    def __init__(
        self, feed: BarFeed, cfg: RunConfig, learner: Any = None, name: str = "strategy",
        progress: Callable[[int, int], None] | None = None,
    ) -> None:  # fmt: skip
        ex = cfg.settings.exchange.model_copy(update={"symbols": list(feed.symbols)})
        s = self.settings = cfg.settings.model_copy(update={"exchange": ex})
        self.feed, self.cfg, self.name = feed, cfg, name
        self.learner, self.progress = learner, progress
        filters = symbol_filters(feed)
        self.trader = TraderCore(s, filters, learner, brackets=symbol_brackets(feed))
        self.pc = PositionControllerCore(s, filters)
        fee = lambda x: Decimal(repr(float(x)))  # noqa: E731
        self.broker = SimBroker(feed.specs, cfg.equity, taker_fee=fee(s.exchange.taker_fee),
                                maker_fee=fee(s.exchange.maker_fee), slippage_bps=cfg.slippage_bps,
                                funding_rate=cfg.funding_rate)  # fmt: skip
        self.fast = cfg.mode == "fast"
        self.watch = Watcher(self.broker, self.pc, self.pc.config.rules, feed.interval_ms)
        if not self.fast:
            self.broker.on_change = None
        self.iv = feed.interval_ms
        self.jidx = {sym: j for j, sym in enumerate(feed.symbols)}
        self.pending: list[Any] = []  # decided at a close, sent at the next open
        self.trades: list[ClosedTrade] = []
        self.decisions: Counter[str] = Counter()
        self.learning: list[dict[str, Any]] = []
        self.c: Counter[str] = Counter()
        self._final = False
        self._woken: set[str] = set()
        self._last_sweep = -(2**62)
        self._sweep_ms = s.trading.position_check_interval * 1000
        self._best: dict[str, tuple[float, int]] = {}  # fast: excursion the controller missed
        self._last_close: dict[str, float] = {}
        self._precision = {sym: (sp.price_precision, sp.quantity_precision)
                           for sym, sp in feed.specs.items()}  # fmt: skip

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> RunResult:
        feed, iv, fast = self.feed, self.iv, self.fast
        times, cube, symbols = feed.times.tolist(), feed.cube, feed.symbols
        n = len(times)
        k0 = feed.index_at(times[0] + round(self.cfg.cold_start_days * 86_400_000))
        if k0 >= n:
            raise ValueError(f"a cold start of {self.cfg.cold_start_days} days leaves no bars")
        eq: list[float] = []
        gross: list[float] = []
        on_kline, pc_kline, pending_at = (self.trader.on_closed_kline, self.pc.on_kline,
                                          self.trader.pending_candidates)  # fmt: skip
        on_bar = self.trader.on_bar
        busy, amount, broker, watch = self.broker.open, self.broker.amount, self.broker, self.watch
        learner = self.learner
        learn = learner is not None
        counters, seen = self.trader.counters, -1
        for k in range(n):
            t = times[k]
            now = t + iv
            ct = now - 1
            if k == k0:
                self._start_trading(k0, t)
            block = cube[k].tolist()
            if self.pending or busy:
                self._intrabar(t, block)
            if fast:  # D: the closes (the trader's `on_bar`: on_closed_kline's fields)
                for j, r in enumerate(block):
                    if r[0] == r[0]:
                        on_bar(symbols[j], t, r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7],
                               now)  # fmt: skip
                if amount:
                    self._close_positions(t, block)
                if watch.need_sweep or broker.unprotected:
                    self._sweep(now)
            else:
                for j, r in enumerate(block):
                    if r[0] == r[0]:
                        kl = _new(BarKline, (symbols[j], t, ct, r[0], r[1], r[2], r[3], r[4],
                                             r[5], int(r[6]), r[7], True))  # fmt: skip
                        on_kline(kl, now)
                        self._defer(pc_kline(kl, now))  # type: ignore[arg-type]
                if now - self._last_sweep >= self._sweep_ms:
                    self._sweep(now)
            if learn and learner.new_samples:  # (no new sample: never due, learner.py)
                self._retrain(now)  # as the live trader: the schedule is checked each minute
            if k >= k0:
                found = counters.candidates  # (a public counter: no candidates, no decide)
                if found != seen and pending_at(t):
                    self._decide(t, block)
                seen = found
                if amount:
                    e, g = self._equity(block)
                    eq.append(e)
                    gross.append(g)
                else:
                    eq.append(broker.wallet)
                    gross.append(0.0)
            if self.progress is not None and (k % 1440 == 0 or k == n - 1):
                self.progress(k + 1, n)
        self._close_all(times[-1] + iv)
        eq[-1], gross[-1] = self.broker.equity_at(self._last_close)
        return self._result(k0, np.asarray(times[k0:], np.int64) + iv, np.array(eq),
                            np.array(gross))  # fmt: skip

    def _intrabar(self, t: int, block: list[Row]) -> None:
        """Phases A-C (module doc) for the symbols with something open or to send."""
        pending, self.pending = self.pending, []
        with_orders = {p.symbol for p in pending}
        due, fast, iv = self.watch.due, self.fast, self.iv
        # a minute with orders to send wakes every open symbol: the engine's margin check
        # reads every position's mark, which must be this open's, as in full mode
        wake_all = not fast or bool(pending)
        woken = []
        for s in sorted(with_orders | self.broker.open, key=self.jidx.__getitem__):
            r = block[self.jidx[s]]
            if r[0] != r[0]:
                continue  # no bar of this symbol this minute
            flagged = due(s, r[2], r[1], t, t + iv) if fast else True  # (due: always asked)
            if flagged or wake_all:
                woken.append((s, r))
        if fast:
            for s, _ in woken:
                self._catch_up(s)
        for s, r in woken:  # A: the open tick
            self._tick(s, r[0], t)
        for p in pending:  # B: orders decided at the last close
            self._send(p, t)
        paths = []  # C: the rest of the path of every woken bar with something open
        for s, r in woken:
            if s in self.broker.open:
                pp, qp = self._precision[s]
                bar = Bar(s, t, t + iv - 1, r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7],
                          r[8], pp, qp)  # fmt: skip
                paths.append((s, bar_updates(bar, self.cfg.updates_per_minute - 1)))
        last = self.cfg.updates_per_minute - 1
        for i in range(1, last + 1):  # as the driver: n - 1 points, then the close
            for s, ups in paths:
                # the close's mark second is the next minute's, whose frame shows the next
                # open: the controller learns the close from the kline (phase D)
                self._tick(s, ups[i].price, t + ups[i].offset_ms, i < last)
        self.c["path_bars"] += len(paths)
        self._woken = {s for s, _ in woken}
        if fast:
            for s in self._woken:
                self.watch.processed(s, t + iv)

    def _tick(self, symbol: str, price: float, ts: int, mark: bool = True) -> None:
        """One engine tick; the controller sees the price as the exchange's `markPrice@1s`
        stream shows it: at the next whole second (the engine does not move in between)."""
        self._pump(self.broker.advance(symbol, price, ts), ts)
        if mark:
            at = -(-ts // MARK_MS) * MARK_MS
            self._act(self.pc.on_price(symbol, price, at), at)

    def _close_positions(self, t: int, block: list[Row]) -> None:
        """Fast mode, phase D for the controller: a position's close is evaluated when its
        bar was woken or the counter-trend rule may fire; otherwise only its favourable
        excursion is noted for later."""
        now, woken, trader = t + self.iv, self._woken, self.trader
        self._woken = set()
        for s in sorted(self.broker.amount, key=self.jidx.__getitem__):
            r = block[self.jidx[s]]
            if r[0] != r[0]:
                continue
            amt = self.broker.amount[s]
            if s not in woken:
                best = r[1] if amt > 0 else r[2]
                prev = self._best.get(s)
                if prev is None or (best > prev[0] if amt > 0 else best < prev[0]):
                    self._best[s] = (best, now - 1)
                if not self.watch.may_counter_trend(trader.bank[s], 1 if amt > 0 else -1):
                    continue
                self._catch_up(s)
                self.watch.processed(s, now)
            ctx = trader.bank[s]
            self.pc.set_trend(s, trend_view(ctx), ctx.atr if ctx.ready else None)
            self._defer(self.pc.on_price(s, r[3], now))
            self.c["close_evaluations"] += 1

    def _catch_up(self, s: str) -> None:
        """Fast mode, before the controller evaluates a symbol it skipped: the best price of
        the position's skipped bars (its excursion, had it seen every tick), then the trend
        view as of the last close (what `on_kline` would have left it)."""
        seen = self._best.pop(s, None)
        if seen is not None and self.pc.open_time(s) is not None:
            self._act(self.pc.on_price(s, seen[0], seen[1]), seen[1])
        ctx = self.trader.bank.contexts.get(s)
        if ctx is not None:
            self.pc.set_trend(s, trend_view(ctx), ctx.atr if ctx.ready else None)

    def _equity(self, block: list[Row]) -> tuple[float, float]:
        closes = self._last_close
        for s in self.broker.amount:
            c = block[self.jidx[s]][3]
            if c == c:
                closes[s] = c
        return self.broker.equity_at(closes)

    # ---- decisions -------------------------------------------------------------------
    def _decide(self, t: int, block: list[Row]) -> None:
        """What the live trader passes: equity and available from account_feed's cache
        (`account_view.from_cache`: wallet + unrealized PnL as of each position's last
        account event), the open positions, not halted."""
        positions = self.pc.positions
        equity, available = from_cache(self.broker.balance_row, list(positions.values()))
        for d in self.trader.decide(t, equity, available, positions, False):
            self.decisions[d.reason] += 1
            if d.taken and d.record is not None:
                self.pc.on_decision(d.record)
                self.pending.append(d)

    def _start_trading(self, k0: int, t: int) -> None:
        """Walk-forward cold start: label the history before `t` with the strategy's own
        barriers and train - what the live trader does at its first start."""
        if self.learner is None:
            return
        s = self.settings
        data = build_cold_start(self.feed.history(k0), self.trader.params,
                                s.model.label_horizon, float(s.exchange.taker_fee))  # fmt: skip
        info: dict[str, Any] = {"event": "cold_start", "time": t, "samples": int(len(data.y))}
        if len(data.y):
            rep = self.learner.fit_cold_start(data.X, data.y,
                                              {"times": data.times, "created_at_ms": t})  # fmt: skip
            info.update(accepted=rep.accepted, reason=rep.reason, version=rep.version,
                        auc=rep.challenger.get("auc"), positive_rate=float(np.mean(data.y)))  # fmt: skip
        self.learning.append(info)

    def _result(self, k0: int, times: np.ndarray, eq: np.ndarray, gross: np.ndarray) -> RunResult:
        c = dict(self.c)
        tc = self.trader.counters
        c.update(bars=tc.klines + tc.duplicate_klines + tc.bad_klines, minutes=len(self.feed), engine_ticks=self.broker.ticks, wakes=self.watch.wakes,
                 klines=tc.klines, candidates=tc.candidates, model_errors=tc.model_errors,
                 rejects=len(self.broker.rejects))  # fmt: skip
        return RunResult(self.name, k0, times, eq, gross, self.trades, self.decisions,
                         list(self.broker.rejects), self.broker.ledger(),
                         self.broker.initial_equity, c, self.learning)  # fmt: skip
