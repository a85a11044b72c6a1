"""One chaos run, start to finish: the system up, trading, the fault schedule, settling,
then every figure.  Shared by `tests/test_e2e_chaos.py` and `bench/soak.py`.

Order of the end phase, and why:
1. every service `ok` again (polled): "healthy at the end";
2. the simulator's clock paused: no new market data, fills or funding, so "after the last
   event" is a fixed state to compare against;
3. polled until the stream holds the newest closed kline of every symbol, and until the
   caches and the trades stream agree with the exchange (bounded: whatever still
   differs at the deadline is reported);
4. figures from the exchange (admin API, audit) and Redis; then the processes stop and
   their logs are scanned for secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.codec import decode_event

from . import checks, klines, secrets_scan
from .config import SERVICES, ChaosConfig
from .exchange import ExchangeSnapshot
from .faults import FaultLog, one_cycle, run_schedule
from .figures import Figure, exact, failures, info, render
from .monitor import ClockMap, HealthTracker, ProtectionWatch, Sampler
from .system import System

log = logging.getLogger("e2e.run")

STREAMS = ("klines", "account", "signals", "orders", "trades", "risk")


@dataclass
class ChaosResult:
    figures: list[Figure]
    faults: FaultLog
    klines: klines.KlineResult
    peak_kib: dict[str, int]
    phases: dict[str, float]  # real seconds per phase
    stream_counts: dict[str, int]
    sim_minutes: float  # simulated time the run covered
    work_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Figure]:
        return failures(self.figures)


async def _until(pred: Callable[[], Any], limit_s: float, every: float = 0.25) -> bool:
    deadline = time.monotonic() + limit_s
    while True:
        with contextlib.suppress(Exception):  # a read racing a restart: try again
            if await pred():
                return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)


async def _stream_data(system: System, name: str) -> list[dict[str, Any]]:
    assert system.redis is not None
    out = []
    for _, fields in await klines.read_stream(system.redis, system.keys.stream(name)):
        out.append(decode_event(fields)[1])
    return out


class _Collector:
    """The end-of-run reads, kept apart from the orchestration."""

    def __init__(self, system: System, cfg: ChaosConfig) -> None:
        self.system, self.cfg = system, cfg
        self.records: dict[str, list[dict[str, Any]]] = {}

    async def klines_caught_up(self) -> bool:
        r = self.system.redis
        assert r is not None
        syms = self.cfg.symbol_list
        self.records = {s: await self.system.closed_klines(s) for s in syms}
        keys = self.system.keys
        last = [await r.hget(keys.kline(s), "open_time") for s in syms]  # the guard
        return all(
            v is not None and self.records[s] and int(v) >= int(self.records[s][-1]["t"])
            for s, v in zip(syms, last, strict=True)
        )

    async def cache_diffs(self) -> tuple[ExchangeSnapshot, list[str]]:
        r, keys = self.system.redis, self.system.keys
        assert r is not None
        snap = await self.system.exchange_snapshot()
        positions = {}
        for s in self.cfg.symbol_list:
            h = await r.hgetall(keys.position(s))
            if h:
                positions[s] = h
        balance = await r.hgetall(keys.balance("USDT"))
        return snap, checks.cache_diffs(snap, positions, balance)

    async def trades_recorded(self) -> bool:
        audit = await self.system.audit()
        trips = checks.round_trips(audit["fills"])
        return len(await _stream_data(self.system, "trades")) >= len(trips)


class _Run:
    """The state of one run, phase by phase (see the module doc)."""

    def __init__(self, cfg: ChaosConfig, progress: Callable[[str], None]) -> None:
        self.cfg, self.progress = cfg, progress
        self.phases: dict[str, float] = {}
        self.tracker, self.clock = HealthTracker(), ClockMap()
        self.watch = ProtectionWatch(cfg.protection_grace_s, cfg.max_leverage)
        self.record = FaultLog()
        self.figures: list[Figure] = []
        self.extra: dict[str, Any] = {}
        self.system = System(cfg)
        self.system.before_kill = self.tracker.observe_healthz
        self.sampler = Sampler(self.system, self.tracker, self.clock, self.watch,
                               cfg.sample_every_s)  # fmt: skip
        self.statuses: dict[str, str] = {}
        self.hits = secrets_scan.SecretHits()
        self.counts: dict[str, int] = {}

    def _phase(self, name: str, since: float) -> None:
        self.phases[name] = time.monotonic() - since

    async def start_and_warm_up(self) -> None:
        t0 = time.monotonic()
        await self.system.wait_status(set(SERVICES), ("ok",), 120)
        self._phase("startup", t0)
        self.progress(f"system up in {self.phases['startup']:.1f}s; warming up")
        self.sampler.start()
        t1 = time.monotonic()
        await asyncio.sleep(self.cfg.warmup_seconds)  # trading under normal conditions
        self._phase("warmup", t1)

    async def faults(self, cycles: int, duration_s: float | None) -> None:
        """`cycles` rounds of every fault; with `duration_s`, as many rounds as start
        within that time (each after the system is healthy again)."""
        t1 = time.monotonic()
        n = 0
        while True:
            n += 1
            steps = one_cycle(self.cfg.symbol_list[0], self.cfg.kill_gap_s, n)
            self.progress(f"fault cycle {n}: {len(steps)} steps")
            await run_schedule(self.system, steps, self.record)
            elapsed = time.monotonic() - t1
            more = elapsed * (n + 1) / n <= duration_s if duration_s else n < cycles
            if not more:
                break
            await self.system.wait_status(set(SERVICES), ("ok",), self.cfg.settle_timeout)
        self.extra["fault_cycles"] = n
        self._phase("faults", t1)
        self.progress(f"faults done in {self.phases['faults']:.1f}s: {dict(self.record.done)}")

    async def settle(self) -> _Collector:
        t1, system, cfg = time.monotonic(), self.system, self.cfg
        try:
            self.statuses = await system.wait_status(set(SERVICES), ("ok",), cfg.settle_timeout)
        except TimeoutError:
            hashes = await system.health_hashes()
            self.statuses = {s: h.get("status", "absent") for s, h in hashes.items()}
        for svc in SERVICES:
            self.tracker.observe_healthz(svc, await system.healthz(svc))
        self.tracker.observe_heartbeats(await system.health_hashes())
        await system.admin("clock/pause")
        col = _Collector(system, cfg)
        deadline = time.monotonic() + cfg.settle_timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        caught_up = await _until(col.klines_caught_up, left())
        trades_in = await _until(col.trades_recorded, left())
        t_settle = time.monotonic()
        converged = await _until(lambda: _no_diffs(col), left())
        self.extra["settle_s"] = time.monotonic() - t_settle
        await self.sampler.sample_exchange()
        await self.sampler.stop()
        self._phase("settle", t1)
        self.progress(f"settled in {self.phases['settle']:.1f}s (klines caught up: {caught_up}"
                      f", trades recorded: {trades_in}, caches converged: {converged})")  # fmt: skip
        return col

    async def collect(self, col: _Collector) -> None:
        t1, system = time.monotonic(), self.system
        assert system.redis is not None
        self.figures += await _collect_figures(system, self.cfg, col, self.clock, self.watch,
                                               self.tracker, self.extra)  # fmt: skip
        restarts = system.sup.restarts() if system.sup else {}
        sim_keys = (await system.admin_state())["counters"]["listenKeys"]
        self.figures += checks.health_figures(self.statuses, self.tracker, self.record,
                                              restarts, system.kills, system.redis_restarts,
                                              sim_keys)  # fmt: skip
        self.figures.append(info("run", "exchange sampling errors", self.sampler.errors))
        await secrets_scan.scan_redis(system.redis, self.cfg.secrets.named(), self.hits)
        self.counts = {s: await system.redis.xlen(system.keys.stream(s)) for s in STREAMS}
        self._phase("checks", t1)

    def result(self, t0: float) -> ChaosResult:
        sim_hits = _scan_after_stop(self.cfg, self.hits)
        self.figures += secrets_scan.figures(self.hits, sim_hits)
        self._phase("total", t0)
        sims = self.clock.sim
        sim_minutes = (sims[-1] - sims[0]) / 60_000 if sims else 0.0
        self.figures += [
            info("run", "simulated minutes covered", round(sim_minutes, 1)),
            info("run", "real seconds (total)", round(self.phases["total"], 1)),
            exact("run", "fault steps failed", len(self.record.failed), 0,
                  "; ".join(self.record.failed[:2])),
        ]  # fmt: skip
        kres: klines.KlineResult = self.extra.pop("klines")
        self.save()
        return ChaosResult(self.figures, self.record, kres, dict(self.system.peak_kib),
                           self.phases, self.counts, sim_minutes, self.cfg.work_dir,
                           self.extra)  # fmt: skip

    def save(self) -> None:
        """What a failed run is diagnosed from, next to the logs: the figures, the fault
        record and every process's last counters."""
        d = self.cfg.work_dir
        (d / "figures.txt").write_text(render(self.figures) + "\n")
        faults = {"done": self.record.done, "hits": self.record.hits,
                  "failed": self.record.failed, "timeline": self.record.timeline}  # fmt: skip
        (d / "faults.json").write_bytes(orjson.dumps(faults, option=orjson.OPT_INDENT_2))
        audit = self.extra.pop("audit", None)
        if audit is not None:
            (d / "audit.json").write_bytes(orjson.dumps(audit))
        counters = {f"{s}:{pid}": v for (s, pid), v in self.tracker.last.items()}
        (d / "health_counters.json").write_bytes(
            orjson.dumps(counters, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )


async def run_chaos(cfg: ChaosConfig, *, cycles: int = 1, duration_s: float | None = None,
                    progress: Callable[[str], None] = print) -> ChaosResult:  # fmt: skip
    """Start everything, trade, break things, settle, measure; see the module doc."""
    t0 = time.monotonic()
    run = _Run(cfg, progress)
    async with run.system:
        try:
            await run.start_and_warm_up()
            await run.faults(cycles, duration_s)
            col = await run.settle()
            await run.collect(col)
        finally:
            await run.sampler.stop()
    return run.result(t0)


async def _no_diffs(col: _Collector) -> bool:
    _, diffs = await col.cache_diffs()
    return not diffs


async def _collect_figures(system: System, cfg: ChaosConfig, col: _Collector,
                           clock: ClockMap, watch: ProtectionWatch, tracker: HealthTracker,
                           extra: dict[str, Any]) -> list[Figure]:  # fmt: skip
    assert system.redis is not None
    await col.klines_caught_up()
    kres = klines.KlineResult()
    await klines.stream_klines(system.redis, system.keys, kres)
    klines.compare(kres, col.records, clock)
    extra["klines"] = kres
    out = klines.figures(kres, cfg.symbols)
    audit = await system.audit()
    extra["audit"] = audit
    out += checks.order_figures(audit, watch, cfg.max_leverage, cfg.protection_grace_s)
    snap, diffs = await col.cache_diffs()
    out += checks.cache_figures(snap, diffs, extra.get("settle_s", 0.0))
    trades = await _stream_data(system, "trades")
    seen = {m.decode() for m in await system.redis.smembers(system.keys.learner_seen)}
    learned = tracker.total("trader", "model.model_trades_learned_total")
    out += checks.trade_figures(checks.round_trips(audit["fills"]), trades, seen, learned)
    return out


def _scan_after_stop(cfg: ChaosConfig, hits: secrets_scan.SecretHits) -> int:
    """Logs (complete now that every process has exited), reports, models; returns the
    hits in the simulator's own log (reported apart: it is the exchange)."""
    secrets = cfg.secrets.named()
    logs = [p for p in cfg.logs_dir.glob("*.log") if p.name not in ("exchange_sim.log",)]
    secrets_scan.scan_files(logs, secrets, hits, "log")
    secrets_scan.scan_files([cfg.redis_dir / "redis.log"], secrets, hits, "log")
    secrets_scan.scan_files(sorted(cfg.reports_dir.rglob("*")), secrets, hits, "report")
    secrets_scan.scan_files(sorted(cfg.models_dir.rglob("*")), secrets, hits, "model")
    sim = secrets_scan.SecretHits()
    secrets_scan.scan_files([cfg.logs_dir / "exchange_sim.log"], secrets, sim, "sim")
    return sum(len(v) for v in sim.hits.values())
