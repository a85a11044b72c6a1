"""Money arithmetic of the simulator: hand-computed PnL, fees, margin, funding, liquidation,
and a Hypothesis check that balances are conserved over random order sequences."""

from __future__ import annotations

from decimal import Decimal as D
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.exchange_sim.engine import EngineEvent, Exchange, break_even_price, liquidation_price
from services.exchange_sim.specs import MAJOR_BRACKETS, default_spec

T0 = 1_700_000_000_000 - 1_700_000_000_000 % (8 * 3600 * 1000) + 1000  # just after a funding time
H8 = 8 * 3600 * 1000


def make(balance: str = "10000", funding: bool = False) -> Exchange:
    specs = {s: default_spec(s, p) for s, p in [("BTCUSDT", 30000), ("ETHUSDT", 1900)]}
    ex = Exchange(specs, slippage_bps=D(0), funding_enabled=funding)
    ex.add_account("a", D(balance))
    ex.advance_price("BTCUSDT", D("30000"), T0)
    ex.advance_price("ETHUSDT", D("1900"), T0)
    return ex


def mkt(
    ex: Exchange, side: str, qty: str, symbol: str = "BTCUSDT", ts: int = T0, **extra: str
) -> dict:
    body, _ = ex.place_order(
        "a",
        {
            "symbol": symbol,
            "side": side,
            "type": "MARKET",
            "quantity": qty,
            "newOrderRespType": "RESULT",
            **extra,
        },
        ts,
    )
    return body


def risk(ex: Exchange, symbol: str = "BTCUSDT") -> dict:
    return ex.position_risk("a", symbol, version=3)[0] if ex.position_risk("a", symbol, 3) else {}


# ------------------------------------------------------------------------------- hand cases
def test_long_001_btc_at_30000_10x_then_31000() -> None:
    ex = make()
    ex.set_leverage("a", "BTCUSDT", 10, T0)
    mkt(ex, "BUY", "0.010")  # notional 300, fee 300 × 0.0005 = 0.15
    ex.advance_price("BTCUSDT", D("31000"), T0 + 60_000)
    r = risk(ex)
    assert r["positionAmt"] == "0.010" and r["entryPrice"] == "30000.0"
    assert r["unRealizedProfit"] == "10.00000000"  # 0.01 × (31000 − 30000)
    assert r["notional"] == "310.00000000"
    assert r["positionInitialMargin"] == "31.00000000"  # 310 / 10
    assert r["maintMargin"] == "1.24000000"  # 310 × 0.4 % − 0
    assert r["breakEvenPrice"] == "30015.0"  # 30000 + 0.15 / 0.01
    bal = ex.balances("a")[0]
    assert bal["balance"] == "9999.85000000"
    assert bal["crossUnPnl"] == "10.00000000"
    assert bal["availableBalance"] == "9978.85000000"  # 9999.85 + 10 − 31
    acct = ex.account("a", 3)
    assert acct["totalMarginBalance"] == "10009.85000000"
    assert acct["totalMaintMargin"] == "1.24000000"


def test_partial_close_realizes_pro_rata_and_keeps_entry() -> None:
    ex = make()
    ex.set_leverage("a", "BTCUSDT", 10, T0)
    mkt(ex, "BUY", "0.010")
    ex.advance_price("BTCUSDT", D("31000"), T0 + 1)
    body, events = ex.place_order(
        "a", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.004"}, T0 + 1
    )
    trade = events[1].payload["o"]
    assert trade["rp"] == "4.00000000"  # 0.004 × 1000
    assert trade["n"] == "0.06200000"  # 0.004 × 31000 × 0.0005
    r = risk(ex)
    assert (r["positionAmt"], r["entryPrice"], r["breakEvenPrice"]) == (
        "0.006",
        "30000.0",
        "30015.0",
    )
    assert ex.balances("a")[0]["balance"] == "10003.78800000"  # 10000 − 0.15 + 4 − 0.062
    pos = events[2].payload["a"]["P"][0]
    assert (pos["cr"], pos["pa"]) == ("4.00000000", "0.006")


