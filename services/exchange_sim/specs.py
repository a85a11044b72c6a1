"""Symbol specifications for the simulated USD-M exchange: filters and leverage brackets.

Why a table of our own: the simulator must reject exactly what Binance rejects (tick size,
step size, min notional, leverage caps), so every symbol carries the same filters Binance
publishes in `/fapi/v1/exchangeInfo`, and the maintenance-margin brackets of
`/fapi/v1/leverageBracket`. Real values for the two majors; every other symbol gets a spec
derived from its price magnitude (`default_spec`), which is what a listing with realistic
ticks and lots looks like without downloading Binance's live table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

ONE = Decimal(1)


class Bracket(NamedTuple):
    """One leverage bracket: notional in [floor, cap) allows `max_leverage`.

    `maint_amount` is Binance's `cum`: the constant that keeps maintenance margin
    (notional × rate − cum) continuous across brackets.
    """

    notional_cap: Decimal
    max_leverage: int
    maint_margin_rate: Decimal
    maint_amount: Decimal


def make_brackets(rows: list[tuple[int | str, int, str]]) -> list[Bracket]:
    """Build brackets from (cap, leverage, rate) rows, deriving `cum` like Binance does.

    cum_n = cum_{n-1} + floor_n × (rate_n − rate_{n-1}); floor_n is the previous cap.
    """
    out: list[Bracket] = []
    floor = Decimal(0)
    prev_rate = Decimal(0)
    cum = Decimal(0)
    for cap, lev, rate in rows:
        r = Decimal(rate)
        cum = cum + floor * (r - prev_rate)
        out.append(Bracket(Decimal(cap), int(lev), r, cum))
        floor, prev_rate = Decimal(cap), r
    return out


# BTCUSDT-like brackets (Binance, 2023): caps, max leverage, maintenance rate.
MAJOR_BRACKETS = make_brackets(
    [
        (50_000, 125, "0.004"),
        (250_000, 100, "0.005"),
        (3_000_000, 50, "0.01"),
        (15_000_000, 20, "0.025"),
        (30_000_000, 10, "0.05"),
        (80_000_000, 5, "0.1"),
        (100_000_000, 4, "0.125"),
        (200_000_000, 3, "0.15"),
        (300_000_000, 2, "0.25"),
        (500_000_000, 1, "0.5"),
    ]
)

# A typical mid-cap alt table.
ALT_BRACKETS = make_brackets(
    [
        (10_000, 50, "0.01"),
        (50_000, 25, "0.02"),
        (250_000, 20, "0.025"),
        (1_000_000, 10, "0.05"),
        (2_000_000, 5, "0.1"),
        (5_000_000, 4, "0.125"),
        (10_000_000, 3, "0.15"),
        (20_000_000, 2, "0.25"),
        (50_000_000, 1, "0.5"),
    ]
)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Everything the matching engine checks for one perpetual contract."""

    symbol: str
    base_asset: str
    quote_asset: str = "USDT"
    price_precision: int = 2
    quantity_precision: int = 3
    tick_size: Decimal = Decimal("0.01")
    step_size: Decimal = Decimal("0.001")
    min_qty: Decimal = Decimal("0.001")
    max_qty: Decimal = Decimal("1000")
    market_step_size: Decimal = Decimal("0.001")
    market_min_qty: Decimal = Decimal("0.001")
    market_max_qty: Decimal = Decimal("100")
    min_notional: Decimal = Decimal("5")
    max_leverage: int = 50
    brackets: list[Bracket] = field(default_factory=lambda: list(ALT_BRACKETS))
    min_price: Decimal = Decimal("0.01")
    max_price: Decimal = Decimal("1000000")
    multiplier_up: Decimal = Decimal("1.0500")
    multiplier_down: Decimal = Decimal("0.9500")
    max_num_orders: int = 200
    max_num_algo_orders: int = 10
    liquidation_fee: Decimal = Decimal("0.0125")
    onboard_date: int = 1569398400000

    def bracket_for(self, notional: Decimal) -> Bracket:
        """The bracket holding |notional| (last bracket beyond the top cap)."""
        for b in self.brackets:
            if notional < b.notional_cap:
                return b
        return self.brackets[-1]

    def max_notional(self, leverage: int) -> Decimal:
        """Largest position notional allowed at `leverage` (Binance maxNotionalValue)."""
        best = Decimal(0)
        for b in self.brackets:
            if b.max_leverage >= leverage:
                best = b.notional_cap
        return best


