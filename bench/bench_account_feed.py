"""account_feed latency: the simulator sends an ACCOUNT_UPDATE -> the position hash in Redis.

Setup, all on loopback: a private redis-server, the exchange simulator in this process
(speed 1), and account_feed as its own process (`python -m services.account_feed`,
uvloop, JSON logs at WARNING), exactly as deployed.  "Updated" is observed through Redis
keyspace notifications (`notify-keyspace-events Kh`): the clock stops when this process
receives the `hset` notification of `position:BTCUSDT`, so every figure includes the
notification's own delivery.  Events are sent one at a time (latency, not throughput).

Figures, in one run:
  reference: redis floor      this process HSETs the hash itself -> notification
  reference: websocket floor  simulator push -> a bare websockets client on the same key
  ACCOUNT_UPDATE -> hash      simulator push of one ACCOUNT_UPDATE -> notification
  market order -> hash        engine fill (ORDER_TRADE_UPDATE x2 + ACCOUNT_UPDATE) -> hash
  burst                       N ACCOUNT_UPDATEs pushed at once -> the last one applied
Target (issue #5): ACCOUNT_UPDATE -> hash p99 < 5 ms.
Run: .venv/bin/python bench/bench_account_feed.py [n_events]   (default 2,000)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from services.exchange_sim.server import SimConfig, SimServer
from shared.binance.client import BinanceClient
from shared.keys import Keys
from shared.testing import RedisServer

PREFIX = "bench:"
REPO = Path(__file__).resolve().parent.parent


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def report(label: str, xs: list[float]) -> None:
    ms = [x * 1000 for x in xs]
    print(f"  {label:<32} n={len(ms):>5}  p50 {pct(ms, .5):6.3f} ms  p90 {pct(ms, .9):6.3f}"
          f"  p99 {pct(ms, .99):6.3f}  max {max(ms):7.3f} ms")  # fmt: skip


def account_update(e: int, size: str) -> dict[str, Any]:
    return {"e": "ACCOUNT_UPDATE", "E": e, "T": e,
            "a": {"m": "ORDER", "B": [{"a": "USDT", "wb": "10000.12345678",
                                       "cw": "10000.12345678", "bc": "0"}],
                  "P": [{"s": "BTCUSDT", "pa": size, "ep": "30000.5", "bep": "30015.5",
                         "cr": "0", "up": "1.25", "mt": "cross", "iw": "0", "ps": "BOTH"}]}}  # fmt: skip


class Watcher:
    """Keyspace notifications of one hash: `await wait(t)` returns the perf_counter time
    of the first `hset` after which the hash's `updated_at` is >= t (a notification left
    over from an earlier write does not count)."""

    def __init__(self, url: str, key: str) -> None:
        self.client = aioredis.from_url(url)
        self.key = key
        self.channel = f"__keyspace@0__:{key}"
        self.pubsub = self.client.pubsub()

    async def start(self) -> None:
        await self.client.config_set("notify-keyspace-events", "Kh")
        await self.pubsub.subscribe(self.channel)
        await self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation

    async def drain(self) -> None:
        while await self.pubsub.get_message(timeout=0.05) is not None:
            pass

    async def wait(self, updated_at: int, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await self.pubsub.get_message(timeout=timeout)
            if msg and msg["type"] == "message" and msg["data"] == b"hset":
                seen = time.perf_counter()
                got = await self.client.hget(self.key, "updated_at")
                if got is not None and int(got) >= updated_at:
                    return seen
        raise TimeoutError("no matching hset notification")

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


async def measure(n: int, send: Callable[[int], int], watcher: Watcher) -> list[float]:
    """`send(i)` pushes event i and returns its event time; latency to its hash write."""
    await watcher.drain()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        event_time = send(i)
        out.append(await watcher.wait(event_time) - t0)
        await asyncio.sleep(0.001)  # let the heartbeat and pings breathe between events
    return out


def start_service(sim: SimServer, redis_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **sim.env(), "SLT_REDIS__URL": redis_url, "SLT_REDIS__PREFIX": PREFIX,
           "SLT_EXCHANGE__SYMBOLS": '["BTCUSDT","ETHUSDT"]', "SLT_SERVICE__LOG_LEVEL": "WARNING"}  # fmt: skip
    cmd = [sys.executable, "-m", "services.account_feed", "--port", "0"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)


async def wait_ready(r: aioredis.Redis, keys: Keys) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        h = await r.hgetall(keys.health("account_feed"))
        if h.get(b"status") == b"ok":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("account_feed did not become healthy")


async def run(n: int, redis_url: str) -> None:
    keys = Keys(PREFIX)
    async with SimServer(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), history_minutes=5)) as sim:
        proc = start_service(sim, redis_url)
        r = aioredis.from_url(redis_url)
        watcher = Watcher(redis_url, keys.position("BTCUSDT"))
        try:
            await wait_ready(r, keys)
            await watcher.start()
            account = sim.demo_key
            seq = [sim.clock.now_ms()]

            def push_update(i: int) -> int:
                seq[0] = max(seq[0] + 1, sim.clock.now_ms())  # increasing, near sim time
                size = "0.010" if i % 2 else "0.020"
                sim.user_hub.push_event(account, account_update(seq[0], size))
                sim.flush()
                return seq[0]

            await measure(max(50, n // 20), push_update, watcher)  # warm-up
            print(f"account_feed latency, {n} events each (loopback, 2 processes + redis):")
            await redis_floor(r, keys, n, watcher)
            seq[0] = await ws_floor(sim, n, seq[0] + 1)
            report("ACCOUNT_UPDATE -> position hash", await measure(n, push_update, watcher))
            await sim.wait_until(seq[0] + 1)  # fills carry sim time: newer than all above
            await order_path(sim, n // 2, watcher)
            await watcher.pubsub.unsubscribe()
            await burst(sim, r, keys, account, seq[0] + 1, 5_000)
        finally:
            await watcher.close()
            await r.aclose()
            proc.terminate()  # SIGTERM: the service DELETEs its key, so keep serving
            for _ in range(200):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                proc.kill()
            err = proc.communicate()[1].decode()
            closed = [k for k in sim.admin.state()["listenKeys"] if k["state"] == "closed"]
            print(f"  shutdown: exit {proc.returncode}, listenKeys closed: {len(closed)}")
            if proc.returncode != 0:
                print(err[-2000:])


async def redis_floor(r: aioredis.Redis, keys: Keys, n: int, watcher: Watcher) -> None:
    """This process writes the hash itself: client -> Redis -> notification."""
    await watcher.drain()
    key = keys.position("BTCUSDT")
    t = int(await r.hget(key, "updated_at") or 0)
    out = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        await r.hset(key, "updated_at", str(t + i))
        out.append(await watcher.wait(t + i) - t0)
    report("reference: redis floor", out)


async def ws_floor(sim: SimServer, n: int, e0: int) -> int:
    """A bare websockets client on a second socket of the same listenKey."""
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        key = (await c.create_listen_key())["listenKey"]  # the active key (shared)
    async with connect(f"{sim.user_ws_url}/private/ws/{key}") as ws:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            sim.user_hub.push_event(sim.demo_key, account_update(e0 + i, "0.010"))
            sim.flush()
            orjson.loads(await ws.recv(decode=False))
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.001)
    report("reference: websocket floor", out)
    return e0 + n  # the service applied these too: later events must be newer


async def order_path(sim: SimServer, n: int, watcher: Watcher) -> None:
    """Market orders of 0.005 BTC alternately bought and sold on top of a 0.050 position
    (never flat: a closed position deletes the hash instead of writing it)."""
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.050"}
    _, events = sim.exchange.place_order(sim.demo_key, params, sim.catch_up())
    sim.push_events(events)
    await asyncio.sleep(0.2)

    def fill(i: int) -> int:
        now = sim.catch_up()
        side = "BUY" if i % 2 == 0 else "SELL"
        params = {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": "0.005"}
        _, events = sim.exchange.place_order(sim.demo_key, params, now)
        sim.push_events(events)
        return max(int(ev.payload["E"]) for ev in events if ev.event_type == "ACCOUNT_UPDATE")

    report("market order fill -> hash", await measure(n, fill, watcher))


async def burst(
    sim: SimServer, r: aioredis.Redis, keys: Keys, account: str, e0: int, n: int
) -> None:
    last = e0 + n - 1
    t0 = time.perf_counter()
    for i in range(n):
        sim.user_hub.push_event(account, account_update(e0 + i, "0.010" if i % 2 else "0.020"))
        if i % 100 == 99:
            sim.flush()
            await asyncio.sleep(0)
    sim.flush()
    while True:
        got = await r.hget(keys.account_state, "position:BTCUSDT")
        if got is not None and int(got) >= last:
            break
        await asyncio.sleep(0.0005)
    dt = time.perf_counter() - t0
    print(
        f"  {'burst: ' + str(n) + ' ACCOUNT_UPDATEs':<32} {dt * 1000:8.1f} ms  "
        f"{n / dt:>9,.0f} events/s applied + published"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            asyncio.run(run(n, server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
