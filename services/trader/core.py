"""`TraderCore`: the trader's pure decision core, shared by the service and the backtest.

Feed it closed klines (`on_closed_kline`), ask it at each minute close (`decide`), tell it
about closed trades (`on_closed_trade`).  No Redis, no sockets, no clock: every time is an
argument, so the same inputs give the same decisions, in the live service and in a replay.

Per minute: the candidates produced by that minute's klines are scored by the model in ONE
batched call, get a leverage (win rate x confidence, leverage.py) and a size (sizing.py),
and compete for the free slots (ranking.py).  Every candidate becomes a `Decision` (taken or
not, with its reason) for `slt:stream:signals`; a taken one carries its `OrderIntent`s -
entry, then STOP_MARKET and TAKE_PROFIT_MARKET with closePosition=true - with deterministic
client order ids, and the `DecisionRecord` that later labels the closed trade.

The model boundary: any exception from the model (or a non-finite / out-of-range output)
is logged and counted, and that minute's candidates are decided with reason `model_error`;
a failing model never turns into an order.  With no trained model yet, the signal's own
score is the confidence and the model version reads `baseline`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from services.trader import ranking
from services.trader.leverage import WinRateTracker, compute_leverage, leverage_many
from services.trader.order_ids import client_order_id
from services.trader.signals import (
    MODEL_FEATURE_NAMES,
    Candidate,
    ModelInputs,
    SignalParams,
    evaluate,
    model_matrix,
    model_row,
)
from services.trader.sizing import SizedEntry, SizingSkip, size_entry, within_brackets
from shared.brackets import Bracket
from shared.filters import SymbolFilters
from shared.market_context import BadKline, MarketContextBank
from shared.models import ClosedTrade, DecisionRecord, OrderIntent

log = logging.getLogger(__name__)

BASELINE_VERSION = "baseline"
NO_FILTERS = "no_filters"
STRATEGY_VERSION = "slt-1"
# decide's scalar path up to this many candidates, the array path above.  WHY: numpy's fixed
# cost per operation (~1 us, ~40 operations) dominates a usual minute of 1-3 candidates
# (bench/bench_trader_core.py part (c), learner off: scalar saves ~39 us at 1 candidate,
# ~33 at 8, ~13 at 24).  8 stays well below that crossover, leaving room for the model
# case, where the scalar path also turns its rows into an array for predict.
SCALAR_MAX = 8


@dataclass(frozen=True, slots=True)
class Decision:
    """One ranked candidate of one minute; `intents` only when taken."""

    symbol: str
    side: str
    strategy: str
    minute_open_time: int
    rank: int
    taken: bool
    reason: str
    score: float
    confidence: float
    expected_value: float
    win_rate: float
    leverage: int
    model_version: str
    signal_reasons: tuple[str, ...] = ()
    detail: str = ""
    intents: tuple[OrderIntent, ...] = ()
    record: DecisionRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(zip(_DECISION_PLAIN, _decision_plain(self), strict=True))
        d["signal_reasons"] = list(self.signal_reasons)
        d["intents"] = [i.to_dict() for i in self.intents]
        d["record"] = None if self.record is None else self.record.to_dict()
        return d


# Decision.to_dict runs for every published decision (hundreds a minute): one C-level
# attribute fetch instead of a getattr per field.
_DECISION_PLAIN = tuple(k for k in Decision.__dataclass_fields__ if k not in ("intents", "record"))
_decision_plain = attrgetter(*_DECISION_PLAIN)


@dataclass(slots=True)
class CoreCounters:
    klines: int = 0
    duplicate_klines: int = 0
    bad_klines: int = 0
    candidates: int = 0
    model_errors: int = 0
    sample_errors: int = 0
    trades: int = 0
    last_error: str = field(default="")


def _open_exposure(positions: Mapping[str, Any]) -> tuple[list[str], float]:
    """(symbols held, sum of |size| x entry price).  A value may be a `Position`-like object
    (held while its size is not 0) or a plain notional number (held while not 0)."""
    held, total = [], 0.0
    for symbol, p in positions.items():
        if isinstance(p, int | float | Decimal):
            size = notional = abs(float(p))
        else:
            size = abs(float(p.size))
            notional = size * float(p.entry_price)
        if size > 0.0:
            held.append(symbol)
            total += notional
    return held, total


class _Version(NamedTuple):
    name: str  # model version (or baseline)
    error: str | None  # model_error when the model failed this minute


# (model rows, confidences, version, leverages, EVs) of a minute's candidates
_Numbers = tuple[np.ndarray | list[list[float]], list[float], _Version, list[int], list[float]]


def _ratio(reward: float, risk: float) -> float:
    """reward / risk as numpy divides (inf or nan for a zero risk, which compute_leverage
    refuses with the same LeverageInputError as leverage_many)."""
    if risk == 0.0:
        return math.inf if reward > 0.0 else math.nan
    return reward / risk


class TraderCore:
    def __init__(
        self,
        settings: Any,
        filters: Mapping[str, SymbolFilters],
        learner: Any = None,
        *,
        signal_params: SignalParams | None = None,
        strategy_version: str = STRATEGY_VERSION,
        brackets: Mapping[str, Sequence[Bracket]] | None = None,
    ) -> None:
        """`brackets`: symbol -> its leverage brackets (shared/brackets.py); an entry's
        leverage and size are kept inside them (sizing.within_brackets)."""
        self.trading, self.risk = settings.trading, settings.risk
        self.taker_fee = float(settings.exchange.taker_fee)
        self.filters = dict(filters)
        self.brackets: dict[str, Sequence[Bracket]] = dict(brackets or {})
        self.learner = learner
        self.params = signal_params or SignalParams.from_risk(settings.risk)
        self.strategy_version = strategy_version
        self.bank = MarketContextBank(settings.exchange.symbols)
        self._contexts = self.bank.contexts  # the same dict, read on the per-bar path
        self.win_rate = WinRateTracker.from_config(settings.model)
        self.counters = CoreCounters()
        self._pending: dict[str, list[Candidate]] = {}
        # the context features of each symbol in _pending, taken when its candidates were:
        # the context does not change until the symbol's next kline, which replaces both
        # (and a minute is decided before a later kline is fed).  WHY here and not in
        # decide: the context is hot in the cache right after its update, and for the
        # minute's earlier klines this work is done while the later ones are still coming.
        self._features: dict[str, list[float]] = {}
        self._market = self.trading.entry_order_type == "MARKET"
        self.last_received_ms = 0
        self.scalar_max = SCALAR_MAX  # tests and benchmarks move it to force one path

    # ---- events ------------------------------------------------------------------------
    def on_closed_kline(self, kline: Any, now_ms: int) -> None:
        """Update the symbol's context and remember this bar's candidates (usually none).
        `now_ms` is the receive time of the event; the core reads no clock."""
        if not getattr(kline, "closed", True):
            return
        self.on_bar(
            kline.symbol, kline.open_time, kline.open, kline.high, kline.low, kline.close,
            kline.volume, kline.quote_volume, kline.trades, kline.taker_buy_volume, now_ms,
        )  # fmt: skip

    def on_bar(
        self, symbol: str, open_time: int, open_: float, high: float, low: float, close: float,
        volume: float, quote_volume: float, trades: int, taker_buy_volume: float, now_ms: int,
    ) -> None:  # fmt: skip
        """`on_closed_kline` with the closed kline's fields as arguments.  WHY: the backtest
        feeds every bar from its arrays; building a kline object per bar only to read its
        fields back costs ~7% of a learner-off run."""
        self.last_received_ms = now_ms  # for the shell's latency metrics
        ctx = self._contexts.get(symbol) or self.bank.get(symbol)
        try:
            applied = ctx.update(
                open_time, open_, high, low, close, volume, quote_volume, trades, taker_buy_volume
            )
        except BadKline as exc:
            self.counters.bad_klines += 1
            self.counters.last_error = str(exc)
            return
        if not applied:
            self.counters.duplicate_klines += 1
            return
        self.counters.klines += 1
        cands = evaluate(ctx, self.params)
        if cands:
            self._pending[symbol] = cands
            self._features[symbol] = ctx.features_list()
            self.counters.candidates += len(cands)
        elif symbol in self._pending:
            del self._pending[symbol]
            del self._features[symbol]

    def on_closed_trade(self, trade: ClosedTrade) -> bool:
        """Win rate + learning sample (each trade id once).  False for a repeat."""
        new = self.win_rate.add(trade.trade_id, trade.won)
        if new:
            self.counters.trades += 1
        if new and trade.decision is not None and self.learner is not None:
            try:
                self.learner.add_closed_trade(
                    trade.decision.features, float(trade.net_pnl), trade.trade_id, trade.exit_time
                )
            except Exception as exc:  # a bad sample must not stop the trader; count it
                self.counters.sample_errors += 1
                self.counters.last_error = f"sample {trade.trade_id}: {exc}"
                log.warning(
                    "closed trade not learned",
                    extra={"trade_id": trade.trade_id, "error": str(exc)},
                )
        return new

    def maybe_retrain(self, now_ms: int) -> Any:
        return None if self.learner is None else self.learner.maybe_retrain(now_ms)

    # ---- the minute's decision ---------------------------------------------------------
    def pending_candidates(self, minute_open_time: int) -> list[Candidate]:
        return [c for s in sorted(self._pending) for c in self._pending[s]
                if c.open_time == minute_open_time]  # fmt: skip

    def keep_first_candidates(self, minute_open_time: int, k: int) -> int:
        """Drop all but the first `k` pending candidates of the minute (decide's order);
        how many are left.  For benchmarks and tests that decide one minute at several
        batch sizes (the scalar and array paths)."""
        left = k
        for s in sorted(self._pending):
            cs = [c for c in self._pending[s] if c.open_time == minute_open_time][:left]
            left -= len(cs)
            if cs:
                self._pending[s] = cs
            else:
                del self._pending[s], self._features[s]
        return k - left

    def _score(
        self, X: np.ndarray | list[list[float]], cands: list[Candidate]
    ) -> tuple[list[float], str, str | None]:
        """(confidences, model version, error reason) with one batched model call.  `X`: the
        model rows, as an array or (scalar path) as lists, made an array only for a model."""
        champion = getattr(self.learner, "champion", None)
        if champion is None:
            return [c.score for c in cands], BASELINE_VERSION, None
        version = champion.meta.version
        try:
            X = np.asarray(X, dtype=np.float64)
            p = np.asarray(champion.predict(X), dtype=np.float64)
            if p.shape != (len(cands),) or not np.all((p >= 0.0) & (p <= 1.0)):
                raise ValueError(f"model output shape {p.shape} or values out of [0, 1]")
            return p.tolist(), version, None
        except Exception as exc:  # the model boundary: log, count, decide `model_error`
            self.counters.model_errors += 1
            self.counters.last_error = f"model {version}: {exc!r}"
            log.error(
                "model failed; no entries this minute",
                extra={"model_version": version, "error": repr(exc)},
            )
            return [0.0] * len(cands), version, ranking.MODEL_ERROR

    def _model_inputs(self, cands: list[Candidate]) -> ModelInputs:
        """Every candidate's model row (signals.model_matrix), one feature row per symbol."""
        row_of: dict[str, int] = {}
        feats, which = [], []
        for c in cands:
            j = row_of.get(c.symbol)
            if j is None:
                j = row_of[c.symbol] = len(feats)
                feats.append(self._features[c.symbol])
            which.append(j)
        return model_matrix(np.array(feats, dtype=np.float64), which, cands)

    def decide(
        self,
        minute_open_time: int,
        equity: Decimal | float,
        available: Decimal | float,
        open_positions: Mapping[str, Any],
        halted: bool,
    ) -> list[Decision]:
        """Decisions for the candidates of `minute_open_time` (none: []), best EV first.
        `open_positions`: symbol -> Position-like (size, entry_price) or a notional.

        The per-candidate numbers (model rows, leverage, EV) are computed over arrays when
        a minute has many candidates (hundreds in the worst case, on the trader's latency
        path) and one by one when it has a few (the usual minute, and the backtest's
        per-minute cost), with the same float operations either way: the same decisions."""
        cands = self.pending_candidates(minute_open_time)
        if not cands:
            return []
        if len(cands) <= self.scalar_max:
            rows, conf, version, levs, ev = self._numbers_scalar(cands)
        else:
            rows, conf, version, levs, ev = self._numbers_arrays(cands)
        p = self.win_rate.rate
        filters = self.filters
        cols = ranking.Columns(
            ev, conf, [c.symbol for c in cands], [c.side for c in cands],
            [c.strategy for c in cands], range(len(cands)),
            [version.error or (None if c.symbol in filters else NO_FILTERS) for c in cands],
        )  # fmt: skip
        sized: dict[int, SizedEntry | SizingSkip] = {}

        def size(i: int) -> tuple[float, str | None]:
            """Lazily, only for candidates that reach the exposure check."""
            sz, levs[i] = self._size(cands[i], levs[i], equity, available)
            sized[i] = sz
            return (float(sz.notional), None) if isinstance(sz, SizedEntry) else (0.0, sz.reason)

        held, exposure = _open_exposure(open_positions)
        ranked = ranking.rank_columns(
            cols, open_symbols=held, open_notional=exposure, equity=float(equity),
            max_positions=self.trading.max_positions,
            max_total_exposure=self.trading.max_total_exposure,
            min_confidence=self.risk.min_confidence, halted=halted, size=size,
        )  # fmt: skip
        out = []
        for rank, (i, reason, _notional) in enumerate(ranked, 1):
            c, sz = cands[i], sized.get(i)
            taken = reason == ranking.TAKEN
            intents: tuple[OrderIntent, ...] = ()
            record = None
            if taken and isinstance(sz, SizedEntry):
                row = rows[i] if isinstance(rows, list) else rows[i].tolist()
                intents, record = self._orders(c, sz, levs[i], conf[i], p, version.name, row)
            detail = sz.detail if isinstance(sz, SizingSkip) else ""
            out.append(Decision(c.symbol, c.side, c.strategy, minute_open_time, rank, taken,
                                reason, c.score, conf[i], ev[i], p, levs[i], version.name, c.reasons,
                                detail, intents, record))  # fmt: skip
        return out

    def _numbers_arrays(self, cands: list[Candidate]) -> _Numbers:
        """(model rows, confidences, version, leverages, EVs) over arrays: the model rows
        (model_matrix), leverage_many and the EV with the same float operations as the
        scalar definitions, for the minutes with many candidates."""
        m = self._model_inputs(cands)
        conf, name, error = self._score(m.X, cands)
        p = self.win_rate.rate
        levs = self._leverages(cands, conf, m, p) if error is None else [1] * len(cands)
        fee = 2.0 * self.taker_fee
        c_arr = np.array(conf, dtype=np.float64)  # ranking.expected_value, same operations:
        ev = (c_arr * m.reward_pct - (1.0 - c_arr) * m.risk_pct - fee).tolist()
        return m.X, conf, _Version(name, error), levs, ev

    def _numbers_scalar(self, cands: list[Candidate]) -> _Numbers:
        """`_numbers_arrays` with the scalar definitions (model_row, compute_leverage,
        expected_value), for a minute's few candidates: bit-identical results
        (tests/test_trader_vectorized.py runs both paths on the same minutes)."""
        feats = self._features
        rows = [model_row(feats[c.symbol], c) for c in cands]
        conf, name, error = self._score(rows, cands)
        fee = 2.0 * self.taker_fee
        risk = [c.risk_pct for c in cands]
        reward = [c.reward_pct for c in cands]
        if error is None:
            levs = self._leverages_scalar(cands, conf, reward, risk, self.win_rate.rate)
        else:
            levs = [1] * len(cands)
        ev = [
            cf * rw - (1.0 - cf) * rk - fee for cf, rw, rk in zip(conf, reward, risk, strict=True)
        ]
        return rows, conf, _Version(name, error), levs, ev

    def _leverages_scalar(
        self, cands: list[Candidate], conf: list[float], reward: list[float],
        risk: list[float], p: float,
    ) -> list[int]:  # fmt: skip
        """`_leverages` candidate by candidate (compute_leverage is its spec)."""
        f, r = self.filters, self.risk
        out = []
        for c, cf, rw, rk in zip(cands, conf, reward, risk, strict=True):
            fl = f.get(c.symbol)
            out.append(compute_leverage(
                p, cf, _ratio(rw, rk), rk, kelly_fraction=r.kelly_fraction,
                max_leverage=r.max_leverage, bracket_max=None if fl is None else fl.max_leverage,
                liquidation_buffer=r.liquidation_buffer,
            ).leverage)  # fmt: skip
        return out

    def _leverages(
        self, cands: list[Candidate], conf: list[float], m: ModelInputs, p: float
    ) -> list[int]:
        """Leverage of every candidate (leverage.py): reward/risk, stop distance, the
        symbol's bracket maximum."""
        f = self.filters
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero risk: refused below
            rr = m.reward_pct / m.risk_pct
        return leverage_many(
            p, np.array(conf, dtype=np.float64), rr, m.risk_pct,
            kelly_fraction=self.risk.kelly_fraction, max_leverage=self.risk.max_leverage,
            bracket_max=[f[c.symbol].max_leverage if c.symbol in f else None for c in cands],
            liquidation_buffer=self.risk.liquidation_buffer,
        )  # fmt: skip

    def _size(
        self, c: Candidate, lev: int, equity: Decimal | float, available: Decimal | float
    ) -> tuple[SizedEntry | SizingSkip, int]:
        """(entry, leverage): sized at `lev`, then kept inside the symbol's leverage
        brackets (sizing.within_brackets: the leverage may be lowered, never raised)."""

        def at(leverage: int, cap: Decimal | None = None) -> SizedEntry | SizingSkip:
            return size_entry(
                side=c.side, entry=c.entry, stop=c.stop, take_profit=c.take_profit,
                equity=equity, available=available, leverage=leverage,
                risk_per_trade=self.trading.risk_per_trade, min_notional=self.risk.min_notional,
                taker_fee=self.taker_fee, filters=self.filters[c.symbol], market=self._market,
                invalidation=c.invalidation, notional_cap=cap,
            )  # fmt: skip

        sz = at(lev)
        if isinstance(sz, SizingSkip):
            return sz, lev
        return within_brackets(sz, lev, self.brackets.get(c.symbol), at)

    def _orders(
        self, c: Candidate, sz: SizedEntry, lev: int, conf: float, win_rate: float,
        version: str, row: list[float],
    ) -> tuple[tuple[OrderIntent, ...], DecisionRecord]:  # fmt: skip
        """Entry + protective close-position orders, ids derived from the decision."""
        buy, sell = ("BUY", "SELL") if c.side == "LONG" else ("SELL", "BUY")

        def cid(purpose: str) -> str:
            return client_order_id(c.symbol, c.side, c.open_time, purpose, self.strategy_version)

        why = f"{c.strategy} conf={conf:.3f}"
        entry = OrderIntent(
            c.symbol, buy, "MARKET" if self._market else "LIMIT", sz.quantity, cid("entry"),
            "entry", price=None if self._market else sz.entry_price, leverage=lev, reason=why,
            time_in_force=None if self._market else "GTC",
        )  # fmt: skip
        stop = OrderIntent(c.symbol, sell, "STOP_MARKET", None, cid("stop"), "stop",
                           stop_price=sz.stop_price, close_position=True, reason=why)  # fmt: skip
        take = OrderIntent(c.symbol, sell, "TAKE_PROFIT_MARKET", None, cid("take_profit"),
                           "take_profit", stop_price=sz.take_profit_price, close_position=True,
                           reason=why)  # fmt: skip
        record = DecisionRecord(
            entry.client_order_id, c.symbol, c.side, c.open_time,
            dict(zip(MODEL_FEATURE_NAMES, row, strict=True)), version, conf, win_rate, lev,
            sz.stop_price, sz.take_profit_price, sz.entry_price, sz.invalidation_price,
        )  # fmt: skip
        return (entry, stop, take), record
