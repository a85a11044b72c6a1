"""BinanceClient against a small fake Binance: a real aiohttp server on 127.0.0.1:0.

The fake verifies HMAC signatures and recvWindow like Binance, records every request, and
can be scripted to answer error JSON, 429/418 with Retry-After, 5xx, weight headers or
slowly.  Shared state goes through the real Redis fixture.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from shared.binance import (
    AuthError,
    BinanceClient,
    BinanceCode,
    CircuitOpenError,
    ExchangeError,
    ExchangeUnavailable,
    InsufficientMargin,
    InvalidListenKey,
    IpBanned,
    NoChangeNeeded,
    OrderRejected,
    RateLimited,
    RetryableError,
    retry_async,
)
from shared.binance.ratelimit import MINUTE_MS
from shared.binance.signing import account_id, sign
from shared.keys import Keys
from shared.testing import free_port

KEY = "test-key-Ab12Cd34Ef56Gh78Ij90KlMnOpQrStUvWxYz0123456789abcdefghijkl"
SECRET = "test-secret-Zz99Yy88Xx77Ww66Vv55Uu44Tt33Ss22Rr11Qq00PpOoNnMmLlKkJj"
SIGNED_PREFIXES = ("/fapi/v1/order", "/fapi/v3/", "/fapi/v1/openOrders", "/fapi/v1/allOpen",
                   "/fapi/v1/leverage", "/fapi/v1/marginType", "/fapi/v1/algoOrder",
                   "/fapi/v1/openAlgoOrders")  # fmt: skip


@dataclass
class Seen:
    method: str
    path: str
    params: dict[str, str]
    api_key: str | None
    at: float


Responder = Callable[[], web.Response]


def error(status: int, code: int | None, msg: str = "err", **headers: str) -> Responder:
    if code is None:
        return lambda: web.Response(status=status, text="<html>bad gateway</html>",
                                    headers=headers)  # fmt: skip
    return lambda: web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


class FakeBinance:
    """Just enough of /fapi to exercise the client, with Binance's signing rules."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self.script: dict[str, list[Responder]] = defaultdict(list)
        self.skew_ms = 0  # server clock ahead of ours
        self.delay = 0.0
        self.used_weight: int | None = None  # X-MBX-USED-WEIGHT-1M to send, if any

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.skew_ms

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_query, body = request.rel_url.raw_query_string, await request.text()
        params = dict(parse_qsl(raw_query)) | dict(parse_qsl(body))
        path = request.path
        self.seen.append(Seen(request.method, path, params,
                              request.headers.get("X-MBX-APIKEY"), time.monotonic()))  # fmt: skip
        if self.delay:
            await asyncio.sleep(self.delay)
        resp = self._answer(request.method, path, raw_query + body, params)
        if self.used_weight is not None:
            resp.headers["X-MBX-USED-WEIGHT-1M"] = str(self.used_weight)
        return resp

    def _answer(self, method: str, path: str, total: str, params: dict[str, str]) -> web.Response:
        if self.script.get(path):
            return self.script[path].pop(0)()
        if path.startswith(SIGNED_PREFIXES):
            refused = self._check_signed(total, params)
            if refused is not None:
                return refused()
        if path == "/fapi/v1/time":
            return web.json_response({"serverTime": self.now_ms()})
        if path == "/fapi/v1/klines":
            return web.json_response([[0, "1", "2", "0.5", "1.5", "10", 59999]])
        if path == "/fapi/v1/listenKey" and method == "POST":
            return web.json_response({"listenKey": "lk-abc"})
        return web.json_response({"method": method, "params": params})

    def _check_signed(self, total: str, params: dict[str, str]) -> Responder | None:
        payload = re.sub(r"&?signature=[0-9a-f]+", "", total)
        if sign(SECRET, payload) != params.get("signature"):
            return error(400, -1022, "Signature for this request is not valid.")
        ts, window = int(params["timestamp"]), int(params.get("recvWindow", 5000))
        if not (self.now_ms() - window <= ts < self.now_ms() + 1000):
            return error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return None


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    fb = FakeBinance()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fb.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fb.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fb
    finally:
        await runner.cleanup()


