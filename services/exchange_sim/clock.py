"""The simulator's clock: maps real elapsed time × speed onto simulated epoch milliseconds.

Why its own class: the engine and the market never read a clock; the protocol layer asks this
one object "what time is it in the simulation" and passes the answer down. Tests inject a fake
`now_fn` (or use `advance`) and get exact, repeatable timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """Simulated time in ms since the epoch.

    `now_fn` returns real seconds (monotonic); sim time advances by elapsed × `speed`.
    `pause()` freezes sim time, `resume()` continues from the frozen value, `set_speed()`
    changes the rate without a jump, `advance(ms)` moves sim time forward by hand.
    """

    __slots__ = ("_now_fn", "_speed", "_base_sim", "_base_real", "_paused")

    def __init__(
        self,
        start_ms: int,
        speed: float = 1.0,
        now_fn: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._now_fn = now_fn
        self._speed = float(speed)
        self._base_sim = float(start_ms)
        self._base_real = now_fn()
        self._paused = False

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def paused(self) -> bool:
        return self._paused

    def _sim_now(self) -> float:
        if self._paused:
            return self._base_sim
        return self._base_sim + (self._now_fn() - self._base_real) * 1000.0 * self._speed

    def now_ms(self) -> int:
        """Current simulated time, integer ms (never decreases)."""
        return int(self._sim_now())

    def _rebase(self) -> None:
        self._base_sim = self._sim_now()
        self._base_real = self._now_fn()

    def pause(self) -> None:
        if not self._paused:
            self._rebase()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._base_real = self._now_fn()
            self._paused = False

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._rebase()
        self._speed = float(speed)

    def advance(self, ms: int | float) -> None:
        """Jump sim time forward (tests, or skipping idle stretches)."""
        if ms < 0:
            raise ValueError("cannot move the clock backwards")
        self._base_sim += float(ms)

    def sleep_seconds_until(self, sim_ms: int) -> float:
        """Real seconds to wait until sim time reaches `sim_ms` (0 if passed; inf if paused)."""
        remaining = sim_ms - self._sim_now()
        if remaining <= 0:
            return 0.0
        if self._paused:
            return float("inf")
        return remaining / 1000.0 / self._speed
