"""PositionControllerCore driven by timestamped events: one close per position and reason
(same id on repeats), stale events ignored, sweep adopts / repairs / closes externally,
protection re-placed, klines turn into a counter-trend close."""

from __future__ import annotations

import math
from decimal import Decimal as D

from services.position_controller.core import CoreConfig, PositionControllerCore, TradeClosed
from services.position_controller.reconcile import CacheRepair, DiffKind
from services.position_controller.rules import (
    ExitDecision,
    ExitRule,
    ProtectionDecision,
    TrendView,
    close_order_id,
)
from services.position_controller.sources import GapWatch
from shared.config import load_settings
from shared.models import (
    AccountUpdate,
    ConfigUpdate,
    DecisionRecord,
    Kline,
    OrderUpdate,
    Position,
    PositionUpdate,
)

T0 = 1_730_000_000_000
MIN = 60_000
SYM = "BTCUSDT"
ENTRY_ID = "slt-e-00112233445566778899aabbcc"


def acct(amount: str, entry: str = "100", *, at: int, up: str = "0", symbol: str = SYM,
         side: str = "BOTH") -> AccountUpdate:  # fmt: skip
    pu = PositionUpdate(symbol, D(amount), D(entry), D(entry), D(0), D(up), "cross", D(0), side)
    return AccountUpdate("ORDER", (), (pu,), at, at)


def order(side: str, qty: str, price: str, *, at: int, t: int, cid: str = ENTRY_ID,
          status: str = "FILLED", execution: str = "TRADE", rp: str = "0", fee: str = "0",
          reduce: bool = False) -> OrderUpdate:  # fmt: skip
    filled = D(qty) if execution == "TRADE" else D(0)
    return OrderUpdate(
        SYM, cid, side, "MARKET", "MARKET", "GTC", D(qty), D(0), D(price), D(0), execution,
        status, t, filled, filled, D(price), "USDT", D(fee), D(rp), t, at, False, reduce,
        False, "BOTH", "CONTRACT_PRICE", at, at,
    )  # fmt: skip


def exch(size: str, entry: str, updated: int, symbol: str = SYM, lev: int | None = 5) -> Position:
    return Position(symbol, D(size), D(entry), D(entry), D(0), "cross", D(0), lev, updated)


def core_with_long(at: int = T0) -> PositionControllerCore:
    core = PositionControllerCore(CoreConfig())
    core.on_config_update(ConfigUpdate(SYM, 10, None, at, at))
    assert core.on_account_update(acct("1", at=at), at) == []
    return core


def closes(actions: list[object]) -> list[ExitDecision]:
    return [a for a in actions if isinstance(a, ExitDecision)]


def test_price_move_triggers_one_emergency_close_with_deterministic_id() -> None:
    core = core_with_long()
    assert core.on_price(SYM, D("90.2"), T0 + 1) == []
    (d,) = core.on_price(SYM, D("90.1"), T0 + 2)
    assert isinstance(d, ExitDecision) and d.rule is ExitRule.EMERGENCY
    assert d.client_order_id == close_order_id(SYM, T0, "emergency")
    assert d.intent.reduce_only and d.intent.order_type == "MARKET" and d.intent.side == "SELL"
    assert core.on_price(SYM, D("90.0"), T0 + 3) == []  # a close is already in flight
    assert core.counters.duplicate_closes_suppressed == 1
    assert core.close_in_flight(SYM) == d


def test_same_event_twice_emits_one_close_and_another_core_the_same_id() -> None:
    event = acct("1", at=T0 + 5, up="-9.95")  # -99.5% of the 10 USDT margin
    core = core_with_long()
    first = closes(core.on_account_update(event, T0 + 5))
    assert len(first) == 1 and core.on_account_update(event, T0 + 6) == []
    replica = core_with_long()
    again = closes(replica.on_account_update(event, T0 + 5))
    assert [d.client_order_id for d in again] == [first[0].client_order_id]


def test_older_events_never_overwrite_newer_state() -> None:
    core = core_with_long()
    core.on_account_update(acct("2", "101", at=T0 + 10), T0 + 10)
    core.on_account_update(acct("1", at=T0 + 5), T0 + 11)
    core.on_account_update(acct("0", at=T0 + 6), T0 + 11)
    assert core.positions[SYM].size == D(2) and core.counters.stale_events == 2
    core.on_price(SYM, D(100), T0 + 20)
    assert core.on_price(SYM, D(50), T0 + 19) == []  # an older price is not applied
    assert core.counters.stale_events == 3


