"""Benchmark of `slt backtest` on the real kline files, with references in the same run.

(a) the 6 real 1m futures files (280,062 bars, `binance_usdtm_2023-07_freqtrade/csv`):
    - reference: the vectorized numpy pass over the same bars (`compute_features_vectorized`,
      all 25 features, scipy lfilter) - the issue's reference;
    - reference: the live incremental path alone, `MarketContext.update` + `signals.evaluate`
      bar by bar - the floor of any backtest whose features are bit-identical to live;
    - reference: `TraderCore.on_closed_kline` alone over the same time-ordered bars;
    - loading the files three ways: no cache (parse every file), cold cache (parse and
      write the entries), warm cache (read them back; `KlineCache` in a temp directory);
    - the backtest, fast mode learner off: the loop alone on a loaded feed, and end to end
      (load + loop timed as one span) for each way of loading - issue #10 asks >= 200k
      bars/s end to end;
    - full mode learner off, fast mode learner on (7-day walk-forward cold start).
(b) a year of 1m bars for 10 symbols (5,256,000 bars) stitched from the real files: each
    symbol repeats one real series forward, then time-reversed (open and close swapped),
    so every junction is continuous and prices never drift; learner off and on.  WHY
    stitched: the repository holds ~1 month of real data per symbol, not a year.

Run: `.venv/bin/python -m bench.bench_backtest [--skip-year] [--year-days 365]`.
Model settings come from config/SLT_* as for the services (e.g. SLT_MODEL__N_ESTIMATORS).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backtest.data import BarFeed, load_feed, load_market
from backtest.results import BarKline, RunConfig
from backtest.runner import Runner, symbol_filters
from backtest.session import make_learner
from services.exchange_sim.market.kline_cache import KlineCache
from services.trader.core import TraderCore
from services.trader.signals import SignalParams, evaluate
from shared.config import load_settings
from shared.market_context import MarketContext, compute_features_vectorized
from shared.testing import KLINES_DIR

DATA = KLINES_DIR
MONTH = DATA / "binance_usdtm_2023-07_freqtrade" / "csv"
EXTRA = DATA / "binance_usdtm_2023-02_vision_csv"
YEAR_START = 1_672_531_200_000  # 2023-01-01T00:00Z
MIN = 60_000


def timed(fn: Any, repeat: int = 1) -> tuple[float, Any]:
    """Fastest of `repeat` runs (the machine is shared; the minimum is the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def columns(feed: BarFeed, j: int) -> dict[str, np.ndarray]:
    block = np.asarray(feed.cube[:, j, :])
    have = ~np.isnan(block[:, 0])
    r = block[have]
    return {"open_time": feed.times[have], "o": r[:, 0], "h": r[:, 1], "l": r[:, 2],
            "c": r[:, 3], "v": r[:, 4], "q": r[:, 5], "n": r[:, 6], "tv": r[:, 7], "tq": r[:, 8]}  # fmt: skip


def vectorized(feed: BarFeed) -> None:
    for j in range(len(feed.symbols)):
        c = columns(feed, j)
        compute_features_vectorized(c["open_time"], c["o"], c["h"], c["l"], c["c"], c["v"], c["tv"])


def incremental(feed: BarFeed) -> int:
    params, found = SignalParams(), 0
    for j, s in enumerate(feed.symbols):
        c = columns(feed, j)
        ctx = MarketContext(s)
        up = ctx.update
        for rec in zip(*(c[k].tolist() for k in ("open_time", "o", "h", "l", "c", "v", "q", "n", "tv")),
                       strict=True):  # fmt: skip
            up(*rec)
            found += len(evaluate(ctx, params))
    return found


def core_alone(feed: BarFeed) -> int:
    core = TraderCore(load_settings(exchange={"symbols": list(feed.symbols)}), symbol_filters(feed))
    times, new, on = feed.times.tolist(), tuple.__new__, core.on_closed_kline
    for k, t in enumerate(times):
        for j, r in enumerate(feed.cube[k].tolist()):
            if r[0] == r[0]:
                on(new(BarKline, (feed.symbols[j], t, t + MIN - 1, r[0], r[1], r[2], r[3], r[4],
                                  r[5], int(r[6]), r[7], True)), t + MIN)  # fmt: skip
    return core.counters.candidates


class Stopwatch:
    """Wall time spent inside the learner's training and the model's predictions (so the
    report can say where a learner-on run's time goes)."""

    def __init__(self) -> None:
        self.train = self.predict = 0.0
        self.n_train = self.n_predict = 0

    def wrap(self, learner: Any) -> None:
        retrain, sw = learner.retrain, self

        def timed_retrain(now_ms: int) -> Any:
            t0 = time.perf_counter()
            try:
                return retrain(now_ms)
            finally:
                sw.train += time.perf_counter() - t0
                sw.n_train += 1
                if learner.champion is not None:
                    sw.wrap_model(learner.champion)

        learner.retrain = timed_retrain

    def wrap_model(self, model: Any) -> None:
        """Time the model's margin calls: the compiled trees (tree_eval.py) when the model
        has them, and XGBoost's own `inplace_predict` (large batches, or no trees)."""
        for target, name in ((model.trees, "margin"), (model.booster, "inplace_predict")):
            if target is not None and not getattr(target, "_bench_wrapped", False):
                self._wrap(target, name)

    def _wrap(self, target: Any, name: str) -> None:
        inner, sw = getattr(target, name), self

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                sw.predict += time.perf_counter() - t0
                sw.n_predict += 1

        setattr(target, name, timed)
        target._bench_wrapped = True

    def __str__(self) -> str:
        return (f"training {self.train:.1f} s in {self.n_train} retrain calls, "
                f"predictions {self.predict:.1f} s in {self.n_predict} calls")  # fmt: skip


def backtest(feed: BarFeed, mode: str, learner: bool, cold_days: float,
             watch: Stopwatch | None = None) -> Any:  # fmt: skip
    cfg = RunConfig(load_settings(), cold_start_days=cold_days, mode=mode)
    model = make_learner(cfg, 0) if learner else None
    if model is not None and watch is not None:
        watch.wrap(model)
    return Runner(feed, cfg, model).run()


def stitched_year(days: int, n_symbols: int = 10) -> BarFeed:
    """`n_symbols` series of `days` x 1440 bars from the real files (module doc)."""
    market = load_market([MONTH, EXTRA])
    sources = sorted(market.symbols)
    need = days * 1440
    cols: dict[str, dict[str, np.ndarray]] = {}
    specs = {}
    for i in range(n_symbols):
        src = sources[i % len(sources)]
        a = market.arrays(src)
        fwd = {k: np.asarray(a[k]) for k in ("o", "h", "l", "c", "v", "q", "n", "tv", "tq")}
        rev = {k: v[::-1] for k, v in fwd.items()}
        rev["o"], rev["c"] = fwd["c"][::-1], fwd["o"][::-1]
        parts = [fwd, rev] if i < len(sources) else [rev, fwd]
        reps = need // len(fwd["o"]) + 2
        out = {k: np.concatenate([parts[r % 2][k] for r in range(reps)])[:need] for k in fwd}
        out["open_time"] = YEAR_START + MIN * np.arange(need, dtype=np.int64)
        name = f"Y{i:02d}{src}"
        cols[name] = out
        specs[name] = replace(market.specs()[src], symbol=name)
    return BarFeed.from_columns(cols, specs, MIN)


def report(name: str, bars: int, seconds: float, extra: str = "") -> None:
    print(f"  {name:<44} {bars / seconds:>12,.0f} bars/s  {seconds:8.2f} s  {extra}")


def spans(fn: Any, repeat: int) -> tuple[list[float], Any]:
    """Wall times of `repeat` runs (sorted) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return sorted(times), out


def report_spans(name: str, bars: int, times: list[float], extra: str = "") -> None:
    best, median = times[0], statistics.median(times)
    print(f"  {name:<44} {bars / best:>12,.0f} bars/s  {best:8.2f} s  "
          f"(median {bars / median:,.0f} bars/s, {median:.2f} s) {extra}")  # fmt: skip


def loading(repeat: int, bars: int) -> None:
    """Load time and end to end (load + the fast learner-off loop as ONE timed span) three
    ways: no cache (every file parsed), cold cache (parsed and written to an empty cache
    directory), warm cache (read back).  The cache lives in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="slt-kline-cache-") as tmp:
        fresh = iter(range(10**6))

        def cold() -> KlineCache:
            return KlineCache(Path(tmp) / f"cold{next(fresh)}")

        warm = KlineCache(Path(tmp) / "warm")
        load_feed([MONTH], cache=warm)  # fills it
        ways = {"no cache": lambda: None, "cold cache": cold, "warm cache": lambda: warm}
        for name, cache in ways.items():
            t, feed = spans(lambda c=cache: load_feed([MONTH], cache=c()), repeat)
            print(f"  load, {name:<38} {t[0]:8.3f} s best, {statistics.median(t):.3f} s median "
                  f"({len(feed.symbols)} symbols)")  # fmt: skip
        t, res = spans(lambda: backtest(feed, "fast", False, 7.0), repeat)
        report_spans("loop: backtest fast, learner off", bars, t, outcome(res))
        for name, cache in ways.items():
            t, res = spans(lambda c=cache: backtest(load_feed([MONTH], cache=c()), "fast",
                                                    False, 7.0), repeat)  # fmt: skip
            report_spans(f"end to end, {name} (load + loop)", bars, t, outcome(res))
        print(f"  warm cache: {warm.hits} hits, {warm.misses} misses")


