"""shared/kline_publisher.py against a real Redis: the exactly-once script, its batch
form, racing publishers, the cache format, and REST rows -> closed klines."""

from __future__ import annotations

import asyncio
from dataclasses import astuple, replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.exchange_sim.server import SimConfig, SimServer
from shared.binance.client import BinanceClient
from shared.binance.schemas import parse_kline_message
from shared.codec import decode_event, encode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.kline_encoding import KlineRow, _cache_values_slow, cache_values, event_data
from shared.kline_publisher import (
    CACHE_FIELDS,
    STREAM_FIELDS,
    Backfiller,
    KlinePublisher,
    closed_rest_klines,
    get_cached_kline,
    get_price,
    interval_ms,
    kline_entry,
)
from shared.models import Kline

IV = 60_000
T0 = 1_700_000_040_000 // IV * IV


def kline(symbol: str = "BTCUSDT", t: int = T0, close: float = 100.5, **kw: Any) -> Kline:
    base = Kline(symbol, "1m", t, t + IV - 1, 100.0, 101.5, 99.25, close, 12.5, 1250.75, 33,
                 6.0, 600.0, True, t + IV + 5, t + IV + 7)  # fmt: skip
    return replace(base, **kw) if kw else base


def pub(redis_client: aioredis.Redis, prefix: str, maxlen: int = 1000) -> KlinePublisher:
    return KlinePublisher(redis_client, Keys(prefix), maxlen)


async def stream(redis_client: aioredis.Redis, prefix: str) -> list[tuple[str, int]]:
    out = []
    for _, f in await redis_client.xrange(Keys(prefix).stream_klines):
        _, data, meta = decode_event(f)
        out.append((meta.symbol, data["open_time"]))
    return out


