"""Turns what the position controller reads (bus entries, mark-price frames, REST rows,
stored decision records) into domain objects.  Pure functions: no I/O.

WHY a module: every input has its own wire format and its own ways to be malformed; the
service only sees domain types or a `MessageError` it counts and drops.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from shared.binance import schemas as wire
from shared.errors import MessageError, excerpt
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    ConfigUpdate,
    DecisionRecord,
    OrderUpdate,
    Position,
)

AccountEvent = AccountUpdate | OrderUpdate | AlgoUpdate | ConfigUpdate

_DOMAIN: dict[str, type[Any]] = {
    "ACCOUNT_UPDATE": AccountUpdate,
    "ORDER_TRADE_UPDATE": OrderUpdate,
    "ALGO_UPDATE": AlgoUpdate,
    "ACCOUNT_CONFIG_UPDATE": ConfigUpdate,
}


def parse_account_event(etype: str, data: dict[str, Any]) -> AccountEvent | None:
    """An account-stream entry (codec type = Binance event type, data = the event dict as
    the exchange sent it, or our domain dict) as a domain event; None for event types this
    service does not act on (listenKeyExpired, TRADE_LITE, ...).  MessageError if bad."""
    if "e" in data or "data" in data:
        try:
            ev = wire.parse_user_event(data)
        except MessageError as exc:
            if exc.ignorable:
                return None
            raise
        if isinstance(ev, wire.AccountUpdateEvent):
            return AccountUpdate.from_event(ev)
        if isinstance(ev, wire.OrderTradeUpdateEvent):
            return as_fill(OrderUpdate.from_event(ev))
        if isinstance(ev, wire.AlgoUpdateEvent):
            return AlgoUpdate.from_event(ev)
        if isinstance(ev, wire.AccountConfigUpdateEvent):
            return ConfigUpdate.from_event(ev)
        return None
    cls = _DOMAIN.get(etype)
    event = None if cls is None else cls.from_dict(data)
    return as_fill(event) if isinstance(event, OrderUpdate) else event


def as_fill(update: OrderUpdate) -> OrderUpdate:
    """Binance reports liquidation and ADL fills with execution type CALCULATED, not TRADE;
    the ledger books only TRADE executions, so a CALCULATED one that filled something is
    passed on as the fill it is (else a liquidated position would never yield its trade)."""
    if update.execution_type == "CALCULATED" and update.last_filled_qty > 0:
        return replace(update, execution_type="TRADE")
    return update


def parse_mark_price(raw: bytes | str) -> tuple[str, Decimal, int] | None:
    """(symbol, mark price, event time) of a `markPriceUpdate` frame (raw or in the
    combined-stream wrapper); None for control replies.  MessageError if malformed."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MessageError("mark price frame is not JSON", excerpt(raw)) from None
    data = msg.get("data", msg) if isinstance(msg, dict) else None
    if not isinstance(data, dict):
        raise MessageError("mark price frame is not an object", excerpt(raw))
    if data.get("e") != "markPriceUpdate":
        if "result" in data or "id" in data:
            return None
        raise MessageError(f"unexpected event {data.get('e')!r}", excerpt(raw))
    try:
        symbol, price, event_time = str(data["s"]), Decimal(str(data["p"])), int(data["E"])
    except (KeyError, TypeError, ValueError, InvalidOperation):
        raise MessageError("markPriceUpdate without a valid s/p/E", excerpt(raw)) from None
    if not (price.is_finite() and price > 0 and event_time > 0 and symbol.isalnum()):
        raise MessageError("markPriceUpdate with a bad price/time/symbol", excerpt(raw))
    return symbol, price, event_time


def mark_stream_url(ws_url: str, symbols: list[str]) -> str:
    """Routed combined-stream URL of the 1 s mark prices (`/market/...` since 2026)."""
    names = "/".join(f"{s.lower()}@markPrice@1s" for s in symbols)
    return f"{ws_url.rstrip('/')}/market/stream?streams={names}"


def derived_leverage(row: dict[str, Any]) -> int | None:
    """Leverage of a positionRisk v3 row, which has no `leverage` field: notional /
    positionInitialMargin (that is how the exchange computes the margin)."""
    if "leverage" in row:
        try:
            return int(row["leverage"])
        except (TypeError, ValueError):
            return None
    try:
        notional = abs(Decimal(str(row.get("notional", "0"))))
        pim = Decimal(str(row.get("positionInitialMargin", "0")))
    except InvalidOperation:
        return None
    if notional <= 0 or pim <= 0:
        return None
    lev = int((notional / pim).to_integral_value())
    return lev if 1 <= lev <= 125 else None


