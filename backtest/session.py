"""One backtest session: the strategy with and/or without the learner over one feed, the
buy-and-hold baseline, metrics, and the files a user reads afterwards.

Files written to the output directory:
- `metrics.json`: per run (learner_on, learner_off, buy_and_hold) the metrics of
  metrics.py, the engine's own totals (fees, funding, realized PnL, liquidation fees),
  decisions by reason, rejected orders by Binance code, learning events (cold start,
  retrains), counters; plus the data window and the configuration.
- `trades.csv`: every closed trade of every strategy run (column `run`).
- `equity.png`: equity curves of all runs and their drawdowns.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from backtest.compare import buy_and_hold
from backtest.data import BarFeed
from backtest.metrics import Metrics, compute
from backtest.plots import equity_png
from backtest.results import RunConfig, RunResult
from backtest.runner import Runner
from services.trader.learner import Learner

LEARNER_CHOICES = ("on", "off", "both")
BUY_AND_HOLD = "buy_and_hold"
TRADE_FIELDS = (
    "run", "trade_id", "symbol", "side", "entry_time", "exit_time", "entry_price", "exit_price",
    "quantity", "leverage", "gross_pnl", "fees", "funding", "net_pnl", "exit_reason",
    "confidence", "model_version", "win_rate_at_entry",
)  # fmt: skip
ProgressFactory = Callable[[str], Callable[[int, int], None] | None]


@dataclass(slots=True)
class Session:
    feed: BarFeed
    cfg: RunConfig
    runs: dict[str, RunResult]
    metrics: dict[str, Metrics]
    baseline: tuple[np.ndarray, np.ndarray]  # buy and hold: (times, equity)
    seed: int = 0


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_learner(cfg: RunConfig, seed: int, nthread: int = 1) -> Learner:
    """In memory (no model files from a backtest), seeded for repeatable runs.  One
    training thread: the models here train on hundreds to a few thousand rows, where a
    second OpenMP thread mostly waits (badly so when the other core is busy)."""
    return Learner(cfg.settings.model, seed=seed, nthread=nthread)


def run_session(
    feed: BarFeed, cfg: RunConfig, learner: str = "both", seed: int = 0,
    progress: ProgressFactory | None = None,
) -> Session:  # fmt: skip
    """Run what `learner` asks for ("on", "off" or "both") and the buy-and-hold baseline."""
    if learner not in LEARNER_CHOICES:
        raise ValueError(f"learner must be one of {LEARNER_CHOICES}")
    runs: dict[str, RunResult] = {}
    for flag in ("on", "off"):
        if learner in (flag, "both"):
            name = f"learner_{flag}"
            model = make_learner(cfg, seed) if flag == "on" else None
            cb = progress(name) if progress is not None else None
            runs[name] = Runner(feed, cfg, model, name, cb).run()
    metrics, baseline = evaluate(feed, cfg, runs)
    return Session(feed, cfg, runs, metrics, baseline, seed)


def evaluate(
    feed: BarFeed, cfg: RunConfig, runs: dict[str, RunResult]
) -> tuple[dict[str, Metrics], tuple[np.ndarray, np.ndarray]]:
    """Metrics of every run plus buy and hold over the same window (and its curve)."""
    out = {name: compute(r.times, r.equity, r.notional, r.trades, r.initial_equity,
                         feed.interval_ms) for name, r in runs.items()}  # fmt: skip
    first = next(iter(runs.values()))
    fee = float(cfg.settings.exchange.taker_fee)
    eq, gross = buy_and_hold(feed.closes(), first.start_index, first.initial_equity, fee)
    out[BUY_AND_HOLD] = compute(first.times, eq, gross, [], first.initial_equity, feed.interval_ms)
    return out, (first.times, eq)


def write_outputs(session: Session, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trades": out / "trades.csv", "metrics": out / "metrics.json",
             "equity": out / "equity.png"}  # fmt: skip
    write_trades(paths["trades"], session.runs)
    paths["metrics"].write_text(json.dumps(metrics_document(session), indent=2, default=str))
    curves = {name: (r.times, r.equity) for name, r in session.runs.items()}
    curves[BUY_AND_HOLD] = session.baseline
    bh = session.metrics[BUY_AND_HOLD]
    title = f"{', '.join(session.feed.symbols)}  {iso(bh.start_ms)[:10]} .. {iso(bh.end_ms)[:10]}"
    equity_png(paths["equity"], curves, bh.initial_equity, title)
    return paths


def write_trades(path: Path, runs: dict[str, RunResult]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(TRADE_FIELDS)
        for name, r in runs.items():
            for t in r.trades:
                d = t.decision
                w.writerow([
                    name, t.trade_id, t.symbol, t.side, iso(t.entry_time), iso(t.exit_time),
                    t.entry_price, t.exit_price, t.quantity, t.leverage, t.gross_pnl, t.fees,
                    t.funding, t.net_pnl, t.exit_reason,
                    "" if d is None else f"{d.confidence:.4f}", "" if d is None else d.model_version,
                    "" if d is None else f"{d.win_rate:.4f}",
                ])  # fmt: skip


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return format(v, "f")
    return v


def metrics_document(session: Session) -> dict[str, Any]:
    feed, cfg = session.feed, session.cfg
    first = next(iter(session.runs.values()))
    runs: dict[str, Any] = {}
    for name, m in session.metrics.items():
        doc: dict[str, Any] = {"metrics": m.to_dict()}
        r = session.runs.get(name)
        if r is not None:
            doc.update(
                engine={k: _plain(v) for k, v in r.ledger.items()},
                decisions=dict(r.decisions), counters=r.counters,
                rejects=dict(Counter(str(x.code) for x in r.rejects)),
                learning=[{k: _plain(v) for k, v in e.items()} for e in r.learning],
            )  # fmt: skip
        runs[name] = doc
    s = cfg.settings
    return {
        "schema": 1,
        "data": {"symbols": list(feed.symbols), "first_bar": iso(int(feed.times[0])),
                 "last_bar": iso(int(feed.times[-1])), "minutes": len(feed),
                 "trading_from": iso(int(first.times[0]) - feed.interval_ms),
                 "dropped_bars": feed.dropped, "estimated_columns": list(feed.estimated)},
        "config": {"equity": str(cfg.equity), "cold_start_days": cfg.cold_start_days,
                   "mode": cfg.mode, "slippage_bps": str(cfg.slippage_bps),
                   "funding_rate_8h": str(cfg.funding_rate),
                   "updates_per_minute": cfg.updates_per_minute, "seed": session.seed,
                   "taker_fee": s.exchange.taker_fee, "maker_fee": s.exchange.maker_fee,
                   "trading": s.trading.model_dump(), "risk": s.risk.model_dump(),
                   "model": s.model.model_dump()},
        "definitions": {"sharpe_sortino": "daily UTC returns, annualized x sqrt(365)",
                        "max_drawdown": "fraction of the running peak",
                        "profit_factor": "sum of winning net PnL / |sum of losing net PnL|",
                        "avg_exposure": "mean gross notional / equity over all minutes",
                        "buy_and_hold": "equal weight, 1x, taker fee in and out, no funding"},
        "runs": runs,
    }  # fmt: skip


def symbols_of(names: Sequence[str] | None) -> list[str] | None:
    """`--symbols BTCUSDT,ETHUSDT` or space separated -> upper-case list."""
    if not names:
        return None
    return [p.strip().upper() for n in names for p in n.split(",") if p.strip()]
