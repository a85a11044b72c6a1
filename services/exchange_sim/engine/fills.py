"""Fills and order life-cycle: the only code that moves money and positions on a trade.

Money rules (one-way mode, USDT margin):
- commission = qty × price × rate (maker or taker), 8 decimals, paid from the wallet;
- a fill against the position first reduces it: realized PnL = (price − entry) × reduced × side;
  the rest opens (or extends) at the weighted average entry; a flip is a close plus an open;
- isolated positions move initial margin (price × opened / leverage) from the cross wallet into
  the isolated wallet on open, and release it pro rata on reduce;
- break-even tracks the commissions paid opening the current position.
So for every account: wallet − deposit == Σ realized − Σ commission + Σ funding + Σ adjustments.
"""

from __future__ import annotations

from decimal import Decimal

from .audit import FillRecord
from .events import (
    EngineEvent,
    Trade,
    account_update,
    algo_update,
    order_trade_update,
    position_row,
)
from .margin import ZERO, break_even_price, q8
from .models import Account, Book, Order, Position

FINAL = frozenset({"FILLED", "CANCELED", "EXPIRED", "REJECTED"})
MAX_CLOSED_ORDERS = 10_000


class FillMixin:
    """Mixed into `Exchange`; expects `accounts`, `books`, `maker_fee`, `taker_fee`, `audit`."""

    accounts: dict[str, Account]
    books: dict[str, Book]
    maker_fee: Decimal
    taker_fee: Decimal

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _touch(acct: Account, ts: int | None = None) -> None:
        """Account state changed: cached liquidation prices are stale."""
        for p in acct.positions.values():
            p.liq_price = None
        acct.cross_cache = None
        if ts is not None:
            acct.update_time = ts

    def _side_notionals(self, acct: Account, symbol: str) -> tuple[Decimal, Decimal]:
        bid = ask = ZERO
        for o in acct.open_orders.values():
            if o.symbol == symbol and o.type == "LIMIT":
                if o.is_buy:
                    bid += o.remaining * o.price
                else:
                    ask += o.remaining * o.price
        return bid, ask

    def _order_event(
        self, acct: Account, book: Book, order: Order, exec_type: str, ts: int,
        trade: Trade | None = None, expiry_reason: str = "0",
    ) -> EngineEvent:  # fmt: skip
        bid, ask = self._side_notionals(acct, order.symbol)
        return order_trade_update(book.spec, order, exec_type, ts, trade, bid, ask, expiry_reason)

    def _position_payload(self, book: Book, pos: Position) -> dict:
        bep = break_even_price(pos.amount, pos.entry, pos.open_fees)
        return position_row(book.spec, pos, book.mark, bep)

    # ------------------------------------------------------------------- fills
    def _apply_to_position(
        self, pos: Position, signed: Decimal, price: Decimal, commission: Decimal
    ) -> Decimal:
        """Move the position by `signed` at `price`; returns realized PnL (8 dp)."""
        qty = abs(signed)
        old = pos.amount
        realized = ZERO
        reduced = ZERO
        if old and (old > 0) != (signed > 0):
            size = abs(old)
            reduced = min(qty, size)
            realized = q8((price - pos.entry) * reduced * (1 if old > 0 else -1))
            if pos.isolated:
                release = (
                    pos.isolated_wallet
                    if reduced == size
                    else q8(pos.isolated_wallet * reduced / size)
                )
                pos.isolated_wallet -= release
            pos.open_fees = ZERO if reduced == size else q8(pos.open_fees * (size - reduced) / size)
            pos.amount = old + (reduced if signed > 0 else -reduced)
            if not pos.amount:
                pos.entry = ZERO
        opened = qty - reduced
        if opened:
            cur = abs(pos.amount)
            pos.entry = (pos.entry * cur + price * opened) / (cur + opened)
            pos.amount += opened if signed > 0 else -opened
            pos.open_fees += q8(commission * opened / qty)
            if pos.isolated:
                pos.isolated_wallet += q8(price * opened / pos.leverage)
        pos.cum_realized += realized
        return realized

    def _fill(
        self, acct: Account, book: Book, order: Order, qty: Decimal, price: Decimal,
        maker: bool, ts: int, liquidation: bool = False,
    ) -> list[EngineEvent]:  # fmt: skip
        """Execute `qty` of `order` at `price`; returns ORDER_TRADE_UPDATE + ACCOUNT_UPDATE."""
        pos = acct.position(book.spec)
        commission = q8(qty * price * (self.maker_fee if maker else self.taker_fee))
        signed = qty if order.is_buy else -qty
        realized = self._apply_to_position(pos, signed, price, commission)
        acct.wallet += realized - commission
        acct.ledger.realized_pnl += realized
        acct.ledger.fees += commission
        pos.update_time = ts
        order.executed += qty
        order.cum_quote += qty * price
        order.update_time = ts
        order.status = "FILLED" if order.executed >= order.qty else "PARTIALLY_FILLED"
        book.trade_seq += 1
        trade = Trade(qty, price, commission, book.trade_seq, maker, realized)
        if pos.amount:
            book.holders[acct.account_id] = None
        else:
            book.holders.pop(acct.account_id, None)
        book.active = bool(book.resting or book.algos or book.holders)
        self._touch(acct, ts)
        self._record_fill(acct, order, trade, ts, liquidation)
        exec_type = "CALCULATED" if liquidation else "TRADE"
        events = [self._order_event(acct, book, order, exec_type, ts, trade)]
        events.append(account_update(acct, "ORDER", ts, [self._position_payload(book, pos)]))
        return events

    def _record_fill(
        self, acct: Account, order: Order, trade: Trade, ts: int, liquidation: bool
    ) -> None:
        self.audit.fill(  # type: ignore[attr-defined]
            FillRecord(
                ts, acct.account_id, order.symbol, order.order_id, order.client_id, trade.trade_id,
                order.side, trade.qty, trade.price, trade.commission, trade.realized, trade.maker,
                liquidation,
            )
        )  # fmt: skip
        acct.trades.append(
            {
                "buyer": order.is_buy,
                "commission": f"{trade.commission:f}",
                "commissionAsset": acct.asset,
                "id": trade.trade_id,
                "maker": trade.maker,
                "orderId": order.order_id,
                "price": f"{trade.price:f}",
                "qty": f"{trade.qty:f}",
                "quoteQty": f"{trade.qty * trade.price:f}",
                "realizedPnl": f"{trade.realized:f}",
                "side": order.side,
                "positionSide": "BOTH",
                "symbol": order.symbol,
                "time": ts,
            }
        )

    # -------------------------------------------------------------- life-cycle
    def _order_done(self, acct: Account, book: Book, order: Order, ts: int) -> list[EngineEvent]:
        """Bookkeeping for an order that reached a final status."""
        acct.open_orders.pop(order.order_id, None)
        acct.closed_orders[order.order_id] = order
        while len(acct.closed_orders) > MAX_CLOSED_ORDERS:
            acct.closed_orders.popitem(last=False)
        if order in book.resting:
            book.resting.remove(order)
            book.reindex()
        if order.algo_id is None:
            return []
        algo = acct.closed_algos.get(order.algo_id)
        if algo is None or algo.status != "TRIGGERED":
            return []
        algo.status = "FINISHED"
        algo.update_time = ts
        return [algo_update(book.spec, algo, ts, order)]

    def _end_order(
        self,
        acct: Account,
        book: Book,
        order: Order,
        status: str,
        ts: int,
        expiry_reason: str = "0",
    ) -> list[EngineEvent]:
        """Cancel or expire an open order (status CANCELED / EXPIRED)."""
        order.status = status
        order.update_time = ts
        acct.open_orders.pop(order.order_id, None)
        if order in book.resting:
            book.resting.remove(order)
            book.reindex()
        events = [self._order_event(acct, book, order, status, ts, expiry_reason=expiry_reason)]
        events.extend(self._order_done(acct, book, order, ts))
        return events

    def _after_position_change(self, acct: Account, book: Book, ts: int) -> list[EngineEvent]:
        """Expire reduce-only orders that can no longer reduce, and GTE_GTC algos when flat."""
        pos = acct.positions.get(book.spec.symbol)
        amount = pos.amount if pos else ZERO
        events: list[EngineEvent] = []
        for o in [o for o in book.resting if o.account_id == acct.account_id and o.reduce_only]:
            if not amount or (amount > 0) == o.is_buy:
                events.extend(self._end_order(acct, book, o, "EXPIRED", ts, expiry_reason="1"))
        if not amount:
            for a in [
                a for a in book.algos if a.account_id == acct.account_id and a.tif == "GTE_GTC"
            ]:
                events.extend(self._finish_algo(acct, book, a, "EXPIRED", ts))  # type: ignore[attr-defined]
        return events
