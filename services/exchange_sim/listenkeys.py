"""listenKey lifecycle of the user data stream, as Binance USD-M futures runs it.

WHY: account_feed's create -> keepalive -> recreate-on-expiry loop is only trustworthy if it
was exercised against the real rules, including the unpleasant ones:
- POST on an account with an active key returns THAT key and extends it (no second key).
- A key is valid 60 minutes (simulator time) after creation or the last PUT.
- PUT needs `listenKey`; an unknown, closed or expired key answers -1125 "This listenKey does
  not exist." (the client must POST a new one and reconcile over REST).
- DELETE closes the key (its sockets are closed, no expiry event).
- When a key expires while sockets listen on it, each gets one `listenKeyExpired` event and
  then nothing more (the socket itself may stay open, silent).

Pure: time is always a parameter. The server's driver polls `pop_expired(now)` each tick.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .auth import ApiError

VALIDITY_MS = 60 * 60 * 1000
_ALPHABET = string.ascii_letters + string.digits


def unknown_key() -> ApiError:
    return ApiError(400, -1125, "This listenKey does not exist.")


@dataclass
class ListenKey:
    key: str
    account_id: str
    created_ms: int
    expires_ms: int
    state: str = "active"  # active | expired | closed


class ListenKeyRegistry:
    """All listenKeys of the simulator; at most one active key per account."""

    def __init__(self, seed: int = 0, validity_ms: int = VALIDITY_MS) -> None:
        self._rng = random.Random(f"listenkeys:{seed}")
        self.validity_ms = validity_ms
        self._keys: dict[str, ListenKey] = {}
        self._active_by_account: dict[str, str] = {}
        self.counters = {"created": 0, "reused": 0, "kept_alive": 0, "closed": 0, "expired": 0}

    def _new_key(self) -> str:
        while True:
            key = "".join(self._rng.choice(_ALPHABET) for _ in range(64))
            if key not in self._keys:
                return key

    def get(self, key: str) -> ListenKey | None:
        return self._keys.get(key)

    def active(self, key: str, now_ms: int) -> ListenKey | None:
        """The key if it is still valid at `now_ms` (expiry is applied lazily too)."""
        lk = self._keys.get(key)
        if lk is None or lk.state != "active" or now_ms >= lk.expires_ms:
            return None
        return lk

    def create(self, account_id: str, now_ms: int) -> ListenKey:
        """POST: the account's active key (extended), else a fresh one."""
        current = self._active_by_account.get(account_id)
        if current is not None:
            lk = self.active(current, now_ms)
            if lk is not None:
                lk.expires_ms = now_ms + self.validity_ms
                self.counters["reused"] += 1
                return lk
        lk = ListenKey(self._new_key(), account_id, now_ms, now_ms + self.validity_ms)
        self._keys[lk.key] = lk
        self._active_by_account[account_id] = lk.key
        self.counters["created"] += 1
        return lk

    def keepalive(self, account_id: str, key: str | None, now_ms: int) -> ListenKey:
        """PUT: extend by 60 min; -1125 when unknown, closed, expired or not this account's.

        Binance's PUT takes the key from the account; when the client sends `listenKey`
        it must match. Without one, the account's active key is extended.
        """
        if not key:
            key = self._active_by_account.get(account_id)
            if key is None:
                raise unknown_key()
        lk = self.active(key, now_ms)
        if lk is None or lk.account_id != account_id:
            raise unknown_key()
        lk.expires_ms = now_ms + self.validity_ms
        self.counters["kept_alive"] += 1
        return lk

    def close(self, account_id: str, key: str | None, now_ms: int) -> ListenKey | None:
        """DELETE: invalidate the key; returns it so the caller can close its sockets."""
        if not key:
            key = self._active_by_account.get(account_id)
            if key is None:
                return None
        lk = self.active(key, now_ms)
        if lk is None or lk.account_id != account_id:
            raise unknown_key()
        lk.state = "closed"
        self._active_by_account.pop(account_id, None)
        self.counters["closed"] += 1
        return lk

    def expire_now(self, key: str, now_ms: int) -> ListenKey:
        """Fault injection: make the key expire at `now_ms`."""
        lk = self._keys.get(key)
        if lk is None or lk.state != "active":
            raise unknown_key()
        lk.expires_ms = min(lk.expires_ms, now_ms)
        return lk

    def pop_expired(self, now_ms: int) -> list[ListenKey]:
        """Keys whose validity ran out by `now_ms`; each is reported exactly once."""
        out = [lk for lk in self._keys.values() if lk.state == "active" and now_ms >= lk.expires_ms]
        for lk in out:
            lk.state = "expired"
            if self._active_by_account.get(lk.account_id) == lk.key:
                del self._active_by_account[lk.account_id]
            self.counters["expired"] += 1
        return out

    def next_expiry_ms(self) -> int | None:
        times = [lk.expires_ms for lk in self._keys.values() if lk.state == "active"]
        return min(times) if times else None

    def snapshot(self) -> list[dict[str, object]]:
        """For /admin/state: keys are loopback-only simulator tokens, not secrets."""
        return [
            {
                "listenKey": lk.key,
                "account": lk.account_id,
                "state": lk.state,
                "expiresMs": lk.expires_ms,
            }
            for lk in self._keys.values()
        ]
