"""The whole system as real processes on 127.0.0.1: Redis (AOF), the simulator, every
service under `shared.supervisor.Supervisor` (a killed service comes back by itself).

Used by the chaos test and `bench/soak.py`::

    async with System(cfg) as system:      # starts everything, waits until healthy
        await system.admin("ws/drop", kind="market")
        await system.kill9("trader")       # the supervisor restarts it
        await system.restart_redis()       # stop, then start on the same port and dir

Nothing here decides what to check; `checks.py` does.  Everything the children print
goes to `<work_dir>/logs/<name>.log` (the secret scan reads them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from shared.config import REPO_ROOT
from shared.keys import Keys
from shared.supervisor import ChildSpec, Supervisor
from shared.testing import RedisServer, free_port

from .config import REDIS_PREFIX, SERVICES, ChaosConfig, write_settings
from .exchange import ExchangeSnapshot
from .logsplit import LogSplitter

log = logging.getLogger("e2e.system")


class StartupError(RuntimeError):
    """The system did not come up; carries the tail of the relevant logs."""


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, KiB; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class System:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.keys = Keys(REDIS_PREFIX)
        self.redis_server = RedisServer(cfg.redis_dir, aof=True)
        self.sim_port = free_port()
        self.ports = {name: free_port() for name in SERVICES}
        self.sim_proc: asyncio.subprocess.Process | None = None
        self.sup: Supervisor | None = None
        self.splitter: LogSplitter | None = None
        self.redis: aioredis.Redis | None = None
        self.http: aiohttp.ClientSession | None = None
        self.peak_kib: dict[str, int] = {}
        self.kills: dict[str, int] = dict.fromkeys(SERVICES, 0)
        self.redis_restarts = 0
        # called with (service, its /healthz snapshot) right before a kill -9, so the
        # counters of the process about to die are not lost
        self.before_kill: Callable[[str, dict[str, Any] | None], None] | None = None

    # ---- addresses ---------------------------------------------------------------------
    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def service_env(self, config_path: Path) -> dict[str, str]:
        base = f"127.0.0.1:{self.sim_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLT_")}
        for k in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "SESSION_SECRET", "REDIS_URL"):
            env.pop(k, None)
        env |= {
            "SLT_CONFIG": str(config_path),
            "SLT_REDIS__URL": self.redis_server.url,
            "SLT_EXCHANGE__MODE": "sim",
            "SLT_EXCHANGE__REST_URL": f"http://{base}",
            "SLT_EXCHANGE__WS_URL": f"ws://{base}",
            "SLT_EXCHANGE__USER_WS_URL": f"ws://{base}",
            "SLT_EXCHANGE__SYMBOLS": orjson.dumps(self.cfg.symbol_list).decode(),
            "SLT_MODEL__DIR": str(self.cfg.models_dir),
            "SLT_SERVICE__REPORTS_DIR": str(self.cfg.reports_dir),
            "PYTHONUNBUFFERED": "1",
            **self.cfg.secrets.named(),
        }
        for name, port in {**self.ports, "exchange_sim": self.sim_port}.items():
            env[f"SLT_SERVICE__PORTS__{name.upper()}"] = str(port)
        return env

    def sim_argv(self) -> list[str]:
        c, s = self.cfg, self.cfg.secrets
        # the simulator's own entry point, plus read-only observer routes (simproc.py)
        return [sys.executable, "-m", "tests.e2e.simproc", "--port", str(self.sim_port),
                "--symbols", str(c.symbols), "--speed", str(c.speed), "--seed", str(c.seed),
                "--start", str(c.start_ms), "--history-minutes", "600",
                "--account", f"{s.api_key}:{s.api_secret}:{c.balance}",
                "--log-level", "WARNING"]  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> System:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        for d in (self.cfg.logs_dir, self.cfg.reports_dir, self.cfg.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        config_path = write_settings(self.cfg)
        await asyncio.to_thread(self.redis_server.start)
        self.redis = aioredis.from_url(self.redis_server.url, decode_responses=False)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        with (self.cfg.logs_dir / "exchange_sim.log").open("ab") as out:
            self.sim_proc = await asyncio.create_subprocess_exec(
                *self.sim_argv(), cwd=REPO_ROOT, stdout=out, stderr=out,
                env={k: v for k, v in os.environ.items() if not k.startswith("SLT_")},
            )  # fmt: skip
        await self._wait_sim()
        env = self.service_env(config_path)
        specs = [ChildSpec(n, [sys.executable, "-m", f"services.{n}"], env) for n in SERVICES]
        self.splitter = LogSplitter(self.cfg.logs_dir)
        self.sup = Supervisor(specs, base_delay=0.3, max_delay=1.0, color=False,
                              out=self.splitter)  # fmt: skip
        await self.sup.start()

    async def _wait_sim(self, limit_s: float = 30.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.sim_proc is not None and self.sim_proc.returncode is not None:
                raise StartupError(f"simulator exited: {self.tail('exchange_sim')}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self.admin_state()
                return
            await asyncio.sleep(0.1)
        raise StartupError(f"simulator did not answer: {self.tail('exchange_sim')}")

    def record_peaks(self) -> None:
        """VmHWM of every live child (call before stopping them)."""
        pids = dict(self.sup.pids()) if self.sup else {}
        if self.sim_proc is not None:
            pids["exchange_sim"] = self.sim_proc.pid
        if self.redis_server.proc is not None:
            pids["redis"] = self.redis_server.proc.pid
        for name, pid in pids.items():
            kib = peak_rss_kib(pid) if pid else None
            if kib is not None:
                self.peak_kib[name] = max(kib, self.peak_kib.get(name, 0))

    async def stop(self) -> None:
        self.record_peaks()
        if self.sup is not None:
            await self.sup.stop(grace_s=15)
        if self.splitter is not None:
            self.splitter.close()
        if self.sim_proc is not None and self.sim_proc.returncode is None:
            self.sim_proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.sim_proc.wait(), 10)
            except TimeoutError:
                self.sim_proc.kill()
                await self.sim_proc.wait()
        if self.http is not None:
            await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        await asyncio.to_thread(self.redis_server.stop)

    # ---- the simulator's admin API -----------------------------------------------------
    async def admin(self, route: str, **body: Any) -> Any:
        assert self.http is not None
        async with self.http.post(f"{self.sim_url}/admin/{route}", json=body) as resp:
            data = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"admin {route} {body}: {resp.status} {data}")
            return data.get("result")

    async def admin_get(self, path: str, **query: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.sim_url}/admin/{path}", params=query) as resp:
            data = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"admin {path}: {resp.status} {data}")
            return data

    async def admin_state(self) -> dict[str, Any]:
        return await self.admin_get("state")  # type: ignore[no-any-return]

    async def exchange_snapshot(self) -> ExchangeSnapshot:
        v = await self.admin_get("e2e/view")
        return ExchangeSnapshot.from_rows(v["nowMs"], v["positions"], v["algos"], v["balances"])

    async def audit(self) -> dict[str, Any]:
        return await self.admin_get("e2e/audit")  # type: ignore[no-any-return]

    async def closed_klines(self, symbol: str) -> list[dict[str, Any]]:
        return await self.admin_get("closed_klines", symbol=symbol)  # type: ignore[no-any-return]

    # ---- services ----------------------------------------------------------------------
    def pid(self, service: str) -> int | None:
        return self.sup.pids().get(service) if self.sup else None

    async def healthz(self, service: str) -> dict[str, Any] | None:
        """The service's live /healthz snapshot (None when it does not answer)."""
        assert self.http is not None
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.ports[service]}/healthz",
                timeout=aiohttp.ClientTimeout(total=2),
            ) as resp:
                return orjson.loads(await resp.read())  # type: ignore[no-any-return]
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
            return None

    async def kill9(self, service: str, restart_limit_s: float = 30.0) -> None:
        """SIGKILL the service's process; wait until the supervisor started a new one."""
        pid = self.pid(service)
        assert pid, f"{service} is not running"
        self.record_peaks()
        if self.before_kill is not None:
            self.before_kill(service, await self.healthz(service))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.kills[service] += 1
        deadline = time.monotonic() + restart_limit_s
        while self.pid(service) in (pid, None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service} was not restarted after kill -9")
            await asyncio.sleep(0.05)

    async def freeze(self, service: str, seconds: float) -> None:
        """SIGSTOP the service for `seconds` (a stalled process: GC pause, frozen VM), then
        SIGCONT.  Its heartbeat lapses, so the fallbacks take over meanwhile."""
        pid = self.pid(service)
        assert pid, f"{service} is not running"
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def wait_status(
        self, services: set[str], statuses: tuple[str, ...], limit_s: float
    ) -> dict[str, str]:
        """Until every one of `services` has a heartbeat with a status in `statuses`."""
        deadline = time.monotonic() + limit_s
        seen: dict[str, str] = {}
        while True:
            with contextlib.suppress(Exception):  # Redis may be restarting
                hashes = await self.health_hashes()
                seen = {s: hashes.get(s, {}).get("status", "absent") for s in services}
                if all(v in statuses for v in seen.values()):
                    return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"services not {statuses} after {limit_s}s: {seen}")
            await asyncio.sleep(0.1)

    async def restart_redis(self, down_s: float = 1.5) -> None:
        """Stop Redis (SIGTERM: it writes its AOF) and start it on the same port and dir."""
        self.record_peaks()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.redis_server.start)
        self.redis_restarts += 1

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.cfg.logs_dir / f"{name}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ---- Redis views -------------------------------------------------------------------
    async def health_hashes(self) -> dict[str, dict[str, str]]:
        """Every `slt:health:*` hash, decoded."""
        assert self.redis is not None
        out: dict[str, dict[str, str]] = {}
        async for key in self.redis.scan_iter(match=self.keys.health_pattern, count=200):
            raw = await self.redis.hgetall(key)
            name = key.decode().removeprefix(self.keys.health(""))
            out[name] = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        return out
