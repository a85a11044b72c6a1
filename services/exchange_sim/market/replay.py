"""Replay of real Binance klines from files: public-data CSV (monthly/daily, with or without a
header, optionally gzipped) and `/fapi/v1/klines` JSON arrays.

Why infer the spec from the file: the tick and lot of a symbol are visible in its prices and
volumes (AVAX prints 19.8070 → tick 0.001, 4 decimals), so replayed bars format back to the
strings Binance printed and the engine accepts the same prices. Columns missing from a file
(freqtrade exports lack quote volume, trade count and taker volume) are estimated: quote volume
= volume × (h + l + c) / 3, taker buy = half, trades = 0; `estimated` lists those symbols.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from ..specs import SymbolSpec, default_spec
from .bar import INTERVALS_MS, Bar, MarketBase

_NAME = re.compile(r"^([A-Za-z0-9]+)(?:-(\d+[smhdwM]))?(?:-[^.]*)?\.(csv|json)(?:\.gz)?$")
_FIELDS = ("open_time", "o", "h", "l", "c", "v", "close_time", "q", "n", "tv", "tq")


class ReplayFormatError(ValueError):
    """A kline file could not be read; carries the path and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(slots=True)
class SymbolData:
    """Columns of one symbol's bars, sorted by open time."""

    symbol: str
    interval_ms: int
    cols: dict[str, np.ndarray]
    spec: SymbolSpec
    estimated: bool

    def __len__(self) -> int:
        return len(self.cols["open_time"])


