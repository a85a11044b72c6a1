"""Kline files -> `BarFeed`, the minute grid the backtest walks.

Formats: Binance public-data CSVs (monthly or daily archives, with or without the header
row, optionally gzipped) and `/fapi/v1/klines` JSON arrays.  They are read by the
simulator's own loader (`services.exchange_sim.market.replay`): one kline parser, and a file
the backtest accepts is a file the simulator replays, with the same inferred tick/lot specs
(so the broker's engine accepts the prices the data prints).  `load_feed(..., cache=)`
keeps the parsed files in a `KlineCache` (`slt backtest` does, under var/cache/klines).

Layout in memory: one float64 cube `(minutes, symbols, 9)` with the columns of `COLUMNS`
and NaN where a symbol has no bar.  WHY a cube: the loop reads one minute of every symbol
with a single `cube[k].tolist()`, ~0.1 us per bar, instead of indexing numpy scalars per
field; and "the loop at minute k reads only `cube[k]`" is easy to check (the no-look-ahead
test wraps the cube in an accessor that records the highest index read).

Bars that cannot be real (high < low, a non-positive price, a negative volume, NaN) are
dropped here and counted, as the live kline feed drops malformed klines before the cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.exchange_sim.market import ReplayFormatError, ReplayMarket, parse_name
from services.exchange_sim.market.bar import INTERVALS_MS
from services.exchange_sim.market.kline_cache import KlineCache
from services.exchange_sim.specs import SymbolSpec
from services.trader.labels import Bars

COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "trades",
           "taker_buy_volume", "taker_buy_quote_volume")  # fmt: skip
OPEN, HIGH, LOW, CLOSE, VOL, QVOL, TRADES, TBV, TBQ = range(len(COLUMNS))
_REPLAY_KEYS = ("o", "h", "l", "c", "v", "q", "n", "tv", "tq")
_SUFFIXES = (".csv", ".csv.gz", ".json", ".json.gz")
DAY_MS = 86_400_000


class DataError(ValueError):
    """Input data the backtest cannot use; `path` names the offending input if any."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason, self.path = reason, path
        super().__init__(f"{path}: {reason}" if path else reason)


