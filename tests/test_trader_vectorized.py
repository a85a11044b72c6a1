"""The trader's array paths give exactly what their scalar definitions give.

`TraderCore.decide` builds the model rows (`signals.model_matrix`), leverages
(`leverage.leverage_many`) and EVs over arrays and ranks columns (`ranking.rank_columns`);
the scalar definitions (`model_row`, `compute_leverage`, `RankInput`/`rank`) stay the
spec.  Equality here is bit-for-bit (msgpack bytes of every decision), not approximate:
the same inputs must give the same orders in the live trader, the backtest and a replay.
"""

from __future__ import annotations

import math
from decimal import Decimal as D
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.trader import core as core_mod
from services.trader import ranking
from services.trader.core import NO_FILTERS, SCALAR_MAX, TraderCore, _ratio
from services.trader.learner import Learner
from services.trader.leverage import LeverageInputError, compute_leverage, leverage_many
from services.trader.ranking import RankInput
from services.trader.signals import (
    MODEL_FEATURE_NAMES,
    SignalParams,
    evaluate,
    model_matrix,
    model_row,
)
from services.trader.sizing import SizedEntry, SizingSkip
from shared.brackets import Bracket, max_leverage_for, max_notional_at
from shared.codec import pack
from shared.config import load_settings
from shared.filters import SymbolFilters
from shared.models import Kline, Position

T0 = 1_675_209_600_000
MIN = 60_000
# every symbol signals every minute, both setups, both sides (the benchmark's worst case)
LOOSE = SignalParams(pullback_rsi_long_max=100, pullback_rsi_short_min=0, pullback_min_regime=-1,
                     breakout_atr_ratio_min=0, breakout_volume_z_min=-1e9)  # fmt: skip
SYMBOLS = [f"S{i:02d}USDT" for i in range(24)]


def _bits(row: list[float] | np.ndarray) -> list[int]:
    """Exact float identity, -0.0 and NaN included."""
    return np.asarray(row, dtype=np.float64).view(np.int64).tolist()  # type: ignore[no-any-return]


def _walk(core: TraderCore, rng: np.random.Generator, minutes: int, start: int = 0) -> int:
    """Random walks with regime drift: trends up and down, breakouts, pullbacks."""
    for i in range(start, start + minutes):
        t = T0 + i * MIN
        for n, s in enumerate(SYMBOLS):
            ctx = core.bank.get(s)
            prev = ctx.close if ctx.n else 10.0 + 3 * n
            drift = 0.002 * math.sin(i / 17 + n)
            c = prev * (1 + drift + 0.004 * rng.standard_normal())
            h, lo = (
                max(prev, c) * (1 + 0.002 * rng.random()),
                min(prev, c) * (1 - 0.002 * rng.random()),
            )
            v = 50 + 100 * rng.random()
            k = Kline(s, "1m", t, t + MIN - 1, prev, h, lo, c, v, v * c, int(rng.integers(0, 50)),
                      v * rng.random(), v * c / 2, True, t + MIN, t + MIN)  # fmt: skip
            core.on_closed_kline(k, t + MIN)
    return start + minutes


def _filters(symbols: list[str]) -> dict[str, SymbolFilters]:
    return {s: SymbolFilters(s, D("0.0001"), D("0.001"), D("0.001"), D("0.001"), D("1e9"),
                             D("1e9"), D("5"), 5, 3, 10 + i % 40) for i, s in enumerate(symbols)}  # fmt: skip


def _learner() -> Learner:
    cfg = SimpleNamespace(min_train_samples=50, retrain_after_trades=10, retrain_interval_hours=1,
                          n_estimators=20, max_depth=3, learning_rate=0.2)  # fmt: skip
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, len(MODEL_FEATURE_NAMES)))
    y = (X[:, 0] + X[:, -5] + 0.3 * rng.normal(size=400) > 0).astype(int)  # ret_1, side
    learner = Learner(cfg, feature_names=MODEL_FEATURE_NAMES)
    assert learner.fit_cold_start(X, y, {"created_at_ms": T0}).accepted
    return learner


