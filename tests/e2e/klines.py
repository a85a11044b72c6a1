"""Closed klines in `slt:stream:klines` against the simulator's own record.

The record (`GET /admin/closed_klines`) is every closed 1m kline the exchange emitted,
including its warm-up history.  The stream is expected to hold, per symbol, every kline
from its start to the newest closed one, once each, in order, with the exchange's values.
A symbol's start is its first kline in the stream, but no later than T0 + 1 minute (T0:
the earliest first kline of any symbol): at start-up kline_feed and rest_fallback race
to publish the first minute, so symbols may begin one minute apart, never more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from shared.codec import decode_event
from shared.keys import Keys

from .figures import Figure, exact, info
from .monitor import ClockMap

PAGE = 5000
INTERVAL_MS = 60_000
VALUE_FIELDS = (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"), ("volume", "v"),
                ("quote_volume", "q"))  # fmt: skip


@dataclass
class StreamKline:
    open_time: int
    close_time: int
    entry_ms: int  # Redis time of the XADD (stream entry id)
    values: dict[str, Any]


@dataclass
class KlineResult:
    per_symbol: dict[str, list[StreamKline]] = field(default_factory=dict)
    missing: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unknown: int = 0  # in the stream, not in the exchange's record
    value_mismatch: int = 0
    expected: int = 0
    entries: int = 0
    bad_entries: int = 0
    first_missing: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    first_entry_ms: int = 0
    last_entry_ms: int = 0


async def read_stream(redis: aioredis.Redis, stream: str) -> list[tuple[bytes, dict[Any, Any]]]:
    """Every entry of a stream, paged."""
    out: list[tuple[bytes, dict[Any, Any]]] = []
    start = "-"
    while True:
        page = await redis.xrange(stream, min=start, max="+", count=PAGE)
        if not page:
            return out
        out.extend(page)
        if len(page) < PAGE:
            return out
        last = page[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


async def stream_klines(redis: aioredis.Redis, keys: Keys, res: KlineResult) -> None:
    for entry_id, fields in await read_stream(redis, keys.stream_klines):
        res.entries += 1
        try:
            kind, data, _ = decode_event(fields)
        except Exception:  # counted: a bad entry in our own stream is a failure
            res.bad_entries += 1
            continue
        if kind != "kline":
            res.bad_entries += 1
            continue
        ms = int(entry_id.split(b"-")[0])
        res.per_symbol.setdefault(data["symbol"], []).append(
            StreamKline(int(data["open_time"]), int(data["close_time"]), ms, data)
        )
        res.first_entry_ms = ms if not res.first_entry_ms else res.first_entry_ms
        res.last_entry_ms = ms


def compare(res: KlineResult, records: Mapping[str, Sequence[Mapping[str, Any]]],
            clock: ClockMap | None = None) -> None:  # fmt: skip
    """Fill the counters of `res` (stream already read) against the records."""
    firsts = [rows[0].open_time for rows in res.per_symbol.values() if rows]
    t0 = min(firsts) if firsts else 0
    for symbol, record in records.items():
        rows = res.per_symbol.get(symbol, [])
        start = min(rows[0].open_time, t0 + INTERVAL_MS) if rows else t0
        rec = {int(k["t"]): k for k in record}
        last = max(rec) if rec else 0
        seq = [r.open_time for r in rows]
        res.duplicated += len(seq) - len(set(seq))
        res.out_of_order += sum(1 for a, b in zip(seq, seq[1:], strict=False) if b <= a)
        expected = {t for t in rec if start <= t <= last}
        res.expected += len(expected)
        missing = sorted(expected - set(seq))
        res.missing += len(missing)
        if missing and len(res.first_missing) < 5:
            res.first_missing.append(f"{symbol}@{missing[0]} (+{len(missing) - 1})")
        res.unknown += sum(1 for t in set(seq) if t not in rec)
        for r in rows:
            k = rec.get(r.open_time)
            if k is None:
                continue
            same = all(float(r.values[ours]) == float(k[theirs]) for ours, theirs in VALUE_FIELDS)
            same = same and r.values.get("trades") == k.get("n") and r.close_time == k["T"]
            res.value_mismatch += 0 if same else 1
            if clock is not None:
                wall = clock.wall_at(r.close_time + 1)
                if wall is not None:
                    res.latencies_ms.append(r.entry_ms - wall)


def figures(res: KlineResult, symbols: int) -> list[Figure]:
    s = "klines"
    return [
        exact(s, "symbols in stream", len(res.per_symbol), symbols),
        info(s, "closed klines expected", res.expected, "exchange record, start..last close"),
        info(s, "stream entries", res.entries),
        exact(s, "missing", res.missing, 0, ", ".join(res.first_missing)),
        exact(s, "duplicated", res.duplicated, 0),
        exact(s, "out of order (per symbol)", res.out_of_order, 0),
        exact(s, "not in exchange record", res.unknown, 0),
        exact(s, "values differ from exchange", res.value_mismatch, 0),
        exact(s, "undecodable entries", res.bad_entries, 0),
    ]
