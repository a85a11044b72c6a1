"""The one retry helper: jittered exponential backoff driven by `errors.should_retry`.

Full jitter (a uniform draw in [0, base * 2**n], capped) spreads replicas that failed
together so they do not come back together.  A 429 carries `retry_after`: we never come
back sooner than that, and give up at once if it is longer than `max_delay` (the caller
has better things to do than sleep through a long ban).

Orders: `ExchangeUnavailable` on a new order means the outcome is unknown.  Query it by
its client order id before retrying, or retry only calls that are safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.binance.errors import should_retry as default_should_retry

__all__ = ["backoff_delay", "retry_async"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delay(attempt: int, base_delay: float, max_delay: float, draw: float) -> float:
    """Delay before retry number `attempt` (0-based) for a uniform `draw` in [0, 1)."""
    ceiling = min(max_delay, base_delay * (2 ** min(attempt, 32)))
    return max(0.0, min(1.0, draw)) * ceiling


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    attempts: int = 3,
    base_delay: float = 0.25,
    max_delay: float = 10.0,
    *,
    should_retry: Callable[[BaseException], bool] = default_should_retry,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call `fn()` up to `attempts` times; re-raise the last error when out of luck.

    `fn` is a zero-argument coroutine function (`lambda: client.ping()`), called afresh
    each attempt.  `on_retry(attempt, exc, delay)` is for counters and logs.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not should_retry(exc):
                raise
            delay = backoff_delay(attempt, base_delay, max_delay, rand())
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                if retry_after > max_delay:
                    raise
                delay = max(delay, float(retry_after))
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
            log.debug("retry %d/%d in %.3fs after %s", attempt + 1, attempts - 1, delay, exc)
            await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
