"""Request-weight and order-count limits, per IP, as Binance USD-M futures applies them.

WHY: our REST client must learn to read `X-MBX-USED-WEIGHT-1m`, slow down before the limit
and back off on 429 — and a client that ignores a 429 must get banned (418) here, as it
would be on fapi.binance.com, rather than in production.

Semantics (pure: the caller passes `now_ms`, the simulator's clock):
- Weight is counted per IP in fixed windows aligned to the minute (Binance's "1m" interval);
  the request that pushes the count past the limit gets 429 (-1003) with `Retry-After` =
  seconds until the window resets.
- Any request from that IP before the Retry-After moment has passed gets 418 (-1003, "IP
  banned until ..."): a ban of `ban_base_s` seconds, doubling on each repeat up to 3 days.
  During a ban every request gets 418 with `Retry-After` = remaining ban seconds.
- New orders are also counted per IP in 10 s and 1 min windows (order-count headers); past
  either limit -> 429 (-1015).
- Windows follow the simulator clock: at speed 60 a "minute" is one real second, so the
  system does a live minute's worth of calls per sim minute and meets live-like limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .auth import ApiError

MINUTE_MS = 60_000
TEN_S_MS = 10_000
MAX_BAN_S = 3 * 24 * 3600


@dataclass
class _IpState:
    window: int = -1
    used: int = 0
    orders_window_1m: int = -1
    orders_1m: int = 0
    orders_window_10s: int = -1
    orders_10s: int = 0
    retry_after_ms: int = 0  # after a 429: requests before this moment get banned
    banned_until_ms: int = 0
    next_ban_s: int = 0


@dataclass(frozen=True)
class Usage:
    """What the response headers report after a request was counted."""

    used_weight_1m: int
    order_count_1m: int
    order_count_10s: int

    def headers(self, with_orders: bool) -> dict[str, str]:
        out = {"X-MBX-USED-WEIGHT-1m": str(self.used_weight_1m)}
        if with_orders:
            out["X-MBX-ORDER-COUNT-1m"] = str(self.order_count_1m)
            out["X-MBX-ORDER-COUNT-10s"] = str(self.order_count_10s)
        return out


def _ceil_s(ms: int) -> int:
    return max(1, -(-ms // 1000))


class RateLimiter:
    """Per-IP weight/order accounting with Binance's 429 -> 418 escalation."""

    def __init__(
        self,
        weight_limit_1m: int = 2400,
        order_limit_1m: int = 1200,
        order_limit_10s: int = 300,
        ban_base_s: int = 120,
    ) -> None:
        self.weight_limit_1m = weight_limit_1m
        self.order_limit_1m = order_limit_1m
        self.order_limit_10s = order_limit_10s
        self.ban_base_s = ban_base_s
        self._ips: dict[str, _IpState] = {}
        self.count_429 = 0
        self.count_418 = 0

    def usage(self, ip: str, now_ms: int) -> Usage:
        st = self._ips.get(ip) or _IpState()
        self._roll(st, now_ms)
        return Usage(st.used, st.orders_1m, st.orders_10s)

    def reset(self) -> None:
        """Forget all counters and bans (admin/test helper)."""
        self._ips.clear()

    def charge(self, ip: str, weight: int, orders: int, now_ms: int) -> Usage:
        """Count one request; raise ApiError(429/418) when it must be refused."""
        st = self._ips.setdefault(ip, _IpState())
        if now_ms < st.banned_until_ms:
            raise self._banned(st, now_ms)
        if now_ms < st.retry_after_ms:
            raise self._ban(st, now_ms)
        self._roll(st, now_ms)
        st.used += weight
        if st.used > self.weight_limit_1m:
            st.retry_after_ms = (st.window + 1) * MINUTE_MS
            self.count_429 += 1
            raise ApiError(
                429,
                -1003,
                f"Too many requests; current limit is {self.weight_limit_1m} requests per "
                "minute. Please use the websocket for live updates to avoid polling the API.",
                {
                    "Retry-After": str(_ceil_s(st.retry_after_ms - now_ms)),
                    "X-MBX-USED-WEIGHT-1m": str(st.used),
                },
            )
        if orders:
            self._count_orders(st, orders, now_ms)
        return Usage(st.used, st.orders_1m, st.orders_10s)

    # ---- internals ---------------------------------------------------------------
    def _roll(self, st: _IpState, now_ms: int) -> None:
        window = now_ms // MINUTE_MS
        if window != st.window:
            st.window, st.used = window, 0
        if now_ms // MINUTE_MS != st.orders_window_1m:
            st.orders_window_1m, st.orders_1m = now_ms // MINUTE_MS, 0
        if now_ms // TEN_S_MS != st.orders_window_10s:
            st.orders_window_10s, st.orders_10s = now_ms // TEN_S_MS, 0

    def _count_orders(self, st: _IpState, orders: int, now_ms: int) -> None:
        st.orders_1m += orders
        st.orders_10s += orders
        for count, limit, label, span in (
            (st.orders_10s, self.order_limit_10s, "TEN_SECONDS", TEN_S_MS),
            (st.orders_1m, self.order_limit_1m, "MINUTE", MINUTE_MS),
        ):
            if count > limit:
                self.count_429 += 1
                reset_ms = (now_ms // span + 1) * span
                raise ApiError(
                    429,
                    -1015,
                    f"Too many new orders; current limit is {limit} orders per {label}.",
                    {"Retry-After": str(_ceil_s(reset_ms - now_ms))},
                )

    def _ban(self, st: _IpState, now_ms: int) -> ApiError:
        st.next_ban_s = min(MAX_BAN_S, st.next_ban_s * 2 if st.next_ban_s else self.ban_base_s)
        st.banned_until_ms = now_ms + st.next_ban_s * 1000
        st.retry_after_ms = 0
        return self._banned(st, now_ms)

    def _banned(self, st: _IpState, now_ms: int) -> ApiError:
        self.count_418 += 1
        return ApiError(
            418,
            -1003,
            f"Way too much request weight used; IP banned until {st.banned_until_ms}. "
            "Please use the websocket for live updates to avoid bans.",
            {"Retry-After": str(_ceil_s(st.banned_until_ms - now_ms))},
        )
