"""PositionControllerCore: the position controller's state and decisions, with no I/O.

WHY a pure core: the live service (Redis streams, REST) and the backtest drive this same
object with timestamped events and carry out the actions it returns, so exits behave
offline exactly as they do live.  Time is always the caller's `now_ms` (event time).

Events in: account updates (positions, funding), order updates (fills -> ledger; close
failures), algo updates, leverage changes, prices (re-evaluate emergency at once), closed
klines (trend view, ATR, excursion), and a periodic `sweep` (every rule, protection check,
reconciliation against REST rows, re-sending unanswered closes).

Actions out (`Action`): `ExitDecision` (send its reduce-only MARKET close),
`ProtectionDecision` (place its conditional orders), `CacheRepair` (write/delete the
position hash), `TradeClosed` (publish the closed trade), `OrphanCheck` (cancel the
stop/target a closed position left behind: orphans.py).  A sweep lists IMMEDIATE closes
first.

Exactly once: a position is identified by (symbol, open time); its close ids are
deterministic (`rules.close_order_id`), and a close in flight suppresses further closes of
that position until the exchange answers (filled -> position gone; rejected/expired ->
cleared) or `close_retry_seconds` pass (then the SAME order is re-sent; reduce-only makes
a duplicate harmless).  Per symbol, an event older than the last applied one is ignored.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from services.position_controller.ledger import Ledger
from services.position_controller.orphans import OrphanCheck, orphaned
from services.position_controller.protection import (
    ProtectiveOrder,
    check_protection,
    group_by_symbol,
)
from services.position_controller.reconcile import (
    CacheRepair,
    DiffKind,
    ReconcileResult,
    reconcile,
)
from services.position_controller.rules import (
    ExitDecision,
    PositionView,
    ProtectionDecision,
    RuleConfig,
    TrendView,
    Urgency,
    evaluate_exits,
    trend_view,
)
from shared.config import Settings
from shared.filters import SymbolFilters
from shared.market_context import BadKline, MarketContextBank
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    ClosedTrade,
    ConfigUpdate,
    DecisionRecord,
    Kline,
    OrderUpdate,
    Position,
)

_FAILED = frozenset({"CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})
_DECISION_MEMORY = 20_000


@dataclass(frozen=True, slots=True)
class TradeClosed:
    trade: ClosedTrade


Action = ExitDecision | ProtectionDecision | CacheRepair | TradeClosed | OrphanCheck


@dataclass(frozen=True, slots=True)
class CoreConfig:
    rules: RuleConfig = RuleConfig()
    close_retry_ms: int = 15_000
    reconcile_grace_ms: int = 5_000
    entry_rel_tol: Decimal = Decimal("1e-6")
    quote_asset: str = "USDT"
    orphan_grace_ms: int = 60_000  # sweep: a close-only order on a symbol never seen flat

    @classmethod
    def from_settings(cls, s: Settings) -> CoreConfig:
        r = s.risk
        return cls(
            rules=RuleConfig.from_settings(s),
            close_retry_ms=round(r.close_retry_seconds * 1000),
            reconcile_grace_ms=round(r.reconcile_grace * 1000),
            entry_rel_tol=Decimal(repr(r.entry_price_tolerance)),
        )


@dataclass(slots=True)
class _InFlight:
    decision: ExitDecision
    sent_ms: int
    retries: int = 0


@dataclass(slots=True)
class _Tracked:
    position: Position
    open_time: int
    best_price: Decimal
    adopted: bool = False
    decision: DecisionRecord | None = None
    decision_checked: bool = False
    close: _InFlight | None = None
    protect_sent: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CoreCounters:
    stale_events: int = 0
    duplicate_closes_suppressed: int = 0
    close_retries: int = 0
    close_failures: int = 0
    hedge_entries_ignored: int = 0
    bad_prices: int = 0
    bad_klines: int = 0
    adopted: int = 0
    closed_externally: int = 0
    reconciliations: int = 0
    repairs: int = 0
    orphan_checks: int = 0


def _dec(price: Decimal | float | str) -> Decimal:
    if isinstance(price, Decimal):
        return price
    return Decimal(repr(price)) if isinstance(price, float) else Decimal(str(price))


class PositionControllerCore:
    """State of every open position and the exit/protection decisions about them."""

    def __init__(
        self,
        config: Settings | CoreConfig,
        filters: Mapping[str, SymbolFilters] | None = None,
        *,
        decision_lookup: Callable[[str], DecisionRecord | None] | None = None,
    ) -> None:
        self.config = config if isinstance(config, CoreConfig) else CoreConfig.from_settings(config)
        self.filters = dict(filters or {})
        self._external_lookup = decision_lookup
        self._decisions: OrderedDict[str, DecisionRecord] = OrderedDict()
        self.ledger = Ledger(self._lookup, quote_asset=self.config.quote_asset)
        self._tracked: dict[str, _Tracked] = {}
        self._last_event: dict[str, int] = {}
        self._leverage: dict[str, int] = {}
        self._price: dict[str, tuple[int, Decimal]] = {}
        self._trend: dict[str, TrendView] = {}
        self._atr: dict[str, float] = {}
        self._liq: dict[str, Decimal] = {}
        self._flat_since: dict[str, int] = {}  # symbol -> when its position went flat
        self._orphan_sent: dict[str, int] = {}  # symbol -> last sweep OrphanCheck (ms)
        self._contexts = MarketContextBank()
        self.counters = CoreCounters()
        self.last_reconcile: ReconcileResult | None = None

    # ---- queries --------------------------------------------------------------------
    @property
    def positions(self) -> dict[str, Position]:
        return {s: t.position for s, t in self._tracked.items()}

    def open_time(self, symbol: str) -> int | None:
        tr = self._tracked.get(symbol)
        return tr.open_time if tr else None

    def close_in_flight(self, symbol: str) -> ExitDecision | None:
        tr = self._tracked.get(symbol)
        return tr.close.decision if tr and tr.close else None

    def trend(self, symbol: str) -> TrendView | None:
        return self._trend.get(symbol)

    def view(self, symbol: str) -> PositionView:
        """What the rules see of one tracked position (KeyError if none)."""
        tr = self._tracked[symbol]
        pos = tr.position
        seen = self._price.get(symbol)
        price = seen[1] if seen is not None and seen[0] >= pos.updated_at else None
        if tr.decision is None and not tr.decision_checked:
            lot = self.ledger.lot(symbol)
            if lot is not None and lot.entry_client_id:
                tr.decision = self._lookup(lot.entry_client_id)
                tr.decision_checked = True  # a record arriving later comes via on_decision
        lev = pos.leverage or self._leverage.get(symbol)
        if lev is None and tr.decision is not None:
            lev = tr.decision.leverage
        return PositionView(
            pos, tr.open_time, price, tr.best_price, tr.decision, lev, self._liq.get(symbol)
        )

    # ---- inputs that only update state ----------------------------------------------
    def on_decision(self, record: DecisionRecord) -> None:
        """An entry's DecisionRecord (from the trader), joined later by client order id."""
        self._decisions[record.client_order_id] = record
        if len(self._decisions) > _DECISION_MEMORY:
            self._decisions.popitem(last=False)
        tr = self._tracked.get(record.symbol)
        lot = self.ledger.lot(record.symbol)
        if tr is not None and lot is not None and lot.entry_client_id == record.client_order_id:
            tr.decision = record

    def on_config_update(self, update: ConfigUpdate) -> None:
        if update.symbol and update.leverage:
            self._leverage[update.symbol] = update.leverage

    def on_algo_update(self, update: AlgoUpdate, now_ms: int) -> list[Action]:
        self.ledger.on_algo_update(update)
        return []

    def set_trend(self, symbol: str, trend: TrendView, atr: float | None = None) -> None:
        """For drivers that keep their own MarketContext (the backtest)."""
        self._trend[symbol] = trend
        if atr is not None and math.isfinite(atr) and atr > 0:
            self._atr[symbol] = atr

    def load_positions(
        self, positions: Iterable[Position], open_times: Mapping[str, int] | None = None
    ) -> None:
        """Start-up from the position cache (open times persisted by the service, else
        the position's last update time)."""
        for pos in positions:
            if pos.size == 0 or pos.position_side != "BOTH":
                continue
            opened = (open_times or {}).get(pos.symbol, pos.updated_at)
            self._tracked[pos.symbol] = _Tracked(pos, opened, pos.entry_price)
            self._last_event[pos.symbol] = max(self._last_event.get(pos.symbol, 0), pos.updated_at)
            lot = self.ledger.adopt(pos.symbol, pos.size, pos.entry_price, opened, pos.leverage,
                                    as_of=pos.updated_at or None)  # fmt: skip
            if lot is not None and lot.open_time != opened and lot.side == pos.side:
                self._tracked[pos.symbol].open_time = lot.open_time

    # ---- events ---------------------------------------------------------------------
    def on_account_update(self, update: AccountUpdate, now_ms: int) -> list[Action]:
        """Positions changed (or funding was paid): apply newer-than-known entries and
        re-evaluate those positions at once (the emergency path)."""
        self.ledger.on_account_update(update)
        actions: list[Action] = []
        for pu in update.positions:
            if pu.position_side != "BOTH":
                self.counters.hedge_entries_ignored += 1
                continue
            sym = pu.symbol
            if update.event_time < self._last_event.get(sym, -1):
                self.counters.stale_events += 1
                continue
            self._last_event[sym] = update.event_time
            tr = self._tracked.get(sym)
            if pu.amount == 0:
                self._tracked.pop(sym, None)
                self._liq.pop(sym, None)
                if tr is not None:
                    actions += self._went_flat(sym, update.transaction_time or update.event_time)
                continue
            lev = self._leverage.get(sym) or (tr.position.leverage if tr else None)
            pos = Position.from_update(pu, update.event_time, lev)
            self._set_position(pos, update.transaction_time)
            actions += self._evaluate(sym, now_ms)
        return actions

    def on_order_update(self, update: OrderUpdate, now_ms: int) -> list[Action]:
        """Fills go to the ledger (closed trades out); a failed close is forgotten so the
        rules can decide again."""
        tr = self._tracked.get(update.symbol)
        lev = self._leverage.get(update.symbol) or (tr.position.leverage if tr else None)
        actions: list[Action] = [TradeClosed(t) for t in self.ledger.on_fill(update, lev)]
        if tr is not None and tr.close is not None and update.status in _FAILED:
            if update.client_order_id in {i.client_order_id for i in tr.close.decision.intents}:
                tr.close = None
                self.counters.close_failures += 1
        return actions

    def replay(self, symbol: str, fills: Iterable[OrderUpdate], now_ms: int) -> list[Action]:
        """Fills of a gap in the user data stream, fetched over REST (see Ledger.replay):
        the trades they close come out like those of live fills."""
        tr = self._tracked.get(symbol)
        lev = self._leverage.get(symbol) or (tr.position.leverage if tr else None)
        return [TradeClosed(t) for t in self.ledger.replay(symbol, fills, lev)]

    def on_price(self, symbol: str, price: Decimal | float | str, now_ms: int) -> list[Action]:
        """A mark/last price at event time `now_ms`: update excursion, re-evaluate."""
        p = _dec(price)
        if not (p.is_finite() and p > 0):
            self.counters.bad_prices += 1
            return []
        if not self._note_price(symbol, p, now_ms):
            return []
        tr = self._tracked.get(symbol)
        if tr is None:
            return []
        self._note_excursion(tr, p, p)
        return self._evaluate(symbol, now_ms)

    def on_kline(self, kline: Kline, now_ms: int) -> list[Action]:
        """A closed kline: update the symbol's context (trend view, ATR), the excursion
        (its high/low count only if the bar began after the position opened), the price."""
        if not kline.closed:
            return self.on_price(kline.symbol, kline.close, now_ms)
        ctx = self._contexts.get(kline.symbol)
        try:
            ctx.update(kline.open_time, kline.open, kline.high, kline.low, kline.close,
                       kline.volume, kline.quote_volume, kline.trades, kline.taker_buy_volume)  # fmt: skip
        except BadKline:
            self.counters.bad_klines += 1
            return []
        self._trend[kline.symbol] = trend_view(ctx)
        if ctx.ready and ctx.atr > 0:
            self._atr[kline.symbol] = ctx.atr
        tr = self._tracked.get(kline.symbol)
        if tr is not None and kline.open_time >= tr.open_time:
            self._note_excursion(tr, _dec(kline.high), _dec(kline.low))
        seen = self._price.get(kline.symbol)
        if seen is None or seen[0] <= kline.close_time:  # ticks may already be newer
            self._price[kline.symbol] = (kline.close_time, _dec(kline.close))
        return self._evaluate(kline.symbol, now_ms) if tr is not None else []

    def sweep(
        self,
        now_ms: int,
        exchange_positions: Iterable[Position] | None = None,
        open_algo_orders: Iterable[ProtectiveOrder | AlgoUpdate | Mapping[str, Any]] | None = None,
        liquidation_prices: Mapping[str, Decimal] | None = None,
    ) -> list[Action]:
        """The periodic safety net: reconciliation (when REST rows are given), every exit
        rule, protection (when the open algo orders are given), unanswered closes re-sent.
        Pass None for a part whose REST call failed: it is skipped, not assumed empty."""
        actions: list[Action] = []
        if liquidation_prices is not None:
            self._liq = {s: p for s, p in liquidation_prices.items() if p > 0}
        if exchange_positions is not None:
            actions += self._reconcile(list(exchange_positions), now_ms)
        orders = group_by_symbol(open_algo_orders) if open_algo_orders is not None else None
        for sym in sorted(self._tracked):
            tr = self._tracked[sym]
            if tr.close is not None:
                if now_ms - tr.close.sent_ms >= self.config.close_retry_ms:
                    tr.close.sent_ms, tr.close.retries = now_ms, tr.close.retries + 1
                    self.counters.close_retries += 1
                    actions.append(tr.close.decision)
                continue
            exits = self._evaluate(sym, now_ms)
            if exits or orders is None:
                actions += exits
                continue
            actions += self._protect(sym, orders.get(sym, []), now_ms)
        if orders is not None and exchange_positions is not None:
            actions += self._sweep_orphans(orders, now_ms)
        actions.sort(key=lambda a: getattr(a, "urgency", None) is not Urgency.IMMEDIATE)
        return actions

    # ---- internals ------------------------------------------------------------------
    def _lookup(self, client_id: str) -> DecisionRecord | None:
        found = self._decisions.get(client_id)
        if found is None and self._external_lookup is not None:
            found = self._external_lookup(client_id)
        return found

    def _note_price(self, symbol: str, price: Decimal, time_ms: int) -> bool:
        seen = self._price.get(symbol)
        if seen is not None and time_ms < seen[0]:
            self.counters.stale_events += 1
            return False
        self._price[symbol] = (time_ms, price)
        return True

    @staticmethod
    def _note_excursion(tr: _Tracked, high: Decimal, low: Decimal) -> None:
        if tr.position.size > 0:
            tr.best_price = max(tr.best_price, high)
        else:
            tr.best_price = min(tr.best_price, low)

    def _set_position(self, pos: Position, opened_ms: int, *, adopted: bool = False) -> None:
        """Replace the symbol's position; a new one (from flat or flipped) starts fresh,
        with the ledger's open time when it saw the entry fill."""
        tr = self._tracked.get(pos.symbol)
        if tr is not None and (tr.position.size > 0) == (pos.size > 0):
            tr.position = pos
            return
        lot = self.ledger.lot(pos.symbol)
        if lot is not None and lot.side == pos.side:
            opened_ms = lot.open_time
        # The last sweep's liquidation price belonged to the old position: a new one must
        # not be closed on it (the next sweep brings the new position's price).
        self._liq.pop(pos.symbol, None)
        self._flat_since.pop(pos.symbol, None)
        self._tracked[pos.symbol] = _Tracked(pos, opened_ms, pos.entry_price, adopted)

    def recently_flat(self, now_ms: int, window_ms: int = 600_000) -> bool:
        """A position closed within `window_ms`: the sweep should look for its legs."""
        return any(t > now_ms - window_ms for t in self._flat_since.values())

    def _went_flat(self, symbol: str, since: int) -> list[Action]:
        """A tracked position is gone: its stop/target legs are orphans from now on."""
        self._flat_since[symbol] = since
        self.counters.orphan_checks += 1
        return [OrphanCheck(symbol, since)]

    def _sweep_orphans(self, orders: Mapping[str, list[ProtectiveOrder]], now_ms: int
                       ) -> list[Action]:  # fmt: skip
        """Close-only orders on untracked symbols (the snapshot has been reconciled, so
        untracked means flat on the exchange), created before the symbol went flat (or,
        when that moment is unknown, longer than `orphan_grace_ms` ago)."""
        out: list[Action] = []
        retry = self.config.close_retry_ms
        for sym in sorted(orders):
            if sym in self._tracked or now_ms - self._orphan_sent.get(sym, -retry) < retry:
                continue
            since = self._flat_since.get(sym, now_ms - self.config.orphan_grace_ms)
            found = orphaned(orders[sym], sym, since)
            if found:
                self._orphan_sent[sym] = now_ms
                self.counters.orphan_checks += 1
                out.append(OrphanCheck(sym, since, tuple(found)))
        return out

    def _evaluate(self, symbol: str, now_ms: int) -> list[Action]:
        tr = self._tracked.get(symbol)
        if tr is None:
            return []
        view = self.view(symbol)
        decision = evaluate_exits(
            view, self._trend.get(symbol), self.config.rules, now_ms, self.filters.get(symbol)
        )
        return self._send_close(tr, decision, now_ms)

    def _send_close(self, tr: _Tracked, decision: ExitDecision | None, now_ms: int) -> list[Action]:
        if decision is None:
            return []
        if tr.close is not None:
            self.counters.duplicate_closes_suppressed += 1
            return []
        tr.close = _InFlight(decision, now_ms)
        return [decision]

    def _protect(self, symbol: str, orders: list[ProtectiveOrder], now_ms: int) -> list[Action]:
        tr = self._tracked[symbol]
        res = check_protection(
            self.view(symbol), orders, self.config.rules, now_ms,
            atr=self._atr.get(symbol), filters=self.filters.get(symbol),
        )  # fmt: skip
        if res is None:
            return []
        if isinstance(res, ExitDecision):
            return self._send_close(tr, res, now_ms)
        retry = self.config.close_retry_ms
        due = [i for i in res.intents
               if now_ms - tr.protect_sent.get(i.client_order_id, now_ms - retry) >= retry]  # fmt: skip
        if not due:
            return []
        for intent in due:
            tr.protect_sent[intent.client_order_id] = now_ms
        return [replace(res, intents=tuple(due), missing=tuple(i.purpose for i in due))]

    def _reconcile(self, rows: list[Position], now_ms: int) -> list[Action]:
        grace = self.config.reconcile_grace_ms
        fresh = {s for s, t in self._last_event.items() if t > now_ms - grace}
        result = reconcile(
            self.positions, rows, skip=fresh, entry_rel_tol=self.config.entry_rel_tol
        )
        self.last_reconcile = result
        self.counters.reconciliations += 1
        self.counters.repairs += len(result.repairs)
        # The snapshot was read no earlier than its newest row's updateTime: a flat
        # symbol's fills up to then are in it (the ledger then skips their late copies).
        as_of = max((p.updated_at for p in rows), default=0) or None
        actions: list[Action] = []
        for repair in result.repairs:
            actions += self._apply_repair(repair, now_ms, as_of)
            actions.append(repair)
        exchange_symbols = {p.symbol for p in rows if p.size != 0}
        for sym, lot in self.ledger.lots.items():  # closing fills we never saw
            if sym not in self._tracked and sym not in exchange_symbols and sym not in fresh:
                if lot.last_time <= now_ms - grace:
                    actions += self._close_external(sym, now_ms, as_of)
        return actions

    def _apply_repair(self, repair: CacheRepair, now_ms: int, as_of: int | None) -> list[Action]:
        sym, pos = repair.symbol, repair.position
        if pos is None:
            was_tracked = self._tracked.pop(sym, None) is not None
            self._liq.pop(sym, None)
            self._last_event[sym] = max(self._last_event.get(sym, 0), now_ms)
            flat = self._went_flat(sym, now_ms) if was_tracked else []
            return self._close_external(sym, now_ms, as_of) + flat
        self._last_event[sym] = max(self._last_event.get(sym, 0), pos.updated_at)
        if repair.kind is DiffKind.MISSING_IN_CACHE:
            self.counters.adopted += 1
        price = self._price.get(sym, (0, None))[1]
        trades = self.ledger.resync(sym, pos.size, pos.entry_price, pos.updated_at or now_ms,
                                    price, pos.leverage)  # fmt: skip
        self._set_position(pos, pos.updated_at or now_ms, adopted=True)
        return [TradeClosed(t) for t in trades]

    def _close_external(self, symbol: str, now_ms: int, as_of: int | None) -> list[Action]:
        price = self._price.get(symbol, (0, None))[1]
        trade = self.ledger.close_external(symbol, now_ms, price, as_of=as_of)
        if trade is None:
            return []
        self.counters.closed_externally += 1
        return [TradeClosed(trade)]
