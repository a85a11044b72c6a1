"""The whole system's health, aggregated from every `health:*` heartbeat hash (pure).

The inputs are the hashes as `shared.ops.read_health` returns them (name after the
`health:` prefix -> plain-string fields, layout in shared/health.py) and the time; the
output is a `SystemView` that `/api/status`, the dashboard, the alerting loop and
`slt status` (via `render_status_table`) all show, so they never disagree.

A service is `down` when its hash is missing (the TTL expired: the process is gone),
its `heartbeat` is older than the TTL (a hung process still holding its key), or it
reports `status=down` itself.  Expected services that never wrote a heartbeat are
listed as down too, so a service that never started is not invisible.

Stat names read from the feeds (flattened, dotted; `_total` suffixes are ignored):
- kline_feed:   `connected`, `symbols`, `last_update_ms` (ms; `last_update` is ISO), `connections.<id>.<field>`
- account_feed: `connected`, `listen_key_valid`, `last_renewal`, `next_renewal` (ms)
- any service:  `...reconnects`, `...activations.<reason>` (REST fallback by reason),
  `...renewals_ok` / `...renewals_failed` (listenKey keepalive), `...bad_messages`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from services.reporter.report import FeedHealth

CORE_SERVICES = (
    "kline_feed",
    "account_feed",
    "rest_fallback",
    "trader",
    "position_controller",
    "reporter",
)
FIXED_FIELDS = frozenset(
    {"service", "instance", "status", "phase", "heartbeat", "started_at", "uptime_s",
     "last_event_time", "pid", "host", "port"}
)  # fmt: skip
QUIET_PHASES = frozenset({"starting", "stopping"})


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    name: str  # `service` or `service:instance`
    service: str
    status: str  # ok | degraded | down
    reason: str  # why it is not ok ("" when ok)
    age_s: float | None  # heartbeat age; None when there is no heartbeat
    phase: str = ""
    uptime_s: float | None = None
    last_event_time: int | None = None
    stats: dict[str, str] = field(default_factory=dict)
    stale: bool = False  # heartbeat missing or older than the TTL

    @property
    def alerting(self) -> bool:
        """Down for a reason worth waking someone: gone, hung, or unhealthy while
        running (a live service briefly `down` while starting or stopping is not)."""
        return self.status == "down" and (self.stale or self.phase not in QUIET_PHASES)


@dataclass(frozen=True, slots=True)
class SystemView:
    now_ms: int
    overall: str
    services: tuple[ServiceHealth, ...]
    feeds: dict[str, dict[str, Any]]  # the seed's get_stats() block, for the whole system
    connections: tuple[dict[str, str], ...]
    halted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def service(self, name: str) -> ServiceHealth | None:
        return next((s for s in self.services if s.name == name), None)


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _bool(text: str | None) -> bool | None:
    return None if text in (None, "") else text.lower() in ("true", "1")


def iso(ms: float | None) -> str | None:
    if ms is None or ms <= 0:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def service_health(
    name: str, h: Mapping[str, str] | None, now_ms: int, ttl_s: float
) -> ServiceHealth:
    service = (h or {}).get("service") or name.split(":", 1)[0]
    if not h:
        return ServiceHealth(name, service, "down", "no heartbeat", None, stale=True)
    beat = _num(h.get("heartbeat"))
    age = (now_ms - beat) / 1000 if beat is not None else None
    status = h.get("status") or "down"
    phase = h.get("phase", "")
    reason = ""
    if age is None or age > ttl_s:
        status, reason = "down", "no heartbeat" if age is None else f"heartbeat {age:.0f}s old"
    elif status == "down":
        reason = f"reports down (phase {phase or '?'})"
    elif status not in ("ok", "degraded"):
        status, reason = "down", f"unknown status {h.get('status')!r}"
    elif status == "degraded":
        reason = "degraded"
    last = _num(h.get("last_event_time"))
    return ServiceHealth(
        name=name,
        service=service,
        status=status,
        reason=reason,
        age_s=round(age, 3) if age is not None else None,
        phase=phase,
        uptime_s=_num(h.get("uptime_s")),
        last_event_time=int(last) if last is not None else None,
        stats={k: v for k, v in h.items() if k not in FIXED_FIELDS},
        stale=age is None or age > ttl_s,
    )


def _first(hashes: Iterable[ServiceHealth], key: str) -> str | None:
    for s in hashes:
        if s.stats.get(key) not in (None, ""):
            return s.stats[key]
    return None


def seed_feed_block(services: Iterable[ServiceHealth]) -> dict[str, dict[str, Any]]:
    """The seed's `websocket_manager.get_stats()` shape, across every feed instance."""
    by: dict[str, list[ServiceHealth]] = {"kline_feed": [], "account_feed": []}
    for s in services:
        if s.service in by:
            by[s.service].append(s)
    kl, ac = by["kline_feed"], by["account_feed"]

    def connected(group: list[ServiceHealth]) -> bool:
        if not group:
            return False
        return all(
            s.status != "down" and _bool(s.stats.get("connected")) is not False for s in group
        )

    last = [
        _num(s.stats.get("last_update_ms") or s.stats.get("last_update")) or s.last_event_time or 0
        for s in kl
    ]
    return {
        "kline_feed": {
            "connected": connected(kl),
            "symbols": int(sum(_num(s.stats.get("symbols")) or 0 for s in kl)),
            "last_update": iso(max(last, default=0)),
            "instances": len(kl),
        },
        "account_feed": {
            "connected": connected(ac),
            "listen_key_valid": bool(ac) and _bool(_first(ac, "listen_key_valid")) is True,
            "last_renewal": iso(_num(_first(ac, "last_renewal"))),
            "next_renewal": iso(_num(_first(ac, "next_renewal"))),
        },
    }


