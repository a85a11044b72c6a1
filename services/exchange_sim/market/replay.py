"""Replay of real Binance klines from files: public-data CSV (monthly/daily, with or without a
header, optionally gzipped) and `/fapi/v1/klines` JSON arrays.

Why infer the spec from the file: the tick and lot of a symbol are visible in its prices and
volumes (AVAX prints 19.8070 → tick 0.001, 4 decimals), so replayed bars format back to the
strings Binance printed and the engine accepts the same prices. Columns missing from a file
(freqtrade exports lack quote volume, trade count and taker volume) are estimated: quote volume
= volume × (h + l + c) / 3, taker buy = half, trades = 0; `estimated` lists those symbols.

Reading: numpy's C parser when the file is plain enough to vouch for the result
(`fast_parse`), the exact Python reading otherwise (which also words the errors); the spec
is inferred from the first 5000 rows' printed strings either way.  An optional `KlineCache`
keeps parsed files, so a backtest's second run over the same files does not parse them.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from ..specs import SymbolSpec, default_spec
from .bar import INTERVALS_MS, Bar, MarketBase
from .fast_parse import SAMPLE as _SAMPLE
from .fast_parse import Sample, fast_csv, fast_json
from .kline_cache import KlineCache

_NAME = re.compile(r"^([A-Za-z0-9]+)(?:-(\d+[smhdwM]))?(?:-[^.]*)?\.(csv|json)(?:\.gz)?$")
_FIELDS = ("open_time", "o", "h", "l", "c", "v", "close_time", "q", "n", "tv", "tq")
_INTS = ("open_time", "close_time", "n")
_SCHEMA = {k: np.int64 if k in _INTS else np.float64 for k in _FIELDS}


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


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReplayFormatError(str(path), f"not a readable gzip file: {exc}") from None
    return raw


def _text(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplayFormatError(str(path), "not UTF-8 text") from None


def _rows(raw: bytes, path: Path) -> list[list[str]]:
    """Every row as strings: the exact (slow) reading, used when the fast one declines."""
    text = _text(raw, path)
    if ".json" in path.suffixes:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ReplayFormatError(str(path), f"bad JSON: {exc}") from None
        if not isinstance(data, list):
            raise ReplayFormatError(str(path), "JSON must be a list of kline arrays")
        return [[str(x) for x in row] for row in data]
    # Binance kline CSVs have no quoting: a plain split is several times faster than `csv`.
    rows = [line.split(",") for line in text.splitlines() if line]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # header row
    return rows


def _decimals(values: Iterable[str]) -> tuple[int, int]:
    """(max decimals as printed, max significant decimals) over some number strings.
    C-level maps over the distinct strings: this runs on every cold load."""
    fracs = list(map(itemgetter(2), map(str.partition, set(values), repeat("."))))
    printed = max(map(len, fracs), default=0)
    return printed, max(map(len, map(str.rstrip, fracs, repeat("0"))), default=0)


def _columns(rows: list[list[str]], path: Path) -> list[tuple[str, ...]]:
    width = len(_FIELDS)
    if any(len(r) < width for r in rows):
        rows = [r + [""] * (width - len(r)) for r in rows]
    return list(zip(*rows, strict=False))[:width]


def _column(vals: tuple[str, ...], i: int, path: Path) -> tuple[np.ndarray, bool]:
    """One column as float64; (values, missing) where missing means the file left it empty."""
    if not any(vals):
        return np.zeros(len(vals), dtype=np.float64), True
    try:
        arr = np.fromiter(map(float, vals), dtype=np.float64, count=len(vals))
    except ValueError as exc:
        raise ReplayFormatError(str(path), f"bad number in column {i}: {exc}") from None
    return arr, False


def _exact(raw: bytes, path: Path) -> tuple[np.ndarray, int, Sample]:
    """(values, columns present, spec sample) by the exact reading: every field through
    Python's float(), short rows padded, a partly empty column named as an error."""
    rows = _rows(raw, path)
    if not rows:
        raise ReplayFormatError(str(path), "no klines")
    table = np.zeros((len(rows), len(_FIELDS)))
    present = 0
    columns = _columns(rows, path)
    for i, vals in enumerate(columns):
        arr, gone = _column(vals, i, path)
        table[:, i] = arr
        present |= 0 if gone else 1 << i
    return table, present, [c[:_SAMPLE] for c in columns[:6]]


