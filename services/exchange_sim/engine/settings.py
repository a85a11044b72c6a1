"""Per-account, per-symbol settings and market knobs: leverage, margin type, funding, depth.

Why the rules: Binance refuses a leverage above the symbol's top bracket (-4028), one whose
bracket cap is below the open position's notional (-2027), lowering isolated leverage with a
position (-4161), and a margin-type change with a position (-4048) or open orders (-4047).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from . import errors as E
from .errors import err
from .events import EngineEvent, leverage_update
from .margin import ZERO
from .models import Account, Book


class SettingsMixin:
    accounts: dict[str, Account]
    books: dict[str, Book]

    def set_leverage(
        self, account_id: str, symbol: str, leverage: int | str, ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`POST /fapi/v1/leverage` → ({leverage, maxNotionalValue, symbol}, [ACCOUNT_CONFIG_UPDATE])."""
        acct = self._account(account_id)
        book = self._book(symbol)
        spec = book.spec
        try:
            lev = int(str(leverage))
        except ValueError:
            raise E.mandatory("leverage") from None
        if lev < 1 or lev > spec.max_leverage:
            raise E.invalid_leverage(lev)
        pos = acct.position(spec)
        if pos.amount:
            if abs(pos.amount) * book.mark > spec.max_notional(lev):
                raise err(E.MAX_POSITION)
            if pos.isolated and lev < pos.leverage:
                raise err(E.ISOLATED_LEVERAGE_REDUCE)
        old = pos.leverage
        pos.leverage = lev
        if not pos.isolated and pos.amount and self._available(acct) < 0:
            pos.leverage = old
            raise err(E.LEVERAGE_TOO_SMALL)
        self._touch(acct, ts_ms)
        body = {
            "leverage": lev,
            "maxNotionalValue": f"{spec.max_notional(lev):f}",
            "symbol": spec.symbol,
        }
        return body, [leverage_update(account_id, spec.symbol, lev, ts_ms)]

    def set_margin_type(
        self, account_id: str, symbol: str, margin_type: str, ts_ms: int
    ) -> tuple[dict[str, Any], list[EngineEvent]]:
        """`POST /fapi/v1/marginType` (ISOLATED | CROSSED)."""
        acct = self._account(account_id)
        book = self._book(symbol)
        mt = (margin_type or "").upper()
        if mt not in ("ISOLATED", "CROSSED"):
            raise E.invalid_param("marginType")
        pos = acct.position(book.spec)
        if pos.isolated == (mt == "ISOLATED"):
            raise err(E.NO_NEED_MARGIN_TYPE)
        if pos.amount:
            raise err(E.MARGIN_TYPE_POSITION)
        if any(o.symbol == book.spec.symbol for o in acct.open_orders.values()):
            raise err(E.MARGIN_TYPE_OPEN_ORDERS)
        pos.isolated = mt == "ISOLATED"
        pos.isolated_wallet = ZERO
        self._touch(acct, ts_ms)
        return {"code": 200, "msg": "success"}, []

    def set_funding_rate(self, symbol: str, rate: Decimal | None) -> None:
        """Fix the funding rate of `symbol` (None: back to `funding_rate_fn`)."""
        self._book(symbol).funding_rate = None if rate is None else Decimal(rate)

    def set_depth(self, symbol: str, qty: Decimal | None) -> None:
        """Cap the quantity one taker LIMIT order can take (None: unlimited)."""
        self._book(symbol).depth = None if qty is None else Decimal(qty)
