"""Domain types with our names, shared by every service.

Wire structs (`shared.binance.schemas`) carry Binance's field names; each is converted
once, here, into one of these frozen, slotted dataclasses.

Numbers: prices, quantities and money that can reach an order, a position or PnL are
`Decimal`.  Kline OHLCV are `float`: they feed numpy features, and a float parsed from
Binance's decimal string gives that string back exactly with `Decimal(repr(x))`
(`to_decimal`), since exchange prices have far fewer than 15 significant digits.

Every type has `to_dict()` / `from_dict()`.  `to_dict` keeps `Decimal` values (the bus
codec carries them losslessly); `from_dict` also accepts decimal strings, so a JSON copy
(`to_json`) round-trips too.  Any bad input raises `MessageError`.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import MISSING, dataclass, fields
from decimal import Decimal
from functools import cache
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import orjson

from shared.binance import schemas as wire
from shared.errors import (
    MessageError,
    as_bool,
    as_choice,
    as_decimal,
    as_float,
    as_int,
    as_str,
    as_symbol,
    excerpt,
)

__all__ = [
    "AccountUpdate", "AlgoUpdate", "Balance", "ClosedTrade", "ConfigUpdate",
    "DecisionRecord", "Kline", "MessageError", "OrderIntent", "OrderUpdate", "Position",
    "PositionUpdate", "Signal", "to_decimal", "wire_decimal",
]  # fmt: skip

CLIENT_ORDER_ID_RE = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")  # Binance's newClientOrderId rule


def to_decimal(x: float) -> Decimal:
    """The exact decimal an exchange float came from (shortest round-trip repr)."""
    return Decimal(repr(x))


def wire_decimal(d: Decimal) -> str:
    """A Decimal as a plain string without exponent, as the exchange and humans expect."""
    return format(d, "f")


# ---- generic to_dict / from_dict ---------------------------------------------------------


def _out(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_out(v) for v in value]
    if isinstance(value, dict):
        return {k: _out(v) for k, v in value.items()}
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageError(f"`{name}` must be a mapping, got {type(value).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in value.items()}


def _converter(tp: Any) -> Any:
    """A function (value, name) -> checked value for one field type."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = _converter(next(a for a in args if a is not type(None)))
        return lambda v, n: None if v is None or v == "" or v == b"" else inner(v, n)
    if origin is Literal:
        choices = frozenset(args)
        return lambda v, n: as_choice(v, n, choices)
    if origin is tuple:
        item = _converter(args[0])
        return lambda v, n: tuple(item(x, n) for x in _sequence(v, n))
    if origin is dict:  # feature dicts: NaN means "missing" to the model, keep it
        val = _feature_float if args[1] is float else _converter(args[1])
        return lambda v, n: {as_str(k, n): val(x, n) for k, x in _mapping(v, n).items()}
    if isinstance(tp, type) and issubclass(tp, _Record):
        return lambda v, n: tp.from_dict(_mapping(v, n))
    simple = {Decimal: as_decimal, float: as_float, int: as_int, str: as_str, bool: as_bool}
    return simple.get(tp, lambda v, n: v)


def _feature_float(value: Any, name: str) -> float:
    """A float that may be NaN/inf (JSON has no NaN: orjson writes null, read back as NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, float):
        return value
    try:
        return float(as_str(value, name) if isinstance(value, bytes | str) else as_int(value, name))
    except ValueError:
        raise MessageError(f"`{name}` is not a number: {excerpt(value, 40)!r}") from None


def _sequence(value: Any, name: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise MessageError(f"`{name}` must be a list, got {type(value).__name__}")
    return value


class _Record:
    """Mixin: to_dict/from_dict/to_json/from_json for the frozen dataclasses below."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _out(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data = _mapping(data, cls.__name__)
        kwargs = {}
        for name, (convert, required) in _converters(cls).items():
            if name in data:
                kwargs[name] = convert(data[name], name)
            elif required:
                raise MessageError(f"missing field `{name}`", excerpt(data))
        try:
            return cls(**kwargs)
        except MessageError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise MessageError(f"bad {cls.__name__}: {exc}", excerpt(data)) from None

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), default=str)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Any:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"bad JSON: {exc}", excerpt(raw)) from None
        return cls.from_dict(data)


