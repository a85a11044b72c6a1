"""Kline state of the simulator: the open candle, closed history, REST query, WS payloads.

WHY one module: the WebSocket stream, `GET /fapi/v1/klines` and the simulator's own record
(`/admin/closed_klines`) must agree to the last digit, so they share one store and one
formatter.

- Closed 1m bars live in a capped numpy array per symbol (`history_cap` rows; 80 bytes a
  row, so 200 symbols x 10,080 rows ~ 160 MB); the open candle is a small mutable object.
- Numbers are floats inside (tick/step-rounded by the market) and strings on the wire,
  formatted at the symbol's precision: prices `pricePrecision`, volumes
  `quantityPrecision`, quote volumes `pricePrecision + quantityPrecision` (as the market's
  `Bar` formats them, and as Binance's files show: BTCUSDT 2/3/5).
- REST semantics as Binance: open time >= startTime and <= endTime; with only startTime the
  first `limit` from there, with only endTime (or neither) the last `limit`; the open candle
  is the last row when in range; limit default 500, max 1500. Intervals that are whole
  minutes up to 1d are aggregated from 1m bars (epoch-aligned, as Binance aligns them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .auth import ApiError, bad_param
from .specs import SymbolSpec

MINUTE_MS = 60_000
# columns of a closed row
T, O, H, L, C, V, Q, N, TV, TQ, F = range(11)  # noqa: E741 - Binance letters
INTERVALS_MIN = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "8h": 480, "12h": 720, "1d": 1440,
}  # fmt: skip


@dataclass(slots=True)
class OpenBar:
    """The candle being formed: values so far, as the last update left them."""

    t: int = -1
    o: float = 0.0
    h: float = 0.0
    l: float = 0.0  # noqa: E741 - Binance's field letter
    c: float = 0.0
    v: float = 0.0
    q: float = 0.0
    n: int = 0
    tv: float = 0.0  # taker buy base volume so far
    tq: float = 0.0  # taker buy quote volume so far
    first_id: int = 1  # first trade id of this candle

    def row(self) -> tuple[float, ...]:
        return (self.t, self.o, self.h, self.l, self.c, self.v, self.q, self.n, self.tv, self.tq,
                self.first_id)  # fmt: skip


class Formatter:
    """Per-symbol number formats, built once.

    `event()` is the hot path (one call per kline message): a single bytes `%` operation on
    a per-symbol template formats every number at its precision in C, about twice as fast
    as building a dict and encoding it; `k()` is the readable reference it must equal.
    """

    __slots__ = ("p", "qty", "quote", "symbol", "_tpl")

    def __init__(self, spec: SymbolSpec) -> None:
        pp, qp = spec.price_precision, spec.quantity_precision
        self.symbol = spec.symbol
        self.p = f"{{:.{pp}f}}".format
        self.qty = f"{{:.{qp}f}}".format
        self.quote = f"{{:.{pp + qp}f}}".format
        s, pf, qf, cf = spec.symbol, f"%.{pp}f", f"%.{qp}f", f"%.{pp + qp}f"
        self._tpl = (
            '{"e":"kline","E":%d,"s":"' + s + '","k":{"t":%d,"T":%d,"s":"' + s + '","i":"1m",'
            '"f":%d,"L":%d,"o":"' + pf + '","c":"' + pf + '","h":"' + pf + '","l":"' + pf + '",'
            '"v":"' + qf + '","n":%d,"x":%b,"q":"' + cf + '","V":"' + qf + '","Q":"' + cf + '",'
            '"B":"0"}}'
        ).encode()

    def k(self, r: tuple[float, ...] | np.ndarray, closed: bool) -> dict[str, Any]:
        """The `k` object of a kline event, key for key as Binance documents it."""
        t = int(r[T])
        n = int(r[N])
        first = int(r[F])
        p, qty, quote = self.p, self.qty, self.quote
        return {
            "t": t, "T": t + MINUTE_MS - 1, "s": self.symbol, "i": "1m",
            "f": first, "L": first + max(n - 1, 0),
            "o": p(r[O]), "c": p(r[C]), "h": p(r[H]), "l": p(r[L]),
            "v": qty(r[V]), "n": n, "x": closed, "q": quote(r[Q]),
            "V": qty(r[TV]), "Q": quote(r[TQ]), "B": "0",
        }  # fmt: skip

    def event(self, r: tuple[float, ...] | np.ndarray, closed: bool, event_ms: int) -> bytes:
        """The whole kline event as JSON bytes (== orjson of `{"e","E","s","k": k(r)}`)."""
        t, n, first = int(r[T]), int(r[N]), int(r[F])
        return self._tpl % (
            event_ms, t, t + MINUTE_MS - 1, first, first + (n - 1 if n > 1 else 0),
            r[O], r[C], r[H], r[L], r[V], n, b"true" if closed else b"false", r[Q], r[TV], r[TQ],
        )  # fmt: skip

    def rest_row(self, r: tuple[float, ...] | np.ndarray, interval_ms: int) -> list[Any]:
        t = int(r[T])
        p, qty, quote = self.p, self.qty, self.quote
        return [
            t, p(r[O]), p(r[H]), p(r[L]), p(r[C]), qty(r[V]), t + interval_ms - 1,
            quote(r[Q]), int(r[N]), qty(r[TV]), quote(r[TQ]), "0",
        ]  # fmt: skip


class Series:
    """Closed 1m rows of one symbol, oldest first, capped at `cap` rows."""

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 1)
        self._a = np.zeros((min(self.cap, 1024), 11), dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, row: tuple[float, ...]) -> None:
        if self._n == len(self._a):
            if self._n >= self.cap:
                keep = self.cap * 3 // 4  # drop the oldest quarter in one move
                self._a[:keep] = self._a[self._n - keep : self._n]
                self._n = keep
            else:
                grown = np.zeros((min(self.cap, len(self._a) * 2), 11), dtype=np.float64)
                grown[: self._n] = self._a[: self._n]
                self._a = grown
        self._a[self._n] = row
        self._n += 1

    @property
    def rows(self) -> np.ndarray:
        return self._a[: self._n]


def _opt_int(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise bad_param(name)
    return int(raw)


def parse_query(
    interval: str, start: str | None, end: str | None, limit: str | None
) -> tuple[int, int | None, int | None, int]:
    """Validate REST kline parameters the way Binance answers bad ones."""
    if interval not in INTERVALS_MIN:
        raise ApiError(400, -1120, "Invalid interval.")
    lim = _opt_int(limit, "limit")
    lim = 500 if lim is None else lim
    if not 1 <= lim <= 1500:
        raise bad_param("limit")
    s, e = _opt_int(start, "startTime"), _opt_int(end, "endTime")
    if s is not None and e is not None and s > e:
        raise ApiError(400, -1023, "Start time is greater than end time.")
    return INTERVALS_MIN[interval] * MINUTE_MS, s, e, lim


def aggregate(rows: np.ndarray, interval_ms: int) -> np.ndarray:
    """Fold 1m rows into epoch-aligned `interval_ms` rows (open first, close last...)."""
    if interval_ms == MINUTE_MS or len(rows) == 0:
        return rows
    keys = (rows[:, T] // interval_ms).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(rows)] - 1
    out = np.empty((len(starts), 11), dtype=np.float64)
    out[:, T] = keys[starts] * interval_ms
    out[:, O] = rows[starts, O]
    out[:, C] = rows[ends, C]
    out[:, H] = np.maximum.reduceat(rows[:, H], starts)
    out[:, L] = np.minimum.reduceat(rows[:, L], starts)
    for col in (V, Q, N, TV, TQ):
        out[:, col] = np.add.reduceat(rows[:, col], starts)
    out[:, F] = rows[starts, F]
    return out


def select(rows: np.ndarray, start: int | None, end: int | None, limit: int) -> np.ndarray:
    """Binance's window rule on rows sorted by open time."""
    times = rows[:, T]
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(rows) if end is None else int(np.searchsorted(times, end, side="right"))
    if start is not None:
        return rows[lo : min(hi, lo + limit)]
    return rows[max(lo, hi - limit) : hi]


def query(
    series: Series, open_bar: OpenBar | None, interval_ms: int, start: int | None,
    end: int | None, limit: int,
) -> np.ndarray:  # fmt: skip
    """Rows for `GET /fapi/v1/klines`: closed history plus the open candle, then the window."""
    base = series.rows
    if open_bar is not None and open_bar.t >= 0:
        base = np.vstack([base, np.asarray(open_bar.row(), dtype=np.float64)])
    if interval_ms != MINUTE_MS and len(base):
        # only the 1m rows that can feed the requested window are folded
        lo_t = -np.inf if start is None else (start // interval_ms) * interval_ms
        hi_t = np.inf if end is None else end + interval_ms
        times = base[:, T]
        need = (limit + 1) * (interval_ms // MINUTE_MS)
        a = int(np.searchsorted(times, lo_t, side="left"))
        b = int(np.searchsorted(times, hi_t, side="left"))
        if start is None:
            a = max(a, b - need)
        else:
            b = min(b, a + need)
        base = aggregate(base[a:b], interval_ms)
    return select(base, start, end, limit)