def load_file(path: str | Path, cache: KlineCache | None = None) -> SymbolData:
    """Read one kline file into columns plus an inferred spec; with a `cache`, a file read
    before (same path, size and mtime) is taken from it instead of parsed."""
    p = Path(path)
    symbol, named_interval = parse_name(p)
    if cache is not None:
        hit = cache.get(p, _SCHEMA)
        restored = None if hit is None else _restore(symbol, *hit)
        if restored is not None:
            return restored
    raw = _read_bytes(p)
    fast = fast_json(raw) if ".json" in p.suffixes else fast_csv(raw)
    table, present, sample = fast if fast is not None else _exact(raw, p)
    data, hints = _finish(p, symbol, named_interval, table, present, sample)
    if cache is not None:
        cache.put(p, data.cols, {"spec": hints, "interval_ms": data.interval_ms,
                                 "estimated": data.estimated})  # fmt: skip
    return data


def _restore(symbol: str, cols: dict[str, np.ndarray], meta: dict[str, Any]) -> SymbolData | None:
    """A cache entry back into SymbolData, or None if its meta or order does not hold up
    (then the file is parsed again and the entry rewritten)."""
    try:
        spec = _spec(symbol, float(cols["c"][0]), meta["spec"])
        interval, estimated = int(meta["interval_ms"]), meta["estimated"]
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return None
    ot = cols["open_time"]
    if interval <= 0 or not isinstance(estimated, bool) or not (ot[1:] > ot[:-1]).all():
        return None
    return SymbolData(symbol, interval, cols, spec, estimated)


def _finish(
    p: Path,
    symbol: str,
    named_interval: int | None,
    table: np.ndarray,
    present: int,
    sample: Sample,
) -> tuple[SymbolData, list[Any]]:
    """Columns from a parsed (rows, fields) table: sorted, deduplicated, ms timestamps,
    missing ones estimated; and the spec hints inferred from the sample."""
    missing = {k for i, k in enumerate(_FIELDS) if not present >> i & 1}
    if {"open_time", "o", "h", "l", "c", "v"} & missing:
        raise ReplayFormatError(str(p), "open time, OHLC and volume are required")
    cols: dict[str, np.ndarray] = {}
    for i, key in enumerate(_FIELDS):  # a table may stop before the trailing missing columns
        col = table[:, i] if i < table.shape[1] else np.zeros(len(table))
        cols[key] = col.astype(np.int64) if key in _INTS else np.ascontiguousarray(col)
    if cols["open_time"][0] > 10**14:  # microsecond timestamps (newer public-data files)
        cols["open_time"] //= 1000
        cols["close_time"] //= 1000
    ot = cols["open_time"]
    if not (len(ot) < 2 or bool((ot[1:] > ot[:-1]).all())):  # already sorted: no copies
        order = np.argsort(ot, kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        keep = np.concatenate(([True], np.diff(cols["open_time"]) > 0))
        cols = {k: v[keep] for k, v in cols.items()}
    interval = named_interval or _infer_interval(cols, p)
    if "close_time" in missing:
        cols["close_time"] = cols["open_time"] + interval - 1
    hints = _spec_hints(sample)
    spec = _spec(symbol, float(cols["c"][0]), hints)
    estimated = bool(missing & {"q", "n", "tv", "tq"})
    _fill_missing(cols, missing, spec)
    return SymbolData(symbol, interval, cols, spec, estimated), hints


def _infer_interval(cols: dict[str, np.ndarray], path: Path) -> int:
    if len(cols["open_time"]) > 1:
        return int(np.min(np.diff(cols["open_time"])))
    span = int(cols["close_time"][0] - cols["open_time"][0] + 1)
    if span <= 0:
        raise ReplayFormatError(str(path), "cannot infer the interval")
    return span


def _spec_hints(sample: Sample) -> list[Any]:
    """[price decimals printed, tick, step] as the sample's strings show them (JSON-able,
    so the cache can keep them)."""
    printed, significant = _decimals(chain(*sample[1:5]))
    _, vol_dp = _decimals(sample[5])
    return [printed, str(Decimal(1).scaleb(-significant)), str(Decimal(1).scaleb(-vol_dp))]


def _spec(symbol: str, price: float, hints: list[Any]) -> SymbolSpec:
    printed, tick, step = hints
    return default_spec(symbol, price, tick_size=Decimal(tick), step_size=Decimal(step),
                        price_precision=int(printed))  # fmt: skip


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
    def from_files(
        cls, paths: Iterable[str | Path], cache: KlineCache | None = None
    ) -> ReplayMarket:
        """Load files; several files of one symbol (e.g. consecutive months) are merged.
        `cache` keeps parsed files for the next load (see kline_cache)."""
        merged: dict[str, SymbolData] = {}
        for path in sorted(map(str, paths)):
            d = load_file(path, cache)
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
