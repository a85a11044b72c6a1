"""Read endpoints rendered in Binance's exact field names (strings for numbers).

Covers /fapi/v1/order (query/new/cancel shapes), /fapi/v1/algoOrder, /fapi/v2|v3/positionRisk,
/fapi/v2|v3/balance, /fapi/v2|v3/account, /fapi/v1/userTrades and /fapi/v1/premiumIndex.
v3 positionRisk drops leverage/marginType/maxNotionalValue and lists only symbols with a
position or open orders; v2 lists every symbol.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .errors import reject
from .events import price_str, qty_str
from .margin import ZERO, break_even_price, fmt, fmt_money, fmt_plain, maint_margin, unrealized_pnl
from .models import Account, AlgoOrder, Book, Order, Position

WEEK_MS = 7 * 24 * 3_600_000


class ViewMixin:
    accounts: dict[str, Account]
    books: dict[str, Book]

    # ------------------------------------------------------------------ orders
    def order_dict(self, order: Order, shape: str = "query") -> dict[str, Any]:
        """shape: "new" (POST response), "query" (GET, has `time`), "cancel"."""
        spec = self.books[order.symbol].spec
        d: dict[str, Any] = {
            "avgPrice": fmt_plain(order.avg_price, 1, 8) if order.executed else "0.00000",
            "clientOrderId": order.client_id,
            "cumQty": qty_str(spec, order.executed),
            "cumQuote": fmt_money(order.cum_quote) if order.executed else "0",
            "executedQty": qty_str(spec, order.executed),
            "orderId": order.order_id,
            "origQty": qty_str(spec, order.qty),
            "origType": order.orig_type,
            "price": price_str(spec, order.price) if order.type == "LIMIT" else "0",
            "reduceOnly": order.reduce_only,
            "side": order.side,
            "positionSide": "BOTH",
            "status": order.status,
            "stopPrice": price_str(spec, order.stop_price),
            "closePosition": order.close_position,
            "symbol": order.symbol,
            "timeInForce": order.tif,
            "type": order.type,
            "updateTime": order.update_time,
            "workingType": order.working_type,
            "priceProtect": order.price_protect,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "NONE",
            "goodTillDate": 0,
        }
        if shape == "query":
            d["time"] = order.time
            del d["cumQty"]
        return d

    def algo_dict(self, algo: AlgoOrder, query: bool = False) -> dict[str, Any]:
        spec = self.books[algo.symbol].spec
        d: dict[str, Any] = {
            "algoId": algo.algo_id,
            "clientAlgoId": algo.client_algo_id,
            "algoType": "CONDITIONAL",
            "orderType": algo.order_type,
            "symbol": algo.symbol,
            "side": algo.side,
            "positionSide": "BOTH",
            "timeInForce": algo.tif,
            "quantity": qty_str(spec, algo.qty),
            "algoStatus": algo.status,
            "triggerPrice": price_str(spec, algo.trigger_price),
            "price": price_str(spec, algo.price),
            "icebergQuantity": None,
            "selfTradePreventionMode": "NONE",
            "workingType": algo.working_type,
            "priceMatch": "NONE",
            "closePosition": algo.close_position,
            "priceProtect": algo.price_protect,
            "reduceOnly": algo.reduce_only,
            "createTime": algo.create_time,
            "updateTime": algo.update_time,
            "triggerTime": algo.trigger_time,
            "goodTillDate": 0,
        }
        if not query:
            d["activatePrice"] = ""
            d["callbackRate"] = ""
            return d
        acct = self.accounts[algo.account_id]
        order = None
        if algo.actual_order_id is not None:
            order = acct.open_orders.get(algo.actual_order_id) or acct.closed_orders.get(
                algo.actual_order_id
            )
        d["actualOrderId"] = str(algo.actual_order_id) if algo.actual_order_id is not None else ""
        d["actualPrice"] = fmt_plain(order.avg_price, 1, 8) if order and order.executed else "0"
        d["actualType"] = order.type if order else ""
        d["actualQty"] = qty_str(spec, order.executed) if order else "0"
        d["tpOrderType"] = ""
        return d

    # --------------------------------------------------------------- positions
    def _position_numbers(self, acct: Account, pos: Position) -> dict[str, Decimal]:
        book = self.books[pos.symbol]
        mark = book.mark
        notional = pos.amount * mark
        upnl = unrealized_pnl(pos.amount, pos.entry, mark) if pos.amount else ZERO
        pim = abs(notional) / pos.leverage
        oim = self._open_order_margin(acct, pos.symbol)  # type: ignore[attr-defined]
        return {
            "mark": mark,
            "notional": notional,
            "upnl": upnl,
            "pim": pim,
            "oim": oim,
            "mm": maint_margin(book.spec.brackets, notional),
            "liq": self._liq_price(acct, pos) if pos.amount else ZERO,  # type: ignore[attr-defined]
            "bep": break_even_price(pos.amount, pos.entry, pos.open_fees),
        }

    def _has_activity(self, acct: Account, symbol: str) -> bool:
        pos = acct.positions.get(symbol)
        if pos is not None and pos.amount:
            return True
        return any(o.symbol == symbol for o in acct.open_orders.values())

    def position_risk(
        self, account_id: str, symbol: str | None = None, version: int = 2
    ) -> list[dict[str, Any]]:
        """`GET /fapi/v2/positionRisk` (version=2) or `/fapi/v3/positionRisk` (version=3)."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        symbols = [self._book(symbol).spec.symbol] if symbol else list(self.books)  # type: ignore[attr-defined]
        if version == 3:
            symbols = [s for s in symbols if self._has_activity(acct, s)]
        return [self._risk_row(acct, s, version) for s in symbols]

    def _risk_row(self, acct: Account, symbol: str, version: int) -> dict[str, Any]:
        book = self.books[symbol]
        spec = book.spec
        pos = acct.position(spec)
        n = self._position_numbers(acct, pos)
        iso_margin = pos.isolated_wallet + n["upnl"] if pos.isolated else ZERO
        common = {
            "symbol": symbol,
            "positionSide": "BOTH",
            "positionAmt": qty_str(spec, pos.amount),
            "entryPrice": fmt_plain(pos.entry, 1, 8),
            "breakEvenPrice": fmt_plain(n["bep"], 1, 8),
            "markPrice": fmt_money(n["mark"]),
            "unRealizedProfit": fmt_money(n["upnl"]),
            "liquidationPrice": fmt_money(n["liq"]) if n["liq"] else "0",
            "isolatedMargin": fmt_money(iso_margin),
            "notional": fmt_money(n["notional"]) if pos.amount else "0",
            "isolatedWallet": fmt_money(pos.isolated_wallet) if pos.isolated else "0",
            "updateTime": pos.update_time,
        }
        if version == 3:
            bid, ask = self._side_notionals(acct, symbol)  # type: ignore[attr-defined]
            common.update(
                {
                    "marginAsset": spec.quote_asset,
                    "initialMargin": fmt_money(n["pim"] + n["oim"]),
                    "maintMargin": fmt_money(n["mm"]),
                    "positionInitialMargin": fmt_money(n["pim"]),
                    "openOrderInitialMargin": fmt_money(n["oim"]),
                    "adl": 0,
                    "bidNotional": fmt_money(bid) if bid else "0",
                    "askNotional": fmt_money(ask) if ask else "0",
                }
            )
            return common
        common.update(
            {
                "leverage": str(pos.leverage),
                "maxNotionalValue": fmt(spec.max_notional(pos.leverage), 0),
                "marginType": "isolated" if pos.isolated else "cross",
                "isAutoAddMargin": "false",
            }
        )
        return common

    # ---------------------------------------------------------------- balances
    def _totals(self, acct: Account) -> dict[str, Decimal]:
        upnl_cross, im_cross, mm_cross = self._cross_sums(acct)  # type: ignore[attr-defined]
        upnl_all = ZERO
        pim_all = ZERO
        mm_all = ZERO
        for p in acct.positions.values():
            if p.amount:
                n = self._position_numbers(acct, p)
                upnl_all += n["upnl"]
                pim_all += n["pim"]
                mm_all += n["mm"]
        oim = self._open_order_margin(acct)  # type: ignore[attr-defined]
        cw = acct.cross_wallet
        available = cw + upnl_cross - im_cross - oim
        return {
            "wallet": acct.wallet,
            "cw": cw,
            "cross_upnl": upnl_cross,
            "upnl": upnl_all,
            "margin": acct.wallet + upnl_all,
            "pim": pim_all,
            "oim": oim,
            "mm": mm_all,
            "available": available,
            "max_withdraw": max(ZERO, min(available, cw + min(upnl_cross, ZERO) - im_cross - oim)),
        }

    def balances(self, account_id: str, version: int = 2) -> list[dict[str, Any]]:
        """`GET /fapi/v2/balance` and `/fapi/v3/balance` (same shape)."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        t = self._totals(acct)
        return [
            {
                "accountAlias": f"Sim{acct.account_id[:4]}",
                "asset": acct.asset,
                "balance": fmt_money(t["wallet"]),
                "crossWalletBalance": fmt_money(t["cw"]),
                "crossUnPnl": fmt_money(t["cross_upnl"]),
                "availableBalance": fmt_money(t["available"]),
                "maxWithdrawAmount": fmt_money(t["max_withdraw"]),
                "marginAvailable": True,
                "updateTime": acct.update_time,
            }
        ]

    def account(self, account_id: str, version: int = 2) -> dict[str, Any]:
        """`GET /fapi/v2/account` or `/fapi/v3/account`."""
        acct = self._account(account_id)  # type: ignore[attr-defined]
        t = self._totals(acct)
        totals = {
            "totalInitialMargin": fmt_money(t["pim"] + t["oim"]),
            "totalMaintMargin": fmt_money(t["mm"]),
            "totalWalletBalance": fmt_money(t["wallet"]),
            "totalUnrealizedProfit": fmt_money(t["upnl"]),
            "totalMarginBalance": fmt_money(t["margin"]),
            "totalPositionInitialMargin": fmt_money(t["pim"]),
            "totalOpenOrderInitialMargin": fmt_money(t["oim"]),
            "totalCrossWalletBalance": fmt_money(t["cw"]),
            "totalCrossUnPnl": fmt_money(t["cross_upnl"]),
            "availableBalance": fmt_money(t["available"]),
            "maxWithdrawAmount": fmt_money(t["max_withdraw"]),
        }
        asset = {
            "asset": acct.asset,
            "walletBalance": fmt_money(t["wallet"]),
            "unrealizedProfit": fmt_money(t["upnl"]),
            "marginBalance": fmt_money(t["margin"]),
            "maintMargin": fmt_money(t["mm"]),
            "initialMargin": fmt_money(t["pim"] + t["oim"]),
            "positionInitialMargin": fmt_money(t["pim"]),
            "openOrderInitialMargin": fmt_money(t["oim"]),
            "crossWalletBalance": fmt_money(t["cw"]),
            "crossUnPnl": fmt_money(t["cross_upnl"]),
            "availableBalance": fmt_money(t["available"]),
            "maxWithdrawAmount": fmt_money(t["max_withdraw"]),
            "updateTime": acct.update_time,
        }
        if version == 3:
            rows = [
                self._account_row_v3(acct, s) for s in self.books if self._has_activity(acct, s)
            ]
            return {**totals, "assets": [asset], "positions": rows}
        asset["marginAvailable"] = True
        head = {
            "feeTier": 0, "feeBurn": False, "canTrade": True, "canDeposit": True, "canWithdraw": True,
            "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1,
        }  # fmt: skip
        rows = [self._account_row_v2(acct, s) for s in self.books]
        return {**head, **totals, "assets": [asset], "positions": rows}

    def _account_row_v2(self, acct: Account, symbol: str) -> dict[str, Any]:
        spec = self.books[symbol].spec
        pos = acct.position(spec)
        n = self._position_numbers(acct, pos)
        bid, ask = self._side_notionals(acct, symbol)  # type: ignore[attr-defined]
        return {
            "symbol": symbol,
            "initialMargin": fmt_money(n["pim"] + n["oim"]),
            "maintMargin": fmt_money(n["mm"]),
            "unrealizedProfit": fmt_money(n["upnl"]),
            "positionInitialMargin": fmt_money(n["pim"]),
            "openOrderInitialMargin": fmt_money(n["oim"]),
            "leverage": str(pos.leverage),
            "isolated": pos.isolated,
            "entryPrice": fmt_plain(pos.entry, 1, 8),
            "breakEvenPrice": fmt_plain(n["bep"], 1, 8),
            "maxNotional": fmt(spec.max_notional(pos.leverage), 0),
            "bidNotional": fmt_money(bid) if bid else "0",
            "askNotional": fmt_money(ask) if ask else "0",
            "positionSide": "BOTH",
            "positionAmt": qty_str(spec, pos.amount),
            "updateTime": pos.update_time,
        }

    def _account_row_v3(self, acct: Account, symbol: str) -> dict[str, Any]:
        spec = self.books[symbol].spec
        pos = acct.position(spec)
        n = self._position_numbers(acct, pos)
        return {
            "symbol": symbol,
            "positionSide": "BOTH",
            "positionAmt": qty_str(spec, pos.amount),
            "unrealizedProfit": fmt_money(n["upnl"]),
            "isolatedMargin": fmt_money(pos.isolated_wallet + n["upnl"] if pos.isolated else ZERO),
            "notional": fmt_money(n["notional"]) if pos.amount else "0",
            "isolatedWallet": fmt_money(pos.isolated_wallet) if pos.isolated else "0",
            "initialMargin": fmt_money(n["pim"] + n["oim"]),
            "maintMargin": fmt_money(n["mm"]),
            "updateTime": pos.update_time,
        }

    # ------------------------------------------------------------------- misc
    def user_trades(
        self, account_id: str, symbol: str, limit: int = 500, *, start: int | None = None,
        end: int | None = None, from_id: int | None = None, now_ms: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """`GET /fapi/v1/userTrades`, oldest first, as Binance answers it: `fromId` -> the
        first `limit` trades from that id; `startTime` -> the first `limit` in
        [start, min(end, start + 7 d)]; `endTime` alone -> the last `limit` in
        [end - 7 d, end]; neither -> the last `limit` of the past 7 days.  fromId with a
        time is -1128; a window over 7 days is -1127."""
        if from_id is not None and (start is not None or end is not None):
            raise reject(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and not 0 <= end - start <= WEEK_MS:
            raise reject(-1127, "More than 168 hours between startTime and endTime.")
        acct = self._account(account_id)  # type: ignore[attr-defined]
        rows = [t for t in acct.trades if t["symbol"] == symbol]
        if from_id is not None:
            return [t for t in rows if t["id"] >= from_id][:limit]
        if start is not None:
            hi = start + WEEK_MS if end is None else end
            return [t for t in rows if start <= t["time"] <= hi][:limit]
        hi = end if end is not None else now_ms
        if hi is None:  # an engine caller without a clock: every trade kept
            return rows[-limit:]
        return [t for t in rows if hi - WEEK_MS <= t["time"] <= hi][-limit:]

    def premium_index(self, symbol: str, ts_ms: int) -> dict[str, Any]:
        """`GET /fapi/v1/premiumIndex` for one symbol (index = mark in the simulator)."""
        book = self._book(symbol)  # type: ignore[attr-defined]
        rate = book.funding_rate if book.funding_rate is not None else book.last_funding_rate
        return {
            "symbol": book.spec.symbol,
            "markPrice": fmt_money(book.mark),
            "indexPrice": fmt_money(book.mark),
            "estimatedSettlePrice": fmt_money(book.mark),
            "lastFundingRate": fmt_money(rate),
            "interestRate": "0.00010000",
            "nextFundingTime": book.next_funding if 0 < book.next_funding < 2**62 else 0,
            "time": ts_ms,
        }
