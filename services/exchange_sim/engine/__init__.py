"""Pure core of the Binance USDⓈ-M futures simulator: matching, margin, funding, liquidation.

Public API (used by the protocol layer in services/exchange_sim and by the backtest):

    ex = Exchange(specs, taker_fee=Decimal("0.0005"), maker_fee=Decimal("0.0002"))
    ex.add_account("acct", Decimal("10000"))
    events = ex.advance_price("BTCUSDT", Decimal("30000"), ts_ms)
    body, events = ex.place_order("acct", {"symbol": "BTCUSDT", "side": "BUY",
                                           "type": "MARKET", "quantity": "0.010"}, ts_ms)

Every rejection raises `EngineReject(http_status, code, msg)` with Binance's code and message;
every event is an `EngineEvent(account_id, event_type, payload)` whose payload is the complete
user-data-stream dict.
"""

from .audit import AuditLog, FillRecord, OrderRecord
from .errors import EngineReject
from .events import EngineEvent
from .exchange import EIGHT_HOURS_MS, Exchange, constant_funding
from .margin import break_even_price, liquidation_price, maint_margin

__all__ = [
    "EIGHT_HOURS_MS",
    "AuditLog",
    "EngineEvent",
    "EngineReject",
    "Exchange",
    "FillRecord",
    "OrderRecord",
    "break_even_price",
    "constant_funding",
    "liquidation_price",
    "maint_margin",
]
