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
    held = set(open_symbols)
    slots = max_positions - len(held)
    budget = max_total_exposure * equity - open_notional
    order = sorted(
        items, key=lambda it: (-it.ev, -it.confidence, it.symbol, it.side, it.strategy, it.key)
    )
    taken_symbols: set[str] = set()
    out: list[Ranked] = []
    for r, it in enumerate(order, 1):
        ev, notional = it.ev, 0.0
        if halted:
            reason = HALTED
        elif it.blocked:
            reason = it.blocked
        elif it.symbol in held:
            reason = ALREADY_IN_POSITION
        elif it.confidence < min_confidence:
            reason = BELOW_MIN_CONFIDENCE
        elif ev <= 0.0:
            reason = NEGATIVE_EV
        elif it.symbol in taken_symbols:
            reason = SYMBOL_TAKEN
        elif slots <= 0:
            reason = NO_SLOT
        else:
            notional, blocked = size(it) if size is not None else (it.notional, None)
            if blocked:
                reason = blocked
            elif notional > budget:
                reason = EXPOSURE_CAP
            else:
                reason = TAKEN
                slots -= 1
                budget -= notional
                taken_symbols.add(it.symbol)
        out.append(Ranked(it, r, ev, reason == TAKEN, reason, notional))
    return out
