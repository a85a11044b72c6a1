"""Kline bars, their wire forms, the intra-bar price path, and the `Market` protocol.

Why floats: a market serves 200 symbols × days of bars and the backtest reads millions of them;
prices are stored as floats already rounded to the symbol's tick, so formatting one at the
symbol's precision (`price_str`) gives back exactly the exchange's string, and `decimal()` gives
the exact Decimal an order needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..specs import SymbolSpec

INTERVALS_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}  # fmt: skip
INTERVAL_NAMES = {v: k for k, v in INTERVALS_MS.items()}


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed kline. Prices are tick-rounded floats; volumes are step-rounded floats."""

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
    taker_buy_quote_volume: float
    price_precision: int = 2
    qty_precision: int = 3

    def price_str(self, x: float) -> str:
        return f"{x:.{self.price_precision}f}"

    def qty_str(self, x: float) -> str:
        return f"{x:.{self.qty_precision}f}"

    def quote_str(self, x: float) -> str:
        return f"{x:.{self.price_precision + self.qty_precision}f}"

    def decimal(self, x: float) -> Decimal:
        """Exact Decimal of a price field (e.g. `bar.decimal(bar.close)`)."""
        return Decimal(self.price_str(x))

    @property
    def interval_name(self) -> str:
        return INTERVAL_NAMES.get(self.close_time - self.open_time + 1, "1m")

    def rest_row(self) -> list[Any]:
        """The `/fapi/v1/klines` array for this bar."""
        return [
            self.open_time,
            self.price_str(self.open),
            self.price_str(self.high),
            self.price_str(self.low),
            self.price_str(self.close),
            self.qty_str(self.volume),
            self.close_time,
            self.quote_str(self.quote_volume),
            self.trades,
            self.qty_str(self.taker_buy_volume),
            self.quote_str(self.taker_buy_quote_volume),
            "0",
        ]

    def ws_kline(self, closed: bool = True, first_trade_id: int = 0) -> dict[str, Any]:
        """The `k` object of a `<symbol>@kline_<interval>` stream event."""
        return {
            "t": self.open_time,
            "T": self.close_time,
            "s": self.symbol,
            "i": self.interval_name,
            "f": first_trade_id,
            "L": first_trade_id + max(self.trades - 1, 0),
            "o": self.price_str(self.open),
            "c": self.price_str(self.close),
            "h": self.price_str(self.high),
            "l": self.price_str(self.low),
            "v": self.qty_str(self.volume),
            "n": self.trades,
            "x": closed,
            "q": self.quote_str(self.quote_volume),
            "V": self.qty_str(self.taker_buy_volume),
            "Q": self.quote_str(self.taker_buy_quote_volume),
            "B": "0",
        }

    def partial(self, update: BarUpdate) -> Bar:
        """The still-open candle as of one `bar_updates` point (taker split pro rata)."""
        share = update.cum_volume / self.volume if self.volume else 0.0
        return replace(
            self,
            close=update.price,
            high=update.high,
            low=update.low,
            volume=update.cum_volume,
            quote_volume=update.cum_quote,
            trades=update.cum_trades,
            taker_buy_volume=round(self.taker_buy_volume * share, self.qty_precision),
            taker_buy_quote_volume=round(
                self.taker_buy_quote_volume * share, self.price_precision + self.qty_precision
            ),
        )


class BarUpdate(NamedTuple):
    """One point of the intra-bar path: what an open-candle kline update shows."""

    offset_ms: int
    price: float
    cum_volume: float
    cum_quote: float
    cum_trades: int
    high: float
    low: float


