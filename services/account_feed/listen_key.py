"""The listenKey lifecycle as a small state machine whose timing decisions are pure.

WHY: a lapsed listenKey is the classic way a bot goes blind — the socket may stay open
and simply go silent.  Every timing rule lives here, with time passed in (seconds on any
monotonic clock) and the jitter draw passed in, so tests walk hours of keepalives and
failures in microseconds and the service is a thin shell that does what `next()` says.

    no key --created--> valid --keepalive ok--> valid (next in `interval`)
                          |  \\--keepalive failed--> retrying: backoff, capped so every
                          |                          retry lands before the deadline
                          |                          --ok--> valid
                          |                          --still failing at deadline--> invalid
                          +--listenKeyExpired / -1125--> invalid
    invalid --(the service POSTs a new key, reconnects, reconciles)--> created again

Rules:
- keepalive every `renewal_interval` s after the key was created or last renewed, but
  never later than half the validity (a misconfigured 2 h period cannot lapse the key);
- Binance keeps a key 60 min after the last POST/PUT (`validity`); a failed keepalive is
  retried with full-jitter exponential backoff (`retry_base` doubled, capped at
  `retry_max`), every retry scheduled before the deadline `last_ok + validity × (1 −
  safety)`; past the deadline the key is given up: the service makes a new one and
  reconciles, before the exchange would have dropped it under our feet;
- a socket silent for `probe_after` s triggers an early keepalive: the PUT's answer
  (-1125 or not) says whether the key is still alive;
- results for a key that is no longer current (a PUT that raced a recreation) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Action", "Decision", "KeyPolicy", "ListenKeyLifecycle"]


class Action(Enum):
    WAIT = "wait"  # nothing to do until `at`
    KEEPALIVE = "keepalive"  # PUT the current key now
    RENEW = "renew"  # no valid key: create one (POST), reconnect, reconcile


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    at: float  # when to act (WAIT: wake-up time; otherwise now)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Timing of the lifecycle; seconds.  `validity` is Binance's 60 minutes (a fast
    simulator passes 3600 / speed)."""

    renewal_interval: float = 1800.0
    validity: float = 3600.0
    retry_base: float = 1.0
    retry_max: float = 60.0
    safety: float = 0.1
    probe_after: float | None = 600.0  # silent this long -> keepalive early (None: never)

    def __post_init__(self) -> None:
        if min(self.renewal_interval, self.validity, self.retry_base, self.retry_max) <= 0:
            raise ValueError("KeyPolicy times must be > 0")
        if not 0 <= self.safety < 1:
            raise ValueError("KeyPolicy.safety must be in [0, 1)")
        if self.probe_after is not None and self.probe_after <= 0:
            raise ValueError("KeyPolicy.probe_after must be > 0 or None")

    @property
    def interval(self) -> float:
        """Seconds between keepalives: the configured period, at most half the validity."""
        return min(self.renewal_interval, self.validity / 2)

    def deadline(self, last_ok: float) -> float:
        """Last moment to keep trying the current key."""
        return last_ok + self.validity * (1 - self.safety)

    def retry_delay(self, failures: int, draw: float) -> float:
        """Full-jitter backoff before retry number `failures` (1 = first retry)."""
        ceiling = min(self.retry_max, self.retry_base * 2 ** min(max(failures - 1, 0), 30))
        return max(0.0, min(1.0, draw)) * ceiling


