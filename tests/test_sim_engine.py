"""Matching engine of the exchange simulator: order types, rejections, events, algo orders."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from services.exchange_sim.engine import EngineEvent, EngineReject, Exchange
from services.exchange_sim.specs import SymbolSpec, default_spec

T0 = 1_700_000_000_000

# Field sets of Binance's USDⓈ-M user data events and REST bodies (official SDK models / docs).
OTU_FIELDS = {
    "s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L", "N", "n", "T",
    "t", "b", "a", "m", "R", "wt", "ot", "ps", "cp", "rp", "pP", "si", "ss", "V", "pm", "gtd", "er",
}  # fmt: skip
ALGO_FIELDS = {
    "caid", "aid", "at", "o", "s", "S", "ps", "f", "q", "X", "ai", "ap", "aq", "act", "tp", "p",
    "V", "wt", "pm", "cp", "pP", "R", "tt", "gtd", "rm",
}  # fmt: skip
POSITION_FIELDS = {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"}
NEW_ORDER_FIELDS = {
    "clientOrderId", "cumQty", "cumQuote", "executedQty", "orderId", "avgPrice", "origQty", "price",
    "reduceOnly", "side", "positionSide", "status", "stopPrice", "closePosition", "symbol",
    "timeInForce", "type", "origType", "updateTime", "workingType", "priceProtect", "priceMatch",
    "selfTradePreventionMode", "goodTillDate",
}  # fmt: skip
NEW_ALGO_FIELDS = {
    "algoId", "clientAlgoId", "algoType", "orderType", "symbol", "side", "positionSide",
    "timeInForce", "quantity", "algoStatus", "triggerPrice", "price", "icebergQuantity",
    "selfTradePreventionMode", "workingType", "priceMatch", "closePosition", "priceProtect",
    "reduceOnly", "activatePrice", "callbackRate", "createTime", "updateTime", "triggerTime",
    "goodTillDate",
}  # fmt: skip


@pytest.fixture
def ex() -> Exchange:
    specs = {
        s: default_spec(s, p) for s, p in [("BTCUSDT", 30000), ("ETHUSDT", 1900), ("XRPUSDT", 0.6)]
    }
    x = Exchange(specs, slippage_bps=D(0), funding_enabled=False)
    x.add_account("a", D("10000"))
    x.advance_price("BTCUSDT", D("30000"), T0)
    x.advance_price("ETHUSDT", D("1900"), T0)
    x.advance_price("XRPUSDT", D("0.6"), T0)
    return x


def order(
    ex: Exchange, ts: int = T0, acct: str = "a", **params: str
) -> tuple[dict, list[EngineEvent]]:
    params.setdefault("symbol", "BTCUSDT")
    params.setdefault("newOrderRespType", "RESULT")
    return ex.place_order(acct, params, ts)


def rejected(fn, *args, **kw) -> EngineReject:  # type: ignore[no-untyped-def]
    with pytest.raises(EngineReject) as info:
        fn(*args, **kw)
    return info.value


def kinds(events: list[EngineEvent]) -> list[str]:
    out = []
    for e in events:
        p = e.payload
        if e.event_type == "ORDER_TRADE_UPDATE":
            out.append(f"OTU:{p['o']['x']}/{p['o']['X']}")
        elif e.event_type == "ALGO_UPDATE":
            out.append(f"ALGO:{p['o']['X']}")
        elif e.event_type == "ACCOUNT_UPDATE":
            out.append(f"AU:{p['a']['m']}")
        else:
            out.append(e.event_type)
    return out


# ----------------------------------------------------------------------------- MARKET / LIMIT
def test_market_order_fills_at_last_with_taker_fee_and_full_events(ex: Exchange) -> None:
    body, events = order(ex, side="BUY", type="MARKET", quantity="0.010", newClientOrderId="m1")
    assert set(body) == NEW_ORDER_FIELDS
    assert (body["status"], body["executedQty"], body["avgPrice"], body["cumQuote"]) == (
        "FILLED",
        "0.010",
        "30000.0",
        "300.00000000",
    )
    assert kinds(events) == ["OTU:NEW/NEW", "OTU:TRADE/FILLED", "AU:ORDER"]
    trade = events[1].payload
    assert trade["e"] == "ORDER_TRADE_UPDATE" and trade["E"] == T0 and trade["T"] == T0
    assert set(trade["o"]) == OTU_FIELDS
    o = trade["o"]
    assert (o["c"], o["l"], o["L"], o["n"], o["N"], o["m"], o["rp"]) == (
        "m1",
        "0.010",
        "30000.00",
        "0.15000000",
        "USDT",
        False,
        "0.00000000",
    )
    au = events[2].payload["a"]
    assert au["B"] == [{"a": "USDT", "wb": "9999.85000000", "cw": "9999.85000000", "bc": "0"}]
    assert set(au["P"][0]) == POSITION_FIELDS
    assert (au["P"][0]["pa"], au["P"][0]["ep"], au["P"][0]["mt"]) == ("0.010", "30000.0", "cross")


def test_market_slippage_uses_tick_rounded_quote() -> None:
    ex = Exchange(
        {"BTCUSDT": default_spec("BTCUSDT", 30000)}, slippage_bps=D(1), funding_enabled=False
    )
    ex.add_account("a", D(10000))
    ex.advance_price("BTCUSDT", D("30000.00"), T0)
    buy, _ = order(ex, side="BUY", type="MARKET", quantity="0.010")
    sell, _ = order(ex, side="SELL", type="MARKET", quantity="0.010")
    assert buy["avgPrice"] == "30003.0" and sell["avgPrice"] == "29997.0"


def test_ack_response_is_the_accepted_order(ex: Exchange) -> None:
    body, events = order(ex, side="BUY", type="MARKET", quantity="0.010", newOrderRespType="ACK")
    assert body["status"] == "NEW" and body["executedQty"] == "0.000"
    assert ex.query_order("a", "BTCUSDT", order_id=body["orderId"])["status"] == "FILLED"
    assert "OTU:TRADE/FILLED" in kinds(events)


def test_resting_limit_fills_on_cross_as_maker(ex: Exchange) -> None:
    body, events = order(
        ex, side="BUY", type="LIMIT", timeInForce="GTC", price="29900.0", quantity="0.010"
    )
    assert body["status"] == "NEW" and kinds(events) == ["OTU:NEW/NEW"]
    assert events[0].payload["o"]["b"] == "299.00000000"  # bids notional of open orders
    assert ex.advance_price("BTCUSDT", D("29950"), T0 + 1000) == []
    events = ex.advance_price("BTCUSDT", D("29850"), T0 + 2000)
    assert kinds(events) == ["OTU:TRADE/FILLED", "AU:ORDER"]
    o = events[0].payload["o"]
    assert (o["L"], o["m"], o["n"]) == (
        "29900.00",
        True,
        "0.05980000",
    )  # maker 0.02 % at its own price
    assert ex.open_orders("a") == []
    assert ex.query_order("a", "BTCUSDT", order_id=body["orderId"])["status"] == "FILLED"


def test_marketable_limit_takes_at_better_of_limit_and_quote(ex: Exchange) -> None:
    body, _ = order(
        ex, side="BUY", type="LIMIT", timeInForce="GTC", price="30100.0", quantity="0.010"
    )
    assert (body["status"], body["avgPrice"]) == ("FILLED", "30000.0")


def test_gtx_rejected_when_it_would_take(ex: Exchange) -> None:
    e = rejected(
        order, ex, side="BUY", type="LIMIT", timeInForce="GTX", price="30000.0", quantity="0.010"
    )
    assert (e.http_status, e.code) == (400, -5022)
    assert (
        e.msg
        == "Due to the order could not be executed as maker, the Post Only order will be rejected."
    )
    body, _ = order(
        ex, side="BUY", type="LIMIT", timeInForce="GTX", price="29999.9", quantity="0.010"
    )
    assert body["status"] == "NEW"


def test_ioc_expires_unfilled_and_partially_fills_against_depth(ex: Exchange) -> None:
    body, events = order(
        ex, side="BUY", type="LIMIT", timeInForce="IOC", price="29000.0", quantity="0.010"
    )
    assert body["status"] == "EXPIRED" and kinds(events) == ["OTU:NEW/NEW", "OTU:EXPIRED/EXPIRED"]
    ex.set_depth("BTCUSDT", D("0.004"))
    body, events = order(
        ex, side="BUY", type="LIMIT", timeInForce="IOC", price="30000.0", quantity="0.010"
    )
    assert (body["status"], body["executedQty"]) == ("EXPIRED", "0.004")
    assert kinds(events) == [
        "OTU:NEW/NEW",
        "OTU:TRADE/PARTIALLY_FILLED",
        "AU:ORDER",
        "OTU:EXPIRED/EXPIRED",
    ]


def test_fok_all_or_nothing(ex: Exchange) -> None:
    e = rejected(
        order, ex, side="BUY", type="LIMIT", timeInForce="FOK", price="29000.0", quantity="0.010"
    )
    assert e.code == -5021
    ex.set_depth("BTCUSDT", D("0.004"))
    assert (
        rejected(
            order,
            ex,
            side="BUY",
            type="LIMIT",
            timeInForce="FOK",
            price="30000.0",
            quantity="0.010",
        ).code
        == -5021
    )
    body, _ = order(
        ex, side="BUY", type="LIMIT", timeInForce="FOK", price="30000.0", quantity="0.004"
    )
    assert body["status"] == "FILLED"


def test_gtc_partial_fill_rests_remainder_then_fills_as_maker(ex: Exchange) -> None:
    ex.set_depth("BTCUSDT", D("0.004"))
    body, _ = order(
        ex, side="BUY", type="LIMIT", timeInForce="GTC", price="30000.0", quantity="0.010"
    )
    assert (body["status"], body["executedQty"]) == ("PARTIALLY_FILLED", "0.004")
    events = ex.advance_price("BTCUSDT", D("29990"), T0 + 1)
    assert kinds(events) == ["OTU:TRADE/FILLED", "AU:ORDER"]
    assert events[0].payload["o"]["m"] is True


def test_cancel_query_open_orders_and_cancel_all(ex: Exchange) -> None:
    b1, _ = order(
        ex,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="29000.0",
        quantity="0.010",
        newClientOrderId="x1",
    )
    order(
        ex,
        side="SELL",
        type="LIMIT",
        timeInForce="GTC",
        price="31000.0",
        quantity="0.010",
        newClientOrderId="x2",
    )
    assert {o["clientOrderId"] for o in ex.open_orders("a", "BTCUSDT")} == {"x1", "x2"}
    body, events = ex.cancel_order("a", "BTCUSDT", orig_client_order_id="x1", ts_ms=T0 + 5)
    assert body["status"] == "CANCELED" and kinds(events) == ["OTU:CANCELED/CANCELED"]
    assert ex.query_order("a", "BTCUSDT", order_id=b1["orderId"])["status"] == "CANCELED"
    assert rejected(ex.cancel_order, "a", "BTCUSDT", order_id=b1["orderId"], ts_ms=T0).code == -2011
    assert rejected(ex.query_order, "a", "BTCUSDT", order_id=999999).code == -2013
    assert rejected(ex.query_order, "a", "BTCUSDT").code == -1102
    body, events = ex.cancel_all("a", "BTCUSDT", T0 + 6)
    assert body == {"code": 200, "msg": "The operation of cancel all open order is done."}
    assert kinds(events) == ["OTU:CANCELED/CANCELED"] and ex.open_orders("a") == []


def test_duplicate_client_order_id_among_open_orders(ex: Exchange) -> None:
    order(
        ex,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="29000.0",
        quantity="0.010",
        newClientOrderId="dup",
    )
    e = rejected(
        order,
        ex,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="29000.0",
        quantity="0.010",
        newClientOrderId="dup",
    )
    assert (e.code, e.msg) == (-4116, "ClientOrderId is duplicated.")
    ex.cancel_order("a", "BTCUSDT", orig_client_order_id="dup", ts_ms=T0)
    order(
        ex,
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="29000.0",
        quantity="0.010",
        newClientOrderId="dup",
    )
    assert ex.audit.duplicate_client_ids() == [("a", "dup")]  # the audit sees the reuse


def test_audit_records_every_order_and_fill(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010", newClientOrderId="e1")
    order(ex, side="SELL", type="MARKET", quantity="0.010", newClientOrderId="e2")
    assert [r.client_id for r in ex.audit.orders] == ["e1", "e2"]
    assert [(f.client_id, f.qty) for f in ex.audit.fills] == [
        ("e1", D("0.010")),
        ("e2", D("0.010")),
    ]
    assert ex.audit.duplicate_client_ids() == []


# ------------------------------------------------------------------------------ rejections
@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        (
            {"symbol": "NOPEUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"},
            -1121,
            "Invalid symbol.",
        ),
        (
            {"side": "BUY", "type": "MARKET"},
            -1102,
            "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.",
        ),
        ({"side": "BUY", "type": "MARKET", "quantity": "abc"}, -1102, None),
        ({"side": "HOLD", "type": "MARKET", "quantity": "0.010"}, -1117, "Invalid side."),
        ({"side": "BUY", "type": "OCO", "quantity": "0.010"}, -1116, "Invalid orderType."),
        ({"side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "29000.0"}, -1102, None),
        (
            {
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "DAY",
                "quantity": "0.010",
                "price": "29000.0",
            },
            -1115,
            "Invalid timeInForce.",
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.0101"},
            -1111,
            "Precision is over the maximum defined for this asset.",
        ),
        (
            {
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.010",
                "price": "29000.05",
            },
            -4014,
            "Price not increased by tick size.",
        ),
        (
            {
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.010",
                "price": "29000.123",
            },
            -1111,
            None,
        ),
        ({"side": "BUY", "type": "MARKET", "quantity": "0"}, -4003, None),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "121"},
            -4005,
            "Quantity greater than max quantity.",
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.001"},
            -4164,
            "Order's notional must be no smaller than 100 (unless you choose reduce only)",
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "price": "1"},
            -1106,
            "Parameter 'price' sent when not required.",
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "positionSide": "LONG"},
            -4061,
            None,
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "newClientOrderId": "x" * 37},
            -4015,
            "Client order id length should not be more than 36 chars",
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "newClientOrderId": "bad id!"},
            -4015,
            None,
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "reduceOnly": "maybe"},
            -1130,
            None,
        ),
        (
            {
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.010",
                "price": "31600.0",
            },
            -4016,
            None,
        ),
        (
            {
                "side": "SELL",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.010",
                "price": "28400.0",
            },
            -4024,
            None,
        ),
        (
            {"side": "BUY", "type": "MARKET", "quantity": "0.010", "newOrderRespType": "FULL"},
            -1136,
            None,
        ),
    ],
)
def test_order_rejections_use_binance_codes(
    ex: Exchange, params: dict, code: int, msg: str | None
) -> None:
    params = {"symbol": "BTCUSDT", **params}
    e = rejected(ex.place_order, "a", params, T0)
    assert e.code == code and e.http_status == 400
    if msg is not None:
        assert e.msg == msg
    assert ex.audit.orders == []


@pytest.mark.parametrize(
    "otype", ["STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"]
)
def test_conditional_types_on_order_endpoint_get_4120(ex: Exchange, otype: str) -> None:
    e = rejected(order, ex, side="SELL", type=otype, quantity="0.010", stopPrice="29000.0")
    assert (e.code, e.msg) == (
        -4120,
        "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
    )


def test_qty_not_on_step_gets_4023() -> None:
    spec = SymbolSpec(
        "TSTUSDT",
        "TST",
        step_size=D("0.005"),
        min_qty=D("0.005"),
        market_step_size=D("0.005"),
        market_min_qty=D("0.005"),
    )
    ex = Exchange({"TSTUSDT": spec}, funding_enabled=False)
    ex.add_account("a", D(1000))
    ex.advance_price("TSTUSDT", D("100"), T0)
    assert (
        rejected(order, ex, symbol="TSTUSDT", side="BUY", type="MARKET", quantity="0.107").code
        == -4023
    )


def test_margin_insufficient(ex: Exchange) -> None:
    ex.set_leverage("a", "BTCUSDT", 5, T0)
    e = rejected(
        order, ex, side="BUY", type="MARKET", quantity="1.700"
    )  # 51000 / 5 = 10200 > 10000
    assert (e.code, e.msg) == (-2019, "Margin is insufficient.")
    order(ex, side="BUY", type="MARKET", quantity="1.600")  # 9600 of margin fits
    # resting orders reserve margin too
    assert (
        rejected(
            order,
            ex,
            symbol="ETHUSDT",
            side="BUY",
            type="LIMIT",
            timeInForce="GTC",
            price="1800.00",
            quantity="5.000",
        ).code
        == -2019
    )  # 450 > 376 left


def test_reduce_only_rejected_without_position_or_same_side(ex: Exchange) -> None:
    e = rejected(order, ex, side="SELL", type="MARKET", quantity="0.010", reduceOnly="true")
    assert (e.code, e.msg) == (-2022, "ReduceOnly Order is rejected.")
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    assert (
        rejected(order, ex, side="BUY", type="MARKET", quantity="0.010", reduceOnly="true").code
        == -2022
    )


def test_reduce_only_never_flips_and_skips_min_notional(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.006")
    body, events = order(ex, side="SELL", type="MARKET", quantity="0.010", reduceOnly="true")
    assert (body["status"], body["executedQty"]) == ("EXPIRED", "0.006")
    assert ex.position_risk("a", "BTCUSDT")[0]["positionAmt"] == "0.000"
    order(ex, side="BUY", type="MARKET", quantity="0.006")
    body, _ = order(
        ex, side="SELL", type="MARKET", quantity="0.001", reduceOnly="true"
    )  # 30 USDT < 100
    assert body["status"] == "FILLED"


def test_resting_reduce_only_expires_when_position_closes(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    order(
        ex,
        side="SELL",
        type="LIMIT",
        timeInForce="GTC",
        price="32000.0",
        quantity="0.010",
        reduceOnly="true",
        newClientOrderId="tp",
    )
    _, events = order(ex, side="SELL", type="MARKET", quantity="0.010")
    assert "OTU:EXPIRED/EXPIRED" in kinds(events)
    assert ex.query_order("a", "BTCUSDT", orig_client_order_id="tp")["status"] == "EXPIRED"


def test_max_open_orders(ex: Exchange) -> None:
    spec = ex.specs["XRPUSDT"]
    for i in range(spec.max_num_orders):
        order(
            ex,
            symbol="XRPUSDT",
            side="BUY",
            type="LIMIT",
            timeInForce="GTC",
            price="0.50000",
            quantity="10",
            newClientOrderId=f"g{i}",
        )
    e = rejected(
        order,
        ex,
        symbol="XRPUSDT",
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="0.50000",
        quantity="10",
    )
    assert e.code == -2025


def test_unknown_account_and_no_price(ex: Exchange) -> None:
    assert (
        rejected(order, ex, acct="ghost", side="BUY", type="MARKET", quantity="0.010").code == -2015
    )
    fresh = Exchange({"BTCUSDT": default_spec("BTCUSDT", 30000)})
    fresh.add_account("a", D(1000))
    assert rejected(order, fresh, side="BUY", type="MARKET", quantity="0.010").code == -1112


# ----------------------------------------------------------------------- leverage / margin type
def test_leverage_bracket_clamp_and_config_event(ex: Exchange) -> None:
    e = rejected(ex.set_leverage, "a", "BTCUSDT", 126, T0)
    assert (e.code, e.msg) == (-4028, "Leverage 126 is not valid")
    assert rejected(ex.set_leverage, "a", "BTCUSDT", 0, T0).code == -4028
    assert rejected(ex.set_leverage, "a", "XRPUSDT", 51, T0).code == -4028  # alt table tops at 50x
    body, events = ex.set_leverage("a", "BTCUSDT", 125, T0)
    assert body == {"leverage": 125, "maxNotionalValue": "50000", "symbol": "BTCUSDT"}
    assert events[0].payload == {
        "e": "ACCOUNT_CONFIG_UPDATE",
        "E": T0,
        "T": T0,
        "ac": {"s": "BTCUSDT", "l": 125},
    }
    # 2 BTC at 30000 = 60000 notional > 50000 allowed at 125x
    assert rejected(order, ex, side="BUY", type="MARKET", quantity="2.000").code == -2027
    order(ex, side="BUY", type="MARKET", quantity="1.600")  # 48000 notional
    ex.set_leverage("a", "BTCUSDT", 100, T0)
    ex.advance_price("BTCUSDT", D("32000"), T0 + 1)  # 51200 notional
    assert rejected(ex.set_leverage, "a", "BTCUSDT", 125, T0 + 1).code == -2027
    row = ex.position_risk("a", "BTCUSDT")[0]
    assert (row["leverage"], row["maxNotionalValue"]) == ("100", "250000")


def test_margin_type_switch_rules(ex: Exchange) -> None:
    assert rejected(ex.set_margin_type, "a", "BTCUSDT", "CROSSED", T0).code == -4046
    assert ex.set_margin_type("a", "BTCUSDT", "ISOLATED", T0) == (
        {"code": 200, "msg": "success"},
        [],
    )
    assert ex.position_risk("a", "BTCUSDT")[0]["marginType"] == "isolated"
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    e = rejected(ex.set_margin_type, "a", "BTCUSDT", "CROSSED", T0)
    assert (e.code, e.msg) == (-4048, "Margin type cannot be changed if there exists position.")
    order(
        ex,
        symbol="ETHUSDT",
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        price="1800.00",
        quantity="0.100",
    )
    assert rejected(ex.set_margin_type, "a", "ETHUSDT", "ISOLATED", T0).code == -4047
    assert rejected(ex.set_margin_type, "a", "ETHUSDT", "BOTH", T0).code == -1130


def test_isolated_leverage_cannot_drop_with_position(ex: Exchange) -> None:
    ex.set_margin_type("a", "BTCUSDT", "ISOLATED", T0)
    ex.set_leverage("a", "BTCUSDT", 10, T0)
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    assert rejected(ex.set_leverage, "a", "BTCUSDT", 5, T0).code == -4161
    ex.set_leverage("a", "BTCUSDT", 20, T0)


# ------------------------------------------------------------------------------ algo orders
def algo(ex: Exchange, ts: int = T0, **params: str) -> tuple[dict, list[EngineEvent]]:
    params.setdefault("symbol", "BTCUSDT")
    params.setdefault("algoType", "CONDITIONAL")
    return ex.place_algo_order("a", params, ts)


def test_stop_market_close_position_triggers_on_mark_and_closes(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    body, events = algo(ex, side="SELL", type="STOP_MARKET", triggerPrice="29000.0", closePosition="true",
                        workingType="MARK_PRICE", clientAlgoId="sl-1")  # fmt: skip
    assert set(body) == NEW_ALGO_FIELDS
    assert (body["algoStatus"], body["closePosition"], body["triggerPrice"]) == (
        "NEW",
        True,
        "29000.00",
    )
    assert kinds(events) == ["ALGO:NEW"] and set(events[0].payload["o"]) == ALGO_FIELDS
    # last trades through the trigger but the mark does not: nothing happens
    assert ex.advance_price("BTCUSDT", D("28900"), T0 + 1, mark=D("29100")) == []
    events = ex.advance_price("BTCUSDT", D("28950"), T0 + 2, mark=D("28990"))
    assert kinds(events) == [
        "ALGO:TRIGGERING",
        "ALGO:TRIGGERED",
        "OTU:NEW/NEW",
        "OTU:TRADE/FILLED",
        "AU:ORDER",
        "ALGO:FINISHED",
    ]
    o = events[2].payload["o"]
    assert (o["o"], o["ot"], o["c"], o["cp"], o["sp"], o["wt"]) == (
        "MARKET",
        "STOP_MARKET",
        "sl-1",
        True,
        "29000.00",
        "MARK_PRICE",
    )
    assert events[3].payload["o"]["L"] == "28950.00"  # executes at the market, not the trigger
    assert ex.position_risk("a", "BTCUSDT")[0]["positionAmt"] == "0.000"
    q = ex.query_algo_order("a", client_algo_id="sl-1")
    assert (q["algoStatus"], q["actualOrderId"], q["actualQty"], q["actualType"]) == (
        "FINISHED",
        str(o["i"]),
        "0.010",
        "MARKET",
    )
    assert ex.open_algo_orders("a") == []


def test_take_profit_market_on_contract_price(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    algo(
        ex,
        side="SELL",
        type="TAKE_PROFIT_MARKET",
        triggerPrice="31000.0",
        quantity="0.010",
        reduceOnly="true",
    )
    assert ex.advance_price("BTCUSDT", D("30900"), T0 + 1, mark=D("31100")) == []  # mark ignored
    events = ex.advance_price("BTCUSDT", D("31000"), T0 + 2)
    assert "OTU:TRADE/FILLED" in kinds(events) and kinds(events)[-1] == "ALGO:FINISHED"


def test_close_position_without_position_expires(ex: Exchange) -> None:
    algo(
        ex,
        side="SELL",
        type="STOP_MARKET",
        triggerPrice="29000.0",
        closePosition="true",
        clientAlgoId="orphan",
    )
    events = ex.advance_price("BTCUSDT", D("28900"), T0 + 1)
    assert kinds(events) == ["ALGO:TRIGGERING", "ALGO:EXPIRED"]
    assert ex.query_algo_order("a", client_algo_id="orphan")["algoStatus"] == "EXPIRED"


def test_stop_limit_rests_after_trigger_and_finishes_on_fill(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    # limit above the market after the trigger: the order rests
    algo(
        ex,
        side="SELL",
        type="STOP",
        triggerPrice="29000.0",
        price="29100.0",
        quantity="0.005",
        reduceOnly="true",
        clientAlgoId="sl",
    )
    events = ex.advance_price("BTCUSDT", D("28990"), T0 + 1)
    assert kinds(events) == ["ALGO:TRIGGERING", "ALGO:TRIGGERED", "OTU:NEW/NEW"]
    assert (
        ex.open_orders("a")[0]["origType"] == "STOP" and ex.open_orders("a")[0]["type"] == "LIMIT"
    )
    events = ex.advance_price("BTCUSDT", D("29100"), T0 + 2)
    assert kinds(events) == ["OTU:TRADE/FILLED", "AU:ORDER", "ALGO:FINISHED"]
    assert events[0].payload["o"]["m"] is True
    # limit below the market: marketable at once, fills at the bid as taker
    algo(
        ex,
        side="SELL",
        type="STOP",
        triggerPrice="29000.0",
        price="28800.0",
        quantity="0.005",
        reduceOnly="true",
    )
    events = ex.advance_price("BTCUSDT", D("28990"), T0 + 3)
    assert kinds(events)[-3:] == ["OTU:TRADE/FILLED", "AU:ORDER", "ALGO:FINISHED"]
    assert events[-3].payload["o"]["L"] == "28990.00"


def test_triggered_order_rejected_by_engine_ends_rejected(ex: Exchange) -> None:
    algo(
        ex,
        side="SELL",
        type="STOP_MARKET",
        triggerPrice="29000.0",
        quantity="0.010",
        reduceOnly="true",
        clientAlgoId="ro",
    )
    events = ex.advance_price("BTCUSDT", D("28990"), T0 + 1)
    assert kinds(events) == ["ALGO:TRIGGERING", "ALGO:REJECTED"]
    assert events[1].payload["o"]["rm"] == "ReduceOnly Order is rejected."


def test_gte_gtc_algo_expires_when_position_closes(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    algo(
        ex,
        side="SELL",
        type="STOP_MARKET",
        triggerPrice="29000.0",
        closePosition="true",
        timeInForce="GTE_GTC",
        clientAlgoId="g",
    )
    _, events = order(ex, side="SELL", type="MARKET", quantity="0.010")
    assert kinds(events)[-1] == "ALGO:EXPIRED"
    assert ex.open_algo_orders("a") == []


def test_algo_cancel_query_and_rejections(ex: Exchange) -> None:
    body, _ = algo(
        ex,
        side="SELL",
        type="STOP_MARKET",
        triggerPrice="29000.0",
        quantity="0.010",
        clientAlgoId="c1",
    )
    assert (
        rejected(
            algo,
            ex,
            side="SELL",
            type="STOP_MARKET",
            triggerPrice="29000.0",
            quantity="0.010",
            clientAlgoId="c1",
        ).code
        == -4116
    )
    assert ex.open_algo_orders("a", "BTCUSDT")[0]["clientAlgoId"] == "c1"
    resp, events = ex.cancel_algo_order("a", algo_id=body["algoId"], ts_ms=T0 + 1)
    assert resp == {"algoId": body["algoId"], "clientAlgoId": "c1", "code": "200", "msg": "success"}
    assert kinds(events) == ["ALGO:CANCELED"]
    assert rejected(ex.cancel_algo_order, "a", algo_id=body["algoId"], ts_ms=T0).code == -2011
    assert ex.query_algo_order("a", algo_id=body["algoId"])["algoStatus"] == "CANCELED"
    assert rejected(ex.query_algo_order, "a", algo_id=424242).code == -2013
    # immediate trigger, bad combinations
    assert (
        rejected(
            algo, ex, side="SELL", type="STOP_MARKET", triggerPrice="30000.0", quantity="0.010"
        ).code
        == -2021
    )
    assert (
        rejected(
            algo, ex, side="BUY", type="STOP_MARKET", triggerPrice="29000.0", quantity="0.010"
        ).code
        == -2021
    )
    assert (
        rejected(
            algo,
            ex,
            side="SELL",
            type="STOP_MARKET",
            triggerPrice="29000.0",
            quantity="0.010",
            closePosition="true",
        ).code
        == -4137
    )
    assert rejected(algo, ex, side="SELL", type="STOP_MARKET", quantity="0.010").code == -1102
    assert (
        rejected(
            algo,
            ex,
            side="SELL",
            type="STOP_MARKET",
            triggerPrice="29000.0",
            quantity="0.010",
            workingType="INDEX",
        ).code
        == -4031
    )
    assert (
        rejected(algo, ex, side="SELL", type="STOP", triggerPrice="29000.0", quantity="0.010").code
        == -1102
    )
    assert (
        rejected(
            algo,
            ex,
            algoType="VP",
            side="SELL",
            type="STOP_MARKET",
            triggerPrice="29000.0",
            quantity="0.010",
        ).code
        == -1130
    )
    # cancel all
    algo(ex, side="SELL", type="STOP_MARKET", triggerPrice="28000.0", quantity="0.010")
    body, events = ex.cancel_all_algo("a", "BTCUSDT", T0 + 2)
    assert kinds(events) == ["ALGO:CANCELED"] and ex.open_algo_orders("a") == []


def test_max_algo_orders(ex: Exchange) -> None:
    for i in range(10):
        algo(ex, side="SELL", type="STOP_MARKET", triggerPrice=f"{20000 + i}.0", quantity="0.010")
    assert (
        rejected(
            algo, ex, side="SELL", type="STOP_MARKET", triggerPrice="19000.0", quantity="0.010"
        ).code
        == -4045
    )


# ------------------------------------------------------------------------------- read views
def test_position_risk_v2_v3_and_account_shapes(ex: Exchange) -> None:
    order(ex, side="BUY", type="MARKET", quantity="0.010")
    v2 = ex.position_risk("a")
    assert [r["symbol"] for r in v2] == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]  # v2 lists every symbol
    assert set(v2[0]) == {
        "symbol", "positionAmt", "entryPrice", "breakEvenPrice", "markPrice", "unRealizedProfit",
        "liquidationPrice", "leverage", "maxNotionalValue", "marginType", "isolatedMargin",
        "isAutoAddMargin", "positionSide", "notional", "isolatedWallet", "updateTime",
    }  # fmt: skip
    v3 = ex.position_risk("a", version=3)
    assert [r["symbol"] for r in v3] == ["BTCUSDT"]  # only with position / open orders
    assert set(v3[0]) == {
        "symbol", "positionSide", "positionAmt", "entryPrice", "breakEvenPrice", "markPrice",
        "unRealizedProfit", "liquidationPrice", "isolatedMargin", "notional", "marginAsset",
        "isolatedWallet", "initialMargin", "maintMargin", "positionInitialMargin",
        "openOrderInitialMargin", "adl", "bidNotional", "askNotional", "updateTime",
    }  # fmt: skip
    bal = ex.balances("a", version=3)[0]
    assert set(bal) == {
        "accountAlias", "asset", "balance", "crossWalletBalance", "crossUnPnl", "availableBalance",
        "maxWithdrawAmount", "marginAvailable", "updateTime",
    }  # fmt: skip
    a2, a3 = ex.account("a", 2), ex.account("a", 3)
    assert a2["multiAssetsMargin"] is False and "feeTier" in a2 and "feeTier" not in a3
    assert a2["assets"][0]["marginAvailable"] is True and "marginAvailable" not in a3["assets"][0]
    assert len(a2["positions"]) == 3 and len(a3["positions"]) == 1
    assert a3["positions"][0]["positionAmt"] == "0.010"
    assert a3["totalWalletBalance"] == "9999.85000000"
    trades = ex.user_trades("a", "BTCUSDT")
    assert trades[0]["qty"] == "0.010" and trades[0]["buyer"] is True
