"""Which symbols this kline_feed instance feeds, and how they split into connections (pure).

Rendezvous (highest-random-weight) hashing: every instance computes, for every symbol,
a score per shard index and the symbol belongs to the shard with the highest score.  All
replicas agree without talking to each other (same symbol list, same count), each symbol
has exactly one owner, and changing the count moves only about 1/count of the symbols.
The hash is blake2b, not `hash()`, which is salted per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b

__all__ = ["chunk", "owner", "shard_symbols", "stream_name", "streams_url"]


def _score(symbol: str, index: int) -> int:
    digest = blake2b(f"{symbol}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(symbol: str, count: int) -> int:
    """The shard index (0..count-1) that feeds `symbol`."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    return max(range(count), key=lambda i: (_score(symbol, i), -i))


def shard_symbols(symbols: Iterable[str], index: int, count: int) -> list[str]:
    """The symbols of shard `index` out of `count`, in the configured order."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in 0..{count - 1}")
    return [s for s in symbols if owner(s, count) == index]


def stream_name(symbol: str, interval: str) -> str:
    """Binance's stream name: `btcusdt@kline_1m`."""
    return f"{symbol.lower()}@kline_{interval}"


def chunk(items: Sequence[str], size: int) -> list[list[str]]:
    """Split into consecutive groups of at most `size` (one WebSocket connection each),
    balanced so 201 streams at 200 per connection become 101 + 100, not 200 + 1."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    if not items:
        return []
    groups = -(-len(items) // size)
    base, extra = divmod(len(items), groups)
    out, start = [], 0
    for g in range(groups):
        n = base + (g < extra)
        out.append(list(items[start : start + n]))
        start += n
    return out


def streams_url(ws_url: str, streams: Sequence[str]) -> str:
    """The routed combined-stream URL: `<ws_url>/market/stream?streams=a/b/...`.  The
    unrouted `/stream` carries no klines since 2026-04-23."""
    return f"{ws_url.rstrip('/')}/market/stream?streams={'/'.join(streams)}"
