"""Fault injection for chaos tests: the simulator misbehaves on purpose, and counts it.

WHY: the degradation paths (reconnect + backfill, REST fallback, circuit breaker, listenKey
recreation, malformed-message counting) only earn trust when the exchange actually fails
in those ways. Every fault here is what Binance (or the network) really does, injected on
demand, and every injection and every application is counted so a chaos test can compare
what it caused with what the system noticed.

`FaultInjector` is the one implementation; it is reached two ways:
- in process: `sim.admin.<method>(...)` (see server.py),
- over HTTP under `/admin` (never under `/fapi`, never rate limited): `admin_routes()`.

HTTP API (JSON body or query parameters; every answer is JSON):
  GET  /admin/state                         connections, clock, counters, listenKeys
  GET  /admin/closed_klines?symbol=BTCUSDT  every closed 1m kline the WS emitted (k objects)
  POST /admin/ws/drop        {kind: market|user|all, stream?, count?, mode: abort|close}
  POST /admin/ws/stall       {seconds, kind?, stream?, conn_id?}  stop sending, keep open
  POST /admin/ws/malformed   {kind: market|user, what: garbage|missing_fields|nan|nan_bare,
                              stream?, count?}
  POST /admin/ws/duplicate   {symbol?, count?}   resend the last closed kline
  POST /admin/listenkey/expire          {listenKey?}  (default: every active key)
  POST /admin/listenkey/fail_keepalive  {count?, mode: 5xx|-1125}
  POST /admin/rest/fail      {mode: 5xx|429|418|timeout, count?, status?, path?, hang_s?}
  POST /admin/clock/pause | /admin/clock/resume | /admin/clock/speed {speed}
  POST /admin/clock/advance  {ms}
  POST /admin/limits/reset   forget request-weight counters and bans
Stalls are in real seconds (what a watchdog measures); frames due during a stall are lost.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .auth import ApiError

if TYPE_CHECKING:
    from .server import SimServer

_MALFORMED_MARKET = {
    "garbage": b'{"e":"kline","E":17000000,"s":"BTC',
    "missing_fields": b'{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"s":"%s","i":"1m"}}',
    "nan": b'{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"1m","f":0,"L":0,'
    b'"o":"NaN","c":"NaN","h":"NaN","l":"NaN","v":"NaN","n":0,"x":true,"q":"NaN",'
    b'"V":"NaN","Q":"NaN","B":"0"}}',
    "nan_bare": b'{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"1m","f":0,'
    b'"L":0,"o":NaN,"c":NaN,"h":NaN,"l":NaN,"v":NaN,"n":0,"x":true,"q":NaN,"V":NaN,'
    b'"Q":NaN,"B":"0"}}',
}


@dataclass
class RestFault:
    """One pending REST failure; `path` limits it to paths starting with that prefix."""

    mode: str  # "5xx" | "429" | "418" | "timeout"
    status: int = 503
    path: str = ""
    hang_s: float = 30.0


class FaultInjector:
    """All injectable faults, plus the counters that prove they happened."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.rest_faults: deque[RestFault] = deque()
        self.keepalive_failures: deque[str] = deque()
        self.injected: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self.admin_paused = False  # back-pressure ("wait") never resumes an admin pause

    # ---- REST -----------------------------------------------------------------------
    def fail_rest(
        self, mode: str = "5xx", count: int = 1, status: int = 503, path: str = "",
        hang_s: float = 30.0,
    ) -> None:  # fmt: skip
        if mode not in ("5xx", "429", "418", "timeout"):
            raise ValueError("mode must be 5xx, 429, 418 or timeout")
        if mode == "5xx" and not 500 <= status <= 599:
            raise ValueError("status must be 5xx")
        for _ in range(count):
            self.rest_faults.append(RestFault(mode, status, path, hang_s))
        self.injected[f"rest_{mode}"] += count

    def take_rest_fault(self, path: str) -> RestFault | None:
        """Called by the REST pipeline for every /fapi request (FIFO, path-filtered)."""
        for i, fault in enumerate(self.rest_faults):
            if path.startswith(fault.path):
                del self.rest_faults[i]
                self.applied[f"rest_{fault.mode}"] += 1
                return fault
        return None

    def fail_keepalive(self, count: int = 1, mode: str = "5xx") -> None:
        if mode not in ("5xx", "-1125"):
            raise ValueError("mode must be 5xx or -1125")
        self.keepalive_failures.extend([mode] * count)
        self.injected[f"keepalive_{mode}"] += count

    def take_keepalive_failure(self) -> ApiError | None:
        if not self.keepalive_failures:
            return None
        mode = self.keepalive_failures.popleft()
        self.applied[f"keepalive_{mode}"] += 1
        if mode == "5xx":
            return ApiError(
                503, -1001, "Internal error; unable to process your request. Please try again."
            )
        return ApiError(400, -1125, "This listenKey does not exist.")

    # ---- WebSocket ----------------------------------------------------------------------
    def drop_ws(
        self, kind: str = "all", stream: str | None = None, count: int | None = None,
        mode: str = "abort",
    ) -> int:  # fmt: skip
        conns = self.sim.registry.select(kind, stream)[: count if count else None]
        for conn in conns:
            if mode == "close":
                self.sim.registry.close_later(conn, 1001, b"going away")
            else:
                conn.abort()
        self.injected["ws_drop"] += 1
        self.applied["ws_drop"] += len(conns)
        return len(conns)

    def stall_ws(
        self, seconds: float, kind: str = "all", stream: str | None = None,
        conn_id: int | None = None,
    ) -> int:  # fmt: skip
        until = time.monotonic() + seconds
        self.injected["ws_stall"] += 1
        if stream is not None and conn_id is None and kind in ("all", "market"):
            self.sim.market_hub.stalled_streams[stream] = until
            self.applied["ws_stall"] += 1
            return 1
        conns = [c for c in self.sim.registry.select(kind, stream) if conn_id in (None, c.id)]
        for conn in conns:
            conn.stalled_until = until
        self.applied["ws_stall"] += len(conns)
        return len(conns)

    def send_malformed(
        self, kind: str = "market", what: str = "garbage", stream: str | None = None,
        count: int = 1,
    ) -> int:  # fmt: skip
        conns = self.sim.registry.select(kind, stream)
        now = self.sim.clock.now_ms()
        sent = 0
        for conn in conns:
            for _ in range(count):
                if conn.kind == "user":
                    self.sim.user_hub.send_to(conn, _malformed_user(what, now))
                else:
                    name = stream or next(iter(conn.streams), "btcusdt@kline_1m")
                    payload = _malformed_market(what, name, now)
                    self.sim.market_hub.send_to(conn, name, payload)
                sent += 1
        self.sim.registry.flush_all()
        self.injected[f"ws_malformed_{what}"] += count
        self.applied[f"ws_malformed_{what}"] += sent
        return sent

    def duplicate_kline(self, symbol: str | None = None, count: int = 1) -> int:
        symbols = [symbol.upper()] if symbol else list(self.sim.driver.symbols)
        sent = 0
        for sym in symbols:
            payload = self.sim.driver.last_closed_payload(sym)
            if payload is None:
                continue
            for _ in range(count):
                self.sim.market_hub.publish(f"{sym.lower()}@kline_1m", payload)
                sent += 1
        self.sim.registry.flush_all()
        self.injected["ws_duplicate"] += count
        self.applied["ws_duplicate"] += sent
        return sent

    # ---- listenKey and clock -------------------------------------------------------------
    def expire_listen_key(self, listen_key: str | None = None) -> int:
        now = self.sim.clock.now_ms()
        keys = [listen_key] if listen_key else [
            k["listenKey"] for k in self.sim.listen_keys.snapshot() if k["state"] == "active"
        ]  # fmt: skip
        for key in keys:
            self.sim.listen_keys.expire_now(str(key), now)
        self.sim.driver.step(now)
        self.sim.registry.flush_all()
        self.injected["listenkey_expire"] += len(keys)
        self.applied["listenkey_expire"] += len(keys)
        return len(keys)

    def pause(self) -> None:
        self.admin_paused = True
        self.sim.clock.pause()
        self.injected["clock_pause"] += 1

    def resume(self) -> None:
        self.admin_paused = False
        self.sim.clock.resume()
        self.sim.driver.wake()
        self.injected["clock_resume"] += 1

    def set_speed(self, speed: float) -> None:
        self.sim.clock.set_speed(speed)
        self.sim.driver.wake()
        self.injected["clock_speed"] += 1

    def advance(self, ms: int) -> None:
        self.sim.clock.advance(ms)
        self.sim.driver.wake()
        self.injected["clock_advance"] += 1

    # ---- views -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        sim = self.sim
        clock = sim.clock
        return {
            "clock": {"nowMs": clock.now_ms(), "speed": clock.speed, "paused": clock.paused},
            "connections": sim.registry.state(),
            "counters": {
                "ws": dict(sim.registry.counters),
                "market": dict(sim.market_hub.counters),
                "user": dict(sim.user_hub.counters),
                "rest": dict(sim.rest_counters),
                "rateLimit": {"429": sim.limiter.count_429, "418": sim.limiter.count_418},
                "listenKeys": dict(sim.listen_keys.counters),
                "driver": dict(sim.driver.counters),
            },
            "faults": {"injected": dict(self.injected), "applied": dict(self.applied)},
            "pending": {
                "rest": len(self.rest_faults),
                "keepalive": len(self.keepalive_failures),
            },
            "listenKeys": sim.listen_keys.snapshot(),
        }