def _core(learner: Learner | None, **trading: object) -> TraderCore:
    settings_ = load_settings(exchange={"symbols": SYMBOLS}, risk={"min_confidence": 0.0},
                              trading={"max_total_exposure": 10.0, **trading})  # fmt: skip
    return TraderCore(settings_, _filters(SYMBOLS[:-2]), learner, signal_params=LOOSE)


def reference_decide(core: TraderCore, minute: int, equity: D, available: D,
                     positions: dict, halted: bool) -> list:  # fmt: skip
    """TraderCore.decide written per candidate with the scalar definitions (the spec)."""
    cands = core.pending_candidates(minute)
    if not cands:
        return []
    feats = {s: core.bank[s].features_list() for s in {c.symbol for c in cands}}
    rows = [model_row(feats[c.symbol], c) for c in cands]
    conf, version, error = core._score(np.array(rows, dtype=np.float64), cands)
    p, risk = core.win_rate.rate, core.risk

    def lev(c, cf: float) -> int:
        f = core.filters.get(c.symbol)
        return compute_leverage(
            p, cf, c.reward_pct / c.risk_pct, c.risk_pct, kelly_fraction=risk.kelly_fraction,
            max_leverage=risk.max_leverage, bracket_max=None if f is None else f.max_leverage,
            liquidation_buffer=risk.liquidation_buffer,
        ).leverage  # fmt: skip

    levs = [lev(c, conf[i]) if error is None else 1 for i, c in enumerate(cands)]
    inputs = [RankInput(i, c.symbol, c.side, c.strategy, conf[i], c.reward_pct, c.risk_pct,
                        2.0 * core.taker_fee,
                        blocked=error or (None if c.symbol in core.filters else NO_FILTERS))
              for i, c in enumerate(cands)]  # fmt: skip
    sized: dict = {}

    def size(item: RankInput) -> tuple[float, str | None]:
        sz, levs[item.key] = core._size(cands[item.key], levs[item.key], equity, available)
        sized[item.key] = sz
        return (float(sz.notional), None) if isinstance(sz, SizedEntry) else (0.0, sz.reason)

    held, exposure = core_mod._open_exposure(positions)
    ranked = ranking.rank(inputs, open_symbols=held, open_notional=exposure, equity=float(equity),
                          max_positions=core.trading.max_positions,
                          max_total_exposure=core.trading.max_total_exposure,
                          min_confidence=risk.min_confidence, halted=halted, size=size)  # fmt: skip
    out = []
    for r in ranked:
        i = r.item.key
        c, sz = cands[i], sized.get(i)
        intents, record = (), None
        if r.taken and isinstance(sz, SizedEntry):
            intents, record = core._orders(c, sz, levs[i], conf[i], p, version, rows[i])
        detail = sz.detail if isinstance(sz, SizingSkip) else ""
        out.append(core_mod.Decision(c.symbol, c.side, c.strategy, minute, r.rank, r.taken,
                                     r.reason, c.score, conf[i], r.ev, p, levs[i], version,
                                     c.reasons, detail, intents, record))  # fmt: skip
    return out


@pytest.mark.parametrize("with_model", [True, False])
def test_decide_equals_the_scalar_reference_bit_for_bit(with_model: bool) -> None:
    rng = np.random.default_rng(11)
    core = _core(_learner() if with_model else None, max_positions=6)
    t = _walk(core, rng, 260)
    reasons: set[str] = set()
    for m in range(25):
        t = _walk(core, rng, 1, t)
        minute = T0 + (t - 1) * MIN
        held = {SYMBOLS[m % 5]: 2.0} if m % 3 else {}
        halted = m == 7
        got = core.decide(minute, D(10_000), D(6_000), held, halted)
        want = reference_decide(core, minute, D(10_000), D(6_000), held, halted)
        assert got and [pack(d.to_dict()) for d in got] == [pack(d.to_dict()) for d in want]
        reasons |= {d.reason for d in got}
    # the minutes exercised the rules, not only one of them
    assert {"taken", "halted", NO_FILTERS, ranking.ALREADY_IN_POSITION} <= reasons
    assert {ranking.NO_SLOT, ranking.SYMBOL_TAKEN} & reasons


class _BrokenModel:
    """A champion whose output is out of [0, 1]: the minute is decided `model_error`."""

    meta = SimpleNamespace(version="broken-1")

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), 2.0)


