"""kline_feed against the simulator (in process, fast clock) and a real Redis: chaos.

Each test makes the socket misbehave the way Binance or the network does, and then
compares `stream:klines` with the simulator's own record of closed klines
(`assert_exactly_once`): nothing missing, nothing twice, per-symbol order kept.
Speed 120: a simulated minute is half a real second.
"""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.kline_feed.lease import NoFreeShard
from services.kline_feed.service import KlineFeedService
from services.kline_feed.sharding import shard_symbols
from shared.keys import Keys
from shared.runtime import serve
from tests.polling import until
from tests.test_kline_feed_support import (
    IV,
    SYMBOLS,
    assert_exactly_once,
    feed_settings,
    running,
    wait_sim_minutes,
)

SPEED = 120


def sim_config(**kw: object) -> SimConfig:
    return SimConfig(symbols=SYMBOLS, speed=SPEED, **kw)  # type: ignore[arg-type]


async def mid_minute(sim: SimServer) -> None:
    now = sim.clock.now_ms()
    await sim.wait_until(now - now % IV + IV + IV // 2)


async def test_publishes_every_close_with_cache_and_prices(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    # the server pings every 0.2 s and drops a socket that does not pong within 0.6 s
    async with SimServer(sim_config(ping_interval_s=0.2, pong_timeout_s=0.6)) as sim:
        st = feed_settings(sim, redis_url, prefix)
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 3)
            seqs = await assert_exactly_once(redis_client, prefix, sim)
            stats = svc.stats()
        keys = Keys(prefix)
        for s in SYMBOLS:
            cache = await redis_client.hgetall(keys.kline(s))
            assert int(cache[b"open_time"]) == seqs[s][-1]
            for f in (b"open", b"high", b"low", b"close", b"volume", b"quote_volume", b"trades",
                      b"close_time", b"timestamp", b"received_time"):  # fmt: skip
                assert cache[f], f
            assert float(await redis_client.hget(keys.prices, s)) > 0
            assert int(await redis_client.hget(keys.prices_updated, s)) > 0
        assert stats["connected"] is True and stats["symbols"] == 3
        assert stats["klines_published"] == sum(len(v) for v in seqs.values())
        assert stats["bad_messages"] == 0 and stats["messages_in"] > stats["klines_published"]
        assert stats["cache_errors"] == 0
        assert stats["connections"]["c0"]["streams"] == 3
        assert stats["last_update"].endswith("Z")
        assert sim.registry.counters["pings_sent"] >= 3
        assert sim.registry.counters["pong_timeouts"] == 0 and stats["reconnects"] == 0


async def test_drop_mid_minute_backfills_the_missed_close(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        # 0.8 s real = 1.6 simulated minutes away: at least one close is missed on the socket
        st = feed_settings(sim, redis_url, prefix, websocket={"reconnect_delay": 0.8})
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 1.2)
            await mid_minute(sim)
            assert sim.admin.drop_ws("market") == 1
            await until(lambda: svc.stats()["reconnects"] >= 1, 5)
            await wait_sim_minutes(sim, 1.5)
            await assert_exactly_once(redis_client, prefix, sim)
            stats = svc.stats()
        assert stats["backfilled_klines"] >= len(SYMBOLS)
        assert stats["connected"] is True


async def test_stalled_socket_is_detected_and_replaced(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix, websocket={"stall_timeout": 0.4})
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 1.2)
            await mid_minute(sim)
            assert sim.admin.stall_ws(2.0, kind="market") == 1  # frames due meanwhile are lost
            await until(lambda: svc.stats()["connections"]["c0"]["stalls"] >= 1, 5)
            assert svc.healthy() in ("degraded", True)
            await wait_sim_minutes(sim, 2)
            await assert_exactly_once(redis_client, prefix, sim)
            conn = svc.stats()["connections"]["c0"]
        assert conn["stalls"] >= 1 and conn["connected"] is True


async def test_stopped_for_minutes_then_restarted(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix)
        first = KlineFeedService(st)
        async with running(first, st):
            await wait_sim_minutes(sim, 2)
            await assert_exactly_once(redis_client, prefix, sim)
        await wait_sim_minutes(sim, 5)  # down for five simulated minutes
        second = KlineFeedService(st)
        async with running(second, st):
            await until(lambda: second.stats()["backfilled_klines"] >= 4 * len(SYMBOLS), 5)
            await wait_sim_minutes(sim, 1)
            await assert_exactly_once(redis_client, prefix, sim)


async def test_two_instances_of_one_shard_publish_once(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix)
        a, b = KlineFeedService(st), KlineFeedService(st)
        async with running(a, st), running(b, st):
            await wait_sim_minutes(sim, 3)
            seqs = await assert_exactly_once(redis_client, prefix, sim)
            sa, sb = a.stats(), b.stats()
        published = sa["klines_published"] + sb["klines_published"]
        assert published == sum(len(v) for v in seqs.values())
        assert sa["duplicates_suppressed"] + sb["duplicates_suppressed"] >= published - 3