def test_failed_close_is_forgotten_and_retried_with_the_same_id() -> None:
    core = core_with_long()
    (d,) = closes(core.on_price(SYM, D(90), T0 + 1))
    expired = order("SELL", "1", "90", at=T0 + 2, t=0, cid=d.client_order_id,
                    status="EXPIRED", execution="EXPIRED", reduce=True)  # fmt: skip
    assert core.on_order_update(expired, T0 + 2) == []
    assert core.close_in_flight(SYM) is None and core.counters.close_failures == 1
    (again,) = closes(core.on_price(SYM, D(89), T0 + 3))
    assert again.client_order_id == d.client_order_id


def test_unanswered_close_is_resent_by_sweep_after_the_retry_time() -> None:
    core = core_with_long()
    (d,) = closes(core.on_price(SYM, D(90), T0 + 1))
    retry = core.config.close_retry_ms
    assert closes(core.sweep(T0 + 1 + retry - 1)) == []
    assert closes(core.sweep(T0 + 1 + retry)) == [d]
    assert core.counters.close_retries == 1


def test_fills_through_the_core_give_a_closed_trade_with_our_reason() -> None:
    core = PositionControllerCore(CoreConfig())
    core.on_decision(DecisionRecord(ENTRY_ID, SYM, "LONG", T0, {}, "m1", 0.7, 0.5, 10,
                                    D(98), D(104), D(100)))  # fmt: skip
    core.on_order_update(order("BUY", "1", "100", at=T0, t=1, fee="0.05"), T0)
    core.on_account_update(acct("1", at=T0), T0)
    assert core.open_time(SYM) == T0
    (d,) = closes(core.on_price(SYM, D("90.1"), T0 + MIN))  # leverage from the record
    close_fill = order("SELL", "1", "90.1", at=T0 + MIN + 5, t=2, cid=d.client_order_id,
                       rp="-9.9", fee="0.045", reduce=True)  # fmt: skip
    (done,) = core.on_order_update(close_fill, T0 + MIN + 5)
    assert isinstance(done, TradeClosed)
    tr = done.trade
    assert (tr.exit_reason, tr.gross_pnl, tr.fees, tr.net_pnl) == (
        "emergency", D("-9.9"), D("0.095"), D("-9.995"))  # fmt: skip
    assert tr.decision is not None and tr.leverage == 10
    assert core.on_order_update(close_fill, T0 + MIN + 6) == []  # replayed fill
    core.on_account_update(acct("0", at=T0 + MIN + 5), T0 + MIN + 5)
    assert core.positions == {}
    assert core.sweep(T0 + 10 * MIN, exchange_positions=[], open_algo_orders=[]) == []


def test_sweep_adopts_a_position_opened_behind_our_back_and_protects_it() -> None:
    core = PositionControllerCore(CoreConfig())
    now = T0 + 10 * MIN
    row = exch("-2", "2000", now - MIN, "ETHUSDT")
    actions = core.sweep(now, exchange_positions=[row], open_algo_orders=[])
    repairs = [a for a in actions if isinstance(a, CacheRepair)]
    assert [(r.kind, r.position) for r in repairs] == [(DiffKind.MISSING_IN_CACHE, row)]
    (prot,) = [a for a in actions if isinstance(a, ProtectionDecision)]
    assert prot.missing == ("stop", "take_profit")
    stop, tp = prot.intents
    assert stop.side == tp.side == "BUY" and stop.close_position and tp.close_position
    assert stop.stop_price is not None and stop.stop_price > D(2000) > tp.stop_price  # type: ignore[operator]
    assert core.positions["ETHUSDT"].size == D(-2) and core.counters.adopted == 1
    assert core.ledger.lot("ETHUSDT") is not None
    # the same orders are not re-sent while in flight, then re-sent with the same ids
    assert core.sweep(now + 1, exchange_positions=[row], open_algo_orders=[]) == []
    later = core.sweep(now + core.config.close_retry_ms, open_algo_orders=[])
    (prot2,) = [a for a in later if isinstance(a, ProtectionDecision)]
    assert [i.client_order_id for i in prot2.intents] == [i.client_order_id for i in prot.intents]


