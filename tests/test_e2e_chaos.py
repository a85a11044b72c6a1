"""Issue #11: the whole system under faults, with nothing lost.

`test_chaos_run_loses_nothing` starts Redis (AOF), the simulator (50 symbols, 240x: about
seven simulated hours in two minutes) and every service as real processes on
127.0.0.1, trades, runs the fault schedule of `tests/e2e/faults.py` and asserts every
figure of `tests/e2e` (klines, orders, caches, trades, health against faults, secrets).
The table of figures is printed; on failure it is the assertion message, with the path
of the run's logs and diagnostics.

The small tests first prove that each check can fail: a harness whose checks cannot see
a lost kline, a duplicate or a leaked secret would pass for the wrong reason.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.codec import encode_event
from shared.keys import Keys
from tests.e2e import checks, klines, secrets_scan
from tests.e2e.config import SERVICES, ChaosConfig, default_start_ms
from tests.e2e.exchange import ExchangeSnapshot
from tests.e2e.faults import FaultLog
from tests.e2e.figures import render
from tests.e2e.monitor import ClockMap, HealthTracker, ProtectionWatch
from tests.e2e.run import run_chaos

IV = 60_000


# ---- the checks can fail ------------------------------------------------------------------
def _record(times: list[int]) -> list[dict[str, object]]:
    return [{"t": t, "T": t + IV - 1, "o": "1", "h": "2", "l": "0.5", "c": "1.5", "v": "3",
             "q": "4", "n": 5} for t in times]  # fmt: skip


def _row(t: int, close: float = 1.5) -> klines.StreamKline:
    values = {"open": 1.0, "high": 2.0, "low": 0.5, "close": close, "volume": 3.0,
              "quote_volume": 4.0, "trades": 5}  # fmt: skip
    return klines.StreamKline(t, t + IV - 1, 0, values)


def test_kline_check_sees_missing_duplicate_reordered_and_altered_klines() -> None:
    rec = {"AAAUSDT": _record([0, IV, 2 * IV, 3 * IV]), "BBBUSDT": _record([0, IV, 2 * IV, 3 * IV])}
    good = klines.KlineResult(per_symbol={s: [_row(t) for t in (0, IV, 2 * IV, 3 * IV)]
                                          for s in rec})  # fmt: skip
    klines.compare(good, rec)
    assert (good.missing, good.duplicated, good.out_of_order, good.value_mismatch) == (0, 0, 0, 0)
    bad = klines.KlineResult(per_symbol={
        "AAAUSDT": [_row(0), _row(2 * IV), _row(IV), _row(IV), _row(3 * IV, close=9.0)],
        "BBBUSDT": [_row(2 * IV), _row(3 * IV)],  # starts two minutes after AAAUSDT
    })  # fmt: skip
    klines.compare(bad, rec)
    assert bad.duplicated == 1 and bad.out_of_order == 2 and bad.value_mismatch == 1
    assert bad.missing == 1  # BBBUSDT@IV: a symbol may start at most one minute late
    assert not all(f.ok for f in klines.figures(bad, 2))


def test_protection_watch_flags_a_position_left_without_stop() -> None:
    watch = ProtectionWatch(grace_s=2.0, cap=10)
    pos = [{"symbol": "AAAUSDT", "positionAmt": "5", "entryPrice": "10", "leverage": "20",
            "notional": "50"}]  # fmt: skip
    stop = [{"symbol": "AAAUSDT", "side": "SELL", "orderType": "STOP_MARKET",
             "closePosition": True, "triggerPrice": "9"}]  # fmt: skip
    take_profit = [{**stop[0], "orderType": "TAKE_PROFIT_MARKET"}]
    watch.observe(ExchangeSnapshot.from_rows(0, pos, take_profit, []), now_s=100.0)
    watch.observe(ExchangeSnapshot.from_rows(0, pos, take_profit, []), now_s=101.0)
    watch.observe(ExchangeSnapshot.from_rows(0, pos, stop, []), now_s=101.5)  # within grace
    assert watch.violations == [] and watch.longest_unprotected_s == 1.0
    watch.observe(ExchangeSnapshot.from_rows(0, pos, [], []), now_s=110.0)
    watch.observe(ExchangeSnapshot.from_rows(0, [], [], []), now_s=113.0)  # flat after 3 s
    assert watch.violations == [("AAAUSDT", 3.0)]
    assert watch.over_cap == [("AAAUSDT", 20.0)] * 4 and watch.max_leverage == 20


def test_round_trips_and_trade_check() -> None:
    def fill(ts: int, side: str, qty: str) -> dict[str, object]:
        return {"ts": ts, "trade_id": ts, "symbol": "AAAUSDT", "side": side, "qty": qty}

    fills = [
        fill(1, "BUY", "2"),
        fill(2, "BUY", "1"),
        fill(3, "SELL", "3"),  # long, closed
        fill(4, "SELL", "1"),
        fill(5, "BUY", "2"),
        fill(6, "SELL", "1"),
    ]  # flip, close
    trips = checks.round_trips(fills)
    assert [(t.entry_time, t.exit_time, t.quantity) for t in trips] == [
        (1, 3, Decimal(3)), (4, 5, Decimal(1)), (5, 6, Decimal(1))]  # fmt: skip

    def trade(tid: str, entry: int, exit_: int, qty: str) -> dict[str, object]:
        return {"trade_id": tid, "symbol": "AAAUSDT", "entry_time": entry, "exit_time": exit_,
                "quantity": qty}  # fmt: skip

    good = [trade("a", 1, 3, "3"), trade("b", 4, 5, "1"), trade("c", 5, 6, "1")]
    figs = checks.trade_figures(trips, good, {"a", "b", "c"}, 3)
    assert all(f.ok for f in figs)
    # b adopted late (another entry time, same span) is still b; a twice, a phantom d,
    # c never recorded, a's quantity doubled
    bad = [trade("a", 1, 3, "6"), trade("a", 1, 3, "3"), trade("b", 5, 5, "1"),
           trade("d", 7, 8, "1")]  # fmt: skip
    figs = {f.name: f for f in checks.trade_figures(trips, bad, {"a", "b"}, 4)}
    assert not figs["trade ids recorded more than once"].ok
    assert figs["closed on exchange, not recorded"].value == 1
    assert figs["recorded, not closed on exchange"].value == 2  # the second a, and d
    assert figs["recorded with a wrong quantity"].value == 1
    assert figs["recorded with another entry time"].value == 1
    assert not figs["learner seen != recorded trades"].ok
    assert not figs["trades learned (sum over trader processes)"].ok


def test_cache_check_compares_sizes_entries_and_wallet() -> None:
    snap = ExchangeSnapshot.from_rows(0, [{"symbol": "AAAUSDT", "positionAmt": "-2",
                                           "entryPrice": "10.5", "leverage": "5"}],
                                      [], [{"asset": "USDT", "balance": "100.5"}])  # fmt: skip
    good = {"AAAUSDT": {b"size": b"-2", b"entry_price": b"10.50"}}
    assert checks.cache_diffs(snap, good, {b"wallet_balance": b"100.50"}) == []
    stale = {"AAAUSDT": {b"size": b"-2", b"entry_price": b"10.4"},
             "BBBUSDT": {b"size": b"1", b"entry_price": b"3"}}  # fmt: skip
    diffs = checks.cache_diffs(snap, stale, {b"wallet_balance": b"99"})
    assert len(diffs) == 3


def test_health_totals_survive_restarts_and_clock_map_interpolates() -> None:
    t = HealthTracker()
    t.observe("kline_feed", 1, {"reconnects": "3", "rest.breaker_opens": "1"})
    t.observe("kline_feed", 1, {"reconnects": "2"})  # an older reading never lowers it
    t.observe("kline_feed", 2, {"reconnects": "4"})  # the restarted process starts again
    assert t.total("kline_feed", "reconnects") == 7.0
    assert t.total_matching(None, "breaker_opens") == 1.0
    figs = checks.health_figures({s: "ok" for s in SERVICES}, t, FaultLog(), {}, {}, 0, {})
    assert all(f.ok for f in figs)
    log = FaultLog()
    log.hits["ws_drop_klines"] = 9
    figs = checks.health_figures({}, t, log, {"trader": 1}, {}, 0, {"kept_alive": 2})
    bad = {f.name for f in figs if not f.ok}
    assert {"kline_feed reconnects", "trader restarts == kill -9", "reporter status at the end",
            "renewals: |account_feed ok - exchange kept alive|"} <= bad  # fmt: skip
    clock = ClockMap()
    clock.add(1000.0, 0)
    clock.add(2000.0, 240_000)
    assert clock.wall_at(120_000) == 1500.0 and clock.wall_at(999_999) is None


async def test_secret_scan_finds_planted_values(tmp_path: Path, redis_client: aioredis.Redis,
                                                prefix: str) -> None:  # fmt: skip
    secret = {"BINANCE_API_SECRET": "s3cr3t-" + prefix}
    (tmp_path / "a.log").write_text(f"GET /x?key={secret['BINANCE_API_SECRET']}\n")
    (tmp_path / "b.log").write_text("nothing here\n")
    stream = Keys(prefix).stream_orders
    await redis_client.xadd(stream, encode_event("order", {"note": secret["BINANCE_API_SECRET"],
                                                           "qty": Decimal("1")}))  # fmt: skip
    try:
        hits = secrets_scan.SecretHits()
        secrets_scan.scan_files([tmp_path / "a.log", tmp_path / "b.log"], secret, hits, "log")
        await secrets_scan.scan_redis(redis_client, secret, hits)
        assert hits.hits["BINANCE_API_SECRET"] == ["log:a.log", f"redis:{stream}"]
    finally:
        await redis_client.delete(stream)


# ---- the run ------------------------------------------------------------------------------
# ---- the run itself -----------------------------------------------------------------------
@pytest.mark.timeout(420)
async def test_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """About 100 s of faults at 240x (seven simulated hours): every figure must hold.
    `python -m bench.soak --minutes N --seed S` runs the same for longer, other seeds."""
    speed = 240.0
    cfg = ChaosConfig(work_dir=tmp_path, symbols=50, speed=speed,
                      start_ms=default_start_ms(speed, 10))  # fmt: skip
    res = await run_chaos(cfg, progress=print)
    table = render(res.figures, "chaos run (issue #11)")
    print(table)
    where = f"\nlogs and diagnostics: {tmp_path}"
    assert not res.failed, table + where
    # the run did what it claims: every fault happened, trading happened, time passed
    done = res.faults.done
    for name in ("ws_drop_klines", "ws_drop_marks", "ws_drop_user", "ws_stall_market",
                 "ws_stall_user", "listenkey_expire", "keepalive_fail", "rest_5xx_burst",
                 "rest_timeout", "rest_429", "rest_418", "redis_restart",
                 "ws_malformed_market", "ws_malformed_user", "ws_duplicate",
                 *(f"kill9_{s}" for s in SERVICES)):  # fmt: skip
        assert done[name] >= 1, f"fault {name} was not injected" + where
    assert res.stream_counts["trades"] >= 3, "too few closed trades to prove anything" + where
    assert res.sim_minutes >= 5 * 60, "less than five simulated hours" + where


def test_cache_figures_flag_a_stop_left_on_a_flat_symbol() -> None:
    stop = {"symbol": "AAAUSDT", "side": "SELL", "orderType": "STOP_MARKET",
            "closePosition": True, "triggerPrice": "9", "clientAlgoId": "slt-s-x"}  # fmt: skip
    pos = [{"symbol": "AAAUSDT", "positionAmt": "5", "entryPrice": "10", "leverage": "5",
            "notional": "50"}]  # fmt: skip
    held = checks.cache_figures(ExchangeSnapshot.from_rows(0, pos, [stop], []), [], 0.0)
    flat = checks.cache_figures(ExchangeSnapshot.from_rows(0, [], [stop], []), [], 0.0)
    assert all(f.ok for f in held)
    (bad,) = [f for f in flat if not f.ok]
    assert bad.name == "stop/target orders left on flat symbols" and bad.value == 1