@pytest.mark.parametrize("model", ["trained", "none", "broken"])
def test_scalar_and_array_paths_decide_the_same_bit_for_bit(model: str) -> None:
    """Each minute is decided at its full size and cut down to the sizes around the
    switch (SCALAR_MAX, SCALAR_MAX + 1) and the usual 1-3: forced array path, forced
    scalar path and the default choice all equal the per-candidate reference."""
    learner = {"trained": _learner, "none": lambda: None,
               "broken": lambda: SimpleNamespace(champion=_BrokenModel())}[model]()  # fmt: skip
    rng = np.random.default_rng(23)
    core = _core(learner, max_positions=3)
    t = _walk(core, rng, 260)
    sizes, reasons = set(), set()
    for m in range(6):
        t = _walk(core, rng, 1, t)
        minute = T0 + (t - 1) * MIN
        held = {SYMBOLS[m % 5]: 2.0} if m % 2 else {}
        for k in (None, SCALAR_MAX + 1, SCALAR_MAX, 3, 2, 1):
            if k is not None:
                assert core.keep_first_candidates(minute, k) == k
                assert len(core.pending_candidates(minute)) == k
            n = len(core.pending_candidates(minute))
            got = {}
            for limit in (0, n, SCALAR_MAX):  # arrays, scalar, the default choice
                core.scalar_max = limit
                got[limit] = [pack(d.to_dict()) for d in
                              core.decide(minute, D(10_000), D(6_000), held, m == 3)]  # fmt: skip
            want = reference_decide(core, minute, D(10_000), D(6_000), held, m == 3)
            assert want and got[0] == got[n] == got[SCALAR_MAX] == [pack(d.to_dict()) for d in want]
            sizes.add(n)
            reasons |= {d.reason for d in want}
    assert {1, 2, 3, SCALAR_MAX, SCALAR_MAX + 1} <= sizes and max(sizes) > 12
    assert (ranking.MODEL_ERROR in reasons) == (model == "broken")
    assert model == "broken" or ranking.TAKEN in reasons


def test_zero_risk_ratio_is_numpys() -> None:
    """The scalar path divides reward by risk as the array path does (inf/nan, no
    ZeroDivisionError), so a zero stop distance is refused alike by compute_leverage."""
    with np.errstate(divide="ignore", invalid="ignore"):
        for rw, rk in [(0.02, 0.0), (0.0, 0.0), (0.03, 0.01), (0.0, 0.01)]:
            want = (np.array([rw]) / np.array([rk]))[0]
            got = _ratio(rw, rk)
            assert _bits([got]) == _bits([want]) or (math.isnan(got) and math.isnan(want))


def test_model_matrix_is_model_row_stacked() -> None:
    rng = np.random.default_rng(3)
    core = _core(None)
    _walk(core, rng, 300)
    cands, feats = [], {}
    for s in SYMBOLS:
        ctx = core.bank[s]
        feats[s] = ctx.features_list()
        cands += evaluate(ctx, LOOSE)
    assert {c.side for c in cands} == {"LONG", "SHORT"}
    assert {c.strategy for c in cands} == {"breakout", "trend_pullback"}
    order = sorted(feats)
    m = model_matrix(np.array([feats[s] for s in order]), [order.index(c.symbol) for c in cands],
                     cands)  # fmt: skip
    want = [model_row(feats[c.symbol], c) for c in cands]
    assert [_bits(r) for r in m.X] == [_bits(r) for r in want]
    assert _bits(m.reward_pct) == _bits([c.reward_pct for c in cands])
    assert _bits(m.risk_pct) == _bits([c.risk_pct for c in cands])


prob = st.floats(0.0, 1.0)
ARGS = st.tuples(prob, st.floats(1e-3, 50.0), st.floats(1e-6, 1.0),
                 st.none() | st.integers(0, 150))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(prob, st.lists(ARGS, min_size=1, max_size=30), st.floats(0.0, 1.0), st.integers(1, 125),
       st.floats(0.0, 0.05))  # fmt: skip
