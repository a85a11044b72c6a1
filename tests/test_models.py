"""Domain models: conversions from the wire, cache formats, to_dict/from_dict round trips."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.binance.schemas import parse_kline_message, parse_user_event
from shared.errors import MessageError
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    Balance,
    ClosedTrade,
    ConfigUpdate,
    DecisionRecord,
    Kline,
    OrderIntent,
    OrderUpdate,
    Position,
    PositionUpdate,
    Signal,
    to_decimal,
    wire_decimal,
)
from shared.testing import KLINES_DIR
from tests.test_schemas import (
    DOC_ACCOUNT_UPDATE,
    DOC_ALGO_UPDATE,
    DOC_CONFIG_LEVERAGE,
    DOC_CONFIG_MULTI_ASSETS,
    DOC_KLINE_FIXED,
)
from tests.test_schemas import DOC_ORDER_TRADE_UPDATE as DOC_OTU

DATA = KLINES_DIR / "binance_usdtm_2023-02_vision_csv/AVAXUSDT-1m-2023-02.csv"

# GET /fapi/v1/klines documented response row (verbatim).
DOC_REST_ROW = [
    1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
    1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "17928899.62484339",
]  # fmt: skip

# GET /fapi/v3/positionRisk documented rows: one-way mode, then hedge mode's SHORT row.
DOC_POSITION_RISK = [
    {"symbol": "ADAUSDT", "positionSide": "BOTH", "positionAmt": "30", "entryPrice": "0.385",
     "breakEvenPrice": "0.385077", "markPrice": "0.41047590", "unRealizedProfit": "0.76427700",
     "liquidationPrice": "0", "isolatedMargin": "0", "notional": "12.31427700",
     "marginAsset": "USDT", "isolatedWallet": "0", "initialMargin": "0.61571385",
     "maintMargin": "0.08004280", "positionInitialMargin": "0.61571385",
     "openOrderInitialMargin": "0", "adl": 2, "bidNotional": "0", "askNotional": "0",
     "updateTime": 1720736417660},
    {"symbol": "COMPUSDT", "positionSide": "SHORT", "positionAmt": "-1.000",
     "entryPrice": "70.92841", "breakEvenPrice": "70.900038636", "markPrice": "49.72023376",
     "unRealizedProfit": "21.20817624", "liquidationPrice": "2260.56757210",
     "isolatedMargin": "0", "notional": "-49.72023376", "marginAsset": "USDT",
     "isolatedWallet": "0", "initialMargin": "2.48601168", "maintMargin": "0.49720233",
     "positionInitialMargin": "2.48601168", "openOrderInitialMargin": "0", "adl": 2,
     "bidNotional": "0", "askNotional": "0", "updateTime": 1708943511656},
]  # fmt: skip


def doc_kline() -> Kline:
    return Kline.from_event(parse_kline_message(DOC_KLINE_FIXED), received_time=123456800)


# ---- Kline ---------------------------------------------------------------------------------


def test_kline_from_event_uses_our_names() -> None:
    k = doc_kline()
    assert (k.symbol, k.interval, k.open_time, k.close_time) == (
        "BNBUSDT",
        "1m",
        123400000,
        123460000,
    )
    assert (k.open, k.high, k.low, k.close) == (0.001, 0.0025, 0.001, 0.002)
    assert (k.volume, k.quote_volume, k.trades) == (1000.0, 1.0, 100)
    assert (k.taker_buy_volume, k.taker_buy_quote_volume) == (500.0, 0.5)
    assert (k.closed, k.event_time, k.received_time) == (False, 123456789, 123456800)
    assert to_decimal(k.high) == Decimal("0.0025")


def test_kline_from_documented_rest_row() -> None:
    k = Kline.from_rest_row("BTCUSDT", "1m", DOC_REST_ROW, received_time=1499644800000)
    assert (k.open_time, k.close_time, k.trades) == (1499040000000, 1499644799999, 308)
    assert (k.open, k.high, k.low, k.close) == (0.0163479, 0.8, 0.015758, 0.015771)
    assert (k.volume, k.quote_volume) == (148976.11427815, 2434.19055334)
    assert (k.taker_buy_volume, k.taker_buy_quote_volume) == (1756.87402397, 28.46694368)
    assert k.closed and k.event_time == k.received_time == 1499644800000
    still_open = Kline.from_rest_row("BTCUSDT", "1m", DOC_REST_ROW, received_time=1499644799999)
    assert not still_open.closed


def test_kline_cache_hash_is_plain_strings_in_the_seed_format_and_round_trips() -> None:
    k = doc_kline()
    h = k.to_cache_hash()
    assert all(isinstance(v, str) for v in h.values())
    seed = {"open", "high", "low", "close", "volume", "quote_volume", "trades", "open_time",
            "close_time", "timestamp", "received_time"}  # fmt: skip
    assert seed <= set(h)
    assert (h["open"], h["high"], h["close"], h["timestamp"]) == (
        "0.001",
        "0.0025",
        "0.002",
        "123400000",
    )
    assert Kline.from_cache_hash(h) == k
    as_redis = {key.encode(): value.encode() for key, value in h.items()}  # what HGETALL gives
    assert Kline.from_cache_hash(as_redis) == k


def test_real_binance_rows_parse_and_match_the_stream_form() -> None:
    with DATA.open() as f:
        rows = list(csv.reader(f))[1:]
    klines = [
        Kline.from_rest_row("AVAXUSDT", "1m", r, received_time=1_700_000_000_000) for r in rows
    ]
    assert len(klines) == 40320 and all(k.closed for k in klines)
    first = klines[0]
    assert first.open_time == 1675209600000 and first.close_time == first.open_time + 59_999
    # the same candle as a closed stream event gives the same Kline
    r = rows[0]
    body = dict(zip("t o h l c v T q n V Q".split(), r[:11], strict=True))
    k = {key: (int(v) if key in "tTn" else v) for key, v in body.items()}
    k |= {"s": "AVAXUSDT", "i": "1m", "f": 1, "L": 2, "x": True}
    raw = orjson.dumps({"e": "kline", "E": 1_700_000_000_000, "s": "AVAXUSDT", "k": k})
    streamed = Kline.from_event(parse_kline_message(raw), received_time=1_700_000_000_000)
    assert streamed == replace(first, event_time=1_700_000_000_000)


@pytest.mark.parametrize(
    "row",
    [DOC_REST_ROW[:5], "not a row", None, [*DOC_REST_ROW[:1], "NaN", *DOC_REST_ROW[2:]],
     [*DOC_REST_ROW[:3], "0", *DOC_REST_ROW[4:]], [*DOC_REST_ROW[:2], "0.001", *DOC_REST_ROW[3:]],
     [*DOC_REST_ROW[:6], "x", *DOC_REST_ROW[7:]], [*DOC_REST_ROW[:6], 1, *DOC_REST_ROW[7:]]],
    ids=["short", "str", "none", "nan", "zero-low", "high<low", "bad-time", "close<open"],
)  # fmt: skip
def test_bad_rest_rows_raise_message_error(row: object) -> None:
    with pytest.raises(MessageError):
        Kline.from_rest_row("BTCUSDT", "1m", row, received_time=1)


@pytest.mark.parametrize(
    "change",
    [{"high": "abc"}, {"low": "0"}, {"high": "0.0001"}, {"close": "nan"}, {"symbol": "btcusdt"},
     {"interval": "2m"}, {"trades": "1.5"}, {"closed": "maybe"}],
)  # fmt: skip
def test_bad_kline_hashes_raise_message_error(change: dict[str, str]) -> None:
    h = doc_kline().to_cache_hash() | change
    with pytest.raises(MessageError):
        Kline.from_cache_hash(h)
    h = doc_kline().to_cache_hash()
    del h["close"]
    with pytest.raises(MessageError, match="missing field `close`"):
        Kline.from_cache_hash(h)


# ---- account events ------------------------------------------------------------------------


def test_account_update_and_positions_from_documented_event() -> None:
    au = AccountUpdate.from_event(parse_user_event(DOC_ACCOUNT_UPDATE))  # type: ignore[arg-type]
    assert (au.reason, au.event_time, au.transaction_time) == (
        "ORDER",
        1564745798939,
        1564745798938,
    )
    assert au.balances[0] == Balance(
        "USDT", Decimal("122624.12345678"), Decimal("100.12345678"), Decimal("50.12345678"),
        1564745798939,
    )  # fmt: skip
    long = au.positions[1]
    assert long == PositionUpdate(
        "BTCUSDT", Decimal(20), Decimal("6563.665"), Decimal("6563.6"), Decimal(0),
        Decimal("2850.212"), "isolated", Decimal("13200.70726908"), "LONG",
    )  # fmt: skip
    pos = Position.from_update(au.positions[2], au.event_time, leverage=20)
    assert (pos.size, pos.side, pos.leverage, pos.position_side) == (
        Decimal(-10),
        "SHORT",
        20,
        "SHORT",
    )
    h = pos.to_hash()
    assert h["size"] == "-10" and h["isolated_wallet"] == "6570.42511771" and h["leverage"] == "20"
    assert Position.from_hash({k.encode(): v.encode() for k, v in h.items()}) == pos
    flat = Position.from_update(au.positions[0], au.event_time, leverage=None)
    assert flat.side == "FLAT" and flat.to_hash()["leverage"] == ""
    assert Position.from_hash(flat.to_hash()) == flat
    b = au.balances[1]
    assert (
        Balance.from_hash(b.to_hash()) == b and b.to_hash()["cross_wallet_balance"] == "0.00000000"
    )


def test_positions_from_documented_position_risk_rows() -> None:
    one_way = Position.from_position_risk(DOC_POSITION_RISK[0])
    assert (one_way.symbol, one_way.size, one_way.entry_price, one_way.break_even_price) == (
        "ADAUSDT", Decimal(30), Decimal("0.385"), Decimal("0.385077"),
    )  # fmt: skip
    assert (one_way.unrealized_pnl, one_way.margin_type, one_way.leverage) == (
        Decimal("0.764277"), "cross", None,
    )  # fmt: skip
    assert one_way.updated_at == 1720736417660 and one_way.side == "LONG"
    short = Position.from_position_risk(DOC_POSITION_RISK[1], leverage=5)
    assert (short.size, short.side, short.position_side, short.leverage) == (
        Decimal("-1.000"), "SHORT", "SHORT", 5,
    )  # fmt: skip
    with pytest.raises(MessageError, match="positionAmt"):
        Position.from_position_risk(
            {k: v for k, v in DOC_POSITION_RISK[0].items() if k != "positionAmt"}
        )
    with pytest.raises(MessageError):
        Position.from_position_risk(DOC_POSITION_RISK[0] | {"entryPrice": "NaN"})
    with pytest.raises(MessageError):
        Position.from_position_risk(DOC_POSITION_RISK[0] | {"symbol": "ada/usdt"})
    with pytest.raises(MessageError):
        Position.from_position_risk(["not", "a", "row"])  # type: ignore[arg-type]


def test_order_algo_and_config_updates_from_documented_events() -> None:
    ou = OrderUpdate.from_event(parse_user_event(DOC_OTU))  # type: ignore[arg-type]
    assert (ou.symbol, ou.client_order_id, ou.side, ou.order_type, ou.status) == (
        "BTCUSDT", "TEST", "SELL", "TRAILING_STOP_MARKET", "NEW",
    )  # fmt: skip
    assert (ou.quantity, ou.stop_price, ou.order_id, ou.commission_asset) == (
        Decimal("0.001"), Decimal("7103.04"), 8886774, "USDT",
    )  # fmt: skip
    assert not ou.is_fill and (ou.event_time, ou.transaction_time) == (1568879465651, 1568879465650)
    algo = AlgoUpdate.from_event(parse_user_event(DOC_ALGO_UPDATE))  # type: ignore[arg-type]
    assert (algo.client_algo_id, algo.algo_id, algo.status, algo.trigger_price) == (
        "Q5xaq5EGKgXXa0fD7fs0Ip", 2148719, "CANCELED", Decimal(750),
    )  # fmt: skip
    assert algo.reject_reason == "Reduce Only reject"
    lev = ConfigUpdate.from_event(parse_user_event(DOC_CONFIG_LEVERAGE))  # type: ignore[arg-type]
    assert (lev.symbol, lev.leverage, lev.multi_assets_mode) == ("BTCUSDT", 25, None)
    multi = ConfigUpdate.from_event(parse_user_event(DOC_CONFIG_MULTI_ASSETS))  # type: ignore[arg-type]
    assert (multi.symbol, multi.leverage, multi.multi_assets_mode) == (None, None, True)
    for record in (ou, algo, lev, multi):
        assert type(record).from_dict(record.to_dict()) == record
        assert type(record).from_json(record.to_json()) == record


# ---- orders --------------------------------------------------------------------------------


def intent(**changes: object) -> OrderIntent:
    base: dict[str, object] = dict(
        symbol="BTCUSDT", side="BUY", order_type="LIMIT", quantity=Decimal("0.010"),
        client_order_id="slt-e-BTCUSDT-1700000000000", purpose="entry", price=Decimal("30000.1"),
        leverage=5, reason="score 0.71", time_in_force="GTC",
    )  # fmt: skip
    return OrderIntent(**(base | changes))  # type: ignore[arg-type]


def test_order_intent_params() -> None:
    assert intent().to_params() == {
        "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010",
        "price": "30000.1", "newClientOrderId": "slt-e-BTCUSDT-1700000000000", "timeInForce": "GTC",
    }  # fmt: skip
    stop = intent(side="SELL", order_type="STOP_MARKET", quantity=None, price=None,
                  stop_price=Decimal("2.9E+4"), close_position=True, purpose="stop",
                  time_in_force=None)  # fmt: skip
    assert stop.to_params()["stopPrice"] == "29000" and stop.to_params()["closePosition"] == "true"
    assert "quantity" not in stop.to_params() and "reduceOnly" not in stop.to_params()
    exit_ = intent(side="SELL", order_type="MARKET", price=None, reduce_only=True, purpose="exit")
    assert exit_.to_params()["reduceOnly"] == "true"


@pytest.mark.parametrize(
    "changes",
    [{"purpose": "exit"}, {"purpose": "take_profit"}, {"quantity": Decimal(0)}, {"quantity": None},
     {"price": Decimal("-1")}, {"side": "LONG"}, {"client_order_id": "has space"},
     {"client_order_id": "x" * 37}, {"symbol": "btc"}, {"leverage": 0}, {"purpose": "hedge"}],
)  # fmt: skip
def test_unsafe_order_intents_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        intent(**changes)


# ---- round trips ---------------------------------------------------------------------------

DEC = st.decimals(
    allow_nan=False, allow_infinity=False, min_value=-(10**9), max_value=10**9, places=8
)
POS_DEC = st.decimals(min_value="0.00000001", max_value=10**7, places=8)
FLOAT = st.floats(allow_nan=False, allow_infinity=False, width=64)
TIME = st.integers(0, 4_000_000_000_000)
SYMBOL = st.from_regex(r"[A-Z0-9]{3,12}", fullmatch=True)
TEXT = st.text(max_size=20)


@st.composite
def klines(draw: st.DrawFn) -> Kline:
    lo, a, b, hi = sorted(draw(st.lists(st.floats(1e-8, 1e7), min_size=4, max_size=4)))
    t = draw(TIME)
    vol = st.floats(0, 1e12)
    return Kline(draw(SYMBOL), draw(st.sampled_from(["1m", "5m", "1h"])), t, t + 59_999, a, hi, lo,
                 b, draw(vol), draw(vol), draw(st.integers(0, 10**7)), draw(vol), draw(vol),
                 draw(st.booleans()), draw(TIME), draw(TIME))  # fmt: skip


decisions = st.builds(
    DecisionRecord, client_order_id=st.from_regex(r"[a-z0-9-]{1,36}", fullmatch=True), symbol=SYMBOL,
    side=st.sampled_from(["LONG", "SHORT"]), time=TIME,
    features=st.dictionaries(st.text(max_size=8), FLOAT, max_size=5), model_version=TEXT,
    confidence=st.floats(0, 1), win_rate=st.floats(0, 1), leverage=st.integers(1, 125),
    stop_price=POS_DEC, take_profit_price=POS_DEC, entry_price_ref=POS_DEC,
    invalidation_price=st.none() | POS_DEC,
)  # fmt: skip
balances = st.builds(Balance, asset=SYMBOL, wallet_balance=DEC, cross_wallet_balance=DEC,
                     balance_change=DEC, updated_at=TIME)  # fmt: skip
position_updates = st.builds(
    PositionUpdate, symbol=SYMBOL, amount=DEC, entry_price=POS_DEC, break_even_price=POS_DEC,
    accumulated_realized=DEC, unrealized_pnl=DEC, margin_type=st.sampled_from(["isolated", "cross"]),
    isolated_wallet=POS_DEC, position_side=st.sampled_from(["BOTH", "LONG", "SHORT"]),
)  # fmt: skip
RECORDS = st.one_of(
    klines(),
    balances,
    st.builds(AccountUpdate, reason=TEXT, balances=st.lists(balances, max_size=3).map(tuple),
              positions=st.lists(position_updates, max_size=3).map(tuple), event_time=TIME,
              transaction_time=TIME),
    st.builds(Position, symbol=SYMBOL, size=DEC, entry_price=POS_DEC, break_even_price=POS_DEC,
              unrealized_pnl=DEC, margin_type=st.sampled_from(["isolated", "cross"]),
              isolated_wallet=POS_DEC, leverage=st.none() | st.integers(1, 125), updated_at=TIME,
              position_side=st.sampled_from(["BOTH", "LONG"])),
    st.builds(Signal, symbol=SYMBOL, side=st.sampled_from(["LONG", "SHORT"]), score=FLOAT,
              confidence=st.floats(0, 1), expected_value=FLOAT, features_version=TEXT, time=TIME,
              reasons=st.lists(TEXT, max_size=3).map(tuple)),
    st.builds(OrderIntent, symbol=SYMBOL, side=st.sampled_from(["BUY", "SELL"]),
              order_type=st.sampled_from(["MARKET", "LIMIT"]), quantity=POS_DEC,
              client_order_id=st.from_regex(r"[a-zA-Z0-9_-]{1,36}", fullmatch=True),
              purpose=st.just("exit"), price=st.none() | POS_DEC, reduce_only=st.just(True),
              leverage=st.none() | st.integers(1, 125), reason=TEXT),
    decisions,
    st.builds(ClosedTrade, trade_id=TEXT, symbol=SYMBOL, side=st.sampled_from(["LONG", "SHORT"]),
              quantity=POS_DEC, entry_price=POS_DEC, exit_price=POS_DEC, entry_time=TIME,
              exit_time=TIME, fees=POS_DEC, funding=DEC, gross_pnl=DEC, net_pnl=DEC,
              exit_reason=TEXT, leverage=st.integers(1, 125), decision=st.none() | decisions),
    st.builds(ConfigUpdate, symbol=st.none() | SYMBOL, leverage=st.none() | st.integers(1, 125),
              multi_assets_mode=st.none() | st.booleans(), event_time=TIME, transaction_time=TIME),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_every_record_round_trips_through_dict_and_json(record: object) -> None:
    cls = type(record)
    assert cls.from_dict(record.to_dict()) == record  # type: ignore[attr-defined]
    assert cls.from_json(record.to_json()) == record  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(klines())
def test_any_kline_round_trips_through_the_cache_hash(k: Kline) -> None:
    h = k.to_cache_hash()
    assert all(isinstance(v, str) for v in h.values())
    assert Kline.from_cache_hash(h) == k


def test_closed_trade_with_decision_and_bad_dicts() -> None:
    d = DecisionRecord("slt-1", "ETHUSDT", "LONG", 1, {"rsi": 55.5}, "m7", 0.7, 0.55, 3,
                       Decimal("1790.1"), Decimal("1850"), Decimal("1800.00"))  # fmt: skip
    t = ClosedTrade("t-1", "ETHUSDT", "LONG", Decimal("0.5"), Decimal("1800.00"), Decimal("1850"),
                    1, 2, Decimal("0.9"), Decimal("-0.1"), Decimal("25"), Decimal("24.0"), "tp", 3, d)  # fmt: skip
    data = t.to_dict()
    assert data["decision"]["features"] == {"rsi": 55.5} and data["entry_price"] == Decimal(
        "1800.00"
    )
    assert ClosedTrade.from_dict(data) == t and t.won
    for bad in (data | {"quantity": "abc"}, data | {"decision": "x"}, data | {"leverage": True},
                {k: v for k, v in data.items() if k != "net_pnl"}, "not a dict",
                data | {"decision": data["decision"] | {"features": [1]}}):  # fmt: skip
        with pytest.raises(MessageError):
            ClosedTrade.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(MessageError):
        ClosedTrade.from_json(b"{not json")


def test_wire_decimal_has_no_exponent() -> None:
    assert wire_decimal(Decimal("1E+3")) == "1000" and wire_decimal(Decimal("0E-8")) == "0.00000000"


def test_nan_features_survive_dict_and_json_as_missing_values() -> None:
    d = DecisionRecord("slt-2", "ETHUSDT", "SHORT", 1, {"atr": float("nan"), "rsi": 40.0, "n": 3},
                       "m7", 0.6, 0.5, 2, Decimal("1"), Decimal("2"), Decimal("1.5"))  # fmt: skip
    for back in (DecisionRecord.from_dict(d.to_dict()), DecisionRecord.from_json(d.to_json())):
        assert math.isnan(back.features["atr"]) and back.features["rsi"] == 40.0
        assert back.features["n"] == 3.0
    with pytest.raises(MessageError):
        DecisionRecord.from_dict(d.to_dict() | {"features": {"atr": "high"}})
