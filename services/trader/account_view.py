"""Equity, available margin, open positions and the halt switch for one decision.

Cache first, REST when the cache cannot be trusted (the seed's `_get_market_context`
fallback): ONE Redis script call (redis_io.py) reads the halt switch, account_feed's heartbeat
status, `Keys.balance(asset)` and every `Keys.position(symbol)` hash.  The cache is used
when account_feed says `ok` and the balance hash exists; otherwise (account_feed down or
starting, cache empty) the balance and positionRisk come over REST through the shared
client, and that snapshot is reused for `rest_ttl_s` (the trader invalidates it after each
order it sends).  The halt switch is always read from Redis: it must act at once.

Equity = wallet + unrealized PnL.  Available is what the exchange reports (REST) or, from
the cache, wallet + unrealized PnL - the initial margin of the open positions (leverage
unknown counts as 1x: conservative, a smaller entry rather than a -2019 rejection).
When neither source answers, `AccountUnavailable` is raised; the service then decides the
minute as halted (no entries, and the reason is visible on slt:stream:signals).

For the trader's entry holds (holds.py) a snapshot also says what it can prove: from the
cache, the event times of the watched symbols' position slots (read in the same script
call); from REST, when the read STARTED (a read begun before `invalidate()` is returned
to its caller but never reused: it may predate our order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.exceptions import RedisError

from services.trader.redis_io import TraderRedis
from shared.binance.errors import ExchangeError
from shared.binance.retry import retry_async
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import Balance, Position

log = logging.getLogger(__name__)
ZERO = Decimal(0)


class AccountUnavailable(Exception):
    """Neither the cache nor REST gave the account state."""

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(f"account state unavailable: {cause}")


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    equity: Decimal
    available: Decimal
    positions: dict[str, Position]  # open ones only (size != 0)
    halted: bool
    source: str  # cache | rest | rest_cached
    # cache: event time of each watched symbol's position slot (`Keys.position_slot`)
    slot_times: dict[str, int] = field(default_factory=dict)
    # rest / rest_cached: the view's clock when the REST read STARTED (what it can prove)
    rest_started: float | None = None


def _dec(value: Any) -> Decimal:
    try:
        d = Decimal(value.decode() if isinstance(value, bytes) else str(value))
    except InvalidOperation:
        raise MessageError(f"not a decimal: {value!r}") from None
    if not d.is_finite():
        raise MessageError(f"not a finite decimal: {value!r}")
    return d


def from_cache(balance: Balance, positions: Sequence[Position]) -> tuple[Decimal, Decimal]:
    """(equity, available) from account_feed's hashes (see module doc)."""
    upnl = sum((p.unrealized_pnl for p in positions), ZERO)
    margin = sum((abs(p.size) * p.entry_price / (p.leverage or 1) for p in positions), ZERO)
    equity = balance.wallet_balance + upnl
    return equity, min(equity, balance.cross_wallet_balance + upnl) - margin


def from_rest(rows: list[dict[str, Any]], asset: str) -> tuple[Decimal, Decimal]:
    """(equity, available) from a /fapi/v3/balance answer."""
    for row in rows:
        if isinstance(row, dict) and row.get("asset") == asset:
            wallet = _dec(row.get("balance", row.get("walletBalance", "0")))
            return wallet + _dec(row.get("crossUnPnl", "0")), _dec(row.get("availableBalance", "0"))
    raise MessageError(f"no {asset} row in the balance answer")


class AccountView:
    def __init__(
        self,
        redis: Any,
        keys: Keys,
        client: Any,
        symbols: Sequence[str],
        *,
        asset: str = "USDT",
        rest_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.io, self.client = TraderRedis(redis, keys), client
        self.symbols = list(symbols)
        self.asset, self.rest_ttl_s, self._clock = asset, rest_ttl_s, clock
        self._rest: tuple[float, Decimal, Decimal, dict[str, Position]] | None = None
        self._generation = 0  # bumped by invalidate(): a read begun before is not reused
        self.counters = dict.fromkeys(
            ("cache_reads", "rest_reads", "rest_reused", "rest_errors", "bad_hashes"), 0
        )

    def invalidate(self) -> None:
        """Our own order changed the account: the next REST snapshot must be fresh (and
        one in flight right now must not be kept: it may predate the order)."""
        self._rest = None
        self._generation += 1

    async def snapshot(self, watch: Sequence[str] = ()) -> AccountSnapshot:
        """`watch`: symbols whose position-slot event times are wanted (entry holds)."""
        try:
            halted, status, balance, hashes, slots = await self.io.read_account(
                self.asset, self.symbols, watch
            )
        except (RedisError, OSError) as exc:
            raise AccountUnavailable(f"redis: {exc!r}") from None
        if status == b"ok" and balance:
            cached = self._from_cache(balance, hashes)
            if cached is not None:
                self.counters["cache_reads"] += 1
                return AccountSnapshot(*cached, halted, "cache", slots)
        equity, available, positions, source, started = await self._from_rest()
        return AccountSnapshot(equity, available, positions, halted, source, {}, started)

    def _from_cache(
        self, balance_hash: dict[Any, Any], position_hashes: list[dict[Any, Any]]
    ) -> tuple[Decimal, Decimal, dict[str, Position]] | None:
        try:
            balance = Balance.from_hash(balance_hash)
        except MessageError:
            self.counters["bad_hashes"] += 1
            return None
        positions: dict[str, Position] = {}
        for h in position_hashes:
            if not h:
                continue
            try:
                p = Position.from_hash(h)
            except MessageError:
                self.counters["bad_hashes"] += 1
                return None  # a damaged hash: ask the exchange instead
            if p.size != 0:
                positions[p.symbol] = p
        equity, available = from_cache(balance, list(positions.values()))
        return equity, available, positions

    async def _from_rest(self) -> tuple[Decimal, Decimal, dict[str, Position], str, float]:
        now, generation = self._clock(), self._generation
        if self._rest is not None and now - self._rest[0] < self.rest_ttl_s:
            self.counters["rest_reused"] += 1
            t, equity, available, positions = self._rest
            return equity, available, dict(positions), "rest_cached", t
        try:  # transient answers (5xx, busy) are retried briefly: reads are safe to repeat
            balance = await retry_async(self.client.balance, attempts=3, base_delay=0.05)
            equity, available = from_rest(balance, self.asset)
            rows = await retry_async(self.client.position_risk, attempts=3, base_delay=0.05)
            positions = {}
            for row in rows:
                p = Position.from_position_risk(row)
                if p.size != 0 and p.position_side == "BOTH":
                    positions[p.symbol] = p
        except (ExchangeError, MessageError) as exc:
            self.counters["rest_errors"] += 1
            raise AccountUnavailable(f"rest: {exc}") from None
        self.counters["rest_reads"] += 1
        if generation == self._generation:
            self._rest = (now, equity, available, positions)
        return equity, available, dict(positions), "rest", now
