"""Binance errors as typed exceptions, grouped by what the caller should do next.

Mapped once, at the exchange boundary (`error_from_response`), so no service ever parses
`{"code": -2019, "msg": ...}` itself:

    ExchangeError(status, code, msg)          anything the exchange refused; code is a
    |                                         `BinanceCode` when known, else the raw int
    +- RetryableError                         5xx, 408, -1003, -1021, -1001/-1007/-1008
    |  +- ExchangeUnavailable                 timeout / connection error (status 0)
    |  +- RateLimited(retry_after)            HTTP 429: wait `retry_after` s, every process
    +- IpBanned(retry_after)                  HTTP 418: stop everything until then
    +- OrderRejected                          the order is invalid as sent: do not resend
    |  +- InsufficientMargin                  -2019
    +- NoChangeNeeded                         -4046/-4059: already in the wanted state
    +- InvalidListenKey                       -1125: create a new listenKey, reconcile
    +- AuthError                              -2015/-1022/401: stop, fix the key
    +- CircuitOpenError(retry_after)          our breaker refused without sending

`should_retry` is the one retry decision; `is_exchange_failure` is the one breaker decision.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from typing import Any

import aiohttp
import orjson

__all__ = [
    "AuthError",
    "BinanceCode",
    "CircuitOpenError",
    "ExchangeError",
    "ExchangeUnavailable",
    "InsufficientMargin",
    "InvalidListenKey",
    "IpBanned",
    "NoChangeNeeded",
    "OrderRejected",
    "RateLimited",
    "RetryableError",
    "error_from_response",
    "is_exchange_failure",
    "parse_code",
    "should_retry",
]


class BinanceCode(IntEnum):
    """Binance USD-M futures error codes we act on (names follow Binance's docs)."""

    UNKNOWN = -1000
    DISCONNECTED = -1001
    UNAUTHORIZED = -1002
    TOO_MANY_REQUESTS = -1003
    TIMEOUT = -1007  # backend timeout: execution status unknown
    SERVER_BUSY = -1008
    TOO_MANY_ORDERS = -1015
    INVALID_TIMESTAMP = -1021
    INVALID_SIGNATURE = -1022
    ILLEGAL_CHARS = -1100
    TOO_MANY_PARAMETERS = -1101
    MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
    UNKNOWN_PARAM = -1103
    BAD_PRECISION = -1111
    INVALID_ORDER_TYPE = -1116
    INVALID_SIDE = -1117
    BAD_SYMBOL = -1121
    INVALID_LISTEN_KEY = -1125
    INVALID_PARAMETER = -1130
    NEW_ORDER_REJECTED = -2010
    CANCEL_REJECTED = -2011
    NO_SUCH_ORDER = -2013
    BAD_API_KEY_FMT = -2014
    REJECTED_MBX_KEY = -2015
    MARGIN_NOT_SUFFICIENT = -2019
    ORDER_WOULD_IMMEDIATELY_TRIGGER = -2021
    REDUCE_ONLY_REJECT = -2022
    QTY_LESS_THAN_ZERO = -4003
    PRICE_NOT_INCREASED_BY_TICK_SIZE = -4014
    QTY_NOT_INCREASED_BY_STEP_SIZE = -4023
    INVALID_LEVERAGE = -4028
    NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
    NO_NEED_TO_CHANGE_POSITION_SIDE = -4059
    POSITION_SIDE_NOT_MATCH = -4061
    DUPLICATED_CLIENT_ORDER_ID = -4116
    STOP_ORDER_SWITCH_ALGO = -4120  # conditional orders must use the Algo Order API
    MIN_NOTIONAL = -4164


def parse_code(code: Any) -> BinanceCode | int | None:
    """`BinanceCode` member when known, the raw int when not, None when absent."""
    if isinstance(code, bool) or code is None:
        return None
    try:
        number = int(code)
    except (TypeError, ValueError):
        return None
    try:
        return BinanceCode(number)
    except ValueError:
        return number


class ExchangeError(Exception):
    """The exchange (or the way to it) refused a request. Carries its data."""

    def __init__(self, status: int, code: Any, msg: str) -> None:
        self.status = status
        self.code = parse_code(code)
        self.msg = msg
        super().__init__(status, self.code, msg)

    def __str__(self) -> str:
        code = self.code.name if isinstance(self.code, BinanceCode) else self.code
        return f"{type(self).__name__}(status={self.status}, code={code}, msg={self.msg!r})"


class RetryableError(ExchangeError):
    """Transient: the same request may succeed later (5xx, -1003, -1021, busy)."""


class ExchangeUnavailable(RetryableError):
    """No answer: timeout or connection error. status is 0. For an order, the outcome
    is unknown: query it by client order id before sending it again."""

    def __init__(self, msg: str) -> None:
        super().__init__(0, None, msg)


class RateLimited(RetryableError):
    """HTTP 429: no request may be sent by any process for `retry_after` seconds."""

    def __init__(self, status: int, code: Any, msg: str, retry_after: float) -> None:
        super().__init__(status, code, msg)
        self.retry_after = retry_after


class IpBanned(ExchangeError):
    """HTTP 418: the IP is banned for `retry_after` seconds (2 min to 3 days). Stop."""

    def __init__(self, status: int, code: Any, msg: str, retry_after: float) -> None:
        super().__init__(status, code, msg)
        self.retry_after = retry_after


class OrderRejected(ExchangeError):
    """The order (or cancel) is invalid as sent; sending it again changes nothing."""


class InsufficientMargin(OrderRejected):
    """-2019: not enough margin; size down or skip."""


class NoChangeNeeded(ExchangeError):
    """-4046/-4059: the account is already in the requested state; treat as success."""


class InvalidListenKey(ExchangeError):
    """-1125: the listenKey expired or never existed; create a new one and reconcile."""


class AuthError(ExchangeError):
    """-2015/-1022/401: key, secret, IP whitelist or permissions are wrong. Stop."""


class CircuitOpenError(ExchangeError):
    """Our circuit breaker is open: nothing was sent. Try again after `retry_after` s."""

    def __init__(self, msg: str, retry_after: float) -> None:
        super().__init__(0, None, msg)
        self.retry_after = retry_after


_RETRYABLE_CODES = frozenset(
    {
        BinanceCode.DISCONNECTED,
        BinanceCode.TOO_MANY_REQUESTS,
        BinanceCode.TIMEOUT,
        BinanceCode.SERVER_BUSY,
        BinanceCode.INVALID_TIMESTAMP,
    }
)
_AUTH_CODES = frozenset(
    {
        BinanceCode.UNAUTHORIZED,
        BinanceCode.INVALID_SIGNATURE,
        BinanceCode.BAD_API_KEY_FMT,
        BinanceCode.REJECTED_MBX_KEY,
    }
)
_NO_CHANGE_CODES = frozenset(
    {BinanceCode.NO_NEED_TO_CHANGE_MARGIN_TYPE, BinanceCode.NO_NEED_TO_CHANGE_POSITION_SIDE}
)
_ORDER_CODES = frozenset(
    {
        BinanceCode.TOO_MANY_ORDERS,
        BinanceCode.BAD_PRECISION,
        BinanceCode.INVALID_ORDER_TYPE,
        BinanceCode.INVALID_SIDE,
        BinanceCode.NEW_ORDER_REJECTED,
        BinanceCode.CANCEL_REJECTED,
        BinanceCode.NO_SUCH_ORDER,
        BinanceCode.ORDER_WOULD_IMMEDIATELY_TRIGGER,
        BinanceCode.REDUCE_ONLY_REJECT,
        BinanceCode.QTY_LESS_THAN_ZERO,
        BinanceCode.PRICE_NOT_INCREASED_BY_TICK_SIZE,
        BinanceCode.QTY_NOT_INCREASED_BY_STEP_SIZE,
        BinanceCode.INVALID_LEVERAGE,
        BinanceCode.POSITION_SIDE_NOT_MATCH,
        BinanceCode.DUPLICATED_CLIENT_ORDER_ID,
        BinanceCode.STOP_ORDER_SWITCH_ALGO,
        BinanceCode.MIN_NOTIONAL,
    }
)


def _code_and_msg(body: bytes) -> tuple[Any, str]:
    """Binance's `{"code":..,"msg":..}`; any other body becomes a short message."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "code" in data:
        return data.get("code"), str(data.get("msg", ""))
    text = body[:200].decode("utf-8", "replace").strip()
    return None, text or "empty body"


def error_from_response(
    status: int, body: bytes, retry_after: float | None = None
) -> ExchangeError:
    """The typed exception for a non-2xx response (`retry_after` from the header)."""
    code, msg = _code_and_msg(body)
    parsed = parse_code(code)
    if status == 429:
        return RateLimited(status, code, msg, retry_after if retry_after is not None else 60.0)
    if status == 418:
        return IpBanned(status, code, msg, retry_after if retry_after is not None else 120.0)
    if status >= 500 or status == 408 or parsed in _RETRYABLE_CODES:
        return RetryableError(status, code, msg)
    if status == 401 or parsed in _AUTH_CODES:
        return AuthError(status, code, msg)
    if parsed == BinanceCode.MARGIN_NOT_SUFFICIENT:
        return InsufficientMargin(status, code, msg)
    if parsed == BinanceCode.INVALID_LISTEN_KEY:
        return InvalidListenKey(status, code, msg)
    if parsed in _NO_CHANGE_CODES:
        return NoChangeNeeded(status, code, msg)
    if parsed in _ORDER_CODES:
        return OrderRejected(status, code, msg)
    return ExchangeError(status, code, msg)


def should_retry(exc: BaseException) -> bool:
    """The one retry decision: transient exchange trouble yes, everything else no.

    An open breaker, a ban, a rejected order or a bad key is not fixed by trying again.
    """
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, ExchangeError):
        return False
    return isinstance(exc, asyncio.TimeoutError | aiohttp.ClientConnectionError)


def is_exchange_failure(exc: BaseException) -> bool:
    """Does this outcome say the exchange is unhealthy (counts toward the breaker)?

    5xx, timeouts, connection errors, 429/418 and busy codes do; -1021 (our clock) and
    4xx business rejections (-2019, ...) do not: the exchange answered sensibly.
    """
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, IpBanned):
        return True
    if isinstance(exc, RetryableError):
        return exc.code != BinanceCode.INVALID_TIMESTAMP
    return not isinstance(exc, ExchangeError) and should_retry(exc)
