"""How a closed kline is written by the exactly-once scripts (`shared.kline_publisher`):
the values of its stream entry and of its `kline:<SYMBOL>` cache hash, and the blob a
chunk of klines travels in to each script (`pack_publish`, then `pack_cache`).

WHY a module of its own: this runs for every closed kline on kline_feed's hot path, so
it is written for speed (msgspec for the numbers' text and the event's msgpack, one
flat array per chunk), and it must stay byte-for-byte what the slow, obvious encoders
give (`Kline.to_cache_hash()`, `shared.codec.encode_event`): tests/test_kline_publisher.py
holds the two together with Hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any, get_type_hints

import msgpack
import msgspec

from shared.codec import encode_event
from shared.models import Kline

__all__ = [
    "CACHE_FIELDS",
    "ENTRY_TYPE",
    "ENTRY_VERSION",
    "KLINE_FIELDS",
    "AnyKline",
    "KlineRow",
    "NO_EXPECT",
    "STREAM_FIELDS",
    "cache_values",
    "first_or_after",
    "event_data",
    "kline_entry",
    "pack_cache",
    "pack_publish",
]

NO_EXPECT = -1  # `expect` of a kline that may follow whatever Redis holds


def first_or_after(predecessor: int) -> int:
    """`expect` of a kline that may be a symbol's first in Redis, or else must follow
    `predecessor` (encoded below NO_EXPECT: -predecessor - 2).  WHY: a feed that has
    published nothing for a symbol yet must not publish over a kline another process
    put there meanwhile (rest_fallback at start-up) unless it is the one before."""
    return -predecessor - 2


KLINE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Kline))
CACHE_FIELDS: tuple[str, ...] = (*KLINE_FIELDS, "timestamp")
_PROTO = encode_event("kline", {}, symbol="X", event_time=0)
STREAM_FIELDS: tuple[str, ...] = tuple(_PROTO)  # type, symbol, event_time, v, data
_values = attrgetter(*KLINE_FIELDS)
_OPEN_AT = KLINE_FIELDS.index("open_time")
ENTRY_TYPE, ENTRY_VERSION = _PROTO["type"], _PROTO["v"]  # the stream entry's `type`, `v`
assert STREAM_FIELDS == ("type", "symbol", "event_time", "v", "data"), STREAM_FIELDS
_CACHE_HEADER: tuple[Any, ...] = (len(CACHE_FIELDS), _OPEN_AT + 1, *CACHE_FIELDS)

# How `Kline.to_cache_hash` writes each field (shared.models._hash_out), by declared type:
# floats by repr, bools as 1/0, the rest by str.
_HINTS = get_type_hints(Kline)
_SEP = "\x1f"
_CACHE_FORMAT = _SEP.join(
    "%r" if _HINTS[f] is float else "%d" if _HINTS[f] is bool else "%s" for f in KLINE_FIELDS
)
# The fast path below places fields by position: it relies on this layout.
assert KLINE_FIELDS == (
    "symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
    "quote_volume", "trades", "taker_buy_volume", "taker_buy_quote_volume", "closed",
    "event_time", "received_time",
), KLINE_FIELDS  # fmt: skip
_numbers = attrgetter(*(f for f in KLINE_FIELDS if _HINTS[f] in (int, float)))
_json = msgspec.json.Encoder().encode
_msgpack = msgspec.msgpack.Encoder().encode  # a dataclass as a map: the bytes of `pack`


class KlineRow(msgspec.Struct, frozen=True, gc=False):
    """kline_feed's hot-path twin of `shared.models.Kline`: the same fields in the same
    order, so the same cache text and event bytes (and the same attributes for the
    pipeline), built from a kline event that `parse_kline_message` has already checked
    (every rule of `Kline.__post_init__` and more) at ~0.3 us, where a Kline (a frozen
    dataclass set field by field, then validated again) takes ~2.7 us: 0.5 ms of a
    minute's 200 closes.  Not tracked by the cyclic GC (it holds no containers)."""

    symbol: str
    interval: str
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
    closed: bool
    event_time: int
    received_time: int

    @classmethod
    def from_event(cls, event: Any, received_time: int) -> KlineRow:
        """From a checked `shared.binance.schemas.KlineEvent` (as `Kline.from_event`)."""
        k = event.k
        return cls(k.s, k.i, k.t, k.T, k.o, k.h, k.l, k.c, k.v, k.q, k.n, k.V, k.Q, k.x,
                   event.E, received_time)  # fmt: skip

    def to_kline(self) -> Kline:
        return Kline(*msgspec.structs.astuple(self))


