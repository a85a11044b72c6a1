"""kline_feed as real processes: kill -9 and restart, AUTO shard leases, CLI exit codes.

The simulator runs in this test's event loop; the feeds are `python -m services.kline_feed`
children configured only through the environment, as `docker compose` would do it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.exchange_sim.server import SimConfig, SimServer
from services.kline_feed.__main__ import main
from shared.keys import Keys
from shared.kline_publisher import KlinePublisher
from tests.polling import until
from tests.test_kline_feed_support import SYMBOLS, assert_exactly_once, wait_sim_minutes

REPO = Path(__file__).resolve().parent.parent
SYMS5 = (*SYMBOLS, "XRPUSDT", "BNBUSDT")


def _env(sim: SimServer, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLT_")}
    env.update(sim.env())
    env.update({
        "SLT_REDIS__URL": redis_url,
        "SLT_REDIS__PREFIX": prefix,
        "SLT_EXCHANGE__SYMBOLS": '["' + '","'.join(SYMS5) + '"]',
        "SLT_EXCHANGE__BREAKER_OPEN_SECONDS": "0.5",
        "SLT_WEBSOCKET__RECONNECT_DELAY": "0.05",
        "SLT_WEBSOCKET__STALL_TIMEOUT": "0.5",
        "SLT_SERVICE__HEARTBEAT_INTERVAL": "0.1",
        "SLT_SERVICE__HEARTBEAT_TTL": "1.5",
        "SLT_SERVICE__LOG_LEVEL": "WARNING",
        **extra,
    })  # fmt: skip
    return env


async def _spawn(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.kline_feed", "--port", "0",
            cwd=REPO, env=env, stdout=out, stderr=out,
        )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 15)


async def test_kill_9_and_restart_with_auto_shards(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    keys = Keys(prefix)
    async with SimServer(SimConfig(symbols=SYMS5, speed=120)) as sim:
        env = _env(sim, redis_url, prefix, SLT_SERVICE__INSTANCE_INDEX="-1",
                   SLT_SERVICE__INSTANCE_COUNT="2")  # fmt: skip
        log = tmp_path / "feeds.log"
        a, b = await _spawn(env, log), await _spawn(env, log)
        try:
            leases = [keys.shard_lease("kline_feed", i) for i in (0, 1)]

            async def leased() -> bool:
                return await redis_client.exists(*leases) == 2

            await until(leased, 20, every=0.05)

            async def both_publishing() -> bool:
                last = await KlinePublisher(redis_client, keys, 1).last_open_times(SYMS5)
                return None not in last.values()

            await until(both_publishing, 20, every=0.05)
            for k, v in _env(sim, redis_url, prefix, SLT_SERVICE__INSTANCE_INDEX="-1",
                             SLT_SERVICE__INSTANCE_COUNT="2").items():  # fmt: skip
                if k.startswith("SLT_"):
                    monkeypatch.setenv(k, v)
            await until(lambda: redis_client.exists(keys.health("kline_feed:1")), 10)
            assert await asyncio.to_thread(main, ["--check"]) == 0
            await wait_sim_minutes(sim, 1)

            a.kill()  # SIGKILL: no drain, the lease is left to expire
            assert await a.wait() == -signal.SIGKILL
            await wait_sim_minutes(sim, 2)
            a = await _spawn(env, log)  # waits for the dead one's lease, then takes it
            await wait_sim_minutes(sim, 2)
            await assert_exactly_once(redis_client, prefix, sim, SYMS5, limit_s=20)
        finally:
            codes = [await _stop(p) for p in (a, b)]
        assert codes == [0, 0], log.read_text()[-3000:]
        assert not await redis_client.exists(*leases)  # released on a clean stop


def test_cli_help_check_and_config_errors(monkeypatch: pytest.MonkeyPatch, prefix: str,
                                          redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["--help"]) == 0
    assert "kline_feed" in capsys.readouterr().out
    monkeypatch.setenv("SLT_REDIS__URL", redis_url)
    monkeypatch.setenv("SLT_REDIS__PREFIX", prefix)
    assert main(["--check"]) == 1  # no heartbeat
    monkeypatch.setenv("SLT_SERVICE__INSTANCE_INDEX", "-1")
    monkeypatch.setenv("SLT_SERVICE__INSTANCE_COUNT", "2")
    assert main(["--check"]) == 1
    monkeypatch.setenv("SLT_SERVICE__INSTANCE_INDEX", "-2")
    assert main([]) == 2
    assert main(["--bogus"]) == 2
