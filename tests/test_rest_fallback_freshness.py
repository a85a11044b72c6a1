"""rest_fallback's pure decisions: which feed is alive, what is stale, episode counting."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kline_feed.sharding import shard_symbols
from services.rest_fallback.freshness import (
    Episodes,
    Reason,
    alive_instances,
    covered_symbols,
    decide_klines,
    heartbeat_alive,
    kline_reason,
    mark_prices,
    needs_fetch,
    stale_prices,
)
from shared.errors import MessageError
from shared.models import Balance

IV = 60_000
NOW = 1_800_000_000_000
SYMS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"]


def beat(age_ms: int = 0, status: str = "ok", **extra: str) -> dict[str, str]:
    return {"status": status, "heartbeat": str(NOW - age_ms), **extra}


def test_heartbeat_alive() -> None:
    assert heartbeat_alive(beat(), NOW, 15)
    assert heartbeat_alive(beat(status="degraded"), NOW, 15)
    assert not heartbeat_alive(beat(status="down"), NOW, 15)
    assert not heartbeat_alive(beat(age_ms=16_000), NOW, 15)
    assert not heartbeat_alive({"status": "ok", "heartbeat": "x"}, NOW, 15)
    assert not heartbeat_alive({}, NOW, 15)


def test_coverage_follows_the_feed_shards() -> None:
    hbs = {
        "kline_feed:0": beat(**{"shard.index": "0", "shard.count": "2"}),
        "kline_feed:1": beat(age_ms=60_000, **{"shard.index": "1", "shard.count": "2"}),
    }
    inst = alive_instances(hbs, NOW, 15)
    assert inst == [(0, 2)]
    assert covered_symbols(SYMS, inst) == set(shard_symbols(SYMS, 0, 2))
    assert covered_symbols(SYMS, alive_instances({"kline_feed": beat()}, NOW, 15)) == set(SYMS)
    assert covered_symbols(SYMS, []) == set()


close_times = st.integers(0, 10**13)


@given(close=close_times, gap=st.integers(0, 10**7))
def test_kline_reason(close: int, gap: int) -> None:
    due = close + 1 + IV  # the next kline was due then
    now = due + gap
    reason = kline_reason(close, now, IV, 30_000, True)
    assert reason == (Reason.KLINE_STALE if gap > 30_000 else None)
    assert kline_reason(close, now, IV, 30_000, False) is Reason.KLINE_FEED_DOWN
    assert kline_reason(None, now, IV, 30_000, True) is Reason.KLINE_MISSING
    assert kline_reason(close, None, IV, 30_000, True) is None  # no clock: cannot call stale


def test_decide_klines() -> None:
    closes = {"BTCUSDT": NOW - IV - 1, "ETHUSDT": NOW - 3 * IV, "SOLUSDT": None}
    got = decide_klines(["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"], closes,
                        {"BTCUSDT", "ETHUSDT", "SOLUSDT"}, NOW, IV, 30_000)  # fmt: skip
    assert got == {"ETHUSDT": Reason.KLINE_STALE, "SOLUSDT": Reason.KLINE_MISSING,
                   "XRPUSDT": Reason.KLINE_FEED_DOWN}  # fmt: skip


def test_needs_fetch() -> None:
    close = NOW - 1  # the kline [NOW - IV, NOW) closed at NOW
    assert not needs_fetch(close, NOW + IV - 1, IV)  # the next one is still open
    assert needs_fetch(close, NOW + IV, IV)
    assert needs_fetch(None, NOW, IV) and needs_fetch(close, None, IV)


def test_mark_prices() -> None:
    rows = [{"symbol": "A", "markPrice": "1.5"}, {"symbol": "B", "markPrice": "NaN"},
            {"symbol": "C", "markPrice": "0"}, {"symbol": "D", "markPrice": "2"}, "junk"]  # fmt: skip
    assert mark_prices(rows, {"A", "B", "C"}) == {"A": "1.5"}
    assert mark_prices({"symbol": "D", "markPrice": "2"}, {"D"}) == {"D": "2"}


def test_stale_prices() -> None:
    updated = {"A": NOW - 1000, "B": NOW - 40_000, "C": None}
    assert stale_prices(["A", "B", "C", "D"], updated, NOW, 30_000) == ["B", "C", "D"]


def test_episodes_count_each_outage_once() -> None:
    e = Episodes()
    down = {s: Reason.KLINE_FEED_DOWN for s in SYMS}
    assert e.update({**down, "account_feed": Reason.ACCOUNT_FEED_DOWN}) == [
        ("kline_feed", Reason.KLINE_FEED_DOWN), ("account_feed", Reason.ACCOUNT_FEED_DOWN)
    ]  # fmt: skip
    for _ in range(10):  # still down: no new activation
        assert e.update(down) == []
    assert e.counts["kline_feed_down"] == 1 and e.counts["account_feed_down"] == 1
    assert e.update({}) == [] and e.active_counts()["kline_feed_down"] == 0
    e.update({"BTCUSDT": Reason.KLINE_STALE, "ETHUSDT": Reason.KLINE_STALE})
    e.update({"BTCUSDT": Reason.KLINE_STALE})
    e.update({"BTCUSDT": Reason.KLINE_MISSING, "ETHUSDT": Reason.KLINE_STALE})
    assert e.counts["kline_stale"] == 3 and e.counts["kline_missing"] == 1
    e.update(down)
    assert e.counts["kline_feed_down"] == 2


def test_balance_from_rest_row() -> None:
    row = {"accountAlias": "x", "asset": "USDT", "balance": "10000.50", "crossWalletBalance":
           "9990.5", "crossUnPnl": "1", "updateTime": 1700000000000}  # fmt: skip
    b = Balance.from_rest_row(row)
    assert (b.asset, b.wallet_balance, b.cross_wallet_balance, b.updated_at) == (
        "USDT", Decimal("10000.50"), Decimal("9990.5"), 1700000000000)  # fmt: skip
    for bad in ({"asset": "USDT"}, {**row, "balance": "NaN"}, ["USDT"]):
        with pytest.raises(MessageError):
            Balance.from_rest_row(bad)  # type: ignore[arg-type]
