"""Symbols the trader entered whose position the account cache has not confirmed yet.

WHY: an entry leaves the in-flight set the moment its order finishes, but the position
cache (`Keys.position`, written by account_feed) can lag - and while account_feed's
heartbeat still says `ok` (up to `heartbeat_ttl` after it stalls) the account view trusts
that cache.  Without a hold, the next minute could see the symbol flat and enter it a
second time (two positions' worth of stops on one symbol; one position per symbol is a
hard rule).  A hold counts as an open position in every decision until one of:

- the cache shows the position with an event time at or after our fill (`updated_at`),
- the cache shows it flat with an event time strictly after our fill (account_feed keeps
  the close's event time in `Keys.account_state`, field `Keys.position_slot`),
- a REST read STARTED after the hold was set shows it flat.

An entry whose outcome is unknown has no fill time: only REST can release it.  Released
entries are remembered as "recently entered" for `recent_ms`, so the service confirms
flat over REST before entering such a symbol again (defence in depth, one weight-5 call).

Pure: times are parameters (`mono` = the caller's monotonic clock, `now_ms` = wall ms).
The service persists `to_json` per symbol in `Keys.trader_entries` so a restart keeps
its holds (a restored hold is released by any later REST read: `marked=-inf`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from shared.errors import MessageError

RECENT_ENTRY_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class Hold:
    client_order_id: str
    fill_ms: int | None  # exchange time of the fill; None: unknown (REST release only)
    at_ms: int  # wall time the hold was set (the "recently entered" window)
    notional: float
    held: bool = True
    marked: float = -math.inf  # caller's monotonic time the hold was set (not persisted)

    def to_json(self) -> bytes:
        return orjson.dumps({"client_order_id": self.client_order_id, "fill_ms": self.fill_ms,
                             "at_ms": self.at_ms, "notional": self.notional,
                             "held": self.held})  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | str) -> Hold:
        try:
            d = orjson.loads(raw)
            fill = d["fill_ms"]
            return cls(str(d["client_order_id"]), None if fill is None else int(fill),
                       int(d["at_ms"]), float(d["notional"]), bool(d["held"]))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"bad entry hold: {exc}") from None


class EntryHolds:
    def __init__(self, recent_ms: int = RECENT_ENTRY_MS) -> None:
        self.recent_ms = recent_ms
        self.entries: dict[str, Hold] = {}
        self.counters = dict.fromkeys(("holds_set", "released_cache", "released_rest"), 0)

    def hold(self, symbol: str, hold: Hold) -> None:
        self.entries[symbol] = hold
        self.counters["holds_set"] += 1

    def held(self) -> dict[str, float]:
        """symbol -> notional of every unconfirmed entry (counted as open positions)."""
        return {s: h.notional for s, h in self.entries.items() if h.held}

    def recently_entered(self, symbol: str, now_ms: int) -> bool:
        h = self.entries.get(symbol)
        return h is not None and (h.held or now_ms - h.at_ms < self.recent_ms)

    def settle_cache(
        self, positions: Mapping[str, Any], slot_times: Mapping[str, int | None]
    ) -> list[str]:
        """Release holds the cache confirms.  `positions`: symbol -> Position (open ones,
        `updated_at` = event time); `slot_times`: symbol -> event time of its slot."""
        out = []
        for s, h in self.entries.items():
            if not h.held or h.fill_ms is None:
                continue
            p = positions.get(s)
            seen = getattr(p, "updated_at", None)
            slot = slot_times.get(s)
            if (p is not None and seen is not None and seen >= h.fill_ms) or (
                p is None and slot is not None and slot > h.fill_ms
            ):
                out.append(s)
        self.counters["released_cache"] += len(out)
        return self._release(out)

    def settle_rest(self, symbols_open: Iterable[str], covered: Iterable[str] | None,
                    started: float) -> list[str]:  # fmt: skip
        """Release holds a REST read started at `started` (monotonic) shows flat.
        `covered`: the symbols the read answered for (None: every symbol)."""
        open_ = set(symbols_open)
        scope = None if covered is None else set(covered)
        out = [s for s, h in self.entries.items()
               if h.held and started > h.marked and s not in open_
               and (scope is None or s in scope)]  # fmt: skip
        self.counters["released_rest"] += len(out)
        return self._release(out)

    def unresolved(self, now_ms: int, after_ms: int) -> list[str]:
        """Holds older than `after_ms` that the cache has not confirmed."""
        return [s for s, h in self.entries.items() if h.held and now_ms - h.at_ms >= after_ms]

    def learn_fill_time(self, symbol: str, update_ms: int) -> None:
        """REST shows the position: its update time lets the cache release a hold whose
        fill time was unknown."""
        h = self.entries.get(symbol)
        if h is not None and h.held and h.fill_ms is None and update_ms > 0:
            self.entries[symbol] = replace(h, fill_ms=update_ms)

    def prune(self, now_ms: int) -> list[str]:
        """Forget released entries older than the recent window."""
        old = [s for s, h in self.entries.items()
               if not h.held and now_ms - h.at_ms >= self.recent_ms]  # fmt: skip
        for s in old:
            del self.entries[s]
        return old

    def _release(self, symbols: list[str]) -> list[str]:
        for s in symbols:
            self.entries[s] = replace(self.entries[s], held=False)
        return symbols
