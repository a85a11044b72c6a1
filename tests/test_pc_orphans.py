"""Orphaned stop/target legs: a closed position's leftover conditional orders are
cancelled, and a new position's fresh legs never are (the creation-time rule)."""

from __future__ import annotations

from decimal import Decimal as D

from services.position_controller.core import CoreConfig, PositionControllerCore
from services.position_controller.orphans import OrphanCheck, orphaned
from tests.test_pc_core import MIN, SYM, T0, acct, core_with_long, exch


def algo(created: int, *, symbol: str = SYM, otype: str = "TAKE_PROFIT_MARKET",
         close_position: bool = True, reduce_only: bool = False, status: str = "NEW",
         algo_id: int = 7) -> dict[str, object]:  # fmt: skip
    return {"symbol": symbol, "orderType": otype, "side": "SELL", "triggerPrice": "110",
            "closePosition": close_position, "reduceOnly": reduce_only, "algoStatus": status,
            "clientAlgoId": f"x-{algo_id}", "algoId": algo_id, "createTime": created}  # fmt: skip


def checks(actions: list[object]) -> list[OrphanCheck]:
    return [a for a in actions if isinstance(a, OrphanCheck)]


def test_orphaned_keeps_only_close_only_open_orders_created_before_the_flat_time() -> None:
    rows = [
        algo(T0, algo_id=1),  # the old position's target: an orphan
        algo(T0 + MIN, algo_id=2),  # created after the close: a new position's leg
        algo(T0, algo_id=3, close_position=False),  # neither closePosition nor reduceOnly
        algo(T0, algo_id=4, close_position=False, reduce_only=True, otype="STOP_MARKET"),
        algo(T0, algo_id=5, status="TRIGGERED"),  # already firing: not ours to cancel
        algo(T0, algo_id=6, symbol="ETHUSDT"),
    ]
    found = orphaned(rows, SYM, T0 + 10)
    assert [o.algo_id for o in found] == [1, 4]


def test_a_position_going_flat_asks_for_its_legs_to_be_cancelled_once() -> None:
    core = core_with_long()
    (check,) = checks(core.on_account_update(acct("0", at=T0 + MIN), T0 + MIN))
    assert check == OrphanCheck(SYM, T0 + MIN)
    assert checks(core.on_account_update(acct("0", at=T0 + MIN + 1), T0 + MIN + 1)) == []
    assert core.recently_flat(T0 + 2 * MIN) and not core.recently_flat(T0 + 20 * MIN)


def test_sweep_cancels_legs_left_on_a_flat_symbol_but_not_a_new_positions() -> None:
    core = core_with_long()
    core.on_account_update(acct("0", at=T0 + MIN), T0 + MIN)
    now = T0 + 2 * MIN
    rows = [algo(T0 + 5, algo_id=1), algo(T0 + MIN + 500, algo_id=2)]
    (check,) = checks(core.sweep(now, [], rows))
    assert check.flat_since == T0 + MIN and [o.algo_id for o in check.orders] == [1]
    assert checks(core.sweep(now + 1, [], rows)) == []  # sent: not again before the retry
    # REST failed (positions unknown): an untracked symbol may hold a position we missed
    assert checks(core.sweep(now + MIN, None, rows)) == []
    # the symbol is held again: its legs protect it
    rows_held = [exch("1", "100", now + MIN)]
    assert checks(core.sweep(now + 2 * MIN, rows_held, rows)) == []


def test_sweep_on_a_symbol_never_seen_open_waits_the_orphan_grace() -> None:
    core = PositionControllerCore(CoreConfig(orphan_grace_ms=MIN))
    now = T0 + 10 * MIN
    fresh = [algo(now - 10_000, symbol="ETHUSDT")]
    assert checks(core.sweep(now, [], fresh)) == []
    old = [algo(now - 2 * MIN, symbol="ETHUSDT")]
    (check,) = checks(core.sweep(now, [], old))
    assert check.symbol == "ETHUSDT" and len(check.orders) == 1


def test_a_new_position_clears_the_flat_time() -> None:
    core = core_with_long()
    core.on_account_update(acct("0", at=T0 + MIN), T0 + MIN)
    core.on_account_update(acct("2", entry="105", at=T0 + 2 * MIN), T0 + 2 * MIN)
    assert not core.recently_flat(T0 + 2 * MIN)
    assert core.positions[SYM].size == D(2)
