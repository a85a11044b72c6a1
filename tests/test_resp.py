"""shared/resp.py: one-pass RESP packing gives redis-py's bytes, refuses what redis-py
refuses, and a client that uses it works against a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import DataError

from shared.resp import fast_packing, resp_command

ARG = st.one_of(
    st.text(max_size=20), st.binary(max_size=20), st.integers(-(10**15), 10**15),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip


def connections() -> tuple[Any, Any]:
    fast = fast_packing(aioredis.Redis()).connection_pool.connection_class()
    return fast, aioredis.Connection()


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["HSET", "XADD", "CONFIG GET", b"CLIENT LIST"]),
       args=st.lists(ARG, max_size=30))  # fmt: skip
def test_fast_packing_gives_redis_pys_bytes(name: str | bytes, args: list[Any]) -> None:
    fast, base = connections()
    assert b"".join(fast.pack_command(name, *args)) == b"".join(base.pack_command(name, *args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_fast_packing_refuses_what_redis_py_refuses(bad: Any) -> None:
    fast, base = connections()
    with pytest.raises(DataError):
        base.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", bad)


def test_resp_command_matches_redis_py() -> None:
    _, base = connections()
    args: list[Any] = ["EVALSHA", "ab" * 20, 2, "k1", b"\x00\xff", 500_000]
    assert resp_command(args) == b"".join(base.pack_command(*args))


async def test_a_fast_packing_client_round_trips(redis_url: str, prefix: str) -> None:
    client = fast_packing(aioredis.from_url(redis_url))
    try:
        key = f"{prefix}resp"
        mapping = {f"S{i}USDT": repr(100.0 + i / 7) for i in range(200)}
        assert await client.hset(key, mapping=mapping) == 200
        got = await client.hgetall(key)
        assert {k.decode(): v.decode() for k, v in got.items()} == mapping
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"{key}:f", 0.1).get(f"{key}:f").incrby(f"{key}:n", 7)
            assert await pipe.execute() == [True, b"0.1", 7]
    finally:
        await client.aclose()