@cache
def _converters(cls: type) -> dict[str, tuple[Any, bool]]:
    hints = get_type_hints(cls)
    return {
        f.name: (_converter(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
        for f in fields(cls)
    }


def _require(ok: bool, reason: str, obj: Any) -> None:
    if not ok:
        raise MessageError(reason, excerpt(obj))


def _hash_in(h: dict[Any, Any]) -> dict[str, str]:
    """Redis hash (bytes or str keys/values) -> str dict."""
    h = _mapping(h, "hash")
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.items()}


def _hash_out(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        if isinstance(v, Decimal):
            out[k] = wire_decimal(v)
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        else:
            out[k] = "" if v is None else (repr(v) if isinstance(v, float) else str(v))
    return out


# ---- market data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kline(_Record):
    """One candle; identified by (symbol, interval, open_time).  Times are epoch ms:
    `event_time` is the exchange's (REST rows: when we fetched it), `received_time` ours."""

    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_volume: float
    taker_buy_quote_volume: float
    closed: bool
    event_time: int
    received_time: int

    def __post_init__(self) -> None:
        o, h, low, c = self.open, self.high, self.low, self.close
        _require(0.0 < low <= min(o, c) and max(o, c) <= h < math.inf, "bad OHLC", self)
        vols = (self.volume, self.quote_volume, self.taker_buy_volume)
        _require(all(0.0 <= v < math.inf for v in vols), "bad volume", self)
        _require(0.0 <= self.taker_buy_quote_volume < math.inf, "bad volume", self)
        _require(0 <= self.open_time < self.close_time and self.trades >= 0, "bad times", self)
        _require(self.interval in wire.INTERVALS, f"bad interval {self.interval!r}", self)
        as_symbol(self.symbol)

    @classmethod
    def from_event(cls, event: wire.KlineEvent, received_time: int) -> Kline:
        k = event.k
        return cls(
            k.s, k.i, k.t, k.T, k.o, k.h, k.l, k.c, k.v, k.q, k.n, k.V, k.Q, k.x,
            event.E, received_time,
        )  # fmt: skip

    @classmethod
    def from_rest_row(cls, symbol: str, interval: str, row: Any, received_time: int) -> Kline:
        """One `/fapi/v1/klines` row: [open time, o, h, l, c, volume, close time, quote
        volume, trades, taker buy volume, taker buy quote volume, ignore].  A row counts as
        closed when its close time is before `received_time`.  Empty auxiliary columns
        (7-10, as in freqtrade-made CSVs) read as 0."""
        if not isinstance(row, list | tuple) or len(row) < 11:
            raise MessageError("kline row must be a list of >= 11 columns", excerpt(row))
        aux = [0 if row[i] in ("", b"", None) else row[i] for i in (7, 8, 9, 10)]
        close_time = as_int(row[6], "close_time")
        return cls(
            as_symbol(symbol),
            as_str(interval, "interval"),
            as_int(row[0], "open_time"),
            close_time,
            *(as_float(row[i], name) for i, name in enumerate(("open", "high", "low", "close"), 1)),
            as_float(row[5], "volume"),
            as_float(aux[0], "quote_volume"),
            as_int(aux[1], "trades"),
            as_float(aux[2], "taker_buy_volume"),
            as_float(aux[3], "taker_buy_quote_volume"),
            close_time < received_time,
            received_time,
            received_time,
        )

    def to_cache_hash(self) -> dict[str, str]:
        """The seed's cache format as plain strings (`timestamp` is the open time, a minute
        boundary as in the seed's example), plus what makes it round-trip."""
        d = self.to_dict()
        d["timestamp"] = self.open_time
        return _hash_out(d)

    @classmethod
    def from_cache_hash(cls, h: dict[Any, Any]) -> Kline:
        return cls.from_dict(_hash_in(h))


# ---- account -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance(_Record):
    asset: str
    wallet_balance: Decimal
    cross_wallet_balance: Decimal
    balance_change: Decimal
    updated_at: int

    def to_hash(self) -> dict[str, str]:
        return _hash_out(self.to_dict())

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> Balance:
        return cls.from_dict(_hash_in(h))

    @classmethod
    def from_rest_row(cls, row: Any) -> Balance:
        """One `/fapi/v3/balance` row (`balance` is the wallet balance; the stream's `bc`
        has no REST counterpart: 0).  `updated_at` is the row's `updateTime`, 0 if none."""
        if not isinstance(row, dict):
            raise MessageError("balance row is not a mapping", excerpt(row))
        try:
            return cls(
                as_str(row["asset"], "asset"),
                as_decimal(row["balance"], "balance"),
                as_decimal(row.get("crossWalletBalance", row["balance"]), "crossWalletBalance"),
                Decimal(0),
                as_int(row.get("updateTime", 0), "updateTime"),
            )
        except KeyError as exc:
            raise MessageError(f"missing field {exc}", excerpt(row)) from None


@dataclass(frozen=True, slots=True)
class PositionUpdate(_Record):
    symbol: str
    amount: Decimal  # signed
    entry_price: Decimal
    break_even_price: Decimal
    accumulated_realized: Decimal
    unrealized_pnl: Decimal
    margin_type: str
    isolated_wallet: Decimal
    position_side: str


@dataclass(frozen=True, slots=True)
class AccountUpdate(_Record):
    reason: str
    balances: tuple[Balance, ...]
    positions: tuple[PositionUpdate, ...]
    event_time: int
    transaction_time: int

    @classmethod
    def from_event(cls, ev: wire.AccountUpdateEvent) -> AccountUpdate:
        balances = tuple(Balance(b.a, b.wb, b.cw, b.bc, ev.E) for b in ev.a.B)
        positions = tuple(
            PositionUpdate(p.s, p.pa, p.ep, p.bep, p.cr, p.up, p.mt, p.iw, p.ps) for p in ev.a.P
        )
        return cls(ev.a.m, balances, positions, ev.E, ev.T)


@dataclass(frozen=True, slots=True)
class OrderUpdate(_Record):
    symbol: str
    client_order_id: str
    side: str
    order_type: str
    original_type: str
    time_in_force: str
    quantity: Decimal
    price: Decimal
    average_price: Decimal
    stop_price: Decimal
    execution_type: str  # NEW, TRADE, CANCELED, EXPIRED, CALCULATED, AMENDMENT
    status: str  # NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, EXPIRED_IN_MATCH
    order_id: int
    last_filled_qty: Decimal
    filled_qty: Decimal
    last_filled_price: Decimal
    commission_asset: str
    commission: Decimal
    realized_pnl: Decimal
    trade_id: int
    trade_time: int
    is_maker: bool
    reduce_only: bool
    close_position: bool
    position_side: str
    working_type: str
    event_time: int
    transaction_time: int

    @classmethod
    def from_event(cls, ev: wire.OrderTradeUpdateEvent) -> OrderUpdate:
        o = ev.o
        return cls(
            o.s, o.c, o.S, o.o, o.ot, o.f, o.q, o.p, o.ap, o.sp, o.x, o.X, o.i, o.l, o.z,
            o.L, o.N, o.n, o.rp, o.t, o.T, o.m, o.R, o.cp, o.ps, o.wt, ev.E, ev.T,
        )  # fmt: skip

    @property
    def is_fill(self) -> bool:
        """A trade against the book, or a liquidation / ADL fill (Binance: CALCULATED)."""
        return self.execution_type in ("TRADE", "CALCULATED") and self.last_filled_qty > 0


@dataclass(frozen=True, slots=True)
class AlgoUpdate(_Record):
    symbol: str
    client_algo_id: str
    algo_id: int
    algo_type: str
    order_type: str
    side: str
    position_side: str
    quantity: Decimal
    status: str  # NEW, CANCELED, TRIGGERING, TRIGGERED, FINISHED, REJECTED, EXPIRED
    trigger_price: Decimal
    price: Decimal
    order_id: str  # id in the matching engine once triggered, else ""
    average_price: Decimal
    filled_qty: Decimal
    close_position: bool
    reduce_only: bool
    working_type: str
    trigger_time: int
    reject_reason: str
    event_time: int
    transaction_time: int

    @classmethod
    def from_event(cls, ev: wire.AlgoUpdateEvent) -> AlgoUpdate:
        o = ev.o
        return cls(
            o.s, o.caid, o.aid, o.at, o.o, o.S, o.ps, o.q, o.X, o.tp, o.p, o.ai, o.ap, o.aq,
            o.cp, o.R, o.wt, o.tt, o.rm, ev.E, ev.T,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConfigUpdate(_Record):
    """Leverage of one symbol changed (`symbol`, `leverage`), or multi-assets mode."""

    symbol: str | None
    leverage: int | None
    multi_assets_mode: bool | None
    event_time: int
    transaction_time: int

    @classmethod
    def from_event(cls, ev: wire.AccountConfigUpdateEvent) -> ConfigUpdate:
        ac, ai = ev.ac, ev.ai
        return cls(ac.s if ac else None, ac.l if ac else None, ai.j if ai else None, ev.E, ev.T)


@dataclass(frozen=True, slots=True)
class Position(_Record):
    """Position cache format (hash `position:<SYM>`).  `size` is signed: > 0 long."""

    symbol: str
    size: Decimal
    entry_price: Decimal
    break_even_price: Decimal
    unrealized_pnl: Decimal
    margin_type: str
    isolated_wallet: Decimal
    leverage: int | None  # None: unknown (positionRisk v3 does not report it)
    updated_at: int
    position_side: str = "BOTH"

    @property
    def side(self) -> Literal["LONG", "SHORT", "FLAT"]:
        return "LONG" if self.size > 0 else "SHORT" if self.size < 0 else "FLAT"

    def to_hash(self) -> dict[str, str]:
        return _hash_out(self.to_dict())

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> Position:
        return cls.from_dict(_hash_in(h))

    @classmethod
    def from_update(cls, u: PositionUpdate, updated_at: int, leverage: int | None) -> Position:
        return cls(
            u.symbol, u.amount, u.entry_price, u.break_even_price, u.unrealized_pnl,
            u.margin_type, u.isolated_wallet, leverage, updated_at, u.position_side,
        )  # fmt: skip

    @classmethod
    def from_position_risk(cls, row: dict[str, Any], leverage: int | None = None) -> Position:
        """One `/fapi/v3/positionRisk` row.  v3 has no `marginType`: a position with an
        isolated wallet is `isolated`, else `cross`."""
        r = _mapping(row, "positionRisk row")
        try:
            wallet = as_decimal(r.get("isolatedWallet", "0"), "isolatedWallet", nonneg=True)
            lev = r.get("leverage", leverage)
            return cls(
                as_symbol(r["symbol"]),
                as_decimal(r["positionAmt"], "positionAmt"),
                as_decimal(r["entryPrice"], "entryPrice", nonneg=True),
                as_decimal(r.get("breakEvenPrice", "0"), "breakEvenPrice", nonneg=True),
                as_decimal(r["unRealizedProfit"], "unRealizedProfit"),
                "isolated" if wallet > 0 else "cross",
                wallet,
                None if lev is None else as_int(lev, "leverage"),
                as_int(r["updateTime"], "updateTime"),
                as_str(r.get("positionSide", "BOTH"), "positionSide"),
            )
        except KeyError as exc:
            raise MessageError(f"missing field {exc}", excerpt(row)) from None


# ---- decisions and outcomes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal(_Record):
    symbol: str
    side: Literal["LONG", "SHORT"]
    score: float
    confidence: float  # model probability, 0..1
    expected_value: float
    features_version: str
    time: int  # epoch ms of the kline close that produced it
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderIntent(_Record):
    """An order we want placed.  Closes (`purpose` != 'entry') must be reduce-only or
    close-position; quantity is None only for close-position orders."""

    PURPOSES: ClassVar[frozenset[str]] = frozenset({"entry", "stop", "take_profit", "exit"})

    symbol: str
    side: Literal["BUY", "SELL"]
    order_type: str  # MARKET, LIMIT, STOP_MARKET, TAKE_PROFIT_MARKET, ...
    quantity: Decimal | None
    client_order_id: str
    purpose: Literal["entry", "stop", "take_profit", "exit"]
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reduce_only: bool = False
    close_position: bool = False
    leverage: int | None = None
    reason: str = ""
    time_in_force: str | None = None

    def __post_init__(self) -> None:
        as_symbol(self.symbol)
        as_choice(self.side, "side", frozenset({"BUY", "SELL"}))
        as_choice(self.purpose, "purpose", self.PURPOSES)
        ok_id = CLIENT_ORDER_ID_RE.fullmatch(self.client_order_id) is not None
        _require(ok_id, f"bad client order id {self.client_order_id!r}", self)
        q = self.quantity
        _require(self.close_position or (q is not None and q > 0), "quantity must be > 0", self)
        for name in ("price", "stop_price"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{name} must be > 0", self)
        closes = self.reduce_only or self.close_position
        _require(self.purpose == "entry" or closes, "a close must be reduce-only", self)
        _require(self.leverage is None or self.leverage >= 1, "leverage must be >= 1", self)

    def to_params(self) -> dict[str, str]:
        """REST parameters for POST /fapi/v1/order (values as plain strings)."""
        p = {"symbol": self.symbol, "side": self.side, "type": self.order_type,
             "newClientOrderId": self.client_order_id}  # fmt: skip
        for key, value in (("quantity", self.quantity), ("price", self.price),
                           ("stopPrice", self.stop_price)):  # fmt: skip
            if value is not None and not (key == "quantity" and self.close_position):
                p[key] = wire_decimal(value)
        if self.close_position:
            p["closePosition"] = "true"
        elif self.reduce_only:
            p["reduceOnly"] = "true"
        if self.time_in_force:
            p["timeInForce"] = self.time_in_force
        return p


@dataclass(frozen=True, slots=True)
class DecisionRecord(_Record):
    """Why an entry was made; joined to its ClosedTrade to label a learning sample."""

    client_order_id: str
    symbol: str
    side: Literal["LONG", "SHORT"]
    time: int
    features: dict[str, float]
    model_version: str
    confidence: float
    win_rate: float
    leverage: int
    stop_price: Decimal
    take_profit_price: Decimal
    entry_price_ref: Decimal
    invalidation_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ClosedTrade(_Record):
    """A finished round trip.  Conventions: `fees` >= 0 is a cost, `funding` is signed
    (> 0 received), `net_pnl = gross_pnl - fees + funding`, all in the quote asset."""

    trade_id: str
    symbol: str
    side: Literal["LONG", "SHORT"]
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    entry_time: int
    exit_time: int
    fees: Decimal
    funding: Decimal
    gross_pnl: Decimal
    net_pnl: Decimal
    exit_reason: str
    leverage: int
    decision: DecisionRecord | None = None

    @property
    def won(self) -> bool:
        return self.net_pnl > 0
