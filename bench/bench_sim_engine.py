"""Throughput of the simulator engine's `advance_price`, the backtest's inner call.

Prints calls/s for: an idle symbol (no orders, no position), a symbol with a few resting
orders and algo orders that never trigger, an open position (liquidation check each tick), and
a full replay of BTCUSDT 1m closes with a position open. The reference, measured in the same
run, is a bare Python method call that stores the same three attributes: the floor any Python
implementation of this call pays.

    .venv/bin/python -m bench.bench_sim_engine [--n 300000]
"""

from __future__ import annotations

import argparse
import time
from decimal import Decimal

from services.exchange_sim.engine import Exchange
from services.exchange_sim.market import ReplayMarket
from services.exchange_sim.specs import default_spec
from shared.testing import KLINES_DIR

BTC_GZ = KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv/BTCUSDT-1m.csv.gz"
MIN = 60_000


class _Bare:
    """Reference: a method that only records the tick."""

    def __init__(self) -> None:
        self.books = {"BTCUSDT": self}
        self.last = self.mark = Decimal(0)
        self.ts = 0

    def advance_price(
        self, symbol: str, last: Decimal, ts_ms: int, mark: Decimal | None = None
    ) -> list:
        book = self.books[symbol]
        book.last = last
        book.mark = last if mark is None else mark
        book.ts = ts_ms
        return []


def _prices(n: int) -> list[Decimal]:
    return [Decimal(30000) + Decimal(i % 200) / 10 for i in range(n)]


def _rate(target: object, prices: list[Decimal], t0: int) -> float:
    adv = target.advance_price  # type: ignore[attr-defined]
    start = time.perf_counter()
    for i, p in enumerate(prices):
        adv("BTCUSDT", p, t0 + i * MIN)
    return len(prices) / (time.perf_counter() - start)


def _exchange() -> Exchange:
    ex = Exchange({"BTCUSDT": default_spec("BTCUSDT", 30000)}, funding_enabled=True)
    ex.add_account("a", Decimal(1_000_000))
    ex.advance_price("BTCUSDT", Decimal(30000), 0)
    return ex


def _with_orders(ex: Exchange) -> Exchange:
    for i, (side, px) in enumerate(
        [("BUY", "25000.0"), ("BUY", "24000.0"), ("SELL", "35000.0"), ("SELL", "36000.0")]
    ):
        ex.place_order("a", {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                             "price": px, "quantity": "0.010", "newClientOrderId": f"r{i}"}, 0)  # fmt: skip
    for side, px in [("SELL", "20000.0"), ("BUY", "40000.0")]:
        ex.place_algo_order("a", {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": side, "type": "STOP_MARKET",
                                  "triggerPrice": px, "quantity": "0.010"}, 0)  # fmt: skip
    return ex


def _with_position(ex: Exchange) -> Exchange:
    ex.place_order(
        "a", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.100"}, 0
    )
    return ex


def _replay(ex: Exchange) -> tuple[int, float]:
    market = ReplayMarket.from_files([BTC_GZ])
    cols = market.arrays("BTCUSDT")
    bar = market.first_bar("BTCUSDT")
    closes = [Decimal(bar.price_str(c)) for c in cols["c"].tolist()]  # what a backtest feeds
    times = cols["close_time"].tolist()
    ex.advance_price("BTCUSDT", closes[0], times[0] - MIN)
    _with_position(ex)
    adv = ex.advance_price
    start = time.perf_counter()
    for p, t in zip(closes, times, strict=True):
        adv("BTCUSDT", p, t)
    return len(closes), len(closes) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300_000)
    n = ap.parse_args().n
    prices = _prices(n)
    ref = _rate(_Bare(), prices, MIN)
    rows = [
        ("reference: bare method storing the tick", ref),
        ("advance_price, idle symbol", _rate(_exchange(), prices, MIN)),
        ("advance_price, 4 resting + 2 algo orders", _rate(_with_orders(_exchange()), prices, MIN)),
        (
            "advance_price, open position (+ funding)",
            _rate(_with_position(_exchange()), prices, MIN),
        ),
    ]
    if BTC_GZ.exists():
        count, rate = _replay(_exchange())
        rows.append((f"replay BTCUSDT 1m closes ({count} bars), position open", rate))
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  calls/s     × reference")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>10,.0f}  {rate / ref:5.2f}")


if __name__ == "__main__":
    main()
