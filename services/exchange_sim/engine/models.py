"""Mutable state of the simulated exchange: orders, algo orders, positions, accounts, books.

Domain names here (amount, entry, isolated_wallet); Binance's wire names appear only in
`events.py` and `views.py`, which render these objects.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from decimal import Decimal

from ..specs import SymbolSpec

ZERO = Decimal(0)
NEG_INF = Decimal("-Infinity")
POS_INF = Decimal("Infinity")

OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})


@dataclass(slots=True)
class Order:
    """A matching-engine order (LIMIT or MARKET; LIQUIDATION for forced closes)."""

    order_id: int
    account_id: str
    symbol: str
    client_id: str
    side: str  # BUY / SELL
    type: str  # LIMIT / MARKET / LIQUIDATION
    orig_type: str
    tif: str
    qty: Decimal
    price: Decimal
    reduce_only: bool
    time: int
    update_time: int
    status: str = "NEW"
    executed: Decimal = ZERO
    cum_quote: Decimal = ZERO
    stop_price: Decimal = ZERO
    working_type: str = "CONTRACT_PRICE"
    close_position: bool = False
    price_protect: bool = False
    algo_id: int | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.executed

    @property
    def is_buy(self) -> bool:
        return self.side == "BUY"

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed if self.executed else ZERO


@dataclass(slots=True)
class AlgoOrder:
    """A conditional order held by the Algo Service until its trigger price is touched."""

    algo_id: int
    account_id: str
    symbol: str
    client_algo_id: str
    side: str
    order_type: str  # STOP_MARKET / TAKE_PROFIT_MARKET / STOP / TAKE_PROFIT
    qty: Decimal
    price: Decimal
    trigger_price: Decimal
    working_type: str
    tif: str
    reduce_only: bool
    close_position: bool
    price_protect: bool
    create_time: int
    update_time: int
    status: str = "NEW"
    trigger_time: int = 0
    actual_order_id: int | None = None
    reject_reason: str = ""

    @property
    def triggers_up(self) -> bool:
        """True when it fires on price ≥ trigger (buy stops, sell take-profits)."""
        is_stop = self.order_type in ("STOP_MARKET", "STOP")
        return is_stop == (self.side == "BUY")

    @property
    def on_mark(self) -> bool:
        return self.working_type == "MARK_PRICE"


@dataclass(slots=True)
class Position:
    """One-way position of one account in one symbol, plus its leverage/margin settings."""

    symbol: str
    leverage: int = 20
    isolated: bool = False
    amount: Decimal = ZERO  # signed: long > 0
    entry: Decimal = ZERO
    open_fees: Decimal = ZERO  # commissions paid opening the current position (break-even)
    isolated_wallet: Decimal = ZERO
    cum_realized: Decimal = ZERO  # Binance `cr`: pre-fee realized PnL, accumulated
    update_time: int = 0
    liq_price: Decimal | None = None  # cached, None = stale


@dataclass(slots=True)
class Ledger:
    """Running totals so tests can check wallet change == realized − fees + funding + adj."""

    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO
    adjustments: Decimal = ZERO  # liquidation clearance fees and insurance cover


@dataclass(slots=True)
class Account:
    account_id: str
    asset: str
    wallet: Decimal  # total wallet balance: cross wallet + all isolated wallets
    initial_deposit: Decimal
    positions: dict[str, Position] = field(default_factory=dict)
    open_orders: dict[int, Order] = field(default_factory=dict)
    closed_orders: OrderedDict[int, Order] = field(default_factory=OrderedDict)
    client_ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (symbol, cid) -> latest
    algos: dict[int, AlgoOrder] = field(default_factory=dict)  # open algo orders
    closed_algos: OrderedDict[int, AlgoOrder] = field(default_factory=OrderedDict)
    algo_client_ids: dict[str, int] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    trades: deque[dict] = field(default_factory=lambda: deque(maxlen=50_000))  # userTrades rows
    update_time: int = 0
    default_leverage: int = 20
    cross_cache: list[Position] | None = None  # open cross positions; None = stale

    def position(self, spec: SymbolSpec) -> Position:
        pos = self.positions.get(spec.symbol)
        if pos is None:
            pos = Position(spec.symbol, leverage=min(self.default_leverage, spec.max_leverage))
            self.positions[spec.symbol] = pos
        return pos

    @property
    def cross_wallet(self) -> Decimal:
        return self.wallet - sum(
            (p.isolated_wallet for p in self.positions.values() if p.isolated), ZERO
        )

    def cross_positions(self) -> list[Position]:
        if self.cross_cache is None:
            self.cross_cache = [p for p in self.positions.values() if p.amount and not p.isolated]
        return self.cross_cache


@dataclass(slots=True)
class Book:
    """Per-symbol market state plus the indexes that make `advance_price` O(1) when idle.

    `max_buy`/`min_sell` are the most aggressive resting limit prices; `up_*`/`dn_*` the nearest
    algo trigger prices on last (contract) and mark price. A tick that crosses none of them and
    touches no held position does nothing.
    """

    spec: SymbolSpec
    last: Decimal = ZERO
    mark: Decimal = ZERO
    ts: int = 0
    next_funding: int = 0
    funding_rate: Decimal | None = None  # override set by set_funding_rate
    last_funding_rate: Decimal = ZERO
    depth: Decimal | None = None  # quantity available to one taker order; None = unlimited
    resting: list[Order] = field(default_factory=list)
    algos: list[AlgoOrder] = field(default_factory=list)
    holders: dict[str, None] = field(
        default_factory=dict
    )  # ordered set: accounts holding a position
    max_buy: Decimal = NEG_INF
    min_sell: Decimal = POS_INF
    up_last: Decimal = POS_INF
    dn_last: Decimal = NEG_INF
    up_mark: Decimal = POS_INF
    dn_mark: Decimal = NEG_INF
    active: bool = False
    trade_seq: int = 0

    def reindex(self) -> None:
        """Recompute thresholds after the resting/algo lists changed (lists are short)."""
        self.max_buy = max((o.price for o in self.resting if o.is_buy), default=NEG_INF)
        self.min_sell = min((o.price for o in self.resting if not o.is_buy), default=POS_INF)
        ul = [a.trigger_price for a in self.algos if a.triggers_up and not a.on_mark]
        dl = [a.trigger_price for a in self.algos if not a.triggers_up and not a.on_mark]
        um = [a.trigger_price for a in self.algos if a.triggers_up and a.on_mark]
        dm = [a.trigger_price for a in self.algos if not a.triggers_up and a.on_mark]
        self.up_last = min(ul, default=POS_INF)
        self.dn_last = max(dl, default=NEG_INF)
        self.up_mark = min(um, default=POS_INF)
        self.dn_mark = max(dm, default=NEG_INF)
        self.active = bool(self.resting or self.algos or self.holders)