def connection_rows(services: Iterable[ServiceHealth]) -> tuple[dict[str, str], ...]:
    """One row per `connections.<id>.*` group in any service's stats."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for s in services:
        for key, val in s.stats.items():
            parts = key.split(".")
            if len(parts) >= 3 and parts[-3] == "connections":
                row = rows.setdefault((s.name, parts[-2]), {"service": s.name, "id": parts[-2]})
                row[parts[-1]] = val
    return tuple(rows[k] for k in sorted(rows))


def aggregate(
    health: Mapping[str, Mapping[str, str]],
    *,
    now_ms: int,
    ttl_s: float,
    expected: Iterable[str] = CORE_SERVICES,
    halted: bool = False,
) -> SystemView:
    """The system view. `expected` names services (or `service:instance`s) that must be
    there; a base name is satisfied by any instance of it."""
    names = set(health)
    present_bases = {n.split(":", 1)[0] for n in names}
    for want in expected:
        if want not in names and (":" in want or want not in present_bases):
            names.add(want)
    services = tuple(service_health(n, health.get(n), now_ms, ttl_s) for n in sorted(names))
    statuses = {s.status for s in services}
    overall = "down" if "down" in statuses else "degraded" if "degraded" in statuses else "ok"
    return SystemView(
        now_ms=now_ms,
        overall=overall,
        services=services,
        feeds=seed_feed_block(services),
        connections=connection_rows(services),
        halted=halted,
    )


def _stem(key: str) -> list[str]:
    return [p.removesuffix("_total") for p in key.split(".")]


def feed_counters(health: Mapping[str, Mapping[str, str]]) -> FeedHealth:
    """Cumulative feed counters summed over every service and instance."""
    reconnects = ok = failed = bad = 0
    fallbacks: dict[str, int] = {}
    for fields in health.values():
        for key, val in fields.items():
            n = _num(val)
            if n is None or key in FIXED_FIELDS:
                continue
            parts = _stem(key)
            last = parts[-1]
            if len(parts) >= 2 and parts[-2] == "activations":
                fallbacks[last] = fallbacks.get(last, 0) + int(n)
            elif last == "reconnects":
                reconnects += int(n)
            elif last == "renewals_ok":
                ok += int(n)
            elif last == "renewals_failed":
                failed += int(n)
            elif last == "bad_messages":
                bad += int(n)
    return FeedHealth(reconnects, fallbacks, ok, failed, bad)


def feed_delta(now: FeedHealth, base: FeedHealth | None) -> FeedHealth:
    """Counters over a period: now minus the baseline. A counter that went down (the
    service restarted and counts from 0) contributes its current value."""
    if base is None:
        return now

    def d(a: int, b: int) -> int:
        return a - b if a >= b else a

    reasons = {r: d(v, base.rest_fallbacks.get(r, 0)) for r, v in now.rest_fallbacks.items()}
    return FeedHealth(
        d(now.reconnects, base.reconnects),
        {r: v for r, v in reasons.items() if v},
        d(now.renewals_ok, base.renewals_ok),
        d(now.renewals_failed, base.renewals_failed),
        d(now.bad_messages, base.bad_messages),
    )


_COLORS = {"ok": "green", "degraded": "yellow", "down": "bold red"}


def render_status_table(view: SystemView) -> Table:
    """The view as a rich table (`slt status`)."""
    title = f"SelfLearningTrader — {view.overall.upper()}" + ("  [HALTED]" if view.halted else "")
    table = Table(title=title)
    for col in ("service", "status", "heartbeat age", "phase", "uptime", "details"):
        table.add_column(col)
    for s in view.services:
        color = _COLORS.get(s.status, "white")
        details = s.reason or ", ".join(
            f"{k}={v}" for k, v in sorted(s.stats.items()) if len(v) < 30
        )
        table.add_row(
            s.name,
            f"[{color}]{s.status}[/{color}]",
            "-" if s.age_s is None else f"{s.age_s:.1f}s",
            s.phase or "-",
            "-" if s.uptime_s is None else f"{s.uptime_s:.0f}s",
            details[:100],
        )
    kl, ac = view.feeds["kline_feed"], view.feeds["account_feed"]
    table.caption = (
        f"klines: connected={kl['connected']} symbols={kl['symbols']} last={kl['last_update']} | "
        f"account: connected={ac['connected']} listenKey valid={ac['listen_key_valid']} "
        f"last renewal={ac['last_renewal']}"
    )
    return table
