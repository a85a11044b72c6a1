"""Service lifecycle against real Redis and real HTTP on port 0.

In-process tests drive `serve()` directly; the SIGTERM and Redis-down tests run the toy
service as its own process through `service_main` / `run_service`, like Docker would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from shared.config import Settings, load_settings
from shared.health import check_health, health_key
from shared.runtime import Service, serve
from shared.testing import free_port
from tests.polling import until
from tests.toy_service import ToyService

REPO = Path(__file__).resolve().parent.parent


def _settings(redis_url: str, prefix: str, **service: Any) -> Settings:
    return load_settings(
        redis={"url": redis_url, "prefix": prefix},
        service={"heartbeat_interval": 0.1, "heartbeat_ttl": 5, **service},
    )


@asynccontextmanager
async def _serving(svc: Service, settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    """serve() in a task; yields once HTTP is up and setup() is done; stops on exit."""
    task = asyncio.create_task(serve(svc, settings, port=0, install_signals=False))
    await until(lambda: svc.phase == "running" or task.done(), 10)
    assert not task.done(), f"serve() ended early with {task.result()}"
    try:
        yield task
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(asyncio.shield(task), 10)


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()


async def test_healthz_metrics_routes_and_heartbeat(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    settings = _settings(redis_url, prefix)
    svc = ToyService()
    key = health_key(settings, "toy")
    async with _serving(svc, settings) as task:
        assert svc.http_port and svc.http_port > 0
        await redis_client.xadd(svc.keys.stream("toy"), {"t": "1700000000000"})
        await until(lambda: svc.handled == 1)

        code, body = await _get(svc.http_port, "/healthz")
        health = json.loads(body)
        assert code == 200
        assert health["service"] == "toy" and health["status"] == "ok"
        assert health["last_event_time"] == 1_700_000_000_000
        assert health["uptime_s"] >= 0 and health["pid"] == os.getpid()
        assert health["counters"]["handled"] == 1
        assert health["counters"]["consumers"]["stream:toy"]["acked"] == 1

        code, text = await _get(svc.http_port, "/metrics")
        assert code == 200
        assert 'slt_handled_total{instance="0",service="toy"} 1.0' in text
        assert "# TYPE slt_handled_total counter" in text
        assert "# TYPE slt_widgets_total counter" in text  # `_total` suffix -> counter
        assert 'slt_ratio{instance="0",service="toy"} 0.25' in text
        assert 'slt_feed_lag_ms{instance="0",service="toy"} 12.0' in text
        assert 'slt_consumers_stream_toy_acked{instance="0",service="toy"} 1.0' in text
        assert "process_resident_memory_bytes" in text
        assert "slt_mode" not in text  # strings are not metrics

        assert await _get(svc.http_port, "/hello") == (200, "hello from toy")

        await asyncio.sleep(0.25)  # a heartbeat after the event
        beat = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(key)).items()}
        ttl = await redis_client.pttl(key)
        assert 0 < ttl <= 5_000
        assert beat["status"] == "ok" and beat["phase"] == "running"
        assert beat["pid"] == str(os.getpid()) and beat["port"] == str(svc.http_port)
        assert beat["handled"] == "1" and beat["feed.connected"] == "true"
        assert beat["feed.lag_ms"] == "12" and beat["mode"] == "sim"
        assert abs(int(beat["heartbeat"]) - time.time() * 1000) < 2_000
        assert int(beat["started_at"]) <= int(beat["heartbeat"])
        assert await asyncio.to_thread(check_health, settings, "toy") == 0

    assert task.result() == 0
    beat = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(key)).items()}
    assert beat["phase"] == "stopped" and beat["status"] == "down"
    assert await asyncio.to_thread(check_health, settings, "toy") == 1


async def test_health_status_follows_healthy(redis_url: str, prefix: str) -> None:
    svc = ToyService()
    async with _serving(svc, _settings(redis_url, prefix)):
        assert svc.http_port
        svc.health_value = "degraded"
        code, body = await _get(svc.http_port, "/healthz")
        assert (code, json.loads(body)["status"]) == (200, "degraded")
        svc.health_value = False
        code, body = await _get(svc.http_port, "/healthz")
        assert (code, json.loads(body)["status"]) == (503, "down")


async def test_check_health_without_heartbeat_fails(redis_url: str, prefix: str) -> None:
    assert await asyncio.to_thread(check_health, _settings(redis_url, prefix), "toy") == 1
    down = _settings(f"redis://127.0.0.1:{free_port()}/0", prefix)
    assert await asyncio.to_thread(check_health, down, "toy") == 1


async def test_sharded_instance_has_its_own_heartbeat(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    settings = _settings(redis_url, prefix, instance_index=1, instance_count=3)
    svc = ToyService()
    async with _serving(svc, settings):
        await asyncio.sleep(0.15)
        assert await redis_client.exists(f"{prefix}health:toy:1") == 1
        assert health_key(settings, "toy") == f"{prefix}health:toy:1"


async def test_auto_instance_heartbeat_follows_the_claimed_shard(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    """instance_index=-1: `health:toy:auto-<host>` until the service claims a shard,
    then `health:toy:<shard>` (old key removed); --check finds it by hostname."""
    settings = _settings(redis_url, prefix, instance_index=-1, instance_count=3)
    svc = ToyService()
    auto = f"{prefix}health:toy:auto-{socket.gethostname()}"
    async with _serving(svc, settings):
        await until(lambda: redis_client.exists(auto))
        svc.instance = "2"  # what a shard-claiming setup() does

        async def moved() -> bool:
            return await redis_client.exists(f"{prefix}health:toy:2") == 1

        await until(moved)
        assert await redis_client.exists(auto) == 0  # deleted in the same transaction
        assert await asyncio.to_thread(check_health, settings, "toy") == 0
        _, text = await _get(svc.http_port or 0, "/metrics")
        assert 'slt_ratio{instance="2",service="toy"} 0.25' in text


class _CrashingTask(ToyService):
    async def setup(self) -> None:
        await super().setup()

        async def boom() -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("background loop broke")

        async def harmless() -> None:
            raise ValueError("not critical")

        self.spawn(harmless(), "harmless")
        self.spawn(boom(), "boom", critical=True)


async def test_critical_task_failure_stops_with_exit_1(redis_url: str, prefix: str) -> None:
    svc = _CrashingTask()
    code = await asyncio.wait_for(
        serve(svc, _settings(redis_url, prefix), port=0, install_signals=False), 10
    )
    assert code == 1
    assert svc.task_errors == 2
    assert "background loop broke" in svc.stop_reason


class _RunFails(ToyService):
    async def run(self) -> None:
        raise RuntimeError("main loop broke")


async def test_run_failure_exits_1(redis_url: str, prefix: str) -> None:
    svc = _RunFails()
    code = await asyncio.wait_for(
        serve(svc, _settings(redis_url, prefix), port=0, install_signals=False), 10
    )
    assert code == 1 and "main loop broke" in svc.stop_reason


class _Stubborn(ToyService):
    """A spawned loop that ignores the stop event: cancelled after the drain timeout."""

    async def setup(self) -> None:
        await super().setup()
        self.cancelled = False

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise

        self.spawn(forever(), "forever")


async def test_drain_timeout_cancels_what_ignores_stop(redis_url: str, prefix: str) -> None:
    svc = _Stubborn()
    task = asyncio.create_task(
        serve(svc, _settings(redis_url, prefix), port=0, install_signals=False, drain_timeout=0.3)
    )
    await until(lambda: svc.phase == "running", 10)
    t0 = time.monotonic()
    svc.request_stop("test")
    assert await asyncio.wait_for(task, 5) == 0
    assert svc.cancelled and 0.25 < time.monotonic() - t0 < 3


class _SlowSetup(ToyService):
    async def setup(self) -> None:
        await asyncio.sleep(3600)


class _FailingSetup(ToyService):
    async def setup(self) -> None:
        raise RuntimeError("setup broke")


async def test_stop_during_setup_and_setup_failure(redis_url: str, prefix: str) -> None:
    svc = _SlowSetup()
    task = asyncio.create_task(
        serve(svc, _settings(redis_url, prefix), port=0, install_signals=False, drain_timeout=0.2)
    )
    await until(lambda: svc.phase == "starting" and svc.http_port is not None)
    code, _ = await _get(svc.http_port or 0, "/healthz")
    assert code == 503  # starting is not healthy yet
    svc.request_stop("test")
    assert await asyncio.wait_for(task, 5) == 0 and svc.phase == "stopped"
    failing = _FailingSetup()
    settings = _settings(redis_url, prefix)
    assert await asyncio.wait_for(serve(failing, settings, port=0, install_signals=False), 5) == 1
    assert "setup broke" in failing.stop_reason


# ---- as a process ------------------------------------------------------------------------
def _env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SLT_REDIS__URL=redis_url,
        SLT_REDIS__PREFIX=prefix,
        SLT_SERVICE__HEARTBEAT_INTERVAL="0.1",
        SLT_SERVICE__LOG_LEVEL="INFO",
        **extra,
    )
    return env


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `python -m tests.toy_service ARGS` to completion: (code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.toy_service", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sigterm_drains_in_flight_entry_and_exits_0(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    env = _env(redis_url, prefix)
    key = f"{prefix}health:toy"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.toy_service", "--port", "0",
        cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def running() -> bool:
            return await redis_client.hget(key, "phase") == b"running"

        await until(running, 20)
        port = int(await redis_client.hget(key, "port"))
        assert 0 < await redis_client.pttl(key) <= 15_000
        code, body = await _get(port, "/healthz")
        assert code == 200 and json.loads(body)["pid"] == proc.pid
        code, text = await _get(port, "/metrics")
        assert code == 200 and 'slt_ratio{instance="0",service="toy"} 0.25' in text
        check = await _run("--check", env=env)
        assert check[0] == 0, check

        entry_id = (await redis_client.xadd(f"{prefix}stream:toy", {"slow": "0.5"})).decode()

        async def started() -> bool:
            return await redis_client.get(f"{prefix}toy:started") is not None

        await until(started)
        proc.send_signal(signal.SIGTERM)  # mid-handler
        _, raw_err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = raw_err.decode()
    assert proc.returncode == 0, err
    assert await redis_client.get(f"{prefix}toy:done") == entry_id.encode()
    assert (await redis_client.xpending(f"{prefix}stream:toy", "toy"))["pending"] == 0
    lines = _json_lines(err)
    summaries = [x for x in lines if x["msg"] == "service stopped"]
    assert len(summaries) == 1 and summaries[0] is lines[-1]
    summary = summaries[0]
    assert summary["service"] == "toy" and summary["level"] == "INFO"
    assert summary["exit_code"] == 0 and summary["reason"] == "SIGTERM"
    assert summary["counters"]["handled"] == 1
    assert summary["counters"]["consumers.stream:toy.acked"] == 1
    assert await redis_client.hget(key, "phase") == b"stopped"
    assert (await _run("--check", env=env))[0] == 1


async def test_redis_down_at_start_gives_up_with_one_line(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    code, _, stderr = await _run("--port", "0", env=_env(url, prefix, TOY_CONNECT_ATTEMPTS="3"))
    assert code == 1
    lines = _json_lines(stderr)
    errors = [x for x in lines if x["level"] == "ERROR"]
    retries = [x for x in lines if x["msg"] == "redis not reachable, retrying"]
    assert len(errors) == 1 and errors[0] is lines[-1]
    assert (
        errors[0]["msg"]
        == f"cannot connect to Redis at {url} after 3 attempts: "
        + (errors[0]["msg"].split("attempts: ", 1)[1])
    )
    assert [r["attempt"] for r in retries] == [1, 2]
    assert len(lines) == 3 and "Traceback" not in stderr
    assert time.monotonic() - t0 < 20


async def test_sigterm_while_waiting_for_redis_exits_0(prefix: str) -> None:
    env = _env(f"redis://127.0.0.1:{free_port()}/0", prefix, TOY_CONNECT_ATTEMPTS="50")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.toy_service", "--port", "0",
        cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = json.loads(await asyncio.wait_for(proc.stderr.readline(), 20))
    assert first["msg"] == "redis not reachable, retrying"
    proc.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert _json_lines(rest.decode())[-1]["msg"] == "stopped before Redis was reachable"