async def test_two_shards_split_the_symbols(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
    parts = [shard_symbols(symbols, i, 2) for i in range(2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(symbols)
    async with SimServer(SimConfig(symbols=symbols, speed=SPEED)) as sim:
        s0 = feed_settings(sim, redis_url, prefix, symbols=symbols,
                           service={"instance_index": 0, "instance_count": 2})  # fmt: skip
        s1 = feed_settings(sim, redis_url, prefix, symbols=symbols,
                           service={"instance_index": 1, "instance_count": 2})  # fmt: skip
        a, b = KlineFeedService(s0), KlineFeedService(s1)
        async with running(a, s0), running(b, s1):
            await wait_sim_minutes(sim, 2.5)
            await assert_exactly_once(redis_client, prefix, sim, symbols)
            assert a.symbols == parts[0] and b.symbols == parts[1]
            assert a.stats()["duplicates_suppressed"] == b.stats()["duplicates_suppressed"] == 0
        keys = Keys(prefix)
        assert await redis_client.exists(keys.health("kline_feed:0"), keys.health("kline_feed:1"))


async def test_auto_shards_claim_distinct_indices(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
    async with SimServer(SimConfig(symbols=symbols, speed=SPEED)) as sim:
        st = feed_settings(sim, redis_url, prefix, symbols=symbols,
                           service={"instance_index": -1, "instance_count": 2})  # fmt: skip
        a, b = KlineFeedService(st), KlineFeedService(st)
        async with running(a, st), running(b, st):
            assert {a.shard[0], b.shard[0]} == {0, 1}
            assert sorted(a.symbols + b.symbols) == sorted(symbols)
            third = KlineFeedService(st)
            assert await serve(third, st, port=0, install_signals=False) == 1  # no free shard
            await wait_sim_minutes(sim, 2)
            await assert_exactly_once(redis_client, prefix, sim, symbols)
        assert not await redis_client.exists(Keys(prefix).shard_lease("kline_feed", 0))
        assert NoFreeShard("kline_feed", 2, 0).count == 2


async def test_duplicate_and_malformed_messages(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix)
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 1.5)
            await until(lambda: svc.stats()["klines_published"] >= 3, 5)
            before = svc.stats()["duplicates_suppressed"]
            assert sim.admin.duplicate_kline(count=2) == 2 * len(SYMBOLS)
            sent = 0
            for what in ("garbage", "missing_fields", "nan", "nan_bare"):
                sent += sim.admin.send_malformed("market", what, stream="btcusdt@kline_1m")
            # a well-formed closed kline of another symbol on BTCUSDT's stream
            conn = sim.registry.select("market")[0]
            k = dict(sim.driver.closed_klines("ETHUSDT")[-1])
            wrong = orjson.dumps({"e": "kline", "E": k["T"] + 1, "s": "ETHUSDT", "k": k})
            sim.market_hub.send_to(conn, "btcusdt@kline_1m", wrong)
            sim.market_hub.send_to(conn, "dogeusdt@kline_1m", wrong)  # not our stream
            sim.registry.flush_all()
            sent += 2
            await until(lambda: svc.stats()["bad_messages"] >= sent, 5)
            await until(lambda: svc.stats()["duplicates_suppressed"] >= before + 6, 5)
            await wait_sim_minutes(sim, 1.5)
            await assert_exactly_once(redis_client, prefix, sim)
            stats = svc.stats()
        assert stats["bad_messages"] == sent
        assert stats["connections"]["c0"]["reconnects"] == 0  # stayed up throughout


async def test_rest_fails_five_times_breaker_opens_then_recovers(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix, websocket={"reconnect_delay": 1.0})
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 1.2)
            await mid_minute(sim)
            sim.admin.fail_rest("5xx", count=5, path="/fapi/v1/klines")
            sim.admin.drop_ws("market")  # the next closes can only come over REST
            await until(lambda: sim.admin.applied["rest_5xx"] == 5, 10)
            await until(lambda: svc.client.breaker.opens >= 1, 5)
            await until(lambda: svc.stats()["connected"], 5)
            await wait_sim_minutes(sim, 1.5)
            await assert_exactly_once(redis_client, prefix, sim)
            stats = svc.stats()
        assert stats["fill_errors"] >= 5 and stats["rest"]["breaker_opens"] >= 1
        assert stats["rest"]["breaker_state"] == "closed"


async def test_rotates_before_the_connection_age_limit_without_gap(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    # the simulator cuts connections at 100 simulated seconds; we rotate at 40
    async with SimServer(sim_config(max_conn_age_ms=100_000)) as sim:
        st = feed_settings(sim, redis_url, prefix, websocket={"max_connection_age": 40})
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 3)
            await assert_exactly_once(redis_client, prefix, sim)
            conn = svc.stats()["connections"]["c0"]
        assert conn["rotations"] >= 2
        assert conn["reconnects"] == 0 and sim.registry.counters["cut_24h"] == 0


async def test_late_socket_closes_are_taken_from_rest_first(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """Binance sends x:true ~2 s after the minute; REST has the candle at once."""
    async with SimServer(sim_config(close_delay_ms=2_000)) as sim:
        st = feed_settings(sim, redis_url, prefix)
        svc = KlineFeedService(st)
        async with running(svc, st):
            await wait_sim_minutes(sim, 4)
            await assert_exactly_once(redis_client, prefix, sim, allow_ahead=1)
            stats = svc.stats()
        assert 1500 <= stats["close_lateness_ms"] <= 2500
        assert stats["grace_ms"] == 500
        assert stats["early_rest_fetches"] >= len(SYMBOLS)
        assert stats["backfilled_klines"] >= len(SYMBOLS)


async def test_health_reports_degraded_while_disconnected(redis_url: str, prefix: str) -> None:
    async with SimServer(sim_config()) as sim:
        st = feed_settings(sim, redis_url, prefix, websocket={"reconnect_delay": 1.0})
        svc = KlineFeedService(st)
        async with running(svc, st):
            await until(lambda: svc.status() == "ok", 5)
            sim.admin.drop_ws("market")
            await until(lambda: svc.status() == "degraded", 5)
            assert svc.stats()["connected"] is False
            await until(lambda: svc.status() == "ok", 10)
        await asyncio.sleep(0)
