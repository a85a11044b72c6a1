"""Reconciliation: the cached positions against the exchange's positionRisk rows.

WHY: the cache is fed by the user-data stream, which can drop events (socket gaps, an
expired listenKey, a restart).  The exchange is the truth; this compares, names every
difference and lists the cache writes that repair it.  Pure: the service fetches the rows
and applies the repairs; the core adopts positions opened behind our back (and protects
them) and closes in its ledger those that vanished (exit reason `external`).

Races: a REST snapshot can be older than an event the cache already applied.  Symbols in
`skip` (the caller's "changed within the grace period") and rows older than the cached
position (`updated_at`) are left alone and reported as deferred, never "repaired" back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from shared.models import Position


class DiffKind(StrEnum):
    MISSING_IN_CACHE = "missing_in_cache"  # opened on the exchange behind our back
    MISSING_ON_EXCHANGE = "missing_on_exchange"  # closed behind our back
    SIZE_MISMATCH = "size_mismatch"
    ENTRY_MISMATCH = "entry_mismatch"


@dataclass(frozen=True, slots=True)
class PositionDiff:
    kind: DiffKind
    symbol: str
    cached: Position | None
    exchange: Position | None
    detail: str


@dataclass(frozen=True, slots=True)
class CacheRepair:
    """Write `position` to the symbol's cache hash, or delete the hash when None."""

    symbol: str
    position: Position | None
    kind: DiffKind
    reason: str


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    diffs: tuple[PositionDiff, ...]
    repairs: tuple[CacheRepair, ...]
    counts: Mapping[DiffKind, int]
    deferred: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.diffs


def _entry_differs(a: Decimal, b: Decimal, rel_tol: Decimal) -> bool:
    scale = max(abs(a), abs(b))
    return abs(a - b) > rel_tol * scale


def _compare(c: Position, x: Position, rel_tol: Decimal) -> tuple[DiffKind, str] | None:
    if c.size != x.size:
        return DiffKind.SIZE_MISMATCH, f"size cache {c.size} != exchange {x.size}"
    if _entry_differs(c.entry_price, x.entry_price, rel_tol):
        return DiffKind.ENTRY_MISMATCH, f"entry cache {c.entry_price} != exchange {x.entry_price}"
    return None


def reconcile(
    cached: Mapping[str, Position],
    exchange: Iterable[Position],
    *,
    skip: Collection[str] = (),
    entry_rel_tol: Decimal = Decimal("1e-6"),
) -> ReconcileResult:
    """Differences between `cached` (symbol -> Position) and the exchange rows, with the
    repairs that make the cache equal to the exchange.  Zero-size entries on either side
    mean "no position".  A repaired position keeps the cached leverage when the exchange
    row does not report one (positionRisk v3 does not)."""
    rows = {p.symbol: p for p in exchange if p.size != 0}
    have = {s: p for s, p in cached.items() if p.size != 0}
    diffs: list[PositionDiff] = []
    repairs: list[CacheRepair] = []
    deferred: list[str] = []
    for symbol in sorted(set(rows) | set(have)):
        c, x = have.get(symbol), rows.get(symbol)
        if symbol in skip or (c is not None and x is not None and x.updated_at < c.updated_at):
            if c is None or x is None or _compare(c, x, entry_rel_tol) is not None:
                deferred.append(symbol)
            continue
        if c is None and x is not None:
            diff = PositionDiff(DiffKind.MISSING_IN_CACHE, symbol, None, x,
                                f"exchange holds {x.size} @ {x.entry_price}, cache none")  # fmt: skip
        elif x is None and c is not None:
            diff = PositionDiff(DiffKind.MISSING_ON_EXCHANGE, symbol, c, None,
                                f"cache holds {c.size} @ {c.entry_price}, exchange none")  # fmt: skip
        else:
            assert c is not None and x is not None
            found = _compare(c, x, entry_rel_tol)
            if found is None:
                continue
            diff = PositionDiff(found[0], symbol, c, x, found[1])
        diffs.append(diff)
        repairs.append(_repair(diff))
    counts = Counter(d.kind for d in diffs)
    return ReconcileResult(
        tuple(diffs), tuple(repairs), {k: counts.get(k, 0) for k in DiffKind}, tuple(deferred)
    )


def _repair(diff: PositionDiff) -> CacheRepair:
    x, c = diff.exchange, diff.cached
    if x is None:
        return CacheRepair(diff.symbol, None, diff.kind, diff.detail)
    if x.leverage is None and c is not None and c.leverage is not None:
        x = replace(x, leverage=c.leverage)
    return CacheRepair(diff.symbol, x, diff.kind, diff.detail)


def apply_repairs(
    cached: Mapping[str, Position], repairs: Iterable[CacheRepair]
) -> dict[str, Position]:
    """The cache after the repairs (what the service writes to Redis, as a dict)."""
    out = dict(cached)
    for r in repairs:
        if r.position is None:
            out.pop(r.symbol, None)
        else:
            out[r.symbol] = r.position
    return out