def test_leverage_many_is_compute_leverage(p, rows, k, max_lev, buffer) -> None:
    conf, rr, stop, brackets = (list(x) for x in zip(*rows, strict=True))
    got = leverage_many(p, np.array(conf), np.array(rr), np.array(stop), kelly_fraction=k,
                        max_leverage=max_lev, bracket_max=brackets, liquidation_buffer=buffer)  # fmt: skip
    want = [compute_leverage(p, c, b, s, kelly_fraction=k, max_leverage=max_lev, bracket_max=br,
                             liquidation_buffer=buffer).leverage
            for c, b, s, br in rows]  # fmt: skip
    assert got == want and all(type(x) is int for x in got)


@pytest.mark.parametrize(
    "bad", [dict(conf=[0.5, math.nan]), dict(rr=[2.0, 0.0]), dict(stop=[0.01, 0.0]),
            dict(rr=[2.0, math.inf]), dict(p=1.5), dict(k=-0.1), dict(max_lev=0)],
)  # fmt: skip
def test_leverage_many_refuses_what_compute_leverage_refuses(bad) -> None:
    a = {"p": 0.5, "conf": [0.5, 0.6], "rr": [2.0, 1.5], "stop": [0.01, 0.02], "k": 0.5,
         "max_lev": 20, **bad}  # fmt: skip
    with pytest.raises(LeverageInputError) as got:
        leverage_many(a["p"], np.array(a["conf"]), np.array(a["rr"]), np.array(a["stop"]),
                      kelly_fraction=a["k"], max_leverage=a["max_lev"], bracket_max=[None, 5])  # fmt: skip
    with pytest.raises(LeverageInputError) as want:
        for i in range(2):
            compute_leverage(a["p"], a["conf"][i], a["rr"][i], a["stop"][i],
                             kelly_fraction=a["k"], max_leverage=a["max_lev"])  # fmt: skip
    assert got.value.name == want.value.name


def test_features_are_kept_from_the_kline_that_made_the_candidates() -> None:
    """decide() uses the features taken at the candidate's kline; they are the context's
    features at decision time (nothing changes the context in between)."""
    core = _core(None)
    rng = np.random.default_rng(5)
    t = _walk(core, rng, 280)
    for s in core._pending:
        assert _bits(core._features[s]) == _bits(core.bank[s].features_list())
    assert set(core._features) == set(core._pending)
    pos = Position(SYMBOLS[0], D("1"), D("10"), D("10"), D("0"), "cross", D("0"), 5, T0)
    decided = core.decide(T0 + (t - 1) * MIN, D(10_000), D(10_000), {SYMBOLS[0]: pos}, False)
    assert decided and any(d.taken for d in decided)


def test_core_lowers_leverage_to_the_brackets_never_above() -> None:
    """The same minutes with and without brackets: with them, a large entry's leverage is
    the bracket's for its notional (lower than asked), never above, never below 1."""
    tiers = tuple(Bracket(D(f), D(c), lev, D("0.01"), D(0))
                  for f, c, lev in [(0, 500, 20), (500, 5_000, 3), (5_000, 10**9, 1)])  # fmt: skip
    rng = np.random.default_rng(7)
    plain, fitted = _core(None, max_positions=6), _core(None, max_positions=6)
    fitted.brackets = dict.fromkeys(SYMBOLS, tiers)
    t = _walk(plain, rng, 270)
    _walk(fitted, np.random.default_rng(7), 270)
    lowered = 0
    for _ in range(10):
        state = rng.bit_generator.state
        t = _walk(plain, rng, 1, t)
        rng2 = np.random.default_rng()
        rng2.bit_generator.state = state
        _walk(fitted, rng2, 1, t - 1)
        minute = T0 + (t - 1) * MIN
        a = {d.symbol + d.side: d for d in plain.decide(minute, D(50_000), D(50_000), {}, False)}
        for d in fitted.decide(minute, D(50_000), D(50_000), {}, False):
            if not d.taken:
                continue
            notional = d.intents[0].quantity * d.record.entry_price_ref
            assert 1 <= d.leverage <= min(a[d.symbol + d.side].leverage,
                                          max_leverage_for(tiers, notional))  # fmt: skip
            assert notional <= max_notional_at(tiers, d.leverage)
            lowered += d.leverage < a[d.symbol + d.side].leverage
    assert lowered > 0
