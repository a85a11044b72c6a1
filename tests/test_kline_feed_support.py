"""Shared pieces of the kline_feed / rest_fallback tests (no tests in here).

- `feed_settings(...)`: settings pointing at an in-process simulator and the test Redis,
  with the feed's timers scaled to the simulator's fast clock;
- `running(service, settings)`: `serve()` in a task, stopped on exit;
- `assert_exactly_once(...)`: THE check of every chaos test: the stream against the
  simulator's own record of closed klines: nothing missing, nothing twice, per-symbol
  order kept, and the prices/volumes equal to what the exchange closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

from services.exchange_sim.server import SimServer
from shared.codec import decode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.kline_publisher import KlinePublisher
from shared.runtime import Service, serve
from tests.polling import until

IV = 60_000
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def feed_settings(
    sim: SimServer, redis_url: str, prefix: str, *, symbols: Iterable[str] = SYMBOLS,
    websocket: dict[str, Any] | None = None, service: dict[str, Any] | None = None,
    exchange: dict[str, Any] | None = None,
) -> Settings:  # fmt: skip
    return load_settings(
        exchange={
            "mode": "sim",
            "rest_url": sim.rest_url,
            "ws_url": sim.ws_url,
            "user_ws_url": sim.user_ws_url,
            "symbols": list(symbols),
            "breaker_open_seconds": 0.5,
            "request_timeout": 3,
            **(exchange or {}),
        },  # fmt: skip
        redis={"url": redis_url, "prefix": prefix},
        websocket={
            "reconnect_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "stall_timeout": 0.5,
            **(websocket or {}),
        },  # fmt: skip
        service={
            "heartbeat_interval": 0.1,
            "heartbeat_ttl": 2,
            "fallback_interval": 0.1,
            **(service or {}),
        },  # fmt: skip
    )


@asynccontextmanager
async def running(svc: Service, settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False))
    await until(lambda: svc.phase == "running" or task.done(), 15)
    assert not task.done(), f"serve() ended early with {task.result()}"
    try:
        yield task
    finally:
        svc.request_stop("test over")
        code = await asyncio.wait_for(asyncio.shield(task), 15)
        assert code == 0, f"service exited {code}: {svc.stop_reason}"


async def stream_klines(redis: aioredis.Redis, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every kline in the stream, per symbol, in stream order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for _, fields in await redis.xrange(Keys(prefix).stream_klines):
        kind, data, meta = decode_event(fields)
        assert kind == "kline" and meta.symbol == data["symbol"]
        out.setdefault(data["symbol"], []).append(data)
    return out


def record(sim: SimServer, symbol: str) -> list[dict[str, Any]]:
    return sim.driver.closed_klines(symbol)


async def wait_caught_up(
    redis: aioredis.Redis, prefix: str, sim: SimServer, symbols: Iterable[str], limit_s: float
) -> dict[str, int]:
    """Until the stream holds, for every symbol, the newest kline the simulator had closed
    when this was called; returns those open times."""
    want = {s: record(sim, s)[-1]["t"] for s in symbols}
    publisher = KlinePublisher(redis, Keys(prefix), 1)

    async def caught_up() -> bool:
        last = await publisher.last_open_times(list(want))
        return all(v is not None and v >= want[s] for s, v in last.items())

    await until(caught_up, limit_s, every=0.02)
    return want


async def assert_exactly_once(
    redis: aioredis.Redis, prefix: str, sim: SimServer, symbols: Iterable[str] = SYMBOLS,
    *, since: int | None = None, limit_s: float = 10.0, allow_ahead: int = 0,
) -> dict[str, list[int]]:  # fmt: skip
    """Stream == the simulator's record (see module doc) from the first kline in the
    stream (or `since`, which must then be in it) to the newest closed one, and no holes.
    `allow_ahead`: klines the stream may hold past the record (REST can close a kline
    before the socket's delayed x:true enters the record)."""
    symbols = list(symbols)
    upto = await wait_caught_up(redis, prefix, sim, symbols, limit_s)
    got = await stream_klines(redis, prefix)
    seqs = {}
    for s in symbols:
        rec = {k["t"]: k for k in record(sim, s)}  # a later record: it may have grown
        last = upto[s]
        rows = got.get(s, [])
        seq = [d["open_time"] for d in rows]
        assert seq, f"{s}: nothing in the stream"
        assert seq == sorted(set(seq)), f"{s}: duplicate or out of order: {seq}"
        holes = [(a, b) for a, b in zip(seq, seq[1:], strict=False) if b - a != IV]
        assert not holes, f"{s}: holes in the stream at {holes[:3]}"
        # the record starts with the first close the socket sent; older klines (REST
        # history, e.g. rest_fallback's first fill) are checked for holes only
        first = max(seq[0], min(rec)) if since is None else since
        assert seq[0] <= first, f"{s}: stream starts at {seq[0]}, expected {first}"
        expected = [t for t in sorted(rec) if first <= t <= last]
        inside = [t for t in seq if first <= t <= last]
        missing = sorted(set(expected) - set(inside))
        assert not missing, (
            f"{s}: missing {missing[:3]} of {expected[0]}..{expected[-1]}; got {seq}"
        )
        assert inside == expected
        after = [t for t in seq if t > last]  # published since: contiguous, in the record
        assert after == [last + IV * (i + 1) for i in range(len(after))], f"{s}: {after}"
        ahead = [t for t in after if t not in rec]
        assert len(ahead) <= allow_ahead, f"{s}: ahead of the record: {ahead}"
        for d in rows:
            k = rec.get(d["open_time"])
            if k is None:
                continue
            for ours, theirs in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"),
                                 ("volume", "v"), ("quote_volume", "q")):  # fmt: skip
                assert d[ours] == float(k[theirs]), f"{s}@{d['open_time']}: {ours}"
            assert d["trades"] == k["n"] and d["close_time"] == k["T"] and d["closed"] is True
        seqs[s] = seq
    return seqs


async def wait_sim_minutes(sim: SimServer, minutes: float) -> None:
    await sim.wait_until(sim.clock.now_ms() + int(minutes * IV), timeout_s=30)
