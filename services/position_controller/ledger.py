"""Closed-trade ledger: turns the stream of fills and funding into `ClosedTrade`s.

WHY here: the position controller sees every fill of every order (entries, its own
closes, stops/targets triggered by the exchange, liquidations, manual orders), so it is the
one place that can say when a round trip ended and why.  Pure: fills and funding in,
trades out; the service publishes them and the learner labels samples with them.

One-way mode: one lot per symbol.  A lot opens on the first fill from flat, grows with
fills in its direction, shrinks with opposite fills and closes when its size reaches 0.
A fill larger than the open size (a non-reduce-only order) closes the lot with reason
`flip` and opens the opposite lot with the rest (fees split by quantity).  A reduce-only or
closePosition fill can never open a position: one larger than the lot (our lot was short of
the exchange's, e.g. after a REST resync) closes it with the fill's own reason, keeps the
whole fee and realized profit, and the excess is counted (`reduce_only_excess`), not opened.

REST snapshots: `adopt`/`resync` set a lot from a positionRisk row whose `updateTime` T says
which fills it already contains (every fill with trade time <= T).  Such a fill arriving
later (account_feed stalled, the stream replayed) is not added again: its quantity is in
the lot already.  PnL attribution of those late fills: the commission is added to the lot
(a snapshot carries no fees); for a fill that reduced the position, its real realized profit
and price replace the estimate `resync` booked for that quantity (`_reduce_estimated`, at
the mark price), up to the estimated quantity.  A late fill for a symbol with no lot (the
snapshot already closed it) only counts (`presynced_fills`): its trade is written.
Not so a fill in no lot we hold and no recorded trade: a whole round trip between the last
recorded trade and a flat snapshot, delivered late, is applied as live (`_accounted`).

Gaps: an orphan closing fill (no lot: its opening fills were never seen) marks the symbol
in `replay_needed`, so the service can rebuild the lot from REST `userTrades`
(`replay`), after which the closing fills make the trade as usual.

Money: gross PnL is the sum of Binance's realized profit (`rp`) of the closing fills, fees
are the commissions (`n`) in the quote asset, funding is signed (> 0 received), and
net = gross - fees + funding, exactly, in Decimal.  Entry and exit prices are
volume-weighted over all entry / all closing fills.

Exactly once: a fill is keyed by (symbol, trade id `t`) — or (order id, filled quantity)
when `t` is 0 — and a replayed fill is ignored; a trade id (`SYMBOL-<open ms>`) is emitted
once.  Both memories are bounded (LRU).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from services.position_controller.lots import Lot, Lru, exit_reason, fill_key
from shared.models import AccountUpdate, AlgoUpdate, ClosedTrade, DecisionRecord, OrderUpdate

log = logging.getLogger(__name__)

_ZERO = Decimal(0)
DecisionLookup = Callable[[str], DecisionRecord | None]


@dataclass(slots=True)
class LedgerCounters:
    fills: int = 0
    duplicate_fills: int = 0
    orphan_close_fills: int = 0
    trades: int = 0
    duplicate_trades: int = 0
    funding_events: int = 0
    unattributed_funding: int = 0
    foreign_fee_fills: int = 0
    lookup_errors: int = 0
    reduce_only_excess: int = 0  # reduce-only fills larger than the lot (excess ignored)
    presynced_fills: int = 0  # fills already contained in a REST snapshot (qty not re-added)
    replayed_fills: int = 0  # fills rebuilt from REST userTrades (new ones only)
    replay_skipped: int = 0  # fetched fills older than the lot / the last trade


class Ledger:
    """Tracks each symbol's lot and emits a ClosedTrade when it ends."""

    def __init__(
        self,
        decision_lookup: DecisionLookup | None = None,
        *,
        quote_asset: str = "USDT",
        memory: int = 200_000,
    ) -> None:
        self._lookup = decision_lookup
        self.quote_asset = quote_asset
        self._lots: dict[str, Lot] = {}
        self._seen_fills = Lru(memory)
        self._emitted = Lru(memory)
        self._seen_funding = Lru(memory)
        self._algo_types: OrderedDict[int, str] = OrderedDict()
        self._synced: dict[str, int] = {}  # symbol -> exchange time of the last snapshot
        self._orphans: dict[str, int] = {}  # symbol -> earliest orphan closing fill time
        self._spans: dict[str, deque[tuple[int, int]]] = {}  # recorded trades' (open, exit)
        self._memory = memory
        self.counters = LedgerCounters()

    # ---- queries --------------------------------------------------------------------
    def lot(self, symbol: str) -> Lot | None:
        return self._lots.get(symbol)

    @property
    def lots(self) -> dict[str, Lot]:
        return dict(self._lots)

    @property
    def replay_needed(self) -> dict[str, int]:
        """Symbols whose closing fills came with no lot, by the earliest such fill's time:
        their opening fills were missed, `replay` them from REST userTrades."""
        return dict(self._orphans)

    def has_seen(self, fill: OrderUpdate) -> bool:
        """Was this fill (by trade id) applied already?  Saves REST calls on replays."""
        return fill_key(fill) in self._seen_fills

    def synced_at(self, symbol: str) -> int | None:
        """Exchange time of the last REST snapshot the symbol was set from."""
        return self._synced.get(symbol)

    def _before_replay(self, fill: OrderUpdate) -> bool:
        """A fetched fill inside the span of a trade already recorded (one-way mode: every
        fill between a trade's open and exit is that trade's; a REST window reaching back
        too far, e.g. after a restart), or older than the open lot (it cannot be applied
        out of order): replaying it would open a phantom lot, so it is skipped."""
        lot = self._lots.get(fill.symbol)
        t = fill.trade_time
        old = lot is not None and not lot.estimated and t < lot.open_time
        if not old and not any(o <= t <= x for o, x in self._spans.get(fill.symbol, ())):
            return False
        self.counters.replay_skipped += 1
        return True

    # ---- events ---------------------------------------------------------------------
    def on_algo_update(self, update: AlgoUpdate) -> None:
        """Remember the conditional type of a triggered algo order's matching-engine order,
        so its fill is classified stop_loss / take_profit even if `ot` says MARKET."""
        if update.order_id:
            try:
                oid = int(update.order_id)
            except ValueError:
                return
            self._algo_types[oid] = update.order_type
            if len(self._algo_types) > self._memory:
                self._algo_types.popitem(last=False)

    def on_fill(self, fill: OrderUpdate, leverage: int | None = None) -> list[ClosedTrade]:
        """Apply one ORDER_TRADE_UPDATE; returns the trades it closed (0, or 1)."""
        if not fill.is_fill or fill.last_filled_qty <= 0:
            return []
        if not self._seen_fills.add(fill_key(fill)):
            self.counters.duplicate_fills += 1
            return []
        self.counters.fills += 1
        fee = self._fee(fill)
        if fill.trade_time <= self._synced.get(fill.symbol, -1) and self._accounted(fill):
            self._presynced(fill, fee)
            return []
        qty, price, t = fill.last_filled_qty, fill.last_filled_price, fill.trade_time
        direction = 1 if fill.side == "BUY" else -1
        reducing = fill.reduce_only or fill.close_position
        lot = self._lots.get(fill.symbol)
        if lot is None:
            if reducing or exit_reason(fill) == "liquidation":
                self.counters.orphan_close_fills += 1  # closes a position we never saw open
                self._orphans.setdefault(fill.symbol, t)
                self._seen_fills.discard(fill_key(fill))  # a replay must apply it again
                return []
            self._open(fill, qty, price, fee, leverage)
            return []
        if leverage is not None:
            lot.leverage = leverage
        if direction == lot.direction:
            lot.add_entry(qty, price, t)
            lot.fees += fee
            return []
        return self._close_part(lot, fill, fee, leverage, reducing)

    def _close_part(
        self, lot: Lot, fill: OrderUpdate, fee: Decimal, leverage: int | None, reducing: bool
    ) -> list[ClosedTrade]:
        """An opposite fill: shrink the lot; at 0 the trade ends.  The rest of a larger
        fill opens the opposite lot (a flip) unless the fill was reduce-only/closePosition:
        then the excess is counted and dropped, and the fill keeps its whole fee."""
        qty, price = fill.last_filled_qty, fill.last_filled_price
        closing = min(qty, lot.qty)
        rest = qty - closing
        close_fee = fee if rest == 0 or reducing else fee * closing / qty
        lot.add_exit(closing, price, fill.trade_time)
        lot.fees += close_fee
        lot.realized += fill.realized_pnl
        if lot.qty > 0:
            return []
        if rest > 0 and reducing:
            self.counters.reduce_only_excess += 1
            log.warning("%s: reduce-only fill %s exceeds the lot by %s; excess ignored",
                        lot.symbol, fill.trade_id, rest)  # fmt: skip
            rest = _ZERO
        reason = "flip" if rest > 0 else exit_reason(fill, self._algo_types)
        trade = self._finish(lot, reason)
        if rest > 0:
            self._open(fill, rest, price, fee - close_fee, leverage)
        return [trade] if trade is not None else []

    def _accounted(self, fill: OrderUpdate) -> bool:
        """Is a fill at or before the last snapshot's time already in our books: in the
        lot that snapshot set (or one it predates), or in a recorded trade?  A round trip
        that opened and closed before a flat snapshot, all its fills delivered later (a
        restart, a stalled account_feed), is in neither: its fills are applied like live
        ones, else the trade would never be recorded.  One-way mode: such a trip comes
        after every recorded trade of the symbol, and its lot is not estimated and opened
        no later than the snapshot."""
        lot = self._lots.get(fill.symbol)
        if lot is not None:
            return lot.estimated or lot.open_time > self._synced[fill.symbol]
        return any(fill.trade_time <= x for _o, x in self._spans.get(fill.symbol, ()))

    def _presynced(self, fill: OrderUpdate, fee: Decimal) -> None:
        """A fill the last REST snapshot already contains (see module doc): its fee, and
        for a reducing fill its real realized profit and price in place of the estimate."""
        self.counters.presynced_fills += 1
        lot = self._lots.get(fill.symbol)
        if lot is None or not (lot.estimated or lot.open_time <= fill.trade_time):
            return  # no lot held it (a later lot must not get an earlier trade's fee)
        lot.fees += fee
        direction = 1 if fill.side == "BUY" else -1
        if direction == lot.direction:
            if not lot.entry_client_id and not (fill.reduce_only or fill.close_position):
                lot.entry_client_id = fill.client_order_id  # joins the entry's decision
            return
        q = min(fill.last_filled_qty, lot.est_qty)
        if q <= 0:
            return
        share = q / lot.est_qty
        est_real, est_notional = lot.est_realized * share, lot.est_notional * share
        lot.realized += fill.realized_pnl * q / fill.last_filled_qty - est_real
        lot.exit_notional += q * fill.last_filled_price - est_notional
        lot.est_qty -= q
        lot.est_realized -= est_real
        lot.est_notional -= est_notional

    def replay(
        self, symbol: str, fills: Iterable[OrderUpdate], leverage: int | None = None
    ) -> list[ClosedTrade]:
        """Fills fetched over REST (userTrades) for a gap in the user data stream, oldest
        first: the ones not seen yet are applied like live fills (so a round trip that
        opened and closed in the gap is recorded once); clears `replay_needed`."""
        self._orphans.pop(symbol, None)
        out: list[ClosedTrade] = []
        for f in sorted(fills, key=lambda f: (f.trade_time, f.trade_id)):
            if f.symbol != symbol or self._before_replay(f):
                continue
            before = self.counters.fills
            out += self.on_fill(f, leverage)
            self.counters.replayed_fills += self.counters.fills - before
        self._orphans.pop(symbol, None)  # the replay itself may end on a (real) orphan
        return out

    def on_funding(self, symbol: str, amount: Decimal, time_ms: int, ref: Hashable = None) -> bool:
        """Funding paid (< 0) or received (> 0) on a symbol's open lot; deduplicated by
        `ref` (e.g. the income tranId) or (symbol, time, amount)."""
        if not self._seen_funding.add(ref if ref is not None else (symbol, time_ms, amount)):
            return False
        lot = self._lots.get(symbol)
        if lot is None:
            self.counters.unattributed_funding += 1
            return False
        lot.funding += amount
        self.counters.funding_events += 1
        return True

    def on_account_update(self, update: AccountUpdate) -> None:
        """FUNDING_FEE balance changes.  Isolated: the event names the position.  Cross:
        it does not; with one open lot it is exact, with several it is split by notional
        (an approximation — feed `on_funding` from REST income rows for exact figures)."""
        if update.reason != "FUNDING_FEE":
            return
        amount = sum(
            (b.balance_change for b in update.balances if b.asset == self.quote_asset), _ZERO
        )
        if amount == 0 or not self._seen_funding.add(("acct", update.transaction_time, amount)):
            return
        named = [p.symbol for p in update.positions if p.symbol in self._lots]
        targets = named or list(self._lots)
        if not targets:
            self.counters.unattributed_funding += 1
            return
        weights = [self._lots[s].qty * self._lots[s].entry_price for s in targets]
        total = sum(weights, _ZERO)
        shares = [amount * w / total if total else amount / len(targets) for w in weights]
        shares[-1] = amount - sum(shares[:-1], _ZERO)  # the sum stays exact
        for sym, share in zip(targets, shares, strict=True):
            self._lots[sym].funding += share
        self.counters.funding_events += 1

    # ---- positions seen without fills -----------------------------------------------
    def adopt(
        self, symbol: str, size: Decimal, entry_price: Decimal, time_ms: int,
        leverage: int | None = None, *, as_of: int | None = None,
    ) -> Lot | None:  # fmt: skip
        """Start a lot for a position we did not see open (behind our back, or before a
        restart).  No-op when a lot exists or the size is 0.  `as_of` is the exchange time
        the size was read at (positionRisk `updateTime`): fills up to it are in the lot."""
        if size == 0 or symbol in self._lots:
            return self._lots.get(symbol)
        self._mark_synced(symbol, as_of)
        lot = Lot(symbol, "LONG" if size > 0 else "SHORT", time_ms, "", leverage=leverage,
                  estimated=True)  # fmt: skip
        lot.add_entry(abs(size), entry_price, time_ms)
        self._lots[symbol] = lot
        return lot

    def close_external(
        self, symbol: str, time_ms: int, price: Decimal | None = None, *,
        as_of: int | None = None,
    ) -> ClosedTrade | None:  # fmt: skip
        """The exchange shows no position but a lot is open: we missed its closing fills.
        The rest is closed at `price` (else the entry price), PnL estimated from it.
        `as_of`: an exchange time the flat snapshot surely includes (fills up to it)."""
        self._mark_synced(symbol, as_of)
        lot = self._lots.get(symbol)
        if lot is None:
            return None
        self._reduce_estimated(lot, lot.qty, price, time_ms)
        return self._finish(lot, "external")

    def resync(
        self, symbol: str, size: Decimal, entry_price: Decimal, time_ms: int,
        price: Decimal | None = None, leverage: int | None = None,
    ) -> list[ClosedTrade]:  # fmt: skip
        """Make the lot match the exchange's size (reconciliation found drift).  `time_ms`
        is the snapshot's exchange time (its `updateTime`): fills up to it are included
        and are not applied again when they arrive later (see module doc)."""
        self._mark_synced(symbol, time_ms)
        lot = self._lots.get(symbol)
        out: list[ClosedTrade] = []
        if lot is not None and (size == 0 or (size > 0) != (lot.direction > 0)):
            trade = self.close_external(symbol, time_ms, price, as_of=time_ms)
            out += [trade] if trade is not None else []
            lot = None
        if lot is None:
            self.adopt(symbol, size, entry_price, time_ms, leverage)
            return out
        target = abs(size)
        if target < lot.qty:
            self._reduce_estimated(lot, lot.qty - target, price, time_ms)
        elif target > lot.qty:
            lot.add_entry(target - lot.qty, entry_price, time_ms)
            lot.estimated = True
        return out

    # ---- internals ------------------------------------------------------------------
    def _mark_synced(self, symbol: str, time_ms: int | None) -> None:
        if time_ms is not None and time_ms > self._synced.get(symbol, -1):
            self._synced[symbol] = time_ms
        self._orphans.pop(symbol, None)  # the snapshot settled the symbol

    def _span(self, symbol: str, open_ms: int, exit_ms: int) -> None:
        spans = self._spans.setdefault(symbol, deque(maxlen=_SPANS_KEPT))
        if (open_ms, exit_ms) not in spans:
            spans.append((open_ms, exit_ms))

    def _fee(self, fill: OrderUpdate) -> Decimal:
        if fill.commission_asset in ("", self.quote_asset):
            return fill.commission
        self.counters.foreign_fee_fills += 1  # e.g. BNB fees: not convertible here
        return _ZERO

    def _open(
        self, fill: OrderUpdate, qty: Decimal, price: Decimal, fee: Decimal, leverage: int | None
    ) -> None:
        side = "LONG" if fill.side == "BUY" else "SHORT"
        lot = Lot(fill.symbol, side, fill.trade_time, fill.client_order_id, leverage=leverage)
        lot.add_entry(qty, price, fill.trade_time)
        lot.fees += fee
        self._lots[fill.symbol] = lot

    def _reduce_estimated(
        self, lot: Lot, qty: Decimal, price: Decimal | None, time_ms: int
    ) -> None:
        px = price if price is not None and price > 0 else lot.entry_price
        realized = (px - lot.entry_price) * qty * lot.direction
        lot.realized += realized
        lot.add_exit(qty, px, time_ms)
        lot.est_qty += qty
        lot.est_notional += qty * px
        lot.est_realized += realized
        lot.estimated = True

    def _finish(self, lot: Lot, reason: str) -> ClosedTrade | None:
        del self._lots[lot.symbol]
        self._span(lot.symbol, lot.open_time, lot.last_time)
        if not self._emitted.add(lot.trade_id):
            self.counters.duplicate_trades += 1
            return None
        decision = self._decision(lot.entry_client_id)
        lev = lot.leverage or (decision.leverage if decision is not None else None) or 1
        exit_price = lot.exit_notional / lot.exit_qty if lot.exit_qty else lot.entry_price
        self.counters.trades += 1
        return ClosedTrade(
            trade_id=lot.trade_id, symbol=lot.symbol, side=lot.side,  # type: ignore[arg-type]
            quantity=lot.entry_qty, entry_price=lot.entry_price, exit_price=exit_price,
            entry_time=lot.open_time, exit_time=lot.last_time, fees=lot.fees,
            funding=lot.funding, gross_pnl=lot.realized,
            net_pnl=lot.realized - lot.fees + lot.funding, exit_reason=reason,
            leverage=lev, decision=decision,
        )  # fmt: skip

    def _decision(self, client_id: str) -> DecisionRecord | None:
        if not client_id or self._lookup is None:
            return None
        try:
            return self._lookup(client_id)
        except Exception as exc:  # a failing lookup must not lose the trade
            self.counters.lookup_errors += 1
            log.warning("decision lookup failed for %s: %r", client_id, exc)
            return None

    # ---- persistence ----------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Open lots as plain data, so a restarted service resumes mid-trade."""
        return {"lots": [asdict(lot) for lot in self._lots.values()],
                "synced": dict(self._synced), "orphans": dict(self._orphans),
                "spans": {s: list(v) for s, v in self._spans.items()}}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of `to_state`; Decimal fields may come back as strings (JSON)."""
        for sym, t in (state.get("synced") or {}).items():
            self._mark_synced(str(sym), int(t))
        for sym, t in (state.get("orphans") or {}).items():
            self._orphans.setdefault(str(sym), int(t))
        for sym, spans in (state.get("spans") or {}).items():
            for o, x in spans:
                self._span(str(sym), int(o), int(x))
        for row in state.get("lots", []):
            data = dict(row)
            for name in _DECIMAL_FIELDS:
                if name in data:  # est_* are absent from older states
                    data[name] = Decimal(str(data[name]))
            lot = Lot(**data)
            self._lots[lot.symbol] = lot


_SPANS_KEPT = 64  # recorded trades remembered per symbol (replays skip their fills)
_DECIMAL_FIELDS = (
    "qty", "entry_qty", "entry_notional", "exit_qty", "exit_notional", "realized", "fees",
    "funding", "est_qty", "est_notional", "est_realized",
)  # fmt: skip
