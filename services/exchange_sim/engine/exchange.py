"""The simulated Binance USDⓈ-M matching engine (pure: no I/O, no clock reads).

Why this shape: the protocol layer (REST/WS) and the backtest drive the same object. Every call
takes the simulated time as `ts_ms` and returns the wire response plus the user-data events the
call caused; the caller decides how to deliver them.

Price model: a tick is (last, mark). The simulated book quotes ask = last × (1 + slippage) and
bid = last × (1 − slippage), rounded outward to the tick. MARKET orders take that quote; a LIMIT
order is marketable when it reaches `last` (buy ≥ last, sell ≤ last) and then fills as a taker
at the better of its price and the quote; otherwise it rests and fills as a maker at its own
price when `last` crosses it. Liquidity is unlimited unless `set_depth` caps what one taker
LIMIT order may take (then IOC/FOK/GTC differ as on Binance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from ..specs import SymbolSpec
from . import errors as E
from .algo import AlgoMixin
from .audit import AuditLog, AuditRecord, OrderRecord
from .errors import EngineReject, err
from .events import EngineEvent
from .fills import FillMixin
from .margin import ZERO, round_to_tick
from .models import Account, Book, Order
from .risk import RiskMixin
from .settings import SettingsMixin
from .validate import parse_order
from .views import ViewMixin

EIGHT_HOURS_MS = 8 * 3600 * 1000
DEFAULT_FUNDING_RATE = Decimal("0.0001")


def constant_funding(symbol: str, funding_time_ms: int) -> Decimal:
    """Binance's default when premium is flat: the 0.01 % interest component."""
    return DEFAULT_FUNDING_RATE


