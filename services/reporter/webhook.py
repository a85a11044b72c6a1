"""Optional webhook: POST a JSON summary with bounded, jittered retries, in the background.

Why it looks like this: a webhook is somebody else's server.  It may refuse, hang or
answer 500 for minutes; none of that may delay a report or an alert.  So every delivery
is a named, tracked task with an overall deadline; attempts are bounded; the backoff is
"full jitter" (uniform in [0, min(cap, base * 2**n)]) so many reporters never retry in
step.  4xx answers other than 408/429 are not retried: the receiver has said no.
The URL is never logged with its query string (tokens often live there).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    attempt_timeout: float = 5.0  # one request, connect included
    total_timeout: float = 30.0  # the whole delivery, retries included

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter backoff before retry number `attempt` (1-based)."""
        return rand() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a delivery ended: `ok`, the attempts made, the last status or error."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def redact_url(url: str) -> str:
    """scheme://host[:port]/path — no credentials, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    policy: RetryPolicy = RetryPolicy(),
) -> Delivery:
    """POST `payload` until a 2xx, a final refusal, or `policy.attempts` tries."""
    body = orjson.dumps(payload, default=str)
    headers = {"Content-Type": "application/json"}
    status: int | None = None
    error: str | None = None
    for attempt in range(1, policy.attempts + 1):
        try:
            timeout = aiohttp.ClientTimeout(total=policy.attempt_timeout)
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                status, error = resp.status, None
                if 200 <= resp.status < 300:
                    return Delivery(True, attempt, status)
                if resp.status not in RETRY_STATUSES:
                    return Delivery(False, attempt, status, f"refused with HTTP {status}")
                error = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"[:200]
        if attempt < policy.attempts:
            await asyncio.sleep(policy.delay(attempt))
    return Delivery(False, policy.attempts, status, error)


class WebhookSender:
    """Sends JSON payloads to one URL as tracked background tasks.

    `submit()` returns at once; the task has a total deadline and logs its outcome.
    `close()` cancels what is still running.  With no URL it is a no-op sender, so
    callers never branch on whether a webhook is configured.
    """

    def __init__(self, url: str, policy: RetryPolicy = RetryPolicy()) -> None:
        self.url = url
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Delivery]] = set()
        self._seq = 0
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def submit(
        self, payload: Mapping[str, Any], what: str = "event"
    ) -> asyncio.Task[Delivery] | None:
        if not self.url:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._seq += 1
        task = asyncio.create_task(
            self._deliver(dict(payload), what), name=f"webhook:{what}:{self._seq}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, payload: dict[str, Any], what: str) -> Delivery:
        assert self._session is not None
        try:
            async with asyncio.timeout(self.policy.total_timeout):
                result = await post_json(self._session, self.url, payload, self.policy)
        except TimeoutError:
            result = Delivery(False, 0, None, f"gave up after {self.policy.total_timeout}s")
        except Exception as exc:  # a webhook must never take the reporter down
            log.exception("webhook delivery crashed", extra={"what": what})
            result = Delivery(False, 0, None, type(exc).__name__)
        if result.ok:
            self.sent += 1
            log.info("webhook delivered", extra={"what": what, "attempts": result.attempts})
        else:
            self.failed += 1
            log.warning(
                "webhook failed",
                extra={"what": what, "url": redact_url(self.url), "error": result.error},
            )
        return result

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for deliveries in flight (used on shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> dict[str, int]:
        return {"sent_total": self.sent, "failed_total": self.failed, "in_flight": len(self._tasks)}
