"""`slt backtest`: the trader's and position controller's cores over kline files.

    slt backtest --data ../shared/data/klines/binance_usdtm_2023-07_freqtrade/csv \\
        [--symbols BTCUSDT ETHUSDT] [--start 2023-07-20 --end 2023-08-10] \\
        [--cold-start-days 7] [--learner on|off|both] [--out DIR] [--equity 10000] [--seed 0]
        [--cache-dir var/cache/klines | --no-cache]

Settings (risk, trading, model, fees) are the services' own (config/config.yaml and
SLT_* variables).  Writes metrics.json, trades.csv and equity.png to --out and prints the
comparison of the strategy with and without the learner against buy and hold.  Parsed
kline files are cached under --cache-dir (keyed by path, size and mtime, so an edited file
is parsed again): the second run over the same files skips the parsing.  Exit
status: 0 done, 2 bad arguments / configuration / data, 1 a run failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from backtest.compare import table
from backtest.data import DataError, load_feed
from backtest.results import MODES, RunConfig
from backtest.session import LEARNER_CHOICES, run_session, symbols_of, write_outputs
from services.exchange_sim.market.kline_cache import KlineCache
from shared.config import ConfigError, load_settings

EXIT_USAGE = 2
DEFAULT_CACHE = "var/cache/klines"


def _decimal(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slt backtest", description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="kline files or directories (Binance CSV, optionally .gz, or klines JSON)",
    )
    p.add_argument("--symbols", nargs="+", help="only these symbols (default: every file's)")
    p.add_argument("--start", help="first bar, UTC: YYYY-MM-DD[THH:MM] or epoch ms")
    p.add_argument("--end", help="end (exclusive), UTC")
    p.add_argument(
        "--cold-start-days",
        type=float,
        default=7.0,
        help="history the learner is cold-started on before trading (default 7)",
    )
    p.add_argument(
        "--learner",
        choices=LEARNER_CHOICES,
        default="both",
        help="walk-forward learner on, off, or both for the comparison (default)",
    )
    p.add_argument("--out", default="var/backtest", help="output directory (default var/backtest)")
    p.add_argument("--equity", type=_decimal, default=Decimal(10_000), help="starting USDT")
    p.add_argument("--seed", type=int, default=0, help="learner seed (repeatable runs)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="fast",
        help="fast skips bars that cannot change anything; full ticks every bar",
    )
    p.add_argument(
        "--slippage-bps",
        type=_decimal,
        default=Decimal(1),
        help="simulated book half-spread in basis points (the simulator's model)",
    )
    p.add_argument(
        "--funding-rate",
        type=_decimal,
        default=Decimal("0.0001"),
        help="funding rate per 8 h (default 0.01%%)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help=f"parsed kline files are kept here for the next run (default {DEFAULT_CACHE})",
    )
    p.add_argument("--no-cache", action="store_true", help="parse every file, keep nothing")
    return p  # fmt: skip


def _progress(console: Console, enabled: bool) -> tuple[Progress | None, Callable | None]:
    """A rich progress bar per run, only on a terminal."""
    if not enabled or not console.is_terminal:
        return None, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                   TimeRemainingColumn(), console=console, transient=True)  # fmt: skip

    def factory(name: str) -> Callable[[int, int], None]:
        task = bar.add_task(name, total=1)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return update

    return bar, factory


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, err = Console(), Console(stderr=True)
    try:
        settings = load_settings()
        cache = None if args.no_cache else KlineCache(args.cache_dir)
        feed = load_feed(args.data, symbols_of(args.symbols), args.start, args.end, cache=cache)
        cfg = RunConfig(settings, equity=args.equity, cold_start_days=args.cold_start_days,
                        mode=args.mode, slippage_bps=args.slippage_bps,
                        funding_rate=args.funding_rate)  # fmt: skip
    except (ConfigError, DataError, ValueError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    err.print(f"{len(feed.symbols)} symbols, {len(feed):,} minutes: {', '.join(feed.symbols)}")
    bar, factory = _progress(err, not args.no_progress)
    t0 = time.perf_counter()
    try:
        if bar is not None:
            with bar:
                session = run_session(feed, cfg, args.learner, args.seed, factory)
        else:
            session = run_session(feed, cfg, args.learner, args.seed)
    except ValueError as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - t0
    paths = write_outputs(session, args.out)
    out.print(table(session.metrics))
    done = sum(r.counters.get("bars", 0) for r in session.runs.values())
    err.print(f"{done:,} bars in {elapsed:.1f} s ({done / max(elapsed, 1e-9):,.0f} bars/s); "
              f"wrote {', '.join(str(p) for p in paths.values())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
