"""Reconciliation of cached positions with positionRisk rows: every kind of difference,
its repair, deferral of rows that may be older than the cache, and (Hypothesis) that the
repairs always make the cache equal to the exchange."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from services.position_controller.reconcile import (
    DiffKind,
    apply_repairs,
    reconcile,
)
from shared.models import Position

T0 = 1_730_000_000_000


def p(symbol: str, size: str, entry: str = "100", at: int = T0, lev: int | None = None) -> Position:
    return Position(symbol, D(size), D(entry), D(entry), D(0), "cross", D(0), lev, at)


def test_every_kind_of_difference_with_repairs_and_counts() -> None:
    cached = {
        "BTCUSDT": p("BTCUSDT", "1", lev=10),  # size drift
        "ETHUSDT": p("ETHUSDT", "-2", "2000"),  # closed behind our back
        "SOLUSDT": p("SOLUSDT", "3", "20"),  # entry drift
        "XRPUSDT": p("XRPUSDT", "5", "0.5"),  # equal
        "ADAUSDT": p("ADAUSDT", "0"),  # a flat cache entry is no position
    }
    exchange = [
        p("BTCUSDT", "1.5", "101", T0 + 5),
        p("SOLUSDT", "3", "20.1", T0 + 5),
        p("XRPUSDT", "5", "0.5"),
        p("DOGEUSDT", "-100", "0.1", T0 + 5),  # opened behind our back
        p("LTCUSDT", "0"),  # v2 rows list flat symbols too
    ]
    res = reconcile(cached, exchange)
    kinds = {d.symbol: d.kind for d in res.diffs}
    assert kinds == {
        "BTCUSDT": DiffKind.SIZE_MISMATCH,
        "ETHUSDT": DiffKind.MISSING_ON_EXCHANGE,
        "SOLUSDT": DiffKind.ENTRY_MISMATCH,
        "DOGEUSDT": DiffKind.MISSING_IN_CACHE,
    }
    assert res.counts == {k: 1 for k in DiffKind} and not res.clean
    repairs = {r.symbol: r for r in res.repairs}
    assert repairs["ETHUSDT"].position is None
    btc = repairs["BTCUSDT"].position
    assert btc is not None and btc.size == D("1.5") and btc.leverage == 10  # cached leverage kept
    assert all(d.detail for d in res.diffs)
    fixed = apply_repairs(cached, res.repairs)
    assert reconcile(fixed, exchange).clean


def test_entry_tolerance_boundary() -> None:
    cached = {"BTCUSDT": p("BTCUSDT", "1", "100000")}
    within = [p("BTCUSDT", "1", "100000.1", T0 + 1)]  # 1e-6 relative: not drift
    beyond = [p("BTCUSDT", "1", "100000.11", T0 + 1)]
    assert reconcile(cached, within).clean
    assert reconcile(cached, beyond).counts[DiffKind.ENTRY_MISMATCH] == 1
    assert reconcile(cached, beyond, entry_rel_tol=D("1e-5")).clean


def test_skip_and_rows_older_than_the_cache_are_deferred_not_repaired() -> None:
    cached = {"BTCUSDT": p("BTCUSDT", "2", at=T0 + 10), "ETHUSDT": p("ETHUSDT", "1")}
    older = [p("BTCUSDT", "1", at=T0 + 5)]
    res = reconcile(cached, older, skip={"ETHUSDT"})
    assert res.clean and res.repairs == () and res.deferred == ("BTCUSDT", "ETHUSDT")
    res2 = reconcile(cached, [p("BTCUSDT", "1", at=T0 + 11)], skip={"ETHUSDT"})
    assert [d.kind for d in res2.diffs] == [DiffKind.SIZE_MISMATCH]


_sym = st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"])
_size = st.integers(-5, 5).map(lambda n: D(n) / 2)
_entry = st.integers(90, 110).map(D)
_row = st.tuples(_size, _entry, st.integers(0, 10))


@given(st.dictionaries(_sym, _row), st.dictionaries(_sym, _row))
def test_repairs_always_make_the_cache_equal_to_the_exchange(
    cache_rows: dict[str, tuple[D, D, int]], exch_rows: dict[str, tuple[D, D, int]]
) -> None:
    cached = {s: p(s, str(z), str(e), T0) for s, (z, e, _) in cache_rows.items()}
    exchange = [p(s, str(z), str(e), T0 + dt) for s, (z, e, dt) in exch_rows.items()]
    res = reconcile(cached, exchange)
    fixed = apply_repairs(cached, res.repairs)
    want = {x.symbol: (x.size, x.entry_price) for x in exchange if x.size != 0}
    got = {s: (q.size, q.entry_price) for s, q in fixed.items() if q.size != 0}
    assert got == want
    assert reconcile(fixed, exchange).clean
    assert sum(res.counts.values()) == len(res.diffs) == len(res.repairs)
