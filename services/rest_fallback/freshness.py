"""What rest_fallback should do right now (pure: heartbeats, cache times and clocks are
passed in; nothing here reads Redis, the network or a clock).

The seed's degradation rule: WebSocket data first; REST when the socket fails, the
cache is empty, or the data is older than 30 s.  Per symbol, one reason or none:
- `kline_feed_down`: no live kline_feed instance covers the symbol (no heartbeat, or
  only instances of other shards);
- `kline_missing`: the `kline:<SYMBOL>` cache hash does not exist;
- `kline_stale`: the cached kline closed at C; the next one was due at C + interval; it
  is now more than `stale_after` past that (exchange time).
And `account_feed_down` when no account_feed heartbeat is alive.

Activations are counted per EPISODE (`Episodes`): a condition that holds for ten
cycles is one activation, not ten; a feed outage is one `kline_feed_down` activation, not
one per symbol.  That is the seed's "REST fallback trigger frequency".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from services.kline_feed.sharding import shard_symbols

__all__ = [
    "Episodes",
    "Reason",
    "alive_instances",
    "covered_symbols",
    "decide_klines",
    "heartbeat_alive",
    "kline_reason",
    "mark_prices",
    "needs_fetch",
    "stale_prices",
]

ALIVE_STATUS = frozenset({"ok", "degraded"})


class Reason(StrEnum):
    KLINE_FEED_DOWN = "kline_feed_down"
    KLINE_MISSING = "kline_missing"
    KLINE_STALE = "kline_stale"
    ACCOUNT_FEED_DOWN = "account_feed_down"


def heartbeat_alive(fields: Mapping[str, str], now_wall_ms: int, ttl_s: float) -> bool:
    """A heartbeat hash (shared.health layout) of a running instance, fresh enough."""
    if fields.get("status") not in ALIVE_STATUS:
        return False
    try:
        beat = int(fields.get("heartbeat") or 0)
    except ValueError:
        return False
    return now_wall_ms - beat <= ttl_s * 1000


def alive_instances(
    heartbeats: Mapping[str, Mapping[str, str]], now_wall_ms: int, ttl_s: float
) -> list[tuple[int, int]]:
    """(shard index, shard count) of every live kline_feed heartbeat.  An unsharded
    instance, or one that does not say, counts as (0, 1): it covers every symbol."""
    out = []
    for fields in heartbeats.values():
        if not heartbeat_alive(fields, now_wall_ms, ttl_s):
            continue
        try:
            index = int(fields.get("shard.index") or 0)
            count = int(fields.get("shard.count") or 1)
        except ValueError:
            index, count = 0, 1
        out.append((index, count) if 0 <= index < count else (0, 1))
    return out


def covered_symbols(symbols: Iterable[str], instances: Iterable[tuple[int, int]]) -> set[str]:
    """Symbols some live instance feeds (the same rendezvous split kline_feed uses)."""
    symbols = list(symbols)
    covered: set[str] = set()
    for index, count in set(instances):
        covered.update(shard_symbols(symbols, index, count))
    return covered


def kline_reason(
    close_time: int | None, now_ms: int | None, interval_ms: int, stale_after_ms: int,
    covered: bool,
) -> Reason | None:  # fmt: skip
    """Why the symbol needs REST, or None when its cache is fresh (see module doc).
    `now_ms` None (exchange time unknown) cannot call anything stale."""
    if not covered:
        return Reason.KLINE_FEED_DOWN
    if close_time is None:
        return Reason.KLINE_MISSING
    next_due = close_time + 1 + interval_ms
    if now_ms is not None and now_ms > next_due + stale_after_ms:
        return Reason.KLINE_STALE
    return None


def needs_fetch(close_time: int | None, now_ms: int | None, interval_ms: int) -> bool:
    """Is there a closed kline on the exchange newer than the cached one?  (The next one
    closes at close_time + 1 + interval.)  Unknown time or no cache: yes.  Keeps a
    `kline_feed_down` symbol to one REST request per interval, not one per cycle."""
    return close_time is None or now_ms is None or now_ms >= close_time + 1 + interval_ms


def decide_klines(
    symbols: Iterable[str],
    close_times: Mapping[str, int | None],
    covered: set[str],
    now_ms: int | None,
    interval_ms: int,
    stale_after_ms: int,
) -> dict[str, Reason]:
    """symbol -> reason, for every symbol that needs a REST fill now."""
    out = {}
    for s in symbols:
        reason = kline_reason(close_times.get(s), now_ms, interval_ms, stale_after_ms,
                              s in covered)  # fmt: skip
        if reason is not None:
            out[s] = reason
    return out


def stale_prices(
    symbols: Iterable[str], updated_ms: Mapping[str, int | None], now_wall_ms: int,
    stale_after_ms: int,
) -> list[str]:  # fmt: skip
    """Symbols whose last price (our receive time) is missing or older than the limit."""
    return [
        s for s in symbols
        if updated_ms.get(s) is None or now_wall_ms - (updated_ms[s] or 0) > stale_after_ms
    ]  # fmt: skip


def mark_prices(rows: Any, symbols: set[str]) -> dict[str, str]:
    """symbol -> mark price (Binance's string) from a `premiumIndex` answer, for `symbols`
    only; rows that are not a finite price > 0 are skipped."""
    out: dict[str, str] = {}
    for r in rows if isinstance(rows, list) else [rows]:
        if not isinstance(r, Mapping) or r.get("symbol") not in symbols:
            continue
        try:
            price = float(r.get("markPrice", ""))
        except (TypeError, ValueError):
            continue
        if 0.0 < price < float("inf"):
            out[r["symbol"]] = str(r["markPrice"])
    return out


class Episodes:
    """Counts activations per reason, once per episode of a (subject, reason)."""

    def __init__(self) -> None:
        self.active: dict[str, Reason] = {}
        self.counts: Counter[str] = Counter({r.value: 0 for r in Reason})

    @staticmethod
    def subject(symbol_or_feed: str, reason: Reason) -> str:
        """A feed outage is one subject (the feed), other reasons are per symbol."""
        if reason is Reason.KLINE_FEED_DOWN:
            return "kline_feed"
        if reason is Reason.ACCOUNT_FEED_DOWN:
            return "account_feed"
        return symbol_or_feed

    def update(self, current: Mapping[str, Reason]) -> list[tuple[str, Reason]]:
        """`current`: subject-or-symbol -> reason now.  Returns the episodes that just
        started (and counts them); ended episodes are forgotten."""
        now: dict[str, Reason] = {}
        for name, reason in current.items():
            now[self.subject(name, reason)] = reason
        started = [(s, r) for s, r in now.items() if self.active.get(s) is not r]
        for _, r in started:
            self.counts[r.value] += 1
        self.active = now
        return started

    def active_counts(self) -> dict[str, int]:
        out = {r.value: 0 for r in Reason}
        for r in self.active.values():
            out[r.value] += 1
        return out
