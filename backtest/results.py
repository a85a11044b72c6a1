"""Plain data of a backtest run: its configuration, the kline tuple the cores read, and
what a run returns (equity curve, trades, decisions, engine totals, counters)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np

from shared.config import Settings
from shared.models import ClosedTrade

MODES = ("fast", "full")


class BarKline(NamedTuple):
    """A closed kline as the cores read it: the fields of `shared.models.Kline` that
    `TraderCore.on_closed_kline` and `PositionControllerCore.on_kline` use, same names.
    WHY not `Kline`: its validation costs ~3 us per bar; the feed validated every bar once
    (data.py), as the live kline feed does before a kline reaches the cores."""

    symbol: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_volume: float
    closed: bool = True


@dataclass(frozen=True, slots=True)
class RunConfig:
    """settings: the same `Settings` the services load (risk, trading, model, fees).
    mode: "fast" skips bars that cannot change anything (watch.py), "full" ticks every bar
    of every open position and sweeps every `trading.position_check_interval`; both give
    the same trades (tested).  updates_per_minute: intra-bar ticks including the close,
    as the simulator's `updates_per_minute` (its driver's path: `bar_updates(bar, n - 1)`)."""

    settings: Settings
    equity: Decimal = Decimal(10_000)
    cold_start_days: float = 7.0
    mode: str = "fast"
    slippage_bps: Decimal = Decimal(1)
    funding_rate: Decimal = Decimal("0.0001")
    updates_per_minute: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.cold_start_days < 0 or self.updates_per_minute < 2 or self.equity <= 0:
            raise ValueError("need cold_start_days >= 0, updates_per_minute >= 2, equity > 0")


@dataclass(slots=True)
class RunResult:
    name: str
    start_index: int  # first traded minute of the feed
    times: np.ndarray  # minute ends (ms) of the equity samples
    equity: np.ndarray
    notional: np.ndarray  # gross open notional at each sample
    trades: list[ClosedTrade]
    decisions: Counter[str]  # reason -> count (taken, below_min_confidence, ...)
    rejects: list[Any]
    ledger: dict[str, Decimal]  # the engine's own totals (fees, funding, realized, ...)
    initial_equity: float = 10_000.0
    counters: dict[str, int] = field(default_factory=dict)
    learning: list[dict[str, Any]] = field(default_factory=list)  # cold start + retrains
