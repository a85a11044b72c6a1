"""Seeded synthetic klines: trends, switching volatility regimes, jumps, realistic volume.

Why chunks: a run may ask for 200 symbols × weeks of 1m bars, in any order (REST backfills jump
back in time, WS streams move forward). Bars are generated one day-sized chunk at a time with
numpy; chunk k of a symbol depends only on (seed, symbol, k) and the state its predecessor
ended in (last close, regime, drift), so any bar is the same however and whenever it is asked
for. A few chunks per symbol stay cached; start states are kept for all chunks generated.

Model per bar, for log price: drift of the current regime segment + weak pull towards the
symbol's base price + volatility (regime × intraday U-shape) × Student-t noise + rare jumps.
Regimes (calm / normal / volatile) switch at random, each switch drawing a new drift (trend).
Volume follows the intraday U-shape and grows with |return|; taker-buy share leans with return.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..specs import SymbolSpec, default_spec
from .bar import Bar, MarketBase

YEAR_MS = 365 * 86_400_000
REGIME_VOL = np.array([0.5, 1.0, 2.4])
REGIME_P = np.array([0.3, 0.5, 0.2])

BASE_PRICES = {
    "BTCUSDT": 30000.0, "ETHUSDT": 1900.0, "BNBUSDT": 240.0, "SOLUSDT": 25.0, "XRPUSDT": 0.6,
    "DOGEUSDT": 0.07, "ADAUSDT": 0.3, "AVAXUSDT": 15.0, "LINKUSDT": 7.0, "DOTUSDT": 5.0,
    "TRXUSDT": 0.08, "LTCUSDT": 80.0, "BCHUSDT": 200.0, "ATOMUSDT": 9.0, "NEARUSDT": 1.5,
    "APTUSDT": 7.0, "ARBUSDT": 1.1, "OPUSDT": 1.5, "FILUSDT": 4.0, "ETCUSDT": 16.0,
}  # fmt: skip


def _h(*parts: object) -> int:
    """Stable 64-bit hash (Python's `hash` changes per process)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class SymbolModel:
    spec: SymbolSpec
    base_price: float
    annual_vol: float
    quote_volume_per_min: float  # USDT traded per average minute
    tick: float
    step: float


@dataclass(frozen=True, slots=True)
class ChunkState:
    price: float
    regime: int
    drift: float


def _model(symbol: str, seed: int, base_price: float | None) -> SymbolModel:
    h = _h(seed, symbol, "model")
    u1, u2, u3 = ((h >> s) % 10_000 / 10_000 for s in (0, 16, 32))
    if base_price is None:
        base_price = BASE_PRICES.get(symbol) or float(10 ** (-2 + 5 * u1))
    spec = default_spec(symbol, base_price)
    major = symbol in ("BTCUSDT", "ETHUSDT")
    vol = (0.45 + 0.2 * u2) if major else (0.7 + 0.6 * u2)
    qv = 2e6 if symbol == "BTCUSDT" else 8e5 if major else 2e4 + 3e5 * u3
    return SymbolModel(spec, base_price, vol, qv, float(spec.tick_size), float(spec.step_size))


def _season(times: np.ndarray) -> np.ndarray:
    """Intraday U-shape (UTC) with a bump at the US open; mean ≈ 1."""
    m = (times // 60_000) % 1440
    x = (m - 720.0) / 720.0
    s = 0.7 + 0.6 * x * x + 0.5 * np.exp(-(((m - 870.0) / 60.0) ** 2))
    return s / 0.95


class SyntheticMarket(MarketBase):
    """Deterministic synthetic bars for many symbols, generated lazily by chunk."""

    def __init__(
        self,
        symbols: list[str],
        seed: int,
        start_ms: int,
        interval_ms: int = 60_000,
        base_prices: dict[str, float] | None = None,
        chunk_bars: int = 1440,
        cache_chunks: int = 3,
    ) -> None:
        if interval_ms <= 0 or chunk_bars <= 0:
            raise ValueError("interval_ms and chunk_bars must be positive")
        self._symbols = [s.upper() for s in symbols]
        self.seed = int(seed)
        self.interval_ms = int(interval_ms)
        self.start_ms = int(start_ms) - int(start_ms) % self.interval_ms
        self.chunk_bars = int(chunk_bars)
        self._cache_chunks = max(1, cache_chunks)
        bp = {k.upper(): v for k, v in (base_prices or {}).items()}
        self._models = {s: _model(s, self.seed, bp.get(s)) for s in self._symbols}
        self._states: dict[str, list[ChunkState]] = {
            s: [ChunkState(self._round(m.base_price, m.tick), 1, 0.0)]
            for s, m in self._models.items()
        }
        self._chunks: dict[str, OrderedDict[int, dict[str, np.ndarray]]] = {
            s: OrderedDict() for s in self._symbols
        }

    @staticmethod
    def _round(x: float, tick: float) -> float:
        dp = max(0, -int(math.floor(math.log10(tick) + 1e-9)))
        return round(round(x / tick) * tick, dp)

    def specs(self) -> dict[str, SymbolSpec]:
        return {s: m.spec for s, m in self._models.items()}

    def bar(self, symbol: str, index: int) -> Bar | None:
        if index < 0 or symbol not in self._models:
            return None
        k, i = divmod(index, self.chunk_bars)
        c = self._chunk(symbol, k)
        spec = self._models[symbol].spec
        open_time = self.start_ms + index * self.interval_ms
        return Bar(
            symbol, open_time, open_time + self.interval_ms - 1,
            float(c["o"][i]), float(c["h"][i]), float(c["l"][i]), float(c["c"][i]),
            float(c["v"][i]), float(c["q"][i]), int(c["n"][i]), float(c["tv"][i]), float(c["tq"][i]),
            spec.price_precision, spec.quantity_precision,
        )  # fmt: skip

    def regime(self, symbol: str, index: int) -> int:
        """Volatility regime (0 calm, 1 normal, 2 volatile) of a bar; for tests and reports."""
        k, i = divmod(index, self.chunk_bars)
        return int(self._chunk(symbol, k)["regime"][i])

    def arrays(self, symbol: str, first: int, count: int) -> dict[str, np.ndarray]:
        """Columns for `count` bars from index `first` (fast path for backtests)."""
        parts: dict[str, list[np.ndarray]] = {}
        idx = first
        end = first + count
        while idx < end:
            k, i = divmod(idx, self.chunk_bars)
            take = min(self.chunk_bars - i, end - idx)
            for key, arr in self._chunk(symbol, k).items():
                parts.setdefault(key, []).append(arr[i : i + take])
            idx += take
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["open_time"] = (
            self.start_ms + (first + np.arange(count, dtype=np.int64)) * self.interval_ms
        )
        return out

    # -------------------------------------------------------------- generation
    def _chunk(self, symbol: str, k: int) -> dict[str, np.ndarray]:
        cache = self._chunks[symbol]
        hit = cache.get(k)
        if hit is not None:
            cache.move_to_end(k)
            return hit
        states = self._states[symbol]
        while len(states) <= k:  # walk forward to learn chunk k's start state
            data, end_state = self._generate(symbol, len(states) - 1, states[-1])
            states.append(end_state)
            self._remember(cache, len(states) - 2, data)
        data, _ = self._generate(symbol, k, states[k])
        self._remember(cache, k, data)
        return data

    def _remember(
        self, cache: OrderedDict[int, dict[str, np.ndarray]], k: int, data: dict[str, np.ndarray]
    ) -> None:
        cache[k] = data
        cache.move_to_end(k)
        while len(cache) > self._cache_chunks:
            cache.popitem(last=False)

    def _generate(
        self, symbol: str, k: int, state: ChunkState
    ) -> tuple[dict[str, np.ndarray], ChunkState]:
        m = self._models[symbol]
        n = self.chunk_bars
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, _h(symbol) & 0xFFFFFFFF, k])
        times = self.start_ms + (k * n + np.arange(n, dtype=np.int64)) * self.interval_ms
        sigma = m.annual_vol * math.sqrt(self.interval_ms / YEAR_MS)
        arange = np.arange(n)
        switch = rng.random(n) < self.interval_ms / (4 * 3_600_000)  # a regime lasts ~4 h
        new_reg = rng.choice(3, size=n, p=REGIME_P)
        new_drift = rng.normal(0.0, 0.08 * sigma, n)
        last_sw = np.maximum.accumulate(np.where(switch, arange, -1))
        regime = np.where(last_sw >= 0, new_reg[np.maximum(last_sw, 0)], state.regime)
        drift = np.where(last_sw >= 0, new_drift[np.maximum(last_sw, 0)], state.drift)
        season = _season(times)
        pull = (
            -math.log(state.price / m.base_price)
            * math.log(2)
            / (30 * 86_400_000 / self.interval_ms)
        )
        vol = sigma * REGIME_VOL[regime] * np.sqrt(season)
        eps = rng.standard_t(4, n) / math.sqrt(2.0)
        jumps = (rng.random(n) < 1 / 3000) * rng.normal(0.0, 12 * sigma, n)
        ret = drift + pull + vol * eps + jumps
        close_raw = state.price * np.exp(np.cumsum(ret))
        tick, dp = m.tick, max(0, -int(math.floor(math.log10(m.tick) + 1e-9)))
        c = np.maximum(np.round(np.round(close_raw / tick) * tick, dp), tick)
        o = np.concatenate(([state.price], c[:-1]))
        wick_hi = np.abs(rng.normal(0.0, 0.6, n)) * vol
        wick_lo = np.abs(rng.normal(0.0, 0.6, n)) * vol
        h = np.round(np.ceil(np.maximum(o, c) * np.exp(wick_hi) / tick - 1e-9) * tick, dp)
        lo = np.round(np.floor(np.minimum(o, c) * np.exp(-wick_lo) / tick + 1e-9) * tick, dp)
        h = np.maximum(h, np.maximum(o, c))
        lo = np.maximum(np.minimum(lo, np.minimum(o, c)), tick)
        data = self._volumes(m, rng, o, h, lo, c, ret / sigma, season)
        data.update({"o": o, "h": h, "l": lo, "c": c, "regime": regime.astype(np.int8)})
        end = ChunkState(float(c[-1]), int(regime[-1]), float(drift[-1]))
        return data, end

    def _volumes(self, m: SymbolModel, rng: np.random.Generator, o: np.ndarray, h: np.ndarray,
                 lo: np.ndarray, c: np.ndarray, z: np.ndarray, season: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
        n = len(c)
        scale = self.interval_ms / 60_000
        typical = (h + lo + c) / 3.0
        qdp = max(0, -int(math.floor(math.log10(m.step) + 1e-9)))
        quote_dp = m.spec.price_precision + qdp
        usdt = (
            m.quote_volume_per_min
            * scale
            * season
            * (0.6 + 0.8 * np.minimum(np.abs(z), 6))
            * rng.lognormal(0, 0.35, n)
        )
        v = np.maximum(np.round(np.round(usdt / typical / m.step) * m.step, qdp), m.step)
        q = np.round(v * typical, quote_dp)
        trades = np.maximum(1, np.round(usdt / (600.0 * rng.lognormal(0, 0.3, n)))).astype(np.int64)
        share = np.clip(0.5 + 0.2 * np.tanh(z) + rng.normal(0.0, 0.05, n), 0.05, 0.95)
        tv = np.round(np.round(v * share / m.step) * m.step, qdp)
        tq = np.round(tv * typical, quote_dp)
        return {"v": v, "q": q, "n": trades, "tv": tv, "tq": tq}
