"""The seed's bidding system: all candidates of a minute compete for the free slots.

Expected value per unit of notional, for a trade that either reaches its target or its stop:
    EV = confidence * reward_pct - (1 - confidence) * risk_pct - fee_pct
(reward/risk are the take-profit/stop distances over the entry, fee_pct the round-trip taker
fee).  Candidates are ranked by EV (ties: confidence, then symbol/side/strategy, so the order
is deterministic), then walked best-first; the first rule that applies decides each one:

    halted               trading is halted (risk stop, operator)
    <blocked reason>     set upstream: model_error, no_filters, below_min_notional, ...
    already_in_position  the symbol already has a position
    below_min_confidence confidence < risk.min_confidence
    negative_ev          EV <= 0 after fees
    symbol_taken         a better candidate of the same symbol took it this minute
    no_slot              trading.max_positions reached
    <sizing reason>      the optional `size` callback could not size it (below_min_notional...)
    exposure_cap         open + new notional would exceed trading.max_total_exposure x equity
    taken

Sizing (Decimal arithmetic against filters) is the costly step, so it can be done lazily: with
a `size` callback, only candidates that reach the exposure check are sized - a handful per
minute, however many symbols signalled.  Every candidate comes back with its rank, EV and
reason, for `slt:stream:signals`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

TAKEN = "taken"
HALTED = "halted"
ALREADY_IN_POSITION = "already_in_position"
BELOW_MIN_CONFIDENCE = "below_min_confidence"
NEGATIVE_EV = "negative_ev"
SYMBOL_TAKEN = "symbol_taken"
NO_SLOT = "no_slot"
EXPOSURE_CAP = "exposure_cap"
MODEL_ERROR = "model_error"


def expected_value(confidence: float, reward_pct: float, risk_pct: float, fee_pct: float) -> float:
    return confidence * reward_pct - (1.0 - confidence) * risk_pct - fee_pct


@dataclass(frozen=True, slots=True)
class RankInput:
    key: int  # caller's index, to join the result back
    symbol: str
    side: str
    strategy: str
    confidence: float
    reward_pct: float
    risk_pct: float
    fee_pct: float
    notional: float = 0.0  # of the sized entry, when sized up front (no `size` callback)
    blocked: str | None = None

    @property
    def ev(self) -> float:
        return expected_value(self.confidence, self.reward_pct, self.risk_pct, self.fee_pct)


@dataclass(frozen=True, slots=True)
class Ranked:
    item: RankInput
    rank: int  # 1 = best EV
    ev: float
    taken: bool
    reason: str
    notional: float = 0.0  # as sized (0 if never sized)


def rank(
    items: Sequence[RankInput],
    *,
    open_symbols: Iterable[str],
    open_notional: float,
    equity: float,
    max_positions: int,
    max_total_exposure: float,
    min_confidence: float,
    halted: bool,
    size: Callable[[RankInput], tuple[float, str | None]] | None = None,
) -> list[Ranked]:
    """Best-first decisions for one minute's candidates (see module doc for the rules)."""
    cols = Columns(
        [it.ev for it in items], [it.confidence for it in items], [it.symbol for it in items],
        [it.side for it in items], [it.strategy for it in items], [it.key for it in items],
        [it.blocked for it in items],
    )  # fmt: skip
    if size is None:
        notional = [it.notional for it in items]

        def sized(i: int) -> tuple[float, str | None]:
            return notional[i], None
    else:

        def sized(i: int) -> tuple[float, str | None]:
            return size(items[i])

    ranked = rank_columns(
        cols, open_symbols=open_symbols, open_notional=open_notional, equity=equity,
        max_positions=max_positions, max_total_exposure=max_total_exposure,
        min_confidence=min_confidence, halted=halted, size=sized,
    )  # fmt: skip
    return [Ranked(items[i], r, cols.ev[i], reason == TAKEN, reason, n)
            for r, (i, reason, n) in enumerate(ranked, 1)]  # fmt: skip


class Columns(NamedTuple):
    """A minute's candidates as parallel lists (`rank_columns`); `key` breaks EV ties."""

    ev: Sequence[float]
    confidence: Sequence[float]
    symbol: Sequence[str]
    side: Sequence[str]
    strategy: Sequence[str]
    key: Sequence[int]
    blocked: Sequence[str | None]


def rank_columns(
    cols: Columns,
    *,
    open_symbols: Iterable[str],
    open_notional: float,
    equity: float,
    max_positions: int,
    max_total_exposure: float,
    min_confidence: float,
    halted: bool,
    size: Callable[[int], tuple[float, str | None]],
) -> list[tuple[int, str, float]]:
    """The rules of `rank` over columns: (position in the columns, reason, notional) best
    first, `size(position)` called lazily as there.  WHY columns: the trader ranks a whole
    minute (hundreds of candidates in the worst case) on its latency path, and one object
    per candidate in and out costs more than the rules themselves."""
    held = set(open_symbols)
    slots = max_positions - len(held)
    budget = max_total_exposure * equity - open_notional
    ev, conf, symbol, blocked = cols.ev, cols.confidence, cols.symbol, cols.blocked
    order = sorted(zip([-x for x in ev], [-x for x in conf], symbol, cols.side, cols.strategy,
                       cols.key, range(len(ev)), strict=True))  # fmt: skip
    taken_symbols: set[str] = set()
    out: list[tuple[int, str, float]] = []
    for *_, i in order:  # equal keys stay in input order; position i is unique
        sym, notional = symbol[i], 0.0
        if halted:
            reason = HALTED
        elif blocked[i]:
            reason = blocked[i]  # type: ignore[assignment]
        elif sym in held:
            reason = ALREADY_IN_POSITION
        elif conf[i] < min_confidence:
            reason = BELOW_MIN_CONFIDENCE
        elif ev[i] <= 0.0:
            reason = NEGATIVE_EV
        elif sym in taken_symbols:
            reason = SYMBOL_TAKEN
        elif slots <= 0:
            reason = NO_SLOT
        else:
            notional, why = size(i)
            if why:
                reason = why
            elif notional > budget:
                reason = EXPOSURE_CAP
            else:
                reason = TAKEN
                slots -= 1
                budget -= notional
                taken_symbols.add(sym)
        out.append((i, reason, notional))
    return out
