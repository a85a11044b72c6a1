"""How orders and account events flow in a backtest: what the live services' shells do
around their cores, done in-process and synchronously.

- account_feed + position_controller: every engine event goes through the live parser
  (`parse_account_event` -> `AccountUpdate.from_event` & co.) to the controller and its
  ledger; the controller's exits and protective orders are sent at once (as its service
  does on an account event or a mark price); closed trades go to the trader (win rate,
  learner samples) and the learner may retrain.
- trader execution (`EntryExecutor`): leverage, entry; once filled, stop and take-profit
  (algo orders); if either is refused, the placed one is cancelled and the position is
  closed at once with the decision's deterministic `exit` id.
- the controller's sweep with what REST would show it (positionRisk, openAlgoOrders).
- broker policy, not in the live services yet: a closed position's remaining
  close-position algo orders are cancelled (else they would close the next position).
Orders decided at a candle's close (controller `on_kline`, sweep, trader) wait in
`pending` for the next open (runner.py explains why).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

from backtest.broker import SimBroker
from backtest.watch import Watcher
from services.exchange_sim.engine import EngineEvent
from services.position_controller.core import PositionControllerCore, TradeClosed
from services.position_controller.reconcile import CacheRepair
from services.position_controller.rules import ExitDecision, ProtectionDecision
from services.trader.core import Decision, TraderCore
from services.trader.order_ids import client_order_id
from shared.models import AccountUpdate, AlgoUpdate, ClosedTrade, OrderIntent, OrderUpdate


class OrderFlow:
    """Mixed into `Runner` (which owns these attributes)."""

    trader: TraderCore
    pc: PositionControllerCore
    broker: SimBroker
    watch: Watcher
    learner: Any
    fast: bool
    pending: list[Any]
    trades: list[ClosedTrade]
    learning: list[dict[str, Any]]
    c: Any
    jidx: dict[str, int]
    _final: bool
    _last_sweep: int

    def _catch_up(self, s: str) -> None:  # pragma: no cover - defined by Runner
        raise NotImplementedError

    def _send(self, item: Any, ts: int) -> None:
        if isinstance(item, Decision):
            self._enter(item, ts)
        elif isinstance(item, ExitDecision | ProtectionDecision):
            for intent in item.intents:
                ok, events = self.broker.submit(intent, ts)
                self._pump(events, ts)
                self.watch.need_sweep |= not ok
            self.c["exits_sent" if isinstance(item, ExitDecision) else "protections_sent"] += 1
        elif isinstance(item, TradeClosed):
            self._trade(item.trade, ts)
        elif isinstance(item, CacheRepair):
            self.c["cache_repairs"] += 1

    def _enter(self, d: Decision, ts: int) -> None:
        """As the live trader's `EntryExecutor`: leverage and entry; once filled, the stop
        and the take-profit; if either is refused, the placed one is cancelled and the
        position closed at once (reduce-only MARKET, the decision's `exit` id)."""
        entry, *legs = d.intents
        self.c["entries_sent"] += 1
        before = self.broker.amount.get(d.symbol, 0.0)
        ok, events = self.broker.submit(entry, ts)
        self._pump(events, ts)
        if not ok or self.broker.amount.get(d.symbol, 0.0) == before:
            return
        placed, failed = [], False
        for leg in legs:
            ok, events = self.broker.submit(leg, ts)
            self._pump(events, ts)
            placed += [leg] if ok else []
            failed |= not ok
        if not failed:
            return
        self.c["protection_failed"] += 1
        for leg in placed:
            self._pump(self.broker.cancel_algo(leg.client_order_id, ts), ts)
        pos = self.pc.positions.get(d.symbol)
        if pos is not None and pos.size:
            cid = client_order_id(d.symbol, d.side, d.minute_open_time, "exit",
                                  self.trader.strategy_version)  # fmt: skip
            close = OrderIntent(d.symbol, "SELL" if entry.side == "BUY" else "BUY", "MARKET",
                                abs(pos.size), cid, "exit", reduce_only=True,
                                reason="protection failed")  # fmt: skip
            self._pump(self.broker.submit(close, ts)[1], ts)

    def _act(self, actions: list[Any], ts: int) -> None:
        for a in actions:
            self._send(a, ts)

    def _defer(self, actions: list[Any]) -> None:
        """Orders decided at a close go out at the next open; the rest is handled now."""
        for a in actions:
            if isinstance(a, ExitDecision | ProtectionDecision):
                self.pending.append(a)
            else:
                self._send(a, 0)

    def _pump(self, events: list[EngineEvent], ts: int) -> None:
        """Engine payloads -> domain events (live parsers) -> controller -> its actions, at
        once; then conditional orders a closed position left behind are cancelled."""
        if not events:
            return
        queue, pc = deque(self.broker.domain(events)), self.pc
        while queue:
            ev = queue.popleft()
            self.c["events"] += 1
            now = ev.event_time
            if isinstance(ev, AccountUpdate):
                actions = pc.on_account_update(ev, now)
                if self.fast:
                    self.watch.touch_all()
            elif isinstance(ev, OrderUpdate):
                actions = pc.on_order_update(ev, now)
            elif isinstance(ev, AlgoUpdate):
                actions = pc.on_algo_update(ev, now)
            else:
                pc.on_config_update(ev)
                actions = []
            self._act(actions, now)
            if not queue:
                for s in self.broker.orphaned():
                    queue.extend(self.broker.domain(self.broker.cancel_algos(s, ts)))
                    self.c["orphan_cancels"] += 1

    def _trade(self, trade: ClosedTrade, ts: int) -> None:
        if self._final:
            self.trades.append(replace(trade, exit_reason="end_of_data"))
            return
        self.trades.append(trade)
        self.trader.on_closed_trade(trade)
        if self.learner is not None:
            self._retrain(max(ts, trade.exit_time))

    def _retrain(self, ts: int) -> None:
        rep = self.trader.maybe_retrain(ts)
        if rep is not None:
            self.learning.append({"event": "retrain", "time": ts, "accepted": rep.accepted,
                                  "reason": rep.reason, "version": rep.version,
                                  "n_train": rep.n_train, "n_holdout": rep.n_holdout,
                                  "auc": rep.challenger.get("auc")})  # fmt: skip

    def _sweep(self, now: int) -> None:
        """The controller's periodic safety net, with what REST would show it (positionRisk,
        openAlgoOrders).  Fast mode: only when protection or a liquidation band needs it,
        and the controller holds liquidation prices only of positions near them."""
        self.watch.need_sweep = False
        self._last_sweep = now
        self.c["sweeps"] += 1
        positions, algos, liq = self.broker.snapshot()
        if self.fast:
            for sym in sorted(self.broker.amount, key=self.jidx.__getitem__):
                self._catch_up(sym)
            liq = {sym: p for sym, p in liq.items() if sym in self.watch.near_liquidation}
            self.watch.liq_in_pc = set(liq)
        self._defer(self.pc.sweep(now, positions, algos, liq))

    def _close_all(self, ts: int) -> None:
        """End of data: the controller's pending exits go out, then whatever is still open
        closes at the last price (exit reason end_of_data).  Pending entries lapse."""
        for p in self.pending:
            if isinstance(p, ExitDecision):
                self._send(p, ts)
        self.pending = []
        self._final = True
        for sym, pos in sorted(self.pc.positions.items()):
            if pos.size:
                intent = OrderIntent(sym, "SELL" if pos.size > 0 else "BUY", "MARKET",
                                     abs(pos.size), f"bt-end-{sym}"[:36], "exit",
                                     reduce_only=True)  # fmt: skip
                self._pump(self.broker.submit(intent, ts)[1], ts)
