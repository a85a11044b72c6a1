"""Kline message parsing speed, against plain JSON decoders on the same messages.

Messages are real Binance USD-M 1m candles (shared/data/klines, Feb 2023) as combined-stream
kline events, 10 open-candle updates per closed candle (the live ratio at 250 ms updates is
higher still).  Every decoder sees the same bytes in the same run; best of N interleaved passes.

    .venv/bin/python -m bench.bench_parse [--candles 10000] [--repeat 7]

Rows:
- json.loads / orjson.loads / msgspec untyped: decode only, no checks (references).
- parse_kline_message (all): full typed parse + checks of every message (what a feed
  does if it parses everything, like cryptofeed).
- feed path: is_closed_kline_fast prefilter; closed -> parse_kline_message,
  open -> last_price (or price_tick, which also gives symbol and event time).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable

import msgspec
import orjson

from shared.binance.schemas import (
    is_closed_kline_fast,
    last_price,
    parse_kline_message,
    price_tick,
)
from shared.testing import KLINES_DIR

DATA = KLINES_DIR / "binance_usdtm_2023-02_vision_csv"
UPDATES_PER_CANDLE = 10


def build_messages(candles: int) -> list[bytes]:
    rows: list[tuple[str, list[str]]] = []
    for path in sorted(DATA.glob("*.csv")):
        symbol = path.name.split("-")[0]
        with path.open() as f:
            rows += [(symbol, r) for r in list(csv.reader(f))[1:]]
    rows = rows[:candles]
    messages = []
    for i, (symbol, r) in enumerate(rows):
        o, h, low, c = r[1], r[2], r[3], r[4]
        t, close_t = int(r[0]), int(r[6])
        for u in range(UPDATES_PER_CANDLE + 1):
            closed = u == UPDATES_PER_CANDLE
            k = {"t": t, "T": close_t, "s": symbol, "i": "1m", "f": 1000 * i, "L": 1000 * i + u,
                 "o": o, "c": c if closed else o, "h": h if closed else max(o, c, key=float),
                 "l": low if closed else min(o, c, key=float), "v": r[5], "n": int(r[8]) + u,
                 "x": closed, "q": r[7], "V": r[9], "Q": r[10], "B": "0"}  # fmt: skip
            event = {
                "e": "kline",
                "E": t + 5_000 * u + (59_999 if closed else 0),
                "s": symbol,
                "k": k,
            }
            messages.append(orjson.dumps({"stream": f"{symbol.lower()}@kline_1m", "data": event}))
    return messages


def feed_path(messages: list[bytes]) -> int:
    closed = 0
    for raw in messages:
        if is_closed_kline_fast(raw):
            closed += parse_kline_message(raw).k.x
        else:
            last_price(raw)
    return closed


def feed_path_tick(messages: list[bytes]) -> int:
    closed = 0
    for raw in messages:
        if is_closed_kline_fast(raw):
            closed += parse_kline_message(raw).k.x
        else:
            price_tick(raw)
    return closed


def each(fn: Callable[[bytes], object]) -> Callable[[list[bytes]], None]:
    def run(messages: list[bytes]) -> None:
        for raw in messages:
            fn(raw)

    return run


def best_rates(
    cases: list[tuple[str, Callable[[list[bytes]], object]]], messages: list[bytes], repeat: int
) -> dict[str, float]:
    """Best msgs/s per case; passes are interleaved (case A, B, C, A, B, C, ...) so that
    load from other processes hits every case alike."""
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeat):
        for name, fn in cases:
            start = time.perf_counter()
            fn(messages)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(messages) / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    messages = build_messages(args.candles)
    assert (
        feed_path(messages) == feed_path_tick(messages) == len(messages) // (UPDATES_PER_CANDLE + 1)
    )
    size = sum(map(len, messages)) / len(messages)
    print(f"{len(messages):,} combined-stream kline messages, {size:.0f} B avg, "
          f"{UPDATES_PER_CANDLE}:1 open:closed, best of {args.repeat}")  # fmt: skip
    untyped = msgspec.json.Decoder()
    cases: list[tuple[str, Callable[[list[bytes]], object]]] = [
        ("json.loads (reference)", each(json.loads)),
        ("orjson.loads (reference)", each(orjson.loads)),
        ("msgspec untyped decode", each(untyped.decode)),
        ("parse_kline_message, every message", each(parse_kline_message)),
        ("feed path: prefilter + parse closed + last_price", feed_path),
        ("feed path: prefilter + parse closed + price_tick", feed_path_tick),
    ]
    rates = best_rates(cases, messages, args.repeat)
    ref = rates["orjson.loads (reference)"]
    print(f"{'decoder':<52}{'msgs/s':>12}{'x orjson':>10}")
    for name, rate in rates.items():
        print(f"{name:<52}{rate:>12,.0f}{rate / ref:>10.2f}")


if __name__ == "__main__":
    main()