def position_rows(
    rows: Any,
) -> tuple[list[Position], dict[str, Decimal], dict[str, int], int]:
    """positionRisk rows -> (positions, liquidation prices, leverages, bad rows).  A bad
    row is skipped and counted, never fatal (the rest of the snapshot still counts)."""
    if not isinstance(rows, list):
        raise MessageError("positionRisk answer is not a list", excerpt(rows))
    positions: list[Position] = []
    liq: dict[str, Decimal] = {}
    lev: dict[str, int] = {}
    bad = 0
    for row in rows:
        try:
            leverage = derived_leverage(row) if isinstance(row, dict) else None
            pos = Position.from_position_risk(row, leverage)
            price = Decimal(str(row.get("liquidationPrice", "0") or "0"))
        except (MessageError, InvalidOperation, AttributeError):
            bad += 1
            continue
        if pos.position_side != "BOTH":
            continue
        positions.append(pos)
        if price.is_finite() and price > 0 and pos.size != 0:
            liq[pos.symbol] = price
        if leverage is not None and pos.size != 0:
            lev[pos.symbol] = leverage
    return positions, liq, lev, bad


def decision_from_redis(raw: Any) -> DecisionRecord:
    """A stored DecisionRecord: the trader's JSON string, or a hash (its fields, or one
    `json`/`record`/`data` field holding the JSON).  MessageError if unreadable."""
    if isinstance(raw, bytes | str):
        return DecisionRecord.from_json(raw)  # type: ignore[no-any-return]
    if isinstance(raw, dict):
        h = {(k.decode() if isinstance(k, bytes) else str(k)):
             (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}  # fmt: skip
        for name in ("json", "record", "data"):
            if isinstance(h.get(name), str):
                return DecisionRecord.from_json(h[name])  # type: ignore[no-any-return]
        if isinstance(h.get("features"), str):
            try:
                h["features"] = orjson.loads(h["features"])
            except orjson.JSONDecodeError:
                raise MessageError("decision features are not JSON", excerpt(raw)) from None
        return DecisionRecord.from_dict(h)  # type: ignore[no-any-return]
    raise MessageError(f"decision record of type {type(raw).__name__}", excerpt(raw))


def fills_since_open(fills: list[OrderUpdate], size: Decimal) -> list[OrderUpdate] | None:
    """The fills that built the open position of `size` (signed), oldest first, from a
    symbol's fill history (any order, duplicates allowed): walking back from the newest,
    the position before each fill is the one after it minus the fill; the lot began
    where that reaches 0.  None when the history does not reach back to the opening, or
    the lot began inside a flipping fill (then the position is adopted as estimated)."""
    seen: set[tuple[int, int, Decimal]] = set()
    ordered = []
    for f in sorted(fills, key=lambda f: (f.trade_time, f.trade_id)):
        key = (f.trade_id, f.order_id, f.filled_qty)
        if f.is_fill and f.last_filled_qty > 0 and key not in seen:
            seen.add(key)
            ordered.append(f)
    after = size
    for i in range(len(ordered) - 1, -1, -1):
        f = ordered[i]
        before = after - (f.last_filled_qty if f.side == "BUY" else -f.last_filled_qty)
        if before == 0:
            return ordered[i:]
        if (before > 0) != (after > 0) and after != 0:
            return None  # crossed zero inside this fill: a flip
        after = before
    return None


def user_trade_fill(row: Any, order: dict[str, Any] | None = None) -> OrderUpdate:
    """One REST `GET /fapi/v1/userTrades` row as the fill it was, so a gap in the user data
    stream can be replayed through the ledger.  The row has no client order id, order type
    or reduce-only flag; `order` (the `GET /fapi/v1/order` answer for its `orderId`) adds
    them when known (then exit reasons and the reduce-only cap work as live), else the fill
    is a plain MARKET one.  The trade id is the stream's `t`, so live and replayed copies
    of one fill are the same to the ledger.  MessageError if malformed."""
    try:
        qty, price = Decimal(str(row["qty"])), Decimal(str(row["price"]))
        fee, rp = Decimal(str(row["commission"])), Decimal(str(row.get("realizedPnl", "0")))
        symbol, side, t = str(row["symbol"]), str(row["side"]), int(row["time"])
        trade_id, order_id = int(row["id"]), int(row["orderId"])
    except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
        raise MessageError("userTrades row without valid fields", excerpt(row)) from None
    if side not in ("BUY", "SELL") or not (qty > 0 and price > 0 and t > 0):
        raise MessageError("userTrades row with a bad side/qty/price/time", excerpt(row))
    o = order if isinstance(order, dict) and int(order.get("orderId", -1)) == order_id else {}
    otype = str(o.get("type", "MARKET"))
    return OrderUpdate(
        symbol, str(o.get("clientOrderId", "")), side, otype, str(o.get("origType", otype)),
        "GTC", qty, Decimal(0), price, Decimal(0), "TRADE", "FILLED", order_id, qty, qty, price,
        str(row.get("commissionAsset", "")), fee, rp, trade_id, t, bool(row.get("maker")),
        bool(o.get("reduceOnly", False)), bool(o.get("closePosition", False)),
        str(row.get("positionSide", "BOTH")), "CONTRACT_PRICE", t, t,
    )  # fmt: skip
