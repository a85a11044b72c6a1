"""Market context per symbol: features kept incrementally from closed klines.

WHY incremental scalar math: the live trader, the backtest (target >= 200k bars/s) and the
position controller all feed one closed kline at a time.  Recomputing windows or building a
DataFrame per bar costs 100x what an O(1) recursion does, so every indicator here is a running
recursion (EMA / Wilder), a running window sum over a ring buffer (resynchronised from the ring
once per window so float drift cannot accumulate), or a monotonic deque (range high/low).
Plain Python floats and lists are used instead of numpy arrays on the per-bar path because a
numpy scalar read/write costs ~5x a list one; numpy is used where there are many values at once
(`MarketContextBank.features_matrix`, `compute_features_vectorized`).

Definitions (bar index t from 0; the vectorized reference implements the same ones):
- EMA(N), Wilder ATR(N), Wilder RSI(N) are seeded with the simple mean of their first N inputs
  (TA-Lib style) and then run `y = a*x + (1-a)*y` (EMA a = 2/(N+1), Wilder a = 1/N).  TR of the
  first bar is high-low; RSI inputs are close differences from bar 1.
- returns: log(close_t / close_{t-h}); realized vol: sqrt(mean of squared 1-bar log returns).
- distances and slopes of the EMAs are in ATR(14) units: (close-EMA)/ATR, (EMA_t-EMA_{t-5})/ATR.
- volume z-score of log1p(volume) over the last 60 bars (population std; 0 when std < 1e-9).
- candle ratios are over the bar's high-low range (0 for a zero range); body is signed.
- taker-buy ratio = taker_buy_volume / volume; 0.5 (neutral) when volume is 0 or the
  auxiliary columns are missing: taker volume NaN, or trades == 0 with volume > 0, which no
  real kline has (freqtrade-made files leave these columns empty and `Kline.from_rest_row`
  reads them as 0, so both spellings of "missing" give the same feature).
- trend regime in [-1, 1] = 0.5 * alignment + 0.5 * tanh(EMA50 slope in ATR), alignment =
  mean of sign(close-EMA20), sign(EMA20-EMA50), sign(EMA50-EMA200) (differences within
  1e-9 x close count as 0, so float noise between equal EMAs is not a trend).
- range: high/low of the 60 bars BEFORE this one; position (close-low)/(high-low) (0.5 if
  flat, > 1 on an upside breakout), width in ATR.
- time of day: sin/cos of the minute of day of the kline's open time (never the clock).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

FEATURES_VERSION = "mc-1"
FEATURE_NAMES: tuple[str, ...] = (
    "ret_1", "ret_5", "ret_15", "ret_60",
    "rvol_30", "rvol_60",
    "atr_pct", "atr_ratio",
    "rsi_14",
    "ema20_dist_atr", "ema50_dist_atr", "ema200_dist_atr",
    "ema20_slope_atr", "ema50_slope_atr", "ema200_slope_atr",
    "volume_z",
    "body_ratio", "upper_wick_ratio", "lower_wick_ratio",
    "taker_buy_ratio",
    "trend_regime",
    "range_pos", "range_width_atr",
    "tod_sin", "tod_cos",
)  # fmt: skip
N_FEATURES = len(FEATURE_NAMES)

RET_HORIZONS = (1, 5, 15, 60)  # spelled out in MarketContext.features_list
ATR_N = 14
ATR_SLOW_N = 100
RSI_N = 14
SLOPE_LAG = 5
WINDOW = 60  # realized vol 60, volume z-score, breakout range (rvol_30 uses its second half)
HALF = 30
CLOSE_RING = 61  # close_{t-60} for ret_60
SEEDED_AT = 200  # bar index from which every recursion runs (EMA200 seeds at 199)
WARMUP_BARS = 200 + SLOPE_LAG  # `ready` from this many bars: EMA200 and its 5-bar slope
VOLZ_MIN_STD = 1e-9
ALIGN_EPS = 1e-9  # relative dead zone of the EMA alignment signs
MINUTES_PER_DAY = 1440
_TWO_PI_PER_DAY = 2.0 * math.pi / MINUTES_PER_DAY

_A20, _A50, _A200 = 2.0 / 21.0, 2.0 / 51.0, 2.0 / 201.0
_B20, _B50, _B200 = 1.0 - _A20, 1.0 - _A50, 1.0 - _A200
_EMA_SLOT = {20: 0, 50: 1, 200: 2}
_AW, _AWS = 1.0 / ATR_N, 1.0 / ATR_SLOW_N
_BW, _BWS = 1.0 - _AW, 1.0 - _AWS


class BadKline(ValueError):
    """A kline that cannot be real (high < low, non-positive or NaN price, negative volume)."""

    def __init__(self, symbol: str, open_time: int, reason: str) -> None:
        self.symbol, self.open_time, self.reason = symbol, open_time, reason
        super().__init__(f"bad kline {symbol}@{open_time}: {reason}")


class ContextNotReady(RuntimeError):
    """Features asked for before the context has `WARMUP_BARS` bars."""

    def __init__(self, symbol: str, bars: int) -> None:
        self.symbol, self.bars = symbol, bars
        super().__init__(f"{symbol}: {bars} bars, need {WARMUP_BARS}")


def _sgn(x: float, eps: float) -> int:
    return 1 if x > eps else -1 if x < -eps else 0


def _seed_step(t: int, n: int, x: float, state: float, a: float, b: float) -> float:
    """SMA-seeded recursion: `state` is the running sum before bar n-1, the value after."""
    if t < n - 1:
        return state + x
    if t == n - 1:
        return (state + x) / n
    return a * x + b * state


class MarketContext:
    """Incremental features of one symbol.  Attributes are valid once `ready`."""

    __slots__ = (
        "symbol", "interval_ms", "n", "open_time", "open", "high", "low", "close", "volume",
        "quote_volume", "trades", "taker_buy_volume", "ema20", "ema50", "ema200", "atr",
        "atr_slow", "avg_gain", "avg_loss", "range_high", "range_low", "gaps", "ignored",
        "_closes", "_r2", "_s30", "_s60", "_lv", "_lv_mean", "_lv_m2", "_emas", "_dq_hi",
        "_dq_lo",
    )  # fmt: skip

    def __init__(self, symbol: str = "", interval_ms: int = 60_000) -> None:
        self.symbol, self.interval_ms = symbol, interval_ms
        self.n, self.open_time = 0, -1
        self.open = self.high = self.low = self.close = math.nan
        self.volume = self.quote_volume = self.taker_buy_volume = math.nan
        self.trades = 0
        self.ema20 = self.ema50 = self.ema200 = self.atr = self.atr_slow = 0.0
        self.avg_gain = self.avg_loss = 0.0
        self.range_high = self.range_low = math.nan
        self.gaps = self.ignored = 0
        self._closes = [0.0] * CLOSE_RING
        self._r2 = [0.0] * WINDOW
        self._s30 = self._s60 = 0.0
        self._lv = [0.0] * WINDOW
        self._lv_mean = self._lv_m2 = 0.0
        self._emas = [(0.0, 0.0, 0.0)] * (SLOPE_LAG + 1)  # (EMA20, EMA50, EMA200) ring
        self._dq_hi: deque[tuple[int, float]] = deque()
        self._dq_lo: deque[tuple[int, float]] = deque()

    @property
    def ready(self) -> bool:
        return self.n >= WARMUP_BARS

    def update(
        self,
        open_time: int,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float,
        quote_volume: float = math.nan,
        trades: int = 0,
        taker_buy_volume: float = math.nan,
    ) -> bool:
        """Apply one closed kline.  False (and `ignored` += 1) for a duplicate or older bar:
        replays and backfills may deliver a kline twice, and it must count once."""
        if open_time <= self.open_time:
            self.ignored += 1
            return False
        if not (0.0 < low <= open <= high and low <= close <= high and volume >= 0.0):
            raise BadKline(
                self.symbol, open_time, f"o={open} h={high} l={low} c={close} v={volume}"
            )
        if self.n and open_time != self.open_time + self.interval_ms:
            self.gaps += 1  # the feed backfills gaps; count them so health can show it
        t = self.n
        pc = self.close
        if t:
            tr = high - low
            x = high - pc if high > pc else pc - high
            if x > tr:
                tr = x
            x = low - pc if low > pc else pc - low
            if x > tr:
                tr = x
            r = math.log(close / pc)
            d = close - pc
        else:
            tr = high - low
            r = d = 0.0
        if t >= SEEDED_AT:
            e20 = self.ema20 = _A20 * close + _B20 * self.ema20
            e50 = self.ema50 = _A50 * close + _B50 * self.ema50
            e200 = self.ema200 = _A200 * close + _B200 * self.ema200
            self.atr = _AW * tr + _BW * self.atr
            self.atr_slow = _AWS * tr + _BWS * self.atr_slow
            self.avg_gain = _AW * (d if d > 0.0 else 0.0) + _BW * self.avg_gain
            self.avg_loss = _AW * (-d if d < 0.0 else 0.0) + _BW * self.avg_loss
            self._emas[t % (SLOPE_LAG + 1)] = (e20, e50, e200)
        else:
            self._seed(t, close, tr, d)
            self._emas[t % (SLOPE_LAG + 1)] = (self.ema20, self.ema50, self.ema200)
        self._closes[t % CLOSE_RING] = close
        self._push_windows(t, r * r, math.log1p(volume))
        # range of the WINDOW bars before t: monotonic deques, amortized O(1)
        hi, lo = self._dq_hi, self._dq_lo
        if t >= WINDOW:
            start = t - WINDOW
            if hi[0][0] < start:
                hi.popleft()
            if lo[0][0] < start:
                lo.popleft()
            self.range_high, self.range_low = hi[0][1], lo[0][1]
        while hi and hi[-1][1] <= high:
            hi.pop()
        hi.append((t, high))
        while lo and lo[-1][1] >= low:
            lo.pop()
        lo.append((t, low))
        self.n = t + 1
        self.open_time, self.open, self.high, self.low, self.close = (
            open_time,
            open,
            high,
            low,
            close,
        )
        self.volume, self.quote_volume, self.trades = volume, quote_volume, trades
        self.taker_buy_volume = taker_buy_volume
        return True

    def _seed(self, t: int, close: float, tr: float, d: float) -> None:
        """Warm-up path (first SEEDED_AT bars): SMA seeds, then the same recursions."""
        self.ema20 = _seed_step(t, 20, close, self.ema20, _A20, _B20)
        self.ema50 = _seed_step(t, 50, close, self.ema50, _A50, _B50)
        self.ema200 = _seed_step(t, 200, close, self.ema200, _A200, _B200)
        self.atr = _seed_step(t, ATR_N, tr, self.atr, _AW, _BW)
        self.atr_slow = _seed_step(t, ATR_SLOW_N, tr, self.atr_slow, _AWS, _BWS)
        if t:
            g, lo = (d if d > 0.0 else 0.0), (-d if d < 0.0 else 0.0)
            self.avg_gain = _seed_step(t - 1, RSI_N, g, self.avg_gain, _AW, _BW)
            self.avg_loss = _seed_step(t - 1, RSI_N, lo, self.avg_loss, _AW, _BW)

    def _push_windows(self, t: int, r2: float, lv: float) -> None:
        """Running sums of r^2 (30/60 bars) and a sliding Welford mean/M2 of log volume."""
        i = t % WINDOW
        ring = self._r2
        old = ring[i]
        ring[i] = r2
        self._s60 += r2 - old
        self._s30 += r2 - ring[(t - HALF) % WINDOW]
        lvr = self._lv
        mean = self._lv_mean
        if t < WINDOW:
            dx = lv - mean
            mean += dx / (t + 1)
            self._lv_m2 += dx * (lv - mean)
        else:
            old = lvr[i]
            dx = lv - old
            new_mean = mean + dx / WINDOW
            self._lv_m2 += dx * (lv - new_mean + old - mean)
            mean = new_mean
        lvr[i] = lv
        self._lv_mean = mean
        if i == WINDOW - 1:  # once per window: exact sums from the rings, so no drift
            self._s60 = sum(ring)
            self._s30 = sum(ring[HALF:])
            mean = sum(lvr) / WINDOW
            self._lv_mean = mean
            self._lv_m2 = sum([(v - mean) * (v - mean) for v in lvr])

    # ---- derived values (lazy: computed only when a signal or a model asks) ------------
    def rsi(self) -> float:
        ag, al = self.avg_gain, self.avg_loss
        if al == 0.0:
            return 50.0 if ag == 0.0 else 100.0
        return 100.0 - 100.0 / (1.0 + ag / al)

    def volume_z(self) -> float:
        std = math.sqrt(max(self._lv_m2, 0.0) / WINDOW)
        if std < VOLZ_MIN_STD:
            return 0.0
        return (self._lv[(self.n - 1) % WINDOW] - self._lv_mean) / std

    def atr_ratio(self) -> float:
        return self.atr / self.atr_slow if self.atr_slow > 0.0 else 1.0

    def ema_slope_atr(self, which: int) -> float:
        """(EMA_t - EMA_{t-5}) / ATR for which in (20, 50, 200)."""
        j = _EMA_SLOT[which]
        if self.atr <= 0.0:
            return 0.0
        t = self.n - 1
        ring = self._emas
        return (
            ring[t % (SLOPE_LAG + 1)][j] - ring[(t - SLOPE_LAG) % (SLOPE_LAG + 1)][j]
        ) / self.atr

    def trend_regime(self) -> float:
        """Signed trend strength in [-1, 1] (see module doc); shared with the position
        controller's counter-trend rule, so both read one definition."""
        c, e20, e50, e200 = self.close, self.ema20, self.ema50, self.ema200
        eps = ALIGN_EPS * c  # float noise between equal EMAs must not read as a trend
        align = (_sgn(c - e20, eps) + _sgn(e20 - e50, eps) + _sgn(e50 - e200, eps)) / 3.0
        return 0.5 * align + 0.5 * math.tanh(self.ema_slope_atr(50))

    def features_list(self) -> list[float]:
        """The feature row as Python floats, in FEATURE_NAMES order.

        The helpers above (rsi, volume_z, atr_ratio, ema_slope_atr, trend_regime) are
        inlined here with the very same float operations in the same order - the results
        are bit-identical (tests/test_market_context.py) - because the trader builds one row
        per symbol at every minute close, on its latency path."""
        t = self.n - 1
        if t < WARMUP_BARS - 1:
            raise ContextNotReady(self.symbol, self.n)
        c, atr, e20, e50, e200 = self.close, self.atr, self.ema20, self.ema50, self.ema200
        ia = 1.0 / atr if atr > 0.0 else 0.0
        cl, log = self._closes, math.log
        ring = self._emas
        now, old = ring[t % (SLOPE_LAG + 1)], ring[(t - SLOPE_LAG) % (SLOPE_LAG + 1)]
        if atr <= 0.0:  # as ema_slope_atr (a NaN ATR gives NaN slopes there too)
            s20 = s50 = s200 = 0.0
        else:
            s20 = (now[0] - old[0]) / atr
            s50 = (now[1] - old[1]) / atr
            s200 = (now[2] - old[2]) / atr
        ag, al = self.avg_gain, self.avg_loss
        if al == 0.0:
            rsi = 50.0 if ag == 0.0 else 100.0
        else:
            rsi = 100.0 - 100.0 / (1.0 + ag / al)
        m2 = self._lv_m2
        std = math.sqrt((0.0 if 0.0 > m2 else m2) / WINDOW)  # = max(m2, 0.0), NaN and -0.0 too
        vz = 0.0 if std < VOLZ_MIN_STD else (self._lv[t % WINDOW] - self._lv_mean) / std
        eps = ALIGN_EPS * c
        d1, d2, d3 = c - e20, e20 - e50, e50 - e200
        align = (
            (1 if d1 > eps else -1 if d1 < -eps else 0)
            + (1 if d2 > eps else -1 if d2 < -eps else 0)
            + (1 if d3 > eps else -1 if d3 < -eps else 0)
        ) / 3.0
        o, h, lo = self.open, self.high, self.low
        rng = h - lo
        ir = 1.0 / rng if rng > 0.0 else 0.0
        v, tb = self.volume, self.taker_buy_volume
        rh, rl = self.range_high, self.range_low
        s30, s60 = self._s30, self._s60
        ang = ((self.open_time // 60_000) % MINUTES_PER_DAY) * _TWO_PI_PER_DAY
        return [  # RET_HORIZONS = (1, 5, 15, 60)  # spelled out in MarketContext.features_list
            log(c / cl[(t - 1) % CLOSE_RING]), log(c / cl[(t - 5) % CLOSE_RING]),
            log(c / cl[(t - 15) % CLOSE_RING]), log(c / cl[(t - 60) % CLOSE_RING]),
            math.sqrt((0.0 if 0.0 > s30 else s30) / HALF),
            math.sqrt((0.0 if 0.0 > s60 else s60) / WINDOW),
            atr / c, atr / self.atr_slow if self.atr_slow > 0.0 else 1.0, rsi,
            (c - e20) * ia, (c - e50) * ia, (c - e200) * ia,
            s20, s50, s200,
            vz,
            (c - o) * ir, (h - (o if o > c else c)) * ir, ((c if o > c else o) - lo) * ir,
            min(max(tb / v, 0.0), 1.0) if v > 0.0 and tb == tb and self.trades > 0 else 0.5,
            0.5 * align + 0.5 * math.tanh(s50),
            (c - rl) / (rh - rl) if rh > rl else 0.5, (rh - rl) * ia,
            math.sin(ang), math.cos(ang),
        ]  # fmt: skip

    def features(self) -> np.ndarray:
        return np.array(self.features_list(), dtype=np.float64)


class MarketContextBank:
    """All symbols' contexts; builds one feature matrix for one batched model call."""

    def __init__(self, symbols: Iterable[str] = (), interval_ms: int = 60_000) -> None:
        self.interval_ms = interval_ms
        self._ctx: dict[str, MarketContext] = {}
        for s in symbols:
            self.get(s)

    @property
    def contexts(self) -> dict[str, MarketContext]:
        """The live symbol -> context mapping (for hot loops; do not replace entries)."""
        return self._ctx

    def get(self, symbol: str) -> MarketContext:
        ctx = self._ctx.get(symbol)
        if ctx is None:
            ctx = self._ctx[symbol] = MarketContext(symbol, self.interval_ms)
        return ctx

    def __getitem__(self, symbol: str) -> MarketContext:
        return self._ctx[symbol]

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._ctx

    @property
    def symbols(self) -> list[str]:
        return sorted(self._ctx)

    def update(self, symbol: str, *fields: float) -> bool:
        return self.get(symbol).update(*fields)  # type: ignore[arg-type]

    def features_matrix(self, symbols: Sequence[str]) -> np.ndarray:
        """(len(symbols), N_FEATURES); a row of NaN for a symbol that is not ready."""
        out = np.full((len(symbols), N_FEATURES), np.nan)
        for i, s in enumerate(symbols):
            ctx = self._ctx.get(s)
            if ctx is not None and ctx.ready:
                out[i] = ctx.features_list()
        return out


# ---- vectorized reference -------------------------------------------------------------
def _seeded_filter(x: np.ndarray, n: int, a: float) -> np.ndarray:
    """SMA-seeded `y = a*x + (1-a)*y` over a whole array (NaN before index n-1)."""
    from scipy.signal import lfilter

    y = np.full(len(x), np.nan)
    if len(x) < n:
        return y
    y0 = np.cumsum(x[:n])[-1] / n  # sequential sum, as the incremental path adds
    y[n - 1] = y0
    if len(x) > n:
        y[n:] = lfilter([a], [1.0, -(1.0 - a)], x[n:], zi=[(1.0 - a) * y0])[0]
    return y


def _rolling(x: np.ndarray, w: int, fn: str, shift: int = 0) -> np.ndarray:
    """fn over x[t-w+1-shift .. t-shift] at each t (NaN where incomplete)."""
    from numpy.lib.stride_tricks import sliding_window_view

    y = np.full(len(x), np.nan)
    if len(x) >= w + shift:
        y[w - 1 + shift :] = getattr(sliding_window_view(x, w), fn)(axis=1)[
            : len(x) - w + 1 - shift
        ]
    return y


def compute_features_vectorized(
    open_time: np.ndarray,
    open: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    taker_buy_volume: np.ndarray | None = None,
    trades: np.ndarray | None = None,
) -> np.ndarray:
    """Features of every bar at once, (n, N_FEATURES), NaN before WARMUP_BARS-1.

    Same definitions as `MarketContext` (checked equal in tests); used as the benchmark
    reference and for batch work over history.  Assumes contiguous, increasing bars."""
    o, h, lo, c, v = (np.asarray(a, dtype=np.float64) for a in (open, high, low, close, volume))
    n = len(c)
    out = np.full((n, N_FEATURES), np.nan)
    if n < WARMUP_BARS:
        return out
    tr = h - lo
    tr[1:] = np.maximum(tr[1:], np.maximum(np.abs(h[1:] - c[:-1]), np.abs(lo[1:] - c[:-1])))
    e20, e50, e200 = (_seeded_filter(c, k, 2.0 / (k + 1)) for k in (20, 50, 200))
    atr, atr_slow = _seeded_filter(tr, ATR_N, _AW), _seeded_filter(tr, ATR_SLOW_N, _AWS)
    d = np.diff(c)
    ag, al = np.full(n, np.nan), np.full(n, np.nan)
    ag[1:] = _seeded_filter(np.where(d > 0, d, 0.0), RSI_N, _AW)
    al[1:] = _seeded_filter(np.where(d < 0, -d, 0.0), RSI_N, _AW)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(al == 0.0, np.where(ag == 0.0, 50.0, 100.0), 100.0 - 100.0 / (1.0 + ag / al))
        ia = np.where(atr > 0.0, 1.0 / atr, 0.0)
        r2 = np.zeros(n)
        r2[1:] = np.log(c[1:] / c[:-1]) ** 2
        cols: list[np.ndarray] = []
        for hz in RET_HORIZONS:
            ret = np.full(n, np.nan)
            ret[hz:] = np.log(c[hz:] / c[:-hz])
            cols.append(ret)
        cols += [np.sqrt(_rolling(r2, HALF, "mean")), np.sqrt(_rolling(r2, WINDOW, "mean"))]
        cols += [atr / c, np.where(atr_slow > 0.0, atr / atr_slow, 1.0), rsi]
        cols += [(c - e) * ia for e in (e20, e50, e200)]
        slopes = []
        for e in (e20, e50, e200):
            s = np.full(n, np.nan)
            s[SLOPE_LAG:] = (e[SLOPE_LAG:] - e[:-SLOPE_LAG]) * ia[SLOPE_LAG:]
            slopes.append(np.where(atr > 0.0, s, 0.0))
        cols += slopes
        lv = np.log1p(v)
        mean, std = _rolling(lv, WINDOW, "mean"), _rolling(lv, WINDOW, "std")
        cols.append(np.where(std < VOLZ_MIN_STD, 0.0, (lv - mean) / std))
        rng = h - lo
        ir = np.where(rng > 0.0, 1.0 / rng, 0.0)
        cols += [(c - o) * ir, (h - np.maximum(o, c)) * ir, (np.minimum(o, c) - lo) * ir]
        tb = np.full(n, np.nan) if taker_buy_volume is None else np.asarray(taker_buy_volume, float)
        nt = np.zeros(n) if trades is None else np.asarray(trades, float)
        ok = (v > 0.0) & ~np.isnan(tb) & (nt > 0)
        cols.append(np.where(ok, np.clip(tb / np.where(v > 0.0, v, 1.0), 0.0, 1.0), 0.5))
        eps = ALIGN_EPS * c
        align = (
            sum(
                np.where(np.abs(x) <= eps, 0.0, np.sign(x))
                for x in (c - e20, e20 - e50, e50 - e200)
            )
            / 3.0
        )
        cols.append(0.5 * align + 0.5 * np.tanh(slopes[1]))
        rh, rl = _rolling(h, WINDOW, "max", shift=1), _rolling(lo, WINDOW, "min", shift=1)
        cols += [np.where(rh > rl, (c - rl) / (rh - rl), 0.5), (rh - rl) * ia]
        ang = ((np.asarray(open_time, np.int64) // 60_000) % MINUTES_PER_DAY) * _TWO_PI_PER_DAY
        cols += [np.sin(ang), np.cos(ang)]
    out[:] = np.column_stack(cols)
    out[: WARMUP_BARS - 1] = np.nan
    return out
