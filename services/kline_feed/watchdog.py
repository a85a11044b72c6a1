"""When is a closed kline overdue, and what time is it on the exchange? (pure: every time is
a parameter, nothing here reads a clock).

Exchange time.  A kline is due by the EXCHANGE's clock, which is not ours: Binance's
differs by the network and clock skew, and the simulator runs a fast clock (600 simulated
seconds per real second in tests).  `ExchangeClock` therefore derives "now on the exchange"
from what the exchange says: the newest event time `E` seen, plus the local time elapsed
since, times the observed rate of exchange ms per local ms (1.0 against Binance, the
speed factor against the simulator; measured over windows of `window_s`).  Between
messages the estimate may run ahead (a paused simulator) or behind; that is safe,
because a REST row is only taken as closed when the exchange proves it
(`shared.kline_publisher.closed_rest_klines`), and a late watchdog only means later.

Watchdog.  Minute M (open time M) closes at M + interval.  It is overdue when the
exchange's now passes M + interval + grace and the symbol's last published open time is
still below M.  The grace is `websocket.close_grace` (3 s), or the shorter
`websocket.early_rest_close` when the socket's `x:true` messages are measured to come
later than that: Binance futures sends them about 2 s after the minute while REST already
has the closed candle, so REST is then the earliest safe path (`effective_grace_ms`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from statistics import median

__all__ = [
    "EARLY_MARGIN_MS",
    "ExchangeClock",
    "LatenessTracker",
    "due_open_time",
    "effective_grace_ms",
    "overdue",
]

# REST must beat the socket by at least this much to be worth a request per symbol.
EARLY_MARGIN_MS = 250


class ExchangeClock:
    """Estimate of the exchange's epoch ms from observed event times (see module doc).
    `mono` arguments are local monotonic seconds."""

    __slots__ = ("_last_e", "_last_m", "_anchor_e", "_anchor_m", "rate", "window_s",
                 "min_rate", "max_rate")  # fmt: skip

    def __init__(
        self, window_s: float = 0.5, min_rate: float = 0.25, max_rate: float = 100_000.0
    ) -> None:
        self._last_e: int | None = None
        self._last_m = 0.0
        self._anchor_e = 0
        self._anchor_m = 0.0
        self.rate = 1.0  # exchange ms per local ms
        self.window_s = window_s
        self.min_rate = min_rate
        self.max_rate = max_rate

    @property
    def known(self) -> bool:
        return self._last_e is not None

    def observe(self, exchange_ms: int, mono: float) -> None:
        """An event stamped `exchange_ms` by the exchange arrived at local `mono`."""
        if self._last_e is None:
            self._last_e, self._last_m = exchange_ms, mono
            self._anchor_e, self._anchor_m = exchange_ms, mono
            return
        if exchange_ms > self._last_e:
            self._last_e, self._last_m = exchange_ms, mono
        span = mono - self._anchor_m
        if span >= self.window_s:
            rate = (self._last_e - self._anchor_e) / (span * 1000.0)
            self.rate = min(self.max_rate, max(self.min_rate, rate))
            self._anchor_e, self._anchor_m = self._last_e, mono

    def now(self, mono: float) -> int | None:
        """Exchange ms at local `mono`; None before the first observation."""
        if self._last_e is None:
            return None
        return int(self._last_e + max(0.0, mono - self._last_m) * 1000.0 * self.rate)

    def local_seconds(self, exchange_ms: float) -> float:
        """Local seconds that `exchange_ms` of exchange time take at the observed rate."""
        return exchange_ms / 1000.0 / self.rate


class LatenessTracker:
    """How late `x:true` arrives after its minute ended, by the exchange's own stamps
    (`E - (T + 1)`), over the last `size` closes."""

    __slots__ = ("_values",)

    def __init__(self, size: int = 64) -> None:
        self._values: deque[int] = deque(maxlen=size)

    def record(self, event_ms: int, close_time_ms: int) -> None:
        self._values.append(event_ms - (close_time_ms + 1))

    def median(self) -> float | None:
        return median(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)


def effective_grace_ms(
    close_grace_ms: int, early_ms: int, lateness_ms: float | None, budget_ok: bool
) -> int:
    """The grace after a close before the watchdog fetches it over REST: `early_ms` when
    the socket is measured to be later than that (by EARLY_MARGIN_MS) and the REST budget
    allows a request per symbol per interval, else `close_grace_ms`."""
    if (
        early_ms > 0
        and budget_ok
        and lateness_ms is not None
        and lateness_ms > early_ms + EARLY_MARGIN_MS
    ):
        return min(early_ms, close_grace_ms)
    return close_grace_ms


def due_open_time(now_ms: int, interval_ms: int, grace_ms: int) -> int:
    """Open time of the newest kline whose close + grace is at or before `now_ms`."""
    return (now_ms - grace_ms) // interval_ms * interval_ms - interval_ms


def overdue(last_open: Mapping[str, int], due_open: int, skip: Collection[str] = ()) -> list[str]:
    """Symbols whose last published open time is below `due_open` (a closed kline that
    should be in Redis by now is not), except those in `skip` (already being fetched)."""
    return [s for s, last in last_open.items() if last < due_open and s not in skip]
