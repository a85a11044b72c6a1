"""Carries out the core's orders: reduce-only MARKET closes and protective algo orders.

WHY its own module: sending is where money is at stake, so the rules for "what if this
is sent twice, or we do not know whether it arrived" live in one place:

1. Ids are deterministic (`rules.close_order_id`): a re-send after a crash, a replayed
   event or a second replica is the SAME order.  A close is reduce-only, so the exchange
   refuses one that would increase or flip the position: -2022 is read as "already
   closed" (`Outcome.ALREADY_CLOSED`), never as a failure; -4116 (an open order already
   has this id) as "in flight" (`Outcome.DUPLICATE`).
2. The outcome of every close is remembered, in memory and in `Keys.pc_orders`, so a
   decision replayed within `replay_window_ms` of an accepted send (a restart re-reading
   its pending events) is not sent again (`Outcome.SKIPPED`).  After that window the core
   only re-sends a close whose position the exchange still shows, so it goes out.
3. A timeout leaves the outcome unknown: the order is looked up by its client id and sent
   again only when the exchange never saw it.  5xx / busy answers are retried at once
   (3 attempts, 50 ms jittered backoff); everything else is reported, and the core re-sends
   after `risk.close_retry_seconds` if the position is still there.

Every order (request parameters, result or error, latency) goes to `Keys.stream_orders`
through the outbox, after the send: Redis never delays a close, and an outage only
delays the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.position_controller.core import Action, TradeClosed
from services.position_controller.orphans import OrphanCheck, orphaned
from services.position_controller.persistence import Outbox, SentOrder
from services.position_controller.reconcile import CacheRepair
from services.position_controller.rules import ExitDecision, ProtectionDecision
from shared.binance.client import BinanceClient
from shared.binance.errors import (
    BinanceCode,
    ExchangeError,
    ExchangeUnavailable,
    should_retry,
)
from shared.binance.retry import retry_async
from shared.keys import Keys
from shared.models import OrderIntent, OrderUpdate, wire_decimal

log = logging.getLogger(__name__)

_CLOSE_POSITION_EXISTS = -4130  # Binance: a closePosition stop/target already exists
_SENT_MEMORY = 20_000
_FAILED_STATUSES = frozenset({"CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # the exchange took it
    ALREADY_CLOSED = "already_closed"  # -2022: nothing left to reduce
    DUPLICATE = "duplicate"  # an open order with this id exists: in flight already
    REJECTED = "rejected"  # refused as sent
    FAILED = "failed"  # not sent / no answer (breaker open, ban, network)
    SKIPPED = "skipped"  # sent and accepted moments ago: not sent again


# A close with one of these outcomes is done: a replay within the window is skipped.
_DONE = frozenset({Outcome.ACCEPTED, Outcome.ALREADY_CLOSED, Outcome.DUPLICATE, "filled"})


@dataclass(frozen=True, slots=True)
class OrderResult:
    client_order_id: str
    outcome: Outcome
    response: dict[str, Any] | None = None
    error: str = ""
    code: int | None = None
    latency_ms: float = 0.0


def algo_params(intent: OrderIntent) -> dict[str, Any]:
    """POST /fapi/v1/algoOrder parameters for a protective intent (mark-price trigger,
    so a wick in the last price does not fire it)."""
    if intent.stop_price is None:
        raise ValueError(f"protective order {intent.client_order_id} has no trigger price")
    params: dict[str, Any] = {
        "symbol": intent.symbol, "side": intent.side, "type": intent.order_type,
        "triggerPrice": wire_decimal(intent.stop_price), "workingType": "MARK_PRICE",
        "clientAlgoId": intent.client_order_id,
    }  # fmt: skip
    if intent.close_position:
        params["closePosition"] = True
    else:
        assert intent.quantity is not None
        params["quantity"] = wire_decimal(intent.quantity)
        params["reduceOnly"] = True
    return params


def _outcome_of(exc: ExchangeError) -> Outcome:
    if exc.code == BinanceCode.REDUCE_ONLY_REJECT:
        return Outcome.ALREADY_CLOSED
    if exc.code in (BinanceCode.DUPLICATED_CLIENT_ORDER_ID, _CLOSE_POSITION_EXISTS):
        return Outcome.DUPLICATE
    if exc.status and 400 <= exc.status < 500 and exc.code is not None:
        return Outcome.REJECTED
    return Outcome.FAILED


def _retry_known(exc: BaseException) -> bool:
    """Retry transient answers, but not a timeout: that outcome is unknown (query it)."""
    return should_retry(exc) and not isinstance(exc, ExchangeUnavailable)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class Executor:
    """Sends closes and protective orders for the service (see module doc)."""

    def __init__(
        self,
        client: BinanceClient,
        outbox: Outbox,
        keys: Keys,
        *,
        sent: Mapping[str, SentOrder] | None = None,
        replay_window_ms: int = 15_000,
        wall_ms: Callable[[], int] = _wall_ms,
        attempts: int = 3,
        on_flat: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.keys = keys
        self.sent: dict[str, SentOrder] = dict(sent or {})
        self.replay_window_ms = replay_window_ms
        self._wall = wall_ms
        self.attempts = attempts
        self.on_flat = on_flat
        self.counters = dict.fromkeys(
            ("closes_sent", "protections_replaced", "duplicates_suppressed",
             "unknown_outcomes", "retries", "risk_actions", "trades_closed",
             "orphans_cancelled"), 0,
        )  # fmt: skip
        self.outcomes = {o.value: 0 for o in Outcome}
        self.last_close_latency_ms: float | None = None

    # ---- the core's actions ---------------------------------------------------------
    async def carry_out(self, actions: Iterable[Action], now_ms: int) -> None:
        """Send closes and protective orders (concurrently, in the core's order: IMMEDIATE
        first), queue cache repairs and closed trades; log every decision with its reason
        and outcome to `Keys.stream_risk`."""
        sends: list[Awaitable[None]] = []
        for a in actions:
            if isinstance(a, ExitDecision):
                sends.append(self._exit(a, now_ms))
            elif isinstance(a, ProtectionDecision):
                sends.append(self._protection(a, now_ms))
            elif isinstance(a, CacheRepair):
                self.outbox.position(a.symbol, a.position, now_ms)
                detail = {"kind": a.kind.value, "reason": a.reason}
                self.risk("state_repair", a.symbol, now_ms, detail)
            elif isinstance(a, TradeClosed):
                self.outbox.trade(a.trade)
                self.counters["trades_closed"] += 1
            elif isinstance(a, OrphanCheck):
                sends.append(self.cancel_orphans(a, now_ms))
        if sends:
            await asyncio.gather(*sends)

    async def _exit(self, d: ExitDecision, now_ms: int) -> None:
        results = await self.close(d, now_ms)
        self.risk("exit", d.symbol, now_ms, {
            "rule": d.rule.value, "reason": d.reason, "urgency": d.urgency.value,
            "client_order_ids": [r.client_order_id for r in results],
            "outcomes": [r.outcome.value for r in results],
            "quantity": str(sum((i.quantity or 0) for i in d.intents)),
        })  # fmt: skip
        if self.on_flat is not None and any(r.outcome is Outcome.ALREADY_CLOSED for r in results):
            self.on_flat()  # the exchange says flat: reconcile now

    async def _protection(self, d: ProtectionDecision, now_ms: int) -> None:
        results = await self.protect(d, now_ms)
        self.risk("protection", d.symbol, now_ms, {
            "rule": d.rule.value, "reason": d.reason, "missing": list(d.missing),
            "client_order_ids": [r.client_order_id for r in results],
            "outcomes": [r.outcome.value for r in results],
            "triggers": [str(i.stop_price) for i in d.intents],
        })  # fmt: skip

    def risk(self, kind: str, symbol: str, now_ms: int, data: dict[str, Any]) -> None:
        """One risk action (decision, repair, diff) with its reason, to `Keys.stream_risk`."""
        self.counters["risk_actions"] += 1
        self.outbox.event(self.keys.stream_risk, kind, {"symbol": symbol, "time": now_ms, **data},
                          symbol=symbol, event_time=now_ms)  # fmt: skip

    # ---- closes ---------------------------------------------------------------------
    async def close(self, decision: ExitDecision, now_ms: int) -> list[OrderResult]:
        """Send every leg of the close (one leg unless the position exceeds the market
        max quantity), in order."""
        return [await self._close_leg(i, decision, now_ms) for i in decision.intents]

    async def _close_leg(self, intent: OrderIntent, d: ExitDecision, now_ms: int) -> OrderResult:
        cid = intent.client_order_id
        prior = self.sent.get(cid)
        if (prior is not None and prior.status in _DONE
                and self._wall() - prior.sent_ms < self.replay_window_ms):  # fmt: skip
            self.counters["duplicates_suppressed"] += 1
            res = OrderResult(cid, Outcome.SKIPPED, error=f"{prior.status} at {prior.sent_ms}")
            self._log(intent, "order", {}, res, d.rule.value, now_ms)
            return res
        params = intent.to_params()
        res = await self._call(
            cid, lambda: self.client.new_order(**params),
            lambda: self.client.query_order(intent.symbol, orig_client_order_id=cid),
        )  # fmt: skip
        self.counters["closes_sent"] += 1
        self.last_close_latency_ms = res.latency_ms
        self._remember(cid, intent.symbol, res.outcome.value)
        self._log(intent, "order", params, res, d.rule.value, now_ms)
        return res

    def on_order_update(self, update: OrderUpdate) -> None:
        """Follow our closes: filled, or failed (then a re-send must not be skipped)."""
        if update.client_order_id not in self.sent:
            return
        if update.status in _FAILED_STATUSES:
            self._remember(update.client_order_id, update.symbol, Outcome.FAILED.value)
        elif update.status == "FILLED":
            self._remember(update.client_order_id, update.symbol, "filled")

    def _remember(self, cid: str, symbol: str, status: str) -> None:
        prior = self.sent.get(cid)
        sent_ms = prior.sent_ms if prior is not None and status == "filled" else self._wall()
        rec = SentOrder(cid, symbol, status, sent_ms)
        self.sent[cid] = rec
        if len(self.sent) > _SENT_MEMORY:  # keep the newest half
            for old in sorted(self.sent, key=lambda k: self.sent[k].sent_ms)[: _SENT_MEMORY // 2]:
                del self.sent[old]
        self.outbox.hset(self.keys.pc_orders, cid, rec.to_json())

    # ---- protective orders ----------------------------------------------------------
    async def protect(self, decision: ProtectionDecision, now_ms: int) -> list[OrderResult]:
        out = []
        for intent in decision.intents:
            params = algo_params(intent)
            cid = intent.client_order_id
            res = await self._call(
                cid, lambda p=params: self.client.new_algo_order(**p),  # type: ignore[misc]
                lambda c=cid: self.client.query_algo_order(client_algo_id=c),  # type: ignore[misc]
            )  # fmt: skip
            if res.outcome is Outcome.ACCEPTED:
                self.counters["protections_replaced"] += 1
            self._log(intent, "algoOrder", params, res, decision.rule.value, now_ms)
            out.append(res)
        return out

    async def cancel_orphans(self, check: OrphanCheck, now_ms: int) -> None:
        """Cancel the stop/target legs a closed position left behind (orphans.py); a
        failure is logged and left to the next sweep."""
        found: tuple[Any, ...] = check.orders
        if not found:
            try:
                rows = await self.client.open_algo_orders(check.symbol)
            except ExchangeError as exc:
                log.warning("open algo orders of %s: %s", check.symbol, exc)
                return
            found = tuple(orphaned(rows, check.symbol, check.flat_since))
        for o in found:
            ref = {"algo_id": o.algo_id} if o.algo_id else {"client_algo_id": o.client_id}
            try:
                await retry_async(lambda r=ref: self.client.cancel_algo_order(**r),  # type: ignore[misc]
                                  self.attempts, 0.05, 0.5, should_retry=_retry_known,
                                  on_retry=self._on_retry)  # fmt: skip
                outcome = "cancelled"
                self.counters["orphans_cancelled"] += 1
            except ExchangeError as exc:  # gone already (triggered, expired): nothing left
                outcome = f"failed: {exc}"
            self.risk("orphan_cancel", check.symbol, now_ms, {
                "client_algo_id": o.client_id, "algo_id": o.algo_id, "order_type": o.order_type,
                "created": o.create_time, "flat_since": check.flat_since, "outcome": outcome,
            })  # fmt: skip

    # ---- sending --------------------------------------------------------------------
    async def _call(
        self,
        cid: str,
        send: Callable[[], Awaitable[Any]],
        query: Callable[[], Awaitable[Any]],
    ) -> OrderResult:
        t0 = time.perf_counter()
        try:
            resp = await retry_async(send, self.attempts, 0.05, 0.5,
                                     should_retry=_retry_known, on_retry=self._on_retry)  # fmt: skip
            res = OrderResult(cid, Outcome.ACCEPTED, resp)
        except ExchangeUnavailable as exc:
            res = await self._resolve_unknown(cid, send, query, exc)
        except ExchangeError as exc:
            res = OrderResult(cid, _outcome_of(exc), None, str(exc), _code(exc))
        ms = (time.perf_counter() - t0) * 1000
        self.outcomes[res.outcome.value] += 1
        if res.outcome in (Outcome.REJECTED, Outcome.FAILED):
            log.warning("order %s %s: %s", cid, res.outcome.value, res.error)
        return OrderResult(res.client_order_id, res.outcome, res.response, res.error,
                           res.code, round(ms, 3))  # fmt: skip

    async def _resolve_unknown(
        self, cid: str, send: Callable[[], Awaitable[Any]],
        query: Callable[[], Awaitable[Any]], first: ExchangeUnavailable,
    ) -> OrderResult:  # fmt: skip
        """A timeout: did the order arrive?  Look it up; send again only if it did not."""
        self.counters["unknown_outcomes"] += 1
        try:
            return OrderResult(cid, Outcome.ACCEPTED, await query())
        except ExchangeError as exc:
            if exc.code != BinanceCode.NO_SUCH_ORDER:
                return OrderResult(cid, Outcome.FAILED, None, f"{first}; lookup: {exc}",
                                   _code(exc))  # fmt: skip
        try:
            return OrderResult(cid, Outcome.ACCEPTED, await send())
        except ExchangeError as exc:
            return OrderResult(cid, _outcome_of(exc), None, str(exc), _code(exc))

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.counters["retries"] += 1
        log.info("order retry %d in %.3fs after %s", attempt, delay, exc)

    def _log(
        self, intent: OrderIntent, api: str, params: dict[str, Any], res: OrderResult,
        rule: str, now_ms: int,
    ) -> None:  # fmt: skip
        data = {
            "client_order_id": res.client_order_id, "api": api, "purpose": intent.purpose,
            "rule": rule, "reason": intent.reason, "request": _plain(params),
            "outcome": res.outcome.value, "result": res.response or {}, "error": res.error,
            "code": res.code, "latency_ms": res.latency_ms, "decided_at": now_ms,
        }  # fmt: skip
        self.outbox.event(self.keys.stream_orders, "order", data, symbol=intent.symbol,
                          event_time=now_ms)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {
            **{f"{k}_total": v for k, v in self.counters.items()},
            "outcomes": {f"{k}_total": v for k, v in self.outcomes.items()},
            "last_close_latency_ms": self.last_close_latency_ms,
            "remembered": len(self.sent),
        }


def _code(exc: ExchangeError) -> int | None:
    return int(exc.code) if exc.code is not None else None


def _plain(params: Mapping[str, Any]) -> dict[str, str]:
    """Request parameters as the exchange saw them (bools as true/false)."""
    return {k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in params.items()}  # fmt: skip
