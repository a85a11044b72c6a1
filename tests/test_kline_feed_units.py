"""The pure parts of kline_feed: sharding, connection grouping, backoff, exchange clock,
watchdog deadlines and the early-REST decision."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kline_feed.connections import backoff_delay
from services.kline_feed.quiet_gc import FORCE_FACTOR, QuietGC
from services.kline_feed.sharding import chunk, owner, shard_symbols, stream_name, streams_url
from services.kline_feed.watchdog import (
    EARLY_MARGIN_MS,
    ExchangeClock,
    LatenessTracker,
    due_open_time,
    effective_grace_ms,
    overdue,
)
from shared.config import DEFAULT_SYMBOLS

IV = 60_000
symbol_lists = st.lists(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=12),
    unique=True, max_size=300,
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(symbols=symbol_lists, count=st.integers(1, 8))
def test_every_symbol_has_exactly_one_shard(symbols: list[str], count: int) -> None:
    parts = [shard_symbols(symbols, i, count) for i in range(count)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == sorted(symbols)  # none dropped, none twice
    for i, p in enumerate(parts):
        assert all(owner(s, count) == i for s in p)
        assert p == [s for s in symbols if s in set(p)]  # configured order kept


def test_sharding_is_stable_and_balanced() -> None:
    symbols = [f"S{i}USDT" for i in range(600)]
    sizes = [len(shard_symbols(symbols, i, 3)) for i in range(3)]
    assert min(sizes) > 150  # roughly a third each
    # growing 3 -> 4 shards moves about a quarter of the symbols, not most of them
    moved = sum(owner(s, 3) != owner(s, 4) for s in symbols)
    assert moved < 0.35 * len(symbols)
    assert shard_symbols(DEFAULT_SYMBOLS, 0, 1) == DEFAULT_SYMBOLS
    with pytest.raises(ValueError):
        shard_symbols(symbols, 3, 3)
    with pytest.raises(ValueError):
        owner("BTCUSDT", 0)


@given(n=st.integers(0, 3000), size=st.integers(1, 1024))
def test_chunk_respects_the_per_connection_limit(n: int, size: int) -> None:
    items = [str(i) for i in range(n)]
    groups = chunk(items, size)
    assert [x for g in groups for x in g] == items
    assert all(0 < len(g) <= size for g in groups)
    assert len(groups) == -(-n // size)
    if groups:
        assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_stream_names_and_routed_url() -> None:
    assert stream_name("BTCUSDT", "1m") == "btcusdt@kline_1m"
    url = streams_url("ws://127.0.0.1:8900/", ["btcusdt@kline_1m", "ethusdt@kline_1m"])
    assert url == "ws://127.0.0.1:8900/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"


@given(attempt=st.integers(0, 200), base=st.floats(0, 30), cap=st.floats(0.1, 120),
       draw=st.floats(0, 1))  # fmt: skip
def test_backoff_is_jittered_bounded_and_starts_at_the_base(
    attempt: int, base: float, cap: float, draw: float
) -> None:
    d = backoff_delay(attempt, base, cap, draw)
    if attempt == 0:
        assert base <= d <= base * 1.25 + 1e-9
    else:
        ceiling = min(cap, max(base, 0.1) * 2.0**attempt)
        assert ceiling <= d <= ceiling * 1.25 + 1e-9


def test_backoff_doubles() -> None:
    assert [backoff_delay(a, 5, 60, 0) for a in range(5)] == [5, 10, 20, 40, 60]


def test_exchange_clock_follows_event_times_at_their_rate() -> None:
    c = ExchangeClock(window_s=0.5)
    assert c.now(0.0) is None and not c.known
    c.observe(1_000_000, mono=10.0)
    assert c.now(10.0) == 1_000_000 and c.now(11.0) == 1_001_000  # rate 1 until measured
    # a simulator at 600x: 300 s of exchange time in 0.5 s
    for i in range(1, 11):
        c.observe(1_000_000 + i * 30_000, mono=10.0 + i * 0.05)
    assert c.rate == pytest.approx(600, rel=0.01)
    assert c.now(10.6) == pytest.approx(1_300_000 + 0.1 * 600_000, rel=1e-6)
    c.observe(1_000_000, mono=10.7)  # an older stamp never moves the clock back
    assert c.now(10.7) >= 1_300_000
    assert c.local_seconds(60_000) == pytest.approx(0.1, rel=0.01)


def test_lateness_median() -> None:
    t = LatenessTracker(size=3)
    assert t.median() is None
    for e in (2000, 2100, 1900, 5000):
        t.record(IV + e, IV - 1)  # x:true stamped e ms after the minute ended
    assert len(t) == 3 and t.median() == 2100


def test_early_rest_only_when_the_socket_is_measurably_later() -> None:
    assert effective_grace_ms(3000, 500, None, True) == 3000  # nothing measured yet
    assert effective_grace_ms(3000, 500, 2000, True) == 500  # Binance: x:true ~2 s late
    assert effective_grace_ms(3000, 500, 500 + EARLY_MARGIN_MS, True) == 3000  # not faster
    assert effective_grace_ms(3000, 500, 2000, False) == 3000  # REST budget too small
    assert effective_grace_ms(3000, 0, 2000, True) == 3000  # disabled
    assert effective_grace_ms(300, 500, 2000, True) == 300


@given(m=st.integers(0, 10**8), grace=st.integers(0, 59_999), off=st.integers(0, 59_999))
def test_due_open_time(m: int, grace: int, off: int) -> None:
    open_t = m * IV
    close = open_t + IV  # when minute m ended
    assert due_open_time(close + grace, IV, grace) == open_t
    assert due_open_time(close + grace - 1, IV, grace) == open_t - IV
    assert due_open_time(close + grace + off, IV, grace) == open_t


def test_overdue() -> None:
    last = {"A": 5 * IV, "B": 4 * IV, "C": 3 * IV}
    assert overdue(last, 5 * IV) == ["B", "C"]
    assert overdue(last, 5 * IV, skip={"C"}) == ["B"]
    assert overdue(last, 3 * IV) == []


def test_quiet_gc_collects_when_idle_or_far_behind_and_restores_the_collector() -> None:
    was = gc.isenabled()
    q = QuietGC()
    q.start()
    try:
        assert not gc.isenabled()
        gc.collect()
        assert q.maybe_collect(idle=True) is None  # nothing due
        junk = [[] for _ in range(q.thresholds[0] + 100)]  # tracked objects: gen 0 fills
        assert q.maybe_collect(idle=False) is None  # busy: only past FORCE_FACTOR x
        assert q.maybe_collect(idle=True) == 0 and q.collections == [1, 0, 0]
        more = [[] for _ in range(q.thresholds[0] * FORCE_FACTOR + 100)]
        assert q.maybe_collect(idle=False) == 0  # far behind: even while busy
        del junk, more
    finally:
        q.stop()
    assert gc.isenabled() == was


class _Backlog:
    """Stands in for the pipeline: only `backlog` is read."""

    backlog = 0


async def test_housekeeping_waits_for_a_burst_to_be_in_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from services.kline_feed import service as feed_service

    svc = feed_service.KlineFeedService.__new__(feed_service.KlineFeedService)
    svc.pipeline = _Backlog()  # type: ignore[assignment]
    await asyncio.wait_for(svc.between_bursts(), 1)  # idle: at once
    monkeypatch.setattr(feed_service, "QUIET_MAX_S", 30.0)
    svc.pipeline.backlog = 5
    waiting = asyncio.ensure_future(svc.between_bursts())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # closes in flight: the heartbeat holds
    svc.pipeline.backlog = 0
    await asyncio.wait_for(waiting, 1)
    monkeypatch.setattr(feed_service, "QUIET_MAX_S", 0.01)
    svc.pipeline.backlog = 5  # never drains: bounded, the heartbeat still goes out
    await asyncio.wait_for(svc.between_bursts(), 1)
