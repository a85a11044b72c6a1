"""Exchange filters: parsing exchangeInfo, exact rounding, order checks (Hypothesis)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.errors import MessageError
from shared.filters import (
    FilterError,
    SymbolFilters,
    check_order,
    min_qty_for_notional,
    parse_exchange_info,
    round_price,
    round_qty_down,
    round_qty_up,
)

D = Decimal

# GET /fapi/v1/exchangeInfo documented `symbols[0]` (values verbatim; the page's JSON has
# comments and trailing commas, so it is written here as a Python literal).
DOC_SYMBOL = {
    "symbol": "BLZUSDT", "pair": "BLZUSDT", "contractType": "PERPETUAL",
    "deliveryDate": 4133404800000, "onboardDate": 1598252400000, "status": "TRADING",
    "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000", "baseAsset": "BLZ",
    "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 5, "quantityPrecision": 0,
    "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
    "underlyingSubType": ["STORAGE"], "settlePlan": 0, "triggerProtect": "0.15",
    "filters": [
        {"filterType": "PRICE_FILTER", "maxPrice": "300", "minPrice": "0.0001", "tickSize": "0.0001"},
        {"filterType": "LOT_SIZE", "maxQty": "10000000", "minQty": "1", "stepSize": "1"},
        {"filterType": "MARKET_LOT_SIZE", "maxQty": "590119", "minQty": "1", "stepSize": "1"},
        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
        {"filterType": "MIN_NOTIONAL", "notional": "5.0"},
        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.1500", "multiplierDown": "0.8500",
         "multiplierDecimal": "4"},
    ],
    "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                   "TRAILING_STOP_MARKET"],
    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    "liquidationFee": "0.010000", "marketTakeBound": "0.30",
}  # fmt: skip

# A BTCUSDT-like entry (fractional steps) built on the same layout.
BTC = SymbolFilters("BTCUSDT", D("0.10"), D("0.001"), D("0.001"), D("0.001"), D("1000"), D("120"),
                    D("100"), 2, 3, 125, D("261.10"), D("809484"), D("0.001"))  # fmt: skip


def test_documented_exchange_info_entry() -> None:
    f = SymbolFilters.from_exchange_info(DOC_SYMBOL, max_leverage=20)
    assert f == SymbolFilters(
        symbol="BLZUSDT", tick_size=D("0.0001"), step_size=D(1), market_step_size=D(1),
        min_qty=D(1), max_qty=D(10000000), market_max_qty=D(590119), min_notional=D("5.0"),
        price_precision=5, quantity_precision=0, max_leverage=20, min_price=D("0.0001"),
        max_price=D(300), market_min_qty=D(1),
    )  # fmt: skip
    info = {"symbols": [DOC_SYMBOL, DOC_SYMBOL | {"symbol": "OLDUSDT", "status": "SETTLING"}]}
    assert list(parse_exchange_info(info)) == ["BLZUSDT"]
    assert set(parse_exchange_info(info, trading_only=False)) == {"BLZUSDT", "OLDUSDT"}


def without(filter_type: str) -> dict:
    return DOC_SYMBOL | {
        "filters": [f for f in DOC_SYMBOL["filters"] if f["filterType"] != filter_type]
    }


def test_optional_filters_default_sensibly() -> None:
    f = SymbolFilters.from_exchange_info(without("MARKET_LOT_SIZE"))
    assert (f.market_step_size, f.market_max_qty) == (f.step_size, f.max_qty)
    assert SymbolFilters.from_exchange_info(without("MIN_NOTIONAL")).min_notional == 0


@pytest.mark.parametrize(
    "entry",
    [without("PRICE_FILTER"), without("LOT_SIZE"), DOC_SYMBOL | {"symbol": "blz"},
     DOC_SYMBOL | {"filters": "x"}, DOC_SYMBOL | {"pricePrecision": "five"}, {},
     DOC_SYMBOL | {"filters": [{"filterType": "PRICE_FILTER", "tickSize": "0", "minPrice": "0"},
                               *DOC_SYMBOL["filters"][1:]]},
     DOC_SYMBOL | {"filters": [{"filterType": "PRICE_FILTER", "tickSize": "NaN"},
                               *DOC_SYMBOL["filters"][1:]]}],
)  # fmt: skip
def test_malformed_exchange_info_raises_message_error(entry: dict) -> None:
    with pytest.raises(MessageError):
        SymbolFilters.from_exchange_info(entry)


def test_rounding_examples() -> None:
    assert round_price(D("30000.16"), D("0.10")) == D("30000.20")
    assert str(round_price(D("30000.16"), D("0.10"), "down")) == "30000.10"
    assert round_price(D("30000.11"), D("0.10"), "up") == D("30000.2")
    assert round_price(D("30000.15"), D("0.10"), "nearest") == D("30000.2")  # half up
    assert round_price(D("30000.16"), D("0.10"), "BUY") == D("30000.1")
    assert round_price(D("30000.11"), D("0.10"), "SELL") == D("30000.2")
    assert str(round_qty_down(D("1.2349"), D("0.001"))) == "1.234"
    assert str(round_qty_down(D("12.9"), D("1"))) == "12"
    assert round_qty_down(D("129"), D("1E+1")) == D(120)
    assert str(round_qty_up(D("0.0001"), D("0.001"))) == "0.001"
    with pytest.raises(FilterError):
        round_qty_down(D("-1"), D("0.001"))
    with pytest.raises(FilterError):
        round_price(D("1"), D("0"))
    with pytest.raises(ValueError):
        round_price(D("1"), D("0.1"), "sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("qty", "price", "kwargs", "filter_type", "reason"),
    [
        (D("0.0015"), D("30000.1"), {}, "LOT_SIZE", "multiple"),
        (D("0"), D("30000.1"), {}, "LOT_SIZE", "> 0"),
        (D("1001"), D("300.1"), {}, "LOT_SIZE", "above"),
        (D("121"), D("300.1"), {"market": True}, "MARKET_LOT_SIZE", "above"),
        (D("0.010"), D("30000.15"), {}, "PRICE_FILTER", "tick"),
        (D("0.010"), D("200.0"), {}, "PRICE_FILTER", "below"),
        (D("0.010"), D("900000.0"), {}, "PRICE_FILTER", "above"),
        (D("0.010"), D("-1"), {}, "PRICE_FILTER", "> 0"),
        (D("0.003"), D("30000.1"), {}, "MIN_NOTIONAL", "notional"),
        (D("0.003"), D("30000.15"), {"market": True}, "MIN_NOTIONAL", "notional"),
    ],
)
def test_check_order_names_the_broken_filter(
    qty: Decimal, price: Decimal, kwargs: dict, filter_type: str, reason: str
) -> None:
    with pytest.raises(FilterError) as err:
        check_order(BTC, qty, price, **kwargs)
    assert err.value.filter_type == filter_type and reason in err.value.reason


def test_reduce_only_is_exempt_from_min_notional_only() -> None:
    check_order(BTC, D("0.003"), D("30000.1"), reduce_only=True)
    with pytest.raises(FilterError):
        check_order(BTC, D("0.0035"), D("30000.1"), reduce_only=True)
    check_order(BTC, D("0.004"), D("30000.1"))  # 120.0004 >= 100


STEPS = st.sampled_from([D("1"), D("0.1"), D("0.001"), D("0.00001"), D("0.5"), D("0.25"),
                         D("10"), D("5"), D("0.0001"), D("0.10")])  # fmt: skip
AMOUNTS = st.decimals(min_value=0, max_value=10**7, places=10)


@settings(max_examples=400, deadline=None)
@given(AMOUNTS, STEPS)
def test_rounded_quantities_are_on_the_grid_and_bracket_the_input(
    qty: Decimal, step: Decimal
) -> None:
    down, up = round_qty_down(qty, step), round_qty_up(qty, step)
    assert down % step == 0 and up % step == 0
    assert down <= qty <= up and qty - down < step and up - qty < step
    assert (down == up) == (qty % step == 0)
    assert down.as_tuple().exponent == step.as_tuple().exponent


@settings(max_examples=400, deadline=None)
@given(st.decimals(min_value="0.00000001", max_value=10**6, places=10), STEPS,
       st.sampled_from(["down", "up", "nearest", "BUY", "SELL"]))  # fmt: skip
def test_rounded_prices_are_on_the_tick(price: Decimal, tick: Decimal, mode: str) -> None:
    r = round_price(price, tick, mode)  # type: ignore[arg-type]
    assert r % tick == 0 and abs(r - price) < tick
    if mode in ("down", "BUY"):
        assert r <= price
    elif mode in ("up", "SELL"):
        assert r >= price
    else:
        assert abs(r - price) <= tick / 2


@st.composite
def symbol_filters(draw: st.DrawFn) -> SymbolFilters:
    tick, step = draw(STEPS), draw(STEPS)
    min_qty = step * draw(st.integers(1, 5))
    return SymbolFilters("XUSDT", tick, step, step, min_qty, D(10**9), D(10**9),
                         draw(st.sampled_from([D(0), D(5), D(100), D("5.5")])), 8, 8)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(symbol_filters(), st.decimals(min_value="0.0001", max_value=10**5, places=6), AMOUNTS)
def test_notional_checks_are_consistent(
    f: SymbolFilters, raw_price: Decimal, budget_qty: Decimal
) -> None:
    price = round_price(raw_price, f.tick_size, "up")
    assume(price > 0)
    qty = min_qty_for_notional(f, price)
    check_order(f, qty, price)  # the minimum order passes every filter
    below = qty - f.step_size
    if below >= f.min_qty and below > 0:  # one step less breaks the notional
        with pytest.raises(FilterError) as err:
            check_order(f, below, price)
        assert err.value.filter_type == "MIN_NOTIONAL"
    # any rounded-down quantity passes exactly when its notional and size allow it
    q = round_qty_down(budget_qty, f.step_size)
    ok = q > 0 and q >= f.min_qty and q * price >= f.min_notional
    try:
        check_order(f, q, price)
        passed = True
    except FilterError:
        passed = False
    assert passed is ok
