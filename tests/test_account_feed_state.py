"""account_feed's pure core (events -> writes, the event-time rule) and its Redis twin.

The Lua applier in services/account_feed/cache.py must end in exactly the state of the
reference model `AccountState` for the same writes: Hypothesis drives both with random
batches full of equal and out-of-order event times.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.account_feed.cache import APPLY_LUA, AccountCache, build_call
from services.account_feed.events import process_batch
from services.account_feed.state import (
    AccountState,
    BalanceWrite,
    LeverageWrite,
    PositionWrite,
    Snapshot,
    Write,
    account_update_writes,
    config_update_writes,
    parse_balance_rows,
    parse_leverage_rows,
    parse_position_rows,
    snapshot_writes,
)
from shared.binance.schemas import parse_user_event
from shared.codec import decode_event, encode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    Balance,
    ConfigUpdate,
    OrderUpdate,
    Position,
)

D = Decimal


def account_update(e: int, positions: list[dict[str, Any]], wb: str = "1000") -> bytes:
    return orjson.dumps(
        {"e": "ACCOUNT_UPDATE", "E": e, "T": e - 1,
         "a": {"m": "ORDER", "B": [{"a": "USDT", "wb": wb, "cw": wb, "bc": "0"}],
               "P": positions}}
    )  # fmt: skip


def pos_entry(symbol: str, pa: str, ep: str = "100", ps: str = "BOTH") -> dict[str, Any]:
    return {"s": symbol, "pa": pa, "ep": ep, "bep": ep, "cr": "0", "up": "1.5",
            "mt": "cross", "iw": "0", "ps": ps}  # fmt: skip


def position(symbol: str, size: str, t: int, entry: str = "100") -> Position:
    return Position(symbol, D(size), D(entry), D(entry), D("0"), "cross", D("0"), None, t)


ORDER = {"e": "ORDER_TRADE_UPDATE", "E": 1_700_000_000_100, "T": 1_700_000_000_099,
         "o": {"s": "BTCUSDT", "c": "abc", "S": "BUY", "o": "MARKET", "f": "GTC", "q": "0.01",
               "p": "0", "ap": "30000", "sp": "0", "x": "TRADE", "X": "FILLED", "i": 7,
               "l": "0.01", "z": "0.01", "L": "30000", "N": "USDT", "n": "0.15",
               "T": 1_700_000_000_099, "t": 3, "m": False, "R": False, "wt": "CONTRACT_PRICE",
               "ot": "MARKET", "ps": "BOTH", "rp": "0"}}  # fmt: skip
ALGO = {"e": "ALGO_UPDATE", "T": 1_700_000_000_200, "E": 1_700_000_000_201,
        "o": {"caid": "stop-1", "aid": 21, "at": "CONDITIONAL", "o": "STOP_MARKET",
              "s": "ETHUSDT", "S": "SELL", "ps": "BOTH", "q": "0.1", "X": "NEW", "tp": "1800",
              "cp": False, "R": True}}  # fmt: skip
CONFIG = {"e": "ACCOUNT_CONFIG_UPDATE", "E": 1_700_000_000_300, "T": 1_700_000_000_299,
          "ac": {"s": "BTCUSDT", "l": 25}}  # fmt: skip


# ---- events -> writes ------------------------------------------------------------------------


def test_account_update_becomes_balance_and_position_writes_timed_by_event_time() -> None:
    ev = parse_user_event(account_update(5_000, [pos_entry("BTCUSDT", "0.5", "67000")]))
    writes = account_update_writes(AccountUpdate.from_event(ev))  # type: ignore[arg-type]
    bal, pos = writes
    assert isinstance(bal, BalanceWrite) and bal.event_time == 5_000
    assert bal.balance.wallet_balance == D("1000") and bal.slot == "balance:USDT"
    assert isinstance(pos, PositionWrite) and pos.slot == "position:BTCUSDT"
    assert pos.position is not None and pos.position.size == D("0.5")
    assert pos.position.entry_price == D("67000") and pos.position.updated_at == 5_000
    assert pos.position.leverage is None  # leverage is never part of a position write


def test_a_closed_position_is_a_removal() -> None:
    ev = parse_user_event(account_update(6_000, [pos_entry("BTCUSDT", "0")]))
    (_, pos) = account_update_writes(AccountUpdate.from_event(ev))  # type: ignore[arg-type]
    assert isinstance(pos, PositionWrite) and pos.position is None and pos.event_time == 6_000


def test_hedge_mode_entries_prefer_both_then_the_open_side() -> None:
    ev = parse_user_event(account_update(1, [
        pos_entry("BTCUSDT", "0", ps="LONG"), pos_entry("BTCUSDT", "-2", ps="SHORT"),
        pos_entry("ETHUSDT", "3", ps="LONG"), pos_entry("ETHUSDT", "0", ps="BOTH"),
    ]))  # fmt: skip
    writes = account_update_writes(AccountUpdate.from_event(ev))  # type: ignore[arg-type]
    by = {w.symbol: w for w in writes if isinstance(w, PositionWrite)}
    assert by["BTCUSDT"].position is not None and by["BTCUSDT"].position.size == D("-2")
    assert by["ETHUSDT"].position is None  # the BOTH entry says flat


def test_config_update_writes_leverage_and_ignores_asset_mode() -> None:
    lev = ConfigUpdate.from_event(parse_user_event(orjson.dumps(CONFIG)))  # type: ignore[arg-type]
    assert config_update_writes(lev) == [LeverageWrite("BTCUSDT", 1_700_000_000_300, 25)]
    mode = dict(CONFIG, ac=None, ai={"j": True})
    assert config_update_writes(ConfigUpdate.from_event(parse_user_event(mode))) == []  # type: ignore[arg-type]


# ---- the event-time rule (reference model) ---------------------------------------------------


def test_an_older_event_never_overwrites_newer_state() -> None:
    s = AccountState()
    assert s.apply(PositionWrite("BTCUSDT", 200, position("BTCUSDT", "2", 200)))
    assert not s.apply(PositionWrite("BTCUSDT", 100, position("BTCUSDT", "1", 100)))
    assert s.positions["BTCUSDT"].size == D("2")
    assert s.apply(PositionWrite("BTCUSDT", 300, None))  # closed: removed
    assert not s.apply(PositionWrite("BTCUSDT", 250, position("BTCUSDT", "5", 250)))
    assert "BTCUSDT" not in s.positions  # a late old event cannot resurrect it
    assert s.apply(PositionWrite("BTCUSDT", 300, position("BTCUSDT", "3", 300)))  # equal time
    assert s.positions["BTCUSDT"].size == D("3")


def test_leverage_fills_positions_and_follows_its_own_time() -> None:
    s = AccountState()
    s.apply(LeverageWrite("BTCUSDT", 10, 5))
    s.apply(PositionWrite("BTCUSDT", 20, position("BTCUSDT", "1", 20)))
    assert s.positions["BTCUSDT"].leverage == 5
    s.apply(LeverageWrite("BTCUSDT", 30, 12))
    assert s.positions["BTCUSDT"].leverage == 12
    assert not s.apply(LeverageWrite("BTCUSDT", 25, 3))
    assert s.positions["BTCUSDT"].leverage == 12 and s.leverage["BTCUSDT"] == 12


SYMBOLS = ("BTCUSDT", "ETHUSDT")
times = st.integers(1, 12)  # few values: many ties and inversions
sizes = st.decimals(D("-50"), D("50"), places=3, allow_nan=False).filter(lambda d: d != 0)
prices = st.decimals(D("0.01"), D("99999"), places=2, allow_nan=False)


@st.composite
def writes(draw: Any) -> Write:
    kind = draw(st.sampled_from(("pos", "pos", "close", "bal", "lev")))
    t = draw(times)
    sym = draw(st.sampled_from(SYMBOLS))
    if kind == "pos":
        size, entry = draw(sizes), draw(prices)
        upnl = draw(st.decimals(D("-1000"), D("1000"), places=4, allow_nan=False))
        p = Position(sym, size, entry, entry, upnl, "cross", D(0), None, t)
        return PositionWrite(sym, t, p)
    if kind == "close":
        return PositionWrite(sym, t, None)
    if kind == "bal":
        asset = draw(st.sampled_from(("USDT", "BNB")))
        wb = draw(st.decimals(D("0"), D("1e6"), places=8, allow_nan=False))
        return BalanceWrite(asset, t, Balance(asset, wb, wb, D(0), t))
    return LeverageWrite(sym, t, draw(st.integers(1, 125)))


@given(st.lists(writes(), max_size=40))
def test_final_state_is_the_last_arrival_among_the_newest_writes(ws: list[Write]) -> None:
    s = AccountState()
    s.apply_all(ws)
    for slot in {w.slot for w in ws}:
        mine = [w for w in ws if w.slot == slot]
        newest = max(w.event_time for w in mine)
        winner = [w for w in mine if w.event_time == newest][-1]
        assert s.times[slot] == newest
        if isinstance(winner, PositionWrite):
            got = s.positions.get(winner.symbol)
            if winner.position is None:
                assert got is None
            else:
                assert got is not None and got.size == winner.position.size
                assert got.leverage == s.leverage.get(winner.symbol)
        elif isinstance(winner, BalanceWrite):
            assert s.balances[winner.asset] == winner.balance
        else:
            assert s.leverage[winner.symbol] == winner.leverage


# ---- the Lua applier equals the model ----------------------------------------------------------


def _redis_state(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    positions = {}
    for sym in SYMBOLS:
        raw = r.hgetall(keys.position(sym))
        if raw:
            positions[sym] = Position.from_hash(raw)
    balances = {}
    for asset in ("USDT", "BNB"):
        raw = r.hgetall(keys.balance(asset))
        if raw:
            balances[asset] = Balance.from_hash(raw)
    lev = {k.decode(): int(v) for k, v in r.hgetall(keys.account_leverage).items()}
    times_ = {k.decode(): int(v) for k, v in r.hgetall(keys.account_state).items()}
    return {"positions": positions, "balances": balances, "leverage": lev, "times": times_}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(st.lists(writes(), min_size=1, max_size=8), max_size=6))
def test_lua_applier_matches_the_reference_model(
    redis_url: str, batches: list[list[Write]]
) -> None:
    keys = Keys(f"h{uuid.uuid4().hex[:10]}:")
    model = AccountState()
    r = redis.Redis.from_url(redis_url)
    try:
        script = r.register_script(APPLY_LUA)
        for batch in batches:
            script_keys, args = build_call(keys, batch, [], 1000)
            flags = [bool(x) for x in script(keys=script_keys, args=args)]
            assert flags == model.apply_all(batch)
        got = _redis_state(r, keys)
        assert got["positions"] == model.positions
        assert got["balances"] == model.balances
        assert got["leverage"] == model.leverage
        assert got["times"] == model.times
    finally:
        r.close()


async def test_cache_drops_an_older_event_and_publishes_every_event(
    redis_client: Any, prefix: str
) -> None:
    keys = Keys(prefix)
    cache = AccountCache(redis_client, keys, 1000)
    newer = account_update(2_000, [pos_entry("BTCUSDT", "2", "101")], wb="900")
    older = account_update(1_000, [pos_entry("BTCUSDT", "1", "99")], wb="800")
    for raw in (newer, older):
        batch = process_batch([raw])
        await cache.apply(batch.writes, batch.entries)
    h = await redis_client.hgetall(keys.position("BTCUSDT"))
    assert h[b"size"] == b"2" and h[b"entry_price"] == b"101" and h[b"updated_at"] == b"2000"
    assert (await redis_client.hget(keys.balance("USDT"), "wallet_balance")) == b"900"
    assert (await redis_client.hget(keys.account_state, "position:BTCUSDT")) == b"2000"
    assert await redis_client.xlen(keys.stream_account) == 2  # both published, one applied
    # the seed's cache fields, as plain strings a human reads in redis-cli
    assert {b"symbol", b"size", b"entry_price", b"break_even_price", b"unrealized_pnl",
            b"margin_type", b"isolated_wallet", b"leverage", b"updated_at"} <= set(h)  # fmt: skip
    closed = process_batch([account_update(3_000, [pos_entry("BTCUSDT", "0")])])
    assert await cache.apply(closed.writes, closed.entries) == [True, True]
    assert not await redis_client.exists(keys.position("BTCUSDT"))
    assert await cache.cached_symbols() == []


async def test_two_writers_racing_cannot_regress_a_position(redis_url: str, prefix: str) -> None:
    """Two processes (two connections) apply the same writes in opposite orders at once:
    whatever interleaving Redis picks, the newest event wins."""
    keys = Keys(prefix)
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        ws = [PositionWrite("BTCUSDT", t, position("BTCUSDT", str(t), t)) for t in range(1, 201)]
        ca, cb = AccountCache(a, keys), AccountCache(b, keys)

        async def run(cache: AccountCache, order: list[PositionWrite]) -> None:
            for w in order:
                await cache.apply([w])

        await asyncio.gather(run(ca, ws), run(cb, ws[::-1]))
        h = await a.hgetall(keys.position("BTCUSDT"))
        assert h[b"size"] == b"200" and h[b"updated_at"] == b"200"
    finally:
        await a.aclose()
        await b.aclose()


# ---- batches: parse, convert, encode -----------------------------------------------------------


def test_batch_turns_every_event_type_into_a_bus_entry() -> None:
    raws = [orjson.dumps(ORDER), account_update(1_700_000_000_150, [pos_entry("BTCUSDT", "0.01")]),
            orjson.dumps(ALGO), orjson.dumps(CONFIG)]  # fmt: skip
    out = process_batch(raws)
    assert out.bad == 0 and out.last_event_time == 1_700_000_000_300
    kinds = [(e["type"], e["symbol"], e["event_time"]) for e in out.entries]
    assert kinds == [
        ("ORDER_TRADE_UPDATE", "BTCUSDT", "1700000000100"),
        ("ACCOUNT_UPDATE", "BTCUSDT", "1700000000150"),
        ("ALGO_UPDATE", "ETHUSDT", "1700000000201"),
        ("ACCOUNT_CONFIG_UPDATE", "BTCUSDT", "1700000000300"),
    ]
    records = [decode_event(e) for e in out.entries]
    order = OrderUpdate.from_dict(records[0][1])
    assert order.is_fill and order.last_filled_price == D("30000") and order.commission == D("0.15")
    assert AccountUpdate.from_dict(records[1][1]).positions[0].amount == D("0.01")
    assert AlgoUpdate.from_dict(records[2][1]).trigger_price == D("1800")
    assert ConfigUpdate.from_dict(records[3][1]).leverage == 25
    assert [type(w).__name__ for w in out.writes] == ["BalanceWrite", "PositionWrite",
                                                      "LeverageWrite"]  # fmt: skip


def test_batch_counts_and_drops_bad_and_ignorable_messages() -> None:
    raws = [b'{"e":"ORDER_TRADE_UPDATE","E":', b"\xff\xfe", orjson.dumps({"e": "X", "E": 1}),
            orjson.dumps({"e": "ORDER_TRADE_UPDATE", "E": 5}),
            account_update(9, [pos_entry("BTCUSDT", "1")], wb="NaN"),
            orjson.dumps({"e": "TRADE_LITE", "E": 3}), orjson.dumps(ORDER)]  # fmt: skip
    out = process_batch(raws)
    assert (out.bad, out.ignored, len(out.entries)) == (5, 1, 1)
    assert len(out.reasons) == 5 and out.entries[0]["type"] == "ORDER_TRADE_UPDATE"


def test_listen_key_expired_is_reported_not_published() -> None:
    raw = b'{"e":"listenKeyExpired","E":"1736996475556","listenKey":"abc"}'
    out = process_batch([raw])
    assert out.expired_keys == ["abc"] and out.entries == [] and out.bad == 0


# ---- reconciliation --------------------------------------------------------------------------


def test_snapshot_writes_make_the_cache_equal_the_exchange() -> None:
    rows = [
        {"symbol": "BTCUSDT", "positionAmt": "0.010", "entryPrice": "30000",
         "breakEvenPrice": "30015", "unRealizedProfit": "1.2", "isolatedWallet": "0",
         "updateTime": 500, "positionSide": "BOTH"},
        {"symbol": "ETHUSDT", "positionAmt": "0", "entryPrice": "0", "breakEvenPrice": "0",
         "unRealizedProfit": "0", "isolatedWallet": "0", "updateTime": 9_000},
        {"symbol": "bad"},
    ]  # fmt: skip
    positions, bad = parse_position_rows(rows)
    balances, bad_b = parse_balance_rows(
        [{"asset": "USDT", "balance": "990.5", "crossWalletBalance": "990.5", "updateTime": 0}],
        1_000,
    )
    lev, bad_l = parse_leverage_rows([{"symbol": "BTCUSDT", "leverage": "7"}, {"symbol": "x"}])
    assert (bad, bad_b, bad_l) == (1, 0, 1)
    snap = Snapshot(1_000, tuple(positions), tuple(balances), lev)
    ws = snapshot_writes(snap, cached_symbols=["SOLUSDT", "BTCUSDT"])
    assert ws[0] == LeverageWrite("BTCUSDT", 1_000, 7)  # first: positions pick it up
    by = {w.slot: w for w in ws}
    btc = by["position:BTCUSDT"]
    assert isinstance(btc, PositionWrite) and btc.position is not None
    assert btc.event_time == 1_000 and btc.position.size == D("0.010")  # max(as_of, update)
    assert by["position:ETHUSDT"] == PositionWrite("ETHUSDT", 9_000, None)
    assert by["position:SOLUSDT"] == PositionWrite("SOLUSDT", 1_000, None)  # vanished
    model = AccountState()
    model.apply(PositionWrite("SOLUSDT", 400, position("SOLUSDT", "3", 400)))
    model.apply(PositionWrite("ETHUSDT", 9_500, position("ETHUSDT", "1", 9_500)))  # newer
    model.apply_all(ws)
    assert set(model.positions) == {"BTCUSDT", "ETHUSDT"}  # ETH kept: its event is newer
    assert model.positions["BTCUSDT"].leverage == 7
    assert model.balances["USDT"].wallet_balance == D("990.5")


def test_bad_snapshot_shapes_raise_message_error() -> None:
    for fn in (parse_position_rows, parse_leverage_rows):
        with pytest.raises(MessageError):
            fn({"code": -1})  # type: ignore[operator]
    with pytest.raises(MessageError):
        parse_balance_rows("x", 0)


def test_bus_entry_fields_are_plain() -> None:
    entry = encode_event("ACCOUNT_UPDATE", {"x": D("1.0")}, symbol="BTCUSDT", event_time=5)
    out = process_batch([account_update(5, [pos_entry("BTCUSDT", "1")])]).entries[0]
    assert set(out) == set(entry) and out["v"] == "1"
