"""Shared request-weight budget and ban switch on a real Redis (plus the local fallback)."""

from __future__ import annotations

import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.binance.ratelimit import (
    MINUTE_MS,
    LocalWeightBudget,
    SharedWeightBudget,
    next_minute_wait,
)
from shared.binance.signing import account_id
from shared.keys import Keys
from shared.testing import free_port

T0 = 1_700_000_020_000  # 40 s into a minute
ACCOUNT = account_id("some-api-key")


def shared(redis: aioredis.Redis, prefix: str, limit: int = 100) -> SharedWeightBudget:
    return SharedWeightBudget(redis, Keys(prefix), ACCOUNT, limit)


async def test_reserve_increments_the_minute_key_with_a_ttl(redis_client, prefix) -> None:
    budget = shared(redis_client, prefix)
    r = await budget.reserve(7, T0)
    assert r.ok and r.used == 7
    key = Keys(prefix).rest_weight(ACCOUNT, T0 // MINUTE_MS)
    assert int(await redis_client.get(key)) == 7
    assert 0 < await redis_client.pttl(key) <= 2 * MINUTE_MS


async def test_two_budgets_share_one_count_and_refuse_past_the_limit(redis_client, prefix) -> None:
    a, b = shared(redis_client, prefix, 10), shared(redis_client, prefix, 10)
    assert (await a.reserve(6, T0)).ok
    assert (await b.reserve(4, T0 + 5)).used == 10
    refused = await a.reserve(1, T0 + 10)
    assert not refused.ok and not refused.banned
    assert refused.wait_ms == next_minute_wait(T0 + 10) == 19_990
    assert refused.used == 10
    # weight 0 (orders) passes a full budget; the next minute starts from zero
    assert (await b.reserve(0, T0 + 10)).ok
    nxt = await a.reserve(3, T0 + 20_000)
    assert nxt.ok and nxt.used == 3


async def test_reserve_is_atomic_under_concurrency(redis_client, prefix) -> None:
    import asyncio

    budgets = [shared(redis_client, prefix, 50) for _ in range(4)]
    results = await asyncio.gather(*(budgets[i % 4].reserve(1, T0) for i in range(80)))
    assert sum(r.ok for r in results) == 50
    key = Keys(prefix).rest_weight(ACCOUNT, T0 // MINUTE_MS)
    assert int(await redis_client.get(key)) == 50


async def test_one_heavy_request_may_use_an_empty_minute(redis_client, prefix) -> None:
    budget = shared(redis_client, prefix, 10)
    assert (await budget.reserve(40, T0)).ok  # heavier than the budget: never deadlock
    assert not (await budget.reserve(1, T0)).ok


async def test_reconcile_only_raises_the_count(redis_client, prefix) -> None:
    budget = shared(redis_client, prefix, 2000)
    await budget.reserve(5, T0)
    assert await budget.reconcile(1500, T0) == 1500
    assert await budget.reconcile(20, T0) == 1500  # lower header: others are in flight
    assert not (await budget.reserve(600, T0)).ok


async def test_ban_is_shared_only_extended_and_expires(redis_client, prefix) -> None:
    a, b = shared(redis_client, prefix), shared(redis_client, prefix)
    await a.ban(T0 + 3000, T0)
    r = await b.reserve(1, T0 + 1000)
    assert not r.ok and r.banned and r.wait_ms == 2000
    assert await b.banned_until() == T0 + 3000
    await b.ban(T0 + 2000, T0 + 1000)  # an earlier end never shortens the ban
    assert int(await redis_client.get(a.ban_key)) == T0 + 3000
    assert 0 < await redis_client.pttl(a.ban_key) <= 3000
    assert (await b.reserve(1, T0 + 3001)).ok


async def test_redis_down_falls_back_to_the_local_budget(prefix) -> None:
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        budget = shared(dead, prefix, 5)
        assert (await budget.reserve(3, T0)).ok
        assert not (await budget.reserve(3, T0)).ok
        await budget.ban(T0 + 500, T0)
        assert (await budget.reserve(1, T0 + 100)).banned
        assert await budget.banned_until() == T0 + 500
        assert budget.redis_errors >= 3
    finally:
        await dead.aclose()


async def test_names_never_contain_the_api_key(redis_client, prefix) -> None:
    budget = shared(redis_client, prefix)
    await budget.reserve(1, T0)
    await budget.ban(T0 + 1000, T0)
    names = [k.decode() async for k in redis_client.scan_iter(match=f"{prefix}*")]
    assert len(names) == 2
    assert all("some-api-key" not in n and ACCOUNT in n for n in names)


async def test_local_budget_same_rules() -> None:
    budget = LocalWeightBudget(10)
    assert (await budget.reserve(10, T0)).ok
    assert (await budget.reserve(1, T0)).wait_ms == 20_000
    assert (await budget.reserve(0, T0)).ok
    assert (await budget.reserve(1, T0 + 20_000)).ok
    await budget.reconcile(9, T0 + 20_000)
    assert not (await budget.reserve(2, T0 + 20_000)).ok
    await budget.ban(T0 + 30_000, T0 + 20_000)
    assert (await budget.reserve(0, T0 + 25_000)).banned


@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=1, max_value=50),
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3 * MINUTE_MS)), max_size=40),
)
async def test_local_budget_never_exceeds_limit_except_a_first_heavy_request(
    limit: int, calls: list[tuple[int, int]]
) -> None:
    budget = LocalWeightBudget(limit)
    used: dict[int, int] = {}
    granted: dict[int, int] = {}
    for weight, offset in sorted(calls, key=lambda c: c[1]):
        now = T0 + offset
        r = await budget.reserve(weight, now)
        minute = now // MINUTE_MS
        if r.ok:
            used[minute] = used.get(minute, 0) + weight
            granted[minute] = granted.get(minute, 0) + (weight > 0)
            assert r.used == used[minute]
        else:
            assert weight > 0 and used[minute] + weight > limit
            assert r.wait_ms == next_minute_wait(now)
        # over the limit only when a single weighted request took an empty minute
        assert used.get(minute, 0) <= limit or granted[minute] == 1