async def test_publishes_once_and_rejects_older_or_equal(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    p = pub(redis_client, prefix)
    first = await p.publish(kline())
    assert first.published and first.last_open == T0
    again = await p.publish(kline(close=100.0))  # same identity, other content
    assert not again.published and again.last_open == T0
    older = await p.publish(kline(t=T0 - IV))
    assert not older.published and older.last_open == T0
    nxt = await p.publish(kline(t=T0 + IV))
    assert nxt.published and nxt.last_open == T0 + IV
    assert await stream(redis_client, prefix) == [("BTCUSDT", T0), ("BTCUSDT", T0 + IV)]
    cached = await get_cached_kline(redis_client, Keys(prefix), "BTCUSDT")
    assert cached == kline(t=T0 + IV)
    assert await p.last_open_times(["BTCUSDT", "ETHUSDT"]) == {"BTCUSDT": T0 + IV, "ETHUSDT": None}


async def test_stream_entry_is_the_bus_format(redis_client: aioredis.Redis, prefix: str) -> None:
    k = kline()
    await pub(redis_client, prefix).publish(k)
    (_, fields), = await redis_client.xrange(Keys(prefix).stream_klines)  # fmt: skip
    kind, data, meta = decode_event(fields)
    assert kind == "kline" and meta.symbol == "BTCUSDT" and meta.event_time == k.event_time
    assert Kline.from_dict(data) == k
    cache = await redis_client.hgetall(Keys(prefix).kline("BTCUSDT"))
    assert cache[b"close"] == b"100.5" and cache[b"timestamp"] == str(T0).encode()


async def test_batch_mixes_symbols_duplicates_and_order(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    p = pub(redis_client, prefix)
    batch = [kline("BTCUSDT", T0), kline("ETHUSDT", T0), kline("BTCUSDT", T0 + IV),
             kline("BTCUSDT", T0), kline("ETHUSDT", T0 + IV), kline("ETHUSDT", T0 + IV)]  # fmt: skip
    res = await p.publish_many(batch)
    assert [r.published for r in res] == [True, True, True, False, True, False]
    assert [r.last_open for r in res] == [T0, T0, T0 + IV, T0 + IV, T0 + IV, T0 + IV]
    many = [kline(f"S{i}USDT", T0 + IV * j) for j in range(2) for i in range(300)]  # > BATCH
    assert all(r.published for r in await p.publish_many(many))
    assert len(await stream(redis_client, prefix)) == 4 + 600


async def test_racing_publishers_write_each_kline_once(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Four clients (four connections) offer the same 50 minutes of 4 symbols at once."""
    clients = [aioredis.from_url(redis_url) for _ in range(4)]
    try:
        pubs = [pub(c, prefix) for c in clients]
        series = [kline(s, T0 + IV * m) for m in range(50) for s in ("A1", "B2", "C3", "D4")]
        results = await asyncio.gather(*(p.publish_many(series) for p in pubs))
    finally:
        for c in clients:
            await c.aclose()
    published = sum(r.published for rs in results for r in rs)
    assert published == len(series)
    got = await stream(redis_client, prefix)
    assert len(got) == len(series) == len(set(got))
    for s in ("A1", "B2", "C3", "D4"):
        assert [t for sym, t in got if sym == s] == [T0 + IV * m for m in range(50)]


async def test_stream_is_trimmed(redis_client: aioredis.Redis, prefix: str) -> None:
    p = pub(redis_client, prefix, maxlen=100)
    await p.publish_many([kline("BTCUSDT", T0 + IV * m) for m in range(1000)])
    assert await redis_client.xlen(Keys(prefix).stream_klines) < 300


finite = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(o=finite, c=finite, spread=finite, v=finite, n=st.integers(0, 10**9),
       t=st.integers(0, 10**13), closed=st.booleans())  # fmt: skip
def test_fast_entry_equals_the_models_own_encoding(
    o: float, c: float, spread: float, v: float, n: int, t: int, closed: bool
) -> None:
    lo, hi = min(o, c), max(o, c) + spread
    k = Kline("BTCUSDT", "1m", t, t + IV - 1, o, hi, lo, c, v, v * o, n, v / 2, v * o / 2,
              closed, t + IV, t + IV + 3)  # fmt: skip
    cache, fields = kline_entry(k)
    assert dict(zip(CACHE_FIELDS, cache, strict=True)) == k.to_cache_hash()
    want = encode_event("kline", k.to_dict(), symbol=k.symbol, event_time=k.event_time)
    assert dict(zip(STREAM_FIELDS, fields, strict=True)) == want
    assert Kline.from_cache_hash(k.to_cache_hash()) == k


wide = st.floats(min_value=1e-9, max_value=1e18, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(o=wide, c=wide, spread=wide, v=wide | st.just(0.0), n=st.integers(0, 10**9))
def test_fast_values_equal_the_slow_path_on_every_range(
    o: float, c: float, spread: float, v: float, n: int
) -> None:
    """The JSON-formatted fast path must fall back wherever repr would write an exponent
    (below 1e-4, from 1e16): both paths give the same text and bytes."""
    lo, hi = min(o, c), max(o, c) + spread
    k = Kline("BTCUSDT", "1m", T0, T0 + IV - 1, o, hi, lo, c, v, v * o, n, v / 2, v * o / 2,
              True, T0 + IV, T0 + IV + 3)  # fmt: skip
    fast = [x.decode() if isinstance(x, bytes) else x for x in cache_values(k)]
    slow = _cache_values_slow(k)
    assert fast == slow
    row = KlineRow(*astuple(k))  # the feed's twin: the same text and bytes, both ways back
    assert cache_values(row) == cache_values(k) and _cache_values_slow(row) == slow
    assert event_data(row) == event_data(k)
    assert row.to_kline() == k
    for x in (1e-5, 9.9e-5, 1.0000001e-4, 1e16, 123456789.0):
        k2 = replace(k, open=x, high=max(x, hi), low=min(x, lo))
        assert dict(zip(CACHE_FIELDS, kline_entry(k2)[0], strict=True)) == k2.to_cache_hash()


def test_kline_row_from_an_event_is_the_kline_from_it() -> None:
    raw = orjson.dumps({"stream": "btcusdt@kline_1m", "data": {
        "e": "kline", "E": T0 + IV + 5, "s": "BTCUSDT", "k": {
            "t": T0, "T": T0 + IV - 1, "s": "BTCUSDT", "i": "1m", "f": 1, "L": 9, "o": "100.10",
            "c": "100.60", "h": "101.10", "l": "99.10", "v": "12.500", "n": 9, "x": True,
            "q": "1250.5000", "V": "6.000", "Q": "600.2500", "B": "0"}}})  # fmt: skip
    ev = parse_kline_message(raw)
    row, k = KlineRow.from_event(ev, T0 + IV + 9), Kline.from_event(ev, T0 + IV + 9)
    assert row.to_kline() == k and cache_values(row) == cache_values(k)
    assert event_data(row) == event_data(k)


async def test_the_guard_hash_holds_the_last_published_open_time(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    p = pub(redis_client, prefix)
    await p.publish_many([kline(t=T0), kline("ETHUSDT", T0 + IV)])
    assert await redis_client.hgetall(keys.klines_last_published) == {
        b"BTCUSDT": str(T0).encode(), b"ETHUSDT": str(T0 + IV).encode(),
    }  # fmt: skip
    assert await redis_client.hget(keys.kline("BTCUSDT"), "open_time") == str(T0).encode()
    assert await p.last_open_times(["BTCUSDT", "ETHUSDT", "SOLUSDT"]) == {
        "BTCUSDT": T0, "ETHUSDT": T0 + IV, "SOLUSDT": None,
    }  # fmt: skip
    assert not await redis_client.exists(f"{prefix}kline:last_open_time")  # the oldest hash


async def test_an_upgraded_deployment_keeps_exactly_once_from_the_cache_hash(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """Before the guard hash, the cache hash's `open_time` was the guard: a symbol with no
    guard field is judged by it, so the first kline offered after an upgrade is not
    published a second time, and the next one is refused unless it follows."""
    keys = Keys(prefix)
    await redis_client.hset(keys.kline("BTCUSDT"), mapping=kline(t=T0 + IV).to_cache_hash())
    p = pub(redis_client, prefix)
    assert await p.last_open_times(["BTCUSDT"]) == {"BTCUSDT": T0 + IV}
    res = await p.publish_many([kline(t=T0), kline(t=T0 + IV), kline(t=T0 + 2 * IV)])
    assert [r.published for r in res] == [False, False, True]
    assert await stream(redis_client, prefix) == [("BTCUSDT", T0 + 2 * IV)]
    assert (
        await redis_client.hget(keys.klines_last_published, "BTCUSDT") == str(T0 + 2 * IV).encode()
    )


async def test_the_cache_never_goes_back_and_follows_the_stream(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """The cache script writes a hash only with a newer kline: an older one offered
    later (a late backfill, a second instance) leaves it alone."""
    keys = Keys(prefix)
    p = pub(redis_client, prefix)
    await p.load_script()
    newer, older = kline(t=T0 + IV, close=101.0), kline(t=T0, close=100.0)
    await redis_client.execute_command(*p.cache_args([newer]))
    assert await redis_client.execute_command(*p.cache_args([older])) == 0
    assert await get_cached_kline(redis_client, keys, "BTCUSDT") == newer
    await p.publish_many([kline(t=T0 + 2 * IV, close=101.25)])
    cached = await get_cached_kline(redis_client, keys, "BTCUSDT")
    assert cached is not None and cached.open_time == T0 + 2 * IV and cached.close == 101.25


async def test_get_price(redis_client: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    assert await get_price(redis_client, keys, "BTCUSDT") is None
    await redis_client.hset(keys.prices, "BTCUSDT", "65000.5")
    await redis_client.hset(keys.prices_updated, "BTCUSDT", 123)
    assert await get_price(redis_client, keys, "BTCUSDT") == (65000.5, 123)


def row(t: int, close: str = "100.5") -> list[Any]:
    return [t, "100.0", "101.5", "99.25", close, "12.5", t + IV - 1, "1250.75", 33, "6.0",
            "600.0", "0"]  # fmt: skip


def test_closed_rest_klines_needs_proof_of_closing() -> None:
    rows = [row(T0), row(T0 + IV), row(T0 + 2 * IV)]  # the last is the open candle
    got = closed_rest_klines("BTCUSDT", "1m", rows, proven_upto=None, received_ms=1, exchange_ms=2)
    assert [k.open_time for k in got] == [T0, T0 + IV]
    assert all(k.closed and k.event_time == 2 and k.received_time == 1 for k in got)
    proven = closed_rest_klines("BTCUSDT", "1m", rows, proven_upto=T0 + 2 * IV, received_ms=1,
                                exchange_ms=2)  # fmt: skip
    assert len(proven) == 3
    assert closed_rest_klines("BTCUSDT", "1m", [row(T0)], proven_upto=None, received_ms=1,
                              exchange_ms=2) == []  # fmt: skip
    with pytest.raises(MessageError):
        closed_rest_klines("BTCUSDT", "1m", [row(T0, "nan"), row(T0 + IV)], proven_upto=None,
                           received_ms=1, exchange_ms=2)  # fmt: skip
    with pytest.raises(MessageError):
        closed_rest_klines("BTCUSDT", "1m", [row(T0 + IV), row(T0), row(T0 + 2 * IV)],
                           proven_upto=None, received_ms=1, exchange_ms=2)  # fmt: skip


def test_interval_ms() -> None:
    assert interval_ms("1m") == 60_000 and interval_ms("4h") == 4 * 3_600_000
    for bad in ("1M", "m", "0m", "1x", ""):
        with pytest.raises(ValueError):
            interval_ms(bad)


async def test_backfiller_against_the_simulator(redis_client: aioredis.Redis, prefix: str) -> None:
    """REST rows through the shared client into the script: in order, once, closed only."""
    async with SimServer(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), paused=True)) as sim:
        now = sim.clock.now_ms()
        open_t = now - now % IV  # the candle still open on the (paused) exchange
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                                  redis_prefix=prefix) as client:  # fmt: skip
            p = pub(redis_client, prefix, maxlen=10_000)
            bf = Backfiller(client, p, "1m")
            far = await bf.fill("BTCUSDT", open_t - 1400 * IV, upto=open_t - IV)
            assert far.requests == 1 and far.published == 1399 and far.complete
            again = await bf.fill("BTCUSDT", open_t - 10 * IV)  # a stale caller
            assert again.published == 0 and again.duplicates == 9 and again.complete
            fresh = await bf.fill("ETHUSDT", None)  # never published: the latest closed one
            assert fresh.published == 1 and fresh.last_open == open_t - IV
            not_yet = await bf.fill("BTCUSDT", open_t - IV, upto=open_t)
            assert not not_yet.complete and not_yet.published == 0
            rows = await client.klines("BTCUSDT", "1m", start_time=open_t - 1399 * IV, limit=1500)
        got = [t for sym, t in await stream(redis_client, prefix) if sym == "BTCUSDT"]
        assert got == [open_t - IV * m for m in range(1399, 0, -1)]
        assert [r[0] for r in rows[:-1]] == got and rows[-1][0] == open_t  # + the open one
        cached = await get_cached_kline(redis_client, Keys(prefix), "BTCUSDT")
        assert cached is not None and cached.close == float(rows[-2][4])