def _malformed_market(what: str, stream: str, now: int) -> bytes:
    if what not in _MALFORMED_MARKET:
        raise ValueError("what must be garbage, missing_fields, nan or nan_bare")
    sym = stream.partition("@")[0].upper().encode()
    t = now - now % 60_000
    tpl = _MALFORMED_MARKET[what]
    if what == "garbage":
        return tpl
    if what == "missing_fields":
        return tpl % (now, sym, t, sym)
    return tpl % (now, sym, t, t + 59_999, sym)


def _malformed_user(what: str, now: int) -> bytes:
    if what == "garbage":
        return b'{"e":"ORDER_TRADE_UPDATE","E":'
    if what == "missing_fields":
        return orjson.dumps({"e": "ORDER_TRADE_UPDATE", "E": now})
    if what == "nan":
        return orjson.dumps(
            {"e": "ACCOUNT_UPDATE", "E": now, "T": now,
             "a": {"m": "ORDER", "B": [{"a": "USDT", "wb": "NaN", "cw": "NaN", "bc": "0"}],
                   "P": []}}
        )  # fmt: skip
    if what == "nan_bare":
        return (
            b'{"e":"ACCOUNT_UPDATE","E":%d,"T":%d,"a":{"m":"ORDER","B":[{"a":"USDT",'
            b'"wb":NaN,"cw":NaN,"bc":"0"}],"P":[]}}' % (now, now)
        )
    raise ValueError("what must be garbage, missing_fields, nan or nan_bare")


