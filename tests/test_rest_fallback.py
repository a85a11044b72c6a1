"""rest_fallback against the simulator and a real Redis: it fills what a dead feed
leaves empty, through the same exactly-once path, and stops when the feed is back."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.kline_feed.service import KlineFeedService
from services.rest_fallback.__main__ import main
from services.rest_fallback.service import RestFallbackService
from shared.binance.client import BinanceClient
from shared.keys import Keys
from shared.models import Balance, Position
from shared.runtime import Service
from tests.polling import until
from tests.test_kline_feed_support import (
    SYMBOLS,
    assert_exactly_once,
    feed_settings,
    running,
    wait_sim_minutes,
)


class AccountFeedStandIn(Service):
    """A live process that writes an account_feed heartbeat and nothing else."""

    name: ClassVar[str] = "account_feed"  # type: ignore[misc]


async def test_kline_feed_down_then_back(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    async with SimServer(SimConfig(symbols=SYMBOLS, speed=120)) as sim:
        st = feed_settings(sim, redis_url, prefix)
        fb = RestFallbackService(st)
        sim.admin.fail_rest("5xx", count=5)  # the breaker opens at once, then recovers
        async with running(fb, st):
            await until(lambda: fb.client.breaker.opens >= 1, 5)
            assert fb.status() == "degraded"
            await until(lambda: fb.stats()["klines_published"] >= 2 * len(SYMBOLS), 10)
            assert fb.status() == "ok"
            await wait_sim_minutes(sim, 2)
            await assert_exactly_once(redis_client, prefix, sim)
            for s in SYMBOLS:
                assert float(await redis_client.hget(keys.prices, s)) > 0
            feed = KlineFeedService(st)
            async with running(feed, st):
                await until(lambda: fb.stats()["feeds_alive"]["kline_feed"], 5)
                await wait_sim_minutes(sim, 0.5)  # the hand-over
                fills = fb.stats()["fills"]
                await wait_sim_minutes(sim, 2.5)
                assert fb.stats()["fills"] == fills  # stopped while the feed is fresh
                assert fb.stats()["active"]["kline_feed_down"] == 0
                await assert_exactly_once(redis_client, prefix, sim)
                assert feed.stats()["klines_published"] >= len(SYMBOLS)
                stats = fb.stats()
                assert stats["activations"]["kline_feed_down"] == 1
            # the feed stopped: down again, a second activation
            await until(lambda: fb.stats()["activations"]["kline_feed_down"] == 2, 5)
    assert stats["errors"] >= 1 and stats["rest"]["breaker_opens"] >= 1
    assert stats["prices_refreshed"] >= len(SYMBOLS)


async def test_stale_and_missing_klines_while_the_feed_looks_alive(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """A kline_feed heartbeat that publishes nothing: missing, then stale, per symbol."""

    class SilentFeed(Service):
        name: ClassVar[str] = "kline_feed"  # type: ignore[misc]

    async with SimServer(SimConfig(symbols=SYMBOLS, speed=120)) as sim:
        st = feed_settings(sim, redis_url, prefix)
        fb = RestFallbackService(st)
        async with running(SilentFeed(st), st), running(fb, st):
            await until(lambda: fb.stats()["activations"]["kline_missing"] == len(SYMBOLS), 5)
            await until(lambda: fb.stats()["activations"]["kline_stale"] >= len(SYMBOLS), 10)
            await wait_sim_minutes(sim, 1)
            await assert_exactly_once(redis_client, prefix, sim)
            stats = fb.stats()
    assert stats["activations"]["kline_feed_down"] == 0
    assert stats["feeds_alive"] == {"kline_feed": True, "account_feed": False}


async def test_account_feed_down_fills_positions_and_balances(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    async with SimServer(SimConfig(symbols=SYMBOLS, speed=1)) as sim:
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                                  redis_prefix=prefix) as client:  # fmt: skip
            await client.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010",
                                   newClientOrderId="t-fallback-1")  # fmt: skip
        # a position the cache still shows but the exchange closed behind our back
        ghost = Position("ETHUSDT", Decimal("2"), Decimal("3000"), Decimal("3000"), Decimal(0),
                         "cross", Decimal(0), 5, 1)  # fmt: skip
        await redis_client.hset(keys.position("ETHUSDT"), mapping=ghost.to_hash())
        st = feed_settings(sim, redis_url, prefix)
        fb = RestFallbackService(st)
        async with running(fb, st):
            await until(lambda: redis_client.exists(keys.balance("USDT")), 5)
            await until(lambda: fb.stats()["positions_removed"] >= 1, 5)
            pos = Position.from_hash(await redis_client.hgetall(keys.position("BTCUSDT")))
            assert pos.size == Decimal("0.010") and pos.entry_price > 0
            assert not await redis_client.exists(keys.position("ETHUSDT"))
            bal = Balance.from_hash(await redis_client.hgetall(keys.balance("USDT")))
            assert Decimal(9000) < bal.wallet_balance <= Decimal(10000)
            async with running(AccountFeedStandIn(st), st):
                await until(lambda: fb.stats()["feeds_alive"]["account_feed"], 5)
                await redis_client.delete(keys.balance("USDT"))
                cycles = fb.stats()["cycles"]
                await until(lambda: fb.stats()["cycles"] >= cycles + 3, 5)
                assert not await redis_client.exists(keys.balance("USDT"))  # stopped
                assert fb.stats()["active"]["account_feed_down"] == 0
                stats = fb.stats()
                assert stats["activations"]["account_feed_down"] == 1
            # the stand-in stopped: account_feed is down again, a second activation
            await until(lambda: fb.stats()["activations"]["account_feed_down"] == 2, 5)
            await until(lambda: redis_client.exists(keys.balance("USDT")), 5)
    assert stats["positions_written"] >= 1 and stats["balances_written"] >= 1


def test_cli_help() -> None:
    assert main(["--help"]) == 0
