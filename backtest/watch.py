"""Fast mode: when can a bar of an open position change anything?

The full loop ticks the engine through every bar's intra-bar path and shows every tick to
the position controller, for every symbol with a position or an order.  Nearly all of those
ticks do nothing: a stop 2 ATR away is not touched, no rule fires.  This module tells, from
floats the runner already has, when a bar MAY do something - then the bar gets the full
treatment; otherwise it is skipped.  It never decides anything itself: a false alarm costs
time, never a different result; a missed wake would be a bug, and the equivalence test
(fast and full runs give the same trades) is what guards against it.

A bar of symbol s wakes when
- its [low, high] reaches a price level: an open conditional order's trigger or a resting
  limit (engine), the entry's invalidation level, the emergency level (PnL on margin at
  `risk.emergency_close_pnl`), or the liquidation band (half way from the price at the
  last check to the engine's liquidation price, and at least 2x `liquidation_buffer` out);
- its time span reaches a time level not yet evaluated: the no-progress and time-stop
  deadlines of the position, the next funding time;
and, at the bar's close, when the counter-trend rule may fire (trend against the position
at least `counter_trend_min_strength`, confidence at least `counter_trend_confidence`).

Levels are recomputed only when the symbol's state changed (an event) or after a wake.
A band edge is widened by `EPS` (relative) so float rounding can only wake early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backtest.broker import SimBroker
from services.position_controller.core import PositionControllerCore
from services.position_controller.rules import RuleConfig, trend_view
from shared.market_context import MarketContext

EPS = 1e-7
_INF = math.inf


@dataclass(slots=True)
class Band:
    low: float  # wake when the bar's low <= this
    high: float  # wake when the bar's high >= this
    time: float  # wake when the bar ends at or after this (ms): a rule's deadline
    funding: float  # wake when the bar starts at or after this: the engine pays funding
    liq_low: float = -_INF  # the liquidation part of the band (asks for a sweep)
    liq_high: float = _INF


_ALWAYS = Band(_INF, -_INF, -_INF, -_INF)  # no reference price yet: every bar wakes


class Watcher:
    def __init__(
        self, broker: SimBroker, pc: PositionControllerCore, rules: RuleConfig, interval_ms: int
    ) -> None:
        self.broker, self.pc, self.rules = broker, pc, rules
        self.interval_ms = interval_ms
        self.bands: dict[str, Band] = {}
        self.evaluated_to: dict[str, int] = {}  # last time the symbol was fully processed
        self.need_sweep = False
        self.near_liquidation: set[str] = set()  # inside their liquidation band
        self.liq_in_pc: set[str] = set()  # liquidation prices the controller holds
        self.wakes = 0
        self.recomputes = 0
        broker.on_change = self.touch

    def touch(self, symbol: str) -> None:
        self.bands.pop(symbol, None)
        if not self.broker.amount.get(symbol):
            self.near_liquidation.discard(symbol)
            if symbol in self.liq_in_pc:
                self.need_sweep = True  # a stale liquidation price must not meet a new position

    def touch_all(self) -> None:
        """The wallet moved (a fill elsewhere, funding): liquidation prices of cross
        positions moved too."""
        for s in list(self.bands):
            self.touch(s)

    def due(self, symbol: str, low: float, high: float, t_start: int, t_end: int) -> bool:
        """True if the bar [t_start, t_end] of `symbol` may change anything."""
        band = self.bands.get(symbol)
        if band is None:
            band = self.bands[symbol] = self._band(symbol)
        if low <= band.low or high >= band.high or t_end >= band.time or t_start >= band.funding:
            if low <= band.liq_low or high >= band.liq_high:
                self.need_sweep = True
                self.near_liquidation.add(symbol)
            self.wakes += 1
            return True
        return False

    def processed(self, symbol: str, t_end: int) -> None:
        """The symbol was ticked and evaluated through `t_end`: recompute its band."""
        self.evaluated_to[symbol] = t_end
        self.touch(symbol)

    def may_counter_trend(self, ctx: MarketContext, direction: int) -> bool:
        """The counter-trend rule's own trend condition (rules.counter_trend_rule), from
        the same context the trader keeps; the entry exemption is left to the rule."""
        cfg = self.rules
        if not cfg.counter_trend_enabled:
            return False
        tv = trend_view(ctx)
        return (-tv.trend * direction >= cfg.counter_trend_min_strength
                and tv.confidence >= cfg.counter_trend_confidence)  # fmt: skip

    # ---- levels ----------------------------------------------------------------------
    def _band(self, symbol: str) -> Band:
        self.recomputes += 1
        b = self.broker
        ref = b.last.get(symbol)
        if ref is None:
            return _ALWAYS
        levels = [p for p, _ in b.algos.get(symbol, {}).values()]
        levels += b.limits.get(symbol, {}).values()
        times: list[float] = []
        liq_low, liq_high, funding = -_INF, _INF, _INF
        amt = b.amount.get(symbol, 0.0)
        if amt:
            funding = self._next_funding(symbol)
            times += self.time_levels(symbol)
            levels += self._position_levels(symbol, amt)
            liq_low, liq_high = self._liquidation_band(symbol, amt, ref)
        lo = max((p for p in levels if p < ref), default=-_INF)
        hi = min((p for p in levels if p > ref), default=_INF)
        if any(p == ref for p in levels):
            lo, hi = _INF, -_INF  # sitting on a level: every bar wakes until it moves
        lo, hi = max(lo, liq_low), min(hi, liq_high)
        done = self.evaluated_to.get(symbol, -1)
        t_next = min((t for t in times if t > done), default=_INF)
        return Band(lo * (1 + EPS), hi * (1 - EPS), t_next, funding, liq_low, liq_high)

    def _next_funding(self, symbol: str) -> float:
        """The engine pays at its first tick at or after each multiple of the interval."""
        iv = self.broker.funding_interval_ms
        return (self.broker.last_ts.get(symbol, 0) // iv + 1) * iv

    def _position_levels(self, symbol: str, amt: float) -> list[float]:
        """Price levels of the position controller's rules for this position."""
        cfg, b, out = self.rules, self.broker, []
        if self.pc.open_time(symbol) is not None:
            view = self.pc.view(symbol)
            d = view.matching_decision()
            if cfg.invalidation_enabled and d is not None and d.invalidation_price is not None:
                out.append(float(d.invalidation_price))
        lev = b.leverage.get(symbol)
        if cfg.emergency_enabled and lev:
            e = float(cfg.emergency_close_pnl)
            out.append(b.entry[symbol] * (1.0 + (e if amt > 0 else -e) / lev))
        return out

    def time_levels(self, symbol: str) -> list[float]:
        """No-progress and time-stop deadlines of the tracked position."""
        opened = self.pc.open_time(symbol)
        if opened is None:
            return []
        cfg, out = self.rules, []
        if cfg.invalidation_enabled:
            out.append(opened + cfg.no_progress_ms)
        if cfg.time_stop_enabled:
            out.append(opened + cfg.max_holding_ms)
        return out

    def _liquidation_band(self, symbol: str, amt: float, ref: float) -> tuple[float, float]:
        liq = self.broker.liquidation_price(symbol)
        if liq <= 0:
            return -_INF, _INF
        buf = float(self.rules.liquidation_buffer)
        if amt > 0:
            return max(liq + 0.5 * (ref - liq), liq / max(1e-9, 1.0 - 2.0 * buf)), _INF
        return -_INF, min(liq - 0.5 * (liq - ref), liq / (1.0 + 2.0 * buf))
