"""The REST client keeps signing valid timestamps against a simulator running 120x.

Binance's clock runs at wall speed; the simulator's may not. The client measures the
exchange clock's rate from two syncs and extrapolates, so signed requests spread over
time pass the recvWindow check without a re-sync each.
"""

from __future__ import annotations

import asyncio

from services.exchange_sim.server import SimConfig, SimServer
from shared.binance import BinanceClient


async def test_signed_requests_pass_recv_window_on_a_fast_clock() -> None:
    async with SimServer(SimConfig(symbols=("BTCUSDT",), speed=120)) as sim:
        client = BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret)
        async with client:
            for _ in range(8):
                rows = await client.position_risk()
                assert isinstance(rows, list)
                await asyncio.sleep(0.25)  # 30 simulated seconds: far beyond recvWindow
            stats = client.stats()
            skew = abs(client.server_ms() - sim.clock.now_ms())
    # The first drift costs one re-sync (which measures the rate); after that, none.
    assert stats["time_syncs"] <= 2, stats
    assert stats["clock_rate"] > 100
    assert skew < 5_000


async def test_retry_after_is_real_seconds_on_a_fast_simulator(redis_client, prefix) -> None:
    """A 418 ban of 120 exchange seconds on a 240x simulator is half a real second: the
    shared ban must not stop every process for two real minutes."""
    import time

    from shared.binance import IpBanned

    async with SimServer(SimConfig(symbols=("BTCUSDT",), speed=240)) as sim:
        sim.admin.fail_rest(mode="418", count=1, path="/fapi/v1/ping")
        client = BinanceClient.from_credentials(
            sim.rest_url, sim.demo_key, sim.demo_secret, redis_client, redis_prefix=prefix
        )
        async with client:
            try:
                await client.ping()
                raise AssertionError("the injected 418 did not arrive")
            except IpBanned as exc:
                assert exc.retry_after <= 1
            started = time.monotonic()
            await client.exchange_info()  # waits out the short ban, does not refuse
            assert time.monotonic() - started < 3
