"""AUTO sharding: a replica started with `SLT_SERVICE__INSTANCE_INDEX=-1` claims a free
shard index in Redis and holds it with a lease.

`docker compose up --scale kline_feed=3` starts three containers with the SAME
environment, so none of them can know its index from config.  Each one walks the indices
0..count-1 and takes the first whose key `Keys.shard_lease(service, i)` it can create
(`SET NX PX`), stores a random token in it, and renews the TTL with every heartbeat
(only while the key still holds its token: a Lua compare-and-expire).  A replica that
dies stops renewing; its index is free again after the TTL and its replacement claims
it.  A replica that finds its lease gone (paused longer than the TTL) stops, so two
replicas never keep one index; the supervisor restarts it and it claims again.  Even if
two instances feed the same symbols for a moment, the exactly-once script keeps the
stream right.

The claim happens before the service starts (`claim_sync`, plain redis client), because
the heartbeat key and the consumer name are derived from the index at start-up.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import redis

from shared.keys import Keys

__all__ = ["LeaseLost", "NoFreeShard", "ShardLease", "claim_sync", "new_token"]

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class NoFreeShard(Exception):
    """Every shard index is leased by a live replica (more replicas than instance_count)."""

    def __init__(self, service: str, count: int, waited_s: float) -> None:
        self.service, self.count, self.waited_s = service, count, waited_s
        super().__init__(
            f"no free shard of {service} among {count} after {waited_s:.0f}s: "
            "raise service.instance_count or run fewer replicas"
        )


class LeaseLost(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"shard lease {key} was lost")


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def claim_sync(
    url: str, keys: Keys, service: str, count: int, token: str, ttl_ms: int,
    *, wait_s: float = 0.0, poll_s: float = 0.5,
) -> int:  # fmt: skip
    """Claim the lowest free shard index (blocking; waits up to `wait_s` for a dead
    replica's lease to expire).  Raises NoFreeShard."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            for i in range(count):
                key = keys.shard_lease(service, i)
                if client.set(key, token, nx=True, px=ttl_ms) or client.get(key) == token.encode():
                    return i
            if time.monotonic() >= deadline:
                raise NoFreeShard(service, count, wait_s)
            time.sleep(poll_s)
    finally:
        client.close()


class ShardLease:
    """A held lease: `renew()` with every heartbeat, `release()` on a clean stop."""

    def __init__(self, redis_client: Any, key: str, token: str, ttl_ms: int) -> None:
        self.redis = redis_client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.renewals = 0

    @classmethod
    async def claim(
        cls, redis_client: Any, keys: Keys, service: str, count: int, token: str, ttl_ms: int
    ) -> tuple[int, ShardLease]:
        """Async claim (in-process use, tests); raises NoFreeShard without waiting."""
        for i in range(count):
            key = keys.shard_lease(service, i)
            if await redis_client.set(key, token, nx=True, px=ttl_ms):
                return i, cls(redis_client, key, token, ttl_ms)
        raise NoFreeShard(service, count, 0.0)

    async def renew(self) -> None:
        """Extend the TTL; raises LeaseLost when the key no longer holds our token."""
        ok = await self.redis.eval(RENEW_LUA, 1, self.key, self.token, self.ttl_ms)
        if not ok:
            # first renewal after a sync claim: take it back if it merely expired
            if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return
            raise LeaseLost(self.key)
        self.renewals += 1

    async def release(self) -> None:
        await self.redis.eval(RELEASE_LUA, 1, self.key, self.token)
