"""Sizing against exchange filters: Decimal rounding, risk and margin caps, skips."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from services.trader.sizing import (
    BELOW_MIN_NOTIONAL,
    BRACKET_CAP,
    STOP_TOO_CLOSE,
    SizedEntry,
    SizingSkip,
    protective_prices,
    size_entry,
    within_brackets,
)
from shared.brackets import Bracket, max_leverage_for, max_notional_at
from shared.filters import SymbolFilters


def filters(tick="0.01", step="0.001", min_notional="5", max_qty="1000", min_qty="0.001"):
    return SymbolFilters("BTCUSDT", D(tick), D(step), D(step), D(min_qty), D(max_qty), D(max_qty),
                         D(min_notional), 2, 3)  # fmt: skip


def size(**kw):
    base = dict(side="LONG", entry=100.0, stop=98.0, take_profit=103.0, equity=D(1000),
                available=D(1000), leverage=10, risk_per_trade=0.01, min_notional=5.0,
                taker_fee=0.0005, filters=filters())  # fmt: skip
    return size_entry(**{**base, **kw})


def test_quantity_from_risk_rounded_down() -> None:
    r = size(stop=98.003, take_profit=103.007)
    assert isinstance(r, SizedEntry)
    assert r.stop_price == D("98.01") and r.take_profit_price == D("103.00")  # towards entry
    assert r.entry_price == D("100.00")
    # 1 % of 1000 = 10 at risk over a 1.99 stop -> 5.0251... -> 5.025
    assert r.quantity == D("5.025") and r.limited_by == "risk"
    assert r.risk_amount <= D(10) and r.notional == D("502.50000")
    assert r.margin == r.notional / 10


def test_margin_caps_the_quantity() -> None:
    r = size(available=D(20), leverage=5)
    assert isinstance(r, SizedEntry) and r.limited_by == "margin"
    assert r.notional / 5 + r.notional * D("0.0005") <= D(20)


def test_short_rounding_and_limit_entry() -> None:
    r = size(side="SHORT", entry=100.005, stop=102.007, take_profit=96.993, market=False)
    assert isinstance(r, SizedEntry)
    assert r.entry_price == D("100.01")  # a SELL limit rounds up
    assert r.stop_price == D("102.00") and r.take_profit_price == D("97.00")


def test_skips_with_reasons() -> None:
    tiny = size(equity=D(1), available=D(1))
    assert isinstance(tiny, SizingSkip) and tiny.reason == BELOW_MIN_NOTIONAL
    assert "need=5" in tiny.detail and "by=risk" in tiny.detail
    small = size(equity=D(10), min_notional=100.0)
    assert isinstance(small, SizingSkip) and small.reason == BELOW_MIN_NOTIONAL
    big_filter = size(filters=filters(min_notional="1000"))
    assert isinstance(big_filter, SizingSkip) and big_filter.reason == BELOW_MIN_NOTIONAL
    close = size(stop=99.999, filters=filters(tick="0.1"))  # rounds onto the entry
    assert isinstance(close, SizingSkip) and close.reason == STOP_TOO_CLOSE
    assert size(equity=D(0)).reason == "no_equity"  # type: ignore[union-attr]
    assert size(equity=float("nan")).reason == "no_equity"  # type: ignore[union-attr]


@given(
    side=st.sampled_from(["LONG", "SHORT"]),
    entry=st.decimals(D("0.01"), D("50000"), places=4),
    stop_atr=st.floats(0.001, 0.05),
    tp_mult=st.floats(1.0, 3.0),
    equity=st.decimals(D(10), D(1_000_000), places=2),
    avail_frac=st.floats(0.01, 1.0),
    leverage=st.integers(1, 125),
    risk=st.floats(0.001, 0.05),
    tick=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]),
    step=st.sampled_from(["0.001", "0.01", "0.1", "1"]),
)
def test_sizing_invariants(
    side, entry, stop_atr, tp_mult, equity, avail_frac, leverage, risk, tick, step
) -> None:
    s = 1 if side == "LONG" else -1
    e = float(entry)
    stop, tp = e * (1 - s * stop_atr), e * (1 + s * stop_atr * tp_mult)
    avail = (equity * D(repr(avail_frac))).quantize(D("0.01"))
    f = filters(tick=tick, step=step, max_qty="100000000")
    r = size(side=side, entry=e, stop=stop, take_profit=tp, equity=equity, available=avail,
             leverage=leverage, risk_per_trade=risk, filters=f)  # fmt: skip
    if isinstance(r, SizingSkip):
        assert r.reason
        return
    assert r.quantity > 0 and r.quantity % D(step) == 0
    for p in (r.entry_price, r.stop_price, r.take_profit_price):
        assert p % D(tick) == 0
    assert r.notional >= D(5)
    # never more loss at the stop than planned, never more margin than available
    assert r.risk_amount <= D(repr(risk)) * equity * D("1.000000001")
    assert r.notional / leverage + r.notional * D("0.0005") <= avail * D("1.000000001")
    # stop and target rounded towards the entry: no further than asked
    assert (r.entry_price - r.stop_price) * s > 0 and (r.take_profit_price - r.entry_price) * s > 0
    sl, tpr = protective_prices(side, D(repr(stop)), D(repr(tp)), D(tick))
    assert (sl, tpr) == (r.stop_price, r.take_profit_price)
    assert abs(D(repr(stop)) - sl) < D(tick) and (sl - D(repr(stop))) * s >= 0
    assert (D(repr(tp)) - tpr) * s >= 0


def tiers(*rows: tuple[int, int]) -> tuple[Bracket, ...]:
    floors = [0] + [cap for cap, _ in rows[:-1]]
    return tuple(
        Bracket(D(f), D(c), lev, D("0.01"), D(0)) for f, (c, lev) in zip(floors, rows, strict=True)
    )


ALT = tiers((1_000, 50), (5_000, 20), (20_000, 5))


def fitted(lev: int, brackets=ALT, **kw):
    def at(leverage: int, cap=None):
        return size(leverage=leverage, notional_cap=cap, **kw)

    sz = at(lev)
    return (sz, lev) if isinstance(sz, SizingSkip) else within_brackets(sz, lev, brackets, at)


def test_a_large_notional_gets_the_brackets_leverage() -> None:
    # 1 % of 100k over a 2 % stop: 50k wanted; margin allows ~20k at 20x, only 5k may have
    # 20x: the 20k tier's 5x, at which margin allows ~5k
    sz, lev = fitted(20, equity=D(100_000), available=D(1_000))
    assert isinstance(sz, SizedEntry) and lev == 5 <= max_leverage_for(ALT, sz.notional)
    assert sz.notional <= max_notional_at(ALT, lev) and sz.margin == sz.notional / 5
    small, lev_small = fitted(20)  # 500: inside the 50x tier, kept as asked (never raised)
    assert isinstance(small, SizedEntry) and lev_small == 20 and small == size(leverage=20)
    assert fitted(20, brackets=())[1] == 20  # no brackets known: as sized


def test_beyond_the_last_cap_leverage_1_and_the_quantity_capped() -> None:
    sz, lev = fitted(10, equity=D(10**7), available=D(10**6), filters=filters(max_qty="1e6"))
    assert lev == 1 and isinstance(sz, SizedEntry) and sz.limited_by == "bracket"
    assert sz.notional <= D(20_000) and sz.quantity == D("200.000")
    tiny = tiers((4, 5))  # leverage 1 holds 4 USDT: below the minimum notional of 5
    skip, _ = fitted(10, brackets=tiny)
    assert isinstance(skip, SizingSkip) and skip.reason == BRACKET_CAP


@given(st.integers(1, 125), st.integers(1, 10**7), st.integers(1, 10**5))
def test_brackets_never_raise_leverage_nor_allow_a_2027(lev, equity, available) -> None:
    sz, got = fitted(lev, equity=D(equity), available=D(available))
    assert 1 <= got <= lev
    if isinstance(sz, SizedEntry):
        cap = max_notional_at(ALT, got)
        assert cap is not None and sz.notional <= cap  # the exchange's -2027 rule
