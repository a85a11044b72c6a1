"""WebSocket protocol of the exchange simulator: market streams, user streams, limits.

Real simulator, real aiohttp WebSocket clients on 127.0.0.1. The clock is paused at a
fixed start and moved by hand (`step`), so each test knows exactly which events are due.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.exchange_sim.klines import Formatter
from services.exchange_sim.server import SimConfig, SimServer
from services.exchange_sim.specs import default_spec
from tests.test_sim_protocol import START, Rest

MIN = 60_000
# The documented kline event (USD-M "Kline/Candlestick Streams"), key for key.
KLINE_EVENT_KEYS = {"e", "E", "s", "k"}
KLINE_K_TYPES = {
    "t": int, "T": int, "s": str, "i": str, "f": int, "L": int, "o": str, "c": str, "h": str,
    "l": str, "v": str, "n": int, "x": bool, "q": str, "V": str, "Q": str, "B": str,
}  # fmt: skip
MARK_KEYS = {"e", "E", "s", "p", "i", "P", "r", "T"}


def config(**kw: Any) -> SimConfig:
    base = {"start_ms": START, "paused": True, "history_minutes": 30}
    base.update(kw)
    return SimConfig(**base)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(config()) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def step(sim: SimServer, ms: int) -> None:
    """Move simulated time forward and let every due event go out."""
    sim.admin.advance(ms)
    await sim.wait_until(sim.clock.now_ms())


async def drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.15) -> list[Any]:
    """Every text message until the socket is quiet for `quiet` seconds."""
    out = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return out
        if msg.type != aiohttp.WSMsgType.TEXT:
            return out
        out.append(orjson.loads(msg.data))


async def test_kline_event_key_for_key(sim: SimServer, session: aiohttp.ClientSession) -> None:
    spec = sim.specs["BTCUSDT"]
    async with session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m") as ws:
        await step(sim, MIN)
        events = await drain(ws)
    assert events, "no kline events"
    for ev in events:
        assert set(ev) == KLINE_EVENT_KEYS and ev["e"] == "kline" and ev["s"] == "BTCUSDT"
        k = ev["k"]
        assert {key: type(v) for key, v in k.items()} == KLINE_K_TYPES
        assert (k["s"], k["i"], k["B"], k["T"]) == ("BTCUSDT", "1m", "0", k["t"] + MIN - 1)
        for f in "ochl":
            assert len(k[f].split(".")[1]) == spec.price_precision
        assert len(k["v"].split(".")[1]) == spec.quantity_precision
        assert float(k["l"]) <= min(float(k["o"]), float(k["c"])) <= float(k["h"])
        assert k["L"] >= k["f"]


async def test_updates_per_minute_then_closing_kline(session: aiohttp.ClientSession) -> None:
    async with SimServer(config(updates_per_minute=6)) as sim:
        async with session.ws_connect(f"{sim.ws_url}/market/ws/ethusdt@kline_1m") as ws:
            await step(sim, 2 * MIN)
            events = await drain(ws)
    minute = [e for e in events if e["k"]["t"] == START + MIN]  # fully inside the window
    opens = [e for e in minute if not e["k"]["x"]]
    closes = [e for e in minute if e["k"]["x"]]
    assert len(opens) == 6 and len(closes) == 1
    assert closes[0]["E"] == START + 2 * MIN  # close_delay_ms=0: at the minute's end
    last, final = opens[-1]["k"], closes[0]["k"]
    assert {**last, "x": True} == final  # the last update already shows the whole bar
    assert [e["E"] for e in opens] == sorted(e["E"] for e in opens)


async def test_close_delay_latency_model(session: aiohttp.ClientSession) -> None:
    async with SimServer(config(close_delay_ms=2000)) as sim:
        async with session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m") as ws:
            await step(sim, MIN + 1999)
            early = [e for e in await drain(ws) if e["k"]["x"]]
            await step(sim, 1)
            late = [e for e in await drain(ws) if e["k"]["x"]]
    assert early == []
    assert [(e["k"]["t"], e["E"]) for e in late] == [(START, START + MIN + 2000)]


async def test_combined_wrapper_and_mark_price(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    url = f"{sim.ws_url}/market/stream?streams=btcusdt@kline_1m/ethusdt@markPrice@1s"
    async with session.ws_connect(url) as ws:
        await step(sim, 10_000)
        events = await drain(ws)
    assert events and all(set(e) == {"stream", "data"} for e in events)
    streams = {e["stream"] for e in events}
    assert streams == {"btcusdt@kline_1m", "ethusdt@markPrice@1s"}
    marks = [e["data"] for e in events if e["stream"] == "ethusdt@markPrice@1s"]
    assert [m["E"] for m in marks] == [START + k * 1000 for k in range(1, 11)]
    for m in marks:
        assert set(m) == MARK_KEYS and m["e"] == "markPriceUpdate" and m["s"] == "ETHUSDT"
        assert float(m["p"]) > 0
    klines = [e["data"] for e in events if e["stream"] == "btcusdt@kline_1m"]
    assert all(k["e"] == "kline" and k["s"] == "BTCUSDT" for k in klines)


async def test_live_subscribe_list_unsubscribe_properties(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/ws") as ws:
        await ws.send_str(
            '{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","ethusdt@kline_1m"],"id":1}'
        )
        assert await ws.receive_json(timeout=1) == {"result": None, "id": 1}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await ws.receive_json(timeout=1) == {
            "result": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": 3
        }  # fmt: skip
        await step(sim, 10_000)
        assert {e["s"] for e in await drain(ws)} == {"BTCUSDT", "ETHUSDT"}  # raw payloads
        await ws.send_str('{"method":"UNSUBSCRIBE","params":["ethusdt@kline_1m"],"id":312}')
        assert await ws.receive_json(timeout=1) == {"result": None, "id": 312}
        await ws.send_str('{"method":"SET_PROPERTY","params":["combined",true],"id":5}')
        assert await ws.receive_json(timeout=1) == {"result": None, "id": 5}
        await ws.send_str('{"method":"GET_PROPERTY","params":["combined"],"id":2}')
        assert await ws.receive_json(timeout=1) == {"result": True, "id": 2}
        await step(sim, 10_000)
        events = await drain(ws)
    assert events and {e["stream"] for e in events} == {"btcusdt@kline_1m"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", 3),
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"]}', 2),  # no id
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":-1}', 2),
        ('{"method":"PING","id":7}', 2),
        ('{"method":"SUBSCRIBE","params":"btcusdt@kline_1m","id":7}', 2),
    ],
)
async def test_control_message_errors(
    sim: SimServer, session: aiohttp.ClientSession, text: str, code: int
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/ws") as ws:
        await ws.send_str(text)
        reply = await ws.receive_json(timeout=1)
    assert set(reply) == {"error", "id"} and reply["error"]["code"] == code


async def test_stream_limit_per_connection(sim: SimServer, session: aiohttp.ClientSession) -> None:
    names = [f"s{i}usdt@kline_1m" for i in range(1025)]
    async with session.ws_connect(f"{sim.ws_url}/market/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": names[:1024], "id": 1})
        assert await ws.receive_json(timeout=2) == {"result": None, "id": 1}
        await ws.send_json({"method": "SUBSCRIBE", "params": names[1024:], "id": 2})
        reply = await ws.receive_json(timeout=2)
        assert reply["id"] == 2 and reply["error"]["code"] == 2
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await session.ws_connect(f"{sim.ws_url}/market/stream?streams=" + "/".join(names))
    assert err.value.status == 400


async def test_more_than_10_messages_per_second_disconnects(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/ws") as ws:
        for i in range(11):
            await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
        replies = []
        while True:
            msg = await ws.receive(timeout=2)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            replies.append(msg)
    assert len(replies) == 10 and ws.close_code == 1008
    assert sim.admin.state()["counters"]["ws"]["rate_limit_disconnects"] == 1


async def test_legacy_stream_carries_no_klines(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    url = f"{sim.ws_url}/stream?streams=btcusdt@kline_1m/btcusdt@markPrice@1s"
    async with session.ws_connect(url) as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["ethusdt@kline_1m"],"id":9}')
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":10}')
        await step(sim, MIN)
        events = await drain(ws)
    replies = [e for e in events if "id" in e]
    assert replies == [{"result": ["btcusdt@markPrice@1s"], "id": 10}]  # silence for id 9
    assert {e["stream"] for e in events if "stream" in e} == {"btcusdt@markPrice@1s"}
    # the legacy raw path and the routed path still carry klines
    for path in ("/ws/btcusdt@kline_1m", "/market/stream?streams=btcusdt@kline_1m"):
        async with session.ws_connect(sim.ws_url + path) as ws:
            await step(sim, 10_000)
            assert await drain(ws), path


async def test_legacy_kline_silence_can_be_switched_off(session: aiohttp.ClientSession) -> None:
    async with SimServer(config(legacy_kline_silence=False)) as sim:
        async with session.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@kline_1m") as ws:
            await step(sim, 10_000)
            events = await drain(ws)
    assert events and events[0]["stream"] == "btcusdt@kline_1m"


async def test_public_route_carries_no_market_streams(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/public/ws/btcusdt@kline_1m") as ws:
        await step(sim, MIN)
        assert await drain(ws) == []


async def test_consumer_stream_matches_the_simulator_record(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    url = f"{sim.ws_url}/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    async with session.ws_connect(url) as ws:
        await step(sim, 5 * MIN)
        events = await drain(ws)
        resp = await session.get(f"{sim.rest_url}/admin/closed_klines?symbol=ETHUSDT")
        record = await resp.json()
    got = [e["data"]["k"] for e in events if e["data"]["k"]["x"] and e["data"]["s"] == "ETHUSDT"]
    assert [k["t"] for k in got] == [START + i * MIN for i in range(5)]
    assert record == got  # emitted closed klines == the record, field for field
    rest = Rest(sim, session)
    _, rows, _ = await rest.call("GET", "/fapi/v1/klines", symbol="ETHUSDT", interval="1m",
                                 startTime=START, limit=5)  # fmt: skip
    assert [[r[0], *r[1:6]] for r in rows] == [
        [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"]] for k in got
    ]


async def test_server_ping_frames(session: aiohttp.ClientSession) -> None:
    async with SimServer(config(ping_interval_s=0.05)) as sim:
        async with session.ws_connect(f"{sim.ws_url}/market/ws", autoping=False) as ws:
            msg = await ws.receive(timeout=2)
            assert msg.type == aiohttp.WSMsgType.PING
            await ws.pong(msg.data)
        assert sim.admin.state()["counters"]["ws"]["pings_sent"] >= 1


async def test_connection_cut_after_24h_of_sim_time(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/ws") as ws:
        await step(sim, 24 * 3600 * 1000 - MIN)
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert (await ws.receive_json(timeout=2))["id"] == 1  # still open at 23:59
        await step(sim, MIN)
        msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert sim.admin.state()["counters"]["ws"]["cut_24h"] == 1


# ---- user data stream ---------------------------------------------------------------------
async def test_user_stream_events_then_expiry_then_silence(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    rest = Rest(sim, session)
    key = (await rest.call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    async with session.ws_connect(f"{sim.user_ws_url}/private/ws/{key}") as ws:
        await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT", side="BUY",
                        type="MARKET", quantity="0.010")  # fmt: skip
        events = await drain(ws)
        assert [e["e"] for e in events] == ["ORDER_TRADE_UPDATE", "ORDER_TRADE_UPDATE",
                                            "ACCOUNT_UPDATE"]  # fmt: skip
        await step(sim, 60 * MIN)
        expired = await drain(ws)
        assert expired == [{"e": "listenKeyExpired", "E": str(START + 60 * MIN), "listenKey": key}]
        await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT", side="SELL",
                        type="MARKET", quantity="0.010")  # fmt: skip
        assert await drain(ws) == []  # open but silent
        assert not ws.closed
    status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key)
    assert (status, body["code"]) == (400, -1125)


async def test_user_stream_paths(sim: SimServer, session: aiohttp.ClientSession) -> None:
    rest = Rest(sim, session)
    key = (await rest.call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    legacy = await session.ws_connect(f"{sim.ws_url}/ws/{key}")
    combined = await session.ws_connect(f"{sim.ws_url}/private/stream?streams={key}")
    await rest.call("POST", "/fapi/v1/leverage", signed=True, symbol="BTCUSDT", leverage=5)
    raw = await drain(legacy)
    wrapped = await drain(combined)
    assert raw[0]["e"] == "ACCOUNT_CONFIG_UPDATE"
    assert wrapped == [{"stream": key, "data": raw[0]}]
    # DELETE closes the key's sockets, without a listenKeyExpired event
    await rest.call("DELETE", "/fapi/v1/listenKey", listenKey=key)
    msg = await legacy.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await legacy.close()
    await combined.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await session.ws_connect(f"{sim.ws_url}/private/ws/{'x' * 64}")
    assert err.value.status == 400


async def test_many_subscribers_get_identical_frames(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    conns = [await session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m") for _ in range(3)]
    await step(sim, 30_000)
    got = await asyncio.gather(*(drain(ws) for ws in conns))
    for ws in conns:
        await ws.close()
    assert got[0] and got[0] == got[1] == got[2]


# ---- the fast kline encoder equals the readable one ---------------------------------------
@given(
    price=st.integers(1, 10**9),
    moves=st.lists(st.integers(-(10**6), 10**6), min_size=3, max_size=3),
    vol=st.integers(0, 10**9),
    trades=st.integers(0, 10**6),
    share=st.floats(0, 1),
    closed=st.booleans(),
    first=st.integers(1, 10**12),
)
@settings(max_examples=200, deadline=None)
def test_kline_template_matches_dict_encoding(
    price: int, moves: list[int], vol: int, trades: int, share: float, closed: bool, first: int
) -> None:
    spec = default_spec("ETHUSDT", 1900.0)
    fmt = Formatter(spec)
    tick, step = 10.0**-spec.price_precision, 10.0**-spec.quantity_precision
    o = price * tick
    c, h, lo = (max(tick, o + m * tick) for m in moves)
    h, lo = max(o, c, h), min(o, c, lo)
    v = vol * step
    row = (START, o, h, lo, c, v, v * c, trades, v * share, v * c * share, first)
    event_ms = START + 12_345
    want = {"e": "kline", "E": event_ms, "s": "ETHUSDT", "k": fmt.k(row, closed)}
    assert orjson.loads(fmt.event(row, closed, event_ms)) == want


# ---- slow consumers ---------------------------------------------------------------------
SYMS50 = tuple(f"S{i:02d}USDT" for i in range(50))


async def test_slow_consumer_is_dropped_like_on_binance(session: aiohttp.ClientSession) -> None:
    cfg = SimConfig(symbols=SYMS50, speed=3000, history_minutes=2, max_send_buffer=256 * 1024)
    async with SimServer(cfg) as sim:
        streams = "/".join(f"{s.lower()}@kline_1m" for s in SYMS50)
        ws = await session.ws_connect(f"{sim.ws_url}/market/stream?streams={streams}")
        for _ in range(100):  # never read: kernel buffers fill, then the server's
            if sim.registry.counters["slow_consumer_drops"]:
                break
            await asyncio.sleep(0.05)
        assert sim.registry.counters["slow_consumer_drops"] == 1
        await ws.close()


async def test_wait_mode_holds_the_clock_and_loses_nothing(
    session: aiohttp.ClientSession,
) -> None:
    cfg = SimConfig(symbols=SYMS50, speed=20_000, history_minutes=2, slow_consumer="wait",
                    max_send_buffer=256 * 1024, start_ms=START)  # fmt: skip
    async with SimServer(cfg) as sim:
        streams = "/".join(f"{s.lower()}@kline_1m" for s in SYMS50)
        async with session.ws_connect(f"{sim.ws_url}/market/stream?streams={streams}") as ws:
            closes: list[int] = []
            while len(closes) < 20:  # 20 simulated minutes: ~11k messages
                msg = await ws.receive(timeout=5)
                data = orjson.loads(msg.data)["data"]
                if data["s"] == "S07USDT" and data["k"]["x"]:
                    closes.append(data["k"]["t"])
                    await asyncio.sleep(0.01)  # slower than 20,000x needs
        assert sim.registry.counters["slow_consumer_drops"] == 0
        assert sim.registry.counters["backpressure_holds"] >= 1
    assert closes == [closes[0] + i * MIN for i in range(20)]  # no gap
