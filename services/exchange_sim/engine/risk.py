"""Margin state, funding and liquidation.

Why these rules:
- available balance = cross wallet + cross unrealized PnL − cross position initial margin −
  open-order initial margin (Binance's definition for single-asset mode);
- an isolated position is liquidated when isolated wallet + its uPnL ≤ its maintenance margin; a
  cross account when cross wallet + Σ cross uPnL ≤ Σ cross maintenance margin (marks);
- a liquidated position is closed at the mark as a taker `LIQUIDATION` order (client id
  `autoclose-<ts>`); what margin is left is charged as the clearance fee (capped at notional ×
  liquidationFee) and a deficit is covered by the insurance fund, so a liquidated isolated
  position never costs more than its isolated wallet;
- funding at each multiple of the funding interval: payment = −amount × mark × rate (longs pay a
  positive rate), taken from the isolated wallet for isolated positions.
Liquidation prices are cached per position and invalidated on every state change, so a tick
that moves the mark but crosses no liquidation price costs one comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from .events import EngineEvent, account_update
from .margin import ZERO, liquidation_price, maint_margin, q8, unrealized_pnl
from .models import Account, Book, Order, Position

FAR_FUTURE = 2**62


class RiskMixin:
    accounts: dict[str, Account]
    books: dict[str, Book]
    funding_enabled: bool
    funding_interval_ms: int
    funding_rate_fn: Callable[[str, int], Decimal]

    # ------------------------------------------------------------ margin sums
    def _mark(self, symbol: str) -> Decimal:
        return self.books[symbol].mark

    def _open_order_margin(self, acct: Account, symbol: str | None = None) -> Decimal:
        total = ZERO
        for o in acct.open_orders.values():
            if o.type == "LIMIT" and not o.reduce_only and (symbol is None or o.symbol == symbol):
                total += o.remaining * o.price / acct.positions[o.symbol].leverage
        return total

    def _cross_sums(
        self, acct: Account, exclude: str | None = None
    ) -> tuple[Decimal, Decimal, Decimal]:
        """(uPnL, initial margin, maintenance margin) of cross positions except `exclude`."""
        upnl = im = mm = ZERO
        for p in acct.positions.values():
            if p.amount and not p.isolated and p.symbol != exclude:
                book = self.books[p.symbol]
                upnl += unrealized_pnl(p.amount, p.entry, book.mark)
                notional = abs(p.amount) * book.mark
                im += notional / p.leverage
                mm += maint_margin(book.spec.brackets, notional)
        return upnl, im, mm

    def _available(self, acct: Account) -> Decimal:
        upnl, im, _ = self._cross_sums(acct)
        return acct.cross_wallet + upnl - im - self._open_order_margin(acct)

    def _liq_price(self, acct: Account, pos: Position) -> Decimal:
        """Liquidation mark price of `pos` (cached until the account changes)."""
        if pos.liq_price is not None:
            return pos.liq_price
        book = self.books[pos.symbol]
        if pos.isolated:
            lp = liquidation_price(pos.amount, pos.entry, pos.isolated_wallet, book.spec.brackets)
        else:
            upnl, _, mm = self._cross_sums(acct, exclude=pos.symbol)
            lp = liquidation_price(
                pos.amount, pos.entry, acct.cross_wallet, book.spec.brackets, mm, upnl
            )
        pos.liq_price = lp
        return lp

    # ------------------------------------------------------------- liquidation
    @staticmethod
    def _beyond(pos: Position, mark: Decimal, lp: Decimal) -> bool:
        return mark <= lp if pos.amount > 0 else mark >= lp

    def _check_liquidations(self, book: Book, ts: int) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        symbol = book.spec.symbol
        for aid in tuple(book.holders):
            acct = self.accounts[aid]
            pos = acct.positions.get(symbol)
            if pos is None or not pos.amount:
                continue
            if pos.isolated:
                if self._beyond(pos, book.mark, self._liq_price(acct, pos)):
                    events.extend(self._liquidate(acct, [pos], ts))
                continue
            crosses = acct.cross_positions()
            if len(crosses) == 1:
                hit = self._beyond(pos, book.mark, self._liq_price(acct, pos))
            else:
                upnl, _, mm = self._cross_sums(acct)
                hit = acct.cross_wallet + upnl <= mm
            if hit:
                events.extend(self._liquidate(acct, crosses, ts))
        return events

    def _liquidate(self, acct: Account, positions: list[Position], ts: int) -> list[EngineEvent]:
        """Force-close `positions` at mark; settle clearance fee / insurance cover."""
        events: list[EngineEvent] = []
        isolated = positions[0].isolated
        symbols = {p.symbol for p in positions}
        for o in list(acct.open_orders.values()):
            if not isolated or o.symbol in symbols:
                events.extend(self._end_order(acct, self.books[o.symbol], o, "CANCELED", ts))  # type: ignore[attr-defined]
        cap = ZERO
        remaining = ZERO
        for pos in positions:
            book = self.books[pos.symbol]
            qty = abs(pos.amount)
            cap += q8(qty * book.mark * book.spec.liquidation_fee)
            before_wallet, before_iw = acct.wallet, pos.isolated_wallet
            order = self._new_liquidation_order(acct, book, pos, ts)  # type: ignore[attr-defined]
            events.extend(
                self._fill(acct, book, order, qty, book.mark, False, ts, liquidation=True)
            )  # type: ignore[attr-defined]
            self._order_done(acct, book, order, ts)  # type: ignore[attr-defined]
            remaining += before_iw + (acct.wallet - before_wallet)
            events.extend(self._after_position_change(acct, book, ts))  # type: ignore[attr-defined]
        if not isolated:
            remaining = acct.cross_wallet
        adjustment = -remaining if remaining < 0 else -min(remaining, cap)
        if adjustment:
            acct.wallet += adjustment
            acct.ledger.adjustments += adjustment
            self._touch(acct, ts)  # type: ignore[attr-defined]
            events.append(account_update(acct, "INSURANCE_CLEAR", ts, [], adjustment))
        return events

    def _new_liquidation_order(self, acct: Account, book: Book, pos: Position, ts: int) -> Order:
        order = Order(
            order_id=self._next_id(),  # type: ignore[attr-defined]
            account_id=acct.account_id, symbol=pos.symbol, client_id=f"autoclose-{ts}",
            side="SELL" if pos.amount > 0 else "BUY", type="LIQUIDATION", orig_type="LIQUIDATION",
            tif="IOC", qty=abs(pos.amount), price=book.mark, reduce_only=True, time=ts, update_time=ts,
        )  # fmt: skip
        self._record_order(acct, order, "liquidation")  # type: ignore[attr-defined]
        return order

    # ----------------------------------------------------------------- funding
    def _funding(self, book: Book, ts: int) -> list[EngineEvent]:
        if not self.funding_enabled:
            book.next_funding = FAR_FUTURE
            return []
        iv = self.funding_interval_ms
        if book.next_funding == 0:
            book.next_funding = (ts // iv + 1) * iv
            return []
        events: list[EngineEvent] = []
        if not book.holders:  # nobody to pay: jump to the last funding time passed
            book.next_funding = max(book.next_funding, (ts // iv) * iv)
        while ts >= book.next_funding:
            when = book.next_funding
            rate = (
                book.funding_rate
                if book.funding_rate is not None
                else self.funding_rate_fn(book.spec.symbol, when)
            )
            book.last_funding_rate = rate
            for aid in list(book.holders):
                events.extend(self._pay_funding(self.accounts[aid], book, rate, ts))
            book.next_funding = when + iv
        return events

    def _pay_funding(self, acct: Account, book: Book, rate: Decimal, ts: int) -> list[EngineEvent]:
        pos = acct.positions[book.spec.symbol]
        payment = q8(-pos.amount * book.mark * rate)
        if not payment:
            return []
        acct.wallet += payment
        acct.ledger.funding += payment
        rows = []
        if pos.isolated:
            pos.isolated_wallet += payment
            rows.append(self._position_payload(book, pos))  # type: ignore[attr-defined]
        self._touch(acct, ts)  # type: ignore[attr-defined]
        return [account_update(acct, "FUNDING_FEE", ts, rows, payment)]
