"""Sending one order safely: the rules for "did it arrive?" in one place.

`place`: send; a refusal (`OrderRejected`, -2019, ...) is raised as is.  A transient
answer (5xx, timeout, busy, 429, open breaker) leaves the outcome UNKNOWN (Binance: "could
have been a success"), so unless nothing can have been sent (breaker open, rate limited)
the order is LOOKED UP by its client id first and sent again only when the exchange does
not know it - with jittered exponential backoff, until the attempts or the deadline run
out (`Unresolved`).  `lookup`: the order as the exchange has it, None for -2013.
`retry`: for calls that are safe to repeat (leverage, cancel).  Every attempt (request,
result or error, latency) goes to `Keys.stream_orders`, best effort: a Redis outage is
counted and never stops an order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from shared.binance.errors import (
    BinanceCode,
    CircuitOpenError,
    ExchangeError,
    RateLimited,
    should_retry,
)
from shared.codec import encode_event
from shared.keys import Keys
from shared.models import OrderIntent

log = logging.getLogger(__name__)


class Unresolved(Exception):
    """The outcome of a request could not be established before the deadline."""

    def __init__(self, what: str, last: BaseException | None) -> None:
        self.what, self.last = what, last
        super().__init__(f"{what}: outcome unknown ({last})")


def transient(exc: BaseException) -> bool:
    return should_retry(exc) or isinstance(exc, CircuitOpenError)


def error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return None if code is None else int(code)


def _plain(params: dict[str, Any]) -> dict[str, str]:
    return {k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in params.items() if v is not None}  # fmt: skip


class OrderSender:
    def __init__(
        self, redis: Any, keys: Keys, *, orders_maxlen: int = 100_000, attempts: int = 4,
        base_delay: float = 0.05, max_delay: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self.redis, self.keys, self.maxlen = redis, keys, orders_maxlen
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self._sleep = sleep
        self.counters = dict.fromkeys(("orders_sent", "lookups", "resends", "log_errors"), 0)
        self.rejects: dict[str, int] = {}  # exchange refusals by code

    async def place(
        self, intent: OrderIntent, api: str, params: dict[str, Any],
        send: Callable[[], Awaitable[Any]], lookup: Callable[[], Awaitable[Any]],
        deadline: float, attempts: int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Send; after a transient failure look the order up by client id and send again
        only if the exchange never saw it.  ExchangeError: refused; Unresolved: timed out."""
        last: BaseException | None = None
        for attempt in range(attempts or self.attempts):
            if attempt:
                self.counters["resends"] += 1
            t0 = time.perf_counter()
            self.counters["orders_sent"] += 1
            try:
                res = await send()
            except ExchangeError as exc:
                await self.log(intent, api, params, "error", error=str(exc), code=error_code(exc),
                                t0=t0, attempt=attempt)  # fmt: skip
                if not transient(exc):
                    self.reject(exc)
                    raise
                last = exc
            else:
                await self.log(intent, api, params, "accepted", res, t0=t0, attempt=attempt)
                return res  # type: ignore[no-any-return]
            if not isinstance(last, CircuitOpenError | RateLimited):  # it may have arrived
                found = await self.lookup(intent, lookup, deadline)
                if found is not None:
                    return found
            if not await self.backoff(attempt, last, deadline):
                break
        raise Unresolved(f"{api} {intent.client_order_id}", last)

    async def lookup(
        self, intent: OrderIntent, lookup: Callable[[], Awaitable[Any]], deadline: float
    ) -> dict[str, Any] | None:
        """The order as the exchange has it; None when it does not know the id."""
        attempt, last = 0, None
        while True:
            self.counters["lookups"] += 1
            t0 = time.perf_counter()
            try:
                res = await lookup()
            except ExchangeError as exc:
                if exc.code == BinanceCode.NO_SUCH_ORDER:
                    await self.log(intent, "lookup", {}, "not_found", t0=t0)
                    return None
                if not transient(exc):
                    raise Unresolved(f"lookup {intent.client_order_id}", exc) from None
                last = exc
            else:
                await self.log(intent, "lookup", {}, "found", res, t0=t0)
                return res  # type: ignore[no-any-return]
            if not await self.backoff(attempt, last, deadline):
                raise Unresolved(f"lookup {intent.client_order_id}", last)
            attempt += 1

    async def retry(self, call: Callable[[], Awaitable[Any]], deadline: float) -> Any:
        """For calls that are safe to repeat (leverage, cancel)."""
        attempt = 0
        while True:
            try:
                return await call()
            except ExchangeError as exc:
                if not transient(exc) or not await self.backoff(attempt, exc, deadline):
                    raise
            attempt += 1

    async def backoff(self, attempt: int, exc: BaseException | None, deadline: float) -> bool:
        """Sleep before the next try; False when the deadline leaves no room."""
        delay = min(self.max_delay, self.base_delay * 2**attempt) * (0.5 + random.random() / 2)
        wait = getattr(exc, "retry_after", None)
        if wait is not None:
            delay = max(delay, float(wait))
        if time.monotonic() + delay > deadline:
            return False
        await self._sleep(delay)
        return True

    def reject(self, exc: ExchangeError) -> None:
        key = str(error_code(exc) or exc.status)
        self.rejects[key] = self.rejects.get(key, 0) + 1

    async def log(
        self, intent: OrderIntent, api: str, params: dict[str, Any], outcome: str,
        result: Any = None, *, error: str = "", code: int | None = None, t0: float | None = None,
        attempt: int = 0,
    ) -> None:  # fmt: skip
        data = {
            "client_order_id": intent.client_order_id, "api": api, "purpose": intent.purpose,
            "reason": intent.reason, "request": _plain(params), "outcome": outcome,
            "result": result if isinstance(result, dict) else {}, "error": error, "code": code,
            "attempt": attempt, "source": "trader",
            "latency_ms": None if t0 is None else round((time.perf_counter() - t0) * 1000, 3),
        }  # fmt: skip
        now = int(time.time() * 1000)
        try:
            fields = encode_event("order", data, symbol=intent.symbol, event_time=now)
            await self.redis.xadd(self.keys.stream_orders, fields, maxlen=self.maxlen,
                                  approximate=True)  # fmt: skip
        except (RedisError, OSError, TypeError, ValueError) as exc:
            self.counters["log_errors"] += 1
            log.warning("order log not written: %r", exc)

    def stats(self) -> dict[str, Any]:
        return {**{f"{k}_total": v for k, v in self.counters.items()},
                "order_rejects": {f"{k}_total": v for k, v in self.rejects.items()}}  # fmt: skip
