"""The one error for bad messages, and the small checks that raise it.

Every parser in `shared` (Binance wire schemas, domain `from_dict`/`from_hash`, the bus
codec) turns whatever went wrong — missing field, wrong type, NaN, a zero price, an
unknown event type, garbage bytes — into `MessageError`.  A service therefore needs
exactly one `except MessageError` around a parse: count it, log the excerpt, drop the
message, carry on.  No `KeyError`/`TypeError`/`ValueError` leaks out of a parse.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

EXCERPT_CHARS = 200

# Binance USD-M symbols: upper-case letters/digits (`BTCUSDT`, `1000PEPEUSDT`), plus the
# delivery-contract suffix `_YYMMDD`.  Lower case or anything else is a wrong symbol.
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,30}(?:_[0-9]{6})?")


def excerpt(raw: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short printable piece of a message for logs (never the whole payload)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        text = bytes(raw[:limit]).decode("utf-8", "replace")
    else:
        text = raw if isinstance(raw, str) else repr(raw)
    return text[:limit]


class MessageError(Exception):
    """A message that cannot be trusted; the caller counts it and drops it.

    `reason` says what is wrong ("missing field `k`", "high < low", ...).
    `raw_excerpt` is the first `EXCERPT_CHARS` characters of the message.
    `ignorable` is True for documented event types we deliberately do not model
    (e.g. `TRADE_LITE`), so a feed can count those apart from real garbage.
    """

    def __init__(self, reason: str, raw_excerpt: str = "", *, ignorable: bool = False) -> None:
        self.reason = reason
        self.raw_excerpt = raw_excerpt
        self.ignorable = ignorable
        super().__init__(f"{reason} | {raw_excerpt!r}" if raw_excerpt else reason)

    def __reduce__(self) -> tuple[Any, ...]:  # keep data across pickling (multiprocessing)
        return (_rebuild, (self.reason, self.raw_excerpt, self.ignorable))


def _rebuild(reason: str, raw_excerpt: str, ignorable: bool) -> MessageError:
    return MessageError(reason, raw_excerpt, ignorable=ignorable)


# ---- coercions used by from_dict / from_hash / wire checks ------------------------------


def as_str(value: Any, name: str) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError as exc:
            raise MessageError(f"`{name}` is not UTF-8") from exc
    if not isinstance(value, str):
        raise MessageError(f"`{name}` must be a string, got {type(value).__name__}")
    return value


def as_decimal(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> Decimal:
    """A finite Decimal from a Decimal, a decimal string, or an int (never a float's noise:
    a float goes through `repr`, its shortest round-trip form)."""
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, bool):
        raise MessageError(f"`{name}` must be a decimal, got bool")
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value)) if math.isfinite(value) else Decimal("NaN")
    else:
        text = as_str(value, name).strip()
        try:
            d = Decimal(text)
        except InvalidOperation as exc:
            raise MessageError(f"`{name}` is not a decimal: {text[:40]!r}") from exc
    if not d.is_finite():
        raise MessageError(f"`{name}` is not finite: {d}")
    if positive and d <= 0:
        raise MessageError(f"`{name}` must be > 0, got {d}")
    if nonneg and d < 0:
        raise MessageError(f"`{name}` must be >= 0, got {d}")
    return d


def as_float(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool):
        raise MessageError(f"`{name}` must be a number, got bool")
    if isinstance(value, int | float | Decimal):
        f = float(value)
    else:
        text = as_str(value, name)
        try:
            f = float(text)
        except ValueError as exc:
            raise MessageError(f"`{name}` is not a number: {text[:40]!r}") from exc
    if not math.isfinite(f):
        raise MessageError(f"`{name}` is not finite: {f}")
    if positive and f <= 0:
        raise MessageError(f"`{name}` must be > 0, got {f}")
    if nonneg and f < 0:
        raise MessageError(f"`{name}` must be >= 0, got {f}")
    return f


def as_int(value: Any, name: str, *, nonneg: bool = False) -> int:
    if isinstance(value, bool):
        raise MessageError(f"`{name}` must be an integer, got bool")
    if isinstance(value, int):
        i = value
    elif isinstance(value, float) and value.is_integer():
        i = int(value)
    else:
        text = as_str(value, name).strip()
        try:
            i = int(text)
        except ValueError as exc:
            raise MessageError(f"`{name}` is not an integer: {text[:40]!r}") from exc
    if nonneg and i < 0:
        raise MessageError(f"`{name}` must be >= 0, got {i}")
    return i


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, bytes | bytearray | str):
        text = as_str(value, name).lower()
        if text in ("1", "true"):
            return True
        if text in ("0", "false"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise MessageError(f"`{name}` is not a boolean: {excerpt(value, 40)!r}")


def as_symbol(value: Any, name: str = "symbol") -> str:
    text = as_str(value, name)
    if SYMBOL_RE.fullmatch(text) is None:
        raise MessageError(f"`{name}` is not a USD-M symbol: {text[:40]!r}")
    return text


def as_choice(value: Any, name: str, choices: frozenset[str]) -> str:
    text = as_str(value, name)
    if text not in choices:
        raise MessageError(f"`{name}` must be one of {sorted(choices)}, got {text[:40]!r}")
    return text
