"""The listenKey lifecycle's timing decisions (pure: times and jitter are passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.account_feed.listen_key import Action, Decision, KeyPolicy, ListenKeyLifecycle

POLICY = KeyPolicy(renewal_interval=1800, validity=3600, retry_base=1, retry_max=60,
                   probe_after=None)  # fmt: skip


def created(policy: KeyPolicy = POLICY, at: float = 0.0) -> ListenKeyLifecycle:
    lc = ListenKeyLifecycle(policy)
    lc.on_created("key-1", at)
    return lc


def test_without_a_key_the_decision_is_to_create_one() -> None:
    lc = ListenKeyLifecycle(POLICY)
    assert lc.next(5.0) == Decision(Action.RENEW, 5.0) and not lc.valid


def test_keepalive_every_renewal_interval_after_the_last_success() -> None:
    lc = created()
    assert lc.next(10) == Decision(Action.WAIT, 1800)
    assert lc.next(1800).action is Action.KEEPALIVE
    assert lc.on_attempt("key-1")
    lc.on_keepalive_ok("key-1", 1801)
    assert lc.next(1802) == Decision(Action.WAIT, 3601)
    assert lc.last_renewal == 1801 and lc.success_rate == 1.0


def test_a_period_longer_than_half_the_validity_is_clamped() -> None:
    lc = created(KeyPolicy(renewal_interval=7200, validity=3600, probe_after=None))
    assert lc.next(0) == Decision(Action.WAIT, 1800)


def test_a_failed_keepalive_is_retried_with_backoff_and_counted() -> None:
    lc = created()
    lc.on_attempt("key-1")
    assert lc.on_keepalive_failed("key-1", 1800, draw=0.5)  # retry scheduled
    d = lc.next(1800)
    assert d.action is Action.WAIT and d.at == pytest.approx(1800.5)  # 0.5 * base 1
    lc.on_attempt("key-1")
    lc.on_keepalive_failed("key-1", 1800.5, draw=1.0)
    assert lc.next(1800.5).at == pytest.approx(1802.5)  # ceiling doubled
    lc.on_attempt("key-1")
    lc.on_keepalive_ok("key-1", 1802.5)
    assert lc.valid and lc.failures == 0 and lc.next(1803).at == pytest.approx(3602.5)
    assert lc.counters["renewal_attempts"] == 3 and lc.counters["renewal_failures"] == 2
    assert lc.success_rate == pytest.approx(1 / 3)


def test_retries_stay_before_the_deadline_then_the_key_is_given_up() -> None:
    lc = created()
    deadline = POLICY.deadline(0)  # 54 min: well before the 60 minutes run out
    assert deadline == pytest.approx(3240)
    now = 1800.0
    while True:
        assert lc.next(now).action is Action.KEEPALIVE
        lc.on_attempt("key-1")
        if not lc.on_keepalive_failed("key-1", now, draw=1.0):
            break
        nxt = lc.next(now).at
        assert now < nxt <= deadline
        assert nxt - now <= POLICY.retry_max
        now = nxt
    assert now == pytest.approx(deadline) and not lc.valid
    assert lc.next(now).action is Action.RENEW and lc.counters["keys_given_up"] == 1


def test_minus_1125_and_expiry_invalidate_at_once() -> None:
    lc = created()
    lc.on_attempt("key-1")
    lc.on_keepalive_rejected("key-1")
    assert lc.next(1).action is Action.RENEW and lc.counters["renewal_failures"] == 1
    lc.on_created("key-2", 2)
    lc.on_invalid("old-key", "listenKeyExpired")  # about a key we no longer use
    assert lc.valid
    lc.on_invalid(None, "listenKeyExpired")
    assert not lc.valid and lc.counters["key_invalidations"] == 2


def test_results_for_a_replaced_key_are_ignored() -> None:
    lc = created()
    assert lc.on_attempt("key-1")
    lc.on_created("key-2", 100)  # a reconnect made a new key meanwhile
    lc.on_keepalive_ok("key-1", 101)
    assert lc.on_keepalive_failed("key-1", 102, draw=0.0) and lc.failures == 0
    lc.on_keepalive_rejected("key-1")
    assert lc.valid and lc.key == "key-2" and lc.counters["renewal_successes"] == 0
    assert not lc.on_attempt("key-1")


def test_a_silent_socket_brings_the_keepalive_forward() -> None:
    lc = created(KeyPolicy(renewal_interval=1800, probe_after=600))
    assert lc.next(0).at == 600
    lc.on_heard(500)
    assert lc.next(550) == Decision(Action.WAIT, 1100)
    assert lc.next(1100).action is Action.KEEPALIVE


def test_closed_forgets_the_key_and_repr_hides_it() -> None:
    lc = created()
    assert "key-1" not in repr(lc)
    lc.on_closed()
    assert lc.key is None and lc.next(0).action is Action.RENEW


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        KeyPolicy(renewal_interval=0)
    with pytest.raises(ValueError):
        KeyPolicy(safety=1.0)
    with pytest.raises(ValueError):
        ListenKeyLifecycle(POLICY).on_created("", 0)


@given(
    outcomes=st.lists(st.sampled_from(("ok", "fail", "fail", "fail", "-1125")), max_size=200),
    draws=st.lists(st.floats(0, 1), min_size=1, max_size=20),
    interval=st.floats(1, 5000),
    retry_max=st.floats(0.5, 600),
)
def test_the_key_never_lapses_while_we_think_it_is_valid(
    outcomes: list[str], draws: list[float], interval: float, retry_max: float
) -> None:
    """Whatever the keepalives answer, every attempt and every give-up happens before
    the exchange's 60 minutes since the last success run out."""
    policy = KeyPolicy(renewal_interval=interval, retry_max=retry_max, probe_after=None)
    lc = created(policy)
    now, keys = 0.0, 1
    for i, outcome in enumerate(outcomes):
        d = lc.next(now)
        if d.action is Action.RENEW:
            assert lc.last_ok is not None and now < lc.last_ok + policy.validity
            keys += 1
            lc.on_created(f"key-{keys}", now)
            continue
        now = max(now, d.at)
        assert lc.last_ok is not None and now < lc.last_ok + policy.validity
        key = lc.key
        assert key is not None and lc.on_attempt(key)
        if outcome == "ok":
            lc.on_keepalive_ok(key, now)
        elif outcome == "-1125":
            lc.on_keepalive_rejected(key)
        else:
            lc.on_keepalive_failed(key, now, draws[i % len(draws)])
    c = lc.counters
    assert c["renewal_attempts"] == c["renewal_successes"] + c["renewal_failures"]
