"""kline_feed's publish lane and the script's `expect` check, against a real Redis: chunks
pipelined in order without waiting for replies, and what happens when one of them fails
(NOSCRIPT, a killed connection): it settles as unknown, and a later kline of the same
symbol is refused rather than published over the hole; the pipeline then backfills."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.kline_feed.lane import PublishLane
from services.kline_feed.pipeline import KlinePipeline
from shared.binance.client import BinanceClient
from shared.keys import Keys
from shared.kline_encoding import first_or_after
from shared.kline_publisher import (
    NO_EXPECT,
    Backfiller,
    KlinePublisher,
    PublishResult,
    closed_rest_klines,
)
from shared.models import Kline
from shared.testing import RedisServer
from tests.polling import until
from tests.test_kline_publisher import IV, T0, kline, stream

Settled = list[tuple[list[Kline], list[PublishResult] | None]]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A private server: these tests flush its scripts and kill its clients."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def own_client(own_redis: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_redis)
    try:
        yield client
    finally:
        await client.aclose()


async def running_lane(
    client: aioredis.Redis, prefix: str
) -> tuple[PublishLane, Settled, asyncio.Task[None]]:
    settled: Settled = []
    lane = PublishLane(KlinePublisher(client, Keys(prefix), 1000),
                       lambda ks, rs: settled.append((ks, rs)))  # fmt: skip
    return lane, settled, asyncio.create_task(lane.run())


async def stop_lane(lane: PublishLane, task: asyncio.Task[None]) -> None:
    lane.close()
    await asyncio.wait_for(task, 5)


async def test_chunks_go_out_before_any_reply_and_settle_in_order(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lane, settled, task = await running_lane(redis_client, prefix)
    chunks = [[kline(f"S{i}USDT", T0 + IV * m) for i in range(5)] for m in range(4)]
    for m, c in enumerate(chunks):
        await lane.send(c, [NO_EXPECT if m == 0 else k.open_time - IV for k in c])
    assert lane.inflight == 20 and not settled  # all written, no reply read yet
    await until(lambda: len(settled) == 4)
    assert [ks for ks, _ in settled] == chunks and lane.inflight == 0
    assert all(r is not None and all(x.published for x in r) for _, r in settled)
    got = await stream(redis_client, prefix)
    assert got == [(k.symbol, k.open_time) for c in chunks for k in c]
    await stop_lane(lane, task)


async def test_send_now_writes_in_order_without_a_loop_turn_once_connected(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lane, settled, task = await running_lane(redis_client, prefix)
    assert not lane.send_now([kline(t=T0)], [NO_EXPECT])  # no connection yet: `send` does it
    await lane.send([kline(t=T0)], [NO_EXPECT])
    assert lane.send_now([kline(t=T0 + IV)], [T0])
    assert lane.send_now([kline(t=T0 + 2 * IV)], [T0 + IV])
    assert lane.inflight == 3 and not settled  # no turn yet for the reply reader
    await until(lambda: len(settled) == 3)
    assert all(rs is not None and rs[0].published for _, rs in settled)
    assert await stream(redis_client, prefix) == [("BTCUSDT", T0 + IV * m) for m in range(3)]
    await stop_lane(lane, task)


async def test_a_kline_whose_predecessor_is_not_in_redis_is_refused(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lane, settled, task = await running_lane(redis_client, prefix)
    await lane.send([kline(t=T0)], [NO_EXPECT])
    await lane.send([kline(t=T0 + 2 * IV)], [T0 + IV])  # T0 + IV never came
    await lane.send([kline(t=T0 + IV)], [T0])
    await lane.send([kline(t=T0)], [T0 - IV])  # a duplicate stays a duplicate
    await until(lambda: len(settled) == 4)
    res = [rs[0] for _, rs in settled if rs is not None]
    assert [(r.published, r.refused, r.last_open) for r in res] == [
        (True, False, T0), (False, True, T0), (True, False, T0 + IV), (False, False, T0 + IV),
    ]  # fmt: skip
    fresh = KlinePublisher(redis_client, Keys(prefix), 1000)
    await fresh.load_script()
    raw = await redis_client.execute_command(*fresh.eval_args([kline("NEWUSDT", T0)], [T0 - IV]))
    assert raw == [-1, -1]  # refused, and nothing in Redis for the symbol
    assert await stream(redis_client, prefix) == [("BTCUSDT", T0), ("BTCUSDT", T0 + IV)]
    await stop_lane(lane, task)


async def test_noscript_settles_the_chunk_as_unknown_and_nothing_skips_it(
    own_client: aioredis.Redis,
) -> None:
    lane, settled, task = await running_lane(own_client, "p:")
    await lane.send([kline(t=T0)], [NO_EXPECT])
    await until(lambda: len(settled) == 1)
    await own_client.script_flush()  # as after a Redis restart
    await lane.send([kline(t=T0 + IV)], [T0])
    await until(lambda: len(settled) == 2)
    assert settled[1][1] is None  # outcome unknown (it did not run)
    await lane.send([kline(t=T0 + 2 * IV)], [T0 + IV])  # the script is loaded again
    await until(lambda: len(settled) == 3)
    r = settled[2][1]
    assert r is not None and r[0].refused and r[0].last_open == T0
    assert await stream(own_client, "p:") == [("BTCUSDT", T0)]
    await stop_lane(lane, task)


async def test_a_killed_connection_settles_as_unknown_then_the_lane_reconnects(
    own_client: aioredis.Redis,
) -> None:
    lane, settled, task = await running_lane(own_client, "p:")
    await lane.send([kline(t=T0)], [NO_EXPECT])
    await until(lambda: len(settled) == 1)
    await own_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await lane.send([kline(t=T0 + IV)], [T0])
    await until(lambda: len(settled) == 2)
    assert settled[1][1] is None and lane.errors >= 1
    await lane.send([kline(t=T0 + IV)], [T0])  # a fresh connection
    await until(lambda: len(settled) == 3)
    r = settled[2][1]
    assert r is not None and r[0].published
    assert await stream(own_client, "p:") == [("BTCUSDT", T0), ("BTCUSDT", T0 + IV)]
    await stop_lane(lane, task)


async def test_pipeline_backfills_a_refused_kline_before_publishing_it(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """The pipeline believes T is in Redis (say its chunk failed after all): the next
    kline is refused, held, and the fill brings T over REST first."""
    async with SimServer(SimConfig(symbols=("BTCUSDT",), paused=True)) as sim:
        now = sim.clock.now_ms()
        open_t = now - now % IV
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                                  redis_prefix=prefix) as client:  # fmt: skip
            rows = await client.klines("BTCUSDT", "1m", start_time=open_t - 4 * IV, limit=5)
            ks = closed_rest_klines("BTCUSDT", "1m", rows, proven_upto=None, received_ms=1,
                                    exchange_ms=open_t)  # fmt: skip
            t = [k.open_time for k in ks]
            assert t == [open_t - IV * m for m in (4, 3, 2, 1)]
            publisher = KlinePublisher(redis_client, Keys(prefix), 1000)
            await publisher.publish_many(ks[:1])
            tasks: list[asyncio.Task[Any]] = []
            pipe = KlinePipeline(
                publisher, Backfiller(client, publisher, "1m"), ["BTCUSDT"], "1m",
                spawn=lambda coro, name: tasks.append(asyncio.create_task(coro)) or tasks[-1],
                exchange_now=lambda: open_t,
            )  # fmt: skip
            pipe.load({"BTCUSDT": t[1]})  # wrong: Redis holds t[0]
            flusher = asyncio.create_task(pipe.run_flusher())
            lane = asyncio.create_task(pipe.lane.run())
            assert pipe.on_closed(ks[2]) is None
            await until(lambda: pipe.counters["refused"] == 1)
            await until(lambda: not pipe.states["BTCUSDT"].filling and pipe.backlog == 0)
            await until(lambda: pipe.states["BTCUSDT"].last == t[2])
            await pipe.close()
            await asyncio.wait_for(asyncio.gather(flusher, lane), 5)
            for task in tasks:
                await task
        got = [ot for _, ot in await stream(redis_client, prefix)]
        assert got == t[:3]  # t[1] came over REST before t[2]
        assert pipe.counters["backfilled_klines"] >= 1


async def test_cache_chunks_share_the_lane_and_settle_on_their_own(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """A cache chunk goes after the publish chunks sent before it, is not counted in
    flight (back-pressure is about the stream) and reports to its own callback."""
    cached: list[tuple[list[Kline], bool]] = []
    settled: Settled = []
    lane = PublishLane(KlinePublisher(redis_client, Keys(prefix), 1000),
                       lambda ks, rs: settled.append((ks, rs)),
                       lambda ks, ok: cached.append((ks, ok)))  # fmt: skip
    task = asyncio.create_task(lane.run())
    first = [kline(f"S{i}USDT", T0) for i in range(3)]
    await lane.send(first, [NO_EXPECT] * 3)
    assert lane.send_now([kline("S0USDT", T0 + IV)], [T0])
    assert lane.send_cache_now([first[:2], first[2:]])
    assert lane.inflight == 4  # the cache chunk is not in flight
    await until(lambda: len(cached) == 2 and len(settled) == 2)
    assert cached == [(first[:2], True), (first[2:], True)]
    keys = Keys(prefix)
    for k in first:
        assert await redis_client.hget(keys.kline(k.symbol), "open_time") == str(T0).encode()
    assert (
        await redis_client.hget(keys.klines_last_published, "S0USDT") == str(T0 + IV).encode()
    )  # the guard moved on; the cache follows only when its chunk is sent
    await redis_client.delete(keys.kline("S1USDT"))
    await redis_client.set(keys.kline("S1USDT"), "not a hash")  # WRONGTYPE in the script
    await lane.send_cache([kline("S1USDT", T0 + IV)])
    await until(lambda: len(cached) == 3)
    assert cached[2][1] is False  # the script failed on that key: reported, lane goes on
    await lane.send([kline("S1USDT", T0 + IV)], [T0])
    await until(lambda: len(settled) == 3)
    assert settled[2][1] is not None and settled[2][1][0].published
    await stop_lane(lane, task)


async def test_a_first_kline_may_start_a_symbol_but_not_skip_what_another_put_there(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """kline_feed's first kline of a symbol goes with `first_or_after(its predecessor)`:
    published into an empty symbol or after its predecessor, refused after anything
    older (rest_fallback published T0 at start-up; T0 + IV would be skipped)."""
    p = KlinePublisher(redis_client, Keys(prefix), 1000)
    await p.publish_many([kline("OLDUSDT", T0)])  # as rest_fallback would
    await p.load_script()
    cases = [(kline("OLDUSDT", T0 + 2 * IV), -1), (kline("NEWUSDT", T0 + 2 * IV), T0 + 2 * IV),
             (kline("OLDUSDT", T0 + IV), T0 + IV)]  # fmt: skip
    for k, want_last in cases:
        raw = await redis_client.execute_command(
            *p.eval_args([k], [first_or_after(k.open_time - IV)])
        )
        published = isinstance(raw[0], bytes)
        assert published == (want_last != -1), k
        assert raw[1] == (T0 if want_last == -1 else want_last)
    got = await stream(redis_client, prefix)
    assert got == [("OLDUSDT", T0), ("NEWUSDT", T0 + 2 * IV), ("OLDUSDT", T0 + IV)]