def test_fresh_adopted_position_waits_for_the_protection_grace() -> None:
    core = PositionControllerCore(CoreConfig())
    now = T0 + 10 * MIN
    actions = core.sweep(now, [exch("1", "100", now - 1_000)], open_algo_orders=[])
    assert not [a for a in actions if isinstance(a, ProtectionDecision)]
    assert [a for a in core.sweep(now + 9_000, open_algo_orders=[])
            if isinstance(a, ProtectionDecision)]  # fmt: skip


def test_cached_position_missing_on_exchange_closes_the_trade_external() -> None:
    core = PositionControllerCore(CoreConfig())
    core.on_order_update(order("BUY", "1", "100", at=T0, t=1), T0)
    core.on_account_update(acct("1", at=T0), T0)
    core.on_price(SYM, D(103), T0 + 1)
    actions = core.sweep(T0 + MIN, exchange_positions=[])
    (rep,) = [a for a in actions if isinstance(a, CacheRepair)]
    (done,) = [a for a in actions if isinstance(a, TradeClosed)]
    assert rep.position is None and rep.kind is DiffKind.MISSING_ON_EXCHANGE
    assert done.trade.exit_reason == "external" and done.trade.gross_pnl == D(3)
    assert core.positions == {} and core.counters.closed_externally == 1
    assert core.sweep(T0 + 2 * MIN, exchange_positions=[]) == []


def test_cache_drift_is_repaired_and_recent_changes_are_deferred() -> None:
    core = core_with_long()
    row = exch("1.5", "101", T0 + 1_000)
    actions = core.sweep(T0 + MIN, exchange_positions=[row])
    (rep,) = [a for a in actions if isinstance(a, CacheRepair)]
    assert rep.kind is DiffKind.SIZE_MISMATCH and rep.position is not None
    assert rep.position.leverage == 5
    assert core.positions[SYM].size == D("1.5") and core.open_time(SYM) == T0
    lot = core.ledger.lot(SYM)
    assert lot is not None and lot.qty == D("1.5")
    # a position changed a moment ago is not "repaired" from a snapshot that may predate it
    core.on_account_update(acct("2", "101", at=T0 + 2 * MIN), T0 + 2 * MIN)
    assert core.sweep(T0 + 2 * MIN + 1_000, exchange_positions=[row]) == []
    assert core.last_reconcile is not None and core.last_reconcile.deferred == (SYM,)


def test_sweep_runs_time_stop_and_skips_protection_without_orders() -> None:
    core = core_with_long()
    core.set_trend(SYM, TrendView(0.5, 0.9))
    core.on_price(SYM, D(101), T0 + 1)  # in profit: no emergency, no no-progress
    assert core.sweep(T0 + MIN) == []  # no algo order list: protection not judged
    (d,) = closes(core.sweep(T0 + 240 * MIN))
    assert d.rule is ExitRule.TIME_STOP


def test_flip_is_a_new_position_with_new_ids() -> None:
    core = core_with_long()
    core.on_account_update(acct("-1", at=T0 + MIN), T0 + MIN)
    assert core.open_time(SYM) == T0 + MIN
    (d,) = closes(core.on_price(SYM, D("109.9"), T0 + MIN + 1))
    assert d.intent.side == "BUY" and d.client_order_id == close_order_id(
        SYM, T0 + MIN, "emergency"
    )


def test_hedge_mode_entries_are_ignored_and_counted() -> None:
    core = PositionControllerCore(load_settings())
    core.on_account_update(acct("1", at=T0, side="LONG"), T0)
    assert core.positions == {} and core.counters.hedge_entries_ignored == 1


def _kline(i: int, close: float, prev: float) -> Kline:
    hi, lo = max(close, prev) * 1.0005, min(close, prev) * 0.9995
    return Kline(SYM, "1m", i * MIN, i * MIN + MIN - 1, prev, hi, lo, close, 10.0, 10.0 * close,
                 5, 5.0, 5.0 * close, True, i * MIN + MIN, i * MIN + MIN)  # fmt: skip


