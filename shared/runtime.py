"""One lifecycle for every service (after arq's worker).

    connect Redis (bounded, logged retries) -> HTTP /healthz /metrics -> heartbeat
    -> setup() -> run() ... SIGTERM/SIGINT -> stop event -> drain in-flight work
    (timeout) -> cancel the rest -> teardown() -> close sockets -> ONE summary line

A service subclasses `Service`, overrides the hooks and calls
`raise SystemExit(service_main(MyService))` in its `__main__.py`.  Background work goes
through `self.spawn()`: named, tracked, exceptions logged, cancelled on close; a failed
*critical* task stops the service with exit status 1 so the supervisor restarts it.
Loops should watch `self.stop_event` (or use `await self.sleep(s)`): whatever is still
running `drain_timeout` seconds after the stop is cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.bus import Consumer, StreamBus
from shared.config import ConfigError, Settings, load_settings
from shared.health import (
    HealthView,
    Status,
    build_app,
    check_health,
    heartbeat_key,
    instance_id,
    write_heartbeat,
)
from shared.keys import Keys
from shared.logs import secrets_of, setup_logging
from shared.metrics import build_registry, flatten
from shared.resp import fast_packing

log = logging.getLogger("shared.runtime")


class RedisUnavailable(Exception):
    """Redis did not answer after every connection attempt."""

    def __init__(self, url: str, attempts: int, error: BaseException) -> None:
        self.url, self.attempts, self.error = url, attempts, error
        super().__init__(f"cannot connect to Redis at {url} after {attempts} attempts: {error}")


def safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


async def connect_redis(
    url: str, *, attempts: int = 8, base_delay: float = 0.25, max_delay: float = 5.0
) -> aioredis.Redis:
    """A bytes client that has answered PING; exponential backoff between attempts."""
    client = fast_packing(aioredis.from_url(url, decode_responses=False, socket_connect_timeout=2))
    for attempt in range(1, attempts + 1):
        try:
            await client.ping()
            return client
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if attempt == attempts:
                await client.aclose()
                raise RedisUnavailable(safe_url(url), attempts, exc) from None
            delay = min(base_delay * 2 ** (attempt - 1), max_delay)
            log.warning(
                "redis not reachable, retrying",
                extra={"attempt": attempt, "attempts": attempts, "retry_in_s": delay,
                       "error": str(exc), "redis": safe_url(url)},
            )  # fmt: skip
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # attempts >= 1 returns or raises above


class Service:
    """Base class of every service.  Override the hooks; call the helpers."""

    name: ClassVar[str] = "service"
    # Flattened stats() keys (`a.b`) exported as Prometheus counters even without a
    # `_total` suffix (see shared.metrics).
    counter_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings: Settings = settings  # type: ignore[assignment]  # set by serve()
        self.redis: aioredis.Redis = None  # type: ignore[assignment]
        self.bus: StreamBus = None  # type: ignore[assignment]
        self.keys: Keys = Keys(settings.redis.prefix) if settings else Keys()
        self.stop_event = asyncio.Event()
        self.phase = "created"  # created|starting|running|stopping|stopped
        self.exit_code = 0
        self.stop_reason = ""
        self.last_event_time: int | None = None
        # None (not sharded), the shard index, or `auto-<host>` until a shard is claimed:
        # a service that claims one (instance_index=-1) sets it; the heartbeat follows.
        self.instance: str | None = None
        self.http_port: int | None = None
        self.task_errors = 0
        self.heartbeat_errors = 0
        self.consumers: list[Consumer] = []
        self._tasks: dict[asyncio.Task[Any], bool] = {}  # task -> critical

    # ---- hooks ------------------------------------------------------------------
    async def setup(self) -> None:
        """Open clients, load state.  Redis (`self.redis`, `self.bus`) is ready."""

    async def run(self) -> None:
        """Main loop(s).  Return when `self.stop_event` is set; the default just waits."""
        await self.stop_event.wait()

    async def teardown(self) -> None:
        """Close what setup() opened (also called when setup failed partway).
        Redis is still connected."""

    def stats(self) -> dict[str, Any]:
        """Counters and state for /healthz, /metrics, the heartbeat (seed's get_stats)."""
        return {}

    def healthy(self) -> bool | Status:
        """True/'ok', 'degraded' (working on a fallback) or False/'down'."""
        return True

    def routes(self) -> list[web.AbstractRouteDef]:
        """Extra HTTP routes next to /healthz and /metrics (the reporter's dashboard)."""
        return []

    async def between_bursts(self) -> None:
        """Return when housekeeping (the heartbeat) would not delay latency-bound work.
        A service with bursts (kline_feed's minute of closes) waits them out here,
        briefly; the default returns at once."""

    # ---- helpers ----------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = False
    ) -> asyncio.Task[Any]:
        """A tracked, named task; a critical one that fails or ends stops the service."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}.{name}")
        self._tasks[task] = critical
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        critical = self._tasks.pop(task, False)
        if task.cancelled():
            return
        exc = task.exception()
        name = task.get_name()
        if exc is not None:
            self.task_errors += 1
            log.error("task failed", exc_info=exc, extra={"task": name, "critical": critical})
            if critical:
                self.request_stop(f"critical task {name} failed: {exc!r}", exit_code=1)
        elif critical and not self.stopping:
            log.error("critical task ended while running", extra={"task": name})
            self.request_stop(f"critical task {name} ended", exit_code=1)

    def request_stop(self, reason: str = "requested", exit_code: int = 0) -> None:
        """Begin the shutdown; the first reason is kept, a non-zero code wins."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
        self.exit_code = max(self.exit_code, exit_code)
        self.stop_event.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if the service is still running afterwards."""
        try:
            async with asyncio.timeout(seconds):
                await self.stop_event.wait()
        except TimeoutError:
            pass
        return not self.stopping

    def mark_event(self, event_time_ms: int) -> None:
        """Record the exchange time of the newest event handled (shown in health)."""
        if self.last_event_time is None or event_time_ms > self.last_event_time:
            self.last_event_time = event_time_ms

    def consumer(self, stream: str, *, group: str | None = None, **kwargs: Any) -> Consumer:
        """A Consumer named `<service>-<instance_index>@<hostname>`: stable across
        restarts of this instance (so a restart re-reads its own pending entries),
        distinct between replicas.  Call from setup() or later (needs `self.redis`);
        its counters appear in stats under `consumers.<stream>`."""
        inst = self.settings.service.instance_index if self.settings else 0
        name = f"{self.name}-{inst}@{socket.gethostname()}"
        c = Consumer(self.redis, stream, group or self.name, name, **kwargs)
        self.consumers.append(c)
        return c

    def status(self) -> Status:
        if self.phase != "running":
            return "down"
        try:
            h = self.healthy()
        except Exception:
            log.exception("healthy() failed")
            return "down"
        if h is True:
            return "ok"
        return h if h in ("ok", "degraded") else "down"  # type: ignore[return-value]

    def all_stats(self) -> dict[str, Any]:
        """stats() plus the runtime's own block (tasks, errors, consumers)."""
        out = dict(self.stats())
        out["runtime"] = {
            "tasks": len(self._tasks),
            "task_errors_total": self.task_errors,
            "heartbeat_errors_total": self.heartbeat_errors,
        }
        consumers: dict[str, dict[str, int]] = {}
        for c in self.consumers:
            short = c.stream.removeprefix(self.keys.prefix)
            consumers[f"{short}@{c.group}" if short in consumers else short] = c.counters
        if consumers:
            out["consumers"] = consumers
        return out


