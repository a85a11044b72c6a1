"""The daily report, computed from its inputs (pure: no Redis, no clock, no files).

Why it is pure: the same numbers must come out of the live reporter, `slt report` and a
test fed a hand-computed set of trades, so gathering (services/reporter/daily.py) and
computing (here) are kept apart.  Money is summed in `Decimal` so a report never shows
float noise; the equity curve is kept in floats because it is only drawn and compared.

Conventions (stated once, used everywhere):
- A trade belongs to the UTC day of its *exit* time; its PnL is `net_pnl` as the
  position controller recorded it (gross - fees + funding), never recomputed here.
- A win is `net_pnl > 0`, a loss `net_pnl < 0`; a breakeven trade counts in the total
  (and so lowers the win rate) but in neither average.
- The equity curve is realized equity: the day's opening equity, then one point per
  trade exit.  Max drawdown is the largest fall from a running peak on that curve
  (the opening point included).  When the opening equity is unknown the curve starts at
  0 (cumulative PnL) and the drawdown has no percentage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

DAY_MS = 86_400_000
ZERO = Decimal(0)


class TradeLike(Protocol):
    """What the report reads of a closed trade (shared.models.ClosedTrade fits)."""

    trade_id: str
    symbol: str
    side: str
    exit_time: int
    fees: Any
    funding: Any
    gross_pnl: Any
    net_pnl: Any
    leverage: Any


def dec(value: Any) -> Decimal:
    """A Decimal from a Decimal, int, float (via repr) or numeric string; else 0."""
    if isinstance(value, Decimal):
        return value
    if value is None or value == "" or isinstance(value, bool):
        return ZERO
    try:
        out = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except ArithmeticError:
        return ZERO
    return out if out.is_finite() else ZERO


# ---- days ------------------------------------------------------------------------------


def utc_day(ms: int) -> str:
    """`YYYY-MM-DD` of an epoch-ms time, in UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch ms. Raises ValueError on a bad date."""
    d = date.fromisoformat(day)
    start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    return start, start + DAY_MS


def next_day(day: str, n: int = 1) -> str:
    return (date.fromisoformat(day) + timedelta(days=n)).isoformat()


class DayBoundary:
    """Detects finished UTC days from event times (a replay at 600x gets one per
    simulated day).  Pure: feed it every event time seen; it answers which days are
    complete.  A day D is complete once an event at or after D+1 00:00 + `grace_ms`
    arrives (the grace lets trades of the last minute reach their stream).

    Start: `current` is the day after the last one reported (so a reporter that was down
    across midnight still reports it), else the day of the first event.  Catch-up is
    bounded to `max_catchup` days.  If event time jumps back by more than a day (a new
    replay against the same Redis) the tracker restarts at the new timeline.
    """

    def __init__(
        self, last_reported: str | None = None, *, grace_ms: int = 60_000, max_catchup: int = 7
    ) -> None:
        self.current: str | None = next_day(last_reported) if last_reported else None
        self.grace_ms = grace_ms
        self.max_catchup = max_catchup

    def observe(self, event_time_ms: int) -> list[str]:
        """Days completed by this event, oldest first (usually none, at midnight one)."""
        settled = utc_day(event_time_ms - self.grace_ms)
        if self.current is None or settled < next_day(self.current, -1):
            self.current = settled
            return []
        if settled <= self.current:
            return []
        done: list[str] = []
        day = max(self.current, next_day(settled, -self.max_catchup))
        while day < settled:
            done.append(day)
            day = next_day(day)
        self.current = settled
        return done


# ---- report pieces ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeStats:
    count: int = 0
    wins: int = 0
    losses: int = 0
    win_rate: Decimal | None = None
    avg_win: Decimal | None = None
    avg_loss: Decimal | None = None
    gross_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO
    net_pnl: Decimal = ZERO
    best: Decimal | None = None
    worst: Decimal | None = None


@dataclass(frozen=True, slots=True)
class SymbolStats:
    symbol: str
    stats: TradeStats


@dataclass(frozen=True, slots=True)
class PositionView:
    """One open position (a `position:<SYM>` hash plus the last price as the mark)."""

    symbol: str
    size: Decimal
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal
    leverage: Decimal

    @property
    def notional(self) -> Decimal:
        price = self.mark_price if self.mark_price > 0 else self.entry_price
        return abs(self.size) * price


@dataclass(frozen=True, slots=True)
class Exposure:
    open_positions: int = 0
    notional: Decimal = ZERO
    ratio: Decimal | None = None  # notional / equity
    open_max_leverage: Decimal = ZERO
    trade_max_leverage: Decimal = ZERO
    trade_avg_leverage: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_at: str | None = None


@dataclass(frozen=True, slots=True)
class FeedHealth:
    """Feed counters over the day (end minus start-of-day baseline where known)."""

    reconnects: int = 0
    rest_fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> activations
    renewals_ok: int = 0
    renewals_failed: int = 0
    bad_messages: int = 0

    @property
    def renewal_success_rate(self) -> float | None:
        total = self.renewals_ok + self.renewals_failed
        return self.renewals_ok / total if total else None


@dataclass(frozen=True, slots=True)
class AlertRecord:
    time: int
    alert_id: str
    state: str  # raised | resolved
    message: str
    severity: str = "critical"


@dataclass(frozen=True, slots=True)
class EquityCurve:
    points: tuple[tuple[int, float], ...]
    start: Decimal | None
    end: Decimal | None
    max_drawdown: Decimal
    max_drawdown_pct: Decimal | None


@dataclass(frozen=True, slots=True)
class DailyReport:
    date: str
    generated_at: int
    trades: TradeStats
    per_symbol: tuple[SymbolStats, ...]
    unrealized_pnl: Decimal
    equity: EquityCurve
    exposure: Exposure
    model: ModelInfo | None
    feed: FeedHealth
    alerts: tuple[AlertRecord, ...]

    @property
    def realized_pnl(self) -> Decimal:
        return self.trades.net_pnl

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Decimals as strings, so no precision is lost on the wire)."""
        out = _jsonable(asdict(self))
        out["realized_pnl"] = str(self.realized_pnl)
        out["feed"]["renewal_success_rate"] = self.feed.renewal_success_rate
        return out

    def summary(self) -> dict[str, Any]:
        """The short JSON a webhook receives (and the reports stream carries)."""
        t = self.trades
        return _jsonable(
            {
                "date": self.date,
                "realized_pnl": self.realized_pnl,
                "unrealized_pnl": self.unrealized_pnl,
                "fees": t.fees,
                "funding": t.funding,
                "trades": t.count,
                "win_rate": t.win_rate,
                "max_drawdown": self.equity.max_drawdown,
                "max_drawdown_pct": self.equity.max_drawdown_pct,
                "model_version": self.model.version if self.model else None,
                "alerts": sum(1 for a in self.alerts if a.state == "raised"),
            }
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ---- computations -----------------------------------------------------------------------


def trade_stats(trades: Iterable[TradeLike]) -> TradeStats:
    nets = [(dec(t.net_pnl), t) for t in trades]
    if not nets:
        return TradeStats()
    wins = [n for n, _ in nets if n > 0]
    losses = [n for n, _ in nets if n < 0]
    return TradeStats(
        count=len(nets),
        wins=len(wins),
        losses=len(losses),
        win_rate=Decimal(len(wins)) / Decimal(len(nets)),
        avg_win=sum(wins, ZERO) / len(wins) if wins else None,
        avg_loss=sum(losses, ZERO) / len(losses) if losses else None,
        gross_pnl=sum((dec(t.gross_pnl) for _, t in nets), ZERO),
        fees=sum((dec(t.fees) for _, t in nets), ZERO),
        funding=sum((dec(t.funding) for _, t in nets), ZERO),
        net_pnl=sum((n for n, _ in nets), ZERO),
        best=max(n for n, _ in nets),
        worst=min(n for n, _ in nets),
    )


def per_symbol(trades: Sequence[TradeLike]) -> tuple[SymbolStats, ...]:
    symbols = sorted({t.symbol for t in trades})
    return tuple(SymbolStats(s, trade_stats(t for t in trades if t.symbol == s)) for s in symbols)


def max_drawdown(values: Iterable[Decimal]) -> tuple[Decimal, Decimal | None]:
    """(largest peak-to-trough fall, that fall / its peak) over a sequence of equities.
    The percentage is None when a peak is not positive (a PnL curve, not equity)."""
    peak: Decimal | None = None
    worst = ZERO
    worst_pct: Decimal | None = ZERO
    for v in values:
        if peak is None or v > peak:
            peak = v
        fall = peak - v
        if fall > worst:
            worst = fall
        if worst_pct is not None:
            worst_pct = max(worst_pct, fall / peak) if peak > 0 else None
    return worst, worst_pct


def equity_curve(
    day_start: int, start_equity: Decimal | None, trades: Sequence[TradeLike]
) -> EquityCurve:
    base = start_equity if start_equity is not None else ZERO
    values = [base]
    points = [(day_start, float(base))]
    for t in sorted(trades, key=lambda t: (t.exit_time, t.trade_id)):
        values.append(values[-1] + dec(t.net_pnl))
        points.append((int(t.exit_time), float(values[-1])))
    dd, dd_pct = max_drawdown(values)
    return EquityCurve(
        points=tuple(points),
        start=start_equity,
        end=values[-1] if start_equity is not None else None,
        max_drawdown=dd,
        max_drawdown_pct=dd_pct if start_equity is not None else None,
    )


def exposure(
    positions: Sequence[PositionView], trades: Sequence[TradeLike], equity: Decimal | None
) -> Exposure:
    open_pos = [p for p in positions if p.size != 0]
    notional = sum((p.notional for p in open_pos), ZERO)
    levs = [dec(t.leverage) for t in trades]
    return Exposure(
        open_positions=len(open_pos),
        notional=notional,
        ratio=notional / equity if equity and equity > 0 else None,
        open_max_leverage=max((p.leverage for p in open_pos), default=ZERO),
        trade_max_leverage=max(levs, default=ZERO),
        trade_avg_leverage=sum(levs, ZERO) / len(levs) if levs else None,
    )


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything a report is computed from, gathered by the caller."""

    date: str
    generated_at: int
    trades: Sequence[TradeLike]
    positions: Sequence[PositionView] = ()
    start_equity: Decimal | None = None
    model: ModelInfo | None = None
    feed: FeedHealth = field(default_factory=FeedHealth)
    alerts: Sequence[AlertRecord] = ()


def compute_report(inp: ReportInputs) -> DailyReport:
    """The report of one UTC day. Trades outside the day are ignored (callers may pass
    a superset)."""
    start, end = day_bounds(inp.date)
    trades = [t for t in inp.trades if start <= int(t.exit_time) < end]
    curve = equity_curve(start, inp.start_equity, trades)
    unrealized = sum((p.unrealized_pnl for p in inp.positions), ZERO)
    equity_now = curve.end + unrealized if curve.end is not None else None
    alerts = sorted((a for a in inp.alerts if start <= a.time < end), key=lambda a: a.time)
    return DailyReport(
        date=inp.date,
        generated_at=inp.generated_at,
        trades=trade_stats(trades),
        per_symbol=per_symbol(trades),
        unrealized_pnl=unrealized,
        equity=curve,
        exposure=exposure(inp.positions, trades, equity_now),
        model=inp.model,
        feed=inp.feed,
        alerts=tuple(alerts),
    )


async def build_report(redis: Any, keys: Any, day: str, **kwargs: Any) -> dict[str, Any]:
    """`slt report` entry point (shared/ops.py imports it from this module).  The Redis
    reads and file writes live in daily.py, imported here lazily so that this module
    stays pure; see `services.reporter.daily.build_report` for the arguments."""
    from services.reporter.daily import build_report as _build  # noqa: PLC0415

    return await _build(redis, keys, day, **kwargs)
