"""Circuit breaker around REST calls: stop hammering an exchange that is failing.

closed --(N consecutive failures)--> open --(open_seconds)--> half-open
half-open lets ONE trial request through: success -> closed, failure -> open again.

Only exchange-health failures count (see `errors.is_exchange_failure`); a business
rejection such as -2019 proves the exchange is up and counts as a success.  The clock is
injected (`now`, monotonic seconds) so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum

from shared.binance.errors import CircuitOpenError

__all__ = ["BreakerState", "CircuitBreaker"]

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open trial.

    Usage per request: `check()` early (cheap refusal before any waiting), then
    `trial = acquire()` right before sending, then exactly one of
    `on_success(trial)`, `on_failure(trial)` or `on_abandon(trial)`.
    """

    def __init__(
        self,
        failures: int = 5,
        open_seconds: float = 60.0,
        now: Callable[[], float] = time.monotonic,
        name: str = "rest",
    ) -> None:
        if failures < 1 or open_seconds <= 0:
            raise ValueError("failures must be >= 1 and open_seconds > 0")
        self.threshold = failures
        self.open_seconds = open_seconds
        self.name = name
        self._now = now
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.consecutive_failures = 0
        self.failures_total = 0
        self.opens = 0
        self.rejections = 0

    @property
    def state(self) -> BreakerState:
        """Current state; an open breaker turns half-open once its time is up."""
        if self._state is BreakerState.OPEN and self._remaining() <= 0:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
            log.info("breaker %s half-open: next request is the trial", self.name)
        return self._state

    def _remaining(self) -> float:
        return self._opened_at + self.open_seconds - self._now()

    def check(self) -> None:
        """Raise `CircuitOpenError` if a request could not be let through now."""
        state = self.state
        if state is BreakerState.OPEN:
            self.rejections += 1
            raise CircuitOpenError(f"circuit {self.name} open", max(self._remaining(), 0.0))
        if state is BreakerState.HALF_OPEN and self._trial_in_flight:
            self.rejections += 1
            raise CircuitOpenError(f"circuit {self.name} half-open, trial in flight", 0.0)

    def acquire(self) -> bool:
        """Let one request through; True when it is the half-open trial."""
        self.check()
        if self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True
            return True
        return False

    def on_success(self, trial: bool) -> None:
        if trial:
            self._trial_in_flight = False
            self._state = BreakerState.CLOSED
            self.consecutive_failures = 0
            log.info("breaker %s closed: trial succeeded", self.name)
        elif self._state is BreakerState.CLOSED:
            self.consecutive_failures = 0
        # A late success of a request sent before the breaker opened proves little.

    def on_failure(self, trial: bool) -> None:
        self.failures_total += 1
        if trial:
            self._trial_in_flight = False
            self._open("trial failed")
        elif self._state is BreakerState.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.threshold:
                self._open(f"{self.consecutive_failures} consecutive failures")

    def on_abandon(self, trial: bool) -> None:
        """The request ended with no verdict (cancelled, refused locally)."""
        if trial:
            self._trial_in_flight = False

    def _open(self, why: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._now()
        self.opens += 1
        log.warning("breaker %s open for %.0fs: %s", self.name, self.open_seconds, why)

    def stats(self) -> dict[str, object]:
        return {
            "breaker_state": self.state.value,
            "breaker_opens": self.opens,
            "breaker_failures": self.consecutive_failures,
            "breaker_failures_total": self.failures_total,
            "breaker_rejections": self.rejections,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name}, {self._state.value}, opens={self.opens})"