def _decimals(step: Decimal) -> int:
    exp = step.normalize().as_tuple().exponent
    return max(0, -int(exp))


def _pow10(e: int) -> Decimal:
    return Decimal(1).scaleb(e)


def tick_for_price(price: float) -> Decimal:
    """About five significant digits, like Binance's listings (BTC 0.1, ETH 0.01, SOL 0.001)."""
    if price <= 0:
        raise ValueError("price must be positive")
    mag = math.floor(math.log10(price))
    return _pow10(mag - (5 if price >= 1000 else 4))


def step_for_price(price: float) -> Decimal:
    """Coarser lots for cheap coins: a step is worth between ~0.01 and ~10 USDT."""
    if price >= 1000:
        return Decimal("0.001")
    if price >= 100:
        return Decimal("0.01")
    if price >= 1:
        return Decimal("0.1")
    return Decimal("1")


_REAL: dict[str, dict[str, Any]] = {
    # Values as published by Binance for the two majors (tick 0.10 with precision 2 is real).
    "BTCUSDT": dict(
        price_precision=2,
        tick_size=Decimal("0.10"),
        quantity_precision=3,
        step_size=Decimal("0.001"),
        max_qty=Decimal("1000"),
        market_max_qty=Decimal("120"),
        min_notional=Decimal("100"),
        max_leverage=125,
        brackets=MAJOR_BRACKETS,
        min_price=Decimal("261.10"),
        max_price=Decimal("809484"),
    ),
    "ETHUSDT": dict(
        price_precision=2,
        tick_size=Decimal("0.01"),
        quantity_precision=3,
        step_size=Decimal("0.001"),
        max_qty=Decimal("10000"),
        market_max_qty=Decimal("2000"),
        min_notional=Decimal("20"),
        max_leverage=125,
        brackets=MAJOR_BRACKETS,
        min_price=Decimal("39.86"),
        max_price=Decimal("306177"),
    ),
}


def base_asset_of(symbol: str, quote: str = "USDT") -> str:
    return symbol[: -len(quote)] if symbol.endswith(quote) else symbol


def default_spec(
    symbol: str,
    price: float | Decimal,
    tick_size: Decimal | None = None,
    step_size: Decimal | None = None,
    price_precision: int | None = None,
) -> SymbolSpec:
    """A plausible spec for `symbol` trading near `price`.

    `tick_size`, `step_size` and `price_precision` override the magnitude rules (a replayed
    file reveals the real tick and lot); the two majors always use their published values.
    """
    symbol = symbol.upper()
    p = float(price)
    if symbol in _REAL:
        real = dict(_REAL[symbol])
        real["brackets"] = list(real["brackets"])  # each spec its own tiers (tests change one)
        step = real["step_size"]
        return SymbolSpec(
            symbol=symbol,
            base_asset=base_asset_of(symbol),
            min_qty=step,
            market_step_size=step,
            market_min_qty=step,
            **real,
        )
    tick = tick_size if tick_size is not None else tick_for_price(p)
    step = step_size if step_size is not None else step_for_price(p)
    max_qty = _pow10(max(0, round(math.log10(max(1e7 / p, 1)))))
    return SymbolSpec(
        symbol=symbol,
        base_asset=base_asset_of(symbol),
        price_precision=max(_decimals(tick), price_precision or 0),
        quantity_precision=_decimals(step),
        tick_size=tick,
        step_size=step,
        min_qty=step,
        max_qty=max_qty,
        market_step_size=step,
        market_min_qty=step,
        market_max_qty=max(step, max_qty / 10),
        min_notional=Decimal("5"),
        max_leverage=ALT_BRACKETS[0].max_leverage,
        brackets=list(ALT_BRACKETS),
        min_price=tick,
        max_price=_pow10(max(2, round(math.log10(p)) + 3)),
    )


