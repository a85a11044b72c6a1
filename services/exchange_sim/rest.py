"""The REST surface of the simulator: fapi.binance.com's paths, parameters, weights, shapes.

Every `/fapi` request goes through one pipeline (`_pipeline`), in Binance's order:
  injected fault (admin) -> bring the simulation up to the clock -> parse query + form
  body -> charge request weight per IP (429 / 418) -> security (API key, signature,
  recvWindow vs the SIMULATOR clock) -> the endpoint -> JSON with `X-MBX-USED-WEIGHT-1m`
  (and `X-MBX-ORDER-COUNT-1m` / `-10s` on order endpoints).
Every rejection is Binance's error JSON `{"code": .., "msg": ..}` with its HTTP status.

Endpoint table (`ENDPOINTS`): method, path, security, weight and handler in one row, so a
reader checks the simulator against Binance's docs line by line. Weights as documented for
USD-M futures; order placement costs 0 IP weight and 1 order count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .auth import ApiError, SimAccount, missing_param, opt_int, parse_params
from .engine.errors import EngineReject
from .specs import exchange_info, leverage_brackets

if TYPE_CHECKING:
    from .server import SimServer

log = logging.getLogger(__name__)
Handler = Callable[["Ctx"], Any]
UNKNOWN_ERROR = "An unknown error occured while processing the request."
SIM_KEY: web.AppKey[Any] = web.AppKey("sim", object)
NON_ENGINE_PARAMS = ("signature", "timestamp", "recvWindow")


@dataclass
class Ctx:
    """What an endpoint handler sees: the simulator, the merged params, time and account."""

    sim: SimServer
    params: dict[str, str]
    now_ms: int
    account: SimAccount | None = None

    def require(self, name: str) -> str:
        value = self.params.get(name)
        if value is None or value == "":
            raise missing_param(name)
        return value

    @property
    def account_id(self) -> str:
        assert self.account is not None
        return self.account.account_id

    def engine_params(self) -> dict[str, str]:
        return {k: v for k, v in self.params.items() if k not in NON_ENGINE_PARAMS}

    def push(self, events: list[Any]) -> None:
        self.sim.push_events(events)


def klines_weight(params: dict[str, str]) -> int:
    raw = params.get("limit", "500")
    limit = int(raw) if raw.isdigit() else 500
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def by_symbol(with_symbol: int, without: int) -> Callable[[dict[str, str]], int]:
    return lambda p: with_symbol if p.get("symbol") else without


# ---- handlers ------------------------------------------------------------------------------
def ping(ctx: Ctx) -> Any:
    return {}


def server_time(ctx: Ctx) -> Any:
    return {"serverTime": ctx.now_ms}


def info(ctx: Ctx) -> Any:
    body = exchange_info(ctx.sim.specs, ctx.now_ms)
    for limit in body["rateLimits"]:
        if limit["rateLimitType"] == "REQUEST_WEIGHT":
            limit["limit"] = ctx.sim.limiter.weight_limit_1m
    return body


def klines(ctx: Ctx) -> Any:
    symbol = ctx.require("symbol").upper()
    interval = ctx.require("interval")
    return ctx.sim.driver.rest_klines(
        symbol, interval, ctx.params.get("startTime"), ctx.params.get("endTime"),
        ctx.params.get("limit"), ctx.now_ms,
    )  # fmt: skip


def premium_index(ctx: Ctx) -> Any:
    symbol = ctx.params.get("symbol")
    return ctx.sim.driver.premium_index(symbol.upper() if symbol else None, ctx.now_ms)


def _versioned(method: str, version: int) -> Handler:
    def handler(ctx: Ctx) -> Any:
        ex = ctx.sim.exchange
        if method == "position_risk":
            symbol = ctx.params.get("symbol")
            return ex.position_risk(ctx.account_id, symbol.upper() if symbol else None, version)
        return getattr(ex, method)(ctx.account_id, version)

    return handler


def _events(ctx: Ctx, result: tuple[Any, list[Any]]) -> Any:
    body, events = result
    ctx.push(events)
    return body


def new_order(ctx: Ctx) -> Any:
    return _events(
        ctx, ctx.sim.exchange.place_order(ctx.account_id, ctx.engine_params(), ctx.now_ms)
    )


def _order_ids(ctx: Ctx) -> tuple[str, str | None, str | None]:
    return (
        ctx.require("symbol").upper(),
        ctx.params.get("orderId"),
        ctx.params.get("origClientOrderId"),
    )


def cancel_order(ctx: Ctx) -> Any:
    symbol, oid, cid = _order_ids(ctx)
    return _events(ctx, ctx.sim.exchange.cancel_order(ctx.account_id, symbol, oid, cid, ctx.now_ms))


def query_order(ctx: Ctx) -> Any:
    symbol, oid, cid = _order_ids(ctx)
    return ctx.sim.exchange.query_order(ctx.account_id, symbol, oid, cid)


def open_orders(ctx: Ctx) -> Any:
    symbol = ctx.params.get("symbol")
    return ctx.sim.exchange.open_orders(ctx.account_id, symbol.upper() if symbol else None)


def cancel_all(ctx: Ctx) -> Any:
    symbol = ctx.require("symbol").upper()
    return _events(ctx, ctx.sim.exchange.cancel_all(ctx.account_id, symbol, ctx.now_ms))


def new_algo(ctx: Ctx) -> Any:
    ex = ctx.sim.exchange
    return _events(ctx, ex.place_algo_order(ctx.account_id, ctx.engine_params(), ctx.now_ms))


def cancel_algo(ctx: Ctx) -> Any:
    aid, cid = ctx.params.get("algoId"), ctx.params.get("clientAlgoId")
    return _events(ctx, ctx.sim.exchange.cancel_algo_order(ctx.account_id, aid, cid, ctx.now_ms))


def query_algo(ctx: Ctx) -> Any:
    aid, cid = ctx.params.get("algoId"), ctx.params.get("clientAlgoId")
    return ctx.sim.exchange.query_algo_order(ctx.account_id, aid, cid)


def open_algos(ctx: Ctx) -> Any:
    symbol = ctx.params.get("symbol")
    return ctx.sim.exchange.open_algo_orders(ctx.account_id, symbol.upper() if symbol else None)


def cancel_all_algos(ctx: Ctx) -> Any:
    symbol = ctx.require("symbol").upper()
    return _events(ctx, ctx.sim.exchange.cancel_all_algo(ctx.account_id, symbol, ctx.now_ms))


def leverage(ctx: Ctx) -> Any:
    symbol, lev = ctx.require("symbol").upper(), ctx.require("leverage")
    return _events(ctx, ctx.sim.exchange.set_leverage(ctx.account_id, symbol, lev, ctx.now_ms))


def margin_type(ctx: Ctx) -> Any:
    symbol, mt = ctx.require("symbol").upper(), ctx.require("marginType")
    return _events(ctx, ctx.sim.exchange.set_margin_type(ctx.account_id, symbol, mt, ctx.now_ms))


def user_trades(ctx: Ctx) -> Any:
    symbol = ctx.require("symbol").upper()
    raw = ctx.params.get("limit", "500")
    limit = int(raw) if raw.isdigit() and 1 <= int(raw) <= 1000 else 500
    start, end, from_id = (
        opt_int(ctx.params.get(k), k) for k in ("startTime", "endTime", "fromId")
    )
    return ctx.sim.exchange.user_trades(ctx.account_id, symbol, limit, start=start, end=end,
                                        from_id=from_id, now_ms=ctx.now_ms)  # fmt: skip


def leverage_bracket(ctx: Ctx) -> Any:
    symbol = ctx.params.get("symbol")
    if symbol:
        spec = ctx.sim.specs.get(symbol.upper())
        if spec is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return [leverage_brackets(spec)]
    return [leverage_brackets(spec) for spec in ctx.sim.specs.values()]


def listen_key_post(ctx: Ctx) -> Any:
    lk = ctx.sim.listen_keys.create(ctx.account_id, ctx.now_ms)
    return {"listenKey": lk.key}


def listen_key_put(ctx: Ctx) -> Any:
    fault = ctx.sim.faults.take_keepalive_failure()
    key = ctx.params.get("listenKey")
    if fault is not None:
        if fault.code == -1125 and key and ctx.sim.listen_keys.active(key, ctx.now_ms):
            ctx.sim.listen_keys.expire_now(key, ctx.now_ms)
            ctx.sim.driver.step(ctx.now_ms)
        raise fault
    lk = ctx.sim.listen_keys.keepalive(ctx.account_id, key, ctx.now_ms)
    return {"listenKey": lk.key}


def listen_key_delete(ctx: Ctx) -> Any:
    lk = ctx.sim.listen_keys.close(ctx.account_id, ctx.params.get("listenKey"), ctx.now_ms)
    if lk is not None:
        ctx.sim.user_hub.close_key(lk.key)
    return {}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    security: str  # NONE | KEY | SIGNED
    weight: int | Callable[[dict[str, str]], int]
    handler: Handler
    orders: int = 0


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/fapi/v1/ping", "NONE", 1, ping),
    Endpoint("GET", "/fapi/v1/time", "NONE", 1, server_time),
    Endpoint("GET", "/fapi/v1/exchangeInfo", "NONE", 1, info),
    Endpoint("GET", "/fapi/v1/klines", "NONE", klines_weight, klines),
    Endpoint("GET", "/fapi/v1/premiumIndex", "NONE", by_symbol(1, 10), premium_index),
    Endpoint("GET", "/fapi/v2/positionRisk", "SIGNED", 5, _versioned("position_risk", 2)),
    Endpoint("GET", "/fapi/v3/positionRisk", "SIGNED", 5, _versioned("position_risk", 3)),
    Endpoint("GET", "/fapi/v2/balance", "SIGNED", 5, _versioned("balances", 2)),
    Endpoint("GET", "/fapi/v3/balance", "SIGNED", 5, _versioned("balances", 3)),
    Endpoint("GET", "/fapi/v2/account", "SIGNED", 5, _versioned("account", 2)),
    Endpoint("GET", "/fapi/v3/account", "SIGNED", 5, _versioned("account", 3)),
    Endpoint("GET", "/fapi/v1/userTrades", "SIGNED", 5, user_trades),
    Endpoint("GET", "/fapi/v1/leverageBracket", "SIGNED", 1, leverage_bracket),
    Endpoint("POST", "/fapi/v1/order", "SIGNED", 0, new_order, orders=1),
    Endpoint("DELETE", "/fapi/v1/order", "SIGNED", 1, cancel_order),
    Endpoint("GET", "/fapi/v1/order", "SIGNED", 1, query_order),
    Endpoint("GET", "/fapi/v1/openOrders", "SIGNED", by_symbol(1, 40), open_orders),
    Endpoint("DELETE", "/fapi/v1/allOpenOrders", "SIGNED", 1, cancel_all),
    Endpoint("POST", "/fapi/v1/algoOrder", "SIGNED", 0, new_algo, orders=1),
    Endpoint("DELETE", "/fapi/v1/algoOrder", "SIGNED", 1, cancel_algo),
    Endpoint("GET", "/fapi/v1/algoOrder", "SIGNED", 1, query_algo),
    Endpoint("GET", "/fapi/v1/openAlgoOrders", "SIGNED", by_symbol(1, 40), open_algos),
    Endpoint("DELETE", "/fapi/v1/algoOpenOrders", "SIGNED", 1, cancel_all_algos),
    Endpoint("POST", "/fapi/v1/leverage", "SIGNED", 1, leverage),
    Endpoint("POST", "/fapi/v1/marginType", "SIGNED", 1, margin_type),
    Endpoint("POST", "/fapi/v1/listenKey", "KEY", 1, listen_key_post),
    Endpoint("PUT", "/fapi/v1/listenKey", "KEY", 1, listen_key_put),
    Endpoint("DELETE", "/fapi/v1/listenKey", "KEY", 1, listen_key_delete),
)  # fmt: skip


# ---- pipeline ------------------------------------------------------------------------------
def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=str),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _error(err: ApiError, extra: dict[str, str] | None = None) -> web.Response:
    headers = dict(extra or {})
    headers.update(err.headers)
    return web.Response(
        body=err.body(), status=err.status, headers=headers, content_type="application/json"
    )


async def _injected(request: web.Request, sim: SimServer) -> web.StreamResponse | None:
    fault = sim.faults.take_rest_fault(request.path)
    if fault is None:
        return None
    if fault.mode == "timeout":
        await asyncio.sleep(fault.hang_s)
        if request.transport is not None:
            request.transport.abort()
        return _json({}, 504)
    if fault.mode == "429":
        return _error(ApiError(429, -1003, "Too many requests.", {"Retry-After": "60"}))
    if fault.mode == "418":
        return _error(ApiError(418, -1003, "Way too much request weight used; IP banned.",
                               {"Retry-After": "120"}))  # fmt: skip
    return _error(ApiError(fault.status, -1001,
                           "Internal error; unable to process your request. Please try again."))  # fmt: skip


def _authenticate(ep: Endpoint, request: web.Request, raw_body: str, ctx: Ctx) -> None:
    key = request.headers.get("X-MBX-APIKEY")
    if ep.security == "KEY":
        ctx.account = ctx.sim.keys.account_for_key(key)
    elif ep.security == "SIGNED":
        ctx.account = ctx.sim.keys.verify_signed(
            key, request.rel_url.raw_query_string, raw_body, ctx.params, ctx.now_ms
        )


def _pipeline(ep: Endpoint) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        sim: SimServer = request.app[SIM_KEY]
        sim.rest_counters["requests"] += 1
        injected = await _injected(request, sim)
        if injected is not None:
            sim.rest_counters["faulted"] += 1
            return injected
        now = sim.catch_up()
        usage_headers: dict[str, str] = {}
        try:
            raw_body = await request.text() if request.can_read_body else ""
            params = parse_params(request.rel_url.raw_query_string, raw_body)
            weight = ep.weight(params) if callable(ep.weight) else ep.weight
            ip = request.remote or "?"
            usage = sim.limiter.charge(ip, weight, ep.orders, now)
            usage_headers = usage.headers(bool(ep.orders))
            ctx = Ctx(sim, params, now)
            _authenticate(ep, request, raw_body, ctx)
            body = ep.handler(ctx)
        except ApiError as err:
            sim.rest_counters["rejected"] += 1
            return _error(err, usage_headers)
        except EngineReject as rej:
            sim.rest_counters["rejected"] += 1
            return _error(ApiError(rej.http_status, rej.code, rej.msg), usage_headers)
        except Exception:  # a simulator bug must still answer like Binance, and be seen
            log.exception("unhandled error in %s %s", request.method, request.path)
            sim.rest_counters["internal_errors"] += 1
            return _error(ApiError(500, -1000, UNKNOWN_ERROR), usage_headers)
        sim.flush()
        return _json(body, headers=usage_headers)

    return handle


def rest_routes() -> list[web.RouteDef]:
    return [web.route(ep.method, ep.path, _pipeline(ep)) for ep in ENDPOINTS]
