"""REST protocol of the exchange simulator against Binance's documented behaviour.

A real simulator on 127.0.0.1 (port 0), a real aiohttp client; the clock is paused at a
fixed start so every timestamp is exact, and moved with `sim.admin.advance(ms)`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.exchange_sim.auth import ApiError, sign
from services.exchange_sim.klines import select
from services.exchange_sim.server import SimConfig, SimServer
from services.exchange_sim.weights import RateLimiter

START = 1_700_000_040_000  # a minute boundary
MIN = 60_000

# Field sets as documented on developers.binance.com (USD-M futures).
ORDER_NEW_KEYS = {
    "clientOrderId", "cumQty", "cumQuote", "executedQty", "orderId", "avgPrice", "origQty",
    "price", "reduceOnly", "side", "positionSide", "status", "stopPrice", "closePosition",
    "symbol", "timeInForce", "type", "origType", "updateTime", "workingType", "priceProtect",
    "priceMatch", "selfTradePreventionMode", "goodTillDate",
}  # fmt: skip
ORDER_QUERY_KEYS = (ORDER_NEW_KEYS - {"cumQty"}) | {"time"}
POSITION_V2_KEYS = {
    "entryPrice", "breakEvenPrice", "marginType", "isAutoAddMargin", "isolatedMargin",
    "leverage", "liquidationPrice", "markPrice", "maxNotionalValue", "positionAmt", "notional",
    "isolatedWallet", "symbol", "unRealizedProfit", "positionSide", "updateTime",
}  # fmt: skip
POSITION_V3_KEYS = {
    "symbol", "positionSide", "positionAmt", "entryPrice", "breakEvenPrice", "markPrice",
    "unRealizedProfit", "liquidationPrice", "isolatedMargin", "notional", "marginAsset",
    "isolatedWallet", "initialMargin", "maintMargin", "positionInitialMargin",
    "openOrderInitialMargin", "adl", "bidNotional", "askNotional", "updateTime",
}  # fmt: skip
BALANCE_KEYS = {
    "accountAlias", "asset", "balance", "crossWalletBalance", "crossUnPnl", "availableBalance",
    "maxWithdrawAmount", "marginAvailable", "updateTime",
}  # fmt: skip
ACCOUNT_V3_KEYS = {
    "totalInitialMargin", "totalMaintMargin", "totalWalletBalance", "totalUnrealizedProfit",
    "totalMarginBalance", "totalPositionInitialMargin", "totalOpenOrderInitialMargin",
    "totalCrossWalletBalance", "totalCrossUnPnl", "availableBalance", "maxWithdrawAmount",
    "assets", "positions",
}  # fmt: skip
ACCOUNT_V2_KEYS = ACCOUNT_V3_KEYS | {"canTrade", "canDeposit", "canWithdraw", "updateTime",
                                    "multiAssetsMargin", "feeTier"}  # fmt: skip
PREMIUM_KEYS = {
    "symbol", "markPrice", "indexPrice", "estimatedSettlePrice", "lastFundingRate",
    "interestRate", "nextFundingTime", "time",
}  # fmt: skip
ALGO_KEYS = {
    "algoId", "clientAlgoId", "algoType", "orderType", "symbol", "side", "positionSide",
    "timeInForce", "quantity", "algoStatus", "triggerPrice", "price", "workingType",
    "closePosition", "priceProtect", "reduceOnly", "createTime", "updateTime",
}  # fmt: skip
KLINE_ROW_TYPES = [int, str, str, str, str, str, int, str, int, str, str, str]


class Rest:
    """A minimal Binance REST caller: signs like the docs say, returns status/body/headers."""

    def __init__(self, sim: SimServer, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        *,
        signed: bool = False,
        key: str | None = "demo",
        secret: str | None = None,
        ts: int | None = None,
        in_body: bool = False,
        **params: Any,
    ) -> tuple[int, Any, Any]:
        headers = {}
        if key is not None:
            headers["X-MBX-APIKEY"] = self.sim.demo_key if key == "demo" else key
        if signed:
            params["timestamp"] = self.sim.clock.now_ms() if ts is None else ts
        query = urlencode(params)
        if signed:
            query += "&signature=" + sign(secret or self.sim.demo_secret, query)
        url = f"{self.sim.rest_url}{path}"
        if in_body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = await self.session.request(method, url, data=query, headers=headers)
        else:
            resp = await self.session.request(method, f"{url}?{query}", headers=headers)
        body = orjson.loads(await resp.read())
        return resp.status, body, resp.headers


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(start_ms=START, paused=True, history_minutes=120)) as s:
        yield s


@pytest.fixture
async def rest(sim: SimServer) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession() as session:
        yield Rest(sim, session)


def assert_error(status: int, body: Any, want_status: int, code: int) -> None:
    assert (status, body["code"]) == (want_status, code), body
    assert set(body) == {"code", "msg"} and body["msg"]


# ---- public market data -------------------------------------------------------------------
async def test_ping_time_and_exchange_info(rest: Rest) -> None:
    status, body, headers = await rest.call("GET", "/fapi/v1/ping")
    assert (status, body, headers["X-MBX-USED-WEIGHT-1m"]) == (200, {}, "1")
    status, body, headers = await rest.call("GET", "/fapi/v1/time")
    assert body == {"serverTime": START}  # the simulator's clock, not the wall clock
    assert headers["X-MBX-USED-WEIGHT-1m"] == "2"
    _, info, _ = await rest.call("GET", "/fapi/v1/exchangeInfo")
    assert info["serverTime"] == START
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    btc = info["symbols"][0]
    assert {f["filterType"] for f in btc["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "MIN_NOTIONAL"}
    weight = [r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
    assert weight[0]["limit"] == 2400


async def test_klines_rows_and_window_rules(rest: Rest, sim: SimServer) -> None:
    spec = sim.specs["BTCUSDT"]
    _, rows, _ = await rest.call("GET", "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=5)
    assert [r[0] for r in rows] == [START - k * MIN for k in (4, 3, 2, 1, 0)]
    for row in rows:
        assert [type(v) for v in row] == KLINE_ROW_TYPES
        assert row[6] == row[0] + MIN - 1 and row[11] == "0"
        assert len(row[1].split(".")[1]) == spec.price_precision
        assert len(row[5].split(".")[1]) == spec.quantity_precision
    # the last row is the open candle of the current minute
    assert rows[-1][0] == START and rows[-1][6] > sim.clock.now_ms()

    async def opens(**kw: Any) -> list[int]:
        _, got, _ = await rest.call("GET", "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", **kw)
        return [r[0] for r in got]

    assert await opens(startTime=START - 10 * MIN, limit=3) == [START - k * MIN for k in (10, 9, 8)]
    assert (await opens(startTime=START - 10 * MIN + 1, limit=1)) == [START - 9 * MIN]
    assert await opens(endTime=START - 5 * MIN, limit=2) == [START - 6 * MIN, START - 5 * MIN]
    assert await opens(startTime=START - 10 * MIN, endTime=START - 8 * MIN) == [
        START - 10 * MIN, START - 9 * MIN, START - 8 * MIN,
    ]  # fmt: skip
    assert (await opens(startTime=START - 2 * MIN))[-1] == START  # open candle included
    assert len(await opens()) == 121  # default limit 500 > 120 history bars + open candle


async def test_klines_aggregate_5m_from_1m(rest: Rest) -> None:
    end = START - 1
    _, five, _ = await rest.call(
        "GET", "/fapi/v1/klines", symbol="ETHUSDT", interval="5m", endTime=end, limit=2
    )
    _, ones, _ = await rest.call(
        "GET", "/fapi/v1/klines", symbol="ETHUSDT", interval="1m", startTime=five[-1][0], limit=5
    )
    last = five[-1]
    assert last[0] % (5 * MIN) == 0 and last[6] == last[0] + 5 * MIN - 1
    assert last[1] == ones[0][1] and last[4] == ones[-1][4]
    assert float(last[2]) == max(float(r[2]) for r in ones)
    assert float(last[3]) == min(float(r[3]) for r in ones)
    assert last[8] == sum(r[8] for r in ones)


async def test_closed_kline_is_served_at_its_close_time(sim: SimServer, rest: Rest) -> None:
    sim.admin.advance(MIN)  # exactly START + 60000: the START candle has just closed
    _, rows, _ = await rest.call("GET", "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=2)
    bar = sim.market.bar("BTCUSDT", sim.market.index_at(START))
    assert rows[0][0] == START
    assert rows[0][1:5] == [bar.price_str(x) for x in (bar.open, bar.high, bar.low, bar.close)]
    assert rows[0][5] == bar.qty_str(bar.volume) and rows[0][8] == bar.trades
    assert rows[1][0] == START + MIN  # the new open candle


async def test_close_delay_does_not_delay_rest(rest: Rest) -> None:
    cfg = SimConfig(start_ms=START, paused=True, history_minutes=5, close_delay_ms=2000)
    async with SimServer(cfg) as sim:
        rest.sim = sim
        sim.admin.advance(MIN + 1000)
        _, rows, _ = await rest.call(
            "GET", "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=2
        )
        assert rows[0][0] == START  # closed bar already on REST...
        assert sim.driver.closed_klines("BTCUSDT") == []  # ...not yet on the WebSocket
        sim.admin.advance(1000)
        sim.catch_up()
        assert [k["t"] for k in sim.driver.closed_klines("BTCUSDT")] == [START]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"symbol": "NOPEUSDT", "interval": "1m"}, 400, -1121),
        ({"symbol": "BTCUSDT", "interval": "7m"}, 400, -1120),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": 1501}, 400, -1130),
        ({"interval": "1m"}, 400, -1102),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": 5, "endTime": 4}, 400, -1023),
    ],
)
async def test_kline_parameter_errors(
    rest: Rest, params: dict[str, Any], status: int, code: int
) -> None:
    got_status, body, _ = await rest.call("GET", "/fapi/v1/klines", **params)
    assert_error(got_status, body, status, code)


async def test_premium_index_shape_and_weight(rest: Rest) -> None:
    _, one, h1 = await rest.call("GET", "/fapi/v1/premiumIndex", symbol="BTCUSDT")
    assert set(one) == PREMIUM_KEYS and one["time"] == START
    _, many, h2 = await rest.call("GET", "/fapi/v1/premiumIndex")
    assert [r["symbol"] for r in many] == ["BTCUSDT", "ETHUSDT"]
    assert int(h2["X-MBX-USED-WEIGHT-1m"]) - int(h1["X-MBX-USED-WEIGHT-1m"]) == 10


# ---- security -----------------------------------------------------------------------------
async def test_signed_request_failures(rest: Rest) -> None:
    path = "/fapi/v2/balance"
    assert_error(*(await rest.call("GET", path, signed=True, key=None))[:2], 401, -2014)
    assert_error(*(await rest.call("GET", path, signed=True, key="nobody"))[:2], 401, -2015)
    assert_error(*(await rest.call("GET", path, signed=True, secret="wrong"))[:2], 400, -1022)
    status, body, _ = await rest.call("GET", path, signed=True)
    assert status == 200 and set(body[0]) >= BALANCE_KEYS
    # missing timestamp / signature
    assert_error(*(await rest.call("GET", path, recvWindow=5000))[:2], 400, -1102)
    status, body, _ = await rest.call("GET", path + "?timestamp=" + str(START))
    assert_error(status, body, 400, -1102)


async def test_recv_window_against_the_sim_clock(rest: Rest) -> None:
    path = "/fapi/v2/balance"
    wall = int(time.time() * 1000)  # far from sim time: a wall-clock signer fails
    assert_error(*(await rest.call("GET", path, signed=True, ts=wall))[:2], 400, -1021)
    assert (await rest.call("GET", path, signed=True, ts=START - 4999))[0] == 200
    assert_error(*(await rest.call("GET", path, signed=True, ts=START - 5001))[:2], 400, -1021)
    status, _, _ = await rest.call("GET", path, signed=True, ts=START - 9000, recvWindow=10000)
    assert status == 200
    assert_error(*(await rest.call("GET", path, signed=True, ts=START + 1000))[:2], 400, -1021)
    assert (await rest.call("GET", path, signed=True, ts=START + 999))[0] == 200
    status, body, _ = await rest.call("GET", path, signed=True, recvWindow=60001)
    assert_error(status, body, 400, -1131)


async def test_signature_covers_query_plus_body(rest: Rest, sim: SimServer) -> None:
    query = "symbol=BTCUSDT&side=BUY&type=MARKET"
    body = f"quantity=0.010&timestamp={START}"
    good = sign(sim.demo_secret, query + body)  # Binance: concatenated, no '&'
    bad = sign(sim.demo_secret, query + "&" + body)
    for sig, want in ((bad, 400), (good, 200)):
        resp = await rest.session.post(
            f"{sim.rest_url}/fapi/v1/order?{query}",
            data=f"{body}&signature={sig}",
            headers={"X-MBX-APIKEY": sim.demo_key,
                     "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert resp.status == want, await resp.text()


async def test_weight_limit_429_then_418_ban(rest: Rest) -> None:
    cfg = SimConfig(start_ms=START + 30_000, paused=True, history_minutes=5, weight_limit_1m=20)
    async with SimServer(cfg) as sim:
        rest.sim = sim
        for n in range(1, 5):  # limit 1000 -> weight 5
            status, _, h = await rest.call("GET", "/fapi/v1/klines", symbol="BTCUSDT",
                                           interval="1m", limit=1000)  # fmt: skip
            assert (status, h["X-MBX-USED-WEIGHT-1m"]) == (200, str(5 * n))
        status, body, h = await rest.call("GET", "/fapi/v1/ping")
        assert_error(status, body, 429, -1003)
        assert h["Retry-After"] == "30"  # seconds to the next minute window
        status, body, h = await rest.call("GET", "/fapi/v1/ping")  # ignored the 429
        assert_error(status, body, 418, -1003)
        assert h["Retry-After"] == "120"
        sim.admin.advance(60_000)
        assert (await rest.call("GET", "/fapi/v1/ping"))[0] == 418  # still banned
        sim.admin.advance(61_000)
        status, _, h = await rest.call("GET", "/fapi/v1/ping")
        assert (status, h["X-MBX-USED-WEIGHT-1m"]) == (200, "1")
        assert sim.admin.state()["counters"]["rateLimit"] == {"429": 1, "418": 2}


# ---- account and orders -------------------------------------------------------------------
async def test_account_endpoint_shapes(rest: Rest) -> None:
    for path, keys in (("/fapi/v2/positionRisk", POSITION_V2_KEYS),
                       ("/fapi/v3/positionRisk", POSITION_V3_KEYS)):  # fmt: skip
        status, body, h = await rest.call("GET", path, signed=True, symbol="BTCUSDT")
        assert status == 200 and h["X-MBX-USED-WEIGHT-1m"]
        for row in body:
            assert set(row) == keys
    for path in ("/fapi/v2/balance", "/fapi/v3/balance"):
        _, body, _ = await rest.call("GET", path, signed=True)
        assert set(body[0]) >= BALANCE_KEYS and body[0]["balance"].startswith("10000")
    _, v2, _ = await rest.call("GET", "/fapi/v2/account", signed=True)
    _, v3, _ = await rest.call("GET", "/fapi/v3/account", signed=True)
    assert set(v2) >= ACCOUNT_V2_KEYS and set(v3) >= ACCOUNT_V3_KEYS


async def test_order_lifecycle_shapes(rest: Rest) -> None:
    status, new, h = await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                     side="BUY", type="MARKET", quantity="0.010")  # fmt: skip
    assert status == 200 and set(new) == ORDER_NEW_KEYS
    assert h["X-MBX-ORDER-COUNT-1m"] == "1" and h["X-MBX-USED-WEIGHT-1m"] == "0"
    _, pos, _ = await rest.call("GET", "/fapi/v3/positionRisk", signed=True, symbol="BTCUSDT")
    assert pos[0]["positionAmt"] == "0.010"
    status, limit, _ = await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                       side="BUY", type="LIMIT", timeInForce="GTC",
                                       quantity="0.010", price=pos[0]["entryPrice"],
                                       in_body=True)  # fmt: skip
    assert status == 200, limit
    status, limit, _ = await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                       side="BUY", type="LIMIT", timeInForce="GTC",
                                       quantity="0.010", price=str(round(float(pos[0]["entryPrice"]) * 0.97, 1)),
                                       newClientOrderId="rest-test-1")  # fmt: skip
    assert status == 200, limit
    _, got, _ = await rest.call("GET", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                origClientOrderId="rest-test-1")  # fmt: skip
    assert set(got) == ORDER_QUERY_KEYS and got["status"] == "NEW"
    _, open_, _ = await rest.call("GET", "/fapi/v1/openOrders", signed=True, symbol="BTCUSDT")
    assert "rest-test-1" in [o["clientOrderId"] for o in open_]
    _, cancelled, _ = await rest.call("DELETE", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                      orderId=got["orderId"])  # fmt: skip
    assert cancelled["status"] == "CANCELED"
    _, done, _ = await rest.call("DELETE", "/fapi/v1/allOpenOrders", signed=True, symbol="BTCUSDT")
    assert done == {"code": 200, "msg": "The operation of cancel all open order is done."}
    status, body, _ = await rest.call("DELETE", "/fapi/v1/order", signed=True, symbol="BTCUSDT",
                                      orderId=got["orderId"])  # fmt: skip
    assert_error(status, body, 400, -2011)
    status, body, _ = await rest.call("GET", "/fapi/v1/order", signed=True, orderId=1)
    assert_error(status, body, 400, -1102)


async def test_algo_leverage_and_margin_type(rest: Rest) -> None:
    await rest.call("POST", "/fapi/v1/order", signed=True, symbol="ETHUSDT", side="BUY",
                    type="MARKET", quantity="0.100")  # fmt: skip
    status, algo, _ = await rest.call("POST", "/fapi/v1/algoOrder", signed=True,
                                      symbol="ETHUSDT", side="SELL", type="STOP_MARKET",
                                      algoType="CONDITIONAL", triggerPrice="100",
                                      quantity="0.100", reduceOnly="true")  # fmt: skip
    assert status == 200 and set(algo) >= ALGO_KEYS and algo["algoStatus"] == "NEW"
    _, got, _ = await rest.call("GET", "/fapi/v1/algoOrder", signed=True, algoId=algo["algoId"])
    assert got["algoId"] == algo["algoId"]
    _, open_, _ = await rest.call("GET", "/fapi/v1/openAlgoOrders", signed=True)
    assert [a["algoId"] for a in open_] == [algo["algoId"]]
    _, cancel, _ = await rest.call("DELETE", "/fapi/v1/algoOrder", signed=True,
                                   algoId=algo["algoId"])  # fmt: skip
    assert cancel["algoId"] == algo["algoId"]
    _, lev, _ = await rest.call("POST", "/fapi/v1/leverage", signed=True, symbol="BTCUSDT",
                                leverage=7)  # fmt: skip
    assert set(lev) == {"leverage", "maxNotionalValue", "symbol"} and lev["leverage"] == 7
    _, mt, _ = await rest.call("POST", "/fapi/v1/marginType", signed=True, symbol="BTCUSDT",
                               marginType="ISOLATED")  # fmt: skip
    assert mt == {"code": 200, "msg": "success"}
    status, body, _ = await rest.call("POST", "/fapi/v1/marginType", signed=True,
                                      symbol="BTCUSDT", marginType="ISOLATED")  # fmt: skip
    assert_error(status, body, 400, -4046)


# ---- listenKey ------------------------------------------------------------------------------
async def test_listen_key_lifecycle(rest: Rest, sim: SimServer) -> None:
    status, body, _ = await rest.call("POST", "/fapi/v1/listenKey")
    key = body["listenKey"]
    assert status == 200 and len(key) == 64
    assert (await rest.call("POST", "/fapi/v1/listenKey"))[1] == {"listenKey": key}  # same key
    assert (await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key))[1] == {"listenKey": key}
    status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey="x" * 64)
    assert_error(status, body, 400, -1125)
    assert_error(*(await rest.call("POST", "/fapi/v1/listenKey", key=None))[:2], 401, -2014)
    sim.admin.advance(59 * MIN)
    assert (await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key))[0] == 200  # extended
    sim.admin.advance(60 * MIN + 1)  # 60 min of simulator time without keepalive
    status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=key)
    assert_error(status, body, 400, -1125)
    _, fresh, _ = await rest.call("POST", "/fapi/v1/listenKey")
    assert fresh["listenKey"] != key
    assert (await rest.call("DELETE", "/fapi/v1/listenKey", listenKey=fresh["listenKey"]))[1] == {}
    status, body, _ = await rest.call("PUT", "/fapi/v1/listenKey", listenKey=fresh["listenKey"])
    assert_error(status, body, 400, -1125)


# ---- window and weight arithmetic (pure) ---------------------------------------------------
@given(
    n=st.integers(0, 300),
    start=st.one_of(st.none(), st.integers(-5, 320)),
    end=st.one_of(st.none(), st.integers(-5, 320)),
    limit=st.integers(1, 1500),
    jitter=st.integers(0, MIN - 1),
)
@settings(max_examples=300, deadline=None)
def test_kline_window_rule(
    n: int, start: int | None, end: int | None, limit: int, jitter: int
) -> None:
    """open >= startTime, open <= endTime; first `limit` from a start, else the last `limit`."""
    rows = np.array([[START + i * MIN] + [0.0] * 10 for i in range(n)], dtype=np.float64)
    rows = rows.reshape(n, 11)
    s = None if start is None else START + start * MIN + jitter
    e = None if end is None else START + end * MIN + jitter
    if s is not None and e is not None and s > e:
        return
    times = [START + i * MIN for i in range(n)]
    inside = [t for t in times if (s is None or t >= s) and (e is None or t <= e)]
    want = inside[:limit] if s is not None else inside[-limit:]
    assert [int(t) for t in select(rows, s, e, limit)[:, 0]] == want


@given(weights=st.lists(st.integers(0, 40), min_size=1, max_size=200), limit=st.integers(1, 500))
@settings(max_examples=200, deadline=None)
def test_weight_accounting(weights: list[int], limit: int) -> None:
    """Accepted weight in a window never exceeds the limit; the first excess is a 429 and
    any call after it (before Retry-After) is a 418."""
    rl = RateLimiter(weight_limit_1m=limit)
    used, statuses = 0, []
    for w in weights:
        try:
            usage = rl.charge("1.2.3.4", w, 0, START)
        except ApiError as err:
            statuses.append(err.status)
            continue
        used += w
        statuses.append(200)
        assert usage.used_weight_1m == used <= limit
    if 429 in statuses:
        first = statuses.index(429)
        assert all(s == 200 for s in statuses[:first])
        assert all(s == 418 for s in statuses[first + 1 :])


async def test_user_trades_windows_as_binance_answers_them(rest: Rest, sim: SimServer) -> None:
    """startTime -> the first `limit` from then on; fromId -> from that id; neither -> the
    last `limit`; fromId with a time and windows over 7 days are refused."""
    times = []
    for _ in range(4):
        await rest.call("POST", "/fapi/v1/order", signed=True, symbol="BTCUSDT", side="BUY",
                        type="MARKET", quantity="0.010")  # fmt: skip
        times.append(sim.clock.now_ms())
        sim.clock.advance(60_000)

    async def trades(**params: Any) -> list[dict[str, Any]]:
        status, body, _ = await rest.call("GET", "/fapi/v1/userTrades", signed=True,
                                          symbol="BTCUSDT", **params)  # fmt: skip
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    every = await trades()
    assert [t["time"] for t in every] == times
    ids = [t["id"] for t in every]
    assert [t["id"] for t in await trades(limit=2)] == ids[-2:]
    assert [t["id"] for t in await trades(startTime=times[1], limit=2)] == ids[1:3]
    assert [t["id"] for t in await trades(startTime=times[1], endTime=times[2])] == ids[1:3]
    assert [t["id"] for t in await trades(endTime=times[1])] == ids[:2]
    assert [t["id"] for t in await trades(fromId=ids[2])] == ids[2:]
    status, body, _ = await rest.call("GET", "/fapi/v1/userTrades", signed=True,
                                      symbol="BTCUSDT", fromId=ids[0], startTime=times[0])  # fmt: skip
    assert_error(status, body, 400, -1128)
    status, body, _ = await rest.call("GET", "/fapi/v1/userTrades", signed=True, symbol="BTCUSDT",
                                      startTime=times[0], endTime=times[0] + 8 * 86_400_000)  # fmt: skip
    assert_error(status, body, 400, -1127)
