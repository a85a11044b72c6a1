"""Circuit breaker state machine with an injected clock (no sleeping)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.binance.breaker import BreakerState, CircuitBreaker
from shared.binance.errors import (
    CircuitOpenError,
    ExchangeUnavailable,
    InsufficientMargin,
    IpBanned,
    OrderRejected,
    RateLimited,
    RetryableError,
    is_exchange_failure,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fail(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        b.on_failure(b.acquire())


def test_opens_after_threshold_and_rejects_while_open() -> None:
    clock = Clock()
    b = CircuitBreaker(5, 60, now=clock)
    fail(b, 4)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 4
    fail(b, 1)
    assert b.state is BreakerState.OPEN and b.opens == 1
    clock.t += 59.0
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(1.0)
    assert b.rejections == 1


def test_half_open_lets_exactly_one_trial_and_success_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(5, 60, now=clock)
    fail(b, 5)
    clock.t += 60.0
    assert b.state is BreakerState.HALF_OPEN
    trial = b.acquire()
    assert trial is True
    with pytest.raises(CircuitOpenError):
        b.acquire()  # a second request while the trial is in flight
    b.on_success(trial)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0
    assert b.acquire() is False


def test_failed_trial_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = CircuitBreaker(5, 60, now=clock)
    fail(b, 5)
    clock.t += 61.0
    b.on_failure(b.acquire())
    assert b.state is BreakerState.OPEN and b.opens == 2
    clock.t += 59.9
    with pytest.raises(CircuitOpenError):
        b.check()
    clock.t += 0.2
    assert b.acquire() is True


def test_abandoned_trial_frees_the_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10, now=clock)
    fail(b, 1)
    clock.t += 10
    b.on_abandon(b.acquire())
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is True


def test_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(3, 60, now=Clock())
    fail(b, 2)
    b.on_success(b.acquire())
    fail(b, 2)
    assert b.state is BreakerState.CLOSED
    assert b.failures_total == 4


def test_late_results_while_open_change_nothing() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 30, now=clock)
    in_flight = b.acquire()
    fail(b, 2)
    b.on_success(in_flight)  # sent before the breaker opened: proves little
    assert b.state is BreakerState.OPEN
    b.on_failure(False)
    clock.t += 30
    assert b.state is BreakerState.HALF_OPEN and b.opens == 1


def test_stats_and_validation() -> None:
    b = CircuitBreaker(2, 30, now=Clock())
    fail(b, 2)
    stats = b.stats()
    assert stats["breaker_state"] == "open"
    assert stats["breaker_opens"] == 1
    assert stats["breaker_failures"] == 2
    with pytest.raises(ValueError):
        CircuitBreaker(0, 30)
    with pytest.raises(ValueError):
        CircuitBreaker(3, 0)


@given(st.lists(st.booleans(), max_size=60), st.integers(min_value=1, max_value=6))
def test_opens_exactly_at_the_first_run_of_n_failures(outcomes: list[bool], n: int) -> None:
    """Closed breaker + outcome sequence (True = failure): it opens at the first run of
    n consecutive failures and at no other point (the clock never moves)."""
    b = CircuitBreaker(n, 60, now=Clock())
    run = 0
    for failed in outcomes:
        if run >= n:
            with pytest.raises(CircuitOpenError):
                b.acquire()
            continue
        trial = b.acquire()
        (b.on_failure if failed else b.on_success)(trial)
        run = run + 1 if failed else 0
        assert (b.state is BreakerState.OPEN) == (run >= n)
    assert b.opens == (1 if run >= n else 0)


def test_which_errors_count_as_exchange_failures() -> None:
    assert is_exchange_failure(RetryableError(503, None, "busy"))
    assert is_exchange_failure(ExchangeUnavailable("timeout"))
    assert is_exchange_failure(RateLimited(429, -1003, "slow down", 1.0))
    assert is_exchange_failure(IpBanned(418, -1003, "banned", 120.0))
    assert is_exchange_failure(TimeoutError())
    assert not is_exchange_failure(RetryableError(400, -1021, "timestamp"))
    assert not is_exchange_failure(InsufficientMargin(400, -2019, "margin"))
    assert not is_exchange_failure(OrderRejected(400, -2010, "rejected"))
    assert not is_exchange_failure(CircuitOpenError("open", 3.0))
    assert not is_exchange_failure(ValueError("bug"))
