"""Rejections with Binance's HTTP status, error code and message.

Why one table: the protocol layer turns an `EngineReject` into `{"code": .., "msg": ..}` with
the status untouched, so every message here is the exact text Binance sends (USDⓈ-M error
code page), and a client tested against the simulator meets the same errors live.
"""

from __future__ import annotations

from typing import Any


class EngineReject(Exception):
    """A request the exchange refuses. Carries what the wire response needs."""

    def __init__(self, http_status: int, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.http_status = http_status
        self.code = code
        self.msg = msg

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}

    def __repr__(self) -> str:
        return f"EngineReject({self.http_status}, {self.code}, {self.msg!r})"


def reject(code: int, msg: str, status: int = 400) -> EngineReject:
    return EngineReject(status, code, msg)


def mandatory(name: str) -> EngineReject:
    return reject(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def not_required(name: str) -> EngineReject:
    return reject(-1106, f"Parameter '{name}' sent when not required.")


def invalid_param(name: str) -> EngineReject:
    return reject(-1130, f"Data sent for parameter '{name}' is not valid.")


INVALID_SYMBOL = (-1121, "Invalid symbol.")
NO_DEPTH = (-1112, "No orders on book for symbol.")
BAD_PRECISION = (-1111, "Precision is over the maximum defined for this asset.")
INVALID_TIF = (-1115, "Invalid timeInForce.")
INVALID_ORDER_TYPE = (-1116, "Invalid orderType.")
INVALID_SIDE = (-1117, "Invalid side.")
EITHER_ID = (
    -1102,
    "Param 'orderId' or 'origClientOrderId' must be sent, but both were empty/null!",
)
EITHER_ALGO_ID = (-1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
UNKNOWN_ORDER = (-2011, "Unknown order sent.")
NO_SUCH_ORDER = (-2013, "Order does not exist.")
MARGIN_INSUFFICIENT = (-2019, "Margin is insufficient.")
WOULD_TRIGGER = (-2021, "Order would immediately trigger.")
REDUCE_ONLY_REJECT = (-2022, "ReduceOnly Order is rejected.")
MAX_OPEN_ORDERS = (-2025, "Reach max open order limit.")
MAX_POSITION = (-2027, "Exceeded the maximum allowable position at current leverage.")
LEVERAGE_TOO_SMALL = (-2028, "Leverage is smaller than permitted: insufficient margin balance.")
PRICE_LE_ZERO = (-4001, "Price less than 0.")
PRICE_GT_MAX = (-4002, "Price greater than max price.")
QTY_LE_ZERO = (-4003, "Quantity less than zero.")
QTY_LT_MIN = (-4004, "Quantity less than min quantity.")
QTY_GT_MAX = (-4005, "Quantity greater than max quantity.")
PRICE_LT_MIN = (-4013, "Price less than min price.")
PRICE_NOT_TICK = (-4014, "Price not increased by tick size.")
CLIENT_ID_TOO_LONG = (-4015, "Client order id length should not be more than 36 chars")
CLIENT_ID_INVALID = (-4015, "Client order id is not valid.")
PRICE_ABOVE_CAP = (-4016, "Price is higher than mark price multiplier cap.")
QTY_NOT_STEP = (-4023, "Qty not increased by step size.")
PRICE_BELOW_FLOOR = (-4024, "Price is lower than mark price multiplier floor.")
INVALID_WORKING_TYPE = (-4031, "Invalid parameter working type")
MAX_ALGO_ORDERS = (-4045, "Reach max stop order limit.")
NO_NEED_MARGIN_TYPE = (-4046, "No need to change margin type.")
MARGIN_TYPE_OPEN_ORDERS = (-4047, "Margin type cannot be changed if there exists open orders.")
MARGIN_TYPE_POSITION = (-4048, "Margin type cannot be changed if there exists position.")
POSITION_SIDE_MISMATCH = (-4061, "Order's position side does not match user's setting.")
DUPLICATE_CLIENT_ID = (-4116, "ClientOrderId is duplicated.")
ALGO_ENDPOINT_ONLY = (
    -4120,
    "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
)
QTY_WITH_CLOSE_POSITION = (-4137, "Quantity must be zero with closePosition equals true")
ISOLATED_LEVERAGE_REDUCE = (
    -4161,
    "Leverage reduction is not supported in Isolated Margin Mode with open positions",
)
FOK_REJECT = (
    -5021,
    "Due to the order could not be filled immediately, the FOK order has been rejected.",
)
GTX_REJECT = (
    -5022,
    "Due to the order could not be executed as maker, the Post Only order will be rejected.",
)


def err(pair: tuple[int, str], status: int = 400) -> EngineReject:
    return EngineReject(status, pair[0], pair[1])


def min_notional(value: str) -> EngineReject:
    return reject(
        -4164, f"Order's notional must be no smaller than {value} (unless you choose reduce only)"
    )


def invalid_leverage(value: object) -> EngineReject:
    return reject(-4028, f"Leverage {value} is not valid")