class _Lifecycle:
    """The state of one `serve()` call: HTTP runner, heartbeat task, run task."""

    def __init__(self, service: Service, settings: Settings, drain_s: float) -> None:
        self.service, self.settings, self.drain_s = service, settings, drain_s
        self.loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.view = HealthView(service, time.time(), self.started)
        self.wake = asyncio.Event()  # write a heartbeat now (phase changed)
        self.http: web.AppRunner | None = None
        self.beat_task: asyncio.Task[Any] | None = None
        self.run_task: asyncio.Task[Any] | None = None

    def on_signal(self, name: str) -> None:
        if self.service.stopping:  # a second signal: stop waiting for in-flight work
            log.warning("second %s: cancelling in-flight work", name)
            for task in (self.run_task, *self.service._tasks):
                if task is not None:
                    task.cancel()
        self.service.request_stop(name)

    async def connect(self, attempts: int, delay: float) -> bool:
        """Connect (raises RedisUnavailable); False if a stop signal came first."""
        url = self.settings.redis.url
        connect = asyncio.ensure_future(connect_redis(url, attempts=attempts, base_delay=delay))
        stop_wait = asyncio.ensure_future(self.service.stop_event.wait())
        await asyncio.wait((connect, stop_wait), return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not connect.done():
            connect.cancel()
            await asyncio.wait((connect,))
            return False
        self.service.redis = connect.result()
        return True

    async def start(self, port: int) -> bool:
        """HTTP, heartbeat, setup(); False if a stop came during setup (then drained)."""
        svc = self.service
        svc.bus = StreamBus(svc.redis, svc.keys, self.settings.redis.stream_maxlen)
        svc.phase = "starting"
        registry = build_registry(
            svc.all_stats, lambda: {"service": svc.name, "instance": svc.instance or "0"},
            svc.counter_keys,
        )  # fmt: skip
        self.http = web.AppRunner(build_app(self.view, registry, svc.routes()), access_log=None)
        await self.http.setup()
        await web.TCPSite(self.http, self.settings.service.host, port).start()
        self.view.port = svc.http_port = int(self.http.addresses[0][1])
        self.beat_task = self.loop.create_task(self._heartbeats(), name=f"{svc.name}.heartbeat")
        self.run_task = setup = self.loop.create_task(svc.setup(), name=f"{svc.name}.setup")
        if not await self._first_or_stop(setup):
            svc.phase = "stopping"
            await self._drain(setup)
            return False
        setup.result()
        svc.phase = "running"
        self.wake.set()
        log.info(
            "service started",
            extra={"port": svc.http_port, "pid": os.getpid(), "redis": safe_url(
                self.settings.redis.url), "loop": type(self.loop).__module__.split(".")[0]},
        )  # fmt: skip
        return True

    async def _first_or_stop(self, task: asyncio.Task[Any]) -> bool:
        """Wait for `task` or a stop request; True if the task finished first."""
        stop_wait = self.loop.create_task(self.service.stop_event.wait())
        await asyncio.wait((task, stop_wait), return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        return task.done()

    async def write_beat(self, old_key: str | None = None) -> str:
        """Write one heartbeat; returns the key written (it follows `service.instance`)."""
        svc = self.service
        key = heartbeat_key(svc.keys, svc.name, svc.instance)
        fields = self.view.heartbeat_fields()
        await write_heartbeat(svc.redis, key, fields, self.settings.service.heartbeat_ttl, old_key)
        return key

    async def _heartbeats(self) -> None:
        svc = self.settings.service
        key: str | None = None
        while True:
            try:
                await self.service.between_bursts()
                key = await self.write_beat(key)
            except (RedisError, OSError) as exc:
                self.service.heartbeat_errors += 1
                log.warning("heartbeat failed: %r", exc)
            try:  # not wait_for: on 3.11 it can swallow a cancel that races the wake-up
                async with asyncio.timeout(svc.heartbeat_interval):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()

    async def run(self) -> None:
        """run() until it returns or a stop is requested, then drain."""
        svc = self.service
        self.run_task = run_task = self.loop.create_task(svc.run(), name=f"{svc.name}.run")
        if (
            await self._first_or_stop(run_task)
            and not run_task.cancelled()
            and run_task.exception()
        ):
            svc.request_stop(f"run() failed: {run_task.exception()!r}", exit_code=1)
        svc.request_stop("run() returned")
        svc.phase = "stopping"
        self.wake.set()
        await self._drain(run_task)

    async def _drain(self, main: asyncio.Task[Any]) -> None:
        """Let run() (or setup()) and spawned tasks finish their current work, then
        cancel the rest."""
        _, left = await asyncio.wait({main, *self.service._tasks}, timeout=self.drain_s)
        for task in left:
            log.warning("cancelled after drain timeout", extra={"task": task.get_name()})
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2)
        if main.done() and not main.cancelled() and main.exception() is not None:
            log.error("%s failed", main.get_name(), exc_info=main.exception())
            self.service.exit_code = max(self.service.exit_code, 1)

    async def close(self) -> int:
        """teardown(), final heartbeat (phase stopped), close HTTP and Redis, summary."""
        svc = self.service
        try:
            await asyncio.wait_for(svc.teardown(), self.drain_s)
        except Exception:
            log.exception("teardown failed")
            svc.exit_code = max(svc.exit_code, 1)
        left = [t for t in (*svc._tasks, self.beat_task) if t is not None]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2)
        svc.phase = "stopped"
        try:
            await self.write_beat()
        except (RedisError, OSError) as exc:
            log.warning("final heartbeat failed: %r", exc)
        if self.http is not None:
            await self.http.cleanup()
        await svc.redis.aclose()
        log.info(
            "service stopped",
            extra={"exit_code": svc.exit_code, "reason": svc.stop_reason,
                   "uptime_s": round(time.monotonic() - self.started, 3),
                   "counters": flatten(svc.all_stats())},
        )  # fmt: skip
        return svc.exit_code


