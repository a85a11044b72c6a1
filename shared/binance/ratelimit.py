"""One request-weight budget and one ban switch per API key + IP, shared by every process.

Binance counts REQUEST_WEIGHT per IP per wall-clock minute and answers 429 (then 418, an
IP ban) when it is exceeded.  Every service and replica behind one IP therefore draws from
ONE budget held in Redis:

    Keys.rest_weight(account, minute)   INCRBY'd by each request before it is sent (Lua,
                                        atomic check-and-reserve), raised to the exchange's
                                        X-MBX-USED-WEIGHT-1m answer afterwards, TTL 2 min
    Keys.rest_banned_until(account)     epoch ms of a 429/418 Retry-After; nobody sends
                                        before it. Only ever moved later, TTL = the ban

`account` is `signing.account_id(api_key)`, a short hash, never the key.  Times are epoch
milliseconds passed in by the caller (server-corrected), so this module reads no clock.
When Redis is down the budget falls back to a local one rather than stopping trading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from shared.keys import Keys

__all__ = ["LocalWeightBudget", "Reservation", "SharedWeightBudget", "WeightBudget"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
WEIGHT_TTL_MS = 2 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Reservation:
    """Answer to "may I send a request of this weight now?"."""

    ok: bool
    used: int  # weight used in this minute (after reserving, when ok)
    wait_ms: int = 0  # when refused: how long to wait before asking again
    banned: bool = False  # refused because of a 429/418 ban (not the weight budget)


def next_minute_wait(now_ms: int) -> int:
    """Milliseconds until the next wall-clock minute, when Binance resets the weight."""
    return MINUTE_MS - now_ms % MINUTE_MS


class WeightBudget(Protocol):
    limit: int

    async def reserve(
        self, weight: int, now_ms: int, wall_ms: int | None = None
    ) -> Reservation: ...
    async def reconcile(self, used: int, now_ms: int) -> int: ...
    async def ban(self, until_ms: int, now_ms: int) -> int: ...
    async def banned_until(self) -> int: ...


class LocalWeightBudget:
    """The same budget for one process (tools, tests, Redis outage)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("weight limit must be >= 1")
        self.limit = limit
        self._minute = -1
        self._used = 0
        self._banned_until = 0

    def _roll(self, now_ms: int) -> None:
        minute = now_ms // MINUTE_MS
        if minute != self._minute:
            self._minute, self._used = minute, 0

    async def reserve(self, weight: int, now_ms: int, wall_ms: int | None = None) -> Reservation:
        wall = now_ms if wall_ms is None else wall_ms
        if self._banned_until > wall:
            return Reservation(False, self._used, self._banned_until - wall, banned=True)
        self._roll(now_ms)
        if weight > 0 and self._used > 0 and self._used + weight > self.limit:
            return Reservation(False, self._used, next_minute_wait(now_ms))
        self._used += weight
        return Reservation(True, self._used)

    async def reconcile(self, used: int, now_ms: int) -> int:
        self._roll(now_ms)
        self._used = max(self._used, used)
        return self._used

    async def ban(self, until_ms: int, now_ms: int) -> int:
        self._banned_until = max(self._banned_until, until_ms)
        return self._banned_until

    async def banned_until(self) -> int:
        return self._banned_until


# KEYS[1] weight key of this minute, KEYS[2] ban key
# ARGV[1] weight, ARGV[2] limit, ARGV[3] now ms (exchange clock), ARGV[4] weight key ttl ms,
# ARGV[5] now ms on the wall clock (bans are kept in wall-clock ms: every process agrees
# on it, while each one's estimate of the exchange clock differs)
# -> {0, used} reserved | {1, used} budget full | {2, banned_until} banned
_RESERVE = """
local banned = tonumber(redis.call('GET', KEYS[2]) or '0')
if banned > tonumber(ARGV[5]) then return {2, banned} end
local w = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if w > 0 and used > 0 and used + w > tonumber(ARGV[2]) then return {1, used} end
if w > 0 then
  used = redis.call('INCRBY', KEYS[1], w)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {0, used}
"""

