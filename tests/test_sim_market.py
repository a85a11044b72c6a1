"""Simulator market data (synthetic + replay), intra-bar paths, the sim clock and specs."""

from __future__ import annotations

import gzip
import json
import random
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from services.exchange_sim.clock import SimClock
from services.exchange_sim.market import (
    Bar,
    Market,
    ReplayFormatError,
    ReplayMarket,
    SyntheticMarket,
    bar_updates,
    parse_name,
)
from services.exchange_sim.specs import default_spec, exchange_info, leverage_brackets
from shared.testing import KLINES_DIR

DATA = KLINES_DIR
AVAX = DATA / "binance_usdtm_2023-02_vision_csv" / "AVAXUSDT-1m-2023-02.csv"
LINK = DATA / "binance_usdtm_2023-02_vision_csv" / "LINKUSDT-1m-2023-02.csv"
BTC_GZ = DATA / "binance_usdtm_2023-07_freqtrade" / "csv" / "BTCUSDT-1m.csv.gz"
START = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
SYMS = ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "NEWCOINUSDT"]


def file_rows(path: Path) -> list[list[str]]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [line.split(",") for line in text.splitlines()[1:] if line]


# ------------------------------------------------------------------------------- synthetic
def test_synthetic_same_seed_same_bars_regardless_of_query_order() -> None:
    a = SyntheticMarket(SYMS, seed=42, start_ms=START)
    b = SyntheticMarket(SYMS, seed=42, start_ms=START, cache_chunks=1, chunk_bars=1440)
    wanted = [(s, i) for s in SYMS for i in range(0, 4000, 7)]
    forward = {k: a.bar(*k) for k in wanted}
    shuffled = list(wanted)
    random.Random(1).shuffle(shuffled)
    assert {k: b.bar(*k) for k in shuffled} == forward
    # a late first question (index 3000 before anything else) gives the same bar too
    c = SyntheticMarket(SYMS, seed=42, start_ms=START)
    assert c.bar("ETHUSDT", 3003) == forward[("ETHUSDT", 3003)]
    other = SyntheticMarket(SYMS, seed=43, start_ms=START)
    assert other.bar("BTCUSDT", 7) != forward[("BTCUSDT", 7)]


def test_synthetic_bars_until_matches_random_access() -> None:
    m = SyntheticMarket(SYMS[:2], seed=5, start_ms=START)
    bars = list(m.bars_until(START + 10 * 60_000))
    assert [(b.symbol, b.open_time) for b in bars[:3]] == [
        ("BTCUSDT", START),
        ("ETHUSDT", START),
        ("BTCUSDT", START + 60_000),
    ]
    assert len(bars) == 20 and all(b.close_time < START + 10 * 60_000 for b in bars)
    assert bars[5] == m.bar("ETHUSDT", 2)
    assert list(m.bars_until(START + 5 * 60_000, start_ms=START + 3 * 60_000)) == [
        m.bar(s, i) for i in (3, 4) for s in m.symbols
    ]
    ks = m.klines("BTCUSDT", end_ms=START + 99 * 60_000 + 5, limit=10)
    assert [k.open_time for k in ks] == [START + i * 60_000 for i in range(90, 100)]
    assert isinstance(m, Market)


def test_synthetic_bars_are_plausible() -> None:
    m = SyntheticMarket(SYMS, seed=11, start_ms=START)
    n = 3 * 1440
    for s in SYMS:
        spec = m.specs()[s]
        a = m.arrays(s, 0, n)
        o, h, lo, c, v = a["o"], a["h"], a["l"], a["c"], a["v"]
        assert np.all(h >= np.maximum(o, c)) and np.all(lo <= np.minimum(o, c)) and np.all(lo > 0)
        assert np.all(v > 0) and np.all(a["q"] > 0) and np.all(a["n"] >= 1)
        assert np.all(a["tv"] <= v)
        assert np.array_equal(o[1:], c[:-1])  # each bar opens at the previous close
        tick = float(spec.tick_size)
        assert np.allclose(np.round(c / tick), c / tick, atol=1e-6)  # on the tick grid
        ret = np.abs(np.diff(np.log(c)))
        assert 1e-5 < np.median(ret) < 0.01  # per-minute moves of a crypto perpetual
        assert np.corrcoef(ret, v[1:])[0, 1] > 0.1  # volume rises with |return|
        reg = a["regime"]
        assert len(set(reg.tolist())) == 3 and int(np.sum(reg[1:] != reg[:-1])) >= 5
        assert np.median(ret[reg[1:] == 2]) > 1.5 * np.median(ret[reg[1:] == 0])
        b = m.bar(s, 100)
        assert b.rest_row()[4] == b.price_str(b.close) and D(b.rest_row()[4]) == b.decimal(b.close)
        assert (b.price_precision, b.qty_precision) == (
            spec.price_precision,
            spec.quantity_precision,
        )
    btc = m.bar("BTCUSDT", 0)
    assert 20_000 < btc.open < 40_000 and m.regime("BTCUSDT", 0) in (0, 1, 2)


