"""Binance USD-M futures simulator on 127.0.0.1: app factory, runner and in-process API.

Point any Binance futures client at it as if it were fapi.binance.com (REST) and
fstream.binance.com (WebSocket). From a test::

    from services.exchange_sim.server import SimConfig, SimServer

    async with SimServer(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), speed=600)) as sim:
        sim.rest_url        # "http://127.0.0.1:<port>"  -> GET {rest_url}/fapi/v1/klines
        sim.ws_url          # "ws://127.0.0.1:<port>"    -> {ws_url}/market/stream?streams=..
        sim.user_ws_url     # same base                  -> {user_ws_url}/private/ws/<listenKey>
        sim.clock           # SimClock: now_ms(), pause(), resume(), set_speed(), advance()
        sim.exchange        # the matching engine (orders, positions, balances)
        sim.admin           # FaultInjector: drop_ws, stall_ws, fail_rest, expire_listen_key,
                            #   fail_keepalive, send_malformed, duplicate_kline, state(), ...
        sim.driver.closed_klines("BTCUSDT")   # the simulator's own record of closed klines
        await sim.wait_until(ms)              # let sim time reach `ms` (drives the clock)
        sim.demo_key, sim.demo_secret         # the default account's credentials

`SimConfig()` defaults: 2 symbols, synthetic seeded market, speed 1, start = now aligned to
the minute, 1500 closed bars of history, demo account `slt-sim-demo-key` /
`slt-sim-demo-secret` with 10,000 USDT, 10 open-candle updates per minute,
`close_delay_ms=0` (Binance sends the closing kline about 2 s late:
`close_delay_ms=BINANCE_CLOSE_DELAY_MS`), `legacy_kline_silence=True` (unrouted `/stream`
carries no klines, as on Binance since 2026-04-23), `slow_consumer="drop"` (a socket more
than 16 MB behind is cut, as Binance does; `"wait"` pauses simulated time instead, for
tests whose consumer must see every message at high speed).

Timestamps: signed requests are checked against the SIMULATOR clock (recvWindow), so a
client must sign with sim time: set its offset from `GET /fapi/v1/time` (python-binance:
`client.timestamp_offset`), and re-sync when the speed is > 1. Rate-limit windows are
simulated minutes too. Tests usually start paused (`paused=True`) and move time with
`sim.admin.advance(ms)` + `await sim.wait_until(ms)`, which makes every event exact.

Also served: `/healthz`, `/metrics` (Prometheus text of the /admin/state counters) and
the fault-injection API under `/admin` (faults.py).

From a shell: `python -m services.exchange_sim --help` (see __main__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from aiohttp import web

from shared.config import SIM_DEMO_KEY, SIM_DEMO_SECRET

from .auth import KeyStore, SimAccount
from .clock import SimClock
from .driver import Driver
from .faults import FaultInjector, admin_routes
from .listenkeys import ListenKeyRegistry
from .rest import SIM_KEY, rest_routes
from .simbuild import build_exchange, build_market
from .weights import RateLimiter
from .ws_market import MarketHub
from .ws_user import UserHub
from .wsconn import ConnRegistry

log = logging.getLogger(__name__)

DEMO_ACCOUNT = SimAccount(SIM_DEMO_KEY, SIM_DEMO_SECRET, Decimal("10000"))


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes one simulator run (frozen: build a new one to change it)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    source: str = "synthetic"  # synthetic | replay
    data: tuple[str, ...] = ()  # kline files for `replay`
    seed: int = 0
    speed: float = 1.0  # simulated seconds per real second
    start_ms: int | None = None  # None: now (synthetic) / data start + history (replay)
    paused: bool = False  # start with the clock frozen
    accounts: tuple[SimAccount, ...] = (DEMO_ACCOUNT,)
    updates_per_minute: int = 10
    close_delay_ms: int = 0
    history_minutes: int = 1500  # closed bars available over REST at start
    history_cap: int = 10_080  # closed bars kept per symbol
    legacy_kline_silence: bool = True
    legacy_ws_kline_silence: bool = False
    weight_limit_1m: int = 2400
    order_limit_1m: int = 1200
    order_limit_10s: int = 300
    max_streams: int = 1024
    max_incoming_per_s: int = 10
    ping_interval_s: float = 180.0
    pong_timeout_s: float = 600.0
    max_conn_age_ms: int = 24 * 3600 * 1000
    taker_fee: Decimal = Decimal("0.0005")
    maker_fee: Decimal = Decimal("0.0002")
    slippage_bps: Decimal = Decimal("0")  # fills at the last price: exact for tests
    funding_enabled: bool = True
    tick_ms: float = 2.0
    slow_consumer: str = "drop"  # drop (Binance) | wait (hold the clock until sockets drain)
    max_send_buffer: int = 16 * 1024 * 1024
    engine_options: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> SimConfig:
        return replace(self, **changes)


class SimServer:
    """One running simulator: HTTP + WebSocket server, clock driver, engine and faults."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        cfg = (config or SimConfig()).with_(**overrides) if overrides else (config or SimConfig())
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the simulator only listens on loopback")
        self.config = cfg
        self.market, self.specs, start_ms = build_market(cfg)
        self.clock = SimClock(start_ms, cfg.speed)
        if cfg.paused:
            self.clock.pause()
        self.exchange = build_exchange(cfg, self.specs)
        self.keys = KeyStore(cfg.accounts)
        self.limiter = RateLimiter(cfg.weight_limit_1m, cfg.order_limit_1m, cfg.order_limit_10s)
        self.listen_keys = ListenKeyRegistry(seed=cfg.seed)
        self.registry = ConnRegistry(
            cfg.ping_interval_s, cfg.pong_timeout_s, max_incoming_per_s=cfg.max_incoming_per_s,
            slow_consumer=cfg.slow_consumer, max_buffer=cfg.max_send_buffer,
        )  # fmt: skip
        self.market_hub = MarketHub(
            self.registry, cfg.max_streams, cfg.legacy_kline_silence, cfg.legacy_ws_kline_silence
        )
        self.user_hub = UserHub(self.registry, self.listen_keys)
        self.driver = Driver(
            market=self.market, exchange=self.exchange, specs=self.specs,
            market_hub=self.market_hub, user_hub=self.user_hub, registry=self.registry,
            listen_keys=self.listen_keys, updates_per_minute=cfg.updates_per_minute,
            close_delay_ms=cfg.close_delay_ms, history_cap=cfg.history_cap,
            max_conn_age_ms=cfg.max_conn_age_ms,
        )  # fmt: skip
        self.driver.warm_up(start_ms, cfg.history_minutes)
        self.faults = FaultInjector(self)
        self.admin = self.faults
        self.rest_counters = {"requests": 0, "rejected": 0, "faulted": 0, "internal_errors": 0}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = cfg.port

    # ---- URLs and credentials ----------------------------------------------------------
    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def user_ws_url(self) -> str:
        return self.ws_url

    @property
    def demo_key(self) -> str:
        return self.config.accounts[0].key

    @property
    def demo_secret(self) -> str:
        return self.config.accounts[0].secret

    def env(self) -> dict[str, str]:
        """The settings that point the system at this simulator."""
        return {
            "SLT_EXCHANGE__MODE": "sim",
            "SLT_EXCHANGE__REST_URL": self.rest_url,
            "SLT_EXCHANGE__WS_URL": self.ws_url,
            "SLT_EXCHANGE__USER_WS_URL": self.user_ws_url,
        }

    # ---- glue used by REST, admin and the driver ------------------------------------------
    def catch_up(self) -> int:
        """Advance the simulation to the clock's now; returns that time."""
        now = self.clock.now_ms()
        self.driver.step(now)
        return now

    def flush(self) -> None:
        self.registry.flush_all()

    def push_events(self, events: list[Any]) -> None:
        self.driver.push_events(events)
        self.registry.flush_all()

    async def wait_until(self, sim_ms: int, timeout_s: float = 30.0) -> None:
        """Sleep (real time) until the simulation has processed `sim_ms`."""
        deadline = time.monotonic() + timeout_s
        while self.clock.now_ms() < sim_ms:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sim time did not reach {sim_ms}")
            delay = self.clock.sleep_seconds_until(sim_ms)
            await asyncio.sleep(min(max(delay, 0.001), 0.05))
        self.catch_up()
        self.flush()

    # ---- lifecycle -----------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._retry_after_in_wall_seconds])
        app[SIM_KEY] = self
        app.add_routes(rest_routes())
        app.add_routes(admin_routes(self.faults))
        app.add_routes(ws_routes(self))
        app.add_routes([web.get("/healthz", self._healthz), web.get("/metrics", self._metrics)])
        return app

    @web.middleware
    async def _retry_after_in_wall_seconds(self, request: web.Request, handler: Any) -> Any:
        """HTTP's Retry-After is a delay in real seconds. Limits are kept in sim time, so
        on a sped-up clock the header is scaled down (at speed 1 it is Binance's value)."""
        response = await handler(request)
        speed = self.clock.speed
        value = response.headers.get("Retry-After") if speed > 1 else None
        if value and value.isdigit():
            response.headers["Retry-After"] = str(max(1, -(-int(value) // int(speed))))
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        clock = self.clock
        return web.json_response(
            {"status": "ok", "simTimeMs": clock.now_ms(), "speed": clock.speed,
             "paused": clock.paused, "connections": len(self.registry.conns)}
        )  # fmt: skip

    async def _metrics(self, request: web.Request) -> web.Response:
        """The /admin/state counters in Prometheus text format (one gauge per counter)."""
        lines = []
        for group, counters in self.faults.state()["counters"].items():
            for name, value in counters.items():
                metric = f"slt_exchange_sim_{group}_{name}".replace("429", "http429")
                metric = metric.replace("418", "http418").lower()
                lines.append(f"{metric} {value}")
        lines.append(f"slt_exchange_sim_time_ms {self.clock.now_ms()}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def start(self) -> SimServer:
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real port when port=0
        self._spawn(
            self.driver.run(
                self.clock, self.config.tick_ms / 1000.0,
                may_resume=lambda: not self.faults.admin_paused,
            ),
            "sim-driver",
        )  # fmt: skip
        self._spawn(self.registry.ping_loop(), "sim-ping")
        log.info("exchange_sim listening on %s", self.rest_url)
        return self

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(_log_task_end)
        self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.registry.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _log_task_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s died", task.get_name(), exc_info=task.exception())


# ---- WebSocket routing ------------------------------------------------------------------------
def _streams_param(request: web.Request) -> list[str]:
    return [s for s in request.query.get("streams", "").split("/") if s]


def _looks_like_key(name: str) -> bool:
    return bool(name) and "@" not in name and name.isalnum()


def ws_routes(sim: SimServer) -> list[web.RouteDef]:
    """Routed (`/market`, `/public`, `/private`) and legacy (`/ws`, `/stream`) paths."""
    mh, uh = sim.market_hub, sim.user_hub

    def market(route: str, is_combined: bool) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            tail = request.match_info.get("tail", "")
            streams = _streams_param(request) if is_combined else tail.split("/")
            if route == "legacy" and len(streams) == 1 and _looks_like_key(streams[0]):
                return await uh.serve(request, "legacy", is_combined, streams[0], sim.catch_up())
            return await mh.serve(request, route, is_combined, streams, sim.catch_up())

        return handler

    async def private(request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("key") or request.query.get("listenKey", "")
        combined = request.path.startswith("/private/stream")
        if combined and not key:
            streams = _streams_param(request)
            key = streams[0] if streams else ""
        return await uh.serve(request, "private", combined, key, sim.catch_up())

    routes = []
    for prefix, route in (("/market", "market"), ("/public", "public"), ("", "legacy")):
        routes += [
            web.get(f"{prefix}/ws", market(route, False)),
            web.get(f"{prefix}/ws/{{tail:.+}}", market(route, False)),
            web.get(f"{prefix}/stream", market(route, True)),
        ]
    routes += [
        web.get("/private/ws", private),
        web.get("/private/ws/{key}", private),
        web.get("/private/stream", private),
    ]
    return routes
