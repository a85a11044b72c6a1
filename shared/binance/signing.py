"""Request encoding and HMAC-SHA256 signing for Binance USD-M futures (SIGNED endpoints).

Binance verifies the signature over the exact bytes it receives ("totalParams" = query
string + body), so we encode parameters ourselves, once, in the order given, and send that
string verbatim.  Values are formatted here so a `Decimal` quantity never leaves as
`1E-3` (Binance rejects exponents) and a bool leaves as `true`, not `True`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any
from urllib.parse import urlencode

__all__ = [
    "Signer",
    "account_id",
    "encode_params",
    "format_decimal",
    "format_value",
    "sign",
]


def sign(secret: str, payload: str) -> str:
    """Hex HMAC-SHA256 of `payload` keyed by `secret`, as Binance expects."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def format_decimal(value: Decimal) -> str:
    """Plain decimal string, never scientific notation (`Decimal('1E-3')` -> `0.001`)."""
    if not value.is_finite():
        raise ValueError(f"cannot send a non-finite number to the exchange: {value}")
    return format(value, "f")


def format_value(value: Any) -> str:
    """Wire form of one parameter value.

    bool before int (bool is an int); floats go through `repr` so 0.1 stays 0.1 rather
    than its binary expansion; enums send their value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, Enum):
        return format_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_decimal(Decimal(repr(value)))
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported parameter type {type(value).__name__}")


def encode_params(params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> str:
    """URL-encode parameters in the given order, dropping `None` values."""
    if not params:
        return ""
    items = params.items() if isinstance(params, Mapping) else params
    return urlencode([(k, format_value(v)) for k, v in items if v is not None])


def account_id(api_key: str) -> str:
    """Short, stable id of an API key for Redis key names: never the key itself."""
    return hashlib.sha256(b"slt-account:" + api_key.encode()).hexdigest()[:12]


class Signer:
    """Holds the API secret and signs payloads; its repr never shows the secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("API secret is empty")
        self._secret = secret

    def sign(self, payload: str) -> str:
        return sign(self._secret, payload)

    def signed_query(self, query: str, timestamp_ms: int, recv_window: int) -> str:
        """`query&recvWindow=..&timestamp=..&signature=..` for an already encoded query."""
        tail = f"recvWindow={int(recv_window)}&timestamp={int(timestamp_ms)}"
        payload = f"{query}&{tail}" if query else tail
        return f"{payload}&signature={self.sign(payload)}"

    def __repr__(self) -> str:
        return "Signer(secret=***)"

    def __reduce__(self) -> Any:  # no pickling a secret into a queue or a file by accident
        raise TypeError("Signer holds a secret and cannot be pickled")