def test_klines_turn_the_trend_and_close_a_long_counter_trend() -> None:
    core = PositionControllerCore(CoreConfig())
    core.on_config_update(ConfigUpdate(SYM, 5, None, 0, 0))
    price = 100.0
    for i in range(250):  # a steady rise warms the context up
        nxt = price * math.exp(0.001)
        core.on_kline(_kline(i, nxt, price), (i + 1) * MIN)
        price = nxt
    trend = core.trend(SYM)
    assert trend is not None and trend.trend > 0.5
    opened = 250 * MIN
    core.on_account_update(acct("1", str(round(price, 4)), at=opened), opened)
    decided: list[ExitDecision] = []
    for i in range(250, 295):  # then it turns down
        nxt = price * math.exp(-0.0015)
        decided += closes(core.on_kline(_kline(i, nxt, price), (i + 1) * MIN))
        price = nxt
        if decided:
            break
    assert [d.rule for d in decided] == [ExitRule.COUNTER_TREND]
    trend = core.trend(SYM)
    assert trend is not None and trend.trend < -0.2 and trend.confidence >= 0.7


def test_best_excursion_from_ticks_decides_no_progress() -> None:
    record = DecisionRecord(ENTRY_ID, SYM, "LONG", T0, {}, "m1", 0.7, 0.5, 10, D(98), D(104),
                            D(100))  # fmt: skip
    moved, stuck = PositionControllerCore(CoreConfig()), PositionControllerCore(CoreConfig())
    for core, peak in ((moved, "100.5"), (stuck, "100.49")):
        core.on_decision(record)
        core.on_order_update(order("BUY", "1", "100", at=T0, t=1), T0)
        core.on_account_update(acct("1", at=T0), T0)
        core.on_price(SYM, D(peak), T0 + MIN)
        core.on_price(SYM, D("100.1"), T0 + 2 * MIN)
    assert closes(moved.sweep(T0 + 60 * MIN)) == []
    (d,) = closes(stuck.sweep(T0 + 60 * MIN))
    assert d.rule is ExitRule.NO_PROGRESS and "best excursion 0.49" in d.reason


def test_load_positions_from_cache_resumes_with_given_open_times() -> None:
    core = PositionControllerCore(CoreConfig())
    cached = exch("1", "100", T0 + 30 * MIN, lev=10)
    core.load_positions([cached, exch("0", "0", T0, "ETHUSDT")], {SYM: T0})
    assert list(core.positions) == [SYM] and core.open_time(SYM) == T0
    (d,) = closes(core.on_price(SYM, D(90), T0 + 31 * MIN))
    assert d.client_order_id == close_order_id(SYM, T0, "emergency")
    lot = core.ledger.lot(SYM)
    assert lot is not None and lot.open_time == T0


def test_late_fills_after_a_rest_adoption_do_not_double_the_trade() -> None:
    """account_feed stalled: the sweep adopts the position from REST (updateTime T), then
    the stream delivers the entry fill (time <= T) and later the stop's fill."""
    core = PositionControllerCore(CoreConfig())
    opened = T0 + 10 * MIN
    row = exch("13734.4", "100", opened)
    core.sweep(opened + MIN, exchange_positions=[row], open_algo_orders=[])
    assert core.on_order_update(order("BUY", "13734.4", "100", at=opened, t=1, fee="1"),
                                opened + MIN + 1) == []  # fmt: skip
    lot = core.ledger.lot(SYM)
    assert lot is not None and lot.qty == D("13734.4") and lot.fees == D(1)
    stop = order("SELL", "13734.4", "99", at=opened + 2 * MIN, t=2, cid="caid9", rp="-13734.4",
                 reduce=True)  # fmt: skip
    (done,) = core.on_order_update(stop, opened + 2 * MIN)
    assert isinstance(done, TradeClosed) and done.trade.quantity == D("13734.4")
    assert core.ledger.lots == {}


def test_flat_snapshot_stops_a_late_close_from_opening_a_phantom_trade() -> None:
    core = core_with_long()
    core.on_order_update(order("BUY", "1", "100", at=T0, t=1), T0)
    other = exch("1", "50", T0 + 2 * MIN, "ETHUSDT")  # the snapshot's newest updateTime
    actions = core.sweep(T0 + 3 * MIN, exchange_positions=[other], open_algo_orders=[])
    (ext,) = [a for a in actions if isinstance(a, TradeClosed)]
    assert ext.trade.exit_reason == "external"
    # the manual (not reduce-only) close of T0 + 1 min arrives now
    assert core.on_order_update(order("SELL", "1", "101", at=T0 + MIN, t=2, cid="web_1"),
                                T0 + 3 * MIN) == []  # fmt: skip
    assert core.ledger.lot(SYM) is None


