"""Pure margin arithmetic: maintenance margin, liquidation price, break-even price, formatting.

Why pure functions: the same formulas are used by the engine (to decide liquidations), by the
read endpoints (positionRisk's liquidationPrice) and by tests that check hand-computed cases,
so there is exactly one implementation of each.

Formulas are Binance's for one-way mode (USDⓈ-M "Liquidation price" help page):

    LP = (WB − TMM1 + UPNL1 + cum − side·S·EP) / (S·MMR − side·S)

WB wallet balance (cross wallet, or the isolated wallet), TMM1 / UPNL1 maintenance margin and
unrealized PnL of the *other* cross positions, S position size, EP entry price, side +1 long /
−1 short, MMR and cum of the bracket holding the liquidation notional.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal

from ..specs import Bracket

ZERO = Decimal(0)
ONE = Decimal(1)
Q8 = Decimal("0.00000001")


def q8(x: Decimal) -> Decimal:
    """Money is kept at 8 decimals, like Binance's USDT balances."""
    return x.quantize(Q8, rounding=ROUND_HALF_UP)


def bracket_for(brackets: Sequence[Bracket], notional: Decimal) -> Bracket:
    n = abs(notional)
    for b in brackets:
        if n < b.notional_cap:
            return b
    return brackets[-1]


def maint_margin(brackets: Sequence[Bracket], notional: Decimal) -> Decimal:
    """notional × rate − cum, for |notional| (0 for a flat position)."""
    n = abs(notional)
    if not n:
        return ZERO
    b = bracket_for(brackets, n)
    return n * b.maint_margin_rate - b.maint_amount


def liquidation_price(
    amount: Decimal,
    entry_price: Decimal,
    wallet_balance: Decimal,
    brackets: Sequence[Bracket],
    other_maint_margin: Decimal = ZERO,
    other_unrealized: Decimal = ZERO,
) -> Decimal:
    """Mark price at which margin balance equals maintenance margin (0 if none exists).

    `amount` is signed (long > 0). Tries each bracket and keeps the one whose notional at the
    resulting price falls inside it, as Binance does; the result is not rounded.
    """
    if not amount:
        return ZERO
    side = ONE if amount > 0 else -ONE
    size = abs(amount)
    base = wallet_balance - other_maint_margin + other_unrealized - side * size * entry_price
    floor = ZERO
    fallback = ZERO
    for b in brackets:
        denom = size * b.maint_margin_rate - side * size
        if denom:
            price = (base + b.maint_amount) / denom
            notional = price * size
            if price > 0 and floor <= notional < b.notional_cap:
                return price
            if not fallback and price > 0:
                fallback = price
        floor = b.notional_cap
    return fallback if fallback > 0 else ZERO


def break_even_price(amount: Decimal, entry_price: Decimal, open_fees: Decimal) -> Decimal:
    """Entry price moved by the commissions paid to open the current position.

    Matches Binance's positionRisk examples (ADA long 0.385 → 0.385077 after a 0.02% fee;
    COMP short 70.92841 → 70.900038636 after 0.04%): long adds fees/size, short subtracts.
    """
    if not amount:
        return ZERO
    size = abs(amount)
    return entry_price + (open_fees / size if amount > 0 else -open_fees / size)


def unrealized_pnl(amount: Decimal, entry_price: Decimal, mark: Decimal) -> Decimal:
    return amount * (mark - entry_price)


def round_to_tick(price: Decimal, tick: Decimal, up: bool) -> Decimal:
    """Round a price to the tick grid (up for asks, down for bids)."""
    steps = (price / tick).to_integral_value(rounding=ROUND_UP if up else ROUND_DOWN)
    return (steps * tick).quantize(tick)


def fmt(x: Decimal, places: int) -> str:
    """Fixed-point string with exactly `places` decimals (Binance's wire style)."""
    return f"{x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"


def fmt_money(x: Decimal) -> str:
    return fmt(x, 8)


def fmt_plain(x: Decimal, min_places: int = 1, max_places: int = 8) -> str:
    """Shortest string with between min and max decimals (entryPrice, avgPrice)."""
    y = x.quantize(Decimal(1).scaleb(-max_places), rounding=ROUND_HALF_UP).normalize()
    exp = -y.as_tuple().exponent if y.as_tuple().exponent < 0 else 0  # type: ignore[operator]
    return fmt(y, max(min_places, min(int(exp), max_places)))
