"""The bus payload format: one Redis stream entry per event.

An entry has plain fields an operator can read in `redis-cli` — `type`, `symbol`,
`event_time` (epoch ms), `v` (schema version) — and `data`, the full event as msgpack.

Decimals: msgpack has no decimal type, so a `Decimal` is packed as msgpack extension type
1 whose payload is the ASCII of `str(d)` (e.g. `b"0.00100"`, `b"1E+3"`).  `decode_event`
turns every such extension back into `Decimal(payload)`, which restores the value, sign,
exponent and trailing zeros exactly.  Tuples come back as lists; everything else msgpack
carries natively (float64 bit-exact, ints up to 64 bits, str, bytes, bool, None, maps).

Version: readers accept entries whose `v` is at most SCHEMA_VERSION; bump it when a
change would break older readers, and make readers handle older versions.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import msgpack

from shared.errors import MessageError, excerpt

SCHEMA_VERSION = 1
DECIMAL_EXT = 1


class EventMeta(NamedTuple):
    """The plain fields of an entry, decoded."""

    symbol: str | None
    event_time: int | None
    version: int


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return msgpack.ExtType(DECIMAL_EXT, str(obj).encode("ascii"))
    to_dict = getattr(obj, "to_dict", None)  # domain records (shared.models)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"cannot encode {type(obj).__name__} on the bus")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code == DECIMAL_EXT:
        try:
            return Decimal(payload.decode("ascii"))
        except (InvalidOperation, UnicodeDecodeError) as exc:
            raise ValueError(f"bad decimal {payload[:40]!r}") from exc
    raise ValueError(f"unknown msgpack extension {code}")


def pack(data: Any) -> bytes:
    """msgpack with Decimals as extension 1 (see module doc)."""
    return msgpack.packb(data, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def packer() -> msgpack.Packer:
    """A reusable packer giving exactly `pack`'s bytes, for hot loops (no Packer built per
    call).  Not thread-safe: one per thread."""
    return msgpack.Packer(default=_default, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    """Inverse of `pack`.  Raises MessageError on anything that is not a packed value."""
    try:
        return msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MessageError(f"bad msgpack: {exc}", excerpt(raw)) from None


def encode_event(
    type: str,  # the field's name on the bus
    data: dict[str, Any],
    *,
    symbol: str | None = None,
    event_time: int | None = None,
) -> dict[str, bytes | str]:
    """Stream fields for XADD.  `symbol`/`event_time` are written as "" when None."""
    if not isinstance(type, str) or not type:
        raise ValueError("event type must be a non-empty string")
    if not isinstance(data, dict):
        raise TypeError(f"event data must be a dict, got {data.__class__.__name__}")
    return {
        "type": type,
        "symbol": symbol or "",
        "event_time": "" if event_time is None else str(int(event_time)),
        "v": str(SCHEMA_VERSION),
        "data": pack(data),
    }


def _text(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if value is None:
        raise MessageError(f"missing field `{name}`", excerpt(repr(fields)))
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise MessageError(f"`{name}` is not UTF-8", excerpt(value)) from None
    return str(value)


def _decode_plain(fields: dict[Any, Any]) -> tuple[str, dict[str, Any], EventMeta] | None:
    """The entry exactly as Redis returns what `encode_event` wrote (five bytes fields,
    version 1), decoded with a few dict reads; None for anything else (or any doubt), which
    `decode_event` then checks field by field.  WHY: every consumer decodes every entry
    (the trader 200 klines at each minute close), and the general checks cost as much as
    the msgpack itself."""
    get = fields.get
    t, sym, et, v, raw = get(b"type"), get(b"symbol"), get(b"event_time"), get(b"v"), get(b"data")
    if not (v == b"1" and type(t) is bytes and type(sym) is bytes and type(et) is bytes
            and type(raw) is bytes and t):  # fmt: skip
        return None
    try:
        event_type, symbol = t.decode(), sym.decode()
        event_time = int(et) if et else None
    except ValueError:  # UnicodeDecodeError too
        return None
    data = unpack(raw)
    if type(data) is not dict:
        return None
    return event_type, data, EventMeta(symbol or None, event_time, 1)


def decode_event(fields: dict[Any, Any]) -> tuple[str, dict[str, Any], EventMeta]:
    """(type, data, meta) from the fields of a stream entry (bytes or str keys/values)."""
    if type(fields) is dict and len(fields) == 5:  # no str keys beside the 5 bytes ones
        plain = _decode_plain(fields)
        if plain is not None:
            return plain
    if not isinstance(fields, dict):
        raise MessageError("stream entry must be a mapping", excerpt(repr(fields)))
    event_type = _text(fields, "type")
    version_text, time_text = _text(fields, "v"), _text(fields, "event_time")
    try:
        version = int(version_text)
        event_time = int(time_text) if time_text else None
    except ValueError:
        raise MessageError("bad `v` or `event_time`", excerpt(repr(fields))) from None
    if not 1 <= version <= SCHEMA_VERSION:
        raise MessageError(f"schema version {version} not in 1..{SCHEMA_VERSION}", event_type)
    raw = fields.get("data", fields.get(b"data"))
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageError("missing or non-bytes `data`", excerpt(repr(fields)))
    data = unpack(bytes(raw))
    if not isinstance(data, dict):
        raise MessageError("`data` is not a map", excerpt(raw))
    symbol = _text(fields, "symbol") if ("symbol" in fields or b"symbol" in fields) else ""
    return event_type, data, EventMeta(symbol or None, event_time, version)