def test_flip_and_short_pnl() -> None:
    ex = make()
    mkt(ex, "BUY", "0.006")
    ex.advance_price("BTCUSDT", D("31000"), T0 + 1)
    mkt(ex, "SELL", "0.010", ts=T0 + 1)  # close 0.006 (+6), open short 0.004 at 31000
    r = risk(ex)
    assert (r["positionAmt"], r["entryPrice"]) == ("-0.004", "31000.0")
    ex.advance_price("BTCUSDT", D("30500"), T0 + 2)
    assert risk(ex)["unRealizedProfit"] == "2.00000000"  # −0.004 × (30500 − 31000)
    # short break-even sits below entry by the opening fee share: 0.004/0.010 of 0.155
    assert risk(ex)["breakEvenPrice"] == "30984.5"
    assert (
        ex.account("a", 3)["totalWalletBalance"] == f"{D('10000') - D('0.09') + 6 - D('0.155'):.8f}"
    )


def test_reduce_only_flip_attempt_is_capped_or_rejected() -> None:
    ex = make()
    mkt(ex, "BUY", "0.010")
    body = mkt(ex, "SELL", "0.020", reduceOnly="true")
    assert (body["status"], body["executedQty"]) == ("EXPIRED", "0.010")
    assert risk(ex) == {}  # flat, nothing flipped
    mkt(ex, "SELL", "0.010")
    from services.exchange_sim.engine import EngineReject

    try:
        mkt(ex, "SELL", "0.010", reduceOnly="true")
    except EngineReject as e:
        assert e.code == -2022
    else:  # pragma: no cover - the assertion above is the test
        raise AssertionError("reduce-only in the position's direction must be rejected")


def test_break_even_helper_matches_binance_examples() -> None:
    # positionRisk v3 doc examples: ADA long 0.385 → 0.385077 (0.02 % fee); COMP short 0.04 %
    assert break_even_price(D(30), D("0.385"), D(30) * D("0.385") * D("0.0002")) == D("0.385077")
    assert break_even_price(D(-1), D("70.92841"), D("70.92841") * D("0.0004")) == D("70.900038636")
    assert break_even_price(D(0), D(1), D(1)) == 0


# ---------------------------------------------------------------------------- liquidation
def test_isolated_liquidation_at_the_formula_price() -> None:
    ex = make()
    ex.set_margin_type("a", "BTCUSDT", "ISOLATED", T0)
    ex.set_leverage("a", "BTCUSDT", 10, T0)
    mkt(ex, "BUY", "0.010")
    r = risk(ex)
    assert r["isolatedWallet"] == "30.00000000"  # 300 / 10 moved into the isolated wallet
    # LP = (30 + 0 − 0.01 × 30000) / (0.01 × 0.004 − 0.01)
    lp = liquidation_price(D("0.010"), D(30000), D(30), MAJOR_BRACKETS)
    assert lp == (D(30) - D(300)) / (D("0.00004") - D("0.01"))
    assert r["liquidationPrice"] == f"{lp:.8f}"
    assert ex.advance_price("BTCUSDT", D("27108.5"), T0 + 1) == []  # just above: alive
    events = ex.advance_price("BTCUSDT", D("27108.4"), T0 + 2)
    liq = [e for e in events if e.event_type == "ORDER_TRADE_UPDATE"][0].payload["o"]
    assert (liq["o"], liq["x"], liq["X"], liq["S"], liq["z"]) == (
        "LIQUIDATION",
        "CALCULATED",
        "FILLED",
        "SELL",
        "0.010",
    )
    assert liq["c"].startswith("autoclose-")
    assert any(e.payload.get("a", {}).get("m") == "INSURANCE_CLEAR" for e in events)
    assert risk(ex) == {}
    # an isolated liquidation costs exactly the isolated margin (plus the opening fee)
    assert ex.balances("a")[0]["balance"] == "9969.85000000"
    assert [f.liquidation for f in ex.audit.fills] == [False, True]


