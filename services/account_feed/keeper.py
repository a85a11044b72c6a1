"""The async shell around `ListenKeyLifecycle`: POST, PUT and DELETE as it decides.

WHY separate from the socket loop: the keepalive schedule runs for the life of the
service, across reconnects; the socket loop only needs two signals from it —
`key_lost` (the current key is gone: close the socket, get a new key, reconcile) and a
fresh key from `obtain()`.  All timing lives in the pure lifecycle; this class only
talks to the exchange and to the clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from services.account_feed.listen_key import Action, ListenKeyLifecycle
from shared.binance.client import BinanceClient
from shared.binance.errors import AuthError, ExchangeError, InvalidListenKey

__all__ = ["TRANSIENT", "KeyKeeper", "backoff"]

log = logging.getLogger(__name__)

TRANSIENT = (ExchangeError, aiohttp.ClientError, TimeoutError, OSError)


def backoff(attempt: int, base: float, cap: float, draw: float) -> float:
    """Seconds before retry `attempt` (1 = first): base doubled, capped, +0..25 % jitter."""
    return min(cap, base * 2 ** min(max(attempt - 1, 0), 30)) * (1 + 0.25 * draw)


class KeyKeeper:
    """Keeps one listenKey alive.  `sleep(s)` is the service's stop-aware sleep (False
    when stopping); `rand()` draws the jitter."""

    def __init__(
        self,
        client: BinanceClient,
        lifecycle: ListenKeyLifecycle,
        stop: asyncio.Event,
        sleep: Callable[[float], Awaitable[bool]],
        rand: Callable[[], float],
    ) -> None:
        self.client = client
        self.lifecycle = lifecycle
        self.stop = stop
        self.sleep = sleep
        self.rand = rand
        self.key_lost = asyncio.Event()  # the current key is gone: start over
        self.key_changed = asyncio.Event()  # a key was created: reschedule
        self.create_failures = 0

    async def obtain(self) -> str | None:
        """POST until a key is had (backoff); None when stopping.  Raises AuthError:
        a bad API key is not fixed by retrying."""
        attempt = 0
        while not self.stop.is_set():
            try:
                data = await self.client.create_listen_key()
                key = data.get("listenKey") if isinstance(data, dict) else None
                if not isinstance(key, str) or not key:
                    raise ExchangeError(200, None, "listenKey answer without a key")
            except AuthError:
                raise
            except TRANSIENT as exc:
                attempt += 1
                self.create_failures += 1
                delay = backoff(attempt, 0.5, 30.0, self.rand())
                log.warning("listenKey create failed: %s; retry in %.1fs", exc, delay)
                if not await self.sleep(delay):
                    return None
                continue
            self.lifecycle.on_created(key, time.monotonic())
            self.key_lost.clear()
            self.key_changed.set()
            return key
        return None

    def expired(self, key: str) -> bool:
        """A `listenKeyExpired` for `key` ("" = the current one); True if it was ours."""
        if key and key != self.lifecycle.key:
            return False
        log.warning("listenKeyExpired: creating a new key")
        self.lifecycle.on_invalid(None, "listenKeyExpired")
        self.key_lost.set()
        return True

    def refused(self, key: str) -> None:
        """The socket refused the key (HTTP 400, -1125): it died before we connected."""
        self.lifecycle.on_invalid(key, "socket refused the listenKey")

    async def run(self) -> None:
        """Keepalive loop: wait for what `lifecycle.next()` says, PUT when due."""
        lc = self.lifecycle
        while not self.stop.is_set():
            self.key_changed.clear()
            now = time.monotonic()
            decision = lc.next(now)
            if decision.action is Action.KEEPALIVE and lc.key is not None:
                await self.keepalive(lc.key)
                continue
            timeout = None if decision.action is Action.RENEW else decision.at - now
            waits = [asyncio.ensure_future(self.key_changed.wait()),
                     asyncio.ensure_future(self.stop.wait())]  # fmt: skip
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def keepalive(self, key: str) -> None:
        """One PUT of `key`; the outcome goes to the lifecycle."""
        lc = self.lifecycle
        if not lc.on_attempt(key):
            return
        try:
            await self.client.keepalive_listen_key(key)
        except InvalidListenKey:
            lc.on_keepalive_rejected(key)
            log.warning("keepalive: -1125, the listenKey is gone; creating a new one")
        except TRANSIENT as exc:
            if lc.on_keepalive_failed(key, time.monotonic(), self.rand()):
                log.warning("keepalive failed (%s); retry in %.2fs", exc,
                            (lc.next_at or 0) - time.monotonic())  # fmt: skip
            else:
                log.error("keepalive kept failing; giving the listenKey up: %s", exc)
        else:
            lc.on_keepalive_ok(key, time.monotonic())
        if lc.key == key and not lc.valid:
            self.key_lost.set()

    async def close(self, timeout: float = 3.0) -> None:
        """DELETE the key on shutdown (the exchange ends the stream); never raises."""
        key = self.lifecycle.key
        if key:
            try:
                async with asyncio.timeout(timeout):
                    await self.client.close_listen_key(key)
                log.info("listenKey closed")
            except InvalidListenKey:
                pass  # already expired or closed
            except TRANSIENT as exc:
                log.warning("could not close the listenKey: %s", exc)
        self.lifecycle.on_closed()