async def serve(
    service: Service,
    settings: Settings,
    *,
    port: int | None = None,
    install_signals: bool = True,
    drain_timeout: float = 5.0,
    connect_attempts: int = 8,
    connect_delay: float = 0.25,
) -> int:
    """Run one service to completion in the current loop; returns the exit code.

    `port` None means `settings.service.ports[service.name]` (0 if absent: any free
    port; the bound port is `service.http_port` and the heartbeat's `port` field)."""
    service.settings = settings
    service.keys = Keys(settings.redis.prefix)
    service.instance = instance_id(settings)
    life = _Lifecycle(service, settings, drain_timeout)
    sigs = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
    for sig in sigs:
        life.loop.add_signal_handler(sig, life.on_signal, signal.Signals(sig).name)
    try:
        try:
            if not await life.connect(connect_attempts, connect_delay):
                log.info(
                    "stopped before Redis was reachable", extra={"reason": service.stop_reason}
                )
                return 0
        except RedisUnavailable as exc:
            log.error(str(exc))
            return 1
        try:
            if await life.start(
                settings.service.ports.get(service.name, 0) if port is None else port
            ):
                await life.run()
        except Exception as exc:
            log.exception("service failed: %r", exc)
            service.request_stop(f"failed: {exc!r}", exit_code=1)
        return await life.close()
    finally:
        for sig in sigs:
            life.loop.remove_signal_handler(sig)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_service(service: Service, settings: Settings, **kwargs: Any) -> int:
    """Process entry: JSON logs, uvloop when available, `serve()`; returns exit code."""
    password = urlsplit(settings.redis.url).password
    setup_logging(
        service.name, settings.service.log_level,
        secrets=[*secrets_of(settings), password], instance=instance_id(settings),
    )  # fmt: skip
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(service, settings, **kwargs))


def service_main(
    factory: Callable[[Settings], Service],
    argv: Sequence[str] | None = None,
    *,
    name: str,
    description: str = "",
    before_run: Callable[[], None] | None = None,
    **kwargs: Any,
) -> int:
    """The one `python -m services.<name> [--check] [--port N]` entry point.

    Exit status: 0 clean stop / healthy (and `--help`), 1 runtime failure / unhealthy,
    2 a bad configuration (one line naming the field) or a usage error.  `before_run`
    runs just before the service (e.g. gc.freeze); `kwargs` go to `serve()`.
    """
    parser = argparse.ArgumentParser(prog=name, description=description or None)
    parser.add_argument("--check", action="store_true", help="exit 0 if healthy (Docker)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (0 = any free)")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2): a status, not an exit
        return int(exc.code or 0)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.check:
        return check_health(settings, name)
    service = factory(settings)
    if before_run is not None:
        before_run()
    return run_service(service, settings, port=args.port, **kwargs)