def test_cross_liquidation_at_the_formula_price_and_orders_cancelled() -> None:
    ex = make(balance="100")
    ex.set_leverage("a", "BTCUSDT", 20, T0)
    mkt(ex, "BUY", "0.060")  # notional 1800, IM 90, fee 0.9 → wallet 99.1
    ex.place_order(
        "a",
        {
            "symbol": "ETHUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "price": "1500.00",
            "quantity": "0.020",
        },
        T0,
    )
    lp = liquidation_price(D("0.060"), D(30000), D("99.1"), MAJOR_BRACKETS)
    assert risk(ex)["liquidationPrice"] == f"{lp:.8f}"
    assert lp == (D("99.1") - D(1800)) / (D("0.06") * D("0.004") - D("0.06"))
    above = (lp / D("0.1")).to_integral_value(rounding="ROUND_CEILING") * D("0.1")
    assert ex.advance_price("BTCUSDT", above, T0 + 1) == []
    events = ex.advance_price("BTCUSDT", above - D("0.1"), T0 + 2)
    types = [(e.event_type, e.payload.get("o", {}).get("X")) for e in events]
    assert ("ORDER_TRADE_UPDATE", "CANCELED") in types  # open orders go first
    assert ("ORDER_TRADE_UPDATE", "FILLED") in types
    assert risk(ex) == {} and ex.open_orders("a") == []
    assert D(ex.balances("a")[0]["balance"]) >= 0


def test_cross_liquidation_with_two_positions_uses_account_margin() -> None:
    ex = make(balance="200")
    ex.set_leverage("a", "BTCUSDT", 20, T0)
    ex.set_leverage("a", "ETHUSDT", 20, T0)
    mkt(ex, "BUY", "0.060")
    mkt(ex, "BUY", "1.000", symbol="ETHUSDT")
    # the ETH drop alone eats the account: both positions go
    events = ex.advance_price("ETHUSDT", D("1500"), T0 + 1)
    closed = {
        e.payload["o"]["s"]
        for e in events
        if e.event_type == "ORDER_TRADE_UPDATE" and e.payload["o"]["o"] == "LIQUIDATION"
    }
    assert closed == {"BTCUSDT", "ETHUSDT"}


def test_liquidation_price_zero_when_unreachable() -> None:
    assert liquidation_price(D("0.01"), D(30000), D(100000), MAJOR_BRACKETS) == 0
    assert liquidation_price(D(0), D(30000), D(10), MAJOR_BRACKETS) == 0
    short = liquidation_price(D("-0.01"), D(30000), D(30), MAJOR_BRACKETS)
    assert short == (D(30) + D(300)) / (D("0.00004") + D("0.01"))


