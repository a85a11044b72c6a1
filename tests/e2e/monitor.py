"""What the harness watches while the faults run.

- `HealthTracker`: a service's counters live in its process, so a `kill -9` zeroes them.
  The tracker keeps the last value seen per (service, pid) - from the heartbeat hashes
  every half second and from `/healthz` right before each kill - and sums over the
  processes, so "reconnects counted in health" covers every incarnation.
- `ClockMap`: pairs of (wall ms, simulator ms), to place a simulated close time on the
  wall clock (kline close -> stream latency).
- `ProtectionWatch`: positions on the exchange against its open stop orders, sampled
  every `sample_every_s`: how long each position went without a stop-loss, the largest
  leverage any position carried, how many positions were open at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.metrics import flatten

from .exchange import ExchangeSnapshot

log = logging.getLogger("e2e.monitor")


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class HealthTracker:
    """Counter totals over every process of every service (see module doc)."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], dict[str, float]] = {}
        self.status: dict[str, str] = {}

    def observe(self, service: str, pid: Any, fields: Mapping[str, Any]) -> None:
        values = {k: v for k, v in ((k, _num(v)) for k, v in fields.items()) if v is not None}
        key = (service, str(pid))
        prev = self.last.get(key, {})
        # a counter never goes down within one process: keep the larger reading
        self.last[key] = {k: max(v, prev.get(k, v)) for k, v in values.items()} | {
            k: v for k, v in prev.items() if k not in values
        }

    def observe_heartbeats(self, hashes: Mapping[str, Mapping[str, str]]) -> None:
        for name, fields in hashes.items():
            service = name.split(":", 1)[0]
            self.status[service] = fields.get("status", "")
            self.observe(service, fields.get("pid", "?"), fields)

    def observe_healthz(self, service: str, snapshot: Mapping[str, Any] | None) -> None:
        if snapshot:
            self.observe(service, snapshot.get("pid", "?"), flatten(snapshot.get("counters", {})))

    def total(self, service: str, counter: str) -> float:
        return sum(v.get(counter, 0.0) for (s, _), v in self.last.items() if s == service)

    def total_matching(self, service: str | None, suffix: str) -> float:
        """Sum of every counter ending in `suffix` (e.g. `breaker_opens`), of one service
        or of all (`None`)."""
        out = 0.0
        for (s, _), values in self.last.items():
            if service is None or s == service:
                out += sum(v for k, v in values.items() if k == suffix or k.endswith("." + suffix))
        return out

    def processes(self, service: str) -> int:
        return sum(1 for (s, _) in self.last if s == service)


@dataclass
class ClockMap:
    """Simulator time -> wall time, from samples (piecewise linear; pauses are flat)."""

    sim: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def add(self, wall_ms: float, sim_ms: int) -> None:
        if self.sim and sim_ms < self.sim[-1]:
            return
        self.sim.append(sim_ms)
        self.wall.append(wall_ms)

    def wall_at(self, sim_ms: int) -> float | None:
        """Earliest wall time at which the simulator reached `sim_ms`."""
        i = bisect.bisect_left(self.sim, sim_ms)
        if i == 0 or i >= len(self.sim):
            return None
        s0, s1, w0, w1 = self.sim[i - 1], self.sim[i], self.wall[i - 1], self.wall[i]
        if s1 == s0:
            return w1
        return w0 + (w1 - w0) * (sim_ms - s0) / (s1 - s0)


@dataclass
class ProtectionWatch:
    """Positions without a stop on the exchange, and leverage, over the whole run."""

    grace_s: float
    cap: int
    since: dict[str, float] = field(default_factory=dict)  # symbol -> first unprotected
    worst_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    violations: list[tuple[str, float]] = field(default_factory=list)
    max_leverage: float = 0.0
    max_effective_leverage: float = 0.0
    over_cap: list[tuple[str, float]] = field(default_factory=list)
    max_open: int = 0
    samples: int = 0
    positions_seen: set[str] = field(default_factory=set)

    def observe(self, snap: ExchangeSnapshot, now_s: float) -> None:
        self.samples += 1
        open_positions = {s: p for s, p in snap.positions.items() if p.size != 0}
        self.max_open = max(self.max_open, len(open_positions))
        for symbol, pos in open_positions.items():
            self.positions_seen.add(symbol)
            lev = float(pos.leverage or 0)
            self.max_leverage = max(self.max_leverage, lev)
            if pos.leverage is not None and pos.leverage > self.cap:
                self.over_cap.append((symbol, lev))
            eff = pos.effective_leverage
            if eff is not None:
                self.max_effective_leverage = max(self.max_effective_leverage, eff)
            if snap.has_stop(symbol, pos.size):
                self._end(symbol, now_s)
            else:
                self.since.setdefault(symbol, now_s)
                self.worst_s[symbol] = max(self.worst_s[symbol], now_s - self.since[symbol])
        for symbol in list(self.since):
            if symbol not in open_positions:
                self._end(symbol, now_s)

    def _end(self, symbol: str, now_s: float) -> None:
        start = self.since.pop(symbol, None)
        if start is not None and now_s - start > self.grace_s:
            self.violations.append((symbol, round(now_s - start, 2)))

    def finish(self, now_s: float) -> None:
        for symbol in list(self.since):
            self._end(symbol, now_s)

    @property
    def longest_unprotected_s(self) -> float:
        return max(self.worst_s.values(), default=0.0)


class Sampler:
    """Background loops feeding the trackers; `stop()` ends them."""

    def __init__(self, system: Any, health: HealthTracker, clock: ClockMap,
                 watch: ProtectionWatch, every_s: float) -> None:  # fmt: skip
        self.system, self.health, self.clock, self.watch = system, health, clock, watch
        self.every_s = every_s
        self.errors = 0
        self.snapshots = 0
        self.last_snapshot: ExchangeSnapshot | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._exchange_loop(), name="e2e.sample.exchange"),
            asyncio.create_task(self._health_loop(), name="e2e.sample.health"),
        ]

    async def stop(self) -> None:
        if not self._tasks:
            return
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self.watch.finish(time.monotonic())

    async def sample_exchange(self) -> ExchangeSnapshot:
        t0 = time.time()
        snap = await self.system.exchange_snapshot()
        t1 = time.time()
        self.clock.add((t0 + t1) * 500, snap.sim_ms)
        self.watch.observe(snap, time.monotonic())
        self.snapshots += 1
        self.last_snapshot = snap
        return snap

    async def _exchange_loop(self) -> None:
        while True:
            try:
                await self.sample_exchange()
            except Exception as exc:  # the simulator is never killed; log and go on
                self.errors += 1
                log.warning("exchange sample failed: %r", exc)
            await asyncio.sleep(self.every_s)

    async def _health_loop(self) -> None:
        while True:
            try:
                self.health.observe_heartbeats(await self.system.health_hashes())
            except Exception as exc:  # Redis is restarted on purpose
                log.debug("health sample failed: %r", exc)
            await asyncio.sleep(0.5)


def decimal_or_zero(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return Decimal(0)
