"""rest_fallback writes positions and balances through the ONE account cache writer
(`shared.account_cache`): an older REST snapshot never regresses what account_feed
stored, and leverage (absent from v3 positionRisk) survives the repair."""

from __future__ import annotations

import time
from decimal import Decimal

import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from services.exchange_sim.server import SimConfig, SimServer
from services.rest_fallback.service import RestFallbackService
from shared.account_cache import (
    AccountCache,
    BalanceWrite,
    LeverageWrite,
    PositionWrite,
    Snapshot,
    snapshot_writes,
)
from shared.binance.client import BinanceClient
from shared.keys import Keys
from shared.models import Balance, Position
from tests.polling import until
from tests.test_kline_feed_support import SYMBOLS, feed_settings, running

D = Decimal


def _pos(symbol: str, size: str, updated: int) -> Position:
    return Position(symbol, D(size), D("100"), D("100"), D(0), "cross", D(0), None, updated)


def _bal(wallet: str, updated: int) -> Balance:
    return Balance("USDT", D(wallet), D(wallet), D(0), updated)


async def test_older_rest_snapshot_keeps_newer_feed_state_and_leverage(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    async with SimServer(SimConfig(symbols=SYMBOLS, speed=1)) as sim:
        async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret,
                                                  redis_prefix=prefix) as client:  # fmt: skip
            for sym, qty in (("BTCUSDT", "0.010"), ("ETHUSDT", "0.100"), ("SOLUSDT", "1")):
                await client.new_order(symbol=sym, side="BUY", type="MARKET", quantity=qty,
                                       newClientOrderId=f"t-fb-acct-{sym}")  # fmt: skip
        # what account_feed stored: BTCUSDT and USDT from events NEWER than anything the
        # exchange's REST rows can say; ETHUSDT from an old event; leverage for all three
        # (SOLUSDT's position was opened while the feed was down: no hash yet)
        future = int(time.time() * 1000) + 10 * 86_400_000
        feed = AccountCache(redis_client, keys)
        await feed.apply([
            LeverageWrite("BTCUSDT", 1, 7), LeverageWrite("ETHUSDT", 1, 3),
            LeverageWrite("SOLUSDT", 1, 5),
            PositionWrite("BTCUSDT", future, _pos("BTCUSDT", "0.5", future)),
            PositionWrite("ETHUSDT", 1, _pos("ETHUSDT", "9", 1)),
            BalanceWrite("USDT", future, _bal("123", future)),
        ])  # fmt: skip
        st_ = feed_settings(sim, redis_url, prefix)
        fb = RestFallbackService(st_)
        async with running(fb, st_):
            await until(lambda: fb.stats()["positions_written"] >= 2, 5)
            await until(lambda: fb.stats()["account_stale"] >= 2, 5)
            stats = fb.stats()
    pos = {s: await redis_client.hgetall(keys.position(s)) for s in SYMBOLS}
    btc, eth, sol = (Position.from_hash(pos[s]) for s in SYMBOLS)
    eth_slot = int(await redis_client.hget(keys.account_state, "position:ETHUSDT"))
    bal = Balance.from_hash(await redis_client.hgetall(keys.balance("USDT")))
    got = {
        "btc not regressed": (btc.size, btc.leverage, btc.updated_at),
        "eth repaired": eth.size,
        "eth timed by updateTime": 1 < eth_slot < future and eth.updated_at == eth_slot,
        "leverage kept": (pos["ETHUSDT"][b"leverage"], pos["SOLUSDT"][b"leverage"]),
        "sol written": sol.size,
        "balance not regressed": bal.wallet_balance,
    }
    assert got == {
        "btc not regressed": (D("0.5"), 7, future),
        "eth repaired": D("0.100"),
        "eth timed by updateTime": True,
        "leverage kept": (b"3", b"5"),
        "sol written": D("1"),
        "balance not regressed": D("123"),
    }
    assert stats["account_stale"] >= 2 and stats["positions_written"] >= 2


def test_snapshot_without_floor_times_rows_by_their_own_update_time() -> None:
    snap = Snapshot(
        1_000,
        (_pos("BTCUSDT", "1", 400), _pos("ETHUSDT", "2", 0), _pos("SOLUSDT", "0", 300)),
        (_bal("5", 0), Balance("BNB", D(1), D(1), D(0), 900)),
        floor=False,
    )
    ws = snapshot_writes(snap, cached_symbols=["XRPUSDT"])
    times = {(type(w).__name__, getattr(w, "symbol", getattr(w, "asset", ""))): w.event_time
             for w in ws}  # fmt: skip
    assert times == {
        ("PositionWrite", "BTCUSDT"): 400,  # its updateTime, though older than as_of
        ("PositionWrite", "ETHUSDT"): 1_000,  # no updateTime: the request's time
        ("PositionWrite", "SOLUSDT"): 300,  # a zero row: removed at its updateTime
        ("PositionWrite", "XRPUSDT"): 1_000,  # cached, absent: removed at as_of
        ("BalanceWrite", "USDT"): 1_000,
        ("BalanceWrite", "BNB"): 900,
    }
    btc = next(w for w in ws if isinstance(w, PositionWrite) and w.symbol == "BTCUSDT")
    assert btc.position is not None and btc.position.updated_at == 400
    assert not any(isinstance(w, LeverageWrite) for w in ws)  # leverage left alone


@given(
    as_of=st.integers(0, 10**13),
    updated=st.lists(st.integers(0, 10**13), min_size=1, max_size=6),
)
def test_rest_fallback_times_never_claim_more_than_reconciliation(
    as_of: int, updated: list[int]
) -> None:
    """floor=False (rest_fallback) is the conservative timing: never newer than what
    account_feed's own reconciliation (floor=True) would claim for the same rows."""
    rows = tuple(_pos(f"S{i}USDT", "1", u) for i, u in enumerate(updated))
    bals = tuple(Balance(f"A{i}", D(1), D(1), D(0), u) for i, u in enumerate(updated))
    loose = snapshot_writes(Snapshot(as_of, rows, bals, floor=False), ["ZZUSDT"])
    strict = snapshot_writes(Snapshot(as_of, rows, bals), ["ZZUSDT"])
    assert [w.slot for w in loose] == [w.slot for w in strict]
    for a, b in zip(loose, strict, strict=True):
        assert a.event_time <= b.event_time
        assert a.event_time > 0 or as_of == 0