def test_synthetic_volume_is_u_shaped_over_the_day() -> None:
    m = SyntheticMarket(["ETHUSDT"], seed=3, start_ms=START - START % 86_400_000)
    a = m.arrays("ETHUSDT", 0, 10 * 1440)
    minute = (a["open_time"] // 60_000) % 1440
    quote = a["q"]
    night = quote[(minute >= 6 * 60) & (minute < 9 * 60)].mean()
    us_open = quote[(minute >= 13 * 60 + 30) & (minute < 16 * 60)].mean()
    assert us_open > 1.2 * night


# -------------------------------------------------------------------------------- bar path
def test_bar_updates_pass_through_ohlc_and_end_exactly() -> None:
    up = Bar("BTCUSDT", 0, 59_999, 100.0, 110.0, 95.0, 105.0, 10.0, 1000.0, 50, 6.0, 600.0, 2, 3)
    pts = bar_updates(up, 12)
    assert len(pts) == 13
    prices = [p.price for p in pts]
    assert prices[0] == 100.0 and prices[-1] == 105.0
    assert prices.index(95.0) < prices.index(110.0)  # up bar: low first, then high
    assert [p.offset_ms for p in pts] == sorted(p.offset_ms for p in pts) and pts[
        -1
    ].offset_ms == 59_999
    assert all(95.0 <= p.price <= 110.0 for p in pts)
    assert [p.high for p in pts] == sorted(p.high for p in pts)
    assert [p.cum_volume for p in pts] == sorted(p.cum_volume for p in pts)
    last = pts[-1]
    assert (last.cum_volume, last.cum_quote, last.cum_trades, last.high, last.low) == (
        10.0,
        1000.0,
        50,
        110.0,
        95.0,
    )
    down = Bar("BTCUSDT", 0, 59_999, 100.0, 104.0, 90.0, 92.0, 1.0, 95.0, 5, 0.5, 47.0, 2, 3)
    dp = [p.price for p in bar_updates(down, 3)]
    assert dp == [100.0, 104.0, 90.0, 92.0]
    assert [p.price for p in bar_updates(down, 0)] == [92.0]
    part = down.partial(bar_updates(down, 3)[1])
    assert (part.close, part.high, part.low, part.trades) == (104.0, 104.0, 100.0, 1)
    k = part.ws_kline(closed=False)
    assert (k["x"], k["c"], k["i"], k["v"]) == (False, "104.00", "1m", "0.333")


def test_bar_updates_on_tick_grid() -> None:
    b = Bar(
        "BTCUSDT",
        0,
        59_999,
        30000.0,
        30010.0,
        29990.0,
        30005.0,
        1.0,
        30000.0,
        10,
        0.5,
        15000.0,
        2,
        3,
    )
    for p in bar_updates(b, 7, tick=0.1):
        assert abs(p.price * 10 - round(p.price * 10)) < 1e-6


# ---------------------------------------------------------------------------------- replay
def test_replay_vision_csv_first_and_last_bar_match_the_file() -> None:
    m = ReplayMarket.from_files([AVAX])
    rows = file_rows(AVAX)
    first, last = m.first_bar("AVAXUSDT"), m.last_bar("AVAXUSDT")
    assert first.rest_row() == [
        int(rows[0][0]),
        *rows[0][1:6],
        int(rows[0][6]),
        rows[0][7],
        int(rows[0][8]),
        *rows[0][9:11],
        "0",
    ]
    assert last.rest_row()[:6] == [int(rows[-1][0]), *rows[-1][1:6]]
    assert (last.close, last.trades, last.close_time) == (17.08, 115, 1677628799999)
    assert m.start_ms == 1675209600000 and m.end_ms == 1677628800000
    assert len(list(m.bars_until(m.end_ms))) == 40320
    spec = m.specs()["AVAXUSDT"]
    assert (spec.tick_size, spec.price_precision, spec.step_size) == (D("0.001"), 4, D("1"))
    assert m.estimated == []
    assert m.bar("AVAXUSDT", 1) == Bar(
        "AVAXUSDT",
        1675209660000,
        1675209719999,
        19.81,
        19.821,
        19.805,
        19.806,
        7303.0,
        144686.792,
        429,
        3335.0,
        66074.076,
        4,
        0,
    )


def test_replay_gz_freqtrade_export_first_and_last_bar() -> None:
    m = ReplayMarket.from_files([BTC_GZ])
    rows = file_rows(BTC_GZ)
    first, last = m.first_bar("BTCUSDT"), m.last_bar("BTCUSDT")
    for bar, row in ((first, rows[0]), (last, rows[-1])):
        assert bar.open_time == int(row[0]) and bar.close_time == int(row[6])
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == tuple(
            float(x) for x in row[1:6]
        )
    assert (first.close, last.close) == (30001.9, 28500.1)
    assert len(m.arrays("BTCUSDT")["c"]) == len(rows) == 43199
    assert m.estimated == ["BTCUSDT"]  # quote volume etc. were empty in the export
    assert first.quote_volume == pytest.approx(
        first.volume * (first.high + first.low + first.close) / 3, rel=1e-9
    )
    assert first.rest_row()[1] == "29996.90"  # BTC's published precision


def test_replay_json_headerless_and_merge(tmp_path: Path) -> None:
    rows = file_rows(LINK)
    js = tmp_path / "LINKUSDT-1m.json"
    js.write_text(
        json.dumps(
            [[int(r[0]), *r[1:6], int(r[6]), r[7], int(r[8]), r[9], r[10], "0"] for r in rows[:100]]
        )
    )
    m = ReplayMarket.from_files([js])
    assert m.first_bar("LINKUSDT").rest_row()[:9] == [
        int(rows[0][0]),
        *rows[0][1:6],
        int(rows[0][6]),
        rows[0][7],
        int(rows[0][8]),
    ]
    # two headerless daily files of one symbol merge into one series
    d1, d2 = tmp_path / "LINKUSDT-1m-2023-02-01.csv", tmp_path / "LINKUSDT-1m-2023-02-02.csv.gz"
    d1.write_text("\n".join(",".join(r) for r in rows[:1440]) + "\n")
    d2.write_bytes(gzip.compress(("\n".join(",".join(r) for r in rows[1440:2880]) + "\n").encode()))
    both = ReplayMarket.from_files([d2, d1])
    assert len(both.arrays("LINKUSDT")["c"]) == 2880
    assert both.last_bar("LINKUSDT").close == float(rows[2879][4])
    assert both.bar("LINKUSDT", 1440).open_time == int(rows[1440][0])
    assert both.klines("LINKUSDT", start_ms=int(rows[10][0]) + 1, limit=3)[0].open_time == int(
        rows[11][0]
    )


def test_replay_two_symbols_share_one_clock() -> None:
    m = ReplayMarket.from_files([AVAX, LINK])
    assert m.symbols == ["AVAXUSDT", "LINKUSDT"]
    bars = list(m.bars_until(m.start_ms + 2 * 60_000))
    assert [(b.symbol, b.open_time - m.start_ms) for b in bars] == [
        ("AVAXUSDT", 0),
        ("LINKUSDT", 0),
        ("AVAXUSDT", 60_000),
        ("LINKUSDT", 60_000),
    ]
    assert m.bar("AVAXUSDT", 10**6) is None and m.bar("NOPE", 0) is None


def test_replay_bad_inputs(tmp_path: Path) -> None:
    assert parse_name("BTCUSDT-5m-2023-07.csv.gz") == ("BTCUSDT", 300_000)
    assert parse_name("ethusdt.json") == ("ETHUSDT", None)
    with pytest.raises(ReplayFormatError):
        parse_name("notes.txt")
    bad = tmp_path / "XUSDT-1m.csv"
    bad.write_text("1,2,3,oops,5,6,7\n")
    with pytest.raises(ReplayFormatError) as info:
        ReplayMarket.from_files([bad])
    assert info.value.path == str(bad)
    with pytest.raises(ValueError):
        ReplayMarket.from_files(
            [AVAX, DATA / "binance_usdtm_2023-07_freqtrade" / "csv" / "ETHUSDT-5m.csv.gz"]
        )


# ------------------------------------------------------------------------------ clock/specs
def test_sim_clock_speed_pause_advance() -> None:
    now = [100.0]
    clock = SimClock(START, speed=60.0, now_fn=lambda: now[0])
    assert clock.now_ms() == START
    now[0] += 1.0
    assert clock.now_ms() == START + 60_000  # one real second = one sim minute
    clock.pause()
    now[0] += 5.0
    assert clock.now_ms() == START + 60_000 and clock.sleep_seconds_until(START + 120_000) == float(
        "inf"
    )
    clock.resume()
    now[0] += 0.5
    assert clock.now_ms() == START + 90_000
    clock.set_speed(1.0)
    assert clock.now_ms() == START + 90_000  # no jump when the rate changes
    now[0] += 2.0
    assert clock.now_ms() == START + 92_000
    clock.advance(8_000)
    assert clock.now_ms() == START + 100_000
    assert clock.sleep_seconds_until(START + 101_000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        SimClock(0, speed=0)


def test_default_specs_by_magnitude() -> None:
    btc, eth, sol, xrp, doge = (
        default_spec(s, p)
        for s, p in [
            ("BTCUSDT", 30000),
            ("ETHUSDT", 1900),
            ("SOLUSDT", 25),
            ("XRPUSDT", 0.6),
            ("DOGEUSDT", 0.07),
        ]
    )
    assert (
        btc.tick_size,
        btc.price_precision,
        btc.step_size,
        btc.min_notional,
        btc.max_leverage,
    ) == (D("0.10"), 2, D("0.001"), D("100"), 125)
    assert (eth.tick_size, eth.min_notional) == (D("0.01"), D("20"))
    assert (sol.tick_size, sol.step_size, sol.min_notional, sol.max_leverage) == (
        D("0.001"),
        D("0.1"),
        D("5"),
        50,
    )
    assert (xrp.tick_size, xrp.step_size, xrp.price_precision, xrp.quantity_precision) == (
        D("0.00001"),
        D("1"),
        5,
        0,
    )
    assert doge.tick_size == D("0.000001")
    # brackets: cum keeps maintenance margin continuous at every cap
    for spec in (btc, sol):
        for lo, hi in zip(spec.brackets, spec.brackets[1:], strict=False):
            cap = lo.notional_cap
            assert (
                cap * lo.maint_margin_rate - lo.maint_amount
                == cap * hi.maint_margin_rate - hi.maint_amount
            )
    assert btc.max_notional(125) == 50_000 and btc.max_notional(20) == 15_000_000


def test_exchange_info_shape() -> None:
    info = exchange_info(
        {"BTCUSDT": default_spec("BTCUSDT", 30000), "XRPUSDT": default_spec("XRPUSDT", 0.6)}, 123
    )
    assert info["serverTime"] == 123 and info["timezone"] == "UTC"
    assert info["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]
    sym = info["symbols"][1]
    assert (
        sym["symbol"],
        sym["contractType"],
        sym["status"],
        sym["marginAsset"],
        sym["quantityPrecision"],
    ) == ("XRPUSDT", "PERPETUAL", "TRADING", "USDT", 0)
    filters = {f["filterType"]: f for f in sym["filters"]}
    assert set(filters) == {
        "PRICE_FILTER",
        "LOT_SIZE",
        "MARKET_LOT_SIZE",
        "MAX_NUM_ORDERS",
        "MAX_NUM_ALGO_ORDERS",
        "MIN_NOTIONAL",
        "PERCENT_PRICE",
    }
    assert (
        filters["PRICE_FILTER"]["tickSize"] == "0.00001" and filters["LOT_SIZE"]["stepSize"] == "1"
    )
    assert filters["MIN_NOTIONAL"] == {"filterType": "MIN_NOTIONAL", "notional": "5"}
    assert filters["PERCENT_PRICE"]["multiplierUp"] == "1.0500"
    assert json.loads(json.dumps(info)) == info  # plain JSON types only
    lb = leverage_brackets(default_spec("BTCUSDT", 30000))
    assert lb["brackets"][1] == {
        "bracket": 2,
        "initialLeverage": 100,
        "notionalCap": 250000,
        "notionalFloor": 50000,
        "maintMarginRatio": 0.005,
        "cum": 50.0,
    }
