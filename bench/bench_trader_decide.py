"""Benchmark: a minute close with 200 symbols, through the running trader service.

Measured: from the moment the minute's LAST closed kline is in `slt:stream:klines` (the
reply of the one EVALSHA that publishes all 200, kline_feed's exactly-once path) to the
moment ALL of that minute's decisions are readable on `slt:stream:signals` - p50 / p99
over many minutes.  Target: p99 < 50 ms (aim: < 30 ms, so it holds on a loaded machine).
The reader counts a minute's entries by their plain `event_time` field (the minute's
close) and decodes them after the clock stopped (checking `minute_open_time`): its own
msgpack work is not the trader's latency (`--decode-in-window` puts it back in, as the
first version measured).  This process's cyclic GC is frozen after set-up and paused in
the measured window, for the same reason.

Set-up (all on loopback): a Redis server, the exchange simulator (in this process, clock
paused, 200 synthetic symbols), account_feed and the trader as separate processes (the
trader reads the account from account_feed's cache, as in production).  The trader's
model is cold-started from the real kline files (XGBoost, 200 trees, depth 4), and its
signals are loosened so that EVERY symbol has a candidate every minute: each minute all
200 (or more) candidates are scored in one batched predict, ranked, and published.  The
klines make every symbol trend up (a new 60-bar high each minute); the simulator's price
follows them, so the few entries taken are real orders with protective algo orders.

How many decisions a minute must produce is known exactly: a mirror `TraderCore` in this
process is fed the same REST history and the same klines.  Reference, same run: that
mirror's feed + decide for the same 200 klines with the same model (the pure core alone,
no Redis, no network).

Run: `.venv/bin/python -m bench.bench_trader_decide [--symbols 200] [--minutes 200]
[--decode-in-window]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import glob
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.trader.core import TraderCore
from services.trader.learner import Learner, ModelStore
from services.trader.signals import SignalParams
from shared.binance.client import BinanceClient
from shared.codec import decode_event
from shared.config import DEFAULT_SYMBOLS, load_settings
from shared.filters import parse_exchange_info
from shared.keys import Keys
from shared.kline_publisher import KlinePublisher
from shared.models import Kline
from shared.testing import KLINES_DIR, RedisServer

MIN = 60_000
START = 1_767_225_600_000
PREFIX = "bench:"
LOOSE = SignalParams(pullback_rsi_long_max=100, pullback_rsi_short_min=0, pullback_min_regime=-1,
                     breakout_atr_ratio_min=0, breakout_volume_z_min=-1e9)  # fmt: skip
DATA = [str(KLINES_DIR / "binance_usdtm_2023-02_vision_csv/*.csv"),
        str(KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv/*-1m-futures.csv.gz")]  # fmt: skip


def symbols(n: int) -> list[str]:
    extra = [f"Z{i:03d}USDT" for i in range(max(0, n - len(DEFAULT_SYMBOLS)))]
    return (list(DEFAULT_SYMBOLS) + extra)[:n]


def env_for(sim: SimServer, redis_url: str, syms: list[str], model_dir: str) -> dict[str, str]:
    files = sorted(f for pattern in DATA for f in glob.glob(pattern))
    return {
        **os.environ, **sim.env(), "SLT_REDIS__URL": redis_url, "SLT_REDIS__PREFIX": PREFIX,
        "SLT_EXCHANGE__SYMBOLS": orjson.dumps(syms).decode(), "SLT_MODEL__DIR": model_dir,
        "SLT_MODEL__COLD_START": "file", "SLT_MODEL__COLD_START_FILES": orjson.dumps(files).decode(),
        "SLT_TRADING__RISK_PER_TRADE": "0.002", "SLT_TRADING__MAX_TOTAL_EXPOSURE": "10",
        "SLT_SERVICE__LOG_LEVEL": "WARNING", "SLT_SERVICE__HEARTBEAT_INTERVAL": "0.5",
    }  # fmt: skip


def serve() -> int:
    """The trader process of the benchmark: the service with loosened signals."""
    from services.trader.service import TraderService
    from shared.runtime import run_service

    settings = load_settings()
    return run_service(TraderService(settings, signal_params=LOOSE), settings, port=0)


def next_kline(symbol: str, prev: Kline, minute: int, rng: np.random.Generator) -> Kline:
    """A steady climb: every close is a new 60-bar high (a breakout candidate)."""
    o = prev.close
    c = o * (1.0015 + 0.0005 * rng.random())
    h, lo = c * (1 + 0.0003 * rng.random()), o * (1 - 0.0003 * rng.random())
    v = prev.volume * (0.8 + 0.4 * rng.random()) + 1.0
    return Kline(symbol, "1m", minute, minute + MIN - 1, o, h, lo, c, v, v * c, 100, v / 2,
                 v * c / 2, True, minute + MIN + 5, minute + MIN + 7)  # fmt: skip


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.syms = symbols(args.symbols)
        self.keys = Keys(PREFIX)
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, env: dict[str, str]) -> None:
        """account_feed and the trader (this module with --serve), logs in the temp dir."""
        for module, extra in (("services.account_feed", ["--port", "0"]),
                              ("bench.bench_trader_decide", ["--serve"])):  # fmt: skip
            with open(self.tmp / f"{module}.log", "wb") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-m", module, *extra],
                                                   env=env, stdout=out, stderr=out))  # fmt: skip

    async def start_processes(self, sim: SimServer, redis_url: str) -> None:
        self.spawn(env_for(sim, redis_url, self.syms, str(self.tmp / "models")))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = await self.redis.hget(self.keys.health("trader"), "status")
            if status == b"ok":
                return
            if any(p.poll() is not None for p in self.procs):
                break
            await asyncio.sleep(0.2)
        raise RuntimeError(f"trader did not start; see {self.tmp}")

    def stop_processes(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()

    async def mirror(self, sim: SimServer) -> tuple[TraderCore, dict[str, Kline]]:
        """The same history the trader warmed up with, in a local core (no model yet)."""
        settings = load_settings(exchange={"symbols": self.syms})
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key,
                                                  sim.demo_secret) as client:  # fmt: skip
            filters = parse_exchange_info(await client.exchange_info())
            from services.trader.model_io import fetch_closed_klines

            last = {}
            core = TraderCore(settings, filters, None, signal_params=LOOSE)
            for s in self.syms:
                ks = await fetch_closed_klines(client, s, "1m", settings.trading.history_bars)
                for k in ks:
                    core.on_closed_kline(k, 0)
                last[s] = ks[-1]
        return core, last

    async def minute(
        self, sim: SimServer, pub: KlinePublisher, mirror: TraderCore, last: dict[str, Kline],
        minute: int, rng: np.random.Generator,
    ) -> tuple[float, float, int]:  # fmt: skip
        batch = [next_kline(s, last[s], minute, rng) for s in self.syms]
        t0 = time.perf_counter()
        for k in batch:
            mirror.on_closed_kline(k, 0)
        expected = len(mirror.decide(minute, Decimal(10_000), Decimal(10_000), {}, False))
        core_ms = (time.perf_counter() - t0) * 1000
        ts = sim.clock.now_ms()
        for k in batch:  # the simulator's price follows (entries fill at the close)
            last[k.symbol] = k
            tick = sim.specs[k.symbol].tick_size
            price = (Decimal(repr(k.close)) / tick).to_integral_value() * tick
            sim.push_events(sim.exchange.advance_price(k.symbol, price, ts))
        with _gc_paused():  # this process's own GC pauses are not the trader's latency
            await pub.publish_many(batch)
            t1 = time.perf_counter()  # every kline of the minute is in the stream
            got = await self.read_decisions(minute, expected)
            ms = (time.perf_counter() - t1) * 1000
        if not self.args.decode_in_window:  # checked after the clock stopped
            mine = [d for d in map(decode_event, got) if d[1]["minute_open_time"] == minute]
            if len(mine) != len(got) or any(d[2].event_time != minute + MIN for d in mine):
                raise RuntimeError(f"minute {minute}: decisions of another minute counted")
        return ms, core_ms, expected

    async def read_decisions(self, minute: int, expected: int) -> list[dict[bytes, bytes]]:
        """The minute's decision entries as they become readable on the signals stream.
        Counted by their plain `event_time` field (the minute's close), so the clock stops
        when the last one is READABLE; `--decode-in-window` decodes each before counting
        (the reader's msgpack work then counts too, as in the first version)."""
        close, got = str(minute + MIN).encode(), []
        while len(got) < expected:
            resp = await self.reader.xread({self.keys.stream_signals: self.cursor}, block=5_000,
                                           count=10_000)  # fmt: skip
            if not resp:
                raise RuntimeError(f"minute {minute}: {len(got)}/{expected} decisions after 5 s")
            for entry_id, fields in resp[0][1]:
                self.cursor = entry_id
                if self.args.decode_in_window:
                    if decode_event(fields)[1]["minute_open_time"] == minute:
                        got.append(fields)
                elif fields.get(b"event_time") == close:
                    got.append(fields)
        return got

    async def run(self) -> None:
        server = RedisServer(self.tmp / "redis")
        server.start()
        self.redis = aioredis.from_url(server.url)
        self.reader = aioredis.from_url(server.url)
        self.cursor: Any = "$"
        cfg = SimConfig(symbols=tuple(self.syms), paused=True, start_ms=START, history_minutes=400,
                        funding_enabled=False, weight_limit_1m=100_000)  # fmt: skip
        try:
            async with SimServer(cfg) as sim:
                t = time.perf_counter()
                await self.start_processes(sim, server.url)
                print(f"trader up in {time.perf_counter() - t:.1f} s "
                      f"(REST warm-up of {len(self.syms)} symbols + cold-start training)")  # fmt: skip
                await self.measure(sim)
        finally:
            self.stop_processes()
            await self.redis.aclose()
            await self.reader.aclose()
            server.stop()

    async def measure(self, sim: SimServer) -> None:
        mirror, last = await self.mirror(sim)
        gc.collect()
        gc.freeze()  # the simulator, history and mirror: out of this process's GC passes
        version = (await self.redis.get(self.keys.model_current) or b"").decode()
        store = ModelStore(self.tmp / "models")
        mirror.learner = Learner(load_settings().model, store=store)
        if version:
            mirror.learner.load(version)
        pub = KlinePublisher(self.redis, self.keys, 500_000)
        rng = np.random.default_rng(7)
        minute = max(k.open_time for k in last.values()) + MIN
        e2e, core, counts = [], [], []
        for i in range(self.args.warm + self.args.minutes):
            ms, core_ms, n = await self.minute(sim, pub, mirror, last, minute, rng)
            if i >= self.args.warm:
                e2e.append(ms)
                core.append(core_ms)
                counts.append(n)
            minute += MIN
            await asyncio.sleep(self.args.gap)  # entries execute; account_feed catches up
        await self.report(version, e2e, core, counts)

    async def report(
        self, version: str, e2e: list[float], core: list[float], counts: list[int]
    ) -> None:
        raw = await self.redis.hgetall(self.keys.health("trader"))
        h = {k.decode(): v.decode() for k, v in raw.items()}
        print(f"{len(self.syms)} symbols x {len(e2e)} minutes, model {version or 'baseline'}; "
              f"decisions per minute: min {min(counts)} mean {np.mean(counts):.0f} max {max(counts)}")  # fmt: skip
        for name, xs in (("last kline in stream -> all decisions on signals", e2e),
                         ("reference: pure core, feed 200 + decide (same model)", core)):  # fmt: skip
            print(f"  {name:<54} p50 {np.percentile(xs, 50):6.2f} ms  "
                  f"p99 {np.percentile(xs, 99):6.2f} ms  max {max(xs):6.2f} ms")  # fmt: skip
        stages = "  ".join(f"{s} {_f(h.get(f'latency_{s}_p50_ms'))}/{_f(h.get(f'latency_{s}_p99_ms'))}"
                           for s in ("feed", "account", "decide", "publish", "total"))  # fmt: skip
        print(f"  inside the trader, p50/p99 ms (batch read -> published): {stages}")
        print(f"  account reads: cache {h.get('account.cache_reads')}  rest {h.get('account.rest_reads')}"
              f"; entries sent {h.get('entries_sent')}, outcomes protected "
              f"{h.get('execution.outcomes.protected_total')}; model errors {h.get('model_errors')}")  # fmt: skip
        target = "met" if np.percentile(e2e, 99) < 50 else "NOT met"
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"  target p99 < 50 ms: {target}  (load average {load} on {os.cpu_count()} cores)")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _f(v: str | None) -> str:
    try:
        return f"{float(v):.2f}" if v not in (None, "") else "-"
    except ValueError:
        return "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=200)
    ap.add_argument("--minutes", type=int, default=200, help="timed minutes")
    ap.add_argument("--warm", type=int, default=70, help="untimed minutes first (trend forms)")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between minutes")
    ap.add_argument("--decode-in-window", action="store_true",
                    help="decode each decision before counting it (the reader's msgpack "
                         "work inside the measured time, as the first version did)")  # fmt: skip
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve()
    with tempfile.TemporaryDirectory(prefix="bench-trader-") as tmp:
        asyncio.run(Bench(args, Path(tmp)).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
