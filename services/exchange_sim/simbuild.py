"""Builds the simulator's market and engine from a `SimConfig` (the only place that knows
which market class and which engine options a run uses).

Time layout: the market's bar 0 opens `history_minutes` before the simulation start, so
REST has that much closed history the moment the server is up. A replay starts, unless
told otherwise, `history_minutes` after its first bar.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .engine import Exchange
from .specs import SymbolSpec

if TYPE_CHECKING:
    from .server import SimConfig

MINUTE_MS = 60_000


def _aligned(ms: int) -> int:
    return ms - ms % MINUTE_MS


def build_market(cfg: SimConfig) -> tuple[Any, dict[str, SymbolSpec], int]:
    """(market, specs by symbol, simulation start ms)."""
    history_ms = cfg.history_minutes * MINUTE_MS
    if cfg.source == "synthetic":
        from .market.synthetic import SyntheticMarket

        start = cfg.start_ms if cfg.start_ms is not None else _aligned(int(time.time() * 1000))
        market = SyntheticMarket(list(cfg.symbols), cfg.seed, _aligned(start) - history_ms)
    elif cfg.source == "replay":
        from .market.replay import ReplayMarket

        if not cfg.data:
            raise ValueError("replay needs data files")
        market = ReplayMarket.from_files(list(cfg.data))
        first = int(market.start_ms)
        start = cfg.start_ms if cfg.start_ms is not None else _aligned(first + history_ms)
    else:
        raise ValueError(f"unknown source {cfg.source!r}")
    specs = dict(market.specs())
    if not specs:
        raise ValueError("the market has no symbols")
    return market, specs, start


def build_exchange(cfg: SimConfig, specs: dict[str, SymbolSpec]) -> Exchange:
    ex = Exchange(
        specs,
        taker_fee=cfg.taker_fee,
        maker_fee=cfg.maker_fee,
        slippage_bps=cfg.slippage_bps,
        funding_enabled=cfg.funding_enabled,
        **cfg.engine_options,
    )
    for acc in cfg.accounts:
        ex.add_account(acc.account_id, acc.balance)
    return ex
