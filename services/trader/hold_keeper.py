"""The async shell around `holds.EntryHolds`: sets a hold after each entry, persists it in
`Keys.trader_entries`, and releases it from the account snapshot of each decided minute
or, when the cache has not confirmed it within `rest_after_ms`, from REST positionRisk
for that one symbol (weight 5, only while the cache lags).

Which entries hold their symbol (see holds.py for why): every filled one (protected,
closed again, unprotected), one whose outcome is unknown or whose LIMIT order could not
be seen cancelled (no fill time: REST release only), and one that raised.  Redis errors
are counted and logged; the holds in memory still apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError

from services.trader.account_view import AccountSnapshot
from services.trader.execution import ExecutionReport, Outcome
from services.trader.holds import EntryHolds, Hold
from shared.binance.errors import ExchangeError
from shared.errors import MessageError
from shared.keys import Keys

log = logging.getLogger(__name__)

_FILLED = frozenset({Outcome.PROTECTED, Outcome.CLOSED, Outcome.UNPROTECTED})
_OPEN_STATUS = frozenset({"NEW", "PARTIALLY_FILLED"})


def _wall_ms() -> int:
    return int(time.time() * 1000)


class HoldKeeper:
    def __init__(
        self, redis: Any, keys: Keys, client: Any, *, rest_after_ms: int = 5_000,
        clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:  # fmt: skip
        self.redis, self.keys, self.client = redis, keys, client
        self.rest_after_ms, self._clock, self._wall = rest_after_ms, clock, wall_ms
        self.holds = EntryHolds()
        self.counters = dict.fromkeys(
            ("rest_checks", "rest_errors", "redis_errors", "bad_entries", "restored"), 0
        )

    # ---- reads used by the service ----------------------------------------------------
    def watch(self) -> list[str]:
        return sorted(self.holds.held())

    def held(self) -> dict[str, float]:
        return self.holds.held()

    def recently_entered(self, symbol: str) -> bool:
        return self.holds.recently_entered(symbol, self._wall())

    # ---- lifecycle --------------------------------------------------------------------
    async def load(self) -> None:
        """Holds a previous run left (marked -inf: any later REST read may release)."""
        try:
            raw = await self.redis.hgetall(self.keys.trader_entries)
        except (RedisError, OSError) as exc:
            self.counters["redis_errors"] += 1
            log.error("entry holds not restored: %r", exc)
            return
        for symbol, value in raw.items():
            try:
                self.holds.entries[symbol.decode()] = Hold.from_json(value)
                self.counters["restored"] += 1
            except (MessageError, UnicodeDecodeError) as exc:
                self.counters["bad_entries"] += 1
                log.warning("bad entry hold %r dropped: %s", symbol, exc)
        await self._persist([], self.holds.prune(self._wall()))

    async def after_entry(
        self, symbol: str, report: ExecutionReport | None, notional: float
    ) -> None:
        """Hold `symbol` when the entry may have left a position (report None: raised)."""
        if (
            report is None
            or report.outcome == Outcome.UNKNOWN
            or (report.outcome == Outcome.NOT_FILLED and report.detail in _OPEN_STATUS)
        ):
            fill = None
        elif report.outcome in _FILLED:
            fill = report.fill_time
        else:
            return
        notional = notional if notional > 0 else 1e-9  # the core counts a 0 as not held
        self.holds.hold(symbol, Hold(report.client_order_id if report else "", fill,
                                     self._wall(), notional, True, self._clock()))  # fmt: skip
        await self._persist([symbol], [])

    async def settle(self, snap: AccountSnapshot) -> None:
        """Release what this snapshot proves; ask REST about holds the cache still lags on."""
        if not self.holds.held():
            return
        if snap.rest_started is None:
            released = self.holds.settle_cache(snap.positions, snap.slot_times)
            lagging = self.holds.unresolved(self._wall(), self.rest_after_ms)
            if lagging:
                await asyncio.gather(*(self._confirm(s) for s in lagging))
                released += [s for s in lagging if s not in self.holds.held()]
        else:
            released = self.holds.settle_rest(snap.positions, None, snap.rest_started)
        await self._persist(released, self.holds.prune(self._wall()))

    async def _confirm(self, symbol: str) -> None:
        self.counters["rest_checks"] += 1
        started = self._clock()
        try:
            rows = await self.client.position_risk(symbol)
            open_ = [r for r in rows if r.get("symbol") == symbol
                     and Decimal(str(r["positionAmt"])) != 0]  # fmt: skip
        except (ExchangeError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            self.counters["rest_errors"] += 1
            log.warning("hold on %s not confirmed over REST: %r", symbol, exc)
            return
        if open_:
            try:
                self.holds.learn_fill_time(symbol, int(open_[0].get("updateTime", 0)))
            except (TypeError, ValueError):
                pass  # the hold stays until REST shows flat
            return
        self.holds.settle_rest((), (symbol,), started)

    async def _persist(self, changed: list[str], gone: list[str]) -> None:
        if not changed and not gone:
            return
        key = self.keys.trader_entries
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for s in changed:
                    pipe.hset(key, s, self.holds.entries[s].to_json())
                if gone:
                    pipe.hdel(key, *gone)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.counters["redis_errors"] += 1
            log.error("entry holds not persisted: %r", exc)

    def stats(self) -> dict[str, Any]:
        return {"held": len(self.holds.held()),
                **{f"{k}_total": v for k, v in {**self.holds.counters, **self.counters}.items()}}  # fmt: skip
