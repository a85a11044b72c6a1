"""Parse Binance REST order parameters (strings) into typed requests, checking filters.

Why separate: the order of checks decides which error a bad request gets, and clients branch on
those codes. Checks run in Binance's order: mandatory parameters, symbol, side, type, then the
symbol filters (precision −1111, LOT_SIZE, PRICE_FILTER); state-dependent checks (margin,
reduce-only, min notional against the current price) happen in the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ..specs import SymbolSpec
from . import errors as E
from .errors import EngineReject, err

_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")

CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)
ALGO_TYPES = frozenset({"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"})
ORDER_TIFS = frozenset({"GTC", "IOC", "FOK", "GTX"})
ALGO_TIFS = frozenset({"GTC", "IOC", "FOK", "GTE_GTC"})
WORKING_TYPES = frozenset({"MARK_PRICE", "CONTRACT_PRICE"})


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: str
    type: str
    qty: Decimal
    price: Decimal  # 0 for MARKET
    tif: str
    reduce_only: bool
    client_id: str | None
    resp_type: str


@dataclass(frozen=True, slots=True)
class AlgoRequest:
    symbol: str
    side: str
    order_type: str
    qty: Decimal  # 0 with closePosition
    price: Decimal  # 0 for *_MARKET
    trigger_price: Decimal
    working_type: str
    tif: str
    reduce_only: bool
    close_position: bool
    price_protect: bool
    client_algo_id: str | None


def _get(params: Mapping[str, str], name: str) -> str | None:
    v = params.get(name)
    if v is None:
        return None
    v = str(v).strip()
    return v or None


def required(params: Mapping[str, str], name: str) -> str:
    v = _get(params, name)
    if v is None:
        raise E.mandatory(name)
    return v


def parse_decimal(params: Mapping[str, str], name: str) -> Decimal | None:
    raw = _get(params, name)
    if raw is None:
        return None
    if not _NUM.match(raw):
        raise E.mandatory(name)
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise E.mandatory(name) from None


def parse_bool(params: Mapping[str, str], name: str) -> bool | None:
    raw = _get(params, name)
    if raw is None:
        return None
    low = raw.lower()
    if low not in ("true", "false"):
        raise E.invalid_param(name)
    return low == "true"


def _scale(x: Decimal) -> int:
    exp = x.normalize().as_tuple().exponent
    return max(0, -int(exp))  # type: ignore[arg-type]


def check_symbol(params: Mapping[str, str], specs: Mapping[str, SymbolSpec]) -> SymbolSpec:
    symbol = required(params, "symbol").upper()
    spec = specs.get(symbol)
    if spec is None:
        raise err(E.INVALID_SYMBOL)
    return spec


def check_side(params: Mapping[str, str]) -> str:
    side = required(params, "side").upper()
    if side not in ("BUY", "SELL"):
        raise err(E.INVALID_SIDE)
    return side


def check_position_side(params: Mapping[str, str]) -> None:
    ps = _get(params, "positionSide")
    if ps is not None and ps.upper() != "BOTH":
        raise err(E.POSITION_SIDE_MISMATCH)


def check_client_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    if len(raw) > 36:
        raise err(E.CLIENT_ID_TOO_LONG)
    if not _CLIENT_ID.match(raw):
        raise err(E.CLIENT_ID_INVALID)
    return raw


def check_qty(spec: SymbolSpec, qty: Decimal, market: bool) -> None:
    """LOT_SIZE / MARKET_LOT_SIZE plus quantity precision."""
    if qty <= 0:
        raise err(E.QTY_LE_ZERO)
    if _scale(qty) > spec.quantity_precision:
        raise err(E.BAD_PRECISION)
    step, lo, hi = (
        (spec.market_step_size, spec.market_min_qty, spec.market_max_qty)
        if market
        else (spec.step_size, spec.min_qty, spec.max_qty)
    )
    if qty < lo:
        raise err(E.QTY_LT_MIN)
    if qty > hi:
        raise err(E.QTY_GT_MAX)
    if (qty - lo) % step:
        raise err(E.QTY_NOT_STEP)


def check_price(spec: SymbolSpec, price: Decimal) -> None:
    """PRICE_FILTER plus price precision."""
    if price <= 0:
        raise err(E.PRICE_LE_ZERO)
    if _scale(price) > spec.price_precision:
        raise err(E.BAD_PRECISION)
    if price < spec.min_price:
        raise err(E.PRICE_LT_MIN)
    if price > spec.max_price:
        raise err(E.PRICE_GT_MAX)
    if (price - spec.min_price) % spec.tick_size:
        raise err(E.PRICE_NOT_TICK)


def parse_order(
    params: Mapping[str, str], specs: Mapping[str, SymbolSpec]
) -> tuple[SymbolSpec, OrderRequest]:
    """Validate a `POST /fapi/v1/order` parameter set; raises EngineReject."""
    spec = check_symbol(params, specs)
    side = check_side(params)
    otype = required(params, "type").upper()
    if otype in CONDITIONAL_TYPES:
        raise err(E.ALGO_ENDPOINT_ONLY)
    if otype not in ("LIMIT", "MARKET"):
        raise err(E.INVALID_ORDER_TYPE)
    check_position_side(params)
    client_id = check_client_id(_get(params, "newClientOrderId"))
    if parse_bool(params, "closePosition"):
        raise E.not_required("closePosition")
    for name in ("stopPrice", "activationPrice", "callbackRate"):
        if _get(params, name) is not None:
            raise E.not_required(name)
    reduce_only = bool(parse_bool(params, "reduceOnly"))
    resp_type = (_get(params, "newOrderRespType") or "ACK").upper()
    if resp_type not in ("ACK", "RESULT"):
        raise EngineReject(400, -1136, "Invalid newOrderRespType.")
    qty = parse_decimal(params, "quantity")
    if qty is None:
        raise E.mandatory("quantity")
    if otype == "LIMIT":
        tif = required(params, "timeInForce").upper()
        if tif not in ORDER_TIFS:
            raise err(E.INVALID_TIF)
        price = parse_decimal(params, "price")
        if price is None:
            raise E.mandatory("price")
        check_qty(spec, qty, market=False)
        check_price(spec, price)
    else:
        if _get(params, "price") is not None:
            raise E.not_required("price")
        if _get(params, "timeInForce") is not None:
            raise E.not_required("timeInForce")
        tif, price = "GTC", Decimal(0)
        check_qty(spec, qty, market=True)
    req = OrderRequest(spec.symbol, side, otype, qty, price, tif, reduce_only, client_id, resp_type)
    return spec, req


def parse_algo(
    params: Mapping[str, str], specs: Mapping[str, SymbolSpec]
) -> tuple[SymbolSpec, AlgoRequest]:
    """Validate a `POST /fapi/v1/algoOrder` (algoType=CONDITIONAL) parameter set."""
    algo_type = required(params, "algoType").upper()
    if algo_type != "CONDITIONAL":
        raise E.invalid_param("algoType")
    spec = check_symbol(params, specs)
    side = check_side(params)
    otype = required(params, "type").upper()
    if otype not in ALGO_TYPES:
        raise err(E.INVALID_ORDER_TYPE)
    check_position_side(params)
    client_id = check_client_id(_get(params, "clientAlgoId"))
    working = (_get(params, "workingType") or "CONTRACT_PRICE").upper()
    if working not in WORKING_TYPES:
        raise err(E.INVALID_WORKING_TYPE)
    close_position = bool(parse_bool(params, "closePosition"))
    reduce_only = parse_bool(params, "reduceOnly")
    price_protect = bool(parse_bool(params, "priceProtect"))
    trigger = parse_decimal(params, "triggerPrice")
    if trigger is None:
        raise E.mandatory("triggerPrice")
    check_price(spec, trigger)
    qty = parse_decimal(params, "quantity")
    is_market = otype.endswith("_MARKET")
    if close_position:
        if not is_market:
            raise E.not_required("closePosition")
        if qty is not None:
            raise err(E.QTY_WITH_CLOSE_POSITION)
        if reduce_only is not None:
            raise E.not_required("reduceOnly")
        qty = Decimal(0)
    else:
        if qty is None:
            raise E.mandatory("quantity")
        check_qty(spec, qty, market=is_market)
    tif = (_get(params, "timeInForce") or "GTC").upper()
    if tif not in ALGO_TIFS:
        raise err(E.INVALID_TIF)
    if is_market:
        if _get(params, "price") is not None:
            raise E.not_required("price")
        price = Decimal(0)
    else:
        p = parse_decimal(params, "price")
        if p is None:
            raise E.mandatory("price")
        check_price(spec, p)
        price = p
    req = AlgoRequest(
        spec.symbol, side, otype, qty, price, trigger, working, tif,
        bool(reduce_only) or close_position, close_position, price_protect, client_id,
    )  # fmt: skip
    return spec, req
