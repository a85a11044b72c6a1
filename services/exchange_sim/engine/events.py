"""User-data-stream events, built as complete Binance payloads.

Why complete payloads: the protocol layer only serializes and pushes them, so what a client
parses from the simulator is field-for-field what Binance sends (USDⓈ-M user data streams:
ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, ALGO_UPDATE, ACCOUNT_CONFIG_UPDATE).

Example ORDER_TRADE_UPDATE for a filled market buy::

    {"e": "ORDER_TRADE_UPDATE", "E": 1690000000000, "T": 1690000000000,
     "o": {"s": "BTCUSDT", "c": "my-id", "S": "BUY", "o": "MARKET", "f": "GTC",
           "q": "0.010", "p": "0", "ap": "30003.00", "sp": "0", "x": "TRADE",
           "X": "FILLED", "i": 7, "l": "0.010", "z": "0.010", "L": "30003.00",
           "N": "USDT", "n": "0.15001500", "T": 1690000000000, "t": 3, "b": "0",
           "a": "0", "m": false, "R": false, "wt": "CONTRACT_PRICE", "ot": "MARKET",
           "ps": "BOTH", "cp": false, "rp": "0.00000000", "pP": false, "si": 0,
           "ss": 0, "V": "NONE", "pm": "NONE", "gtd": 0, "er": "0"}}
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..specs import SymbolSpec
from .margin import ZERO, fmt, fmt_money, fmt_plain, unrealized_pnl
from .models import Account, AlgoOrder, Order, Position


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One user-data event for one account; `payload` is the exact wire dict."""

    account_id: str
    event_type: str
    payload: dict[str, Any]


def price_str(spec: SymbolSpec, price: Decimal) -> str:
    return fmt(price, spec.price_precision) if price else "0"


def qty_str(spec: SymbolSpec, qty: Decimal) -> str:
    return fmt(qty, spec.quantity_precision)


@dataclass(frozen=True, slots=True)
class Trade:
    """The fill part of an ORDER_TRADE_UPDATE."""

    qty: Decimal
    price: Decimal
    commission: Decimal
    trade_id: int
    maker: bool
    realized: Decimal


def order_trade_update(
    spec: SymbolSpec,
    order: Order,
    exec_type: str,
    ts: int,
    trade: Trade | None = None,
    bid_notional: Decimal = ZERO,
    ask_notional: Decimal = ZERO,
    expiry_reason: str = "0",
) -> EngineEvent:
    o: dict[str, Any] = {
        "s": order.symbol,
        "c": order.client_id,
        "S": order.side,
        "o": order.type,
        "f": order.tif,
        "q": qty_str(spec, order.qty),
        "p": price_str(spec, order.price) if order.type == "LIMIT" else "0",
        "ap": fmt_plain(order.avg_price, 1, 8) if order.executed else "0",
        "sp": price_str(spec, order.stop_price),
        "x": exec_type,
        "X": order.status,
        "i": order.order_id,
        "l": qty_str(spec, trade.qty) if trade else "0",
        "z": qty_str(spec, order.executed),
        "L": price_str(spec, trade.price) if trade else "0",
        "N": spec.quote_asset,
        "n": fmt_money(trade.commission) if trade else "0",
        "T": ts,
        "t": trade.trade_id if trade else 0,
        "b": fmt_money(bid_notional) if bid_notional else "0",
        "a": fmt_money(ask_notional) if ask_notional else "0",
        "m": trade.maker if trade else False,
        "R": order.reduce_only,
        "wt": order.working_type,
        "ot": order.orig_type,
        "ps": "BOTH",
        "cp": order.close_position,
        "rp": fmt_money(trade.realized) if trade else "0",
        "pP": order.price_protect,
        "si": 0,
        "ss": 0,
        "V": "NONE",
        "pm": "NONE",
        "gtd": 0,
        "er": expiry_reason,
    }
    payload = {"e": "ORDER_TRADE_UPDATE", "E": ts, "T": ts, "o": o}
    return EngineEvent(order.account_id, "ORDER_TRADE_UPDATE", payload)


def position_row(
    spec: SymbolSpec, pos: Position, mark: Decimal, break_even: Decimal
) -> dict[str, Any]:
    up = unrealized_pnl(pos.amount, pos.entry, mark) if pos.amount else ZERO
    return {
        "s": pos.symbol,
        "pa": qty_str(spec, pos.amount),
        "ep": fmt_plain(pos.entry, 1, 8),
        "bep": fmt_plain(break_even, 1, 8),
        "cr": fmt_money(pos.cum_realized),
        "up": fmt_money(up),
        "mt": "isolated" if pos.isolated else "cross",
        "iw": fmt_money(pos.isolated_wallet),
        "ps": "BOTH",
    }


def account_update(
    account: Account,
    reason: str,
    ts: int,
    positions: list[dict[str, Any]],
    balance_change: Decimal = ZERO,
) -> EngineEvent:
    balance = {
        "a": account.asset,
        "wb": fmt_money(account.wallet),
        "cw": fmt_money(account.cross_wallet),
        "bc": fmt_money(balance_change) if balance_change else "0",
    }
    payload = {
        "e": "ACCOUNT_UPDATE",
        "E": ts,
        "T": ts,
        "a": {"m": reason, "B": [balance], "P": positions},
    }
    return EngineEvent(account.account_id, "ACCOUNT_UPDATE", payload)


def algo_update(
    spec: SymbolSpec, algo: AlgoOrder, ts: int, executed: Order | None = None
) -> EngineEvent:
    o: dict[str, Any] = {
        "caid": algo.client_algo_id,
        "aid": algo.algo_id,
        "at": "CONDITIONAL",
        "o": algo.order_type,
        "s": algo.symbol,
        "S": algo.side,
        "ps": "BOTH",
        "f": algo.tif,
        "q": qty_str(spec, algo.qty),
        "X": algo.status,
        "ai": str(algo.actual_order_id) if algo.actual_order_id is not None else "",
        "ap": fmt_plain(executed.avg_price, 5, 8) if executed and executed.executed else "0.00000",
        "aq": qty_str(spec, executed.executed) if executed else "0",
        "act": executed.type if executed else "0",
        "tp": price_str(spec, algo.trigger_price),
        "p": price_str(spec, algo.price),
        "V": "NONE",
        "wt": algo.working_type,
        "pm": "NONE",
        "cp": algo.close_position,
        "pP": algo.price_protect,
        "R": algo.reduce_only,
        "tt": algo.trigger_time,
        "gtd": 0,
        "rm": algo.reject_reason,
    }
    payload = {"e": "ALGO_UPDATE", "T": ts, "E": ts, "o": o}
    return EngineEvent(algo.account_id, "ALGO_UPDATE", payload)


def leverage_update(account_id: str, symbol: str, leverage: int, ts: int) -> EngineEvent:
    payload = {"e": "ACCOUNT_CONFIG_UPDATE", "E": ts, "T": ts, "ac": {"s": symbol, "l": leverage}}
    return EngineEvent(account_id, "ACCOUNT_CONFIG_UPDATE", payload)
