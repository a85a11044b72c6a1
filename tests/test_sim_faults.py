"""Fault injection of the exchange simulator, driven over its /admin HTTP API.

Each test injects one fault, checks what a client sees, and checks that /admin/state
counted it (chaos tests compare those counters with what the system noticed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from services.exchange_sim.server import SimConfig, SimServer
from tests.test_sim_protocol import START, Rest

MIN = 60_000


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(start_ms=START, paused=True, history_minutes=10)) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def admin(session: aiohttp.ClientSession, sim: SimServer, route: str, **body: Any) -> Any:
    resp = await session.post(f"{sim.rest_url}/admin/{route}", json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["result"]


async def state(session: aiohttp.ClientSession, sim: SimServer) -> dict[str, Any]:
    resp = await session.get(f"{sim.rest_url}/admin/state")
    return await resp.json()


async def step(sim: SimServer, ms: int) -> None:
    sim.admin.advance(ms)
    await sim.wait_until(sim.clock.now_ms())


async def texts(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.15) -> list[str]:
    out = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return out
        if msg.type != aiohttp.WSMsgType.TEXT:
            return out
        out.append(msg.data)


async def test_drop_market_connections_by_stream(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    btc = await session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m")
    eth = await session.ws_connect(f"{sim.ws_url}/market/ws/ethusdt@kline_1m")
    assert await admin(session, sim, "ws/drop", kind="market", stream="btcusdt@kline_1m") == 1
    msg = await btc.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    await step(sim, 10_000)
    assert await texts(eth)  # the other socket is untouched
    await eth.close()
    st = await state(session, sim)
    assert st["faults"]["applied"]["ws_drop"] == 1


async def test_drop_all_user_connections(sim: SimServer, session: aiohttp.ClientSession) -> None:
    key = (await Rest(sim, session).call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    user = await session.ws_connect(f"{sim.ws_url}/private/ws/{key}")
    market = await session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m")
    assert await admin(session, sim, "ws/drop", kind="user") == 1
    assert (await user.receive(timeout=2)).type != aiohttp.WSMsgType.TEXT
    assert not market.closed
    await market.close()


async def test_stall_stream_keeps_socket_open_and_loses_data(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    url = f"{sim.ws_url}/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    async with session.ws_connect(url) as ws:
        await admin(session, sim, "ws/stall", stream="btcusdt@kline_1m", seconds=0.5)
        await step(sim, MIN)
        during = [orjson.loads(t)["stream"] for t in await texts(ws)]
        assert set(during) == {"ethusdt@kline_1m"} and not ws.closed
        await asyncio.sleep(0.5)
        await step(sim, 10_000)
        after = {orjson.loads(t)["stream"] for t in await texts(ws)}
    assert after == {"btcusdt@kline_1m", "ethusdt@kline_1m"}
    # the record still has the kline the stalled subscriber never got
    assert sim.driver.closed_klines("BTCUSDT")[-1]["t"] == START
    assert (await state(session, sim))["faults"]["applied"]["ws_stall"] == 1


async def test_stall_one_connection(sim: SimServer, session: aiohttp.ClientSession) -> None:
    a = await session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m")
    b = await session.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@kline_1m")
    conns = (await state(session, sim))["connections"]
    first = min(c["id"] for c in conns)
    assert await admin(session, sim, "ws/stall", conn_id=first, seconds=5) == 1
    await step(sim, 10_000)
    assert await texts(a) == [] and await texts(b)
    assert [c["stalled"] for c in sorted((await state(session, sim))["connections"],
                                         key=lambda c: c["id"])] == [True, False]  # fmt: skip
    await a.close()
    await b.close()


async def test_expire_listen_key_now(sim: SimServer, session: aiohttp.ClientSession) -> None:
    rest = Rest(sim, session)
    key = (await rest.call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    async with session.ws_connect(f"{sim.ws_url}/private/ws/{key}") as ws:
        assert await admin(session, sim, "listenkey/expire", listenKey=key) == 1
        got = [orjson.loads(t) for t in await texts(ws)]
        assert got == [{"e": "listenKeyExpired", "E": str(START), "listenKey": key}]
        await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT", side="BUY",
                        type="MARKET", quantity="0.010")  # fmt: skip
        assert await texts(ws) == []
    status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key)
    assert (status, body["code"]) == (400, -1125)


@pytest.mark.parametrize(("mode", "status", "code"), [("5xx", 503, -1001), ("-1125", 400, -1125)])
async def test_next_keepalive_fails(
    sim: SimServer, session: aiohttp.ClientSession, mode: str, status: int, code: int
) -> None:
    rest = Rest(sim, session)
    key = (await rest.call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    await admin(session, sim, "listenkey/fail_keepalive", count=1, mode=mode)
    got_status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key)
    assert (got_status, body["code"]) == (status, code)
    again, _, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key)
    assert again == (200 if mode == "5xx" else 400)  # -1125 means the key is really gone
    assert (await state(session, sim))["faults"]["applied"][f"keepalive_{mode}"] == 1


async def test_rest_5xx_for_the_next_n_calls(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    await admin(session, sim, "rest/fail", mode="5xx", count=2, status=502, path="/fapi/v1/time")
    rest = Rest(sim, session)
    assert (await rest.call("GET", "/fapi/v1/ping"))[0] == 200  # other paths unaffected
    statuses = [(await rest.call("GET", "/fapi/v1/time"))[:2] for _ in range(3)]
    assert [s for s, _ in statuses] == [502, 502, 200]
    assert statuses[0][1]["code"] == -1001
    st = await state(session, sim)
    assert st["faults"] == {"injected": {"rest_5xx": 2}, "applied": {"rest_5xx": 2}}


@pytest.mark.parametrize(("mode", "status", "retry"), [("429", 429, "60"), ("418", 418, "120")])
async def test_rest_injected_rate_limit_answers(
    sim: SimServer, session: aiohttp.ClientSession, mode: str, status: int, retry: str
) -> None:
    await admin(session, sim, "rest/fail", mode=mode, count=1)
    got, body, headers = await Rest(sim, session).call("GET", "/fapi/v1/ping")
    assert (got, body["code"], headers["Retry-After"]) == (status, -1003, retry)


async def test_rest_timeout_hangs_the_request(
    sim: SimServer, session: aiohttp.ClientSession
) -> None:
    await admin(session, sim, "rest/fail", mode="timeout", count=1, hang_s=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(f"{sim.rest_url}/fapi/v1/time", timeout=aiohttp.ClientTimeout(total=0.3))
    assert (await Rest(sim, session).call("GET", "/fapi/v1/time"))[0] == 200


@pytest.mark.parametrize("what", ["garbage", "missing_fields", "nan", "nan_bare"])
async def test_malformed_market_messages(
    sim: SimServer, session: aiohttp.ClientSession, what: str
) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/stream?streams=btcusdt@kline_1m") as ws:
        assert await admin(session, sim, "ws/malformed", kind="market", what=what) == 1
        [text] = await texts(ws)
    if what in ("garbage", "nan_bare"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
    else:
        data = orjson.loads(text)["data"]
        k = data["k"]
        if what == "missing_fields":
            assert "c" not in k and "x" not in k
        else:
            assert k["c"] == "NaN"
    assert (await state(session, sim))["faults"]["applied"][f"ws_malformed_{what}"] == 1


async def test_malformed_user_message(sim: SimServer, session: aiohttp.ClientSession) -> None:
    key = (await Rest(sim, session).call("POST", "/fapi/v1/listenKey"))[1]["listenKey"]
    async with session.ws_connect(f"{sim.ws_url}/private/ws/{key}") as ws:
        await admin(session, sim, "ws/malformed", kind="user", what="nan")
        [text] = await texts(ws)
    assert orjson.loads(text)["a"]["B"][0]["wb"] == "NaN"


async def test_duplicate_closed_kline(sim: SimServer, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(f"{sim.ws_url}/market/ws/ethusdt@kline_1m") as ws:
        await step(sim, MIN)
        closes = [t for t in await texts(ws) if '"x":true' in t]
        assert await admin(session, sim, "ws/duplicate", symbol="ETHUSDT") == 1
        again = await texts(ws)
    assert again == closes[-1:]  # byte-identical resend


async def test_clock_pause_resume_speed(sim: SimServer, session: aiohttp.ClientSession) -> None:
    rest = Rest(sim, session)
    await admin(session, sim, "clock/speed", speed=600)
    await admin(session, sim, "clock/resume")
    await asyncio.sleep(0.2)
    running = (await rest.call("GET", "/fapi/v1/time"))[1]["serverTime"]
    assert running >= START + 100_000  # ~0.2 s x 600
    await admin(session, sim, "clock/pause")
    frozen = (await rest.call("GET", "/fapi/v1/time"))[1]["serverTime"]
    await asyncio.sleep(0.1)
    assert (await rest.call("GET", "/fapi/v1/time"))[1]["serverTime"] == frozen
    st = await state(session, sim)
    assert st["clock"] == {"nowMs": frozen, "speed": 600.0, "paused": True}
    assert st["faults"]["injected"] == {"clock_speed": 1, "clock_resume": 1, "clock_pause": 1}


async def test_admin_rejects_bad_requests(sim: SimServer, session: aiohttp.ClientSession) -> None:
    resp = await session.post(f"{sim.rest_url}/admin/rest/fail", json={"mode": "explode"})
    assert resp.status == 400
    resp = await session.get(f"{sim.rest_url}/admin/closed_klines?symbol=NOPE")
    assert resp.status == 400
    # admin calls never count toward the request weight of /fapi
    _, _, headers = await Rest(sim, session).call("GET", "/fapi/v1/ping")
    assert headers["X-MBX-USED-WEIGHT-1m"] == "1"


async def test_healthz_and_metrics(sim: SimServer, session: aiohttp.ClientSession) -> None:
    health = await (await session.get(f"{sim.rest_url}/healthz")).json()
    assert health["status"] == "ok" and health["simTimeMs"] == START
    await Rest(sim, session).call("GET", "/fapi/v1/ping")
    text = await (await session.get(f"{sim.rest_url}/metrics")).text()
    metrics = dict(line.split(" ") for line in text.strip().splitlines())
    assert metrics["slt_exchange_sim_rest_requests"] == "1"
    assert metrics["slt_exchange_sim_time_ms"] == str(START)
