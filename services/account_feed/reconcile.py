"""Reconciliation over REST: the caches made equal to the exchange after any gap.

WHY: whatever happened while no socket listened (a dropped connection, an expired
listenKey, a restart) is only in the exchange's REST answers.  After every (re)connect
the service fetches leverage, positions (positionRisk v3) and balances (balance v3) and
applies them through the same event-time rule as the stream (`state.snapshot_writes` +
`cache.AccountCache`): a REST row cannot overwrite an event the stream applied after the
snapshot was taken, and cached positions the exchange no longer has are removed.

The snapshot's time (`as_of`) is the exchange's own clock (`GET /fapi/v1/time`, weight
1) read just before the snapshot, not our wall clock: the rule compares it with event
times, which are the exchange's.

Leverage: v3 positionRisk has none.  `GET /fapi/v1/symbolConfig` gives it per symbol;
where that endpoint does not exist (HTTP 404: the simulator) v2 positionRisk is used.
If neither answers, positions keep the leverage already cached.
"""

from __future__ import annotations

import logging

from services.account_feed.cache import AccountCache
from services.account_feed.state import (
    Snapshot,
    parse_balance_rows,
    parse_leverage_rows,
    parse_position_rows,
    snapshot_writes,
)
from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.errors import MessageError

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


class Reconciler:
    """One REST client + the cache; `run()` reconciles once (errors propagate)."""

    def __init__(self, client: BinanceClient, cache: AccountCache) -> None:
        self.client = client
        self.cache = cache
        self.leverage_source = "symbolConfig"
        self.bad_rows = 0  # REST rows that did not parse (counted, skipped)

    async def run(self) -> dict[str, int]:
        """Make the caches equal the exchange; returns a summary for the log."""
        as_of = int((await self.client.server_time())["serverTime"])
        leverage = await self.fetch_leverage()
        positions, bad_p = parse_position_rows(await self.client.position_risk())
        balances, bad_b = parse_balance_rows(await self.client.balance(), as_of)
        self.bad_rows += bad_p + bad_b
        cached = await self.cache.cached_symbols()
        writes = snapshot_writes(Snapshot(as_of, tuple(positions), tuple(balances), leverage),
                                 cached)  # fmt: skip
        applied = await self.cache.apply(writes)
        return {"positions": sum(1 for p in positions if p.size != 0),
                "balances": len(balances), "leverages": len(leverage),
                "writes": len(writes), "stale": applied.count(False)}  # fmt: skip

    async def fetch_leverage(self) -> dict[str, int]:
        """symbol -> leverage; {} when it cannot be had (logged)."""
        try:
            if self.leverage_source == "symbolConfig":
                try:
                    rows = await self.client.symbol_config()
                except ExchangeError as exc:
                    if exc.status != 404:
                        raise
                    self.leverage_source = "positionRisk_v2"
                    log.info("no /fapi/v1/symbolConfig here; leverage from v2 positionRisk")
            if self.leverage_source != "symbolConfig":
                rows = await self.client.position_risk_v2()
            leverage, bad = parse_leverage_rows(rows)
        except (ExchangeError, MessageError, OSError, TimeoutError) as exc:
            log.warning("leverage not fetched (positions keep theirs): %s", exc)
            return {}
        self.bad_rows += bad
        return leverage
