"""Ranking: EV order, slots, exposure cap, one position per symbol, reasons."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.trader import ranking
from services.trader.ranking import RankInput, expected_value, rank

FEE = 0.001


def item(key, symbol, conf, reward=0.02, risk=0.01, notional=1000.0, side="LONG", blocked=None):
    return RankInput(key, symbol, side, "breakout", conf, reward, risk, FEE, notional, blocked)


def run(items, **kw):
    base = dict(open_symbols=(), open_notional=0.0, equity=1000.0, max_positions=5,
                max_total_exposure=10.0, min_confidence=0.5, halted=False)  # fmt: skip
    return rank(items, **{**base, **kw})


def test_expected_value_formula() -> None:
    assert expected_value(0.6, 0.03, 0.02, 0.001) == 0.6 * 0.03 - 0.4 * 0.02 - 0.001


def test_best_ev_takes_the_slots() -> None:
    items = [item(0, "AUSDT", 0.55), item(1, "BUSDT", 0.8), item(2, "CUSDT", 0.7)]
    out = run(items, max_positions=3, open_symbols=["ZUSDT"])  # one slot used
    assert [r.item.symbol for r in out] == ["BUSDT", "CUSDT", "AUSDT"]
    assert [r.rank for r in out] == [1, 2, 3]
    assert [r.reason for r in out] == ["taken", "taken", ranking.NO_SLOT]
    assert out[0].ev > out[1].ev > out[2].ev


def test_exposure_cap_skips_big_ones_but_smaller_fit() -> None:
    items = [item(0, "AUSDT", 0.9, notional=2500), item(1, "BUSDT", 0.8, notional=2000),
             item(2, "CUSDT", 0.7, notional=400)]  # fmt: skip
    out = run(items, max_total_exposure=3.0, open_notional=500.0)  # budget 2500
    assert [(r.item.symbol, r.reason) for r in out] == [
        ("AUSDT", "taken"), ("BUSDT", ranking.EXPOSURE_CAP), ("CUSDT", ranking.EXPOSURE_CAP)
    ]  # fmt: skip
    out = run(items, max_total_exposure=3.0, open_notional=100.0)  # budget 2900
    assert [r.reason for r in out] == ["taken", ranking.EXPOSURE_CAP, "taken"]


def test_reasons_in_order() -> None:
    items = [
        item(0, "HELD", 0.9),
        item(1, "LOWC", 0.45, reward=0.2),
        item(2, "NEGEV", 0.51, reward=0.005, risk=0.02),
        item(3, "DUP", 0.95),
        item(4, "DUP", 0.9, side="SHORT"),
        item(5, "ERR", 0.99, blocked=ranking.MODEL_ERROR),
    ]
    reasons = {(r.item.symbol, r.item.side): r.reason for r in run(items, open_symbols=["HELD"])}
    assert reasons == {
        ("HELD", "LONG"): ranking.ALREADY_IN_POSITION,
        ("LOWC", "LONG"): ranking.BELOW_MIN_CONFIDENCE,
        ("NEGEV", "LONG"): ranking.NEGATIVE_EV,
        ("DUP", "LONG"): "taken",
        ("DUP", "SHORT"): ranking.SYMBOL_TAKEN,
        ("ERR", "LONG"): ranking.MODEL_ERROR,
    }
    assert {r.reason for r in run(items, halted=True)} == {ranking.HALTED}


def test_ties_are_deterministic() -> None:
    items = [item(i, s, 0.7) for i, s in enumerate(["CUSDT", "AUSDT", "BUSDT"])]
    a = [r.item.symbol for r in run(items)]
    b = [r.item.symbol for r in run(list(reversed(items)))]
    assert a == b == ["AUSDT", "BUSDT", "CUSDT"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from("ABCDEFGH"),
            st.floats(0, 1),
            st.floats(0.001, 0.05),
            st.floats(0.001, 0.05),
            st.floats(10, 5000),
        ),  # fmt: skip
        max_size=25,
    ),
    st.integers(1, 6),
    st.floats(0.5, 10),
    st.sets(st.sampled_from("ABCDEFGH"), max_size=3),
)
def test_invariants(rows, max_pos, cap, held) -> None:
    items = [item(i, s, c, r, k, n) for i, (s, c, r, k, n) in enumerate(rows)]
    out = run(items, max_positions=max_pos, max_total_exposure=cap, open_symbols=held,
              open_notional=100.0 * len(held))  # fmt: skip
    taken = [r for r in out if r.taken]
    assert len(out) == len(items)
    assert len(taken) <= max(0, max_pos - len(held))
    assert sum(r.item.notional for r in taken) + 100.0 * len(held) <= cap * 1000.0 + 1e-6
    assert len({r.item.symbol for r in taken}) == len(taken)
    assert not any(r.item.symbol in held for r in taken)
    assert all(r.ev > 0 and r.item.confidence >= 0.5 for r in taken)
    evs = [r.ev for r in out]
    assert evs == sorted(evs, reverse=True)


def test_lazy_sizing_only_for_contenders() -> None:
    items = [item(i, f"S{i}USDT", 0.95 - i * 0.005, notional=0.0) for i in range(50)]
    calls: list[int] = []

    def size(it: RankInput) -> tuple[float, str | None]:
        calls.append(it.key)
        return (0.0, "below_min_notional") if it.key == 1 else (900.0, None)

    out = run(items, max_positions=3, max_total_exposure=2.0, size=size)
    assert [r.reason for r in out[:5]] == [
        "taken",
        "below_min_notional",
        "taken",
        "exposure_cap",
        "exposure_cap",
    ]
    assert out[0].notional == 900.0 and out[1].notional == 0.0
    assert {r.reason for r in out[5:]} == {ranking.EXPOSURE_CAP}
    assert calls == list(range(50))  # one slot left but nothing fits: all are tried
    calls.clear()
    out = run(items, max_positions=2, size=size)
    assert [r.reason for r in out[:3]] == ["taken", "below_min_notional", "taken"]
    assert calls == [0, 1, 2] and {r.reason for r in out[3:]} == {ranking.NO_SLOT}
