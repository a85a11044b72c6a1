"""The daily report end to end: gather from Redis, compute, render, publish — once per day.

`build_report` is what `slt report [--date D]` runs (on demand: files only, unless
`publish=True`); `report_day_once` is what the reporter runs when event time crosses
midnight: `SADD Keys.report_days <date>` decides which process (of any number of
replicas, restarts or repeated midnights in a replay) writes the report, so there is
exactly one per day.

Day baselines (`Keys.report_baselines`): at the first event of each day the reporter
stores the wallet balance and the cumulative feed counters.  A report of day D uses
baseline(D) as its opening equity and baseline(D+1) - baseline(D) as "feed health over
the day"; when one is missing it falls back to "now" (and, for the equity, to the
wallet now minus the PnL of every trade closed since D began).

Secrets: nothing here reads `Settings` secrets; only `reports_dir` and stream bounds
are taken from settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.reporter.health_view import feed_counters, feed_delta
from services.reporter.render import ReportFiles, write_report
from services.reporter.report import (
    DailyReport,
    FeedHealth,
    ReportInputs,
    compute_report,
    day_bounds,
    dec,
    next_day,
)
from services.reporter.sources import Reads, read_health
from shared.codec import encode_event
from shared.keys import Keys

log = logging.getLogger(__name__)

DEFAULT_REPORTS_MAXLEN = 1_000


@dataclass(frozen=True, slots=True)
class ReportResult:
    report: DailyReport
    files: ReportFiles | None
    entry_id: str | None

    def to_dict(self) -> dict[str, Any]:
        files = None
        if self.files is not None:
            files = {k: str(v) for k, v in asdict(self.files).items()}
        return {"date": self.report.date, "files": files, "stream_entry": self.entry_id,
                "summary": self.report.summary()}  # fmt: skip


def _feed_from(data: Any) -> FeedHealth | None:
    if not isinstance(data, dict):
        return None
    try:
        return FeedHealth(
            int(data.get("reconnects", 0)),
            {str(k): int(v) for k, v in dict(data.get("rest_fallbacks") or {}).items()},
            int(data.get("renewals_ok", 0)),
            int(data.get("renewals_failed", 0)),
            int(data.get("bad_messages", 0)),
        )
    except (TypeError, ValueError):
        return None


async def gather(redis: aioredis.Redis, keys: Keys, day: str, *, now_ms: int) -> ReportInputs:
    """Everything the report of `day` is computed from."""
    start, _end = day_bounds(day)
    reads = Reads(redis, keys)
    since_start = await reads.trades(start)
    base, base_next = await reads.baseline(day), await reads.baseline(next_day(day))
    start_equity: Decimal | None = None
    if base and base.get("equity") not in (None, ""):
        start_equity = dec(base["equity"])
    else:
        wallet = await reads.wallet()
        if wallet is not None:
            start_equity = wallet - sum((t.net_pnl for t in since_start), Decimal(0))
    end_feed = _feed_from(base_next.get("feed")) if base_next else None
    if end_feed is None:
        end_feed = feed_counters(await read_health(redis, keys))
    feed = feed_delta(end_feed, _feed_from(base.get("feed")) if base else None)
    return ReportInputs(
        date=day,
        generated_at=now_ms,
        trades=since_start,
        positions=await reads.positions(),
        start_equity=start_equity,
        model=await reads.model(),
        feed=feed,
        alerts=await reads.alerts(start),
    )


async def record_baseline(
    redis: aioredis.Redis, keys: Keys, day: str, *, event_time: int, wall_ms: int
) -> bool:
    """Store day's opening equity and feed counters, unless already stored (HSETNX)."""
    reads = Reads(redis, keys)
    wallet = await reads.wallet()
    feed = feed_counters(await read_health(redis, keys))
    doc = {"equity": None if wallet is None else str(wallet), "feed": asdict(feed),
           "event_time": event_time, "taken_at": wall_ms}  # fmt: skip
    return bool(await redis.hsetnx(keys.report_baselines, day, orjson.dumps(doc)))


async def build_report(
    redis: aioredis.Redis,
    keys: Keys,
    day: str,
    *,
    settings: Any = None,
    reports_dir: str | None = None,
    publish: bool = False,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Compute the report of `day`; write its files when a directory is known
    (`reports_dir` or `settings.service.reports_dir`); publish it when asked.
    Returns `ReportResult.to_dict()` (date, files, stream entry id, summary)."""
    return (await produce_report(redis, keys, day, settings=settings, reports_dir=reports_dir,
                                 publish=publish, now_ms=now_ms)).to_dict()  # fmt: skip


async def produce_report(
    redis: aioredis.Redis,
    keys: Keys,
    day: str,
    *,
    settings: Any = None,
    reports_dir: str | None = None,
    publish: bool = True,
    now_ms: int | None = None,
) -> ReportResult:
    if now_ms is None:  # the shell's clock: only the generation stamp, never the numbers
        now_ms = int(time.time() * 1000)
    report = compute_report(await gather(redis, keys, day, now_ms=now_ms))
    directory = reports_dir or (settings.service.reports_dir if settings is not None else None)
    files = await asyncio.to_thread(write_report, report, directory) if directory else None
    entry_id = None
    if publish:
        maxlen = DEFAULT_REPORTS_MAXLEN
        if settings is not None:
            maxlen = settings.redis.stream_maxlen.get("reports", maxlen)
        data = {"summary": report.summary(), "report": report.to_dict(),
                "files": None if files is None else {"markdown": str(files.markdown),
                                                     "html": str(files.html), "png": str(files.png)}}  # fmt: skip
        fields = encode_event("daily_report", data, event_time=day_bounds(day)[1] - 1)
        raw_id = await redis.xadd(keys.stream_reports, fields, maxlen=maxlen, approximate=True)
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    return ReportResult(report, files, entry_id)


async def report_day_once(
    redis: aioredis.Redis,
    keys: Keys,
    day: str,
    *,
    settings: Any = None,
    reports_dir: str | None = None,
    now_ms: int | None = None,
) -> ReportResult | None:
    """The daily report of `day` if no process has made it yet, else None.  If making it
    fails, the day is released so the next attempt (or `slt report`) can retry."""
    if not await redis.sadd(keys.report_days, day):
        return None
    try:
        result = await produce_report(
            redis, keys, day, settings=settings, reports_dir=reports_dir, now_ms=now_ms
        )
    except BaseException:
        await redis.srem(keys.report_days, day)
        raise
    log.info("daily report written", extra={"date": day, "summary": result.report.summary()})
    return result


async def last_reported(redis: aioredis.Redis, keys: Keys) -> str | None:
    days = [
        d.decode() if isinstance(d, bytes) else d for d in await redis.smembers(keys.report_days)
    ]
    return max(days) if days else None
