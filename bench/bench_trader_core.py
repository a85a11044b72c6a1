"""Benchmark of the trader's pure core (figures printed, references measured in the same run).

(a) Feature throughput over the 6 real 1m futures files (280k bars): `MarketContext.update`
    bar by bar, the same plus `signals.evaluate`, `TraderCore` end to end (on_closed_kline +
    decide each minute, learner off), against the vectorized numpy/scipy reference
    `compute_features_vectorized` over the same arrays.  Also: the cold-start dataset build.
(b) 200 symbols: a minute close - 200 closed klines ingested, then `decide` with a trained
    model (one batched predict) - timed over many minutes, p50/p99; once with the default
    signals and once with loosened signals so most symbols have a candidate to score.
(c) Small batches, learner off (the backtest's case): `decide` per call for 1..32 candidates,
    the array path and the scalar path timed alternately on the same minutes (real bars,
    loosened signals, the minute's candidates cut down to n) - where core.SCALAR_MAX should
    sit.  `--small-only` runs this part alone.

Run: `.venv/bin/python -m bench.bench_trader_core [--minutes 300] [--small-only]`
"""

from __future__ import annotations

import argparse
import glob
import resource
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from services.trader.core import TraderCore
from services.trader.labels import Bars, build_cold_start, read_kline_csv
from services.trader.learner import Learner
from services.trader.signals import SignalParams, evaluate
from shared.config import load_settings
from shared.filters import SymbolFilters
from shared.market_context import MarketContext, compute_features_vectorized
from shared.models import Kline
from shared.testing import KLINES_DIR

