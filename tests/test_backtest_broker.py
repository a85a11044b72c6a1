"""The backtest broker is a thin adapter over the simulator's engine: the same requests give
the same fills, fees, funding and liquidation as driving `Exchange` directly, and the
position controller's ledger turns its events into trades whose money adds up to the
engine's own totals."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from backtest.broker import ACCOUNT, SimBroker
from services.exchange_sim.engine import Exchange
from services.exchange_sim.specs import default_spec
from services.position_controller.executor import algo_params
from services.position_controller.ledger import Ledger
from services.trader.order_ids import client_order_id
from shared.models import AccountUpdate, AlgoUpdate, OrderIntent, OrderUpdate

SYM = "TESTUSDT"
D0 = 1_689_811_200_000  # 2023-07-20T00:00Z, a funding time
H8 = 8 * 3_600_000
FEES = {"taker_fee": D("0.0005"), "maker_fee": D("0.0002"), "slippage_bps": D(1)}


def cid(side: str, t: int, purpose: str) -> str:
    return client_order_id(SYM, side, t, purpose, "test")


class Twin:
    """The engine driven directly with the parameters a live service would send."""

    def __init__(self) -> None:
        self.ex = Exchange({SYM: default_spec(SYM, 100.0)}, funding_rate_fn=lambda s, t: D("0.0001"),
                           record=False, **FEES)  # fmt: skip
        self.ex.add_account("twin", D(1000))

    def tick(self, price: str, t: int) -> None:
        self.ex.advance_price(SYM, D(price), t)

    def send(self, intent: OrderIntent, t: int) -> None:
        if intent.leverage:
            self.ex.set_leverage("twin", SYM, intent.leverage, t)
        if intent.order_type.endswith("_MARKET") and intent.order_type != "MARKET":
            p = {k: ("true" if v is True else str(v)) for k, v in algo_params(intent).items()}
            self.ex.place_algo_order("twin", {"algoType": "CONDITIONAL", **p}, t)
        else:
            self.ex.place_order("twin", intent.to_params(), t)


def test_broker_money_is_the_engines_money() -> None:
    b = SimBroker({SYM: default_spec(SYM, 100.0)}, D(1000), funding_rate=D("0.0001"), **FEES)
    twin, ledger = Twin(), Ledger()
    seen: list[object] = []

    def feed(events: list) -> None:
        for ev in b.domain(events):
            seen.append(ev)
            if isinstance(ev, OrderUpdate):
                ledger.on_fill(ev, b.leverage.get(SYM))
            elif isinstance(ev, AccountUpdate):
                ledger.on_account_update(ev)
            elif isinstance(ev, AlgoUpdate):
                ledger.on_algo_update(ev)

    def both_tick(price: str, t: int) -> None:
        feed(b.advance(SYM, float(price), t))
        twin.tick(price, t)

    def both_send(intent: OrderIntent, t: int) -> bool:
        ok, events = b.submit(intent, t)
        feed(events)
        twin.send(intent, t)
        return ok

    t0 = D0 + 60_000
    both_tick("100.00", t0)
    entry = OrderIntent(
        SYM, "BUY", "MARKET", D("50.0"), cid("LONG", t0, "entry"), "entry", leverage=20
    )
    assert both_send(entry, t0)
    stop = OrderIntent(SYM, "SELL", "STOP_MARKET", None, cid("LONG", t0, "stop"), "stop",
                       stop_price=D("96.00"), close_position=True)  # fmt: skip
    take = OrderIntent(SYM, "SELL", "TAKE_PROFIT_MARKET", None, cid("LONG", t0, "take_profit"),
                       "take_profit", stop_price=D("104.00"), close_position=True)  # fmt: skip
    assert both_send(stop, t0) and both_send(take, t0)
    assert b.amount[SYM] == 50.0 and b.entry[SYM] == 100.01  # ask = 100 x (1 + 1 bp), tick up
    algos = b.exchange.open_algo_orders(ACCOUNT)
    assert {a["clientAlgoId"] for a in algos} == {stop.client_order_id, take.client_order_id}
    assert all(a["workingType"] == "MARK_PRICE" and a["closePosition"] for a in algos)
    assert b.protected(SYM) and SYM not in b.unprotected
    both_tick("101.00", D0 + H8)  # funding: the long pays 50 x 101 x 0.01 %
    both_tick("104.50", D0 + H8 + 60_000)  # take-profit triggers; bid 104.48955 -> 104.48
    assert SYM not in b.amount and b.orphaned() == [SYM]  # the stop leg is left behind
    feed(b.cancel_algos(SYM, D0 + H8 + 60_000))
    twin.ex.cancel_all_algo("twin", SYM, D0 + H8 + 60_000)
    assert b.orphaned() == [] and b.exchange.open_algo_orders(ACCOUNT) == []
    t3 = D0 + H8 + 120_000
    short = OrderIntent(
        SYM, "SELL", "MARKET", D("50.0"), cid("SHORT", t3, "entry"), "entry", leverage=20
    )
    assert both_send(short, t3)
    both_tick("130.00", t3 + 60_000)  # far past the short's liquidation price
    assert SYM not in b.amount

    lg, tw = b.ledger(), twin.ex.accounts["twin"].ledger
    assert lg == {"realized_pnl": tw.realized_pnl, "fees": tw.fees, "funding": tw.funding,
                  "adjustments": tw.adjustments}  # fmt: skip
    assert b.exchange.accounts[ACCOUNT].wallet == twin.ex.accounts["twin"].wallet
    assert b.wallet == pytest.approx(float(b.exchange.accounts[ACCOUNT].wallet))
    assert lg["funding"] == D("-0.505")
    # the jump went past the bankruptcy price: the insurance fund covered the deficit
    assert lg["adjustments"] > 0 and b.exchange.accounts[ACCOUNT].wallet == 0
    trades = [t for t in ledger_trades(ledger, seen)]
    assert [t.exit_reason for t in trades] == ["take_profit", "liquidation"]
    tp = trades[0]
    assert (tp.entry_price, tp.exit_price) == (D("100.01"), D("104.48"))
    assert tp.gross_pnl == D("223.5") and tp.funding == D("-0.505")
    assert tp.fees == D("50.0") * (D("100.01") + D("104.48")) * D("0.0005")
    assert sum(t.fees for t in trades) == lg["fees"]
    assert sum(t.gross_pnl for t in trades) == lg["realized_pnl"]
    assert sum(t.funding for t in trades) == lg["funding"]


def ledger_trades(ledger: Ledger, events: list[object]) -> list:
    """Closed trades, replaying the events into a fresh ledger (the live path)."""
    fresh, out = Ledger(), []
    for ev in events:
        if isinstance(ev, OrderUpdate):
            out += fresh.on_fill(ev, 20)
        elif isinstance(ev, AccountUpdate):
            fresh.on_account_update(ev)
        elif isinstance(ev, AlgoUpdate):
            fresh.on_algo_update(ev)
    assert ledger.counters.trades == len(out)
    return out


def test_refusals_are_recorded_with_binance_codes() -> None:
    b = SimBroker({SYM: default_spec(SYM, 100.0)}, D(1000), **FEES)
    b.advance(SYM, 100.0, D0)
    assert b.submit(OrderIntent(SYM, "BUY", "MARKET", D("0.1"), "long-1", "entry"), D0)[0]
    small = OrderIntent(SYM, "BUY", "MARKET", D("0.1"), "small-1", "exit", reduce_only=True)
    ok, _ = b.submit(small, D0)  # reduce-only BUY against a long: -2022
    huge = OrderIntent(SYM, "BUY", "MARKET", D("900.0"), "huge-1", "entry", leverage=20)
    ok2, _ = b.submit(huge, D0)  # 90,000 notional on 1,000: margin is insufficient
    trigger = OrderIntent(SYM, "SELL", "STOP_MARKET", None, "stop-1", "stop",
                          stop_price=D("101.00"), close_position=True)  # fmt: skip
    ok3, _ = b.submit(trigger, D0)  # a sell stop above the price would trigger at once
    assert (ok, ok2, ok3) == (False, False, False)
    assert [r.code for r in b.rejects] == [-2022, -2019, -2021]
    assert b.rejects[2].client_order_id == "stop-1" and b.rejects[2].purpose == "stop"
