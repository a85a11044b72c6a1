"""A real third-party client, python-binance, pointed at the simulator.

If the simulator's paths, signing, parameters or shapes drifted from Binance's, an
unmodified library written against the real exchange would break here. Only its base
URLs are changed (the library's documented attributes) and its clock offset is set from
the simulator's `/fapi/v1/time`, as `AsyncClient.create()` does against Binance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from binance import AsyncClient, BinanceSocketManager, Client
from binance.exceptions import BinanceAPIException

from services.exchange_sim.server import SimConfig, SimServer
from tests.test_sim_protocol import START

MIN = 60_000


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(start_ms=START, paused=True, history_minutes=60)) as s:
        yield s


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(sim.demo_key, sim.demo_secret)
    c.FUTURES_URL = f"{sim.rest_url}/fapi"
    try:
        server_time = (await c.futures_time())["serverTime"]
        c.timestamp_offset = server_time - int(time.time() * 1000)  # sim time, like create()
        yield c
    finally:
        await c.close_connection()


async def test_async_client_klines_orders_positions(sim: SimServer, client: AsyncClient) -> None:
    klines = await client.futures_klines(symbol="BTCUSDT", interval="1m", limit=10)
    assert len(klines) == 10 and klines[-1][0] == START and len(klines[0]) == 12
    info = await client.futures_exchange_info()
    assert {s["symbol"] for s in info["symbols"]} == {"BTCUSDT", "ETHUSDT"}

    order = await client.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010",
        newClientOrderId="pb-market-1",
    )  # fmt: skip
    assert order["clientOrderId"] == "pb-market-1"
    positions = await client.futures_position_information(symbol="BTCUSDT")  # v3
    assert positions[0]["positionAmt"] == "0.010"

    entry = float(positions[0]["entryPrice"])
    limit = await client.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.010",
        price=f"{entry * 0.95:.1f}",
    )  # fmt: skip
    open_orders = await client.futures_get_open_orders(symbol="BTCUSDT")
    assert [o["orderId"] for o in open_orders] == [limit["orderId"]]
    cancelled = await client.futures_cancel_order(symbol="BTCUSDT", orderId=limit["orderId"])
    assert cancelled["status"] == "CANCELED"
    assert await client.futures_get_open_orders(symbol="BTCUSDT") == []

    balance = await client.futures_account_balance()  # v3
    assert balance[0]["asset"] == "USDT" and float(balance[0]["balance"]) < 10_000
    account = await client.futures_account()  # v2
    assert float(account["totalWalletBalance"]) == float(balance[0]["balance"])


async def test_async_client_sees_binance_errors(sim: SimServer, client: AsyncClient) -> None:
    with pytest.raises(BinanceAPIException) as err:
        await client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET",
                                          quantity="0.0001")  # fmt: skip
    assert err.value.code in (-4003, -4004, -1111, -4023)
    client.timestamp_offset -= 20_000  # a drifted clock (python-binance sends recvWindow=10000)
    with pytest.raises(BinanceAPIException) as err:
        await client.futures_account_balance()
    assert (err.value.status_code, err.value.code) == (400, -1021)


async def test_listen_key_and_user_socket(sim: SimServer, client: AsyncClient) -> None:
    key = await client.futures_stream_get_listen_key()
    assert await client.futures_stream_get_listen_key() == key
    bsm = BinanceSocketManager(client)
    bsm.FSTREAM_URL = f"{sim.ws_url}/"
    stream = bsm.futures_user_socket()  # connects to <base>/private/ws?listenKey=<key>
    await stream.__aenter__()
    await client.futures_change_leverage(symbol="ETHUSDT", leverage=3)
    event = await asyncio.wait_for(stream.recv(), 5)
    # the library's reader only notices the exit on its next message (or after 10 s)
    closing = asyncio.ensure_future(stream.__aexit__(None, None, None))
    await asyncio.sleep(0.05)
    await client.futures_change_leverage(symbol="ETHUSDT", leverage=4)
    await asyncio.wait_for(closing, 5)
    assert event["e"] == "ACCOUNT_CONFIG_UPDATE" and event["ac"]["l"] == 3
    await client.futures_stream_keepalive(key)
    await client.futures_stream_close(key)


async def test_market_sockets_routed_and_legacy(sim: SimServer, client: AsyncClient) -> None:
    bsm = BinanceSocketManager(client)
    bsm.FSTREAM_URL = f"{sim.ws_url}/"
    sim.clock.set_speed(600)
    sim.clock.resume()
    # routed /market/stream: klines flow
    async with bsm.futures_multiplex_socket(["btcusdt@kline_1m"]) as stream:
        msg = await asyncio.wait_for(stream.recv(), 5)
    assert msg["stream"] == "btcusdt@kline_1m" and msg["data"]["k"]["s"] == "BTCUSDT"
    # unrouted /stream (category ""): no klines since 2026-04-23, mark prices still flow
    streams = ["btcusdt@kline_1m", "btcusdt@markPrice@1s"]
    async with bsm.futures_multiplex_socket(streams, category="") as stream:
        got = [await asyncio.wait_for(stream.recv(), 5) for _ in range(5)]
    assert {m["stream"] for m in got} == {"btcusdt@markPrice@1s"}


def test_sync_client(sim_thread: tuple[str, int]) -> None:
    rest_url, offset = sim_thread
    c = Client("slt-sim-demo-key", "slt-sim-demo-secret", ping=False)
    c.FUTURES_URL = f"{rest_url}/fapi"
    c.timestamp_offset = offset
    try:
        assert c.futures_ping() == {}
        assert len(c.futures_klines(symbol="ETHUSDT", interval="5m", limit=3)) == 3
        order = c.futures_create_order(symbol="ETHUSDT", side="SELL", type="MARKET",
                                       quantity="0.100")  # fmt: skip
        assert order["side"] == "SELL"
        pos = c.futures_position_information(symbol="ETHUSDT")
        assert pos[0]["positionAmt"] == "-0.100"
    finally:
        c.close_connection()


@pytest.fixture
def sim_thread() -> AsyncIterator[tuple[str, int]]:
    """The simulator on its own event loop thread, for the blocking `Client`."""
    import threading

    ready: dict[str, object] = {}
    stop = threading.Event()

    async def serve() -> None:
        async with SimServer(SimConfig(start_ms=START, paused=True, history_minutes=30)) as s:
            ready["url"] = s.rest_url
            ready["offset"] = s.clock.now_ms() - int(time.time() * 1000)
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "url" not in ready and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield str(ready["url"]), int(ready["offset"])  # type: ignore[call-overload]
    finally:
        stop.set()
        thread.join(timeout=10)
