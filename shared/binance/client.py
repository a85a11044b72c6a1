"""Async REST client for Binance USD-M futures (`/fapi`), shared by every service.

Each request goes: breaker check -> shared weight budget / ban gate (may wait) -> breaker
acquire -> sign with server-corrected time -> send -> reconcile X-MBX-USED-WEIGHT-1m ->
typed error or parsed JSON (dict/list with Binance's own field names).  -1021 re-syncs the
clock and retries once; nothing else is retried here (use `retry.retry_async`).

POST/PUT/DELETE parameters go form-encoded in the body, GET parameters in the query string,
as Binance documents; the signature covers exactly the bytes sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from yarl import URL

from shared.binance.breaker import CircuitBreaker
from shared.binance.errors import (
    BinanceCode,
    ExchangeError,
    ExchangeUnavailable,
    IpBanned,
    RateLimited,
    RetryableError,
    error_from_response,
    is_exchange_failure,
)
from shared.binance.ratelimit import LocalWeightBudget, SharedWeightBudget, WeightBudget
from shared.binance.signing import Signer, account_id, encode_params
from shared.config import Settings
from shared.keys import Keys

__all__ = ["BinanceClient", "ClientOptions", "kline_weight"]

log = logging.getLogger(__name__)

ALGO_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT",
                        "TRAILING_STOP_MARKET"})  # fmt: skip


def kline_weight(limit: int) -> int:
    """Documented weight of GET /fapi/v1/klines by LIMIT."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the client needs from `settings.exchange` (and the Redis key prefix)."""

    base_url: str
    recv_window: int = 5000
    request_timeout: float = 10.0
    weight_limit_1m: int = 2400
    weight_safety: float = 0.8
    breaker_failures: int = 5
    breaker_open_seconds: float = 60.0
    redis_prefix: str = "slt:"
    max_ban_wait: float | None = None  # wait out a ban this short; None = request_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientOptions:
        ex = settings.exchange
        return cls(ex.rest_url, ex.recv_window, ex.request_timeout, ex.weight_limit_1m,
                   ex.weight_safety, ex.breaker_failures, ex.breaker_open_seconds,
                   settings.redis.prefix)  # fmt: skip

    @property
    def weight_budget(self) -> int:
        return max(1, int(self.weight_limit_1m * self.weight_safety))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class BinanceClient:
    """One API key's REST session. `async with BinanceClient(settings, redis) as c:`."""

    def __init__(
        self,
        settings: Settings | ClientOptions,
        redis: Any | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if isinstance(settings, ClientOptions):
            opts = settings
            if credentials is None:
                raise ValueError("credentials are required with ClientOptions")
        else:
            opts = ClientOptions.from_settings(settings)
            credentials = credentials or settings.credentials()
        api_key, secret = credentials
        if not api_key:
            raise ValueError("API key is empty")
        self._opts = opts
        self._base_url = opts.base_url.rstrip("/")
        self._headers = {"X-MBX-APIKEY": api_key}
        self._signer = Signer(secret)
        self.account_id = account_id(api_key)
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=opts.request_timeout)
        self._wall, self._sleep = wall, sleep
        self._max_ban_wait = (
            opts.request_timeout if opts.max_ban_wait is None else opts.max_ban_wait
        )
        self._breaker = CircuitBreaker(opts.breaker_failures, opts.breaker_open_seconds, now)
        self._budget: WeightBudget = (
            SharedWeightBudget(redis, Keys(opts.redis_prefix), self.account_id,
                               opts.weight_budget)
            if redis is not None else LocalWeightBudget(opts.weight_budget)
        )  # fmt: skip
        self._offset_ms = 0
        self._anchor: tuple[float, int] | None = None  # (wall s, server ms) at the last sync
        self._clock_rate = 1.0  # server ms per wall ms: 1 on Binance, the speed on a fast sim
        self._time_synced = False
        self._sync_lock = asyncio.Lock()
        self._last_throttle_status = 429
        self._counters = dict.fromkeys(
            ("requests", "errors", "rate_limit_hits", "bans", "weight_waits", "ban_waits",
             "gate_refusals", "time_syncs"), 0)  # fmt: skip
        self._weight_used = 0

    @classmethod
    def from_credentials(
        cls,
        base_url: str,
        api_key: str,
        api_secret: str,
        redis: Any | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        **options: Any,
    ) -> BinanceClient:
        """For tools: explicit URL and keys; `options` are `ClientOptions` fields."""
        clock = {k: options.pop(k) for k in ("now", "wall", "sleep") if k in options}
        return cls(ClientOptions(base_url, **options), redis, session=session,
                   credentials=(api_key, api_secret), **clock)  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> BinanceClient:
        self._get_session()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if we created it (a borrowed one is the owner's)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if not self._owns_session:
                raise RuntimeError("the borrowed aiohttp session was closed")
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def __repr__(self) -> str:
        return (f"BinanceClient(base_url={self._base_url!r}, account={self.account_id}, "
                f"breaker={self._breaker.state.value})")  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Counters for /healthz and /metrics (no secrets)."""
        redis_errors = getattr(self._budget, "redis_errors", 0)
        return {**self._breaker.stats(), **self._counters, "weight_used": self._weight_used,
                "weight_limit": self._budget.limit, "time_offset_ms": self._offset_ms,
            "clock_rate": round(self._clock_rate, 3),
                "redis_errors": redis_errors}  # fmt: skip

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    # ---- clock -------------------------------------------------------------
    def server_ms(self) -> int:
        """Epoch ms on the exchange's clock.

        Binance's clock runs at wall speed, so this is the wall clock plus the synced
        offset.  A simulator may run its clock faster: two syncs measure that rate, and
        the exchange time is extrapolated from the last sync, so signed requests keep
        passing the recvWindow check without a re-sync per request.
        """
        if self._anchor is None or self._clock_rate == 1.0:
            return int(self._wall() * 1000) + self._offset_ms
        wall0, server0 = self._anchor
        return server0 + int((self._wall() - wall0) * 1000 * self._clock_rate)

    def _wall_ms(self) -> int:
        return int(self._wall() * 1000)

    async def sync_time(self) -> int:
        """Measure the server-time offset (GET /fapi/v1/time); returns it in ms."""
        async with self._sync_lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> int:
        t0 = self._wall()
        data = await self._send("GET", "/fapi/v1/time", "", 1, False)
        t1 = self._wall()
        try:
            server = int(data["serverTime"])
        except (KeyError, TypeError, ValueError):
            raise ExchangeError(200, None, "time response without serverTime") from None
        self._offset_ms = server - int((t0 + t1) * 500)
        mid = (t0 + t1) / 2
        if self._anchor is not None and mid - self._anchor[0] >= 0.05:
            rate = (server - self._anchor[1]) / ((mid - self._anchor[0]) * 1000)
            # A real exchange: rate 1 within measuring noise. Only a clearly faster clock
            # (a sped-up simulator) is extrapolated.
            self._clock_rate = rate if rate > 1.5 else 1.0
        self._anchor = (mid, server)
        self._time_synced = True
        self._counters["time_syncs"] += 1
        log.debug("server time offset %+d ms", self._offset_ms)
        return self._offset_ms

    # ---- request core --------------------------------------------------------
    async def _request(
        self, method: str, path: str, params: dict[str, Any] | None = None, *,
        weight: int, signed: bool = False,
    ) -> Any:  # fmt: skip
        query = encode_params(params)  # bad values fail here, before anything is sent
        try:
            return await self._send(method, path, query, weight, signed)
        except RetryableError as exc:
            if not (signed and exc.code == BinanceCode.INVALID_TIMESTAMP):
                raise
            log.warning("%s %s: -1021 timestamp outside recvWindow; re-syncing", method, path)
            await self.sync_time()
            return await self._send(method, path, query, weight, signed)

    async def _send(self, method: str, path: str, query: str, weight: int, signed: bool) -> Any:
        self._breaker.check()
        if signed and not self._time_synced:
            async with self._sync_lock:
                if not self._time_synced:  # another request may have synced meanwhile
                    await self._sync_locked()
        await self._wait_for_budget(weight)
        trial = self._breaker.acquire()
        try:
            result = await self._http(method, path, query, signed)
        except Exception as exc:
            if is_exchange_failure(exc):
                self._breaker.on_failure(trial)
            elif isinstance(exc, ExchangeError):
                self._breaker.on_success(trial)  # the exchange answered sensibly
            else:
                self._breaker.on_abandon(trial)
            raise
        except BaseException:
            self._breaker.on_abandon(trial)
            raise
        self._breaker.on_success(trial)
        return result

    async def _wait_for_budget(self, weight: int) -> None:
        """Reserve weight in the shared budget; wait out full minutes and short bans."""
        while True:
            verdict = await self._budget.reserve(weight, self.server_ms(), self._wall_ms())
            if verdict.ok:
                self._weight_used = verdict.used
                return
            # Bans are in wall-clock ms; a full minute is on the exchange's clock.
            wait = verdict.wait_ms / 1000
            if not verdict.banned:
                wait /= max(self._clock_rate, 1.0)
            if verdict.banned:
                if wait > self._max_ban_wait:
                    self._counters["gate_refusals"] += 1
                    msg = f"requests stopped by a shared Retry-After for {wait:.1f}s more"
                    if self._last_throttle_status == 418:
                        raise IpBanned(418, None, msg, wait)
                    raise RateLimited(429, None, msg, wait)
                self._counters["ban_waits"] += 1
            else:
                self._counters["weight_waits"] += 1
                log.info("weight %d/%d used; waiting %.1fs for the next minute",
                         verdict.used, self._budget.limit, wait)  # fmt: skip
            await self._sleep(wait)

    async def _http(self, method: str, path: str, query: str, signed: bool) -> Any:
        if signed:
            query = self._signer.signed_query(query, self.server_ms(), self._opts.recv_window)
        headers = dict(self._headers)
        data: bytes | None = None
        target = self._base_url + path
        if method == "GET" or not query:
            target = f"{target}?{query}" if query else target
        else:
            data = query.encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self._counters["requests"] += 1
        try:
            async with self._get_session().request(
                method, URL(target, encoded=True), data=data, headers=headers,
                timeout=self._timeout, allow_redirects=False,  # the key stays with Binance
            ) as resp:  # fmt: skip
                body = await resp.read()
                status, used = resp.status, resp.headers.get("X-MBX-USED-WEIGHT-1M")
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError as exc:
            self._counters["errors"] += 1
            raise ExchangeUnavailable(f"{method} {path}: no answer within "
                                      f"{self._opts.request_timeout}s") from exc  # fmt: skip
        except aiohttp.ClientError as exc:
            self._counters["errors"] += 1
            raise ExchangeUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if used is not None and used.isdigit() and int(used) > self._weight_used:
            # only when the exchange counts more than we know: saves a Redis round trip
            self._weight_used = await self._budget.reconcile(int(used), self.server_ms())
        if 200 <= status < 300:
            try:
                return orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                self._counters["errors"] += 1
                raise ExchangeError(status, None, f"{method} {path}: invalid JSON") from None
        self._counters["errors"] += 1
        exc = error_from_response(status, body, retry_after)
        if isinstance(exc, RateLimited | IpBanned):
            await self._throttled(exc, path)
        raise exc

    async def _throttled(self, exc: RateLimited | IpBanned, path: str) -> None:
        """429/418: stop every process sharing this key until Retry-After has passed."""
        # Kept in wall-clock ms, which every process sharing the key agrees on; HTTP's
        # Retry-After is a delay in real seconds (the simulator scales it to its speed).
        now = self._wall_ms()
        until = now + int(exc.retry_after * 1000)
        self._last_throttle_status = exc.status
        self._counters["bans" if isinstance(exc, IpBanned) else "rate_limit_hits"] += 1
        await self._budget.ban(until, now)
        log.warning("%s on %s: all requests stopped for %.1fs (code %s)",
                    exc.status, path, exc.retry_after, exc.code)  # fmt: skip

    # ---- market data (public) ------------------------------------------------
    async def ping(self) -> dict[str, Any]:
        return await self._request("GET", "/fapi/v1/ping", weight=1)

    async def server_time(self) -> dict[str, Any]:
        return await self._request("GET", "/fapi/v1/time", weight=1)

    async def exchange_info(self) -> dict[str, Any]:
        return await self._request("GET", "/fapi/v1/exchangeInfo", weight=1)

    async def klines(
        self, symbol: str, interval: str, start_time: int | None = None,
        end_time: int | None = None, limit: int = 500,
    ) -> list[list[Any]]:  # fmt: skip
        """Raw kline arrays `[openTime, open, high, low, close, volume, closeTime, ...]`."""
        if not 1 <= limit <= 1500:
            raise ValueError(f"klines limit must be 1..1500, got {limit}")
        params = {"symbol": symbol, "interval": interval, "startTime": start_time,
                  "endTime": end_time, "limit": limit}  # fmt: skip
        return await self._request("GET", "/fapi/v1/klines", params, weight=kline_weight(limit))

    async def premium_index(self, symbol: str | None = None) -> Any:
        """Mark price and funding; a dict for one symbol, a list for all (weight 10)."""
        return await self._request("GET", "/fapi/v1/premiumIndex", {"symbol": symbol},
                                   weight=1 if symbol else 10)  # fmt: skip

    # ---- account (signed) ------------------------------------------------------
    async def position_risk(self, symbol: str | None = None) -> list[dict[str, Any]]:
        return await self._request("GET", "/fapi/v3/positionRisk", {"symbol": symbol},
                                   weight=5, signed=True)  # fmt: skip

    async def user_trades(
        self, symbol: str, start_time: int | None = None, end_time: int | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """`GET /fapi/v1/userTrades` (weight 5): the account's fills of one symbol, oldest
        first, to replay a gap in the user data stream.  Binance: with neither time given,
        the last 7 days; start..end at most 7 days apart; `limit` 1..1000 (default 500)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be 1..1000, got {limit!r}")
        params = {"symbol": symbol, "startTime": start_time, "endTime": end_time, "limit": limit}
        return await self._request("GET", "/fapi/v1/userTrades", params, weight=5, signed=True)

    async def balance(self) -> list[dict[str, Any]]:
        return await self._request("GET", "/fapi/v3/balance", weight=5, signed=True)

    async def account(self) -> dict[str, Any]:
        return await self._request("GET", "/fapi/v3/account", weight=5, signed=True)

    async def symbol_config(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """`GET /fapi/v1/symbolConfig`: `leverage` and `marginType` per symbol (v3
        positionRisk and ACCOUNT_UPDATE carry no leverage)."""
        return await self._request("GET", "/fapi/v1/symbolConfig", {"symbol": symbol},
                                   weight=5, signed=True)  # fmt: skip

    async def position_risk_v2(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """`GET /fapi/v2/positionRisk`: every symbol, with `leverage` (for exchanges
        without symbolConfig, such as the simulator)."""
        return await self._request("GET", "/fapi/v2/positionRisk", {"symbol": symbol},
                                   weight=5, signed=True)  # fmt: skip

    # ---- orders (signed) -------------------------------------------------------
    async def new_order(self, **params: Any) -> dict[str, Any]:
        """POST /fapi/v1/order with Binance's parameter names (`newClientOrderId`, ...).

        Costs no IP weight (orders have their own count), so it is never slowed by a
        busy budget, only stopped by a ban.  On `ExchangeUnavailable` the outcome is
        unknown: `query_order(origClientOrderId)` before sending it again.
        """
        _require(params, "symbol", "side", "type")
        return await self._request("POST", "/fapi/v1/order", params, weight=0, signed=True)

    async def cancel_order(
        self, symbol: str, order_id: int | None = None, orig_client_order_id: str | None = None
    ) -> dict[str, Any]:
        params = _order_ref(symbol, order_id, orig_client_order_id)
        return await self._request("DELETE", "/fapi/v1/order", params, weight=1, signed=True)

    async def query_order(
        self, symbol: str, order_id: int | None = None, orig_client_order_id: str | None = None
    ) -> dict[str, Any]:
        params = _order_ref(symbol, order_id, orig_client_order_id)
        return await self._request("GET", "/fapi/v1/order", params, weight=1, signed=True)

    async def open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        return await self._request("GET", "/fapi/v1/openOrders", {"symbol": symbol},
                                   weight=1 if symbol else 40, signed=True)  # fmt: skip

    async def cancel_all_open_orders(self, symbol: str) -> dict[str, Any]:
        return await self._request("DELETE", "/fapi/v1/allOpenOrders", {"symbol": symbol},
                                   weight=1, signed=True)  # fmt: skip

    async def change_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        if isinstance(leverage, bool) or not isinstance(leverage, int) or not 1 <= leverage <= 125:
            raise ValueError(f"leverage must be an int 1..125, got {leverage!r}")
        return await self._request("POST", "/fapi/v1/leverage",
                                   {"symbol": symbol, "leverage": leverage},
                                   weight=1, signed=True)  # fmt: skip

    async def change_margin_type(self, symbol: str, margin_type: str) -> dict[str, Any]:
        """ISOLATED or CROSSED; already set raises `NoChangeNeeded` (-4046)."""
        if margin_type not in ("ISOLATED", "CROSSED"):
            raise ValueError(f"margin_type must be ISOLATED or CROSSED, got {margin_type!r}")
        return await self._request("POST", "/fapi/v1/marginType",
                                   {"symbol": symbol, "marginType": margin_type},
                                   weight=1, signed=True)  # fmt: skip

    # ---- conditional orders: Algo Order API (signed) ---------------------------
    async def new_algo_order(self, **params: Any) -> dict[str, Any]:
        """POST /fapi/v1/algoOrder: stops and take-profits since Binance moved them off
        /fapi/v1/order (-4120). `algoType` defaults to CONDITIONAL; `triggerPrice`,
        `closePosition` or `reduceOnly`+`quantity`, `clientAlgoId` use Binance's names."""
        params = {"algoType": "CONDITIONAL", **params}
        _require(params, "symbol", "side", "type")
        if params["algoType"] != "CONDITIONAL" or params["type"] not in ALGO_TYPES:
            raise ValueError(f"unsupported algo order {params['algoType']}/{params['type']}")
        if params["type"] != "TRAILING_STOP_MARKET" and params.get("triggerPrice") is None:
            raise ValueError(f"{params['type']} needs triggerPrice")
        if params.get("closePosition") is True and (
            params.get("quantity") is not None or params.get("reduceOnly") is not None
        ):
            raise ValueError("closePosition cannot be sent with quantity or reduceOnly")
        return await self._request("POST", "/fapi/v1/algoOrder", params, weight=0, signed=True)

    async def leverage_brackets(self, symbol: str | None = None) -> Any:
        """`GET /fapi/v1/leverageBracket` (weight 1): notional caps per leverage tier, all
        symbols or one (parse with `shared.brackets.parse_leverage_brackets`)."""
        return await self._request("GET", "/fapi/v1/leverageBracket", {"symbol": symbol},
                                   weight=1, signed=True)  # fmt: skip

    async def cancel_algo_order(
        self, algo_id: int | None = None, client_algo_id: str | None = None
    ) -> dict[str, Any]:
        params = _algo_ref(algo_id, client_algo_id)
        return await self._request("DELETE", "/fapi/v1/algoOrder", params, weight=1, signed=True)

    async def query_algo_order(
        self, algo_id: int | None = None, client_algo_id: str | None = None
    ) -> dict[str, Any]:
        params = _algo_ref(algo_id, client_algo_id)
        return await self._request("GET", "/fapi/v1/algoOrder", params, weight=1, signed=True)

    async def open_algo_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        return await self._request("GET", "/fapi/v1/openAlgoOrders", {"symbol": symbol},
                                   weight=1 if symbol else 40, signed=True)  # fmt: skip

    # ---- user data stream listenKey (API key, not signed) ----------------------
    async def create_listen_key(self) -> dict[str, Any]:
        """`{"listenKey": ...}`; valid 60 min unless kept alive."""
        return await self._request("POST", "/fapi/v1/listenKey", weight=1)

    async def keepalive_listen_key(self, listen_key: str) -> dict[str, Any]:
        """Extend the key by 60 min; -1125 (`InvalidListenKey`) means create a new one."""
        return await self._request("PUT", "/fapi/v1/listenKey", {"listenKey": listen_key},
                                   weight=1)  # fmt: skip

    async def close_listen_key(self, listen_key: str) -> dict[str, Any]:
        return await self._request("DELETE", "/fapi/v1/listenKey", {"listenKey": listen_key},
                                   weight=1)  # fmt: skip


def _require(params: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if params.get(n) is None]
    if missing:
        raise ValueError(f"missing order parameter(s): {', '.join(missing)}")


def _order_ref(symbol: str, order_id: int | None, client_id: str | None) -> dict[str, Any]:
    if order_id is None and client_id is None:
        raise ValueError("need order_id or orig_client_order_id")
    return {"symbol": symbol, "orderId": order_id, "origClientOrderId": client_id}


def _algo_ref(algo_id: int | None, client_algo_id: str | None) -> dict[str, Any]:
    if algo_id is None and client_algo_id is None:
        raise ValueError("need algo_id or client_algo_id")
    return {"algoId": algo_id, "clientAlgoId": client_algo_id}
