"""The reporter service: daily reports by event time, system health and alerts, dashboard.

Three loops, each a tracked task of the runtime:
- days: polls the newest event time on the klines, trades and account streams (the
  "watermark"); at each new UTC day it stores the day's baseline and, once the previous
  day is complete (`DayBoundary`), writes its report exactly once (`report_day_once`)
  and hands the summary to the webhook in the background;
- health: aggregates every heartbeat into the system view and keeps one alert per
  service that is down (raised once, resolved on recovery), after a start-up grace so
  services still starting are not reported;
- dashboard: rebuilds the dashboard snapshot about once a second for the SSE clients.

A Redis error in a loop is logged and counted and the loop carries on; the service then
reports itself `degraded` until a loop iteration succeeds again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.reporter.alerts import Alert, Alerter
from services.reporter.daily import last_reported, record_baseline, report_day_once
from services.reporter.dashboard import Dashboard, SnapshotBuilder, SnapshotHub, check_exposure
from services.reporter.health_view import CORE_SERVICES, SystemView, aggregate
from services.reporter.report import DayBoundary, utc_day
from services.reporter.sources import read_health
from services.reporter.webhook import WebhookSender
from shared.config import Settings
from shared.runtime import Service

log = logging.getLogger(__name__)

DOWN_FAMILY = "service_down:"


class ReporterService(Service):
    name = "reporter"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        poll_interval: float = 0.5,
        refresh_interval: float = 1.0,
        health_interval: float | None = None,
        startup_grace: float | None = None,
        day_grace_ms: int = 60_000,
        expected: tuple[str, ...] = CORE_SERVICES,
    ) -> None:
        super().__init__(settings)
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.health_interval = health_interval
        self.startup_grace = startup_grace
        self.day_grace_ms = day_grace_ms
        self.expected = expected
        self.hub = SnapshotHub()
        self.dashboard: Dashboard | None = None
        self.webhook: WebhookSender | None = None
        self.alerter: Alerter | None = None
        self.builder: SnapshotBuilder | None = None
        self.boundary = DayBoundary(grace_ms=day_grace_ms)
        self.view: SystemView | None = None
        self.known: set[str] = set()
        self.watermark: int | None = None
        self._baseline_day: str | None = None
        self._started_wall = time.time()
        self.reports = 0
        self.last_report: str | None = None
        self.errors = 0
        self._failing: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------
    def routes(self) -> list[web.AbstractRouteDef]:
        token = check_exposure(self.settings)  # ConfigError: never serve exposed unguarded
        self.dashboard = Dashboard(self.hub, self.status_dict, token=token)
        return self.dashboard.routes()

    async def setup(self) -> None:
        svc = self.settings.service
        self.webhook = WebhookSender(svc.webhook_url)
        maxlen = self.settings.redis.stream_maxlen.get("alerts", 10_000)
        self.alerter = Alerter(self.redis, self.keys, maxlen=maxlen, webhook=self.webhook)
        self.builder = SnapshotBuilder(self.redis, self.keys)
        self.boundary = DayBoundary(
            await last_reported(self.redis, self.keys), grace_ms=self.day_grace_ms
        )
        self._started_wall = time.time()

    async def run(self) -> None:
        self.spawn(self._loop("days", self.poll_interval, self.poll_days), "days", critical=True)
        every = self.health_interval or self.settings.service.heartbeat_interval
        self.spawn(self._loop("health", every, self.check_health), "health", critical=True)
        self.spawn(
            self._loop("dashboard", self.refresh_interval, self.refresh_dashboard),
            "dashboard",
            critical=True,
        )
        await self.stop_event.wait()
        self.hub.close()  # lets SSE handlers finish before the HTTP server closes

    async def teardown(self) -> None:
        self.hub.close()
        if self.webhook is not None:
            await self.webhook.drain(2.0)
            await self.webhook.close()

    async def _loop(self, what: str, every: float, step: Callable[[], Awaitable[None]]) -> None:
        while not self.stopping:
            try:
                await step()
                self._failing.discard(what)
            except (RedisError, OSError) as exc:
                self.errors += 1
                self._failing.add(what)
                log.warning("reporter %s loop: redis error, will retry: %r", what, exc)
            await self.sleep(every)

    # ---- days and reports ------------------------------------------------------------
    async def _read_watermark(self) -> int | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in (
                self.keys.stream_klines,
                self.keys.stream_trades,
                self.keys.stream_account,
            ):
                pipe.xrevrange(stream, count=1)
            tails = await pipe.execute()
        best = None
        for entries in tails:
            for _id, fields in entries:
                raw = fields.get(b"event_time", b"")
                if raw.isdigit():
                    best = max(best or 0, int(raw))
        return best

    async def poll_days(self) -> None:
        t = await self._read_watermark()
        if t is None:
            return
        if self.watermark is None or t > self.watermark:
            self.watermark = t
            self.mark_event(t)
        day = utc_day(t)
        if self._baseline_day is not None and day > self._baseline_day:
            await record_baseline(self.redis, self.keys, day, event_time=t, wall_ms=_wall_ms())
        if self._baseline_day is None or day > self._baseline_day:
            self._baseline_day = day
        for done in self.boundary.observe(t):
            await self.report_day(done)

    async def report_day(self, day: str) -> None:
        result = await report_day_once(
            self.redis, self.keys, day, settings=self.settings, now_ms=_wall_ms()
        )
        if result is None:
            return
        self.reports += 1
        self.last_report = day
        if self.webhook is not None:
            payload = {"kind": "daily_report", **result.to_dict()}
            self.webhook.submit(payload, what=f"report:{day}")

    # ---- health and alerts -----------------------------------------------------------
    async def system_view(self) -> SystemView:
        health = await read_health(self.redis, self.keys)
        halted = bool(await self.redis.exists(self.keys.halt))
        self.known |= set(health)
        expected = (*self.expected, *sorted(n for n in self.known if ":" in n))
        ttl = self.settings.service.heartbeat_ttl
        return aggregate(health, now_ms=_wall_ms(), ttl_s=ttl, expected=expected, halted=halted)

    async def status_dict(self) -> dict[str, Any]:
        return (await self.system_view()).to_dict()

    async def check_health(self) -> None:
        self.view = await self.system_view()
        grace = self.startup_grace
        if grace is None:
            grace = self.settings.service.heartbeat_ttl
        if time.time() - self._started_wall < grace or self.alerter is None:
            return
        down = {
            f"{DOWN_FAMILY}{s.name}": Alert(
                f"{DOWN_FAMILY}{s.name}",
                f"{s.name} is down: {s.reason}",
                details={"service": s.name, "reason": s.reason, "heartbeat_age_s": s.age_s},
            )
            for s in self.view.services
            if s.alerting and s.name != self.name  # this process is alive: it is running this
        }
        await self.alerter.sync(DOWN_FAMILY, down, _wall_ms(), self.watermark)

    # ---- dashboard -------------------------------------------------------------------
    async def refresh_dashboard(self) -> None:
        if self.builder is None:
            return
        view = self.view or await self.system_view()
        now = _wall_ms()
        day = utc_day(self.watermark if self.watermark is not None else now)
        self.hub.publish(await self.builder.build(view.to_dict(), day, now))

    # ---- health of the reporter itself -------------------------------------------------
    def healthy(self) -> bool | str:
        return "degraded" if self._failing else True

    def stats(self) -> dict[str, Any]:
        view = self.view
        return {
            "reports_total": self.reports,
            "last_report": self.last_report or "",
            "watermark": self.watermark,
            "watermark_day": utc_day(self.watermark) if self.watermark else "",
            "loop_errors_total": self.errors,
            "services_down": sum(s.status == "down" for s in view.services) if view else None,
            "alerts": self.alerter.stats() if self.alerter else {},
            "webhook": self.webhook.stats() if self.webhook else {},
            "dashboard": self.dashboard.stats() if self.dashboard else {},
        }


def _wall_ms() -> int:
    """Wall clock for heartbeat ages and generation stamps (the shell's only clock)."""
    return int(time.time() * 1000)
