"""A toy Service for test_runtime (not a test module).

It consumes `<prefix>stream:toy` with a per-entry handler that records `toy:started`,
sleeps `slow` seconds (a field of the entry), then records `toy:done` — so a test can
SIGTERM it mid-handler and check the handler finished and acked.

`python -m tests.toy_service [--check] [--port N]`; `TOY_CONNECT_ATTEMPTS` bounds the
Redis connection attempts (the Redis-down test).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from shared.bus import Consumer
from shared.config import Settings
from shared.health import Status
from shared.runtime import Service, service_main


class ToyService(Service):
    name = "toy"
    counter_keys = frozenset({"handled"})

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.handled = 0
        self.widgets_total = 7
        self.health_value: bool | Status = True
        self.input: Consumer | None = None

    async def setup(self) -> None:
        self.input = self.consumer(self.keys.stream("toy"), block_ms=200)

    async def run(self) -> None:
        assert self.input is not None
        await self.input.run(self.handle, self.stop_event, per_entry=True)

    async def handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        await self.redis.set(f"{self.keys.prefix}toy:started", entry_id)
        await asyncio.sleep(float(fields.get(b"slow", b"0")))
        await self.redis.set(f"{self.keys.prefix}toy:done", entry_id)
        self.handled += 1
        self.mark_event(int(fields.get(b"t", b"0")))

    def stats(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "widgets_total": self.widgets_total,
            "ratio": 0.25,
            "mode": "sim",
            "feed": {"connected": True, "lag_ms": 12},
        }

    def healthy(self) -> bool | Status:
        return self.health_value

    def routes(self) -> list[web.AbstractRouteDef]:
        async def hello(_: web.Request) -> web.Response:
            return web.Response(text=f"hello from {self.name}")

        return [web.get("/hello", hello)]


if __name__ == "__main__":
    raise SystemExit(
        service_main(
            ToyService,
            name=ToyService.name,
            connect_attempts=int(os.environ.get("TOY_CONNECT_ATTEMPTS", "8")),
            connect_delay=0.05,
        )
    )
