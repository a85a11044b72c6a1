"""Exchange filters of a USD-M symbol and the arithmetic that respects them.

Parsed from one `symbols[]` entry of GET /fapi/v1/exchangeInfo (PRICE_FILTER, LOT_SIZE,
MARKET_LOT_SIZE, MIN_NOTIONAL with `notional`).  All arithmetic is `Decimal` and exact:
rounding uses the remainder `value % step` (exact in Decimal) under a 60-digit context, not
division, so a rounded-down value is never above its input and is always a multiple of
the step.  Results carry the step's exponent (`0.010` stays `0.010`), ready for
`shared.models.wire_decimal`.

`check_order` raises `FilterError(filter_type, reason, value, limit)` naming the Binance
filter an order would break, so the caller can fix or drop the order before the exchange
rejects it.  Reduce-only orders are exempt from MIN_NOTIONAL, as on Binance.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Literal

from shared.errors import MessageError, as_decimal, as_int, as_str, as_symbol, excerpt

RoundMode = Literal["down", "up", "nearest", "BUY", "SELL"]
_PRECISION = 60
_ZERO = Decimal(0)


class FilterError(Exception):
    """An order breaks an exchange filter.  `filter_type` is Binance's name
    (PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL)."""

    def __init__(
        self, filter_type: str, reason: str, value: Decimal | None, limit: Decimal | None
    ) -> None:
        self.filter_type = filter_type
        self.reason = reason
        self.value = value
        self.limit = limit
        super().__init__(f"{filter_type}: {reason} (value {value}, limit {limit})")


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    symbol: str
    tick_size: Decimal
    step_size: Decimal
    market_step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    price_precision: int
    quantity_precision: int
    max_leverage: int | None = None  # not in exchangeInfo; from /fapi/v1/leverageBracket
    min_price: Decimal = _ZERO
    max_price: Decimal | None = None
    market_min_qty: Decimal | None = None  # None: same as min_qty

    @classmethod
    def from_exchange_info(
        cls, entry: dict[str, Any], max_leverage: int | None = None
    ) -> SymbolFilters:
        """Filters of one exchangeInfo `symbols[]` entry; MessageError when malformed."""
        try:
            by_type = {f["filterType"]: f for f in entry["filters"]}
            price, lot = by_type["PRICE_FILTER"], by_type["LOT_SIZE"]
            market = by_type.get("MARKET_LOT_SIZE", lot)
            notional = by_type.get("MIN_NOTIONAL", {})
            max_price = as_decimal(price.get("maxPrice", "0"), "maxPrice", nonneg=True)
            return cls(
                symbol=as_symbol(entry["symbol"]),
                tick_size=as_decimal(price["tickSize"], "tickSize", positive=True),
                step_size=as_decimal(lot["stepSize"], "stepSize", positive=True),
                market_step_size=as_decimal(market["stepSize"], "stepSize", positive=True),
                min_qty=as_decimal(lot["minQty"], "minQty", nonneg=True),
                max_qty=as_decimal(lot["maxQty"], "maxQty", positive=True),
                market_max_qty=as_decimal(market["maxQty"], "maxQty", positive=True),
                min_notional=as_decimal(
                    notional.get("notional", notional.get("minNotional", "0")),
                    "notional",
                    nonneg=True,
                ),
                price_precision=as_int(entry["pricePrecision"], "pricePrecision", nonneg=True),
                quantity_precision=as_int(
                    entry["quantityPrecision"], "quantityPrecision", nonneg=True
                ),
                max_leverage=max_leverage,
                min_price=as_decimal(price.get("minPrice", "0"), "minPrice", nonneg=True),
                max_price=max_price if max_price > 0 else None,
                market_min_qty=as_decimal(market["minQty"], "minQty", nonneg=True),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise MessageError(f"bad exchangeInfo symbol entry: {exc!r}", excerpt(entry)) from None


def parse_exchange_info(
    info: dict[str, Any], *, trading_only: bool = True
) -> dict[str, SymbolFilters]:
    """All symbols of an exchangeInfo response (only status TRADING unless told)."""
    try:
        entries = info["symbols"]
        return {
            f.symbol: f
            for f in (SymbolFilters.from_exchange_info(e) for e in entries
                      if not trading_only or as_str(e.get("status", ""), "status") == "TRADING")
        }  # fmt: skip
    except (KeyError, TypeError, AttributeError) as exc:
        raise MessageError(f"bad exchangeInfo: {exc!r}", excerpt(info)) from None


# ---- rounding ------------------------------------------------------------------------------


def _round_to(value: Decimal, step: Decimal, mode: str, filter_type: str) -> Decimal:
    if not (isinstance(value, Decimal) and isinstance(step, Decimal)):
        raise TypeError("round with Decimal values only")
    if not (value.is_finite() and step.is_finite() and step > 0 and value >= 0):
        raise FilterError(filter_type, "value must be >= 0 and step > 0", value, step)
    mode = {"BUY": "down", "SELL": "up"}.get(mode, mode)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        try:
            rem = value % step
        except InvalidOperation:
            raise FilterError(filter_type, "value too large for step", value, step) from None
        down = value - rem
        if mode == "down":
            result = down
        elif mode == "up":
            result = down + step if rem else down
        elif mode == "nearest":
            result = down + step if rem * 2 >= step else down
        else:
            raise ValueError(f"unknown rounding mode {mode!r}")
        return result.quantize(step)  # exact: result is a multiple of step


def round_price(price: Decimal, tick: Decimal, mode: RoundMode = "nearest") -> Decimal:
    """Price on the tick grid.  `mode`: down, up, nearest (half up), or a side: BUY rounds
    down (never pay more than asked), SELL rounds up (never sell for less)."""
    return _round_to(price, tick, mode, "PRICE_FILTER")


def round_qty_down(qty: Decimal, step: Decimal) -> Decimal:
    """Largest multiple of `step` that is <= qty (never more than we can afford)."""
    return _round_to(qty, step, "down", "LOT_SIZE")


def round_qty_up(qty: Decimal, step: Decimal) -> Decimal:
    """Smallest multiple of `step` that is >= qty."""
    return _round_to(qty, step, "up", "LOT_SIZE")


# ---- checks --------------------------------------------------------------------------------


def check_order(
    filters: SymbolFilters,
    qty: Decimal,
    price: Decimal,
    *,
    market: bool = False,
    reduce_only: bool = False,
) -> None:
    """Raise FilterError naming the first filter the order breaks.  For a market order
    `price` is the reference price (last/mark) used for the notional check only."""
    lot = "MARKET_LOT_SIZE" if market else "LOT_SIZE"
    step = filters.market_step_size if market else filters.step_size
    min_qty = (filters.market_min_qty if filters.market_min_qty is not None
               else filters.min_qty) if market else filters.min_qty  # fmt: skip
    max_qty = filters.market_max_qty if market else filters.max_qty
    if not (qty.is_finite() and qty > 0):
        raise FilterError(lot, "quantity must be > 0", qty, None)
    if not (price.is_finite() and price > 0):
        raise FilterError("PRICE_FILTER", "price must be > 0", price, None)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        if qty % step:
            raise FilterError(lot, "quantity is not a multiple of the step", qty, step)
        if qty < min_qty:
            raise FilterError(lot, "quantity below minimum", qty, min_qty)
        if qty > max_qty:
            raise FilterError(lot, "quantity above maximum", qty, max_qty)
        if not market:
            if price % filters.tick_size:
                raise FilterError("PRICE_FILTER", "price is off the tick", price, filters.tick_size)
            if price < filters.min_price:
                raise FilterError("PRICE_FILTER", "price below minimum", price, filters.min_price)
            if filters.max_price is not None and price > filters.max_price:
                raise FilterError("PRICE_FILTER", "price above maximum", price, filters.max_price)
        notional = qty * price
        if not reduce_only and notional < filters.min_notional:
            raise FilterError(
                "MIN_NOTIONAL", "notional below minimum", notional, filters.min_notional
            )


def min_qty_for_notional(
    filters: SymbolFilters,
    price: Decimal,
    min_notional: Decimal | None = None,
    *,
    market: bool = False,
) -> Decimal:
    """Smallest quantity on the step grid, at least the minimum quantity, whose notional
    at `price` reaches `min_notional` (default: the symbol's MIN_NOTIONAL)."""
    if not (price.is_finite() and price > 0):
        raise FilterError("PRICE_FILTER", "price must be > 0", price, None)
    target = filters.min_notional if min_notional is None else min_notional
    step = filters.market_step_size if market else filters.step_size
    floor = filters.min_qty
    if market and filters.market_min_qty is not None:
        floor = filters.market_min_qty
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        qty = max(round_qty_up(target / price, step), round_qty_up(floor, step), step)
        while qty * price < target:  # guards the last digit of the division
            qty += step
        return qty
