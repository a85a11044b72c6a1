"""Stream bus throughput: publish one awaited XADD at a time vs pipelined, and consume.

In one run, against a private redis-server (shared.testing.RedisServer) on loopback:
  publish, one awaited XADD at a time   StreamBus.publish (MAXLEN ~), the reference
  publish_many, batches of 500          StreamBus.publish_many (pipelined, no MULTI)
  consume, XREADGROUP COUNT 500         Consumer.read, hiredis parser (installed)
  consume + XACK per batch              Consumer.read + Consumer.ack
  consume, pure-Python parser           the same reads without hiredis, for reference
Entries are codec.encode_event kline events whose msgpack `data` is ~80 bytes.
Run: .venv/bin/python bench/bench_bus.py [n_entries]   (default 50,000)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncRESP2Parser

from shared.bus import Consumer, StreamBus
from shared.codec import encode_event
from shared.keys import Keys
from shared.testing import RedisServer

BATCH = 500


def make_entries(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        data = {"t": 1_700_000_000_000 + i * 60_000, "o": "37012.10", "h": "37020.00",
                "l": "37001.50", "c": "37015.30", "v": "123.456", "q": "4567.8", "x": True, "n": i % 1000}  # fmt: skip
        out.append(encode_event("kline", data, symbol="BTCUSDT", event_time=data["t"] + 59_999))
    return out


async def timed(label: str, n: int, fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    dt = time.perf_counter() - t0
    rate = n / dt
    print(f"  {label:<40} {n:>7} msgs  {dt:7.2f} s  {rate:>10,.0f} msgs/s")
    return rate


async def consume_all(consumer: Consumer, n: int, ack: bool) -> None:
    got = 0
    while got < n:
        batch = await consumer.read(block_ms=100)
        got += len(batch)
        if ack:
            await consumer.ack([i for i, _ in batch])


async def main(n: int) -> None:
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            client = aioredis.from_url(server.url)
            pyclient = aioredis.from_url(server.url, parser_class=_AsyncRESP2Parser)
            info = await client.info("server")
            keys = Keys("bench:")
            bus = StreamBus(client, keys, {"one": n * 2, "piped": n * 2})
            entries = make_entries(n)
            print(f"redis {info['redis_version']}, loop {loop_name}, {n} entries, "
                  f"data {len(entries[0]['data'])} B msgpack per entry")  # fmt: skip

            async def one_at_a_time() -> None:
                for fields in entries:
                    await bus.publish(keys.stream("one"), fields)

            async def pipelined() -> None:
                for i in range(0, n, BATCH):
                    await bus.publish_many(keys.stream("piped"), entries[i : i + BATCH])

            single = await timed("publish: one awaited XADD at a time", n, one_at_a_time)
            piped = await timed(f"publish_many: pipelined, batches of {BATCH}", n, pipelined)
            rates = {}
            for label, cli, stream, group, ack in (
                ("consume: XREADGROUP COUNT 500 (hiredis)", client, "piped", "g1", False),
                ("consume + XACK per batch (hiredis)", client, "one", "g2", True),
                ("consume: XREADGROUP COUNT 500 (pure Py)", pyclient, "piped", "g3", False),
            ):
                c = Consumer(cli, keys.stream(stream), group, "bench", count=BATCH)
                await c.ensure_group()
                rates[label] = await timed(label, n, lambda c=c, ack=ack: consume_all(c, n, ack))
            print(f"ratio pipelined / one-at-a-time publish: {piped / single:.1f}x")
            hi, py = rates["consume: XREADGROUP COUNT 500 (hiredis)"], rates[
                "consume: XREADGROUP COUNT 500 (pure Py)"]  # fmt: skip
            print(f"ratio hiredis / pure-Python consume:     {hi / py:.1f}x")
            await client.aclose()
            await pyclient.aclose()
        finally:
            server.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(count))
    else:
        uvloop.run(main(count))
