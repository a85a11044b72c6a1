"""Conditional (algo) orders: STOP_MARKET, TAKE_PROFIT_MARKET, STOP, TAKE_PROFIT.

Why a separate service: since 2025-12-09 Binance keeps conditional orders in an Algo Service
(`/fapi/v1/algoOrder`, ALGO_UPDATE events) and sends them to the matching engine only when the
trigger price is touched. Margin is not checked until then; a triggered order that the engine
refuses ends REJECTED with the reason in `rm`. Status flow: NEW → TRIGGERING → TRIGGERED →
FINISHED (the engine order completed), or CANCELED / EXPIRED / REJECTED.

Triggers: STOP* BUY and TAKE_PROFIT* SELL fire on price ≥ trigger; STOP* SELL and TAKE_PROFIT*
BUY on price ≤ trigger; price is the mark (workingType MARK_PRICE) or last (CONTRACT_PRICE).
closePosition closes the whole position at trigger time; with no position to close it EXPIRES.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from . import errors as E
from .audit import OrderRecord
from .errors import EngineReject, err
from .events import EngineEvent, algo_update
from .margin import ZERO
from .models import Account, AlgoOrder, Book
from .validate import parse_algo

MAX_CLOSED_ALGOS = 10_000


class AlgoMixin:
    accounts: dict[str, Account]
    books: dict[str, Book]

    def place_algo_order(
        self, account_id: str, params: Mapping[str, str], ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`POST /fapi/v1/algoOrder`: returns (algo order response, [ALGO_UPDATE NEW])."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        try:
            return self._place_algo(acct, params, ts_ms)
        except EngineReject as exc:
            self.audit.reject(ts_ms, account_id, str(params.get("clientAlgoId", "")), exc.code)  # type: ignore[attr-defined]
            raise

    def _place_algo(
        self, acct: Account, params: Mapping[str, str], ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        account_id = acct.account_id
        spec, req = parse_algo(params, self.specs)  # type: ignore[attr-defined]
        book = self.books[spec.symbol]
        if book.last <= 0:
            raise err(E.NO_DEPTH)
        cid = req.client_algo_id
        if (
            cid is not None
            and cid in acct.algo_client_ids
            and acct.algo_client_ids[cid] in acct.algos
        ):
            raise err(E.DUPLICATE_CLIENT_ID)
        if (
            sum(1 for a in acct.algos.values() if a.symbol == spec.symbol)
            >= spec.max_num_algo_orders
        ):
            raise err(E.MAX_ALGO_ORDERS)
        algo_id = self._next_id()  # type: ignore[attr-defined]
        algo = AlgoOrder(
            algo_id=algo_id, account_id=account_id, symbol=spec.symbol,
            client_algo_id=cid or f"sim-algo-{algo_id}", side=req.side, order_type=req.order_type,
            qty=req.qty, price=req.price, trigger_price=req.trigger_price,
            working_type=req.working_type, tif=req.tif, reduce_only=req.reduce_only,
            close_position=req.close_position, price_protect=req.price_protect,
            create_time=ts_ms, update_time=ts_ms,
        )  # fmt: skip
        if self._algo_hit(algo, book):
            raise err(E.WOULD_TRIGGER)
        acct.algos[algo_id] = algo
        acct.algo_client_ids[algo.client_algo_id] = algo_id
        book.algos.append(algo)
        book.reindex()
        self.audit.order(  # type: ignore[attr-defined]
            OrderRecord(
                ts_ms,
                account_id,
                spec.symbol,
                algo.client_algo_id,
                algo_id,
                "algo",
                req.side,
                req.qty,
            )
        )
        return self.algo_dict(algo), [algo_update(spec, algo, ts_ms)]

    def cancel_algo_order(
        self, account_id: str, algo_id: int | str | None = None, client_algo_id: str | None = None,
        ts_ms: int | None = None,
    ) -> tuple[dict[str, Any], list[EngineEvent]]:  # fmt: skip
        """`DELETE /fapi/v1/algoOrder`."""
        if ts_ms is None:
            raise TypeError("ts_ms is required")
        acct = self._account(account_id)  # type: ignore[attr-defined]
        algo = self._find_algo(acct, algo_id, client_algo_id, open_only=True)
        if algo is None:
            raise err(E.UNKNOWN_ORDER)
        events = self._finish_algo(acct, self.books[algo.symbol], algo, "CANCELED", ts_ms)
        body = {
            "algoId": algo.algo_id,
            "clientAlgoId": algo.client_algo_id,
            "code": "200",
            "msg": "success",
        }
        return body, events

    def cancel_all_algo(
        self, account_id: str, symbol: str, ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`DELETE /fapi/v1/algoOpenOrders`."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        book = self._book(symbol)  # type: ignore[attr-defined]
        events: list[EngineEvent] = []
        for algo in [a for a in acct.algos.values() if a.symbol == book.spec.symbol]:
            events.extend(self._finish_algo(acct, book, algo, "CANCELED", ts_ms))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}, events

    def query_algo_order(
        self, account_id: str, algo_id: int | str | None = None, client_algo_id: str | None = None
    ) -> dict[str, Any]:
        """`GET /fapi/v1/algoOrder` (open or recently closed)."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        algo = self._find_algo(acct, algo_id, client_algo_id, open_only=False)
        if algo is None:
            raise err(E.NO_SUCH_ORDER)
        return self.algo_dict(algo, query=True)

    def open_algo_orders(self, account_id: str, symbol: str | None = None) -> list[dict[str, Any]]:
        """`GET /fapi/v1/openAlgoOrders`."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        return [
            self.algo_dict(a, query=True)
            for a in acct.algos.values()
            if symbol is None or a.symbol == symbol
        ]

    # ---------------------------------------------------------------- internals
    def _find_algo(
        self, acct: Account, algo_id: int | str | None, client_algo_id: str | None, open_only: bool
    ) -> AlgoOrder | None:
        if algo_id is None and not client_algo_id:
            raise err(E.EITHER_ALGO_ID)
        if algo_id is not None:
            try:
                aid = int(algo_id)
            except (TypeError, ValueError):
                raise E.mandatory("algoId") from None
        else:
            aid = acct.algo_client_ids.get(str(client_algo_id), -1)
        algo = acct.algos.get(aid)
        if algo is None and not open_only:
            algo = acct.closed_algos.get(aid)
        if algo is not None and client_algo_id and algo.client_algo_id != client_algo_id:
            return None
        return algo

    @staticmethod
    def _algo_hit(algo: AlgoOrder, book: Book) -> bool:
        px = book.mark if algo.on_mark else book.last
        return px >= algo.trigger_price if algo.triggers_up else px <= algo.trigger_price

    def _finish_algo(
        self, acct: Account, book: Book, algo: AlgoOrder, status: str, ts: int
    ) -> list[EngineEvent]:
        """Move an algo order out of the open set with a final (or TRIGGERED) status."""
        algo.status = status
        algo.update_time = ts
        acct.algos.pop(algo.algo_id, None)
        acct.closed_algos[algo.algo_id] = algo
        while len(acct.closed_algos) > MAX_CLOSED_ALGOS:
            acct.closed_algos.popitem(last=False)
        if algo in book.algos:
            book.algos.remove(algo)
            book.reindex()
        return [algo_update(book.spec, algo, ts)]

    def _trigger_algos(self, book: Book, ts: int) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        for algo in sorted(
            (a for a in book.algos if self._algo_hit(a, book)), key=lambda a: a.algo_id
        ):
            if algo.status != "NEW":
                continue
            events.extend(self._fire(self.accounts[algo.account_id], book, algo, ts))
        return events

    def _close_qty(self, acct: Account, algo: AlgoOrder) -> Decimal:
        pos = acct.positions.get(algo.symbol)
        if pos is None or not pos.amount or (pos.amount > 0) == (algo.side == "BUY"):
            return ZERO
        return abs(pos.amount)

    def _fire(self, acct: Account, book: Book, algo: AlgoOrder, ts: int) -> list[EngineEvent]:
        algo.trigger_time = ts
        events = self._finish_algo(acct, book, algo, "TRIGGERING", ts)
        qty = self._close_qty(acct, algo) if algo.close_position else algo.qty
        if not qty:
            algo.status = "EXPIRED"
            return events + [algo_update(book.spec, algo, ts)]
        is_market = algo.order_type.endswith("_MARKET")
        try:
            order, order_events = self._submit(  # type: ignore[attr-defined]
                acct, book, side=algo.side, otype="MARKET" if is_market else "LIMIT", qty=qty,
                price=ZERO if is_market else algo.price, tif="GTC" if is_market else algo.tif,
                reduce_only=algo.reduce_only, client_id=algo.client_algo_id, ts=ts,
                orig_type=algo.order_type, stop_price=algo.trigger_price,
                working_type=algo.working_type, close_position=algo.close_position,
                algo_id=algo.algo_id, kind="triggered",
            )  # fmt: skip
        except EngineReject as exc:
            algo.status = "REJECTED"
            algo.reject_reason = exc.msg
            algo.update_time = ts
            return events + [algo_update(book.spec, algo, ts)]
        algo.status = "TRIGGERED"
        algo.actual_order_id = order.order_id
        events.append(algo_update(book.spec, algo, ts, order))
        events.extend(order_events)
        if algo.status == "TRIGGERED" and order.status in ("FILLED", "CANCELED", "EXPIRED"):
            algo.status = "FINISHED"
            events.append(algo_update(book.spec, algo, ts, order))
        return events
