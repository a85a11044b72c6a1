"""Deterministic `newClientOrderId`s: the same decision always yields the same id.

WHY: Binance rejects a second open order with a client id it already has, so a decision that
is retried, replayed after a crash or computed twice by two replicas cannot open a second
position.  The id hashes (symbol, side, kline open time, purpose, strategy version) - NOT the
model version, which may change between a first attempt and its retry.

Format: `slt-<p>-<26 hex>` (32 chars, within Binance's `^[\\.A-Z\\:/a-z0-9_-]{1,36}$`), p = e
entry, s stop, t take-profit, x exit; 104 bits of BLAKE2b, so a collision is not a concern.
The inputs are JSON-encoded before hashing, so no two input tuples share an encoding.
"""

from __future__ import annotations

import hashlib
import json

from shared.models import CLIENT_ORDER_ID_RE

PURPOSE_CODES = {"entry": "e", "stop": "s", "take_profit": "t", "exit": "x"}
SIDES = frozenset({"LONG", "SHORT", "BUY", "SELL"})


class OrderIdError(ValueError):
    def __init__(self, field: str, value: object) -> None:
        self.field, self.value = field, value
        super().__init__(f"cannot build a client order id: bad {field} {value!r}")


def client_order_id(
    symbol: str, side: str, open_time_ms: int, purpose: str, strategy_version: str
) -> str:
    code = PURPOSE_CODES.get(purpose)
    if code is None:
        raise OrderIdError("purpose", purpose)
    if not symbol or not symbol.isalnum():
        raise OrderIdError("symbol", symbol)
    if side not in SIDES:
        raise OrderIdError("side", side)
    if isinstance(open_time_ms, bool) or not isinstance(open_time_ms, int) or open_time_ms < 0:
        raise OrderIdError("open_time_ms", open_time_ms)
    payload = json.dumps([symbol, side, open_time_ms, purpose, strategy_version])
    digest = hashlib.blake2b(payload.encode(), digest_size=13).hexdigest()
    return f"slt-{code}-{digest}"


def is_valid_client_order_id(value: str) -> bool:
    return CLIENT_ORDER_ID_RE.fullmatch(value) is not None