def parse_name(path: str | Path) -> tuple[str, int | None]:
    """(SYMBOL, interval ms or None) from e.g. AVAXUSDT-1m-2023-02.csv, BTCUSDT-1m.csv.gz."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ReplayFormatError(
            str(path), "file name must look like SYMBOL-1m[-YYYY-MM].csv[.gz] or .json"
        )
    interval = m.group(2)
    if interval is not None and interval not in INTERVALS_MS:
        raise ReplayFormatError(str(path), f"unknown interval {interval!r}")
    return m.group(1).upper(), INTERVALS_MS[interval] if interval else None


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def _rows(path: Path) -> list[list[str]]:
    text = _read_text(path)
    if ".json" in path.suffixes:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ReplayFormatError(str(path), "JSON must be a list of kline arrays")
        return [[str(x) for x in row] for row in data]
    # Binance kline CSVs have no quoting: a plain split is several times faster than `csv`.
    rows = [line.split(",") for line in text.splitlines() if line]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # header row
    return rows


def _decimals(values: Iterable[str]) -> tuple[int, int]:
    """(max decimals as printed, max significant decimals) over some number strings."""
    printed = significant = 0
    for s in values:
        if "." in s:
            frac = s.split(".", 1)[1]
            printed = max(printed, len(frac))
            significant = max(significant, len(frac.rstrip("0")))
    return printed, significant


def _columns(rows: list[list[str]], path: Path) -> list[tuple[str, ...]]:
    width = len(_FIELDS)
    if any(len(r) < width for r in rows):
        rows = [r + [""] * (width - len(r)) for r in rows]
    return list(zip(*rows, strict=False))[:width]


def _column(
    vals: tuple[str, ...], i: int, path: Path, kind: type = float
) -> tuple[np.ndarray, bool]:
    """One column; (values, missing) where missing means the file left it empty."""
    dtype = np.int64 if kind is int else np.float64
    if not any(vals):
        return np.zeros(len(vals), dtype=dtype), True
    try:
        arr = np.fromiter(map(float, vals), dtype=np.float64, count=len(vals))
    except ValueError as exc:
        raise ReplayFormatError(str(path), f"bad number in column {i}: {exc}") from None
    return (arr.astype(np.int64) if kind is int else arr), False


def load_file(path: str | Path) -> SymbolData:
    """Read one kline file into columns plus an inferred spec."""
    p = Path(path)
    symbol, named_interval = parse_name(p)
    rows = _rows(p)
    if not rows:
        raise ReplayFormatError(str(p), "no klines")
    cols: dict[str, np.ndarray] = {}
    missing: set[str] = set()
    for i, (key, vals) in enumerate(zip(_FIELDS, _columns(rows, p), strict=True)):
        arr, gone = _column(vals, i, p, int if key in ("open_time", "close_time", "n") else float)
        cols[key] = arr
        if gone:
            missing.add(key)
    if {"open_time", "o", "h", "l", "c", "v"} & missing:
        raise ReplayFormatError(str(p), "open time, OHLC and volume are required")
    if cols["open_time"][0] > 10**14:  # microsecond timestamps (newer public-data files)
        cols["open_time"] //= 1000
        cols["close_time"] //= 1000
    order = np.argsort(cols["open_time"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    keep = np.concatenate(([True], np.diff(cols["open_time"]) > 0))
    cols = {k: v[keep] for k, v in cols.items()}
    interval = named_interval or _infer_interval(cols, p)
    if "close_time" in missing:
        cols["close_time"] = cols["open_time"] + interval - 1
    sample = rows[: min(len(rows), 5000)]
    spec = _infer_spec(symbol, sample, float(cols["c"][0]))
    estimated = bool(missing & {"q", "n", "tv", "tq"})
    _fill_missing(cols, missing, spec)
    return SymbolData(symbol, interval, cols, spec, estimated)


def _infer_interval(cols: dict[str, np.ndarray], path: Path) -> int:
    if len(cols["open_time"]) > 1:
        return int(np.min(np.diff(cols["open_time"])))
    span = int(cols["close_time"][0] - cols["open_time"][0] + 1)
    if span <= 0:
        raise ReplayFormatError(str(path), "cannot infer the interval")
    return span


def _infer_spec(symbol: str, sample: list[list[str]], price: float) -> SymbolSpec:
    prices = [r[i] for r in sample for i in (1, 2, 3, 4)]
    printed, significant = _decimals(prices)
    _, vol_dp = _decimals(r[5] for r in sample)
    tick = Decimal(1).scaleb(-significant)
    step = Decimal(1).scaleb(-vol_dp)
    return default_spec(symbol, price, tick_size=tick, step_size=step, price_precision=printed)


def _fill_missing(cols: dict[str, np.ndarray], missing: set[str], spec: SymbolSpec) -> None:
    qdp = spec.price_precision + spec.quantity_precision
    typical = (cols["h"] + cols["l"] + cols["c"]) / 3.0
    if "q" in missing:
        cols["q"] = np.round(cols["v"] * typical, qdp)
    if "tv" in missing:
        cols["tv"] = np.round(cols["v"] / 2.0, spec.quantity_precision)
    if "tq" in missing:
        cols["tq"] = np.round(cols["tv"] * typical, qdp)


class ReplayMarket(MarketBase):
    """Bars from files; index 0 is the earliest bar of any symbol."""

    def __init__(self, data: dict[str, SymbolData]) -> None:
        if not data:
            raise ValueError("no symbols to replay")
        intervals = {d.interval_ms for d in data.values()}
        if len(intervals) != 1:
            raise ValueError(f"mixed intervals {sorted(intervals)}: replay one interval at a time")
        self.interval_ms = intervals.pop()
        self._data = data
        self._symbols = sorted(data)
        self.start_ms = int(min(d.cols["open_time"][0] for d in data.values()))
        self._end = int(max(d.cols["open_time"][-1] for d in data.values())) + self.interval_ms

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> ReplayMarket:
        """Load files; several files of one symbol (e.g. consecutive months) are merged."""
        merged: dict[str, SymbolData] = {}
        for path in sorted(map(str, paths)):
            d = load_file(path)
            prev = merged.get(d.symbol)
            if prev is None:
                merged[d.symbol] = d
                continue
            if prev.interval_ms != d.interval_ms:
                raise ReplayFormatError(path, f"{d.symbol} already loaded with another interval")
            cols = {k: np.concatenate((prev.cols[k], d.cols[k])) for k in prev.cols}
            order = np.argsort(cols["open_time"], kind="stable")
            cols = {k: v[order] for k, v in cols.items()}
            keep = np.concatenate(([True], np.diff(cols["open_time"]) > 0))
            merged[d.symbol] = SymbolData(
                d.symbol, d.interval_ms, {k: v[keep] for k, v in cols.items()}, prev.spec,
                prev.estimated or d.estimated,
            )  # fmt: skip
        return cls(merged)

    @property
    def end_ms(self) -> int:
        """One past the last bar's close time."""
        return self._end

    @property
    def estimated(self) -> list[str]:
        return [s for s, d in self._data.items() if d.estimated]

    def specs(self) -> dict[str, SymbolSpec]:
        return {s: d.spec for s, d in self._data.items()}

    def arrays(self, symbol: str) -> dict[str, np.ndarray]:
        """All columns of a symbol (open_time, o, h, l, c, v, close_time, q, n, tv, tq)."""
        return self._data[symbol].cols

    def bar(self, symbol: str, index: int) -> Bar | None:
        d = self._data.get(symbol)
        if d is None or index < 0:
            return None
        ot = d.cols["open_time"]
        t = self.start_ms + index * self.interval_ms
        i = int(np.searchsorted(ot, t))
        if i >= len(ot) or ot[i] != t:
            return None
        return self._bar_at(d, i)

    def _bar_at(self, d: SymbolData, i: int) -> Bar:
        c = d.cols
        return Bar(
            d.symbol, int(c["open_time"][i]), int(c["close_time"][i]),
            float(c["o"][i]), float(c["h"][i]), float(c["l"][i]), float(c["c"][i]),
            float(c["v"][i]), float(c["q"][i]), int(c["n"][i]), float(c["tv"][i]), float(c["tq"][i]),
            d.spec.price_precision, d.spec.quantity_precision,
        )  # fmt: skip

    def first_bar(self, symbol: str) -> Bar:
        return self._bar_at(self._data[symbol], 0)

    def last_bar(self, symbol: str) -> Bar:
        d = self._data[symbol]
        return self._bar_at(d, len(d) - 1)
