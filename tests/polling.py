"""`until()`: wait for a condition on a real system, bounded (not a test module)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], limit_s: float = 5.0, every: float = 0.01
) -> None:
    """Poll `predicate` (sync or async) until it is true; AssertionError after limit_s."""
    deadline = time.monotonic() + limit_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit_s}s")
        await asyncio.sleep(every)