def client(fake: FakeBinance, redis: Any = None, prefix: str = "slt:", **kw: Any) -> BinanceClient:
    secret = kw.pop("secret", SECRET)
    return BinanceClient.from_credentials(fake.url, KEY, secret, redis, redis_prefix=prefix, **kw)


class FakeTime:
    """Wall clock + sleep that only moves when slept (for minute-boundary tests)."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def wall(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


# ---- signing, parameters ------------------------------------------------------------


async def test_signed_request_is_verified_by_the_server(fake: FakeBinance) -> None:
    async with client(fake) as c:
        out = await c.position_risk("BTCUSDT")
    req = fake.calls("/fapi/v3/positionRisk")[0]
    assert out["params"]["symbol"] == "BTCUSDT"  # the fake only answers verified requests
    assert req.method == "GET" and req.api_key == KEY
    assert req.params["recvWindow"] == "5000"
    assert abs(int(req.params["timestamp"]) - fake.now_ms()) < 2000
    assert re.fullmatch(r"[0-9a-f]{64}", req.params["signature"])
    assert [s.path for s in fake.seen] == ["/fapi/v1/time", "/fapi/v3/positionRisk"]


async def test_wrong_secret_is_an_auth_error(fake: FakeBinance) -> None:
    async with client(fake, secret="not-the-secret") as c:
        with pytest.raises(AuthError) as info:
            await c.balance()
    assert info.value.code is BinanceCode.INVALID_SIGNATURE and info.value.status == 400
    assert c.breaker.state.value == "closed"


async def test_decimals_leave_as_plain_strings_in_a_signed_body(fake: FakeBinance) -> None:
    async with client(fake) as c:
        await c.new_order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                          quantity=Decimal("1E-3"), price=Decimal("3E+4"), reduceOnly=True,
                          newClientOrderId="slt-1")  # fmt: skip
        with pytest.raises(ValueError):
            await c.new_order(symbol="BTCUSDT", side="BUY")
    sent = fake.calls("/fapi/v1/order")
    assert len(sent) == 1 and sent[0].method == "POST"
    p = sent[0].params
    assert (p["quantity"], p["price"], p["reduceOnly"]) == ("0.001", "30000", "true")


async def test_algo_order_endpoints(fake: FakeBinance) -> None:
    async with client(fake) as c:
        out = await c.new_algo_order(symbol="BTCUSDT", side="SELL", type="STOP_MARKET",
                                     triggerPrice=Decimal("25000.50"), closePosition=True,
                                     clientAlgoId="slt-stop-1")  # fmt: skip
        assert out["params"]["algoType"] == "CONDITIONAL"
        assert out["params"]["triggerPrice"] == "25000.50"
        assert out["params"]["closePosition"] == "true"
        await c.cancel_algo_order(algo_id=42)
        await c.query_algo_order(client_algo_id="slt-stop-1")
        await c.open_algo_orders("BTCUSDT")
        for bad in (
            {"type": "STOP_MARKET"},  # no triggerPrice
            {"type": "LIMIT", "triggerPrice": 1},
            {"type": "TAKE_PROFIT_MARKET", "triggerPrice": 1, "closePosition": True,
             "quantity": Decimal("1")},
        ):  # fmt: skip
            with pytest.raises(ValueError):
                await c.new_algo_order(symbol="BTCUSDT", side="SELL", **bad)
        with pytest.raises(ValueError):
            await c.cancel_algo_order()
    cancel = fake.calls("/fapi/v1/algoOrder")[1]
    assert cancel.method == "DELETE" and cancel.params["algoId"] == "42"
    query = fake.calls("/fapi/v1/algoOrder")[2]
    assert query.method == "GET" and query.params["clientAlgoId"] == "slt-stop-1"
    assert fake.calls("/fapi/v1/openAlgoOrders")[0].params["symbol"] == "BTCUSDT"


async def test_listen_key_put_and_delete_send_the_key(fake: FakeBinance) -> None:
    async with client(fake) as c:
        assert (await c.create_listen_key())["listenKey"] == "lk-abc"
        await c.keepalive_listen_key("lk-abc")
        await c.close_listen_key("lk-abc")
    post, put, delete = fake.calls("/fapi/v1/listenKey")
    assert (post.method, put.method, delete.method) == ("POST", "PUT", "DELETE")
    assert put.params == {"listenKey": "lk-abc"} and delete.params == {"listenKey": "lk-abc"}
    assert put.api_key == KEY and "signature" not in put.params


async def test_public_endpoints_and_weights(fake: FakeBinance, redis_client, prefix) -> None:
    async with client(fake, redis_client, prefix) as c:
        assert await c.ping() == {"method": "GET", "params": {}}
        rows = await c.klines("BTCUSDT", "1m", start_time=1, end_time=2, limit=1000)
        assert rows[0][6] == 59999
        await c.premium_index()
        await c.exchange_info()
        await c.open_orders()
        with pytest.raises(ValueError):
            await c.klines("BTCUSDT", "1m", limit=0)
        with pytest.raises(ValueError):
            await c.change_leverage("BTCUSDT", 200)
    k = fake.calls("/fapi/v1/klines")[0].params
    assert k == {"symbol": "BTCUSDT", "interval": "1m", "startTime": "1", "endTime": "2",
                 "limit": "1000"}  # fmt: skip
    # ping 1 + klines(1000) 5 + premiumIndex(all) 10 + exchangeInfo 1 + time 1 + openOrders 40
    minute = c.server_ms() // MINUTE_MS
    used = await redis_client.get(Keys(prefix).rest_weight(c.account_id, minute))
    assert int(used) == 58 or c.server_ms() % MINUTE_MS < 2000  # unless a minute just rolled


# ---- typed errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "exc_type"),
    [
        (400, -2019, InsufficientMargin),
        (400, -2010, OrderRejected),
        (400, -4164, OrderRejected),
        (400, -2015, AuthError),
        (400, -4046, NoChangeNeeded),
        (400, -1125, InvalidListenKey),
        (400, -1121, ExchangeError),
        (503, None, RetryableError),
        (400, -9999, ExchangeError),
    ],
)
async def test_error_json_becomes_typed_exceptions(
    fake: FakeBinance, status: int, code: int | None, exc_type: type[ExchangeError]
) -> None:
    fake.script["/fapi/v1/order"].append(error(status, code, "nope"))
    async with client(fake) as c:
        with pytest.raises(exc_type) as info:
            await c.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=1)
    exc = info.value
    assert type(exc) is exc_type and exc.status == status and exc.code == code
    if code == -9999:
        assert not isinstance(exc.code, BinanceCode)
    elif code is not None:
        assert isinstance(exc.code, BinanceCode) and exc.msg == "nope"


# ---- 429 / 418: everyone stops -------------------------------------------------------


@pytest.mark.parametrize(("status", "exc_type"), [(429, RateLimited), (418, IpBanned)])
async def test_throttle_stops_every_client_sharing_redis(
    fake: FakeBinance, redis_client, prefix, status: int, exc_type: type[ExchangeError]
) -> None:
    fake.script["/fapi/v1/klines"].append(error(status, -1003, "Way too many", **{"Retry-After": "1"}))  # fmt: skip
    async with client(fake, redis_client, prefix) as a, client(fake, redis_client, prefix) as b:
        with pytest.raises(exc_type) as info:
            await a.klines("BTCUSDT", "1m")
        assert info.value.retry_after == 1.0 and info.value.code is BinanceCode.TOO_MANY_REQUESTS
        ban_key = Keys(prefix).rest_banned_until(account_id(KEY))
        until = int(await redis_client.get(ban_key))
        assert 0 < until - b.server_ms() <= 1000
        assert 0 < await redis_client.pttl(ban_key) <= 1100
        await b.ping()  # a second instance waits the ban out before sending
        throttled_at = fake.calls("/fapi/v1/klines")[0].at  # the 429 was answered after this
        assert fake.calls("/fapi/v1/ping")[0].at - throttled_at >= 0.95
        assert b.stats()["ban_waits"] == 1
        key = "bans" if status == 418 else "rate_limit_hits"
        assert a.stats()[key] == 1


async def test_shared_ban_is_in_wall_clock_whatever_each_process_thinks_of_exchange_time(
    fake: FakeBinance, redis_client, prefix
) -> None:
    """Process `a` synced to a server an hour ahead; `b` never synced. The ban `a` stores
    must still mean ~1 s to `b` (not an hour): bans are kept in wall-clock ms."""
    fake.skew_ms = 3_600_000
    fake.script["/fapi/v1/order"].append(error(429, -1003, "slow", **{"Retry-After": "1"}))
    async with client(fake, redis_client, prefix) as a, client(fake, redis_client, prefix) as b:
        with pytest.raises(RateLimited):
            await a.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="1")
        until = int(await redis_client.get(Keys(prefix).rest_banned_until(account_id(KEY))))
        assert 0 < until - time.time() * 1000 <= 1100
        started = time.monotonic()
        await b.ping()  # waits the short ban out instead of refusing for an hour
        assert 0.5 <= time.monotonic() - started < 5


async def test_long_ban_refuses_without_sending(fake: FakeBinance, redis_client, prefix) -> None:
    fake.script["/fapi/v1/ping"].append(error(418, -1003, "banned", **{"Retry-After": "120"}))
    async with client(fake, redis_client, prefix) as a, client(fake, redis_client, prefix) as b:
        with pytest.raises(IpBanned):
            await a.ping()
        with pytest.raises(IpBanned) as info:
            await a.ping()  # this process saw the 418
        assert 115 < info.value.retry_after <= 120
        with pytest.raises(RateLimited):
            await b.exchange_info()  # the other one only knows "stopped until"
        assert len(fake.seen) == 1
        assert b.stats()["gate_refusals"] == 1


# ---- shared weight budget -----------------------------------------------------------


async def test_weight_budget_shared_across_clients(fake: FakeBinance, redis_client, prefix) -> None:
    clock = FakeTime(1_700_000_020.0)  # 40 s into a minute
    opts = {"weight_limit_1m": 10, "weight_safety": 1.0, "wall": clock.wall, "sleep": clock.sleep}
    async with (
        client(fake, redis_client, prefix, **opts) as a,
        client(fake, redis_client, prefix, **opts) as b,
    ):
        first = Keys(prefix).rest_weight(a.account_id, int(clock.t * 1000) // MINUTE_MS)
        for _ in range(3):
            await a.klines("BTCUSDT", "1m", limit=499)  # weight 2 each
            await b.klines("BTCUSDT", "1m", limit=200)
        second = Keys(prefix).rest_weight(a.account_id, int(clock.t * 1000) // MINUTE_MS)
        assert first != second
        assert int(await redis_client.get(first)) == 10  # five requests fit in the minute
        assert int(await redis_client.get(second)) == 2  # the sixth waited for the next
        assert clock.sleeps == [pytest.approx(20.0)]
        assert b.stats()["weight_waits"] == 1 and a.stats()["weight_waits"] == 0
    assert len(fake.calls("/fapi/v1/klines")) == 6


async def test_used_weight_header_slows_requests(fake: FakeBinance, redis_client, prefix) -> None:
    clock = FakeTime(1_700_000_030.0)  # 50 s into a minute
    fake.used_weight = 1919  # of 2400 * 0.8 = 1920
    async with client(fake, redis_client, prefix, wall=clock.wall, sleep=clock.sleep) as c:
        await c.ping()
        assert c.stats()["weight_used"] == 1919
        await c.klines("BTCUSDT", "1m", limit=100)  # weight 2: waits for the next minute
        assert clock.sleeps == [pytest.approx(10.0)]
        assert c.stats()["weight_waits"] == 1
    assert len(fake.calls("/fapi/v1/klines")) == 1


# ---- circuit breaker ----------------------------------------------------------------


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_breaker_opens_rejects_trials_once_and_closes(fake: FakeBinance) -> None:
    mono = Mono()
    for _ in range(5):
        fake.script["/fapi/v1/ping"].append(error(500, None))
    async with client(fake, now=mono) as c:
        for _ in range(5):
            with pytest.raises(RetryableError):
                await c.ping()
        with pytest.raises(CircuitOpenError) as info:
            await c.ping()
        assert info.value.retry_after == pytest.approx(60.0)
        assert len(fake.seen) == 5  # rejected without sending
        mono.t += 60.0
        fake.delay = 0.2
        results = await asyncio.gather(c.ping(), c.ping(), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["CircuitOpenError", "dict"]
        assert len(fake.seen) == 6  # exactly one trial
        fake.delay = 0.0
        await c.ping()
        stats = c.stats()
    assert stats["breaker_state"] == "closed" and stats["breaker_opens"] == 1
    assert stats["breaker_rejections"] == 2


async def test_failed_trial_reopens(fake: FakeBinance) -> None:
    mono = Mono()
    for _ in range(6):
        fake.script["/fapi/v1/ping"].append(error(502, None))
    async with client(fake, now=mono) as c:
        for _ in range(5):
            with pytest.raises(RetryableError):
                await c.ping()
        mono.t += 61
        with pytest.raises(RetryableError):
            await c.ping()
        with pytest.raises(CircuitOpenError):
            await c.ping()
        assert c.stats()["breaker_opens"] == 2


async def test_business_rejections_do_not_trip_the_breaker(fake: FakeBinance) -> None:
    for _ in range(10):
        fake.script["/fapi/v1/order"].append(error(400, -2019, "Margin is insufficient."))
    async with client(fake) as c:
        for _ in range(10):
            with pytest.raises(InsufficientMargin):
                await c.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=1)
        assert c.stats()["breaker_state"] == "closed"
        assert c.stats()["breaker_failures"] == 0
        await c.ping()


async def test_timeouts_and_refused_connections_are_unavailable(fake: FakeBinance) -> None:
    fake.delay = 1.0
    async with client(fake, request_timeout=0.2) as c:
        with pytest.raises(ExchangeUnavailable) as info:
            await c.ping()
        assert info.value.status == 0 and c.stats()["breaker_failures"] == 1
    dead = BinanceClient.from_credentials(f"http://127.0.0.1:{free_port()}", KEY, SECRET)
    async with dead:
        with pytest.raises(ExchangeUnavailable):
            await dead.ping()
        assert dead.stats()["breaker_failures"] == 1


# ---- clock --------------------------------------------------------------------------


async def test_minus_1021_resyncs_time_and_retries_once(fake: FakeBinance) -> None:
    async with client(fake) as c:
        await c.account()
        fake.skew_ms = 20_000  # the server's clock jumps ahead of ours
        out = await c.account()
        assert out["params"]["recvWindow"] == "5000"
        assert abs(c.stats()["time_offset_ms"] - 20_000) < 1000
        assert c.stats()["time_syncs"] == 2
    assert [s.path for s in fake.seen] == ["/fapi/v1/time", "/fapi/v3/account",
                                           "/fapi/v3/account", "/fapi/v1/time",
                                           "/fapi/v3/account"]  # fmt: skip


async def test_persistent_minus_1021_surfaces_after_one_retry(fake: FakeBinance) -> None:
    for _ in range(2):
        fake.script["/fapi/v3/balance"].append(error(400, -1021, "Timestamp outside"))
    async with client(fake) as c:
        with pytest.raises(RetryableError) as info:
            await c.balance()
    assert info.value.code is BinanceCode.INVALID_TIMESTAMP
    assert len(fake.calls("/fapi/v3/balance")) == 2


# ---- retry helper with the client ---------------------------------------------------


async def test_retry_async_rides_over_a_5xx(fake: FakeBinance) -> None:
    fake.script["/fapi/v1/exchangeInfo"].append(error(503, -1008, "Server is busy"))
    async with client(fake) as c:
        out = await retry_async(lambda: c.exchange_info(), attempts=3, base_delay=0.01)
    assert out["method"] == "GET" and len(fake.calls("/fapi/v1/exchangeInfo")) == 2


async def test_retry_async_decisions() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ExchangeUnavailable("timeout")
        return "ok"

    assert await retry_async(flaky, 3, 0.5, 10, sleep=sleep, rand=lambda: 1.0) == "ok"
    assert sleeps == [0.5, 1.0]

    async def rejected() -> None:
        raise OrderRejected(400, -2010, "no")

    sleeps.clear()
    with pytest.raises(OrderRejected):
        await retry_async(rejected, 5, sleep=sleep)
    assert sleeps == []

    async def limited() -> None:
        raise RateLimited(429, -1003, "slow", 2.0)

    with pytest.raises(RateLimited):
        await retry_async(limited, 2, 0.01, 10, sleep=sleep, rand=lambda: 0.0)
    assert sleeps == [2.0]  # honours Retry-After

    async def long_limited() -> None:
        raise RateLimited(429, -1003, "slow", 300.0)

    sleeps.clear()
    with pytest.raises(RateLimited):
        await retry_async(long_limited, 5, sleep=sleep)
    assert sleeps == []  # longer than max_delay: give up at once


# ---- secrets, stats, lifecycle ------------------------------------------------------


async def test_secrets_never_in_logs_repr_stats_or_redis(
    fake: FakeBinance, redis_client, prefix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script["/fapi/v1/ping"].append(error(429, -1003, "slow", **{"Retry-After": "0"}))
    fake.script["/fapi/v1/order"].append(error(400, -2010, "rejected"))
    async with client(fake, redis_client, prefix) as c:
        with pytest.raises(RateLimited):
            await c.ping()
        with pytest.raises(OrderRejected):
            await c.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=1)
        await c.account()
        texts = [repr(c), str(c.stats()), caplog.text]
    names = [k async for k in redis_client.scan_iter(match=f"{prefix}*")]
    values = [await redis_client.get(k) for k in names]
    texts += [repr(names), repr(values)]
    assert names and caplog.text
    for text in texts:
        assert KEY not in text and SECRET not in text


async def test_stats_shape_and_session_lifecycle(fake: FakeBinance) -> None:
    c = client(fake)
    async with c:
        await c.ping()
        session = c._session
        assert session is not None and not session.closed
    assert session.closed
    stats = c.stats()
    for name in ("breaker_state", "breaker_opens", "breaker_failures", "requests",
                 "weight_used", "rate_limit_hits", "bans", "redis_errors"):  # fmt: skip
        assert name in stats
    assert stats["requests"] == 1


async def test_built_from_settings(fake: FakeBinance, redis_client, prefix) -> None:
    from shared.config import load_settings

    settings = load_settings(exchange={"rest_url": fake.url, "mode": "sim"},
                             redis={"prefix": prefix})  # fmt: skip
    async with BinanceClient(settings, redis_client) as c:
        await c.ping()
        assert c.account_id == account_id(settings.credentials()[0])
    assert fake.seen[0].api_key == settings.credentials()[0]
    keys = [k async for k in redis_client.scan_iter(match=f"{prefix}ratelimit:*")]
    assert len(keys) == 1