class ListenKeyLifecycle:
    """State of the current listenKey and the counters the seed's health block needs.

    The key itself grants read access to the account's stream: it is never in a repr."""

    def __init__(self, policy: KeyPolicy) -> None:
        self.policy = policy
        self.key: str | None = None
        self.valid = False
        self.last_ok: float | None = None  # created or last renewed
        self.last_renewal: float | None = None  # last successful keepalive (PUT)
        self.next_at: float | None = None  # next scheduled keepalive attempt
        self.last_heard: float | None = None  # last message on the socket
        self.failures = 0  # consecutive failed keepalives of the current key
        self.invalid_reason = ""
        self.counters = dict.fromkeys(
            ("renewal_attempts", "renewal_successes", "renewal_failures", "keys_created",
             "key_invalidations", "keys_given_up"), 0,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (f"ListenKeyLifecycle(valid={self.valid}, failures={self.failures}, "
                f"next_at={self.next_at}, key={'***' if self.key else None})")  # fmt: skip

    # ---- decisions ----------------------------------------------------------------
    def next(self, now: float) -> Decision:
        """What to do at `now`."""
        if self.key is None or not self.valid or self.next_at is None:
            return Decision(Action.RENEW, now)
        due = self.due()
        if now >= due:
            return Decision(Action.KEEPALIVE, now)
        return Decision(Action.WAIT, due)

    def due(self) -> float:
        """When the next keepalive is due: the schedule, or earlier when the socket has
        been silent `probe_after` seconds (a PUT then proves the key is still alive: a
        lost `listenKeyExpired` costs minutes, not half an hour)."""
        assert self.next_at is not None and self.last_ok is not None
        probe = self.policy.probe_after
        if probe is None or self.failures:
            return self.next_at
        quiet_since = max(self.last_ok, self.last_heard or self.last_ok)
        return min(self.next_at, quiet_since + probe)

    def on_heard(self, now: float) -> None:
        """Something arrived on the socket (it is not silent)."""
        self.last_heard = now

    @property
    def retrying(self) -> bool:
        return self.valid and self.failures > 0

    @property
    def success_rate(self) -> float | None:
        """Keepalive successes / attempts (None before the first attempt)."""
        attempts = self.counters["renewal_attempts"]
        return self.counters["renewal_successes"] / attempts if attempts else None

    # ---- events ------------------------------------------------------------------
    def on_created(self, key: str, now: float) -> None:
        """POST answered `key` (a new key, or the still-active one, extended)."""
        if not key:
            raise ValueError("empty listenKey")
        self.key, self.valid, self.failures, self.invalid_reason = key, True, 0, ""
        self.last_ok = now
        self.next_at = now + self.policy.interval
        self.counters["keys_created"] += 1

    def on_attempt(self, key: str) -> bool:
        """A keepalive PUT of `key` is being sent; False if `key` is not current."""
        if key != self.key or not self.valid:
            return False
        self.counters["renewal_attempts"] += 1
        return True

    def on_keepalive_ok(self, key: str, now: float) -> None:
        if key != self.key or not self.valid:
            return
        self.counters["renewal_successes"] += 1
        self.failures = 0
        self.last_ok = self.last_renewal = now
        self.next_at = now + self.policy.interval

    def on_keepalive_failed(self, key: str, now: float, draw: float) -> bool:
        """A keepalive failed for a transient reason.  True: a retry is scheduled
        before the deadline; False: the key is given up (-> RENEW)."""
        if key != self.key or not self.valid:
            return self.valid
        self.counters["renewal_failures"] += 1
        self.failures += 1
        assert self.last_ok is not None
        deadline = self.policy.deadline(self.last_ok)
        if now >= deadline:
            self.counters["keys_given_up"] += 1
            self._invalidate(f"keepalive failing for {now - self.last_ok:.0f}s")
            return False
        self.next_at = min(now + self.policy.retry_delay(self.failures, draw), deadline)
        return True

    def on_keepalive_rejected(self, key: str) -> None:
        """The PUT answered -1125: the exchange no longer knows the key (-> RENEW)."""
        if key != self.key or not self.valid:
            return
        self.counters["renewal_failures"] += 1
        self.failures += 1
        self._invalidate("keepalive answered -1125")

    def on_invalid(self, key: str | None, reason: str) -> None:
        """listenKeyExpired or a socket refused for its key: the key is gone.  `key`
        None means "whatever key is current"."""
        if key is not None and key != self.key:
            return
        self._invalidate(reason)

    def on_closed(self) -> None:
        """The key was DELETEd on shutdown."""
        self.key, self.valid, self.next_at = None, False, None

    def _invalidate(self, reason: str) -> None:
        if self.valid:
            self.counters["key_invalidations"] += 1
        self.valid = False
        self.next_at = None
        self.invalid_reason = reason
