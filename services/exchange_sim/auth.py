"""Binance request security for the simulator: API keys, HMAC-SHA256 signatures, recvWindow.

WHY this module exists: a client that signs wrongly, sends a stale timestamp or forgets a
parameter must fail against the simulator exactly as it would against fapi.binance.com
(same HTTP status, same error code, same message), so those bugs surface before live.

Rules implemented (Binance "SIGNED (TRADE / USER_DATA) endpoint security"):
- The key travels in the `X-MBX-APIKEY` header. Missing/blank -> -2014 (401); unknown -> -2015
  (401).
- `signature` = hex HMAC-SHA256(secret, totalParams) where totalParams is the *raw* query
  string concatenated with the *raw* form body (no `&` between them), minus the
  `signature=...` pair itself. Wrong -> -1022 (400).
- `timestamp` is compared with the SIMULATOR clock: accepted when
  `timestamp < now + 1000` and `now - timestamp <= recvWindow` (default 5000, max 60000),
  else -1021 (400).
- A parameter may come in the query string or in the form body; when both carry it the
  query string wins (as on Binance). A parameter repeated within one of them -> -1101.

`ApiError` is the one error type of the protocol layer: it carries the HTTP status, the
Binance code and message, plus extra response headers (Retry-After), and renders itself as
Binance's error JSON.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qsl

import orjson

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000
FUTURE_TOLERANCE_MS = 1_000


class ApiError(Exception):
    """A Binance-style rejection: HTTP status + `{"code": .., "msg": ..}` (+ headers)."""

    def __init__(
        self, status: int, code: int, msg: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return orjson.dumps({"code": self.code, "msg": self.msg})


def missing_param(name: str) -> ApiError:
    return ApiError(
        400,
        -1102,
        f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    )


def bad_param(name: str) -> ApiError:
    return ApiError(400, -1130, f"Data sent for parameter '{name}' is not valid.")


def opt_int(raw: str | None, name: str) -> int | None:
    """An optional integer parameter: None when absent or empty, -1130 when malformed."""
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise bad_param(name)
    return int(raw)


@dataclass(frozen=True)
class SimAccount:
    """One simulated account: its API key, secret and starting wallet balance (USDT).

    The secret is excluded from the repr so it never lands in a log line.
    """

    key: str
    secret: str = field(repr=False)
    balance: Decimal = Decimal("10000")

    @property
    def account_id(self) -> str:
        """The engine's account id; the API key is unique, so it doubles as the id."""
        return self.key

    @classmethod
    def parse(cls, spec: str) -> SimAccount:
        """`KEY:SECRET[:BALANCE]` as given on the command line."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError("account must be KEY:SECRET[:BALANCE]")
        balance = Decimal(parts[2]) if len(parts) == 3 else Decimal("10000")
        if not balance.is_finite() or balance < 0:
            raise ValueError("account balance must be a finite number >= 0")
        return cls(parts[0], parts[1], balance)


def _pairs(raw: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise ApiError(400, -1100, "Illegal characters found in a parameter.") from None


def parse_params(raw_query: str, raw_body: str) -> dict[str, str]:
    """Merge query and form-body parameters the way Binance does (query wins)."""
    merged: dict[str, str] = {}
    for raw in (raw_body, raw_query):  # body first so the query string overrides it
        seen: set[str] = set()
        for key, value in _pairs(raw):
            if key in seen:
                raise ApiError(400, -1101, "Duplicate values for a parameter detected.")
            seen.add(key)
            merged[key] = value
    return merged


def _strip_signature(raw: str) -> str:
    return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))


def signature_payload(raw_query: str, raw_body: str) -> str:
    """`totalParams` per Binance: raw query string + raw body, without the signature pair."""
    return _strip_signature(raw_query) + _strip_signature(raw_body)


def sign(secret: str, payload: str) -> str:
    """Hex HMAC-SHA256 as Binance expects (also used by tests to build good requests)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def check_timestamp(params: Mapping[str, str], now_ms: int) -> None:
    """Apply Binance's timestamp/recvWindow rule against the simulator clock."""
    raw_ts = params.get("timestamp", "")
    if not raw_ts.isdigit():
        raise missing_param("timestamp")
    raw_window = params.get("recvWindow")
    window = DEFAULT_RECV_WINDOW_MS
    if raw_window is not None:
        if not raw_window.isdigit():
            raise bad_param("recvWindow")
        window = int(raw_window)
        if window > MAX_RECV_WINDOW_MS:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
    ts = int(raw_ts)
    if ts >= now_ms + FUTURE_TOLERANCE_MS:
        raise ApiError(
            400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
        )
    if now_ms - ts > window:
        raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")


class KeyStore:
    """The configured accounts, looked up by API key."""

    def __init__(self, accounts: Iterable[SimAccount]) -> None:
        self._by_key: dict[str, SimAccount] = {}
        for acc in accounts:
            if acc.key in self._by_key:
                raise ValueError(f"duplicate API key {acc.key!r}")
            self._by_key[acc.key] = acc

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def account_for_key(self, key: str | None) -> SimAccount:
        """Resolve `X-MBX-APIKEY` (USER_STREAM / MARKET_DATA security)."""
        if not key or not key.strip():
            raise ApiError(401, -2014, "API-key format invalid.")
        acc = self._by_key.get(key.strip())
        if acc is None:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return acc

    def verify_signed(
        self,
        key: str | None,
        raw_query: str,
        raw_body: str,
        params: Mapping[str, str],
        now_ms: int,
    ) -> SimAccount:
        """Full SIGNED check: key, mandatory timestamp/signature, recvWindow, HMAC."""
        acc = self.account_for_key(key)
        if not params.get("signature"):
            raise missing_param("signature")
        check_timestamp(params, now_ms)
        expected = sign(acc.secret, signature_payload(raw_query, raw_body))
        if not hmac.compare_digest(expected, params["signature"].lower()):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        return acc