RATE_LIMITS: list[dict[str, Any]] = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]

ORDER_TYPES = [
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
]
TIME_IN_FORCE = ["GTC", "IOC", "FOK", "GTX", "GTD"]


def _s(d: Decimal) -> str:
    return f"{d:f}"


def _filters(spec: SymbolSpec) -> list[dict[str, Any]]:
    return [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": _s(spec.min_price),
            "maxPrice": _s(spec.max_price),
            "tickSize": _s(spec.tick_size),
        },
        {
            "filterType": "LOT_SIZE",
            "stepSize": _s(spec.step_size),
            "minQty": _s(spec.min_qty),
            "maxQty": _s(spec.max_qty),
        },
        {
            "filterType": "MARKET_LOT_SIZE",
            "stepSize": _s(spec.market_step_size),
            "minQty": _s(spec.market_min_qty),
            "maxQty": _s(spec.market_max_qty),
        },
        {"filterType": "MAX_NUM_ORDERS", "limit": spec.max_num_orders},
        {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": spec.max_num_algo_orders},
        {"filterType": "MIN_NOTIONAL", "notional": _s(spec.min_notional)},
        {
            "filterType": "PERCENT_PRICE",
            "multiplierUp": _s(spec.multiplier_up),
            "multiplierDown": _s(spec.multiplier_down),
            "multiplierDecimal": "4",
        },
    ]


def symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    """One entry of exchangeInfo `symbols`, in Binance's field names and types."""
    return {
        "symbol": spec.symbol,
        "pair": spec.symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": spec.onboard_date,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "marginAsset": spec.quote_asset,
        "pricePrecision": spec.price_precision,
        "quantityPrecision": spec.quantity_precision,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": _s(spec.liquidation_fee),
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": _filters(spec),
        "orderTypes": list(ORDER_TYPES),
        "timeInForce": list(TIME_IN_FORCE),
    }


def exchange_info(
    specs: dict[str, SymbolSpec] | list[SymbolSpec], server_time: int
) -> dict[str, Any]:
    """The `/fapi/v1/exchangeInfo` body for these symbols."""
    items = list(specs.values()) if isinstance(specs, dict) else list(specs)
    quotes = sorted({s.quote_asset for s in items}) or ["USDT"]
    return {
        "timezone": "UTC",
        "serverTime": int(server_time),
        "futuresType": "U_MARGINED",
        "rateLimits": [dict(r) for r in RATE_LIMITS],
        "exchangeFilters": [],
        "assets": [
            {"asset": q, "marginAvailable": True, "autoAssetExchange": "-10000"} for q in quotes
        ],
        "symbols": [symbol_info(s) for s in items],
    }


def leverage_brackets(spec: SymbolSpec) -> dict[str, Any]:
    """One `/fapi/v1/leverageBracket` entry (numbers, not strings, as Binance sends them)."""
    rows = []
    floor = Decimal(0)
    for i, b in enumerate(spec.brackets, start=1):
        rows.append(
            {
                "bracket": i,
                "initialLeverage": b.max_leverage,
                "notionalCap": int(b.notional_cap),
                "notionalFloor": int(floor),
                "maintMarginRatio": float(b.maint_margin_rate),
                "cum": float(b.maint_amount),
            }
        )
        floor = b.notional_cap
    return {"symbol": spec.symbol, "brackets": rows}