def bar_updates(bar: Bar, n: int, tick: float | None = None) -> list[BarUpdate]:
    """A deterministic intra-bar path: `n` open-candle points, then the close.

    The path goes open → low → high → close for an up bar (open → high → low → close for a down
    bar), linearly between waypoints, so with n ≥ 3 both extremes are printed before the close.
    Returns n + 1 points; the last is at offset interval − 1 and equals the bar exactly (price,
    volume, trades, high, low). Volume and trades accumulate in proportion to elapsed points.
    Intermediate prices are rounded to `tick` (default: the bar's price precision).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    span = bar.close_time - bar.open_time
    up = bar.close >= bar.open
    waypoints = (
        [bar.open, bar.low, bar.high, bar.close] if up else [bar.open, bar.high, bar.low, bar.close]
    )
    pp, qp = bar.price_precision, bar.qty_precision
    out: list[BarUpdate] = []
    hi = lo = bar.open
    for k in range(n):
        raw = _path_price(waypoints, k, n)
        price = round(round(raw / tick) * tick, pp) if tick else round(raw, pp)
        hi, lo = max(hi, price), min(lo, price)
        frac = k / n
        out.append(
            BarUpdate(
                offset_ms=span * k // n,
                price=price,
                cum_volume=round(bar.volume * frac, qp),
                cum_quote=round(bar.quote_volume * frac, pp + qp),
                cum_trades=int(bar.trades * frac),
                high=hi,
                low=lo,
            )
        )
    out.append(
        BarUpdate(span, bar.close, bar.volume, bar.quote_volume, bar.trades, bar.high, bar.low)
    )
    return out


def _path_price(waypoints: list[float], k: int, n: int) -> float:
    """Price at step k of n on the piecewise-linear path through the four waypoints."""
    seg, t = _path_step(k, n)
    if seg < 0:
        return waypoints[0] if k == 0 else waypoints[3]
    return waypoints[seg] + (waypoints[seg + 1] - waypoints[seg]) * t


def _path_step(k: int, n: int) -> tuple[int, float]:
    """(segment, fraction along it) of step k of n; segment -1 means "no path" (n < 3).

    Depends on (k, n) only, which is what lets `bar_updates_many` share it across bars."""
    if n < 3:
        return -1, 0.0
    marks = [0, max(1, round(n / 3)), max(2, round(2 * n / 3)), n]
    for seg in range(3):
        a, b = marks[seg], marks[seg + 1]
        if k <= b:
            return seg, (k - a) / (b - a) if b > a else 1.0
    return 2, 1.0  # pragma: no cover - k < n <= marks[3]


class UpdatePaths(NamedTuple):
    """`bar_updates` of many bars at once: 2-D arrays, one row per bar, n + 1 columns.

    `[field][r, k]` equals `bar_updates(bars[r], n)[k].field` bit for bit."""

    offset_ms: np.ndarray  # int64
    price: np.ndarray
    cum_volume: np.ndarray
    cum_quote: np.ndarray
    cum_trades: np.ndarray  # int64
    high: np.ndarray
    low: np.ndarray


def bar_updates_many(bars: Sequence[Bar], n: int, tick: float | None = None) -> UpdatePaths:
    """`bar_updates` for every bar of a minute in one numpy pass (the simulator's hot path).

    WHY exact and not just close: the WebSocket bytes must not depend on which of the two
    functions built them. The path arithmetic is the same IEEE operations in the same order;
    Python's `round(x, nd)` is reproduced by `round_like_python`.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    m = len(bars)
    f = np.array(
        [(b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.trades) for b in bars],
        dtype=np.float64,
    ).reshape(m, 7)
    ints = np.array(
        [(b.close_time - b.open_time, b.price_precision, b.qty_precision) for b in bars],
        dtype=np.int64,
    ).reshape(m, 3)
    span, pp, qp = ints[:, 0:1], ints[:, 1:2], ints[:, 2:3]
    o, hi_, lo_, c, vol, quote, trades = (f[:, j : j + 1] for j in range(7))
    up = c >= o
    way = np.hstack([o, np.where(up, lo_, hi_), np.where(up, hi_, lo_), c])  # (m, 4)
    steps = [_path_step(k, n) for k in range(n)]
    if n < 3:  # no path: the open, then the close
        raw = np.empty((m, n))
        raw[:, :1], raw[:, 1:] = way[:, :1], way[:, 3:]
    else:
        seg = np.array([s for s, _ in steps], dtype=np.int64)
        t = np.array([t for _, t in steps], dtype=np.float64)
        wa, wb = way[:, seg], way[:, seg + 1]
        raw = wa + (wb - wa) * t
    if tick:
        price = round_like_python(np.rint(raw / tick) * tick, pp)
    else:
        price = round_like_python(raw, pp)
    running = np.maximum.accumulate(np.hstack([o, price]), axis=1)[:, 1:]
    falling = np.minimum.accumulate(np.hstack([o, price]), axis=1)[:, 1:]
    frac = np.array([k / n for k in range(n)], dtype=np.float64)
    ks = np.arange(n, dtype=np.int64)
    return UpdatePaths(
        offset_ms=np.hstack([span * ks // n, span]) if n else span.copy(),
        price=np.hstack([price, c]),
        cum_volume=np.hstack([round_like_python(vol * frac, qp), vol]),
        cum_quote=np.hstack([round_like_python(quote * frac, pp + qp), quote]),
        cum_trades=np.hstack([np.trunc(trades * frac), trades]).astype(np.int64),
        high=np.hstack([running, hi_]),
        low=np.hstack([falling, lo_]),
    )


_POW10 = np.array([float(10**k) for k in range(23)])  # exact doubles


def round_like_python(x: np.ndarray, ndigits: np.ndarray | int) -> np.ndarray:
    """Elementwise `round(x, ndigits)` exactly as Python rounds floats (0 <= ndigits <= 22).

    Python rounds the exact binary value to `ndigits` decimals (half to even) and returns
    the double nearest that decimal. `rint(x * 10**nd) / 10**nd` gives the same double
    unless the product's own rounding moved it across a half: those few elements (within
    a few ulps of a half, or too large for the test) are redone by Python's `round`.
    """
    nd = np.broadcast_to(np.asarray(ndigits, dtype=np.int64), x.shape)
    if nd.size and not (0 <= nd.min() and nd.max() < len(_POW10)):  # no exact scale
        pairs = zip(np.ravel(x).tolist(), nd.flat, strict=True)
        return np.array([round(a, int(d)) for a, d in pairs]).reshape(x.shape)
    scale = _POW10[nd]
    y = x * scale
    out = np.rint(y) / scale
    dist = np.abs(np.abs(y - np.trunc(y)) - 0.5)
    risky = (dist <= 8 * np.spacing(np.abs(y))) | ~(np.abs(y) < 2.0**50)
    if risky.any():
        for idx in zip(*np.nonzero(risky), strict=True):
            out[idx] = round(float(x[idx]), int(nd[idx]))
    return out


@runtime_checkable
class Market(Protocol):
    """What the protocol layer and the backtest need from a source of bars."""

    interval_ms: int
    start_ms: int

    @property
    def symbols(self) -> list[str]: ...

    @property
    def end_ms(self) -> int | None: ...

    def specs(self) -> dict[str, SymbolSpec]: ...

    def bar(self, symbol: str, index: int) -> Bar | None: ...

    def index_at(self, ts_ms: int) -> int: ...

    def bars_until(self, end_ms: int, start_ms: int | None = None) -> Iterator[Bar]: ...

    def klines(
        self, symbol: str, start_ms: int | None = None, end_ms: int | None = None, limit: int = 500
    ) -> list[Bar]: ...


class MarketBase:
    """Shared index arithmetic and iteration on top of `bar(symbol, index)`."""

    interval_ms: int
    start_ms: int
    _symbols: list[str]

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    @property
    def end_ms(self) -> int | None:
        return None

    def bar(self, symbol: str, index: int) -> Bar | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def index_at(self, ts_ms: int) -> int:
        """Index of the bar whose [open, close] contains `ts_ms` (may be negative)."""
        return (ts_ms - self.start_ms) // self.interval_ms

    def open_time(self, index: int) -> int:
        return self.start_ms + index * self.interval_ms

    def bars_until(self, end_ms: int, start_ms: int | None = None) -> Iterator[Bar]:
        """Bars closed before `end_ms` (close_time < end_ms), time-major, symbols in order."""
        first = max(0, self.index_at(start_ms if start_ms is not None else self.start_ms))
        stop = self.index_at(end_ms)  # bars with index < stop close before end_ms
        if self.end_ms is not None:
            stop = min(stop, self.index_at(self.end_ms - 1) + 1)
        for i in range(first, stop):
            for s in self._symbols:
                b = self.bar(s, i)
                if b is not None:
                    yield b

    def klines(
        self, symbol: str, start_ms: int | None = None, end_ms: int | None = None, limit: int = 500
    ) -> list[Bar]:
        """Bars with open_time in [start_ms, end_ms] (newest `limit` when start is None).

        The bar containing `end_ms` is included even if it is still forming; callers showing
        a live candle replace it with `bar.partial(...)`.
        """
        limit = max(1, min(int(limit), 1500))
        if end_ms is None:
            end_ms = self.end_ms - 1 if self.end_ms is not None else self.start_ms
        last = self.index_at(end_ms)
        first = max(0, self.index_at(start_ms) if start_ms is not None else last - limit + 1)
        if start_ms is not None and self.open_time(first) < start_ms:
            first += 1
        out: list[Bar] = []
        for i in range(first, last + 1):
            b = self.bar(symbol, i)
            if b is not None:
                out.append(b)
                if len(out) >= limit:
                    break
        return out