def test_replayed_gap_fills_record_the_round_trip_the_stream_lost() -> None:
    core = PositionControllerCore(CoreConfig())
    close = order("SELL", "2", "103", at=T0 + MIN, t=2, rp="6", reduce=True,
                  cid=close_order_id(SYM, T0, "time_stop"))  # fmt: skip
    assert core.on_order_update(close, T0 + MIN) == []  # its opening fill was lost
    assert core.ledger.replay_needed == {SYM: T0 + MIN}
    (done,) = core.replay(SYM, [order("BUY", "2", "100", at=T0, t=1), close], T0 + 2 * MIN)
    assert isinstance(done, TradeClosed) and done.trade.quantity == D(2)
    assert done.trade.exit_reason == "time_stop" and done.trade.gross_pnl == D(6)
    assert core.replay(SYM, [close], T0 + 3 * MIN) == []


def test_gap_watch_targets_held_symbols_while_down_and_all_once_when_back() -> None:
    watch = GapWatch(["BTCUSDT", "ETHUSDT", "BNBUSDT"])
    assert watch.targets(T0, True, ["BTCUSDT"], {}) == {}
    assert watch.targets(T0 + MIN, False, ["ETHUSDT"], {}) == {"ETHUSDT": T0}
    assert watch.targets(T0 + 2 * MIN, False, [], {"SOLUSDT": T0 + 90_000}) == {"SOLUSDT": T0}
    back = watch.targets(T0 + 3 * MIN, True, [], {})
    assert back == dict.fromkeys(["BTCUSDT", "ETHUSDT", "BNBUSDT"], T0)
    assert watch.targets(T0 + 4 * MIN, True, ["BTCUSDT"], {}) == {}
    orphan = watch.targets(T0 + 10 * 3_600_000, True, [], {"BTCUSDT": T0 + 9 * 3_600_000})
    assert orphan == {"BTCUSDT": T0 + 3 * 3_600_000}  # looked back ORPHAN_LOOKBACK_MS
    # alive at both sweeps, but account_feed restarted (or reconnected) in between
    late = T0 + 11 * 3_600_000
    assert watch.targets(late, True, [], {}, session="41/1/0") == {}
    assert watch.targets(late + MIN, True, [], {}, session="41/1/0") == {}
    again = watch.targets(late + 2 * MIN, True, [], {}, session="41/1/1")
    assert again == dict.fromkeys(["BTCUSDT", "ETHUSDT", "BNBUSDT"], late + MIN)


def test_gap_watch_starts_a_gap_a_heartbeat_ttl_before_the_last_alive_sweep() -> None:
    """Found in the soak: account_feed was killed, a sweep still read its heartbeat (alive
    until the TTL), a whole round trip fell between the kill and that sweep, and the replay
    after the restart began at that sweep: the trip was never fetched nor recorded."""
    watch = GapWatch(["BTCUSDT"])
    ttl = 3_000 * 240  # a 3 s heartbeat TTL at 240x
    assert watch.targets(T0, True, [], {}, session="7/1/0", stale_ms=ttl) == {}
    back = watch.targets(T0 + MIN, True, [], {}, session="8/2/0", stale_ms=ttl)
    assert back == {"BTCUSDT": T0 - ttl}
    watch.targets(T0 + 2 * MIN, True, [], {}, session="8/2/0", stale_ms=ttl)
    down = watch.targets(T0 + 3 * MIN, False, ["BTCUSDT"], {}, stale_ms=ttl)
    assert down == {"BTCUSDT": T0 + 2 * MIN - ttl}


def test_a_new_position_is_not_closed_on_the_old_positions_liquidation_price() -> None:
    core = core_with_long()
    core.on_price(SYM, D(101), T0 + 1)
    assert closes(core.sweep(T0 + MIN, liquidation_prices={SYM: D(95)})) == []
    core.on_account_update(acct("0", at=T0 + MIN + 1), T0 + MIN + 1)  # closed
    core.on_account_update(acct("1", "96", at=T0 + 2 * MIN), T0 + 2 * MIN)  # a new long
    # 95.5 is within 1% of the OLD liquidation price (95): that price is not this one's.
    assert closes(core.on_price(SYM, D("95.5"), T0 + 2 * MIN + 1)) == []
    # The next sweep brings the new position's own price, and the guard applies to it.
    (d,) = closes(core.sweep(T0 + 3 * MIN, liquidation_prices={SYM: D("95.2")}))
    assert d.rule is ExitRule.LIQUIDATION_GUARD
