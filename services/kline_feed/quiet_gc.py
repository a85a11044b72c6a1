"""Cyclic garbage collection between bursts instead of inside them.

WHY: CPython collects when allocations outnumber frees by 700, and a minute's burst of
closes is exactly when the feed allocates most (Klines, parsed events, encoded chunks),
so the collector tends to run in the middle of it: a young collection costs ~0.1 ms, an
older one 1-2 ms (measured in the feed), all of it added to that minute's latency.  With
automatic collection off, `maybe_collect()` is called from a periodic task when nothing
is queued and runs what CPython would have run by then, by the same thresholds; past
FORCE_FACTOR times a threshold it collects even while busy, so a feed that is never idle
(a firehose) still bounds its garbage.  Reference counting frees everything else as
usual; this only moves WHEN cycles are looked for.
"""

from __future__ import annotations

import gc

FORCE_FACTOR = 10


class QuietGC:
    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        self.collections = [0, 0, 0]
        self._was_enabled: bool | None = None

    def start(self) -> None:
        """Turn automatic collection off (remembering whether it was on)."""
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            gc.disable()

    def stop(self) -> None:
        """Back to automatic collection if it was on before `start`."""
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None

    def maybe_collect(self, idle: bool) -> int | None:
        """Collect the oldest generation whose count passed its threshold (times
        FORCE_FACTOR when not `idle`); returns the generation collected, or None."""
        if self._was_enabled is None:
            return None
        factor = 1 if idle else FORCE_FACTOR
        counts = gc.get_count()
        for gen in (2, 1, 0):
            if counts[gen] > self.thresholds[gen] * factor:
                gc.collect(gen)
                self.collections[gen] += 1
                return gen
        return None