class Exchange(FillMixin, RiskMixin, AlgoMixin, SettingsMixin, ViewMixin):
    """Accounts, positions and orders of a simulated USDⓈ-M futures exchange."""

    def __init__(
        self,
        specs: dict[str, SymbolSpec],
        *,
        taker_fee: Decimal = Decimal("0.0005"),
        maker_fee: Decimal = Decimal("0.0002"),
        slippage_bps: Decimal = Decimal("1"),
        funding_enabled: bool = True,
        funding_interval_ms: int = EIGHT_HOURS_MS,
        funding_rate_fn: Callable[[str, int], Decimal] = constant_funding,
        record: bool = True,
        audit_hook: Callable[[AuditRecord], None] | None = None,
        default_leverage: int = 20,
    ) -> None:
        self.specs = dict(specs)
        self.books: dict[str, Book] = {s: Book(spec) for s, spec in self.specs.items()}
        self.accounts: dict[str, Account] = {}
        self.taker_fee = Decimal(taker_fee)
        self.maker_fee = Decimal(maker_fee)
        self.slippage = Decimal(slippage_bps) / Decimal(10_000)
        self.funding_enabled = funding_enabled
        self.funding_interval_ms = int(funding_interval_ms)
        self.funding_rate_fn = funding_rate_fn
        self.default_leverage = default_leverage
        self.audit = AuditLog(enabled=record, hook=audit_hook)
        self._seq = 0

    # ------------------------------------------------------------------ setup
    def add_account(self, account_id: str, balance: Decimal, asset: str = "USDT") -> None:
        if account_id in self.accounts:
            raise ValueError(f"account {account_id!r} exists")
        bal = Decimal(balance)
        self.accounts[account_id] = Account(
            account_id, asset, bal, bal, default_leverage=self.default_leverage
        )

    def add_symbol(self, spec: SymbolSpec) -> None:
        self.specs[spec.symbol] = spec
        self.books.setdefault(spec.symbol, Book(spec))

    def _account(self, account_id: str) -> Account:
        acct = self.accounts.get(account_id)
        if acct is None:
            raise EngineReject(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return acct

    def _book(self, symbol: str) -> Book:
        book = self.books.get(symbol.upper() if symbol else symbol)
        if book is None:
            raise err(E.INVALID_SYMBOL)
        return book

    def _next_id(self) -> int:
        self._seq += 1
        return self._seq

    def _record_order(self, acct: Account, order: Order, kind: str) -> None:
        self.audit.order(
            OrderRecord(
                order.time,
                acct.account_id,
                order.symbol,
                order.client_id,
                order.order_id,
                kind,
                order.side,
                order.qty,
            )
        )

    def last_price(self, symbol: str) -> Decimal:
        return self._book(symbol).last

    def mark_price(self, symbol: str) -> Decimal:
        return self._book(symbol).mark

    # ------------------------------------------------------------ price ticks
    def advance_price(
        self, symbol: str, last: Decimal, ts_ms: int, mark: Decimal | None = None
    ) -> list[EngineEvent]:
        """New last (and mark) price at `ts_ms`: funding, resting fills, triggers, liquidations.

        O(1) when the symbol has no resting orders, algo orders or positions.
        """
        try:
            book = self.books[symbol]
        except KeyError:
            raise err(E.INVALID_SYMBOL) from None
        if type(last) is not Decimal:  # floats would silently break exact arithmetic
            last = Decimal(str(last))
        if mark is None:
            mark = last
        elif type(mark) is not Decimal:
            mark = Decimal(str(mark))
        book.last = last
        book.mark = mark
        book.ts = ts_ms
        if ts_ms >= book.next_funding:
            events = self._funding(book, ts_ms)
        elif not book.active:
            return []
        else:
            events = []
        if not book.active:
            return events
        m = book.mark
        if last <= book.max_buy or last >= book.min_sell:
            events.extend(self._match_resting(book, ts_ms))
        if last >= book.up_last or last <= book.dn_last or m >= book.up_mark or m <= book.dn_mark:
            events.extend(self._trigger_algos(book, ts_ms))
        if book.holders:
            events.extend(self._check_liquidations(book, ts_ms))
        return events

    def _match_resting(self, book: Book, ts: int) -> list[EngineEvent]:
        last = book.last
        crossed = [o for o in book.resting if (last <= o.price if o.is_buy else last >= o.price)]
        crossed.sort(key=lambda o: o.order_id)
        events: list[EngineEvent] = []
        for order in crossed:
            if order.status not in ("NEW", "PARTIALLY_FILLED"):
                continue
            acct = self.accounts[order.account_id]
            qty = self._fillable(acct, order, order.remaining)
            if not qty:
                events.extend(self._end_order(acct, book, order, "EXPIRED", ts, expiry_reason="1"))
                continue
            events.extend(self._fill(acct, book, order, qty, order.price, True, ts))
            if order.status == "FILLED":
                events.extend(self._order_done(acct, book, order, ts))
            events.extend(self._after_position_change(acct, book, ts))
        return events

    @staticmethod
    def _fillable(acct: Account, order: Order, qty: Decimal) -> Decimal:
        """Quantity a reduce-only order may still fill (never flips the position)."""
        if not order.reduce_only:
            return qty
        pos = acct.positions.get(order.symbol)
        if pos is None or not pos.amount or (pos.amount > 0) == order.is_buy:
            return ZERO
        return min(qty, abs(pos.amount))

    # ----------------------------------------------------------------- orders
    def place_order(
        self, account_id: str, params: Mapping[str, str], ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`POST /fapi/v1/order` with Binance's string parameters."""
        acct = self._account(account_id)
        try:
            spec, req = parse_order(params, self.specs)
            book = self.books[spec.symbol]
            order, events, ack = self._submit(
                acct, book, side=req.side, otype=req.type, qty=req.qty, price=req.price, tif=req.tif,
                reduce_only=req.reduce_only, client_id=req.client_id, ts=ts_ms, with_ack=True,
            )  # fmt: skip
        except EngineReject as exc:
            self.audit.reject(ts_ms, account_id, str(params.get("newClientOrderId", "")), exc.code)
            raise
        return (ack if req.resp_type == "ACK" else self.order_dict(order, "new")), events

    def _submit(
        self, acct: Account, book: Book, *, with_ack: bool = False, kind: str = "order", **kw: Any
    ) -> Any:
        """Check, accept and execute one engine order. Returns (order, events[, ack dict])."""
        marketable, fill_price = self._precheck(acct, book, kw)
        ts, tif = kw["ts"], kw["tif"]
        order = self._accept(acct, book, kw, kw.get("client_id"), kind)
        events = [self._order_event(acct, book, order, "NEW", ts)]
        ack = self.order_dict(order, "new") if with_ack else None
        if marketable:
            events.extend(self._take(acct, book, order, fill_price, ts))
        elif tif == "IOC":
            events.extend(self._end_order(acct, book, order, "EXPIRED", ts))
        else:
            book.resting.append(order)
            book.reindex()
        return (order, events, ack) if with_ack else (order, events)

    def _precheck(self, acct: Account, book: Book, kw: dict[str, Any]) -> tuple[bool, Decimal]:
        """State-dependent checks in Binance's order; returns (marketable, taker fill price)."""
        spec = book.spec
        side, otype, qty, price, tif = kw["side"], kw["otype"], kw["qty"], kw["price"], kw["tif"]
        reduce_only = kw["reduce_only"]
        if book.last <= 0:
            raise err(E.NO_DEPTH)
        client_id = kw.get("client_id")
        if client_id is not None:
            prev = acct.client_ids.get((spec.symbol, client_id))
            if prev is not None and prev in acct.open_orders:
                raise err(E.DUPLICATE_CLIENT_ID)
        if otype == "LIMIT":
            n_open = sum(1 for o in acct.open_orders.values() if o.symbol == spec.symbol)
            if n_open >= spec.max_num_orders:
                raise err(E.MAX_OPEN_ORDERS)
        is_buy = side == "BUY"
        quote = self._quote(book, is_buy)
        if otype == "MARKET":
            marketable, fill_price = True, quote
        else:
            marketable = price >= book.last if is_buy else price <= book.last
            fill_price = min(price, quote) if is_buy else max(price, quote)
            self._check_percent_price(book, is_buy, price)
        ref_price = price if otype == "LIMIT" else book.last
        if not reduce_only and qty * ref_price < spec.min_notional:
            raise E.min_notional(f"{spec.min_notional.normalize():f}")
        pos = acct.position(spec)
        if reduce_only and (not pos.amount or (pos.amount > 0) == is_buy):
            raise err(E.REDUCE_ONLY_REJECT)
        if tif == "GTX" and marketable:
            raise err(E.GTX_REJECT)
        if tif == "FOK" and (not marketable or (book.depth is not None and qty > book.depth)):
            raise err(E.FOK_REJECT)
        margin_price = fill_price if marketable else price
        self._check_margin(acct, book, pos, is_buy, qty, margin_price, reduce_only)
        return marketable, fill_price

    def _quote(self, book: Book, is_buy: bool) -> Decimal:
        tick = book.spec.tick_size
        if not self.slippage:
            return book.last
        if is_buy:
            return round_to_tick(book.last * (1 + self.slippage), tick, up=True)
        return round_to_tick(book.last * (1 - self.slippage), tick, up=False)

    @staticmethod
    def _check_percent_price(book: Book, is_buy: bool, price: Decimal) -> None:
        spec = book.spec
        if is_buy and price > book.mark * spec.multiplier_up:
            raise err(E.PRICE_ABOVE_CAP)
        if not is_buy and price < book.mark * spec.multiplier_down:
            raise err(E.PRICE_BELOW_FLOOR)

    def _check_margin(
        self,
        acct: Account,
        book: Book,
        pos: Any,
        is_buy: bool,
        qty: Decimal,
        price: Decimal,
        reduce_only: bool,
    ) -> None:
        """-2027 past the leverage bracket cap, -2019 when the opening part lacks margin."""
        if reduce_only:
            return
        size = abs(pos.amount)
        same_way = not pos.amount or (pos.amount > 0) == is_buy
        opened = qty if same_way else max(ZERO, qty - size)
        if not opened:
            return
        new_size = size + qty if same_way else opened
        if new_size * price > book.spec.max_notional(pos.leverage):
            raise err(E.MAX_POSITION)
        if opened * price / pos.leverage > self._available(acct):
            raise err(E.MARGIN_INSUFFICIENT)

    def _accept(
        self, acct: Account, book: Book, kw: dict[str, Any], client_id: str | None, kind: str
    ) -> Order:
        order_id = self._next_id()
        ts = kw["ts"]
        order = Order(
            order_id=order_id, account_id=acct.account_id, symbol=book.spec.symbol,
            client_id=client_id or f"sim{order_id:019d}", side=kw["side"], type=kw["otype"],
            orig_type=kw.get("orig_type") or kw["otype"], tif=kw["tif"], qty=kw["qty"],
            price=kw["price"], reduce_only=kw["reduce_only"], time=ts, update_time=ts,
            stop_price=kw.get("stop_price", ZERO), working_type=kw.get("working_type", "CONTRACT_PRICE"),
            close_position=kw.get("close_position", False), algo_id=kw.get("algo_id"),
        )  # fmt: skip
        acct.open_orders[order_id] = order
        acct.client_ids[(book.spec.symbol, order.client_id)] = order_id
        self._record_order(acct, order, kind)
        return order

    def _take(
        self, acct: Account, book: Book, order: Order, price: Decimal, ts: int
    ) -> list[EngineEvent]:
        """Execute a marketable order as taker; leftovers rest (GTC) or expire."""
        qty = self._fillable(acct, order, order.qty)
        if order.type == "LIMIT" and book.depth is not None:
            qty = min(qty, book.depth)
        events: list[EngineEvent] = []
        if qty:
            events.extend(self._fill(acct, book, order, qty, price, False, ts))
        if order.status == "FILLED":
            events.extend(self._order_done(acct, book, order, ts))
        elif order.type == "LIMIT" and order.tif == "GTC" and not order.reduce_only:
            book.resting.append(order)
            book.reindex()
        else:
            events.extend(self._end_order(acct, book, order, "EXPIRED", ts))
        if qty:
            events.extend(self._after_position_change(acct, book, ts))
        return events

    def cancel_order(
        self, account_id: str, symbol: str, order_id: int | str | None = None,
        orig_client_order_id: str | None = None, ts_ms: int | None = None,
    ) -> tuple[dict[str, Any], list[EngineEvent]]:  # fmt: skip
        """`DELETE /fapi/v1/order`: -2011 unless the order is open."""
        if ts_ms is None:
            raise TypeError("ts_ms is required")
        acct = self._account(account_id)
        book = self._book(symbol)
        order = self._find_order(acct, book, order_id, orig_client_order_id)
        if order is None or order.order_id not in acct.open_orders:
            raise err(E.UNKNOWN_ORDER)
        events = self._end_order(acct, book, order, "CANCELED", ts_ms)
        return self.order_dict(order, "cancel"), events

    def cancel_all(
        self, account_id: str, symbol: str, ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`DELETE /fapi/v1/allOpenOrders` (regular orders; algo orders have their own)."""
        acct = self._account(account_id)
        book = self._book(symbol)
        events: list[EngineEvent] = []
        for order in [o for o in acct.open_orders.values() if o.symbol == book.spec.symbol]:
            events.extend(self._end_order(acct, book, order, "CANCELED", ts_ms))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}, events

    def query_order(
        self, account_id: str, symbol: str, order_id: int | str | None = None,
        orig_client_order_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """`GET /fapi/v1/order`: open or recently closed orders; -2013 otherwise."""
        acct = self._account(account_id)
        order = self._find_order(acct, self._book(symbol), order_id, orig_client_order_id)
        if order is None:
            raise err(E.NO_SUCH_ORDER)
        return self.order_dict(order, "query")

    def open_orders(self, account_id: str, symbol: str | None = None) -> list[dict[str, Any]]:
        """`GET /fapi/v1/openOrders`."""
        acct = self._account(account_id)
        sym = self._book(symbol).spec.symbol if symbol else None
        return [
            self.order_dict(o, "query")
            for o in acct.open_orders.values()
            if sym is None or o.symbol == sym
        ]

    def _find_order(
        self, acct: Account, book: Book, order_id: int | str | None, client_id: str | None
    ) -> Order | None:
        if order_id is None and not client_id:
            raise err(E.EITHER_ID)
        if order_id is not None:
            try:
                oid = int(order_id)
            except (TypeError, ValueError):
                raise E.mandatory("orderId") from None
        else:
            oid = acct.client_ids.get((book.spec.symbol, str(client_id)), -1)
        order = acct.open_orders.get(oid) or acct.closed_orders.get(oid)
        if order is None or order.symbol != book.spec.symbol:
            return None
        if client_id and order.client_id != client_id:
            return None
        return order
