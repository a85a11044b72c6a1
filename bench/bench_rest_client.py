"""Cost of BinanceClient's safety layers per request, against a bare aiohttp reference.

A local aiohttp server on 127.0.0.1 answers like Binance; in the same run we time:
  raw aiohttp GET                     the ceiling (same session type, same server)
  client.ping(), redis=None           breaker + local budget + typed errors
  client.ping(), shared Redis budget  + one Lua EVALSHA per request (+ reconcile)
  client.position_risk(), local       + HMAC signing
Sequential (latency) and 32 concurrent (throughput), best of 3 interleaved rounds.  Redis: $REDIS_URL or an embedded
redis-server.  Run: .venv/bin/python bench/bench_rest_client.py [requests]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from shared.binance import BinanceClient
from shared.testing import RedisServer

KEY, SECRET = "bench-key", "bench-secret"


async def start_server() -> tuple[web.AppRunner, str]:
    used = {"w": 0}

    async def handle(request: web.Request) -> web.Response:
        used["w"] = (used["w"] + 1) % 1000
        headers = {"X-MBX-USED-WEIGHT-1M": str(used["w"])}
        if request.path == "/fapi/v1/time":
            return web.json_response({"serverTime": int(time.time() * 1000)}, headers=headers)
        return web.json_response({}, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def timed(n: int, concurrency: int, call: Callable[[], Awaitable[object]]) -> float:
    """Requests per second for n calls, `concurrency` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await call()

    for _ in range(50):  # warm up connections and caches
        await call()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def main(n: int) -> None:
    runner, url = await start_server()
    server = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        server.start()
        redis_url = server.url
    redis = aioredis.from_url(redis_url)
    opts = {"weight_limit_1m": 10**9, "redis_prefix": f"bench{os.getpid()}:"}
    try:
        async with aiohttp.ClientSession() as raw:

            async def raw_get() -> object:
                async with raw.get(f"{url}/fapi/v1/ping") as r:
                    return await r.json()

            async with (
                BinanceClient.from_credentials(url, KEY, SECRET, **opts) as local,
                BinanceClient.from_credentials(url, KEY, SECRET, redis, **opts) as shared,
            ):
                cases = [
                    ("raw aiohttp GET (reference)", raw_get),
                    ("client.ping  local budget", local.ping),
                    ("client.ping  Redis budget", shared.ping),
                    ("client.position_risk signed", lambda: local.position_risk("BTCUSDT")),
                ]
                print(f"{n} requests each, loopback, Python {sys.version.split()[0]}")
                print(f"{'case':32} {'seq req/s':>10} {'us/req':>8} {'x32 req/s':>10}")
                best: dict[str, list[float]] = {name: [0.0, 0.0] for name, _ in cases}
                for _ in range(3):  # interleaved rounds, best of 3: the machine is shared
                    for name, call in cases:
                        b = best[name]
                        b[0] = max(b[0], await timed(n, 1, call))
                        b[1] = max(b[1], await timed(n, 32, call))
                for name, (seq, par) in best.items():
                    print(f"{name:32} {seq:10.0f} {1e6 / seq:8.0f} {par:10.0f}")
    finally:
        await redis.aclose()
        await runner.cleanup()
        if server:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
