"""Bus payload codec: plain fields + msgpack `data`, Decimals restored exactly."""

from __future__ import annotations

from decimal import Decimal

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec import (
    SCHEMA_VERSION,
    EventMeta,
    decode_event,
    encode_event,
    pack,
    packer,
    unpack,
)
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import Kline, Position
from tests.test_models import doc_kline

DECIMALS = st.decimals(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [
        Decimal("0E-8"),
        Decimal("-0"),
        Decimal("1.10"),
        Decimal("1E+3"),
        Decimal("123456789.123456789"),
    ]
)
LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | DECIMALS | st.text(max_size=10)
    | st.binary(max_size=10) | st.floats(allow_nan=False)
)  # fmt: skip
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
DATA = st.dictionaries(st.text(max_size=8), VALUES, max_size=6)


def same(a: object, b: object) -> bool:
    """Equal, and every Decimal has the same digits and exponent (not only the same value)."""
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(
    DATA,
    st.none() | st.from_regex(r"[A-Z]{3,10}", fullmatch=True),
    st.none() | st.integers(0, 2**50),
)
def test_encode_decode_round_trip_is_exact(
    data: dict, symbol: str | None, event_time: int | None
) -> None:
    fields = encode_event("test", data, symbol=symbol, event_time=event_time)
    assert all(isinstance(v, str) for k, v in fields.items() if k != "data")
    assert isinstance(fields["data"], bytes)
    event_type, out, meta = decode_event(fields)
    assert event_type == "test" and same(data, out)
    assert meta == EventMeta(symbol or None, event_time, SCHEMA_VERSION)
    # the same with bytes keys and values, as redis-py returns them
    as_bytes = {k.encode(): (v if isinstance(v, bytes) else v.encode()) for k, v in fields.items()}
    assert same(decode_event(as_bytes)[1], data)


def test_plain_fields_are_human_readable() -> None:
    k = doc_kline()
    fields = encode_event("kline", k.to_dict(), symbol=k.symbol, event_time=k.event_time)
    assert {key: fields[key] for key in ("type", "symbol", "event_time", "v")} == {
        "type": "kline", "symbol": "BNBUSDT", "event_time": "123456789", "v": str(SCHEMA_VERSION),
    }  # fmt: skip
    assert Kline.from_dict(decode_event(fields)[1]) == k


def test_decimal_travels_as_its_string() -> None:
    raw = pack({"p": Decimal("0.00100")})
    assert b"0.00100" in raw
    assert str(unpack(raw)["p"]) == "0.00100"


async def test_round_trip_through_a_real_redis_stream(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_account
    pos = Position("BTCUSDT", Decimal("-0.010"), Decimal("30000.5"), Decimal("30001.1"),
                   Decimal("-1.25"), "cross", Decimal("0"), 10, 1_700_000_000_000)  # fmt: skip
    fields = encode_event("position", pos.to_dict(), symbol=pos.symbol, event_time=pos.updated_at)
    await redis_client.xadd(stream, fields, maxlen=1000, approximate=True)  # type: ignore[arg-type]
    [(_, stored)] = await redis_client.xrange(stream)
    assert stored[b"type"] == b"position" and stored[b"symbol"] == b"BTCUSDT"
    event_type, data, meta = decode_event(stored)
    assert event_type == "position" and meta.event_time == 1_700_000_000_000
    assert Position.from_dict(data) == pos and str(data["size"]) == "-0.010"


def good() -> dict:
    return encode_event("kline", {"a": 1}, symbol="BTCUSDT", event_time=5)


@pytest.mark.parametrize(
    "fields",
    [
        {k: v for k, v in good().items() if k != "type"},
        {k: v for k, v in good().items() if k != "data"},
        {k: v for k, v in good().items() if k != "v"},
        good() | {"v": str(SCHEMA_VERSION + 1)},
        good() | {"v": "0"},
        good() | {"v": "one"},
        good() | {"event_time": "yesterday"},
        good() | {"data": b"\xc1"},
        good() | {"data": b"\x92\x01"},
        good() | {"data": msgpack.packb([1, 2])},
        good() | {"data": msgpack.packb({"a": msgpack.ExtType(1, b"not-a-number")})},
        good() | {"data": msgpack.packb({"a": msgpack.ExtType(9, b"x")})},
        good() | {"data": "a string"},
        good() | {"type": b"\xff\xfe"},
        "not a mapping",
    ],
)
def test_broken_entries_raise_message_error(fields: object) -> None:
    with pytest.raises(MessageError):
        decode_event(fields)  # type: ignore[arg-type]


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode_event("x", {"a": object()})
    with pytest.raises(ValueError):
        encode_event("", {})
    with pytest.raises(TypeError):
        encode_event("x", [1])  # type: ignore[arg-type]
    # domain records nested in data are carried as their to_dict()
    _, data, _ = decode_event(encode_event("k", {"kline": doc_kline()}))
    assert Kline.from_dict(data["kline"]) == doc_kline()


def _bytes(fields: dict) -> dict:
    return {k.encode(): (v if isinstance(v, bytes) else v.encode()) for k, v in fields.items()}


def _outcome(fields: dict) -> object:
    try:
        return decode_event(fields)
    except MessageError as exc:
        return ("MessageError", exc.reason)


@pytest.mark.parametrize(
    "fields",
    [good(), good() | {"event_time": ""}, good() | {"symbol": ""}, good() | {"type": ""},
     good() | {"v": str(SCHEMA_VERSION + 1)}, good() | {"v": "0"}, good() | {"v": "01"},
     good() | {"v": "one"}, good() | {"event_time": "yesterday"}, good() | {"event_time": " 7 "},
     good() | {"data": b"\xc1"}, good() | {"data": msgpack.packb([1, 2])},
     good() | {"data": msgpack.packb({"a": msgpack.ExtType(9, b"x")})},
     good() | {"type": b"\xff\xfe"}, good() | {"symbol": b"\xff"},
     good() | {"event_time": b"\xff"}],
)  # fmt: skip
def test_redis_shaped_entries_decode_as_the_field_by_field_checks_do(fields: dict) -> None:
    """Five bytes fields (what Redis returns) take the short path in decode_event; an
    extra field forces the general checks.  Same result or same error either way."""
    short = _bytes(fields)
    general = short | {b"extra": b"1"}
    assert _outcome(short) == _outcome(general)


@settings(max_examples=100, deadline=None)
@given(DATA, st.from_regex(r"[A-Z]{3,10}", fullmatch=True), st.integers(0, 2**50))
def test_short_path_round_trip(data: dict, symbol: str, event_time: int) -> None:
    short = _bytes(encode_event("t", data, symbol=symbol, event_time=event_time))
    event_type, out, meta = decode_event(short)
    assert event_type == "t" and same(data, out) and meta == EventMeta(symbol, event_time, 1)
    assert _outcome(short) == _outcome(short | {b"extra": b"1"})


@settings(max_examples=100, deadline=None)
@given(st.lists(DATA, max_size=5))
def test_a_reused_packer_gives_packs_bytes(datas: list[dict]) -> None:
    p = packer()
    assert [p.pack(d) for d in datas] == [pack(d) for d in datas]
