"""Binance wire schemas: documented payloads parse to the documented values; anything
broken raises MessageError and nothing else."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.binance.schemas import (
    AccountConfigUpdateEvent,
    AccountUpdateEvent,
    AlgoUpdateEvent,
    KlineEvent,
    ListenKeyExpiredEvent,
    OrderTradeUpdateEvent,
    PriceTick,
    is_closed_kline_fast,
    last_price,
    parse_kline_message,
    parse_user_event,
    price_tick,
)
from shared.errors import MessageError

# ---- documented payloads (developers.binance.com, USD-M futures), comments removed --------

DOC_KLINE = b"""{
  "e": "kline",
  "E": 123456789,
  "s": "BNBUSDT",
  "k": {
    "t": 123400000,
    "T": 123460000,
    "s": "BNBUSDT",
    "i": "1m",
    "f": 100,
    "L": 200,
    "o": "0.0010",
    "c": "0.0020",
    "h": "0.0025",
    "l": "0.0015",
    "v": "1000",
    "n": 100,
    "x": false,
    "q": "1.0000",
    "V": "500",
    "Q": "0.500",
    "B": "123456"
  }
}"""
# The documented candle has low (0.0015) above open (0.0010); this twin fixes only that.
DOC_KLINE_FIXED = DOC_KLINE.replace(b'"l": "0.0015"', b'"l": "0.0010"')

DOC_ACCOUNT_UPDATE = b"""{
  "e": "ACCOUNT_UPDATE",
  "E": 1564745798939,
  "T": 1564745798938 ,
  "a":
    {
      "m":"ORDER",
      "B":[
        {
          "a":"USDT",
          "wb":"122624.12345678",
          "cw":"100.12345678",
          "bc":"50.12345678"
        },
        {
          "a":"BUSD",
          "wb":"1.00000000",
          "cw":"0.00000000",
          "bc":"-49.12345678"
        }
      ],
      "P":[
       {
          "s":"BTCUSDT",
          "pa":"0",
          "ep":"0.00000",
          "bep":"0",
          "cr":"200",
          "up":"0",
          "mt":"isolated",
          "iw":"0.00000000",
          "ps":"BOTH"
       },
       {
        \t"s":"BTCUSDT",
        \t"pa":"20",
        \t"ep":"6563.66500",
        \t"bep":"6563.6",
        \t"cr":"0",
        \t"up":"2850.21200",
        \t"mt":"isolated",
        \t"iw":"13200.70726908",
        \t"ps":"LONG"
      \t },
       {
        \t"s":"BTCUSDT",
        \t"pa":"-10",
        \t"ep":"6563.86000",
        \t"bep":"6563.6",
        \t"cr":"-45.04000000",
        \t"up":"-1423.15600",
        \t"mt":"isolated",
        \t"iw":"6570.42511771",
        \t"ps":"SHORT"
       }
      ]
    }
}"""

DOC_ORDER_TRADE_UPDATE = b"""{
  "e":"ORDER_TRADE_UPDATE",
  "E":1568879465651,
  "T":1568879465650,
  "o":{
    "s":"BTCUSDT",
    "c":"TEST",
    "S":"SELL",
    "o":"TRAILING_STOP_MARKET",
    "f":"GTC",
    "q":"0.001",
    "p":"0",
    "ap":"0",
    "sp":"7103.04",
    "x":"NEW",
    "X":"NEW",
    "i":8886774,
    "l":"0",
    "z":"0",
    "L":"0",
    "N": "USDT",
    "n": "0",
    "T":1568879465650,
    "t":0,
    "b":"0",
    "a":"9.91",
    "m": false,
    "R":false,
    "wt": "CONTRACT_PRICE",
    "ot": "TRAILING_STOP_MARKET",
    "ps":"LONG",
    "cp":false,
    "AP":"7476.89",
    "cr":"5.0",
    "pP": false,
    "si": 0,
    "ss": 0,
    "rp":"0",
    "V":"EXPIRE_TAKER",
    "pm":"OPPONENT",
    "gtd":0,
    "er":"0"
  }
}"""

# Verbatim except the outer closing brace, which the documentation page omits.
DOC_ALGO_UPDATE = b"""{
  "e":"ALGO_UPDATE",
  "T":1750515742297,
  "E":1750515742303,
  "o":{
    "caid":"Q5xaq5EGKgXXa0fD7fs0Ip",
    "aid":2148719,
    "at":"CONDITIONAL",
    "o":"TAKE_PROFIT",
    "s":"BNBUSDT",
    "S":"SELL",
    "ps":"BOTH",
    "f":"GTC",
    "q":"0.01",
    "X":"CANCELED",
    "ai":"",
    "ap": "0.00000",
    "aq": "0.00000",
    "act": "0",
    "tp":"750",
    "p":"750",
    "V":"EXPIRE_MAKER",
    "wt":"CONTRACT_PRICE",
    "pm":"NONE",
    "cp":false,
    "pP":false,
    "R":false,
    "tt":0,
    "gtd":0,
    "rm": "Reduce Only reject"
  }
}"""

DOC_CONFIG_LEVERAGE = b"""{
    "e":"ACCOUNT_CONFIG_UPDATE",
    "E":1611646737479,
    "T":1611646737476,
    "ac":{
    "s":"BTCUSDT",
    "l":25
    }
}"""

DOC_CONFIG_MULTI_ASSETS = b"""{
    "e":"ACCOUNT_CONFIG_UPDATE",
    "E":1611646737479,
    "T":1611646737476,
    "ai":{
    "j":true
    }
}"""

DOC_LISTEN_KEY_EXPIRED = b"""{
    "e": "listenKeyExpired",
    "E": "1736996475556",
    "listenKey":"WsCMN0a4KHUPTQuX6IUnqEZfB1inxmv1qR4kbf1LuEjur5VdbzqvyxqG9TSjVVxv"
}"""


def compact(raw: bytes) -> bytes:
    """The same message as Binance puts it on the wire (no whitespace)."""
    return orjson.dumps(orjson.loads(raw))


def wrapped(raw: bytes, stream: str = "bnbusdt@kline_1m") -> bytes:
    return b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"


def mutate(
    raw: bytes, path: tuple[str, ...], value: object = ..., *, delete: bool = False
) -> bytes:
    """Copy of a JSON message with one field replaced or removed."""
    doc = orjson.loads(raw)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(doc).encode()


# ---- klines --------------------------------------------------------------------------------


def test_documented_kline_decodes_to_documented_values() -> None:
    ev = msgspec.json.decode(DOC_KLINE, type=KlineEvent, strict=False)
    assert (ev.e, ev.E, ev.s) == ("kline", 123456789, "BNBUSDT")
    k = ev.k
    assert (k.t, k.T, k.s, k.i, k.f, k.L, k.n, k.x, k.B) == (
        123400000, 123460000, "BNBUSDT", "1m", 100, 200, 100, False, "123456",
    )  # fmt: skip
    assert (k.o, k.c, k.h, k.l, k.v, k.q, k.V, k.Q) == (
        0.001, 0.002, 0.0025, 0.0015, 1000.0, 1.0, 500.0, 0.5,
    )  # fmt: skip


def test_documented_kline_is_rejected_for_its_low_above_open() -> None:
    with pytest.raises(MessageError) as err:
        parse_kline_message(DOC_KLINE)
    assert err.value.reason == "low above open/close"
    assert err.value.raw_excerpt.startswith('{\n  "e": "kline"')


@pytest.mark.parametrize(
    "raw",
    [DOC_KLINE_FIXED, compact(DOC_KLINE_FIXED), wrapped(compact(DOC_KLINE_FIXED)),
     DOC_KLINE_FIXED.decode(), orjson.loads(DOC_KLINE_FIXED),
     {"stream": "bnbusdt@kline_1m", "data": orjson.loads(DOC_KLINE_FIXED)}],
    ids=["doc", "compact", "combined", "str", "dict", "combined-dict"],
)  # fmt: skip
def test_kline_parses_in_every_form(raw: object) -> None:
    ev = parse_kline_message(raw)  # type: ignore[arg-type]
    assert ev.s == "BNBUSDT" and ev.E == 123456789
    assert (ev.k.o, ev.k.h, ev.k.l, ev.k.c) == (0.001, 0.0025, 0.001, 0.002)
    assert ev.k.x is False


GOOD = compact(DOC_KLINE_FIXED)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (mutate(GOOD, ("k", "o"), delete=True), "o"),
        (mutate(GOOD, ("k",), delete=True), "k"),
        (mutate(GOOD, ("E",), delete=True), "E"),
        (mutate(GOOD, ("k", "x"), delete=True), "x"),
        (mutate(GOOD, ("k", "c"), "NaN"), "price"),
        (mutate(GOOD, ("k", "h"), "inf"), "price"),
        (mutate(GOOD, ("k", "v"), "nan"), "volume"),
        (mutate(GOOD, ("k", "q"), "-1"), "volume"),
        (mutate(GOOD, ("k", "l"), "0"), "price"),
        (mutate(GOOD, ("k", "o"), "-0.001"), "price"),
        (mutate(GOOD, ("k", "h"), "0.0005"), "high < low"),
        (mutate(GOOD, ("k", "l"), "0.0030"), "high < low"),
        (mutate(GOOD, ("k", "c"), "0.0030"), "high below open/close"),
        (mutate(GOOD, ("k", "l"), "0.0015"), "low above open/close"),
        (mutate(GOOD, ("e",), "24hrTicker"), "unknown event type"),
        (mutate(GOOD, ("s",), "bnbusdt"), "wrong symbol"),
        (mutate(GOOD, ("s",), "BNB-USDT"), "wrong symbol"),
        (mutate(GOOD, ("k", "s"), "ETHUSDT"), "differs"),
        (mutate(GOOD, ("k", "i"), "7m"), "interval"),
        (mutate(GOOD, ("k", "T"), 123400000), "close time"),
        (mutate(GOOD, ("k", "t"), "abc"), "`int`"),
        (mutate(GOOD, ("k", "x"), "maybe"), "`bool`"),
        (mutate(GOOD, ("k", "o"), {"v": 1}), "`float`"),
        (mutate(GOOD, ("k",), []), "object"),
        (mutate(GOOD, ("k", "n"), 1.5), "int"),
        (b"\xff\xfe\x00garbage", "malformed"),
        (b"", "truncated"),
        (b"[1, 2, 3]", "object"),
        (b'{"result":null,"id":1}', "missing"),
        (GOOD[:-10], "truncated"),
    ],
)
def test_broken_klines_raise_message_error(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        parse_kline_message(raw)
    assert reason in err.value.reason
    assert len(err.value.raw_excerpt) <= 200


@pytest.mark.parametrize("raw", [None, 42, 1.5, ["x"], {"data": 5}, {"e": "kline"}])
def test_non_messages_raise_message_error(raw: object) -> None:
    with pytest.raises(MessageError):
        parse_kline_message(raw)  # type: ignore[arg-type]


def test_fast_path_closed_and_open() -> None:
    closed = GOOD.replace(b'"x":false', b'"x":true')
    assert is_closed_kline_fast(closed) and is_closed_kline_fast(wrapped(closed))
    assert is_closed_kline_fast(closed.decode())
    assert is_closed_kline_fast(DOC_KLINE.replace(b'"x": false', b'"x": true'))
    assert not is_closed_kline_fast(GOOD) and not is_closed_kline_fast(DOC_KLINE)
    assert parse_kline_message(closed).k.x is True
    assert last_price(GOOD) == 0.002 == last_price(DOC_KLINE) == last_price(wrapped(GOOD))
    assert last_price(GOOD.decode()) == 0.002
    assert price_tick(wrapped(closed)) == PriceTick("BNBUSDT", 0.002, 123456789, True)
    assert price_tick(GOOD) == PriceTick("BNBUSDT", 0.002, 123456789, False)


@pytest.mark.parametrize(
    "raw",
    [mutate(GOOD, ("k", "c"), "NaN"), mutate(GOOD, ("k", "c"), "0"), mutate(GOOD, ("k", "c"), "x"),
     mutate(GOOD, ("k", "c"), "-2"), mutate(GOOD, ("k", "c"), delete=True), b"", b"\xff"],
)  # fmt: skip
def test_fast_path_rejects_bad_prices(raw: bytes) -> None:
    with pytest.raises(MessageError):
        last_price(raw)
    with pytest.raises(MessageError):
        price_tick(raw)


PRICE = st.decimals(min_value="0.00000001", max_value="999999", places=8)


@settings(max_examples=150, deadline=None)
@given(prices=st.lists(PRICE, min_size=4, max_size=4), closed=st.booleans(),
       vol=st.decimals(min_value=0, max_value="1e9", places=3), n=st.integers(0, 10**6))  # fmt: skip
def test_any_consistent_kline_round_trips(
    prices: list[Decimal], closed: bool, vol: Decimal, n: int
) -> None:
    low, a, b, high = sorted(prices)
    body = {"t": 1_700_000_000_000, "T": 1_700_000_059_999, "s": "ETHUSDT", "i": "1m",
            "f": 1, "L": 2, "o": str(a), "c": str(b), "h": str(high), "l": str(low),
            "v": str(vol), "n": n, "x": closed, "q": "0", "V": "0", "Q": "0", "B": "0"}  # fmt: skip
    raw = orjson.dumps({"e": "kline", "E": 1_700_000_060_000, "s": "ETHUSDT", "k": body})
    ev = parse_kline_message(raw)
    assert (ev.k.o, ev.k.c, ev.k.h, ev.k.l) == (float(a), float(b), float(high), float(low))
    assert Decimal(repr(ev.k.c)) == b  # the exact exchange decimal comes back
    assert is_closed_kline_fast(raw) is closed is ev.k.x
    assert last_price(raw) == float(b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.sampled_from([GOOD, DOC_ACCOUNT_UPDATE]).flatmap(
    lambda m: st.integers(0, len(m)).map(lambda i: m[:i] + b"}" + m[i + 1 :])))  # fmt: skip
def test_fuzzed_bytes_only_ever_raise_message_error(raw: bytes) -> None:
    for parse in (parse_kline_message, parse_user_event, last_price, price_tick):
        try:
            parse(raw)
        except MessageError:
            pass


# ---- user data -----------------------------------------------------------------------------


def test_account_update_documented_values() -> None:
    ev = parse_user_event(DOC_ACCOUNT_UPDATE)
    assert isinstance(ev, AccountUpdateEvent)
    assert (ev.e, ev.E, ev.T, ev.a.m) == ("ACCOUNT_UPDATE", 1564745798939, 1564745798938, "ORDER")
    usdt, busd = ev.a.B
    assert (usdt.a, usdt.wb, usdt.cw, usdt.bc) == (
        "USDT", Decimal("122624.12345678"), Decimal("100.12345678"), Decimal("50.12345678"),
    )  # fmt: skip
    assert (busd.a, busd.bc) == ("BUSD", Decimal("-49.12345678"))
    both, long, short = ev.a.P
    assert (both.s, both.pa, both.cr, both.mt, both.ps) == (
        "BTCUSDT", 0, Decimal(200), "isolated", "BOTH",
    )  # fmt: skip
    assert (long.pa, long.ep, long.bep, long.up, long.iw, long.ps) == (
        Decimal(20), Decimal("6563.66500"), Decimal("6563.6"), Decimal("2850.21200"),
        Decimal("13200.70726908"), "LONG",
    )  # fmt: skip
    assert (short.pa, short.cr, short.up, short.ps) == (
        Decimal(-10), Decimal("-45.04"), Decimal("-1423.156"), "SHORT",
    )  # fmt: skip


def test_order_trade_update_documented_values() -> None:
    ev = parse_user_event(DOC_ORDER_TRADE_UPDATE)
    assert isinstance(ev, OrderTradeUpdateEvent)
    o = ev.o
    assert (ev.E, ev.T) == (1568879465651, 1568879465650)
    assert (o.s, o.c, o.S, o.o, o.f, o.x, o.X, o.i, o.ot, o.ps) == (
        "BTCUSDT", "TEST", "SELL", "TRAILING_STOP_MARKET", "GTC", "NEW", "NEW", 8886774,
        "TRAILING_STOP_MARKET", "LONG",
    )  # fmt: skip
    assert (o.q, o.p, o.ap, o.sp, o.l, o.z, o.L, o.n, o.b, o.a, o.rp) == (
        Decimal("0.001"), 0, 0, Decimal("7103.04"), 0, 0, 0, 0, 0, Decimal("9.91"), 0,
    )  # fmt: skip
    assert (o.N, o.T, o.t, o.m, o.R, o.wt, o.cp, o.AP, o.cr, o.pP) == (
        "USDT", 1568879465650, 0, False, False, "CONTRACT_PRICE", False, Decimal("7476.89"),
        Decimal("5.0"), False,
    )  # fmt: skip
    assert (o.si, o.ss, o.V, o.pm, o.gtd, o.er) == (0, 0, "EXPIRE_TAKER", "OPPONENT", 0, "0")


def test_algo_update_documented_values() -> None:
    ev = parse_user_event(DOC_ALGO_UPDATE)
    assert isinstance(ev, AlgoUpdateEvent)
    o = ev.o
    assert (ev.T, ev.E) == (1750515742297, 1750515742303)
    assert (o.caid, o.aid, o.at, o.o, o.s, o.S, o.ps, o.f, o.X) == (
        "Q5xaq5EGKgXXa0fD7fs0Ip", 2148719, "CONDITIONAL", "TAKE_PROFIT", "BNBUSDT", "SELL",
        "BOTH", "GTC", "CANCELED",
    )  # fmt: skip
    assert (o.q, o.ap, o.aq, o.tp, o.p) == (Decimal("0.01"), 0, 0, Decimal(750), Decimal(750))
    assert (o.ai, o.act, o.V, o.wt, o.pm, o.rm) == (
        "", "0", "EXPIRE_MAKER", "CONTRACT_PRICE", "NONE", "Reduce Only reject",
    )  # fmt: skip
    assert (o.cp, o.pP, o.R, o.tt, o.gtd) == (False, False, False, 0, 0)


def test_account_config_updates_documented_values() -> None:
    lev = parse_user_event(DOC_CONFIG_LEVERAGE)
    assert isinstance(lev, AccountConfigUpdateEvent)
    assert (lev.E, lev.T, lev.ac.s, lev.ac.l, lev.ai) == (  # type: ignore[union-attr]
        1611646737479, 1611646737476, "BTCUSDT", 25, None,
    )  # fmt: skip
    multi = parse_user_event(DOC_CONFIG_MULTI_ASSETS)
    assert isinstance(multi, AccountConfigUpdateEvent)
    assert multi.ac is None and multi.ai is not None and multi.ai.j is True


def test_listen_key_expired_with_string_time_and_masked_key() -> None:
    ev = parse_user_event(DOC_LISTEN_KEY_EXPIRED)
    assert isinstance(ev, ListenKeyExpiredEvent)
    assert ev.E == 1736996475556
    assert ev.listenKey.startswith("WsCMN0a4")
    assert "WsCMN0a4" not in repr(ev) and "WsCMN0a4" not in str(ev)


ALL_USER_DOCS = [DOC_ACCOUNT_UPDATE, DOC_ORDER_TRADE_UPDATE, DOC_ALGO_UPDATE, DOC_CONFIG_LEVERAGE,
                 DOC_CONFIG_MULTI_ASSETS, DOC_LISTEN_KEY_EXPIRED]  # fmt: skip


@pytest.mark.parametrize("raw", ALL_USER_DOCS)
def test_user_events_parse_from_bytes_str_dict_and_wrapper(raw: bytes) -> None:
    expected = parse_user_event(raw)
    assert parse_user_event(compact(raw)) == expected
    assert parse_user_event(raw.decode()) == expected
    assert parse_user_event(orjson.loads(raw)) == expected
    assert parse_user_event(wrapped(compact(raw), "listenkey")) == expected
    assert parse_user_event({"stream": "listenkey", "data": orjson.loads(raw)}) == expected


OTU = compact(DOC_ORDER_TRADE_UPDATE)
AU = compact(DOC_ACCOUNT_UPDATE)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"e":"SOMETHING_NEW","E":1}', "unknown event type"),
        (b'{"E":1}', "unknown event type"),
        (b'{"e":5,"E":1}', "`$.e`"),
        (mutate(OTU, ("o",), delete=True), "`o`"),
        (mutate(OTU, ("o", "q"), delete=True), "`q`"),
        (mutate(OTU, ("o", "q"), "NaN"), "not finite"),
        (mutate(OTU, ("o", "p"), "-1"), "must be >= 0"),
        (mutate(OTU, ("o", "ap"), "Infinity"), "not finite"),
        (mutate(OTU, ("o", "S"), "HOLD"), "side"),
        (mutate(OTU, ("o", "s"), "btcusdt"), "symbol"),
        (mutate(OTU, ("o", "i"), "abc"), "`int`"),
        (mutate(OTU, ("o", "q"), "abc"), "decimal"),
        (mutate(OTU, ("E",), 0), "event time"),
        (mutate(AU, ("a", "P", 0, "mt"), "weird"), "position entry"),
        (mutate(AU, ("a", "P", 0, "ps"), "UP"), "position entry"),
        (mutate(AU, ("a", "P", 1, "ep"), "-5"), "must be >= 0"),
        (mutate(AU, ("a", "B", 0, "wb"), "NaN"), "not finite"),
        (mutate(AU, ("a", "B"), "x"), "array"),
        (mutate(AU, ("a", "B", 0, "a"), delete=True), "`a`"),
        (mutate(compact(DOC_CONFIG_LEVERAGE), ("ac",), delete=True), "without"),
        (mutate(compact(DOC_CONFIG_LEVERAGE), ("ac", "l"), 0), "leverage"),
        (mutate(compact(DOC_CONFIG_LEVERAGE), ("ac", "s"), "x"), "leverage"),
        (mutate(compact(DOC_LISTEN_KEY_EXPIRED), ("E",), "soon"), "`int`"),
        (b"not json at all", "malformed"),
        (b"", "truncated"),
    ],
)
def test_broken_user_events_raise_message_error(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        parse_user_event(raw)
    assert reason in err.value.reason
    assert not err.value.ignorable


def test_documented_events_we_do_not_model_are_ignorable() -> None:
    with pytest.raises(MessageError) as err:
        parse_user_event(b'{"e":"TRADE_LITE","E":1,"T":1,"s":"BTCUSDT"}')
    assert err.value.ignorable and "TRADE_LITE" in err.value.reason


@pytest.mark.parametrize("raw", [None, 3, [1], {"e": "ORDER_TRADE_UPDATE"}, {"data": {}}])
def test_user_non_messages_raise_message_error(raw: object) -> None:
    with pytest.raises(MessageError):
        parse_user_event(raw)  # type: ignore[arg-type]
