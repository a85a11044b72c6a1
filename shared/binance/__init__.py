"""Binance USD-M futures REST client: signing, typed errors, shared rate limits, breaker."""

from shared.binance.breaker import BreakerState, CircuitBreaker
from shared.binance.client import BinanceClient, ClientOptions
from shared.binance.errors import (
    AuthError,
    BinanceCode,
    CircuitOpenError,
    ExchangeError,
    ExchangeUnavailable,
    InsufficientMargin,
    InvalidListenKey,
    IpBanned,
    NoChangeNeeded,
    OrderRejected,
    RateLimited,
    RetryableError,
    is_exchange_failure,
    should_retry,
)
from shared.binance.ratelimit import LocalWeightBudget, SharedWeightBudget
from shared.binance.retry import retry_async
from shared.binance.signing import Signer, account_id, encode_params, format_decimal, sign

__all__ = [
    "AuthError",
    "BinanceClient",
    "BinanceCode",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientOptions",
    "ExchangeError",
    "ExchangeUnavailable",
    "InsufficientMargin",
    "InvalidListenKey",
    "IpBanned",
    "LocalWeightBudget",
    "NoChangeNeeded",
    "OrderRejected",
    "RateLimited",
    "RetryableError",
    "SharedWeightBudget",
    "Signer",
    "account_id",
    "encode_params",
    "format_decimal",
    "is_exchange_failure",
    "retry_async",
    "should_retry",
    "sign",
]
