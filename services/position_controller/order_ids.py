"""Client order ids of the position controller's orders: deterministic per position and
reason, so a close decided twice, or re-sent after a restart, is one order at the
exchange; the reason can be read back from the id (a fill names its order's id)."""

from __future__ import annotations

import hashlib

# Two-letter codes keep ids short: `pc-<code>-<SYMBOL>-<open time base36>`.
REASON_CODES: dict[str, str] = {
    "emergency": "em",
    "invalidation": "iv",
    "counter_trend": "ct",
    "time_stop": "ts",
    "stop_loss": "sl",
    "take_profit": "tp",
    "protect_stop": "ps",
    "protect_take_profit": "pt",
}
CODE_REASONS = {v: k for k, v in REASON_CODES.items()}
ID_PREFIX = "pc-"
_MAX_SYMBOL_IN_ID = 18  # 3 + 2 + 1 + 18 + 1 + 9 (base36 ms) + 2 (split suffix) <= 36


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n <= 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


def close_order_id(symbol: str, position_open_time_ms: int, reason: str) -> str:
    """Deterministic client order id of a controller order for one position and reason.

    The same (symbol, open time, reason) always gives the same id, so a close decided
    twice, or re-sent after a restart, is one order at the exchange.  A symbol too long
    for the 36-character limit is replaced by a short hash (the fill still names it)."""
    code = REASON_CODES.get(reason)
    if code is None:
        raise ValueError(f"unknown close reason {reason!r}; known: {sorted(REASON_CODES)}")
    sym = symbol
    if len(sym) > _MAX_SYMBOL_IN_ID:
        sym = "h" + hashlib.blake2b(symbol.encode(), digest_size=5).hexdigest()
    return f"{ID_PREFIX}{code}-{sym}-{_base36(position_open_time_ms)}"


def reason_from_order_id(client_order_id: str) -> str | None:
    """The reason encoded in one of our ids (`close_order_id`), else None."""
    if not client_order_id.startswith(ID_PREFIX):
        return None
    code = client_order_id[len(ID_PREFIX) : len(ID_PREFIX) + 2]
    dash = client_order_id[len(ID_PREFIX) + 2 : len(ID_PREFIX) + 3]
    return CODE_REASONS.get(code) if dash == "-" else None