# KEYS[1] a key holding an integer; ARGV[1] value, ARGV[2] ttl ms. Only ever raises it.
_RAISE_TO = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local v = tonumber(ARGV[1])
if v > cur then
  redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
  return v
end
return cur
"""


class SharedWeightBudget:
    """The Redis-held budget of one API key + IP (see module docstring)."""

    def __init__(self, redis: Any, keys: Keys, account_id: str, limit: int) -> None:
        if limit < 1:
            raise ValueError("weight limit must be >= 1")
        self.redis = redis
        self.keys = keys
        self.account_id = account_id
        self.limit = limit
        self.redis_errors = 0
        self._local = LocalWeightBudget(limit)
        self._reserve = redis.register_script(_RESERVE)
        self._raise_to = redis.register_script(_RAISE_TO)

    def weight_key(self, now_ms: int) -> str:
        return self.keys.rest_weight(self.account_id, now_ms // MINUTE_MS)

    @property
    def ban_key(self) -> str:
        return self.keys.rest_banned_until(self.account_id)

    def _degraded(self, exc: Exception) -> None:
        self.redis_errors += 1
        if self.redis_errors == 1 or self.redis_errors % 100 == 0:
            log.warning(
                "weight budget: Redis unavailable (%s, %d times); using the local budget",
                type(exc).__name__,
                self.redis_errors,
            )

    async def reserve(self, weight: int, now_ms: int, wall_ms: int | None = None) -> Reservation:
        """Atomically reserve `weight` in this minute, unless banned or over the limit.
        `now_ms` (exchange clock) picks the weight minute; bans compare with `wall_ms`."""
        wall = now_ms if wall_ms is None else wall_ms
        local_ban = await self._local.banned_until()
        if local_ban > wall:  # known without asking Redis (also covers a Redis outage)
            return Reservation(False, 0, local_ban - wall, banned=True)
        try:
            keys = [self.weight_key(now_ms), self.ban_key]
            status, value = await self._reserve(
                keys=keys, args=[weight, self.limit, now_ms, WEIGHT_TTL_MS, wall]
            )
        except (RedisError, OSError) as exc:
            self._degraded(exc)
            return await self._local.reserve(weight, now_ms, wall_ms)
        status, value = int(status), int(value)
        if status == 2:
            await self._local.ban(value, wall)
            return Reservation(False, 0, value - wall, banned=True)
        if status == 1:
            return Reservation(False, value, next_minute_wait(now_ms))
        await self._local.reconcile(value, now_ms)
        return Reservation(True, value)

    async def reconcile(self, used: int, now_ms: int) -> int:
        """Raise this minute's count to what the exchange reported (never lower it:
        other processes' requests may still be in flight)."""
        local = await self._local.reconcile(used, now_ms)
        try:
            keys = [self.weight_key(now_ms)]
            return int(await self._raise_to(keys=keys, args=[used, WEIGHT_TTL_MS]))
        except (RedisError, OSError) as exc:
            self._degraded(exc)
            return local

    async def ban(self, until_ms: int, now_ms: int) -> int:
        """Stop every process until `until_ms` (kept if a later ban is already set)."""
        local = await self._local.ban(until_ms, now_ms)
        ttl = max(until_ms - now_ms, 1)
        try:
            return int(await self._raise_to(keys=[self.ban_key], args=[until_ms, ttl]))
        except (RedisError, OSError) as exc:
            self._degraded(exc)
            return local

    async def banned_until(self) -> int:
        try:
            raw = await self.redis.get(self.ban_key)
        except (RedisError, OSError) as exc:
            self._degraded(exc)
            return await self._local.banned_until()
        return max(int(raw or 0), await self._local.banned_until())

    def __repr__(self) -> str:
        return f"SharedWeightBudget(account={self.account_id}, limit={self.limit})"
