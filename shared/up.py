"""`slt up`: the whole system from one command.

Starts an embedded Redis (unless REDIS_URL / SLT_REDIS__URL is set) with its data and
AOF under `var/redis`, the exchange simulator (in sim mode), and every service as a
supervised child. Ctrl-C (or `--duration`) stops everything cleanly and deletes nothing:
reports, models and Redis data stay under `var/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from shared.config import REPO_ROOT, ConfigError, Settings, load_settings
from shared.supervisor import ChildSpec, Supervisor
from shared.testing import RedisServer, free_port

# Start order: data producers first, consumers after.
SERVICE_ORDER = [
    "kline_feed",
    "account_feed",
    "rest_fallback",
    "trader",
    "position_controller",
    "reporter",
]


def available_services() -> list[str]:
    """Services whose package has an entry point (the system grows as they land)."""
    root = REPO_ROOT / "services"
    return [s for s in SERVICE_ORDER if (root / s / "__main__.py").exists()]


def symbol_names(count: int, configured: list[str]) -> list[str]:
    """`count` symbols: the configured ones first, then synthetic `SYN<n>USDT` names."""
    names = list(configured[:count])
    n = 1
    while len(names) < count:
        names.append(f"SYN{n:03d}USDT")
        n += 1
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slt up", description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["sim", "testnet", "live"], default=None)
    p.add_argument("--speed", type=float, default=1.0, help="simulator clock speed factor")
    p.add_argument("--symbols", type=int, default=None, help="number of simulator symbols")
    p.add_argument("--seed", type=int, default=7, help="synthetic market seed")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--data-dir", default="var", help="where Redis data, models, reports live")
    p.add_argument("--sim-port", type=int, default=None)
    p.add_argument("--status-every", type=float, default=15.0, help="status table period, s")
    p.add_argument("--free-ports", action="store_true", help="pick free ports for services")
    return p


def _python() -> str:
    return sys.executable


def child_env(
    settings: Settings, args: argparse.Namespace, redis_url: str, sim_port: int | None
) -> dict[str, str]:
    data = Path(args.data_dir).resolve()
    env = {
        "SLT_REDIS__URL": redis_url,
        "SLT_MODEL__DIR": str(data / "models"),
        "SLT_SERVICE__REPORTS_DIR": str(data / "reports"),
    }
    if args.mode:
        env["SLT_EXCHANGE__MODE"] = args.mode
    if sim_port is not None:
        base = f"127.0.0.1:{sim_port}"
        env |= {
            "SLT_EXCHANGE__REST_URL": f"http://{base}",
            "SLT_EXCHANGE__WS_URL": f"ws://{base}",
            "SLT_EXCHANGE__USER_WS_URL": f"ws://{base}",
        }
    return env


def child_specs(
    settings: Settings, args: argparse.Namespace, env: dict[str, str], sim_port: int | None
) -> list[ChildSpec]:
    specs: list[ChildSpec] = []
    symbols = settings.exchange.symbols
    if args.symbols:
        symbols = symbol_names(args.symbols, settings.exchange.symbols)
        env["SLT_EXCHANGE__SYMBOLS"] = "[" + ",".join(f'"{s}"' for s in symbols) + "]"
    if sim_port is not None:
        sim_argv = [_python(), "-m", "services.exchange_sim", "--port", str(sim_port),
                    "--speed", str(args.speed), "--seed", str(args.seed),
                    "--symbols", ",".join(symbols)]  # fmt: skip
        specs.append(ChildSpec("exchange_sim", sim_argv, dict(env)))
    for name in available_services():
        svc_env = dict(env)
        if args.free_ports:
            svc_env[f"SLT_SERVICE__PORTS__{name.upper()}"] = str(free_port())
        specs.append(ChildSpec(name, [_python(), "-m", f"services.{name}"], svc_env))
    return specs


async def _status_loop(settings: Settings, redis_url: str, every: float) -> None:
    from shared.ops import print_status  # noqa: PLC0415

    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await print_status(settings, redis_url)


async def _wait_for_port(port: int, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"simulator did not open port {port} within {limit_s:.0f}s")


async def run_up(settings: Settings, args: argparse.Namespace) -> int:
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("SLT_REDIS__URL")
    redis: RedisServer | None = None
    if not redis_url:
        redis = RedisServer(Path(args.data_dir) / "redis", aof=True)
        redis.start()
        redis_url = redis.url
        print(f"[slt up] embedded Redis at {redis_url} (data in {redis.data_dir})")
    mode = args.mode or settings.exchange.mode
    sim_port = (args.sim_port or free_port()) if mode == "sim" else None
    env = child_env(settings, args, redis_url, sim_port)
    specs = child_specs(settings, args, env, sim_port)
    # The exchange first, the services once it answers; on the way out the services stop
    # first, so account_feed can still DELETE its listenKey and nothing logs a dead exchange.
    exchange = Supervisor([s for s in specs if s.name == "exchange_sim"])
    sup = Supervisor([s for s in specs if s.name != "exchange_sim"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status_task: asyncio.Task[None] | None = None
    try:
        await exchange.start()
        if sim_port is not None:
            await _wait_for_port(sim_port)
            print(f"[slt up] exchange simulator: http://127.0.0.1:{sim_port} (speed {args.speed}x)")
        await sup.start()
        for name, pid in {**exchange.pids(), **sup.pids()}.items():
            print(f"[slt up] started {name} pid={pid}")
        port = int(env.get("SLT_SERVICE__PORTS__REPORTER", settings.port("reporter")))
        print(f"[slt up] dashboard: http://127.0.0.1:{port}/  (Ctrl-C stops everything)")
        status_task = asyncio.create_task(
            _status_loop(settings, redis_url, args.status_every), name="status"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    finally:
        if status_task:
            status_task.cancel()
            await asyncio.gather(status_task, return_exceptions=True)
        print("[slt up] stopping services...")
        await sup.stop()
        await exchange.stop()
        if redis:
            redis.stop()
        restarts = {**exchange.restarts(), **sup.restarts()}
        print(f"[slt up] stopped; restarts: {restarts}; data kept in {args.data_dir}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.mode in ("testnet", "live"):
            os.environ["SLT_EXCHANGE__MODE"] = args.mode
            settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_up(settings, args))
    except RuntimeError as exc:
        print(f"slt up: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