assert KlineRow.__struct_fields__ == KLINE_FIELDS, KlineRow.__struct_fields__
AnyKline = Kline | KlineRow


def cache_values(k: AnyKline) -> list[Any]:
    """The cache hash values of one kline, in CACHE_FIELDS order (str or ASCII bytes).

    The same text as `to_cache_hash()` (tests/test_kline_publisher.py checks it with
    Hypothesis), at ~2 us instead of ~10.  The 13 numbers are formatted in one msgspec
    JSON call, whose text equals `str`/`repr` except where repr would use an exponent
    (below 1e-4, from 1e16) or for NaN/inf: those take `_cache_values_slow`."""
    raw = _json(_numbers(k))
    if b"e" in raw or b",0.0000" in raw or b"n" in raw:
        return _cache_values_slow(k)
    n = raw[1:-1].split(b",")
    return [k.symbol, k.interval, *n[:11], b"1" if k.closed else b"0", n[11], n[12], n[0]]


def _cache_values_slow(k: AnyKline) -> list[Any]:
    """`cache_values` for any value: one %-format over the attribute tuple (split on a
    unit separator no symbol or interval contains)."""
    out: list[Any] = (_CACHE_FORMAT % _values(k)).split(_SEP)
    out.append(out[_OPEN_AT])  # timestamp = open time, as in the seed's example
    return out


def event_data(k: AnyKline) -> bytes:
    """The stream entry's `data`: msgspec's msgpack of the dataclass or struct, the same
    bytes as `codec.pack(to_dict())` (a map in field order, float64, compact ints)."""
    return _msgpack(k)


def kline_entry(k: AnyKline) -> tuple[list[str], list[Any]]:
    """(cache hash values in CACHE_FIELDS order, stream entry values in STREAM_FIELDS
    order) of one kline, as text (and the event's bytes): what the two scripts write."""
    cache = [v.decode() if isinstance(v, bytes) else v for v in cache_values(k)]
    return cache, [ENTRY_TYPE, k.symbol, str(k.event_time), ENTRY_VERSION, _msgpack(k)]


def pack_publish(klines: Sequence[AnyKline], expects: Sequence[int] | None = None) -> bytes:
    """ARGV blob of the publish script (`shared.kline_publisher.PUBLISH_LUA`): per kline
    [symbol, open time, expect, event time as text, event data], one flat array.

    Only what the stream entry and the guard need: the cache's text (float formatting,
    ~4x the bytes) travels later, in `pack_cache`, off the path of the stream."""
    flat: list[Any] = []
    if expects is None:
        expects = [NO_EXPECT] * len(klines)
    for k, e in zip(klines, expects, strict=True):
        flat += (k.symbol, k.open_time, e, b"%d" % k.event_time, _msgpack(k))
    return msgpack.packb(flat, use_bin_type=False)  # type: ignore[no-any-return]


def pack_cache(klines: Sequence[AnyKline]) -> bytes:
    """ARGV blob of the cache script (`CACHE_LUA`): [#fields, index of open_time, field
    names..., then per kline its cache values], one flat array (no bin type: Redis 7.0's
    cmsgpack does not read it)."""
    flat = list(_CACHE_HEADER)
    for k in klines:
        flat += cache_values(k)
    return msgpack.packb(flat, use_bin_type=False)  # type: ignore[no-any-return]
