"""account_feed against the exchange simulator and a real Redis.

Faults come from the simulator's admin API; the exchange's truth is read from its engine
directly (no REST in the assertions).  Most tests run the simulator at 1x (nothing there
needs time to pass); the keepalive test runs it at 600x, where a listenKey lives 60
simulated minutes = 6 real seconds, so the service is told `key_validity=6` and keeps
its key with a 1 s period (10 simulated minutes).  REST clients read the simulator's
own clock, so their time offset is exactly 0 (`SimClockClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from services.account_feed.__main__ import main
from services.account_feed.cache import AccountCache
from services.account_feed.service import AccountFeedService
from services.exchange_sim.server import SimConfig, SimServer
from shared.binance.client import BinanceClient
from shared.codec import decode_event
from shared.config import Settings, load_settings
from shared.keys import Keys
from shared.models import OrderUpdate
from shared.runtime import serve
from tests.polling import until

FAST = 600
SYMBOLS = ("BTCUSDT", "ETHUSDT")


class SimClockClient(BinanceClient):
    """A client whose wall clock IS the simulator's: the server-time offset is 0 by
    construction, so it is not measured (at 600x one real millisecond of round-trip
    noise would be 600 simulated ones, past Binance's 1 s future tolerance)."""

    async def _sync_locked(self) -> int:
        self._time_synced = True
        return 0


class Feed:
    """A running service with its simulator, REST client and cache reader."""

    def __init__(self, sim: SimServer, svc: AccountFeedService, rest: BinanceClient,
                 cache: AccountCache, settings: Settings, task: asyncio.Task[int]) -> None:  # fmt: skip
        self.sim, self.svc, self.rest, self.cache = sim, svc, rest, cache
        self.settings, self.task = settings, task

    def keys(self) -> list[dict[str, Any]]:
        return self.sim.admin.state()["listenKeys"]

    def active_keys(self) -> list[str]:
        return [k["listenKey"] for k in self.keys() if k["state"] == "active"]

    def fill(self, symbol: str, side: str, qty: str, client_id: str) -> None:
        """A market order straight on the engine; its events go to the user sockets."""
        now = self.sim.catch_up()
        params = {"symbol": symbol, "side": side, "type": "MARKET", "quantity": qty,
                  "newClientOrderId": client_id}  # fmt: skip
        _, events = self.sim.exchange.place_order(self.sim.demo_key, params, now)
        self.sim.push_events(events)

    async def matches_exchange(self) -> bool:
        """Positions (size, entry, break-even) and the wallet equal the engine's."""
        self.sim.catch_up()
        rows = self.sim.exchange.position_risk(self.sim.demo_key, None, 3)
        ex = {r["symbol"]: r for r in rows if Decimal(r["positionAmt"]) != 0}
        got = await self.cache.read()
        if set(got["positions"]) != set(ex):
            return False
        for sym, r in ex.items():
            p = got["positions"][sym]
            if (p.size, p.entry_price, p.break_even_price) != (
                Decimal(r["positionAmt"]),
                Decimal(r["entryPrice"]),
                Decimal(r["breakEvenPrice"]),
            ):
                return False
        wallet = Decimal(self.sim.exchange.balances(self.sim.demo_key, 3)[0]["balance"])
        bal = got["balances"].get("USDT")
        return bal is not None and bal.wallet_balance == wallet

    async def stream_types(self) -> list[tuple[str, dict[str, Any]]]:
        entries = await self.cache.redis.xrange(self.cache.keys.stream_account)
        return [(t, d) for t, d, _ in (decode_event(f) for _, f in entries)]


def feed_settings(sim: SimServer, redis_url: str, prefix: str) -> Settings:
    return load_settings(
        exchange={"mode": "sim", "rest_url": sim.rest_url, "ws_url": sim.ws_url,
                  "user_ws_url": sim.user_ws_url, "symbols": list(SYMBOLS),
                  "recv_window": 60_000},
        redis={"url": redis_url, "prefix": prefix},
        websocket={"listen_key_renewal": 1, "reconnect_delay": 0.05, "reconnect_max_delay": 0.5},
        service={"heartbeat_interval": 0.2},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running(
    redis_client: Any, redis_url: str, prefix: str, before: Any = None, speed: float = 1,
    **svc: Any,
) -> AsyncIterator[Feed]:  # fmt: skip
    async with SimServer(SimConfig(symbols=SYMBOLS, speed=speed, history_minutes=5)) as sim:
        settings = feed_settings(sim, redis_url, prefix)
        wall = lambda: sim.clock.now_ms() / 1000  # noqa: E731
        client = SimClockClient(settings, None, wall=wall)
        rest = SimClockClient(settings, None, wall=wall)
        if before is not None:
            await before(sim, rest)
        opts = {"key_validity": 3600 / speed, "retry_base": 0.1, "retry_max": 0.5, **svc}
        service = AccountFeedService(settings, client=client, **opts)
        task = asyncio.create_task(serve(service, settings, port=0, install_signals=False))
        feed = Feed(sim, service, rest, AccountCache(redis_client, Keys(prefix)), settings, task)
        try:
            await until(lambda: service.stats()["reconciliations"] >= 1, 10)
            yield feed
        finally:
            service.request_stop("test over")
            await asyncio.wait_for(task, 15)
            await client.close()
            await rest.close()


async def test_fills_reach_the_caches_with_the_exchanges_numbers(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async def before(sim: SimServer, rest: BinanceClient) -> None:
        await rest.change_leverage("BTCUSDT", 7)  # leverage known only over REST at start
        await rest.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010")

    async with running(redis_client, redis_url, prefix, before) as f:
        assert await f.matches_exchange()  # the start-up reconcile found the position
        btc = (await f.cache.read())["positions"]["BTCUSDT"]
        assert btc.leverage == 7 and btc.size == Decimal("0.010")
        await f.rest.new_order(symbol="ETHUSDT", side="SELL", type="MARKET", quantity="0.500",
                               newClientOrderId="eth-short-1")  # fmt: skip
        await f.rest.change_leverage("ETHUSDT", 12)
        await f.rest.new_algo_order(symbol="ETHUSDT", side="BUY", type="STOP_MARKET",
                                    triggerPrice="99999", closePosition="true")  # fmt: skip
        await until(f.matches_exchange, 5)
        await until(lambda: f.svc.stats()["events_published"] >= 5, 5)
        eth = (await f.cache.read())["positions"]["ETHUSDT"]
        assert eth.size == Decimal("-0.500") and eth.leverage == 12
        assert eth.margin_type == "cross" and eth.updated_at > 0
        types = await f.stream_types()
        kinds = {t for t, _ in types}
        assert {"ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE", "ACCOUNT_CONFIG_UPDATE",
                "ALGO_UPDATE"} <= kinds  # fmt: skip
        fills = [OrderUpdate.from_dict(d) for t, d in types if t == "ORDER_TRADE_UPDATE"]
        assert any(o.client_order_id == "eth-short-1" and o.is_fill for o in fills)
        # a closed position leaves the cache
        await f.rest.new_order(symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.010",
                               reduceOnly="true")  # fmt: skip
        await until(f.matches_exchange, 5)
        assert "BTCUSDT" not in (await f.cache.read())["positions"]
        s = f.svc.stats()
        assert s["connected"] and s["listen_key_valid"] and s["bad_messages"] == 0
        assert s["last_event_time"] and s["account_feed"]["connected"] is True


async def test_expired_key_is_replaced_and_positions_reconciled(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        (old,) = f.active_keys()
        assert f.sim.admin.expire_listen_key() == 1  # the socket gets listenKeyExpired
        f.fill("BTCUSDT", "BUY", "0.020", "during-expiry")  # the silent socket loses this
        await until(lambda: len(f.active_keys()) == 1 and f.active_keys() != [old], 5)
        await until(f.matches_exchange, 5)
        s = f.svc.stats()
        assert s["reconciliations"] >= 2 and s["keys_created"] == 2 and s["reconnects"] >= 1
        assert s["key_invalidations"] == 1
        await until(lambda: f.svc.stats()["connected"], 5)
        # nothing on the bus carried that fill: reconciliation put it in the cache
        ids = [d["client_order_id"] for t, d in await f.stream_types() if t == "ORDER_TRADE_UPDATE"]
        assert "during-expiry" not in ids
        f.fill("BTCUSDT", "BUY", "0.010", "after-expiry")  # the new socket delivers again
        await until(f.matches_exchange, 5)
        await until(lambda: f.svc.stats()["events_published"] >= 3, 5)


async def test_keepalive_fails_once_is_retried_and_the_key_outlives_60_sim_minutes(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix, speed=FAST) as f:
        (key,) = f.active_keys()
        start = f.sim.clock.now_ms()
        f.sim.admin.fail_keepalive(1, "5xx")
        await until(lambda: f.svc.stats()["renewal_failures"] == 1, 5)
        await until(lambda: f.svc.stats()["renewal_successes"] >= 1, 5)
        assert f.sim.admin.state()["faults"]["applied"]["keepalive_5xx"] == 1
        # 75 simulated minutes, longer than one key's 60: the keepalives hold it
        await f.sim.wait_until(start + 75 * 60_000)
        s = f.svc.stats()
        assert f.active_keys() == [key] and s["keys_created"] == 1 and s["reconnects"] == 0
        assert s["renewal_failures"] == 1 and s["renewal_successes"] >= 5
        assert s["renewal_success_rate"] == pytest.approx(
            s["renewal_successes"] / s["renewal_attempts"]
        )
        assert 0.5 < s["renewal_success_rate"] < 1
        assert s["last_renewal"] <= s["next_renewal"] and s["account_feed"]["next_renewal"]
        f.fill("ETHUSDT", "BUY", "0.100", "late")
        await until(f.matches_exchange, 5)


async def test_keepalive_minus_1125_makes_a_new_key_and_reconciles(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        f.sim.admin.fail_keepalive(1, "-1125")
        await until(lambda: f.svc.stats()["key_invalidations"] == 1, 5)
        await until(lambda: f.svc.stats()["reconciliations"] >= 2, 5)
        await until(lambda: f.svc.stats()["connected"], 5)
        f.fill("BTCUSDT", "SELL", "0.010", "after-1125")
        await until(f.matches_exchange, 5)


async def test_socket_drop_during_a_fill_is_repaired_after_reconnect(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        f.fill("BTCUSDT", "BUY", "0.010", "before-drop")
        await until(f.matches_exchange, 5)
        assert f.sim.admin.drop_ws(kind="user") == 1
        f.fill("BTCUSDT", "BUY", "0.030", "during-drop")  # written to a dead socket
        await until(lambda: f.svc.stats()["reconnects"] >= 1, 5)
        await until(f.matches_exchange, 5)
        btc = (await f.cache.read())["positions"]["BTCUSDT"]
        assert btc.size == Decimal("0.040")
        assert f.svc.stats()["reconciliations"] >= 2
        ids = [d["client_order_id"] for t, d in await f.stream_types() if t == "ORDER_TRADE_UPDATE"]
        assert "before-drop" in ids and "during-drop" not in ids


async def test_malformed_messages_are_counted_and_the_feed_carries_on(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        for what in ("garbage", "missing_fields", "nan", "nan_bare"):
            assert f.sim.admin.send_malformed(kind="user", what=what) == 1
        (conn,) = f.sim.registry.select("user")
        f.sim.user_hub.send_to(conn, orjson.dumps({"e": "TRADE_LITE", "E": 1, "s": "BTCUSDT"}))
        f.sim.flush()
        f.fill("ETHUSDT", "SELL", "0.200", "after-garbage")
        await until(f.matches_exchange, 5)
        await until(lambda: f.svc.stats()["ignored_messages"] == 1, 5)
        s = f.svc.stats()
        assert s["bad_messages"] == 4 and s["connected"] and s["reconnects"] == 0
        assert s["events_in"] >= 8 and f.svc.phase == "running"


async def test_a_batch_redis_refuses_is_repaired_by_a_reconcile(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        state_key = Keys(prefix).account_state
        await redis_client.set(state_key, "not a hash")  # every script call now fails
        f.fill("BTCUSDT", "BUY", "0.010", "refused")
        await until(lambda: f.svc.stats()["reconcile_failures"] >= 1, 5)
        assert f.svc.stats()["redis_errors"] >= 1 and f.svc.status() == "degraded"
        assert f.svc.phase == "running" and not await f.matches_exchange()
        await redis_client.delete(state_key)
        await until(f.matches_exchange, 5)
        await until(lambda: f.svc.status() == "ok", 5)


async def test_shutdown_deletes_the_key_and_health_is_served(
    redis_client: Any, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(redis_client, redis_url, prefix) as f:
        (key,) = f.active_keys()
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{f.svc.http_port}"
            async with http.get(f"{url}/healthz") as resp:
                body = await resp.json()
                assert resp.status == 200 and body["status"] == "ok"
                assert body["counters"]["account_feed"]["listen_key_valid"] is True
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
                assert "slt_renewal_attempts" in text and "slt_reconciliations" in text
        monkeypatch.setenv("SLT_REDIS__URL", redis_url)
        monkeypatch.setenv("SLT_REDIS__PREFIX", prefix)
        assert await asyncio.to_thread(main, ["--check"]) == 0
        sim = f.sim
    state = {k["listenKey"]: k["state"] for k in sim.admin.state()["listenKeys"]}
    assert state[key] == "closed" and "active" not in state.values()
    assert f.task.result() == 0


def test_main_help_and_bad_config(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert main(["--help"]) == 0  # a status, not a SystemExit: `slt run` returns it
    assert "listenKey" in capsys.readouterr().out
    monkeypatch.setenv("SLT_WEBSOCKET__LISTEN_KEY_RENEWAL", "0")
    assert main(["--check"]) == 2
    assert "listen_key_renewal" in capsys.readouterr().err