# -------------------------------------------------------------------------------- funding
def test_funding_long_pays_positive_rate_short_receives() -> None:
    ex = make(funding=True)
    ex.add_account("b", D(10000))
    ex.set_funding_rate("BTCUSDT", D("0.0001"))
    mkt(ex, "BUY", "0.010")
    ex.place_order(
        "b", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"}, T0
    )
    next_funding = (T0 // H8 + 1) * H8
    assert ex.advance_price("BTCUSDT", D("30000"), next_funding - 1) == []
    events = ex.advance_price("BTCUSDT", D("30000"), next_funding)
    fees = {e.account_id: e.payload["a"] for e in events}
    assert fees["a"]["m"] == "FUNDING_FEE" and fees["a"]["B"][0]["bc"] == "-0.03000000"
    assert fees["b"]["B"][0]["bc"] == "0.03000000"
    assert fees["a"]["P"] == []  # cross: balance only
    assert ex.accounts["a"].ledger.funding == D("-0.03")
    ex.set_funding_rate("BTCUSDT", D("-0.0002"))
    events = ex.advance_price("BTCUSDT", D("30000"), next_funding + H8)
    assert {e.account_id: e.payload["a"]["B"][0]["bc"] for e in events} == {
        "a": "0.06000000",
        "b": "-0.06000000",
    }
    assert ex.premium_index("BTCUSDT", next_funding + H8)["lastFundingRate"] == "-0.00020000"


def test_isolated_funding_comes_out_of_the_isolated_wallet() -> None:
    ex = make(funding=True)
    ex.set_margin_type("a", "BTCUSDT", "ISOLATED", T0)
    ex.set_leverage("a", "BTCUSDT", 10, T0)
    mkt(ex, "BUY", "0.010")
    events = ex.advance_price("BTCUSDT", D("30000"), (T0 // H8 + 1) * H8)
    row = events[0].payload["a"]["P"][0]
    assert (row["mt"], row["iw"]) == ("isolated", "29.97000000")


# ------------------------------------------------------------------- conservation property
def _reference_realized(fills: list[tuple[str, Fraction, Fraction]]) -> Fraction:
    """Average-cost realized PnL computed independently with exact fractions."""
    amount, cost, realized = Fraction(0), Fraction(0), Fraction(0)
    for side, qty, price in fills:
        signed = qty if side == "BUY" else -qty
        if amount and (amount > 0) != (signed > 0):
            closing = min(qty, abs(amount))
            avg = cost / abs(amount)
            realized += (price - avg) * closing * (1 if amount > 0 else -1)
            cost -= avg * closing
            amount += closing if signed > 0 else -closing
            qty -= closing
            signed = qty if side == "BUY" else -qty
        if qty:
            cost += price * qty
            amount += signed
    return realized


op = st.one_of(
    st.tuples(
        st.just("market"), st.sampled_from(["BUY", "SELL"]), st.integers(1, 40), st.booleans()
    ),
    st.tuples(
        st.just("limit"), st.sampled_from(["BUY", "SELL"]), st.integers(1, 40), st.integers(-30, 30)
    ),
    st.tuples(st.just("move"), st.integers(-400, 400), st.integers(-30, 30), st.booleans()),
    st.tuples(st.just("lever"), st.integers(1, 50), st.booleans(), st.booleans()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25), st.sampled_from(["CROSSED", "ISOLATED"]))
def test_balance_conservation_over_random_sequences(ops: list[tuple], margin_type: str) -> None:
    ex = Exchange(
        {"BTCUSDT": default_spec("BTCUSDT", 30000)}, slippage_bps=D(1), funding_enabled=True
    )
    ex.set_funding_rate("BTCUSDT", D("0.0003"))
    ex.add_account("a", D("2000"))
    ts, price = T0, D("30000.0")
    ex.advance_price("BTCUSDT", price, ts)
    if margin_type == "ISOLATED":
        ex.set_margin_type("a", "BTCUSDT", "ISOLATED", ts)
    events: list[EngineEvent] = []
    from services.exchange_sim.engine import EngineReject

    for o in ops:
        ts += 3 * 3600 * 1000  # funding every few steps
        try:
            if o[0] == "market":
                body, ev = ex.place_order(
                    "a",
                    {
                        "symbol": "BTCUSDT",
                        "side": o[1],
                        "type": "MARKET",
                        "quantity": f"{o[2] * D('0.005'):.3f}",
                        "reduceOnly": str(o[3]).lower(),
                    },
                    ts,
                )
            elif o[0] == "limit":
                px = price + o[3] * 10
                body, ev = ex.place_order(
                    "a",
                    {
                        "symbol": "BTCUSDT",
                        "side": o[1],
                        "type": "LIMIT",
                        "timeInForce": "GTC",
                        "quantity": f"{o[2] * D('0.005'):.3f}",
                        "price": f"{px:.1f}",
                    },
                    ts,
                )
            elif o[0] == "move":
                price = max(D("1000"), price + o[1] * 10)
                ev = ex.advance_price("BTCUSDT", price, ts, mark=price + o[2])
            else:
                body, ev = ex.set_leverage("a", "BTCUSDT", o[1], ts)
        except EngineReject:
            continue
        events.extend(ev)
    acct = ex.accounts["a"]
    led = acct.ledger
    # 1. the wallet moved by exactly realized − fees + funding + liquidation adjustments
    assert (
        acct.wallet - acct.initial_deposit
        == led.realized_pnl - led.fees + led.funding + led.adjustments
    )
    # 2. the same totals rebuilt from the events alone
    rp = n = fund = adj = D(0)
    last_wb = None
    for e in events:
        p = e.payload
        if e.event_type == "ORDER_TRADE_UPDATE" and p["o"]["x"] in ("TRADE", "CALCULATED"):
            rp += D(p["o"]["rp"])
            n += D(p["o"]["n"])
        elif e.event_type == "ACCOUNT_UPDATE":
            last_wb = D(p["a"]["B"][0]["wb"])
            if p["a"]["m"] == "FUNDING_FEE":
                fund += D(p["a"]["B"][0]["bc"])
            elif p["a"]["m"] == "INSURANCE_CLEAR":
                adj += D(p["a"]["B"][0]["bc"])
    assert (rp, n, fund, adj) == (led.realized_pnl, led.fees, led.funding, led.adjustments)
    if last_wb is not None:
        assert last_wb == acct.wallet
    # 3. position = Σ signed fills; realized PnL agrees with an independent average-cost model
    fills = ex.audit.fills
    pos = acct.position(ex.specs["BTCUSDT"])
    assert pos.amount == sum((f.qty if f.side == "BUY" else -f.qty for f in fills), D(0))
    ref = _reference_realized([(f.side, Fraction(f.qty), Fraction(f.price)) for f in fills])
    assert abs(Fraction(led.realized_pnl) - ref) <= Fraction(len(fills), 10**8)
    # 4. isolated wallets never go negative while a position is open; cross wallet identity
    assert pos.isolated_wallet >= 0 or not pos.amount
    assert acct.cross_wallet + (pos.isolated_wallet if pos.isolated else 0) == acct.wallet


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 400_000).map(lambda n: D(n) / 1000 * (1 if n % 2 else -1)),
    st.integers(1_000, 90_000).map(D),
    st.integers(0, 5_000_000).map(lambda n: D(n) / 100),
)
def test_liquidation_price_is_where_margin_meets_maintenance(
    amount: D, entry: D, wallet: D
) -> None:
    """At the helper's price, wallet + uPnL equals the bracket maintenance margin (any bracket)."""
    from services.exchange_sim.engine import maint_margin

    lp = liquidation_price(amount, entry, wallet, MAJOR_BRACKETS)
    if lp == 0:  # no positive solution: a long so well funded it cannot be liquidated
        assert amount > 0 and wallet + amount * (D("0.00000001") - entry) > maint_margin(
            MAJOR_BRACKETS, amount * D("0.00000001")
        )
        return
    margin = wallet + amount * (lp - entry)
    assert abs(margin - maint_margin(MAJOR_BRACKETS, amount * lp)) <= abs(amount * lp) * D(
        "1e-20"
    ) + D("1e-18")


def test_idle_ticks_and_input_coercion() -> None:
    ex = make(funding=True)
    assert ex.advance_price("BTCUSDT", D("30001"), T0 + 1) == []
    assert ex.advance_price("BTCUSDT", 30002.5, T0 + 2) == []  # type: ignore[arg-type]
    assert ex.mark_price("BTCUSDT") == D("30002.5") and ex.last_price("BTCUSDT") == D("30002.5")
    ex.set_funding_rate("BTCUSDT", D("0.0005"))
    ex.advance_price("BTCUSDT", D("30000"), T0 + 30 * H8)  # many funding times, nobody holding
    assert ex.premium_index("BTCUSDT", T0)["nextFundingTime"] == (T0 // H8 + 31) * H8
    from services.exchange_sim.engine import EngineReject

    try:
        ex.advance_price("NOPEUSDT", D(1), T0)
    except EngineReject as e:
        assert e.code == -1121
    else:  # pragma: no cover
        raise AssertionError("unknown symbol must be rejected")


def test_rejected_requests_are_audited() -> None:
    ex = make()
    from services.exchange_sim.engine import EngineReject

    for _ in range(2):
        try:
            ex.place_order(
                "a",
                {
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                    "type": "MARKET",
                    "quantity": "99",
                    "newClientOrderId": "big",
                },
                T0,
            )
        except EngineReject:
            pass
    assert [(r.client_id, r.code) for r in ex.audit.rejects] == [("big", -2019), ("big", -2019)]
    assert ex.audit.orders == [] and ex.audit.duplicate_client_ids() == []