DATA = str(KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv/*-1m.csv.gz")
MIN = 60_000


def load() -> dict[str, Bars]:
    return {Path(f).name.split("-")[0]: read_kline_csv(f) for f in sorted(glob.glob(DATA))}


def rows(bars: Bars, lo: int = 0, hi: int | None = None) -> list[tuple]:
    cols = (bars.open_time, bars.open, bars.high, bars.low, bars.close, bars.volume,
            bars.quote_volume, bars.trades, bars.taker_buy_volume)  # fmt: skip
    return list(zip(*(c[lo:hi].tolist() for c in cols), strict=True))


def filters_for(symbol: str, price: float) -> SymbolFilters:
    tick = (
        Decimal("0.01") if price > 10 else Decimal("0.0001") if price > 0.1 else Decimal("0.00001")
    )
    return SymbolFilters(symbol, tick, Decimal("0.001"), Decimal("0.001"), Decimal("0.001"),
                         Decimal("1e9"), Decimal("1e9"), Decimal("5"), 5, 3, 50)  # fmt: skip


def kline(symbol: str, r: tuple) -> Kline:
    t, o, h, lo, c, v, qv, n, tb = r
    nan0 = lambda x: 0.0 if x != x else x  # noqa: E731 - freqtrade files lack these columns
    return Kline(symbol, "1m", t, t + MIN - 1, o, h, lo, c, v, nan0(qv), int(nan0(n)), nan0(tb),
                 0.0, True, t + MIN, t + MIN)  # fmt: skip


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Fastest of `repeat` runs (the machine is shared; the minimum is the least disturbed)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def part_a(series: dict[str, Bars], repeat: int):
    total = sum(len(b) for b in series.values())
    per_symbol = {s: rows(b) for s, b in series.items()}
    params = SignalParams()
    settings = load_settings(exchange={"symbols": list(series)})
    events = sorted((kline(s, r) for s, rs in per_symbol.items() for r in rs),
                    key=lambda k: (k.open_time, k.symbol))  # fmt: skip
    print(f"(a) {len(series)} symbols, {total:,} bars; best of {repeat} runs each")

    def update_only() -> None:
        for s, rs in per_symbol.items():
            up = MarketContext(s).update
            for r in rs:
                up(*r)

    def with_signals() -> int:
        n = 0
        for s, rs in per_symbol.items():
            ctx = MarketContext(s)
            up = ctx.update
            for r in rs:
                up(*r)
                n += len(evaluate(ctx, params))
        return n

    def vectorized() -> None:
        for b in series.values():
            compute_features_vectorized(b.open_time, b.open, b.high, b.low, b.close, b.volume,
                                        b.taker_buy_volume, b.trades)  # fmt: skip

    def core_loop() -> int:
        """TraderCore minute by minute, learner off (Kline objects built beforehand)."""
        core = TraderCore(
            settings, {s: filters_for(s, float(b.close[0])) for s, b in series.items()}
        )
        eq, taken, last = Decimal(10_000), 0, None
        for k in events:
            if k.open_time != last and last is not None:
                taken += sum(d.taken for d in core.decide(last, eq, eq, {}, False))
            core.on_closed_kline(k, k.received_time)
            last = k.open_time
        return taken

    t_update, _ = best_of(update_only, repeat)
    t_signals, n_cand = best_of(with_signals, repeat)
    t_vec, _ = best_of(vectorized, repeat)
    t_core, taken = best_of(core_loop, repeat)
    t_cold, data = best_of(
        lambda: build_cold_start(
            series, params, settings.model.label_horizon, settings.exchange.taker_fee
        ),
        1,
    )
    print(
        f"  MarketContext.update          {total / t_update:>12,.0f} bars/s  ({t_update * 1e6 / total:.2f} us/bar)"
    )
    print(
        f"  update + signals.evaluate     {total / t_signals:>12,.0f} bars/s  ({n_cand} candidates)"
    )
    print(
        f"  TraderCore on_kline + decide  {total / t_core:>12,.0f} bars/s  ({taken} entries taken, learner off)"
    )
    print(
        f"  reference: vectorized numpy   {total / t_vec:>12,.0f} bars/s  (all 25 features, scipy lfilter)"
    )
    print(f"  cold-start dataset (replay + triple barrier): {t_cold:.2f} s, {len(data.y)} samples, "
          f"positive rate {data.y.mean():.3f}")  # fmt: skip
    return data


def part_b(series: dict[str, Bars], data, minutes: int, n_symbols: int = 200) -> None:
    settings = load_settings()
    learner = Learner(settings.model, nthread=2)
    t0 = time.perf_counter()
    report = learner.fit_cold_start(data.X, data.y, {"times": data.times})
    t_fit = time.perf_counter() - t0
    print(f"(b) model: {report.reason}, {report.n_train}+{report.n_holdout} samples, holdout "
          f"AUC {report.challenger.get('auc', float('nan')):.3f}, fit {t_fit:.2f} s "
          f"({settings.model.n_estimators} trees, depth {settings.model.max_depth})")  # fmt: skip
    if learner.champion is None:  # history did not beat random: force a model in to time it
        learner.min_auc_gain = -1.0
        learner.retrain(0)
    names = list(series)
    syms = [f"S{i:03d}USDT" for i in range(n_symbols)]
    warm = 300
    src = {s: (series[names[i % len(names)]], (i // len(names)) * 97) for i, s in enumerate(syms)}
    for label, params in (("default signals", None),
                          ("loose signals", SignalParams(pullback_rsi_long_max=100, pullback_rsi_short_min=0,
                                                         pullback_min_regime=-1, breakout_atr_ratio_min=0,
                                                         breakout_volume_z_min=-1e9))):  # fmt: skip
        core = TraderCore(
            load_settings(exchange={"symbols": syms}),
            {s: filters_for(s, float(src[s][0].close[src[s][1]])) for s in syms},
            learner, signal_params=params,
        )  # fmt: skip
        t_start = int(series[names[0]].open_time[0])  # one clock for all: same minute, 200 closes
        feeds = {s: [kline(s, (t_start + j * MIN, *r[1:])) for j, r in enumerate(rows(b, off, off + warm + minutes))]
                 for s, (b, off) in src.items()}  # fmt: skip
        for s in syms:  # warm-up, untimed; align every symbol on one clock
            for k in feeds[s][:warm]:
                core.on_closed_kline(k, 0)
        ingest, decide, n_c = [], [], []
        eq = Decimal(100_000)
        for m in range(warm, warm + minutes):
            batch = [feeds[s][m] for s in syms]
            t0 = time.perf_counter_ns()
            for k in batch:
                core.on_closed_kline(k, 0)
            t1 = time.perf_counter_ns()
            out = core.decide(batch[0].open_time, eq, eq, {}, False)
            t2 = time.perf_counter_ns()
            ingest.append((t1 - t0) / 1e6)
            decide.append((t2 - t1) / 1e6)
            n_c.append(len(out))
        total = np.add(ingest, decide)
        print(f"  {label}: {n_symbols} symbols x {minutes} minutes, candidates/minute mean "
              f"{np.mean(n_c):.1f} max {max(n_c)}")  # fmt: skip
        for name, xs in (
            ("ingest 200 klines", ingest),
            ("decide (score+rank)", decide),
            ("minute total", total),
        ):
            print(
                f"    {name:<20} p50 {np.percentile(xs, 50):7.2f} ms   p99 {np.percentile(xs, 99):7.2f} ms"
            )
    bank_rows = core.bank.features_matrix(syms)
    X = np.hstack([bank_rows, np.zeros((len(syms), 5))])
    ts = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        learner.predict(X)
        ts.append((time.perf_counter_ns() - t0) / 1e6)
    print(f"  reference: one predict of {len(syms)} rows  p50 {np.percentile(ts, 50):.2f} ms  "
          f"p99 {np.percentile(ts, 99):.2f} ms")  # fmt: skip


def part_c(series: dict[str, Bars], minutes: int = 60, calls: int = 30) -> None:
    names = list(series)
    syms = [f"S{i:02d}USDT" for i in range(24)]
    src = {s: (series[names[i % len(names)]], (i // len(names)) * 97) for i, s in enumerate(syms)}
    loose = SignalParams(pullback_rsi_long_max=100, pullback_rsi_short_min=0,
                         pullback_min_regime=-1, breakout_atr_ratio_min=0,
                         breakout_volume_z_min=-1e9)  # fmt: skip
    sizes = (1, 2, 3, 4, 6, 8, 10, 12, 16, 24)
    print(f"(c) decide per call, learner off, {minutes} minutes x {calls} calls a size, "
          f"median of each path, calls alternated")  # fmt: skip
    t_start = int(series[names[0]].open_time[0])
    warm = 300
    feeds = {s: [kline(s, (t_start + j * MIN, *r[1:])) for j, r in enumerate(rows(b, off, off + warm + minutes))]
             for s, (b, off) in src.items()}  # fmt: skip
    eq = Decimal(100_000)
    for n in sizes:
        core = TraderCore(
            load_settings(exchange={"symbols": syms}),
            {s: filters_for(s, float(src[s][0].close[src[s][1]])) for s in syms},
            None, signal_params=loose,
        )  # fmt: skip
        for s in syms:
            for k in feeds[s][:warm]:
                core.on_closed_kline(k, 0)
        per = {0: [], 10**9: []}
        for m in range(warm, warm + minutes):
            for s in syms:
                core.on_closed_kline(feeds[s][m], 0)
            minute = feeds[syms[0]][m].open_time
            if core.keep_first_candidates(minute, n) < n:
                continue
            for _ in range(calls):
                for limit, xs in per.items():
                    core.scalar_max = limit
                    t0 = time.perf_counter_ns()
                    core.decide(minute, eq, eq, {}, False)
                    xs.append(time.perf_counter_ns() - t0)
        arr, sca = (float(np.median(per[k])) / 1e3 for k in (0, 10**9))
        print(
            f"  n={n:3d}  arrays {arr:7.1f} us   scalar {sca:7.1f} us   scalar/arrays {sca / arr:5.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small-only", action="store_true", help="part (c) alone")
    args = ap.parse_args()
    series = load()
    part_c(series)
    if args.small_only:
        return
    data = part_a(series, args.repeat)
    part_b(series, data, args.minutes)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
