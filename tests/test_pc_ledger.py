"""Closed-trade ledger: hand-computed round trips, exit reasons, funding, replays, and
Hypothesis for the money identities over random partial fills."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.position_controller.inputs import user_trade_fill
from services.position_controller.ledger import Ledger
from services.position_controller.lots import exit_reason
from services.position_controller.rules import close_order_id
from shared.errors import MessageError
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    Balance,
    ClosedTrade,
    DecisionRecord,
    OrderUpdate,
    PositionUpdate,
)

T0 = 1_730_000_000_000
ENTRY_ID = "slt-e-00112233445566778899aabbcc"


def fill(side: str, qty: str, price: str, *, t: int, at: int, fee: str = "0", rp: str = "0",
         cid: str = ENTRY_ID, otype: str = "MARKET", orig: str | None = None,
         reduce: bool = False, order_id: int = 1, symbol: str = "BTCUSDT",
         fee_asset: str = "USDT") -> OrderUpdate:  # fmt: skip
    return OrderUpdate(
        symbol, cid, side, otype, orig or otype, "GTC", D(qty), D(0), D(price), D(0), "TRADE",
        "FILLED", order_id, D(qty), D(qty), D(price), fee_asset, D(fee), D(rp), t, at, False,
        reduce, False, "BOTH", "CONTRACT_PRICE", at, at,
    )  # fmt: skip


def funding(amount: str, at: int, symbols: tuple[str, ...] = ()) -> AccountUpdate:
    bal = Balance("USDT", D(1000), D(1000), D(amount), at)
    ps = tuple(PositionUpdate(s, D(1), D(100), D(100), D(0), D(0), "isolated", D(10), "BOTH")
               for s in symbols)  # fmt: skip
    return AccountUpdate("FUNDING_FEE", (bal,), ps, at, at)


RECORD = DecisionRecord(ENTRY_ID, "BTCUSDT", "LONG", T0, {"rsi_14": 55.0}, "m7", 0.7, 0.55, 12,
                        D(98), D(106), D(100))  # fmt: skip


def round_trip() -> list[OrderUpdate | AccountUpdate]:
    """Long 2 (1 @ 100 + 1 @ 102), partial close 1 @ 105, funding -0.3, stop fills 1 @ 99."""
    return [
        fill("BUY", "1", "100", t=11, at=T0, fee="0.05"),
        fill("BUY", "1", "102", t=12, at=T0 + 1_000, fee="0.051"),
        fill("SELL", "1", "105", t=13, at=T0 + 60_000, fee="0.0525", rp="4",
             cid=close_order_id("BTCUSDT", T0, "time_stop"), reduce=True, order_id=2),
        funding("-0.3", T0 + 120_000),
        fill("SELL", "1", "99", t=14, at=T0 + 180_000, fee="0.0495", rp="-2",
             cid="Q5xaq5EGKgXXa0fD7fs0Ip", orig="STOP_MARKET", reduce=True, order_id=3),
    ]  # fmt: skip


def feed(ledger: Ledger, events: list[OrderUpdate | AccountUpdate]) -> list[ClosedTrade]:
    out: list[ClosedTrade] = []
    for ev in events:
        if isinstance(ev, OrderUpdate):
            out += ledger.on_fill(ev)
        else:
            ledger.on_account_update(ev)
    return out


def test_open_partial_close_then_stop_gives_one_hand_computed_trade() -> None:
    ledger = Ledger({ENTRY_ID: RECORD}.get)
    trades = feed(ledger, round_trip())
    assert len(trades) == 1
    tr = trades[0]
    assert tr.trade_id == f"BTCUSDT-{T0}" and tr.side == "LONG"
    assert tr.quantity == D(2)
    assert tr.entry_price == D(101)  # (100 + 102) / 2
    assert tr.exit_price == D(102)  # (105 + 99) / 2
    assert (tr.entry_time, tr.exit_time) == (T0, T0 + 180_000)
    assert tr.fees == D("0.203")  # 0.05 + 0.051 + 0.0525 + 0.0495
    assert tr.funding == D("-0.3")
    assert tr.gross_pnl == D(2)  # 4 - 2
    assert tr.net_pnl == D("1.497")  # 2 - 0.203 - 0.3
    assert tr.exit_reason == "stop_loss"
    assert tr.decision == RECORD and tr.leverage == 12
    assert ledger.lot("BTCUSDT") is None


def test_replayed_fills_do_not_duplicate() -> None:
    ledger = Ledger()
    events = round_trip()
    assert len(feed(ledger, events)) == 1
    assert feed(ledger, events) == []  # the whole stream again
    assert ledger.lot("BTCUSDT") is None and ledger.counters.duplicate_fills == 4
    # a replay interleaved with the originals
    ledger2 = Ledger()
    doubled = [e for e in events for _ in (0, 1)]
    trades = feed(ledger2, doubled)
    assert len(trades) == 1 and trades[0].net_pnl == D("1.497")


def test_liquidation_fill_gives_reason_liquidation() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("SELL", "0.5", "100", t=1, at=T0))
    liq = fill("BUY", "0.5", "119", t=2, at=T0 + 5, rp="-9.5", fee="0.03", otype="LIQUIDATION",
               cid="autoclose-1730000000123456", order_id=9)  # fmt: skip
    (tr,) = ledger.on_fill(liq)
    assert tr.exit_reason == "liquidation" and tr.side == "SHORT"
    assert tr.gross_pnl == D("-9.5") and tr.net_pnl == D("-9.53")
    adl = fill("SELL", "1", "1", t=3, at=T0, cid="adl_autoclose", otype="MARKET")
    assert exit_reason(adl) == "liquidation"


def test_exit_reasons_from_ids_and_types() -> None:
    def reason(**kw: object) -> str:
        return exit_reason(fill("SELL", "1", "1", t=1, at=T0, **kw))  # type: ignore[arg-type]

    assert reason(cid=close_order_id("BTCUSDT", T0, "emergency")) == "emergency"
    assert reason(cid=close_order_id("BTCUSDT", T0, "counter_trend")) == "counter_trend"
    assert reason(cid=close_order_id("BTCUSDT", T0, "protect_stop")) == "stop_loss"
    assert reason(cid="anything", orig="TAKE_PROFIT_MARKET") == "take_profit"
    assert reason(cid="slt-t-0011223344556677889900aabb") == "take_profit"
    assert reason(cid="slt-s-0011223344556677889900aabb") == "stop_loss"
    assert reason(cid="web_abc123") == "manual"
    # a triggered algo order whose matching-engine order reports MARKET
    ledger = Ledger()
    ledger.on_algo_update(AlgoUpdate(
        "BTCUSDT", "caid1", 5, "CONDITIONAL", "STOP_MARKET", "SELL", "BOTH", D(1), "TRIGGERED",
        D(99), D(0), "77", D(0), D(0), True, False, "MARK_PRICE", T0, "", T0, T0))  # fmt: skip
    ledger.on_fill(fill("BUY", "1", "100", t=1, at=T0))
    (tr,) = ledger.on_fill(fill("SELL", "1", "99", t=2, at=T0 + 1, cid="caid1", order_id=77))
    assert tr.exit_reason == "stop_loss"


def test_flip_closes_with_reason_flip_and_opens_the_rest() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("BUY", "1", "100", t=1, at=T0, fee="0.1"))
    (tr,) = ledger.on_fill(fill("SELL", "3", "110", t=2, at=T0 + 9, fee="0.3", rp="10",
                                cid="slt-e-ffeeddccbbaa99887766554433", order_id=2))  # fmt: skip
    assert tr.exit_reason == "flip" and tr.fees == D("0.2") and tr.net_pnl == D("9.8")
    lot = ledger.lot("BTCUSDT")
    assert lot is not None and lot.side == "SHORT" and lot.qty == D(2)
    assert lot.open_time == T0 + 9 and lot.fees == D("0.2") and lot.entry_price == D(110)


def test_funding_attribution_isolated_and_cross_split() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("BUY", "1", "100", t=1, at=T0))  # notional 100
    ledger.on_fill(fill("SELL", "3", "100", t=1, at=T0, symbol="ETHUSDT"))  # notional 300
    ledger.on_account_update(funding("-0.5", T0 + 1, ("ETHUSDT",)))
    eth, btc = ledger.lot("ETHUSDT"), ledger.lot("BTCUSDT")
    assert eth is not None and btc is not None
    assert (eth.funding, btc.funding) == (D("-0.5"), D(0))
    ledger.on_account_update(funding("-1", T0 + 2))  # cross: split by notional 1:3
    assert (btc.funding, eth.funding) == (D("-0.25"), D("-1.25"))
    ledger.on_account_update(funding("-1", T0 + 2))  # replayed event
    assert btc.funding + eth.funding == D("-1.5")
    assert ledger.on_funding("BTCUSDT", D("0.1"), T0 + 3, ref="tran-1")
    assert not ledger.on_funding("BTCUSDT", D("0.1"), T0 + 3, ref="tran-1")
    assert btc.funding == D("-0.15")


def test_orphan_close_fill_and_foreign_fee_are_counted_not_traded() -> None:
    ledger = Ledger()
    assert ledger.on_fill(fill("SELL", "1", "100", t=1, at=T0, reduce=True)) == []
    assert ledger.lot("BTCUSDT") is None and ledger.counters.orphan_close_fills == 1
    ledger.on_fill(fill("BUY", "1", "100", t=2, at=T0, fee="0.001", fee_asset="BNB"))
    lot = ledger.lot("BTCUSDT")
    assert lot is not None and lot.fees == 0 and ledger.counters.foreign_fee_fills == 1


def test_adopted_then_external_close_and_state_round_trip() -> None:
    ledger = Ledger()
    ledger.adopt("BTCUSDT", D("-2"), D(100), T0, leverage=5)
    restored = Ledger()
    restored.restore(orjson.loads(orjson.dumps(ledger.to_state(), default=str)))
    tr = restored.close_external("BTCUSDT", T0 + 10, D(97))
    assert tr is not None and tr.exit_reason == "external" and tr.gross_pnl == D(6)
    assert tr.leverage == 5 and tr.quantity == D(2) and tr.exit_price == D(97)
    assert restored.close_external("BTCUSDT", T0 + 11) is None


def test_resync_adds_and_reduces_estimated() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("BUY", "2", "100", t=1, at=T0))
    assert ledger.resync("BTCUSDT", D(1), D(100), T0 + 1, D(104)) == []
    lot = ledger.lot("BTCUSDT")
    assert lot is not None and lot.qty == D(1) and lot.realized == D(4) and lot.estimated
    (tr,) = ledger.resync("BTCUSDT", D(-1), D(103), T0 + 2, D(103))  # flipped behind our back
    assert tr.exit_reason == "external" and tr.gross_pnl == D(7)
    short = ledger.lot("BTCUSDT")
    assert short is not None and short.side == "SHORT" and short.qty == D(1)


_qty = st.integers(min_value=1, max_value=500).map(lambda n: D(n) / 1000)
_px = st.integers(min_value=5_000, max_value=15_000).map(lambda n: D(n) / 100)
_fee = st.integers(min_value=0, max_value=100).map(lambda n: D(n) / 10_000)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_qty, _px, _fee), min_size=1, max_size=6),
    st.lists(st.tuples(_px, _fee, st.integers(-500, 500)), min_size=1, max_size=6),
    st.lists(st.integers(-100, 100).map(lambda n: D(n) / 100), max_size=3),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_money_identities_over_random_partial_fills(
    entries: list[tuple[D, D, D]],
    exits: list[tuple[D, D, int]],
    fundings: list[D],
    long: bool,
    rnd: object,
) -> None:
    open_side, close_side = ("BUY", "SELL") if long else ("SELL", "BUY")
    total = sum((q for q, _, _ in entries), D(0))
    # split the total into len(exits) positive parts on the 0.001 grid
    units = int(total * 1000)
    n = min(len(exits), units)
    cuts = sorted(rnd.sample(range(1, units), n - 1)) if n > 1 else []  # type: ignore[attr-defined]
    parts = [D(b - a) / 1000 for a, b in zip([0, *cuts], [*cuts, units], strict=True)]
    events: list[OrderUpdate | AccountUpdate] = []
    tid = 0
    for q, p, f in entries:
        tid += 1
        events.append(fill(open_side, str(q), str(p), t=tid, at=T0 + tid, fee=str(f), order_id=tid))
    for i, amount in enumerate(fundings):
        events.append(funding(str(amount), T0 + 100 + i))
    for q, (p, f, rp) in zip(parts, exits, strict=False):
        tid += 1
        events.append(fill(close_side, str(q), str(p), t=tid, at=T0 + 1000 + tid, fee=str(f),
                           rp=str(D(rp) / 10), reduce=True, order_id=tid,
                           cid=close_order_id("BTCUSDT", T0 + 1, "invalidation")))  # fmt: skip
    ledger = Ledger()
    trades = feed(ledger, events + rnd.sample(events, len(events)))  # type: ignore[attr-defined]
    assert len(trades) == 1
    tr = trades[0]
    fills = [e for e in events if isinstance(e, OrderUpdate)]
    rps = sum((e.realized_pnl for e in fills), D(0))
    fees = sum((e.commission for e in fills), D(0))
    fund = sum(fundings, D(0))
    assert tr.gross_pnl == rps and tr.fees == fees and tr.funding == fund
    assert tr.net_pnl == rps - fees + fund
    assert tr.quantity == total
    assert tr.entry_price == sum((q * p for q, p, _ in entries), D(0)) / total
    used = list(zip(parts, exits, strict=False))
    assert tr.exit_price == sum((q * p for q, (p, _, _) in used), D(0)) / total
    assert tr.exit_reason == "invalidation" and tr.side == ("LONG" if long else "SHORT")
    assert ledger.lot("BTCUSDT") is None


# ---- fixes from the chaos run: reduce-only cap, REST snapshots, gap replay ----------------
def test_reduce_only_fill_larger_than_the_lot_closes_it_and_never_opens_the_rest() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("BUY", "1", "100", t=1, at=T0, fee="0.1"))
    # the stop filled the exchange's (larger) position; our lot only knew 1 of it
    stop = fill("SELL", "3", "95", t=2, at=T0 + 9, fee="0.3", rp="-15", orig="STOP_MARKET",
                cid="Q5xaq5EGKgXXa0fD7fs0Ip", reduce=True, order_id=2)  # fmt: skip
    (tr,) = ledger.on_fill(stop)
    assert tr.exit_reason == "stop_loss" and tr.quantity == D(1) and tr.exit_price == D(95)
    assert tr.fees == D("0.4") and tr.gross_pnl == D(-15) and tr.net_pnl == D("-15.4")
    assert ledger.lot("BTCUSDT") is None and ledger.lots == {}
    assert ledger.counters.reduce_only_excess == 1
    # closePosition (a triggered algo take-profit) is capped the same way
    ledger.on_fill(fill("SELL", "2", "100", t=3, at=T0 + 20))
    tp = replace(fill("BUY", "5", "90", t=4, at=T0 + 30, rp="20", orig="TAKE_PROFIT_MARKET",
                      order_id=4), close_position=True)  # fmt: skip
    (tr2,) = ledger.on_fill(tp)
    assert tr2.exit_reason == "take_profit" and tr2.side == "SHORT" and tr2.quantity == D(2)
    assert ledger.lot("BTCUSDT") is None and ledger.counters.reduce_only_excess == 2


def test_fills_contained_in_an_adopted_snapshot_are_not_added_again() -> None:
    ledger = Ledger()
    snap_t = T0 + 5_000  # positionRisk updateTime: the entry fill at T0 is inside it
    ledger.adopt("BTCUSDT", D("13734.4"), D(100), snap_t, as_of=snap_t)
    entry = fill("BUY", "13734.4", "100", t=7, at=T0, fee="0.5", cid=ENTRY_ID)
    assert ledger.on_fill(entry) == []  # arrives late (account_feed stalled)
    lot = ledger.lot("BTCUSDT")
    assert lot is not None and lot.qty == D("13734.4") and lot.fees == D("0.5")
    assert lot.entry_client_id == ENTRY_ID and ledger.counters.presynced_fills == 1
    close = fill("SELL", "13734.4", "101", t=8, at=snap_t + 1, fee="0.5", rp="13734.4",
                 cid="Q5xaq5EGKgXXa0fD7fs0Ip", orig="STOP_MARKET", reduce=True, order_id=2)  # fmt: skip
    (tr,) = ledger.on_fill(close)
    assert tr.quantity == D("13734.4") and tr.exit_reason == "stop_loss"
    assert tr.fees == D(1) and tr.net_pnl == D("13733.4")


def test_late_fills_of_a_resynced_reduction_replace_the_estimate_and_never_double() -> None:
    ledger = Ledger()
    ledger.on_fill(fill("BUY", "2", "100", t=1, at=T0))
    # REST shows 1 left at T0+10 (estimated at mark 104); the real close was 1 @ 105
    assert ledger.resync("BTCUSDT", D(1), D(100), T0 + 10, D(104)) == []
    late = fill("SELL", "1", "105", t=2, at=T0 + 10, fee="0.1", rp="5", reduce=True, order_id=2)
    assert ledger.on_fill(late) == []
    lot = ledger.lot("BTCUSDT")
    assert lot is not None and lot.qty == D(1) and lot.realized == D(5)
    assert lot.exit_notional == D(105) and lot.fees == D("0.1") and lot.est_qty == 0
    # a snapshot showed it flat: a late non-reduce-only close must not open a phantom lot
    (ext,) = ledger.resync("BTCUSDT", D(0), D(0), T0 + 20, D(106))
    assert ext.exit_reason == "external" and ext.quantity == D(2)
    assert ledger.on_fill(fill("SELL", "1", "106", t=3, at=T0 + 19, order_id=3)) == []
    assert ledger.lot("BTCUSDT") is None and ledger.counters.presynced_fills == 2
    ledger.on_fill(fill("BUY", "1", "107", t=4, at=T0 + 21, order_id=4))  # after T: applies
    new_lot = ledger.lot("BTCUSDT")
    assert new_lot is not None and new_lot.qty == D(1)
    ledger.on_fill(fill("SELL", "1", "106", t=5, at=T0 + 18, fee="0.2", order_id=5))
    assert new_lot.fees == 0 and new_lot.qty == D(1)  # an older trade's fee stays out


def test_a_round_trip_inside_a_flat_snapshot_delivered_late_is_recorded() -> None:
    """Found in the soak: a flat REST snapshot at T (no lot held) came before the late
    delivery (restart / redelivery) of a whole round trip <= T; presyncing both fills lost
    the trade.  Only fills in a lot we hold or a recorded trade are presynced."""
    ledger = Ledger({ENTRY_ID: RECORD}.get)
    prior = [fill("BUY", "1", "100", t=1, at=T0), fill("SELL", "1", "101", t=2, at=T0 + 10,
                                                       reduce=True, order_id=2)]  # fmt: skip
    assert len(feed(ledger, prior)) == 1
    snap_t = T0 + 5_000
    assert ledger.close_external("BTCUSDT", snap_t, as_of=snap_t) is None  # flat, no lot
    entry = fill("BUY", "2", "100", t=3, at=T0 + 1_000, fee="0.1", order_id=3)
    stop = fill("SELL", "2", "99", t=4, at=T0 + 1_800, fee="0.1", rp="-2", orig="STOP_MARKET",
                cid="slt-s-00112233445566778899aabbcc", reduce=True, order_id=4)  # fmt: skip
    restored = Ledger({ENTRY_ID: RECORD}.get)  # and across a restart
    restored.restore(orjson.loads(orjson.dumps(ledger.to_state(), default=str)))
    for led in (ledger, restored):
        assert led.on_fill(entry) == []
        (tr,) = led.on_fill(stop)
        assert (tr.trade_id, tr.quantity, tr.exit_reason) == (f"BTCUSDT-{T0 + 1_000}", D(2),
                                                               "stop_loss")  # fmt: skip
        assert tr.net_pnl == D("-2.2") and tr.decision == RECORD and led.lots == {}
        # a late unseen fill of a trip recorded before the snapshot is still presynced
        assert led.on_fill(replace(prior[0], trade_id=9)) == [] and led.lots == {}
        assert led.counters.presynced_fills == 1


def test_orphan_close_is_rebuilt_from_replayed_fills_once() -> None:
    ledger = Ledger({ENTRY_ID: RECORD}.get)
    opened = fill("BUY", "2", "100", t=21, at=T0, fee="0.1")  # lost: account_feed down
    closed = fill("SELL", "2", "103", t=22, at=T0 + 60_000, fee="0.1", rp="6",
                  cid=close_order_id("BTCUSDT", T0, "time_stop"), reduce=True, order_id=2)  # fmt: skip
    assert ledger.on_fill(closed) == []
    assert ledger.replay_needed == {"BTCUSDT": T0 + 60_000}
    (tr,) = ledger.replay("BTCUSDT", [closed, opened])  # userTrades, any order
    assert (tr.quantity, tr.exit_reason, tr.net_pnl) == (D(2), "time_stop", D("5.8"))
    assert tr.decision == RECORD and ledger.replay_needed == {} and ledger.lots == {}
    assert ledger.replay("BTCUSDT", [opened, closed]) == []  # fetched again: nothing new
    # a later trade recorded first does not hide an earlier lost one (found in the run)
    ledger2 = Ledger()
    assert ledger2.on_fill(closed) == []  # orphan; then a whole new trip arrives live
    ledger2.on_fill(fill("BUY", "1", "104", t=23, at=T0 + 70_000, order_id=3))
    (later,) = ledger2.on_fill(fill("SELL", "1", "104", t=24, at=T0 + 80_000, reduce=True,
                                    order_id=4))  # fmt: skip
    (lost,) = ledger2.replay("BTCUSDT", [opened, closed, *_again(later)])
    assert lost.trade_id == f"BTCUSDT-{T0}" and lost.quantity == D(2)
    # after a restart, a too-wide REST window does not reopen a recorded trade's fills
    restored = Ledger()
    restored.restore(orjson.loads(orjson.dumps(ledger2.to_state(), default=str)))
    assert restored.replay("BTCUSDT", [opened, closed]) == [] and restored.lots == {}
    assert restored.counters.replay_skipped == 2


def test_snapshot_times_survive_a_restart() -> None:
    ledger = Ledger()
    ledger.adopt("BTCUSDT", D(1), D(100), T0, as_of=T0 + 3)
    restored = Ledger()
    restored.restore(orjson.loads(orjson.dumps(ledger.to_state(), default=str)))
    assert restored.synced_at("BTCUSDT") == T0 + 3
    restored.on_fill(fill("BUY", "1", "100", t=1, at=T0 + 2))
    lot = restored.lot("BTCUSDT")
    assert lot is not None and lot.qty == D(1)


def test_user_trade_rows_become_fills_with_their_orders_flags() -> None:
    row = {"buyer": False, "commission": "0.0412", "commissionAsset": "USDT", "id": 698759,
           "maker": False, "orderId": 25851813, "price": "103.0", "qty": "2", "quoteQty": "206",
           "realizedPnl": "6", "side": "SELL", "positionSide": "BOTH", "symbol": "BTCUSDT",
           "time": T0 + 60_000}  # fmt: skip
    order = {"orderId": 25851813, "clientOrderId": "caid1", "type": "MARKET",
             "origType": "STOP_MARKET", "reduceOnly": True, "closePosition": True}  # fmt: skip
    f = user_trade_fill(row, order)
    assert (f.trade_id, f.trade_time, f.last_filled_qty, f.commission) == (
        698759, T0 + 60_000, D(2), D("0.0412"))  # fmt: skip
    assert f.reduce_only and f.close_position and exit_reason(f) == "stop_loss" and f.is_fill
    bare = user_trade_fill(row, {"orderId": 1, "reduceOnly": True})  # another order's answer
    assert not bare.reduce_only and bare.client_order_id == ""
    with pytest.raises(MessageError):
        user_trade_fill({**row, "qty": "x"})


def _again(trade: ClosedTrade) -> list[OrderUpdate]:
    """The fills of a trade recorded live, as a REST replay would fetch them again."""
    return [fill("BUY", "1", "104", t=23, at=trade.entry_time, order_id=3),
            fill("SELL", "1", "104", t=24, at=trade.exit_time, reduce=True, order_id=4)]  # fmt: skip
