"""The dashboard: read-only aiohttp routes on the reporter's server, live over SSE.

Routes: `/` (the page), `/static/<file>`, `/api/status` (the aggregated health view),
`/api/dashboard` (one snapshot), `/api/events` (server-sent events: a `snapshot` event
whenever the data changes, a comment line as keepalive), `/login`.

Why it looks like this: one refresher task (in the service) builds a snapshot about
once a second and every browser shares it, so ten open tabs cost Redis what one does.
No front-end build: static/ holds plain HTML, CSS and vanilla JS.

Exposure: on a loopback host nothing is asked.  On any other host every route but the
login page and static assets requires the login token, derived from SESSION_SECRET by
HMAC (the secret itself never leaves the process), presented as the `slt_session`
cookie (set by the login form) or `Authorization: Bearer <token>`.  Without
SESSION_SECRET the reporter refuses to start exposed (`check_exposure`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from services.reporter.report import day_bounds, dec, equity_curve
from services.reporter.sources import Reads, recent_events
from shared.config import ConfigError, Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = frozenset({"app.js", "style.css"})
COOKIE = "slt_session"
_TOKEN_CONTEXT = b"slt-dashboard-login-v1"
JSON = "application/json"


def dashboard_token(session_secret: str) -> str:
    """The login token: HMAC-SHA256(SESSION_SECRET, fixed context), hex.  Derived, so
    showing it to a browser never reveals the secret itself."""
    return hmac.new(session_secret.encode(), _TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or "" (all interfaces): treat as exposed


def check_exposure(settings: Settings) -> str | None:
    """The token the dashboard requires (None on loopback).  Raises ConfigError when
    bound to a non-loopback host without SESSION_SECRET."""
    host = settings.service.host
    if is_loopback(host):
        return None
    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if not secret:
        raise ConfigError(
            "SESSION_SECRET",
            f"the dashboard binds non-loopback host {host!r}; set SESSION_SECRET "
            "(its login token is derived from it) or bind 127.0.0.1",
        )
    return dashboard_token(secret)


class SnapshotHub:
    """The latest dashboard snapshot and a change signal for SSE clients."""

    def __init__(self) -> None:
        self.version = 0
        self.body = b"{}"
        self.closed = False
        self._changed = asyncio.Event()

    def publish(self, snapshot: dict[str, Any]) -> bool:
        """Store a snapshot; wakes clients only if it differs from the last one."""
        body = orjson.dumps(snapshot, default=str, option=orjson.OPT_NON_STR_KEYS)
        if body == self.body:
            return False
        self.body = body
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def wait_change(self, seen: int, seconds: float) -> None:
        if self.version != seen or self.closed:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass


class Dashboard:
    """The routes.  `status_fn` returns the aggregated health view as a dict."""

    def __init__(
        self,
        hub: SnapshotHub,
        status_fn: Callable[[], Awaitable[dict[str, Any]]],
        *,
        token: str | None,
        keepalive_s: float = 15.0,
    ) -> None:
        self.hub = hub
        self.status_fn = status_fn
        self.token = token
        self.keepalive_s = keepalive_s
        self.clients = 0
        self.events_sent = 0
        self.denied = 0

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/", self.index),
            web.get("/login", self.login_page),
            web.post("/login", self.login),
            web.get("/static/{name}", self.static),
            web.get("/api/status", self.api_status),
            web.get("/api/dashboard", self.api_dashboard),
            web.get("/api/events", self.api_events),
        ]

    # ---- auth ----------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        supplied = request.cookies.get(COOKIE, "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            supplied = header.removeprefix("Bearer ").strip()
        ok = bool(supplied) and hmac.compare_digest(supplied.encode(), self.token.encode())
        self.denied += not ok
        return ok

    def _deny_api(self) -> web.Response:
        body = b'{"error":"login required: cookie slt_session or Authorization: Bearer"}'
        return web.Response(status=401, body=body, content_type=JSON)

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        supplied = str(form.get("token", "")).strip()
        if self.token is not None and not hmac.compare_digest(
            supplied.encode(), self.token.encode()
        ):
            self.denied += 1
            raise web.HTTPFound("/login?failed=1")
        resp = web.HTTPFound("/")
        if self.token is not None:
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        raise resp

    # ---- pages and API -------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            raise web.HTTPFound("/login")
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC_DIR / name)

    async def api_status(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self._deny_api()
        body = orjson.dumps(await self.status_fn(), default=str)
        return web.Response(body=body, content_type=JSON)

    async def api_dashboard(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self._deny_api()
        return web.Response(body=self.hub.body, content_type=JSON)

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return self._deny_api()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }  # fmt: skip
        )
        await resp.prepare(request)
        self.clients += 1
        seen = 0  # version 0 is "no snapshot yet": never sent
        try:
            await resp.write(b"retry: 2000\n\n")
            while not self.hub.closed:
                if self.hub.version != seen:
                    seen = self.hub.version
                    await resp.write(b"event: snapshot\ndata: " + self.hub.body + b"\n\n")
                    self.events_sent += 1
                else:
                    await resp.write(b": keepalive\n\n")
                await self.hub.wait_change(seen, self.keepalive_s)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self.clients -= 1
        return resp

    def stats(self) -> dict[str, Any]:
        return {"sse_clients": self.clients, "sse_events_total": self.events_sent,
                "auth_denied_total": self.denied, "auth_required": self.token is not None}  # fmt: skip


class SnapshotBuilder:
    """Builds the dashboard snapshot from Redis.  Today's trades are scanned once per day;
    after that only entries newer than the last one seen are read (XRANGE exclusive), so
    a busy trades stream costs the refresh loop only its new entries."""

    def __init__(self, redis: Any, keys: Any, *, recent: int = 20) -> None:
        self.redis = redis
        self.keys = keys
        self.recent = recent
        self._day: str | None = None
        self._last_id = "0-0"
        self._trades: dict[str, Any] = {}  # trade id -> ClosedTrade of the day
        self._equity: dict[str, Any] = {}
        self._dirty = True

    async def _refresh_trades(self, day: str) -> None:
        reads = Reads(self.redis, self.keys)
        start, end = day_bounds(day)
        if day != self._day:
            tail = await self.redis.xrevrange(self.keys.stream_trades, count=1)
            self._last_id = tail[0][0].decode() if tail else "0-0"
            self._trades = {t.trade_id: t for t in await reads.trades(start) if t.exit_time < end}
            self._day, self._dirty = day, True
        new, self._last_id = await reads.trades_after(self._last_id)
        for t in new:
            if start <= t.exit_time < end:
                self._trades[t.trade_id] = t
                self._dirty = True

    async def _equity_today(self, day: str) -> dict[str, Any]:
        await self._refresh_trades(day)
        if self._dirty:
            base = await Reads(self.redis, self.keys).baseline(day)
            opening = dec(base["equity"]) if base and base.get("equity") else None
            curve = equity_curve(day_bounds(day)[0], opening, list(self._trades.values()))
            self._equity = {"day": day, "points": [list(p) for p in curve.points],
                            "start": curve.start, "max_drawdown": curve.max_drawdown,
                            "trades": len(self._trades)}  # fmt: skip
            self._dirty = False
        return self._equity

    async def build(self, status: dict[str, Any], day: str, now_ms: int) -> dict[str, Any]:
        positions = await Reads(self.redis, self.keys).positions()
        active = await self.redis.hgetall(self.keys.alerts_active)
        return {
            "now": now_ms,
            "day": day,
            "status": status,
            "positions": [
                {
                    "symbol": p.symbol,
                    "side": "LONG" if p.size > 0 else "SHORT",
                    "size": p.size,
                    "entry_price": p.entry_price,
                    "mark_price": p.mark_price or None,
                    "unrealized_pnl": p.unrealized_pnl,
                    "leverage": p.leverage,
                    "notional": p.notional,
                }  # fmt: skip
                for p in positions
                if p.size != 0
            ],
            "signals": await recent_events(self.redis, self.keys.stream_signals, self.recent),
            "trades": await recent_events(self.redis, self.keys.stream_trades, self.recent),
            "equity": await self._equity_today(day),
            "alerts": {
                "active": [orjson.loads(v) for _, v in sorted(active.items())],
                "recent": await recent_events(self.redis, self.keys.stream_alerts, self.recent),
            },
        }
