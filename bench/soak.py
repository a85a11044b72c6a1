"""Soak: the chaos run of issue #11 for longer (`python -m bench.soak --minutes 10`).

The same harness as `tests/test_e2e_chaos.py` (`tests/e2e`): Redis with AOF, the
simulator and every service as real processes, the fault schedule repeated for
`--minutes` of real time (one full cycle at least, each cycle once the system is healthy
again), then the same figures, plus:
- throughput: closed klines/s into `slt:stream:klines` and events/s over every stream,
  against the reference measured in the same run: the rate at which the simulator closes
  klines (symbols x speed / 60);
- latency, kline close -> stream entry: the close time (simulated) placed on the wall
  clock through the simulator's clock samples, against the stream entry's id (Redis
  time); p50 / p90 / p99 / p99.9 / max over every kline (the ones delayed by the faults
  and filled over REST included: the tail is the faults, the median the normal path);
- each service's peak memory: VmHWM of every process, read before each kill -9 and
  before stopping (the largest over a service's processes).
Exit status 1 when a figure failed.  `--keep` leaves the work directory (logs,
figures.txt, faults.json, health_counters.json, Redis AOF) for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.e2e.config import ChaosConfig, default_start_ms
from tests.e2e.figures import render
from tests.e2e.run import ChaosResult, run_chaos


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="real minutes of faults")
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--speed", type=float, default=240.0, help="simulated s per real s")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def _pcts(values: list[float]) -> str:
    if not values:
        return "n/a"
    a = np.asarray(values)
    q = np.percentile(a, [50, 90, 99, 99.9])
    return (f"p50 {q[0]:.1f}  p90 {q[1]:.1f}  p99 {q[2]:.1f}  p99.9 {q[3]:.1f}  "
            f"max {a.max():.1f} ms  (n={len(a):,})")  # fmt: skip


def extras(res: ChaosResult, cfg: ChaosConfig) -> str:
    k = res.klines
    span_s = max(1e-3, (k.last_entry_ms - k.first_entry_ms) / 1000)
    market = cfg.symbols * cfg.speed / 60
    kps = k.entries / span_s
    events = sum(res.stream_counts.values())
    lines = [
        "== throughput ==",
        f"  klines into stream   {kps:10,.1f}/s   (simulator closes {market:,.1f}/s: "
        f"ratio {kps / market:.3f})",
        f"  events, all streams  {events / span_s:10,.1f}/s   "
        + ", ".join(f"{s} {n:,}" for s, n in res.stream_counts.items()),
        f"  window               {span_s:10,.1f} s of stream entries; "
        f"{res.sim_minutes / 60:.1f} simulated hours",
        "== latency, kline close -> stream (real ms) ==",
        f"  {_pcts(k.latencies_ms)}",
        "  (every kline, those delayed by the faults and filled over REST included; a kline"
        " published before the first clock sample has no latency)",
        "== peak memory (VmHWM) ==",
    ]
    for name, kib in sorted(res.peak_kib.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:20s} {kib / 1024:8.1f} MiB")
    lines.append(
        "== phases (real s) == " + ", ".join(f"{p} {s:.1f}" for p, s in res.phases.items())
    )
    lines.append(f"fault cycles: {res.extra.get('fault_cycles')}; done: {dict(res.faults.done)}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="slt-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = ChaosConfig(work_dir=work, symbols=args.symbols, speed=args.speed, seed=args.seed,
                      start_ms=default_start_ms(args.speed, args.minutes + 5))  # fmt: skip
    try:
        res = await run_chaos(cfg, duration_s=args.minutes * 60, progress=print)
        print(render(res.figures, f"soak: {args.minutes:g} min, {args.symbols} symbols, "
                                  f"{args.speed:g}x"))  # fmt: skip
        print(extras(res, cfg))
        print(f"work dir: {work}" + ("" if args.keep or args.work_dir else " (deleted)"))
        return 1 if res.failed else 0
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
