"""Entry quantity and protective prices against the symbol's exchange filters (Decimal).

    qty_risk   = trading.risk_per_trade x equity / |entry - stop|   (loss at the stop)
    notional   <= available / (1/leverage + taker_fee)               (margin + opening fee fit)
    qty        = min(qty_risk, qty_margin, max qty) rounded DOWN to the (market) step size

Prices go on the tick grid in the protective direction: the stop and the take-profit both
round TOWARDS the entry (a long's stop up, its target down), so the stop triggers no later
and the target no further than planned; the risk is computed with the rounded stop.  A limit
entry rounds the price in the buyer's/seller's favour (BUY down, SELL up).

An entry whose notional is below max(risk.min_notional, the symbol's MIN_NOTIONAL), or that
breaks a filter, is skipped with a reason - never sent to be rejected by the exchange.

Leverage brackets (`within_brackets`; shared/brackets.py).  Binance refuses (-2027) a
position whose notional exceeds the cap of the bracket allowing its leverage, so a sized
entry is checked against the symbol's brackets, `allowed = max_leverage_for(notional)`:
    leverage <= allowed   kept as sized;
    allowed >= 1          leverage lowered to `allowed` and the entry sized again (a lower
                          leverage can only shrink the margin-limited notional, which then
                          stays inside a bracket allowing `allowed`); never raised;
    allowed == 0          (beyond the last cap) leverage 1 and the quantity capped at
                          max_notional_at(brackets, 1) / price, rounded down to the step;
                          below the minimum notional it is skipped as `bracket_cap`.
No brackets known for the symbol: the entry is kept as sized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from shared.brackets import Bracket, max_leverage_for, max_notional_at
from shared.filters import FilterError, SymbolFilters, check_order, round_price, round_qty_down

STOP_TOO_CLOSE = "stop_too_close"
TARGET_TOO_CLOSE = "target_too_close"
BELOW_MIN_NOTIONAL = "below_min_notional"
NO_EQUITY = "no_equity"
BRACKET_CAP = "bracket_cap"  # even leverage 1's bracket cannot hold a min-notional entry


@dataclass(frozen=True, slots=True)
class SizedEntry:
    quantity: Decimal
    entry_price: Decimal  # reference price (MARKET) or the limit price
    stop_price: Decimal
    take_profit_price: Decimal
    invalidation_price: Decimal | None
    notional: Decimal
    risk_amount: Decimal  # loss at the stop, before fees
    margin: Decimal  # notional / leverage
    limited_by: Literal["risk", "margin", "max_qty", "bracket"]


@dataclass(frozen=True, slots=True)
class SizingSkip:
    reason: str
    detail: str = ""


def _dec(x: Decimal | float | int | str) -> Decimal:
    """Exact decimal of an input; a float goes through its shortest repr (see models)."""
    return x if isinstance(x, Decimal) else Decimal(repr(x) if isinstance(x, float) else str(x))


def protective_prices(
    side: Literal["LONG", "SHORT"],
    stop: Decimal,
    take_profit: Decimal,
    tick: Decimal,
) -> tuple[Decimal, Decimal]:
    """(stop, take_profit) on the tick grid, both rounded towards the entry."""
    if side == "LONG":
        return round_price(stop, tick, "up"), round_price(take_profit, tick, "down")
    return round_price(stop, tick, "down"), round_price(take_profit, tick, "up")


def size_entry(
    *,
    side: Literal["LONG", "SHORT"],
    entry: Decimal | float,
    stop: Decimal | float,
    take_profit: Decimal | float,
    equity: Decimal | float,
    available: Decimal | float,
    leverage: int,
    risk_per_trade: float,
    min_notional: float,
    taker_fee: float,
    filters: SymbolFilters,
    market: bool = True,
    invalidation: Decimal | float | None = None,
    notional_cap: Decimal | None = None,
) -> SizedEntry | SizingSkip:
    """`notional_cap`: a leverage bracket's cap on the position (within_brackets)."""
    eq, avail = _dec(equity), _dec(available)
    if not (eq.is_finite() and avail.is_finite()) or eq <= 0 or avail <= 0:
        return SizingSkip(NO_EQUITY, f"equity={eq} available={avail}")
    tick = filters.tick_size
    if market:
        price = round_price(_dec(entry), tick, "nearest")
    else:
        price = round_price(_dec(entry), tick, "BUY" if side == "LONG" else "SELL")
    sl, tp = protective_prices(side, _dec(stop), _dec(take_profit), tick)
    sign = 1 if side == "LONG" else -1
    if (price - sl) * sign <= 0 or sl <= 0:
        return SizingSkip(STOP_TOO_CLOSE, f"entry={price} stop={sl}")
    if (tp - price) * sign <= 0:
        return SizingSkip(TARGET_TOO_CLOSE, f"entry={price} take_profit={tp}")
    dist = abs(price - sl)
    qty_risk = _dec(risk_per_trade) * eq / dist
    max_notional = avail / (Decimal(1) / Decimal(leverage) + _dec(taker_fee))
    qty_margin = max_notional / price
    max_qty = filters.market_max_qty if market else filters.max_qty
    limits = [(qty_risk, "risk"), (qty_margin, "margin"), (max_qty, "max_qty")]
    if notional_cap is not None:
        limits.append((notional_cap / price, "bracket"))
    raw, limited_by = min(limits)
    step = filters.market_step_size if market else filters.step_size
    qty = round_qty_down(raw, step)
    notional = qty * price
    need = max(_dec(min_notional), filters.min_notional)
    if qty <= 0 or notional < need:
        why = BRACKET_CAP if limited_by == "bracket" else BELOW_MIN_NOTIONAL
        return SizingSkip(why, f"notional={notional} need={need} by={limited_by}")
    try:
        check_order(filters, qty, price, market=market)
        for p in (sl, tp):  # protective orders are conditional at these prices
            if p < filters.min_price or (filters.max_price is not None and p > filters.max_price):
                raise FilterError("PRICE_FILTER", "protective price out of range", p, None)
    except FilterError as exc:
        return SizingSkip(f"filter_{exc.filter_type.lower()}", str(exc))
    inv = None
    if invalidation is not None:
        inv = round_price(_dec(invalidation), tick, "up" if side == "LONG" else "down")
    return SizedEntry(
        qty, price, sl, tp, inv, notional, qty * dist, notional / leverage, limited_by
    )  # type: ignore[arg-type]


Resize = Callable[[int, Decimal | None], SizedEntry | SizingSkip]


def within_brackets(
    sized: SizedEntry, leverage: int, brackets: Sequence[Bracket] | None, resize: Resize
) -> tuple[SizedEntry | SizingSkip, int]:
    """(entry, leverage) that the symbol's brackets allow (module doc).  `resize(leverage,
    notional_cap)` sizes the same entry again."""
    allowed = max_leverage_for(brackets or (), sized.notional)
    if allowed is None or leverage <= allowed:
        return sized, leverage
    if allowed >= 1:
        return resize(allowed, None), allowed
    return resize(1, max_notional_at(brackets or (), 1)), 1