def outcome(res: Any) -> str:
    return f"{len(res.trades)} trades, final equity {res.equity[-1]:.6f}"


def part_a(repeat: int) -> None:
    feed = load_feed([MONTH])
    bars = int(np.count_nonzero(~np.isnan(feed.cube[:, :, 0])))
    print(f"(a) {len(feed.symbols)} real symbols, {bars:,} bars, {len(feed):,} minutes; "
          f"best of {repeat}")  # fmt: skip
    loading(repeat, bars)
    t, _ = timed(lambda: vectorized(feed), repeat)
    report("reference: vectorized numpy features", bars, t, "(25 features, scipy lfilter)")
    t, found = timed(lambda: incremental(feed), repeat)
    report("reference: MarketContext.update + evaluate", bars, t, f"({found} candidates)")
    t, found = timed(lambda: core_alone(feed), repeat)
    report("reference: TraderCore.on_closed_kline only", bars, t, f"({found} candidates)")
    for mode, learner in (("full", False), ("fast", True)):
        sw = Stopwatch()
        t, res = timed(lambda m=mode, ln=learner, w=sw: backtest(feed, m, ln, 7.0, w))
        label = f"backtest {mode}, learner {'on' if learner else 'off'}"
        report(label, bars, t, f"{outcome(res)}, {sum(res.decisions.values())} decisions")
        if learner:
            print(f"      {sw}; learning: {[e.get('reason') for e in res.learning][:4]}")


def part_b(days: int) -> None:
    t_build, feed = timed(lambda: stitched_year(days))
    bars = len(feed) * len(feed.symbols)
    print(f"(b) {len(feed.symbols)} stitched symbols x {days} days = {bars:,} bars "
          f"(built in {t_build:.1f} s)")  # fmt: skip
    t, _ = timed(lambda: vectorized(feed))
    report("reference: vectorized numpy features", bars, t)
    for learner in (False, True):
        sw = Stopwatch()
        t, res = timed(lambda ln=learner, w=sw: backtest(feed, "fast", ln, 7.0, w))
        retrains = [e for e in res.learning if e["event"] == "retrain"]
        report(f"backtest fast, learner {'on' if learner else 'off'}", bars, t,
               f"{outcome(res)}, {len(retrains)} retrains "
               f"({sum(1 for e in retrains if e['accepted'])} accepted)")  # fmt: skip
        if learner:
            print(f"      {sw}; the rest {t - sw.train - sw.predict:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-year", action="store_true")
    ap.add_argument("--year-days", type=int, default=365)
    args = ap.parse_args()
    part_a(args.repeat)
    if not args.skip_year:
        part_b(args.year_days)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