def parse_time(text: str | None) -> int | None:
    """'2023-07-20', '2023-07-20T12:00' (UTC) or epoch ms -> epoch ms; None passes through."""
    if text is None or text == "":
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"bad time {text!r}: use YYYY-MM-DD[THH:MM] (UTC) or epoch ms") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def find_files(paths: Iterable[str | Path], interval: str = "1m") -> list[Path]:
    """Kline files named by `paths` (files or directories, searched recursively) whose
    name says `interval` or no interval; other intervals (a 5m file beside the 1m ones)
    are left out, since one replay runs one interval."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            cands = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(_SUFFIXES))
        elif p.is_file():
            cands = [p]
        else:
            raise DataError("no such file or directory", str(p))
        for q in cands:
            try:
                _, iv = parse_name(q)
            except ReplayFormatError:
                if p.is_file():
                    raise DataError("file name must look like SYMBOL-1m[-YYYY-MM].csv[.gz]"
                                    " or .json", str(q)) from None  # fmt: skip
                continue
            if iv is None or iv == INTERVALS_MS[interval]:
                out.append(q)
    if not out:
        raise DataError(f"no {interval} kline files in {', '.join(map(str, paths))}")
    return sorted(set(out))


def load_market(
    paths: Iterable[str | Path],
    symbols: Sequence[str] | None = None,
    interval: str = "1m",
    cache: KlineCache | None = None,
) -> ReplayMarket:
    """The simulator's ReplayMarket over the files (several months of a symbol merge);
    `cache` keeps parsed files between runs (`services.exchange_sim.market.kline_cache`)."""
    files = find_files(paths, interval)
    if symbols:
        wanted = {s.upper() for s in symbols}
        files = [f for f in files if parse_name(f)[0] in wanted]
        found = {parse_name(f)[0] for f in files}
        if wanted - found:
            raise DataError(f"no data for {', '.join(sorted(wanted - found))}")
    try:
        return ReplayMarket.from_files(files, cache)
    except ReplayFormatError as exc:
        raise DataError(exc.reason, exc.path) from None
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _valid(cols: dict[str, np.ndarray]) -> np.ndarray:
    o, h, lo, c, v = (cols[k] for k in ("o", "h", "l", "c", "v"))
    with np.errstate(invalid="ignore"):
        ok = (lo > 0) & (lo <= np.minimum(o, c)) & (np.maximum(o, c) <= h) & np.isfinite(h)
        ok &= (v >= 0) & np.isfinite(v)
    return ok


def _union(times: list[np.ndarray]) -> np.ndarray:
    """Sorted distinct open times of several sorted arrays.  A stable sort merges the
    sorted runs in O(n log runs): ~40x faster than np.unique on a year of 10 symbols."""
    t = np.sort(np.concatenate(times), kind="stable")
    return t[np.concatenate(([True], t[1:] != t[:-1]))] if len(t) else t


def _fill(dest: np.ndarray, at: np.ndarray, cols: dict[str, np.ndarray], ok: Any) -> None:
    """One symbol's (minutes, 9) plane of the cube: its bars at grid rows `at`, NaN
    elsewhere.  WHY not np.full(nan) first: the cube is written once, not twice (a year of
    10 symbols is ~380 MB), and a symbol whose bars are one run of the grid (the usual
    case) is filled through a slice instead of a fancy index."""
    n = len(at)
    if n and at[-1] - at[0] + 1 == n:
        a0, a1 = int(at[0]), int(at[-1]) + 1
        dest[:a0] = np.nan
        dest[a1:] = np.nan
        rows: Any = slice(a0, a1)
    else:
        dest[:] = np.nan
        rows = at
    for i, k in enumerate(_REPLAY_KEYS):
        col = np.asarray(cols[k], np.float64)
        dest[rows, i] = col if ok is None else col[ok]


@dataclass(slots=True)
class BarFeed:
    """Every symbol's bars on one time grid (see module doc)."""

    symbols: tuple[str, ...]
    specs: dict[str, SymbolSpec]
    interval_ms: int
    times: np.ndarray  # int64 open times, strictly increasing
    cube: Any  # (len(times), len(symbols), 9) float64, NaN = no bar; or an accessor
    dropped: dict[str, int] = field(default_factory=dict)  # invalid bars left out
    estimated: tuple[str, ...] = ()  # symbols whose aux columns were estimated

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def from_market(
        cls, market: ReplayMarket, start_ms: int | None = None, end_ms: int | None = None
    ) -> BarFeed:
        """Bars with open time in [start_ms, end_ms) of every symbol of `market`."""
        return cls.from_columns(
            {s: market.arrays(s) for s in market.symbols}, market.specs(), market.interval_ms,
            start_ms, end_ms, tuple(market.estimated),
        )  # fmt: skip

    @classmethod
    def from_columns(
        cls,
        columns: dict[str, dict[str, np.ndarray]],
        specs: dict[str, SymbolSpec],
        interval_ms: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
        estimated: tuple[str, ...] = (),
    ) -> BarFeed:
        """From ReplayMarket-style columns (open_time, o, h, l, c, v, q, n, tv, tq).  The
        cube is filled column by column: no second full copy of the bars (a year of 10
        symbols is ~380 MB per copy)."""
        symbols = tuple(sorted(columns))
        if not symbols:
            raise DataError("no symbols")
        kept, dropped = {}, {}
        lo = -math.inf if start_ms is None else start_ms
        hi = math.inf if end_ms is None else end_ms
        for s in symbols:
            cols = columns[s]
            ot = np.asarray(cols["open_time"], dtype=np.int64)
            in_window = (ot >= lo) & (ot < hi)
            ok = _valid(cols) & in_window
            dropped[s] = int((in_window & ~ok).sum())
            kept[s] = (ot[ok], None if ok.all() else ok)
        times = _union([t for t, _ in kept.values()])
        if len(times) == 0:
            raise DataError("no bars in the requested window")
        cube = np.empty((len(times), len(symbols), len(COLUMNS)))
        for j, s in enumerate(symbols):
            t, ok = kept[s]
            _fill(cube[:, j], np.searchsorted(times, t), columns[s], ok)
        return cls(symbols, {s: specs[s] for s in symbols}, int(interval_ms), times, cube,
                   {s: n for s, n in dropped.items() if n}, estimated)  # fmt: skip

    def index_at(self, time_ms: int) -> int:
        """First grid index with open time >= time_ms (len(self) if none)."""
        return int(np.searchsorted(self.times, time_ms))

    def history(self, stop: int) -> dict[str, Bars]:
        """Each symbol's bars before grid index `stop`, as the trader's `Bars` (cold-start
        labelling).  Reads `cube[:stop]` only."""
        block = np.asarray(self.cube[:stop])
        out: dict[str, Bars] = {}
        for j, s in enumerate(self.symbols):
            rows = block[:, j, :]
            have = ~np.isnan(rows[:, OPEN])
            if not have.any():
                continue
            r = rows[have]
            out[s] = Bars(self.times[:stop][have], r[:, OPEN], r[:, HIGH], r[:, LOW], r[:, CLOSE],
                          r[:, VOL], r[:, QVOL], r[:, TRADES], r[:, TBV])  # fmt: skip
        return out

    def closes(self) -> np.ndarray:
        """(minutes, symbols) closes, forward-filled (NaN before a symbol's first bar).
        For baselines computed after the run, never for decisions."""
        c = np.array(self.cube[:, :, CLOSE], dtype=np.float64)
        for j in range(c.shape[1]):
            col = c[:, j]
            have = ~np.isnan(col)
            idx = np.where(have, np.arange(len(col)), 0)
            np.maximum.accumulate(idx, out=idx)
            c[:, j] = np.where(np.isnan(col[idx]), np.nan, col[idx])
        return c


def load_feed(
    paths: Iterable[str | Path],
    symbols: Sequence[str] | None = None,
    start: str | int | None = None,
    end: str | int | None = None,
    interval: str = "1m",
    cache: KlineCache | None = None,
) -> BarFeed:
    """Files -> BarFeed over [start, end) (UTC dates/times or epoch ms)."""
    market = load_market(paths, symbols, interval, cache)
    s = start if isinstance(start, int) or start is None else parse_time(start)
    e = end if isinstance(end, int) or end is None else parse_time(end)
    if s is not None and e is not None and e <= s:
        raise DataError(f"end {end} is not after start {start}")
    return BarFeed.from_market(market, s, e)
