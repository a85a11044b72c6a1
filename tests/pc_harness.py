"""Harness for the position controller's service tests and its benchmark (not a test module).

Most tests do not start account_feed: `UserStreamRelay` plays its part the way account_feed
does it - it opens the simulator's user-data stream (listenKey over REST, then the
`/private/ws/<listenKey>` WebSocket) and XADDs every event to `Keys.stream_account` in the
bus format account_feed publishes (codec type = the Binance event type, data = the event
as the exchange sent it).  It keeps events while Redis is down and writes them, in order,
when Redis is back (what a real feed has to do too).  It does not keep the position-cache
hashes, so the service sees a stale cache (its REST fallback path).  The relay publishes
the exchange's event dicts; account_feed publishes our domain dicts: the service reads
both.  `running_account_feed` starts the real account_feed service for the tests that
check the two together (domain dicts on the bus, a cache kept current, a live heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets
from redis.exceptions import RedisError

from services.exchange_sim.server import SimServer
from services.position_controller.service import PositionControllerService
from shared.binance.client import BinanceClient
from shared.codec import encode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.runtime import serve
from tests.polling import until


class UserStreamRelay:
    """The simulator's user-data events -> `Keys.stream_account` (see module doc)."""

    def __init__(self, sim: SimServer, redis_url: str, keys: Keys) -> None:
        self.sim = sim
        self.keys = keys
        self.redis = aioredis.from_url(redis_url, decode_responses=False)
        self.queue: deque[dict[str, Any]] = deque()
        self.published = 0
        self.received: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: Any = None

    async def start(self) -> UserStreamRelay:
        async with BinanceClient.from_credentials(
            self.sim.rest_url, self.sim.demo_key, self.sim.demo_secret
        ) as client:
            listen_key = (await client.create_listen_key())["listenKey"]
        self._ws = await websockets.connect(f"{self.sim.user_ws_url}/private/ws/{listen_key}")
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._write())]
        return self

    async def _read(self) -> None:
        async for raw in self._ws:
            event = orjson.loads(raw)
            self.received.append(event)
            self.queue.append(event)
            self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                try:
                    await publish_user_event(self.redis, self.keys, self.queue[0])
                except (RedisError, OSError):
                    await asyncio.sleep(0.05)  # Redis is down: keep it, try again
                    continue
                self.queue.popleft()
                self.published += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            await self._ws.close()
        await self.redis.aclose()


async def publish_user_event(redis: aioredis.Redis, keys: Keys, event: dict[str, Any]) -> str:
    """XADD one user-data event in account_feed's bus format."""
    etype = str(event["e"])
    symbol = ""
    if etype in ("ORDER_TRADE_UPDATE", "ALGO_UPDATE"):
        symbol = event["o"]["s"]
    elif etype == "ACCOUNT_UPDATE" and event["a"].get("P"):
        symbol = event["a"]["P"][0]["s"]
    elif etype == "ACCOUNT_CONFIG_UPDATE" and event.get("ac"):
        symbol = event["ac"]["s"]
    fields = encode_event(etype, event, symbol=symbol, event_time=int(event["E"]))
    raw = await redis.xadd(keys.stream_account, fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def pc_settings(
    sim: SimServer, redis_url: str, prefix: str, **sections: dict[str, Any]
) -> Settings:
    """Settings pointing at the simulator and Redis, with fast sweeps for tests (each
    `sections` entry updates that section)."""
    base: dict[str, dict[str, Any]] = {
        "exchange": {"mode": "sim", "rest_url": sim.rest_url, "ws_url": sim.ws_url,
                     "user_ws_url": sim.user_ws_url, "symbols": list(sim.config.symbols)},
        "redis": {"url": redis_url, "prefix": prefix},
        "trading": {"position_check_interval": 1, "no_progress_minutes": 10_000},
        "risk": {"protection_grace": 3600},
        "service": {"heartbeat_interval": 0.5, "fallback_interval": 1},
        "websocket": {"reconnect_delay": 0.2, "reconnect_max_delay": 1},
    }  # fmt: skip
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(**base)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[PositionControllerService]:
    """A PositionControllerService served in this loop, running and past its first sweep."""
    svc = PositionControllerService(settings)
    task = asyncio.create_task(
        serve(svc, settings, port=0, install_signals=False, drain_timeout=3,
              connect_attempts=3, connect_delay=0.1)
    )  # fmt: skip
    try:
        await until(lambda: task.done() or svc.c["sweeps"] >= 1, 15)
        if task.done():
            raise RuntimeError(f"service ended at start-up with {task.result()}")
        await until(lambda: svc.marks is not None and svc.marks.connected, 5)
        yield svc
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def running_account_feed(settings: Settings) -> AsyncIterator[Any]:
    """The real account_feed service in this loop, connected and reconciled."""
    from services.account_feed.service import AccountFeedService

    svc = AccountFeedService(settings, retry_base=0.1, retry_max=0.5)
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False))
    try:
        await until(lambda: task.done() or svc.stats().get("reconciliations", 0) >= 1, 10)
        if task.done():
            raise RuntimeError(f"account_feed ended at start-up with {task.result()}")
        yield svc
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 15)


def push_mark(sim: SimServer, symbol: str, price: Decimal) -> None:
    """Move the simulator's last and mark price now and publish the markPrice@1s frame at
    once (conditional orders trigger, the engine's events go out as on the exchange)."""
    ts = sim.clock.now_ms()
    sim.push_events(sim.exchange.advance_price(symbol, price, ts))
    pi = sim.exchange.premium_index(symbol, ts)
    payload = orjson.dumps(
        {"e": "markPriceUpdate", "E": ts, "s": symbol, "p": pi["markPrice"],
         "i": pi["indexPrice"], "P": pi["estimatedSettlePrice"], "r": pi["lastFundingRate"],
         "T": pi["nextFundingTime"]}
    )  # fmt: skip
    sim.market_hub.publish(f"{symbol.lower()}@markPrice@1s", payload)
    sim.flush()


def tick(sim: SimServer, symbol: str, price: Decimal) -> Decimal:
    """`price` rounded down to the symbol's tick."""
    step = sim.specs[symbol].tick_size
    return (price / step).to_integral_value(rounding="ROUND_DOWN") * step


def sim_position(sim: SimServer, symbol: str) -> Decimal:
    acct = sim.exchange.accounts[sim.demo_key]
    pos = acct.positions.get(symbol)
    return pos.amount if pos is not None else Decimal(0)


def orders_with_prefix(sim: SimServer, prefix: str) -> list[Any]:
    """Orders the simulator accepted whose client id starts with `prefix` (its audit)."""
    return [o for o in sim.exchange.audit.orders if o.client_id.startswith(prefix)]


async def stream_events(redis: aioredis.Redis, stream: str) -> list[tuple[str, dict[str, Any]]]:
    from shared.codec import decode_event

    out = []
    for _id, fields in await redis.xrange(stream):
        etype, data, _meta = decode_event(fields)
        out.append((etype, data))
    return out