# ---- HTTP -------------------------------------------------------------------------------
async def _args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(text='{"error":"body must be JSON"}') from None
        if isinstance(body, dict):
            args.update(body)
    return args


def _opt_int(v: Any) -> int | None:
    return None if v in (None, "") else int(v)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=str), status=status, content_type="application/json"
    )


def _action(fn: Callable[[dict[str, Any]], Any]) -> Callable[[web.Request], Any]:
    """POST handler: args from JSON body/query -> `{"ok": true, "result": ..}` or 400."""

    async def handle(request: web.Request) -> web.Response:
        try:
            result = fn(await _args(request))
        except (ValueError, TypeError, KeyError, ApiError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"ok": True, "result": result})

    return handle


def admin_routes(faults: FaultInjector) -> list[web.RouteDef]:
    """The /admin HTTP surface, a thin JSON shell around `FaultInjector`."""
    f, sim = faults, faults.sim

    async def state(_: web.Request) -> web.Response:
        return _json(f.state())

    async def closed(request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "").upper()
        if symbol not in sim.driver.symbols:
            return _json({"error": f"unknown symbol {symbol!r}"}, 400)
        return _json(sim.driver.closed_klines(symbol))

    return [
        web.get("/admin/state", state),
        web.get("/admin/closed_klines", closed),
        web.post("/admin/ws/drop", _action(lambda a: f.drop_ws(
            a.get("kind", "all"), a.get("stream"), _opt_int(a.get("count")),
            a.get("mode", "abort")))),
        web.post("/admin/ws/stall", _action(lambda a: f.stall_ws(
            float(a["seconds"]), a.get("kind", "all"), a.get("stream"),
            _opt_int(a.get("conn_id"))))),
        web.post("/admin/ws/malformed", _action(lambda a: f.send_malformed(
            a.get("kind", "market"), a.get("what", "garbage"), a.get("stream"),
            int(a.get("count", 1))))),
        web.post("/admin/ws/duplicate", _action(lambda a: f.duplicate_kline(
            a.get("symbol"), int(a.get("count", 1))))),
        web.post("/admin/listenkey/expire", _action(
            lambda a: f.expire_listen_key(a.get("listenKey")))),
        web.post("/admin/listenkey/fail_keepalive", _action(lambda a: f.fail_keepalive(
            int(a.get("count", 1)), str(a.get("mode", "5xx"))))),
        web.post("/admin/rest/fail", _action(lambda a: f.fail_rest(
            str(a.get("mode", "5xx")), int(a.get("count", 1)), int(a.get("status", 503)),
            str(a.get("path", "")), float(a.get("hang_s", 30.0))))),
        web.post("/admin/clock/pause", _action(lambda a: f.pause())),
        web.post("/admin/clock/resume", _action(lambda a: f.resume())),
        web.post("/admin/clock/speed", _action(lambda a: f.set_speed(float(a["speed"])))),
        web.post("/admin/clock/advance", _action(lambda a: f.advance(int(a["ms"])))),
        web.post("/admin/limits/reset", _action(lambda a: sim.limiter.reset())),
    ]  # fmt: skip
