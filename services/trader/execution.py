"""Carries out a taken decision: leverage, entry, protective algo orders - or a close.

Sending is where money is at stake, so every "what if" lives here:

1. The decision record goes to `Keys.decision(<entry id>)` (DecisionRecord JSON, SET NX)
   BEFORE the entry, so the position controller can join the closed trade to it.
2. Exactly once: the entry's deterministic client id is claimed with `SADD
   Keys.orders_sent` before it is sent.  A replayed kline, a second replica or a restart
   finds it claimed and sends nothing (`duplicate`).  Without Redis nothing is sent.
3. The halt switch is read again just before the entry (the decision may be seconds old).
   For a symbol the trader entered recently (`confirm_flat`, see holds.py) REST
   positionRisk must show it flat first, or nothing is sent (`in_position`, or `failed`
   when REST does not answer): one position per symbol, whatever the cache says.
4. Leverage is set (POST /fapi/v1/leverage) when it differs from what we know.
5. Entry: MARKET (or LIMIT) with `newOrderRespType=RESULT`.  A 5xx, timeout or busy answer
   leaves the outcome UNKNOWN (Binance: "could have been a success"), so the order is
   looked up by its client id before it is ever sent again (`_place`).  If the lookup
   cannot tell within `entry_deadline_s`, it keeps looking (no resend) for
   `resolve_deadline_s`; a fill found then is protected like any other.
6. Right after the fill: STOP_MARKET and TAKE_PROFIT_MARKET with closePosition=true through
   the Algo Order API, mark-price triggered, each retried (lookup by clientAlgoId first)
   until `protect_deadline_s`.  If either cannot be placed, the position is CLOSED at once
   with a reduce-only MARKET order (its own deterministic id, same lookup rule, retried
   through an open circuit breaker until `close_deadline_s`) and the protective order that
   did get placed is cancelled.  A REST failure during execution therefore ends with the
   position protected, or closed, or - only if the exchange stays unreachable past every
   deadline - reported `unprotected` (critical log; the position controller's protection
   check is the next line of defence).
7. Every request and its result (or error, latency) goes to `Keys.stream_orders`, best
   effort after the fact: a Redis outage never stops protection (order_sender.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from redis.exceptions import RedisError

from services.position_controller.executor import algo_params
from services.trader.core import Decision
from services.trader.order_ids import client_order_id
from services.trader.order_sender import OrderSender, Unresolved, error_code
from shared.binance.errors import BinanceCode, ExchangeError
from shared.keys import Keys
from shared.models import OrderIntent

log = logging.getLogger(__name__)

ZERO = Decimal(0)
_CLOSE_POSITION_EXISTS = -4130  # a closePosition order in that direction already exists
_EXISTS = frozenset({BinanceCode.DUPLICATED_CLIENT_ORDER_ID, _CLOSE_POSITION_EXISTS})
_OPEN = frozenset({"NEW", "PARTIALLY_FILLED"})


class Outcome(StrEnum):
    PROTECTED = "protected"  # filled, stop and take-profit on the exchange
    CLOSED = "closed"  # filled, protection failed, position closed again
    UNPROTECTED = "unprotected"  # filled, neither protected nor closed (critical)
    NOT_FILLED = "not_filled"  # accepted, nothing filled (LIMIT timed out)
    DUPLICATE = "duplicate"  # already claimed: sent before, not sent again
    IN_POSITION = "in_position"  # REST shows a position on the symbol: not sent
    HALTED = "halted"  # the halt switch was set before sending
    STALE = "stale"  # waited too long in the queue
    REJECTED = "rejected"  # the exchange refused the entry (or the leverage)
    FAILED = "failed"  # not sent / certainly not placed
    UNKNOWN = "unknown"  # sent, outcome never established (critical)


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    client_order_id: str
    symbol: str
    outcome: Outcome
    filled_qty: Decimal = ZERO
    detail: str = ""
    fill_time: int | None = None  # exchange time of the entry's final state (updateTime)


@dataclass(frozen=True, slots=True)
class ExecutionOptions:
    attempts: int = 4  # sends of one order before giving up (lookups in between)
    base_delay: float = 0.05
    max_delay: float = 1.0
    entry_deadline_s: float = 5.0
    resolve_deadline_s: float = 60.0
    protect_deadline_s: float = 5.0
    close_deadline_s: float = 90.0  # > breaker_open_seconds: a close waits out the breaker
    limit_wait_s: float = 10.0
    limit_poll_s: float = 0.25
    record_ttl_s: int = 30 * 86_400
    max_queue_delay_s: float = 20.0


class EntryExecutor:
    def __init__(
        self, client: Any, redis: Any, keys: Keys, *, orders_maxlen: int = 100_000,
        options: ExecutionOptions | None = None, strategy_version: str = "slt-1",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        self.client, self.redis, self.keys = client, redis, keys
        self.opt = opt = options or ExecutionOptions()
        self.strategy_version, self._sleep = strategy_version, sleep
        self.tx = OrderSender(redis, keys, orders_maxlen=orders_maxlen, attempts=opt.attempts,
                              base_delay=opt.base_delay, max_delay=opt.max_delay, sleep=sleep)  # fmt: skip
        self.leverage: dict[str, int] = {}  # what the exchange has, as far as we know
        self.outcomes = {o.value: 0 for o in Outcome}
        self.counters = dict.fromkeys(
            ("entries_sent", "leverage_changes", "closes_sent", "flat_checks"), 0
        )

    # ---- the flow ------------------------------------------------------------------------
    async def execute(
        self, d: Decision, queued_at: float | None = None, *, confirm_flat: bool = False
    ) -> ExecutionReport:
        """`confirm_flat`: ask REST positionRisk for the symbol first and send nothing
        unless it is flat (the service sets it for symbols it entered recently)."""
        entry, stop, take = d.intents
        cid = entry.client_order_id
        if queued_at is not None and time.monotonic() - queued_at > self.opt.max_queue_delay_s:
            return self._done(d, Outcome.STALE, detail="waited too long in the queue")
        if d.record is None:  # the core always attaches one; without it nothing is learned
            return self._done(d, Outcome.FAILED, detail="taken decision without a record")
        try:
            if await self.redis.exists(self.keys.halt):
                return self._done(d, Outcome.HALTED, detail="halt switch set before sending")
        except (RedisError, OSError) as exc:  # no claim, no order
            return self._done(d, Outcome.FAILED, detail=f"redis: {exc!r}")
        if confirm_flat and (held := await self._position_open(entry.symbol)) is not None:
            return self._done(d, Outcome.IN_POSITION if held else Outcome.FAILED,
                              detail=held or "position not confirmed flat over REST")  # fmt: skip
        try:
            await self.redis.set(self.keys.decision(cid), d.record.to_json(), nx=True,
                                 ex=self.opt.record_ttl_s)  # fmt: skip
            if not await self.redis.sadd(self.keys.orders_sent, cid):
                await self.tx.log(entry, "order", {}, "skipped", error="already sent (orders_sent)")
                return self._done(d, Outcome.DUPLICATE, detail="client id already claimed")
        except (RedisError, OSError) as exc:  # no claim, no order
            return self._done(d, Outcome.FAILED, detail=f"redis: {exc!r}")
        if not await self._ensure_leverage(entry):
            return self._done(d, Outcome.REJECTED, detail="leverage not set")
        result = await self._enter(entry)
        if isinstance(result, ExecutionReport):
            return self._done(d, result.outcome, detail=result.detail)
        filled = Decimal(str(result.get("executedQty", "0")))
        if filled <= 0:
            return self._done(d, Outcome.NOT_FILLED, detail=str(result.get("status")))
        fill_time = _int_or_none(result.get("updateTime"))
        outcome, detail = await self._protect_or_close(d, entry, (stop, take), filled)
        return self._done(d, outcome, filled, detail, fill_time)

    async def _position_open(self, symbol: str) -> str | None:
        """None when REST says flat; else why not to enter ("" = REST did not answer)."""
        self.counters["flat_checks"] += 1
        try:
            rows = await self.tx.retry(lambda: self.client.position_risk(symbol),
                                       time.monotonic() + self.opt.entry_deadline_s)  # fmt: skip
            amounts = [Decimal(str(r["positionAmt"])) for r in rows
                       if r.get("symbol") == symbol]  # fmt: skip
        except (ExchangeError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            log.warning("positionRisk %s failed before an entry: %r", symbol, exc)
            return ""
        open_ = [a for a in amounts if a != 0]
        return f"positionRisk shows {open_[0]} {symbol}" if open_ else None

    def _done(
        self, d: Decision, outcome: Outcome, filled: Decimal = ZERO, detail: str = "",
        fill_time: int | None = None,
    ) -> ExecutionReport:  # fmt: skip
        self.outcomes[outcome.value] += 1
        cid = d.intents[0].client_order_id
        level = logging.CRITICAL if outcome in (Outcome.UNPROTECTED, Outcome.UNKNOWN) else (
            logging.WARNING if outcome in (Outcome.REJECTED, Outcome.FAILED, Outcome.CLOSED)
            else logging.INFO)  # fmt: skip
        log.log(level, "entry %s %s: %s %s", cid, d.symbol, outcome.value, detail)
        return ExecutionReport(cid, d.symbol, outcome, filled, detail, fill_time)

    async def _ensure_leverage(self, entry: OrderIntent) -> bool:
        lev = entry.leverage
        if lev is None or self.leverage.get(entry.symbol) == lev:
            return True
        params = {"symbol": entry.symbol, "leverage": lev}
        t0 = time.perf_counter()
        try:
            res = await self.tx.retry(lambda: self.client.change_leverage(entry.symbol, lev),
                                      time.monotonic() + self.opt.entry_deadline_s)  # fmt: skip
        except ExchangeError as exc:
            self.tx.reject(exc)
            await self.tx.log(entry, "leverage", params, "failed", error=str(exc),
                              code=error_code(exc), t0=t0)  # fmt: skip
            return False
        self.leverage[entry.symbol] = int(res.get("leverage", lev))
        self.counters["leverage_changes"] += 1
        await self.tx.log(entry, "leverage", params, "accepted", res, t0=t0)
        return self.leverage[entry.symbol] == lev

    async def _enter(self, entry: OrderIntent) -> dict[str, Any] | ExecutionReport:
        """The entry's final order state, or a report when there is no position."""
        params: dict[str, Any] = {**entry.to_params(), "newOrderRespType": "RESULT"}
        cid = entry.client_order_id

        def lookup() -> Awaitable[Any]:
            return self.client.query_order(entry.symbol, orig_client_order_id=cid)

        now = time.monotonic()
        self.counters["entries_sent"] += 1
        try:
            res = await self.tx.place(
                entry, "order", params, lambda: self.client.new_order(**params), lookup,
                now + self.opt.entry_deadline_s,
            )  # fmt: skip
        except Unresolved:
            try:  # no resend now (too late to enter), but find out whether it filled
                res = await self.tx.lookup(entry, lookup, now + self.opt.resolve_deadline_s)
            except Unresolved as exc:
                return ExecutionReport(cid, entry.symbol, Outcome.UNKNOWN, detail=str(exc))
            if res is None:
                return ExecutionReport(cid, entry.symbol, Outcome.FAILED, detail="never placed")
        except ExchangeError as exc:
            return ExecutionReport(cid, entry.symbol, Outcome.REJECTED, detail=str(exc))
        if res.get("status") in _OPEN:
            res = await self._wait_limit(entry, res, lookup)
        return res

    async def _wait_limit(
        self, entry: OrderIntent, res: dict[str, Any], lookup: Callable[[], Awaitable[Any]]
    ) -> dict[str, Any]:
        """A resting LIMIT entry: wait for fills, then cancel the rest and protect what
        filled."""
        deadline = time.monotonic() + self.opt.limit_wait_s
        while res.get("status") in _OPEN and time.monotonic() < deadline:
            await self._sleep(self.opt.limit_poll_s)
            try:
                res = await lookup()
            except ExchangeError:
                continue
        if res.get("status") in _OPEN:
            cid = entry.client_order_id
            t0 = time.perf_counter()
            params = {"symbol": entry.symbol, "origClientOrderId": cid}
            try:
                cancel = await self.tx.retry(
                    lambda: self.client.cancel_order(entry.symbol, orig_client_order_id=cid),
                    time.monotonic() + self.opt.protect_deadline_s,
                )
                await self.tx.log(entry, "cancel", params, "accepted", cancel, t0=t0)
            except ExchangeError as exc:  # -2011: it filled meanwhile; the lookup tells
                await self.tx.log(entry, "cancel", params, "failed", error=str(exc), t0=t0)
            found = await self.tx.lookup(
                entry, lookup, time.monotonic() + self.opt.protect_deadline_s
            )
            res = found or res
        return res

    async def _protect_or_close(
        self, d: Decision, entry: OrderIntent, legs: tuple[OrderIntent, ...], filled: Decimal
    ) -> tuple[Outcome, str]:
        placed: list[OrderIntent] = []
        failures: list[str] = []
        for leg in legs:  # after a failure the position is closed: no use for the rest
            ok, why = await self._protect(leg)
            if not ok:
                failures.append(f"{leg.purpose}: {why}")
                break
            placed.append(leg)
        if not failures:
            return Outcome.PROTECTED, ""
        for leg in placed:
            await self._cancel_algo(leg)
        closed, why = await self._close(d, entry, filled)
        detail = "; ".join(failures) + f"; close: {why}"
        return (Outcome.CLOSED if closed else Outcome.UNPROTECTED), detail

    async def _protect(self, leg: OrderIntent) -> tuple[bool, str]:
        params = algo_params(leg)
        cid = leg.client_order_id
        try:
            await self.tx.place(
                leg, "algoOrder", params, lambda: self.client.new_algo_order(**params),
                lambda: self.client.query_algo_order(client_algo_id=cid),
                time.monotonic() + self.opt.protect_deadline_s,
            )  # fmt: skip
        except Unresolved as exc:
            return False, str(exc)
        except ExchangeError as exc:
            if exc.code in _EXISTS:
                return True, "exists"
            return False, str(exc)
        return True, ""

    async def _cancel_algo(self, leg: OrderIntent) -> None:
        params = {"clientAlgoId": leg.client_order_id}
        t0 = time.perf_counter()
        try:
            res = await self.tx.retry(
                lambda: self.client.cancel_algo_order(client_algo_id=leg.client_order_id),
                time.monotonic() + self.opt.protect_deadline_s,
            )
            await self.tx.log(leg, "cancelAlgo", params, "accepted", res, t0=t0)
        except ExchangeError as exc:  # best effort: a closePosition order with no position
            await self.tx.log(leg, "cancelAlgo", params, "failed", error=str(exc), t0=t0)

    async def _close(self, d: Decision, entry: OrderIntent, qty: Decimal) -> tuple[bool, str]:
        cid = client_order_id(d.symbol, d.side, d.minute_open_time, "exit", self.strategy_version)
        close = OrderIntent(entry.symbol, "SELL" if entry.side == "BUY" else "BUY", "MARKET", qty,
                            cid, "exit", reduce_only=True, reason="protection failed")  # fmt: skip
        params: dict[str, Any] = {**close.to_params(), "newOrderRespType": "RESULT"}
        self.counters["closes_sent"] += 1
        try:
            await self.redis.sadd(self.keys.orders_sent, cid)
        except (RedisError, OSError):
            pass  # the close must go out regardless
        try:
            await self.tx.place(
                close, "order", params, lambda: self.client.new_order(**params),
                lambda: self.client.query_order(close.symbol, orig_client_order_id=cid),
                time.monotonic() + self.opt.close_deadline_s, attempts=1_000,
            )  # fmt: skip
        except Unresolved as exc:
            return False, str(exc)
        except ExchangeError as exc:
            if exc.code == BinanceCode.REDUCE_ONLY_REJECT:
                return True, "already flat"
            return False, str(exc)
        return True, "closed"

    def stats(self) -> dict[str, Any]:
        return {
            **{f"{k}_total": v for k, v in self.counters.items()},
            **self.tx.stats(),
            "outcomes": {f"{k}_total": v for k, v in self.outcomes.items()},
        }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
