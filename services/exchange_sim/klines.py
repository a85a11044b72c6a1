"""Kline state of the simulator: the open candle, closed history, REST query, WS payloads.

WHY one module: the WebSocket stream, `GET /fapi/v1/klines` and the simulator's own record
(`/admin/closed_klines`) must agree to the last digit, so they share one store and one
formatter.

- Closed 1m bars live in a capped numpy array per symbol (`history_cap` rows; 88 bytes a
  row, so 200 symbols x 10,080 rows ~ 180 MB); the open candle is a small mutable object
  holding what the last update left.
- `plan_minute` precomputes every open-candle update of a minute for all symbols in one
  numpy pass; `Formatter.update_template` bakes a candle's constant fields into a per-minute
  template, so one update event is one bytes `%` with the ten numbers that move.
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
from decimal import Decimal
from typing import Any

import numpy as np

from .auth import ApiError, bad_param, opt_int
from .market.bar import Bar, bar_updates_many
from .specs import SymbolSpec

MINUTE_MS = 60_000
DECIMALS_KEPT = 8192  # remembered price Decimals per symbol
# columns of a closed row
T, O, H, L, C, V, Q, N, TV, TQ, F = range(11)  # noqa: E741 - Binance letters
INTERVALS_MIN = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "6h": 360, "8h": 480, "12h": 720, "1d": 1440,
}  # fmt: skip


@dataclass(slots=True)
class OpenBar:
    """The candle being formed: open time (-1: none), open, first trade id, and the
    template arguments of the last update applied (None: none yet this minute).

    WHY the update's arguments and not one field per column: applying an update is one
    attribute store of a tuple `plan_minute` already built; the row REST and the close
    need is assembled from it only when asked (`row()`)."""

    t: int = -1
    o: float = 0.0
    first_id: int = 1
    last: tuple[Any, ...] | None = None  # (E, L, c, h, l, v, n, q, V, Q), as `Update`

    def start(self, t: int, price: float, first_id: int) -> None:
        """A new candle at its open: O = H = L = C = price, no volume or trades yet."""
        self.t, self.o, self.first_id, self.last = t, price, first_id, None

    def row(self) -> tuple[Any, ...]:
        """The candle so far as a closed-row tuple (columns T, O, H, L, C, V, Q, N, ...)."""
        a, o = self.last, self.o
        if a is None:
            return (self.t, o, o, o, o, 0.0, 0.0, 0, 0.0, 0.0, self.first_id)
        return (self.t, o, a[3], a[4], a[2], a[5], a[7], a[6], a[8], a[9], self.first_id)


class Formatter:
    """Per-symbol number formats, built once.

    `event()` is the hot path (one call per kline message): a single bytes `%` operation on
    a per-symbol template formats every number at its precision in C, about twice as fast
    as building a dict and encoding it; `k()` is the readable reference it must equal.
    """

    __slots__ = ("p", "qty", "quote", "symbol", "_tpl", "_meta", "decimals")

    def __init__(self, spec: SymbolSpec) -> None:
        pp, qp = spec.price_precision, spec.quantity_precision
        self.symbol = spec.symbol
        # price -> Decimal(p(price)) for the engine: a symbol revisits the same ticks
        # (about 2/3 of synthetic update prices were seen in the hours before), and a
        # format + Decimal(str) is ~0.4 us, a tenth of what an update costs in all
        self.decimals: dict[float, Decimal] = {}
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
        # the same event with t, T, f and o filled per minute (`update_template`); the
        # other fields keep a second `%` for the per-update pass
        e = s.replace("%", "%%%%")
        p2, q2, c2 = (f"%{x}" for x in (pf, qf, cf))
        self._meta = (
            '{"e":"kline","E":%%d,"s":"' + e + '","k":{"t":%d,"T":%d,"s":"' + e + '","i":"1m",'
            '"f":%d,"L":%%d,"o":"' + pf + '","c":"' + p2 + '","h":"' + p2 + '","l":"' + p2 + '",'
            '"v":"' + q2 + '","n":%%d,"x":false,"q":"' + c2 + '","V":"' + q2 + '","Q":"' + c2 + '",'
            '"B":"0"}}'
        ).encode()

    def decimal_prices(self, prices: list[float]) -> list[Decimal]:
        """`Decimal(p(x))` for each price, remembered (cleared past `DECIMALS_KEPT`)."""
        cache = self.decimals
        out = list(map(cache.get, prices))
        for j, d in enumerate(out):
            if d is None:
                x = prices[j]
                out[j] = cache[x] = Decimal(self.p(x))
        if len(cache) > DECIMALS_KEPT:
            cache.clear()
        return out

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

    def update_template(self, t: int, o: float, first: int, stream: str | None = None) -> bytes:
        """Template of this minute's open-candle (`x:false`) events of the candle (t, o, first).

        `tpl % (E, L, c, h, l, v, n, q, V, Q)` == `event(row, False, E)` for that candle's
        rows; with `stream` it is wrapped as a combined-stream message (`wsconn.combined`).
        """
        body = self._meta % (t, t + MINUTE_MS - 1, first, o)
        if stream is None:
            return body
        return b'{"stream":"' + stream.replace("%", "%%").encode() + b'","data":' + body + b"}"

    def rest_row(self, r: tuple[float, ...] | np.ndarray, interval_ms: int) -> list[Any]:
        t = int(r[T])
        p, qty, quote = self.p, self.qty, self.quote
        return [
            t, p(r[O]), p(r[H]), p(r[L]), p(r[C]), qty(r[V]), t + interval_ms - 1,
            quote(r[Q]), int(r[N]), qty(r[TV]), quote(r[TQ]), "0",
        ]  # fmt: skip


# One open-candle update, ready to apply: (symbol index, the arguments of
# `Formatter.update_template(...) % args` = (E, L, c, h, l, v, n, q, V, Q), the last price
# as the engine takes it). `OpenBar.last` keeps the arguments: they are the candle so far.
Update = tuple[int, tuple[Any, ...], Decimal]


def plan_minute(
    t0: int, opened: list[tuple[int, Bar, int]], n: int, fmts: list[Formatter]
) -> dict[int, list[Update]]:
    """Every open-candle update of minute `t0`, by event time; per time in symbol order.

    `opened` is (symbol index, bar, first trade id) per symbol with a bar this minute.
    WHY precompute: 200 symbols x 10 updates is ~2,000 events a minute; the path, the pro
    rata taker volumes and the argument tuples come out of one numpy pass and `zip`s here
    instead of ~60 Python operations per event in the driver. Same values as applying
    `bar_updates(bar, n)` one point at a time: the taker split follows the rounded
    cumulative volume; at the bar's full volume it is the bar's own taker volumes.
    """
    if not opened:
        return {}
    bars = [b for _, b, _ in opened]
    paths = bar_updates_many(bars, n)
    f = np.array([(b.volume, b.taker_buy_volume, b.taker_buy_quote_volume) for b in bars])
    vol, tbv, tbq = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    exact = paths.cum_volume >= vol
    with np.errstate(divide="ignore", invalid="ignore"):
        share = paths.cum_volume / vol
    firsts = np.array([first for _, _, first in opened], dtype=np.int64)[:, None]
    cols = (
        paths.offset_ms + t0,  # E
        firsts + np.maximum(paths.cum_trades - 1, 0),  # L
        paths.price, paths.high, paths.low, paths.cum_volume, paths.cum_trades,
        paths.cum_quote, np.where(exact, tbv, tbv * share), np.where(exact, tbq, tbq * share),
    )  # fmt: skip
    offsets = paths.offset_ms
    if (offsets == offsets[0]).all() and (np.diff(offsets[0]) > 0).all():
        return _plan_by_column(opened, fmts, [c.T.tolist() for c in cols])
    return _plan_by_row(opened, fmts, [c.tolist() for c in cols])


def _plan_by_column(
    opened: list[tuple[int, Bar, int]], fmts: list[Formatter], cols: list[Any]
) -> dict[int, list[Update]]:
    """The usual case, every bar on the same offsets: one entry per offset, built by `zip`
    (tuples made in C, no Python loop per event)."""
    index = [i for i, _, _ in opened]
    caches = [fmts[i].decimals for i in index]
    price_str = [fmts[i].p for i in index]
    out: dict[int, list[Update]] = {}
    for e_col, l_col, c, h, lo, v, n, q, tv, tq in zip(*cols, strict=True):
        args = zip(e_col, l_col, c, h, lo, v, n, q, tv, tq, strict=True)
        prices = list(map(dict.get, caches, c))  # `Formatter.decimal_prices`, inlined
        for j, d in enumerate(prices):
            if d is None:
                x = c[j]
                prices[j] = caches[j][x] = Decimal(price_str[j](x))
        out[e_col[0]] = list(zip(index, args, prices, strict=True))
    for cache in caches:
        if len(cache) > DECIMALS_KEPT:
            cache.clear()
    return out


def _plan_by_row(
    opened: list[tuple[int, Bar, int]], fmts: list[Formatter], cols: list[Any]
) -> dict[int, list[Update]]:
    """Bars on different offsets (replayed data with odd close times): merge by time.
    Per time: symbol order, then path order (two points of one bar share a millisecond
    only when its span is shorter than the number of updates)."""
    out: dict[int, list[Update]] = {}
    for r, (i, _, _) in enumerate(opened):
        e_row, l_row, c, h, lo, v, n, q, tv, tq = (col[r] for col in cols)
        args = zip(e_row, l_row, c, h, lo, v, n, q, tv, tq, strict=True)
        prices = fmts[i].decimal_prices(c)
        for e, arg, dec in zip(e_row, args, prices, strict=True):
            out.setdefault(e, []).append((i, arg, dec))
    return out


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


def parse_query(
    interval: str, start: str | None, end: str | None, limit: str | None
) -> tuple[int, int | None, int | None, int]:
    """Validate REST kline parameters the way Binance answers bad ones."""
    if interval not in INTERVALS_MIN:
        raise ApiError(400, -1120, "Invalid interval.")
    lim = opt_int(limit, "limit")
    lim = 500 if lim is None else lim
    if not 1 <= lim <= 1500:
        raise bad_param("limit")
    s, e = opt_int(start, "startTime"), opt_int(end, "endTime")
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
