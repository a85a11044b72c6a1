"""`python -m services.exchange_sim` / `slt run exchange_sim`: run the Binance simulator.

Prints the settings that point the system at it, e.g.::

    SLT_EXCHANGE__MODE=sim
    SLT_EXCHANGE__REST_URL=http://127.0.0.1:8900
    SLT_EXCHANGE__WS_URL=ws://127.0.0.1:8900
    SLT_EXCHANGE__USER_WS_URL=ws://127.0.0.1:8900

and serves until SIGINT/SIGTERM, then logs one summary line. A bad option exits with
status 2 and one line (argparse), a bad data file with status 2 too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime
from decimal import InvalidOperation

from shared.config import DEFAULT_SYMBOLS, ConfigError, load_settings

from .auth import SimAccount
from .driver import BINANCE_CLOSE_DELAY_MS
from .server import DEMO_ACCOUNT, SimConfig, SimServer

log = logging.getLogger("exchange_sim")


def symbol_list(spec: str) -> tuple[str, ...]:
    """`--symbols 200` (the default list, then generated names) or `--symbols BTCUSDT,ETHUSDT`."""
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise argparse.ArgumentTypeError("need at least one symbol")
        extra = [f"X{i:03d}USDT" for i in range(1, max(0, n - len(DEFAULT_SYMBOLS)) + 1)]
        return tuple((list(DEFAULT_SYMBOLS) + extra)[:n])
    out = tuple(s.strip().upper() for s in spec.split(",") if s.strip())
    if not out or not all(s.isalnum() for s in out):
        raise argparse.ArgumentTypeError("symbols must be a count or a comma list like BTCUSDT")
    return out


def start_time(spec: str) -> int:
    """Epoch ms, or an ISO date/time (UTC unless it says otherwise)."""
    if spec.isdigit():
        return int(spec)
    try:
        dt = datetime.fromisoformat(spec)
    except ValueError:
        raise argparse.ArgumentTypeError("start must be epoch ms or ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def account(spec: str) -> SimAccount:
    try:
        return SimAccount.parse(spec)
    except (ValueError, InvalidOperation) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_port() -> int:
    try:
        return load_settings().port("exchange_sim")
    except (ConfigError, KeyError):
        return 8900


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.exchange_sim",
        description="Binance USD-M futures simulator (REST + WebSocket) on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default service.ports.exchange_sim = 8900; 0 = a free port)",
    )
    p.add_argument(
        "--symbols",
        type=symbol_list,
        default=symbol_list("20"),
        help="a count (default 20) or a comma list",
    )
    p.add_argument("--source", choices=("synthetic", "replay"), default="synthetic")
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="Binance kline files (CSV/CSV.GZ/feather) for --source replay",
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic market seed")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument(
        "--start",
        type=start_time,
        default=None,
        help="sim start, epoch ms or ISO (default: now aligned to the minute)",
    )
    p.add_argument("--paused", action="store_true", help="start with the clock frozen")
    p.add_argument(
        "--account",
        type=account,
        action="append",
        default=[],
        metavar="KEY:SECRET:BALANCE",
        help="an account (repeatable; default the demo account)",
    )
    p.add_argument(
        "--close-delay-ms",
        type=int,
        default=0,
        help=f"delay of the closing x:true kline (Binance ~{BINANCE_CLOSE_DELAY_MS})",
    )
    p.add_argument(
        "--updates-per-minute",
        type=int,
        default=10,
        help="open-candle updates per symbol per minute",
    )
    p.add_argument(
        "--history-minutes",
        type=int,
        default=1500,
        help="closed 1m bars available over REST at start",
    )
    p.add_argument(
        "--no-legacy-kline-silence",
        action="store_true",
        help="let the unrouted /stream carry klines (Binance stopped on 2026-04-23)",
    )
    p.add_argument("--weight-limit", type=int, default=2400, help="request weight per minute")
    p.add_argument("--log-level", default="INFO")
    return p  # fmt: skip


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        host=args.host,
        port=default_port() if args.port is None else args.port,
        symbols=args.symbols,
        source=args.source,
        data=tuple(args.data),
        seed=args.seed,
        speed=args.speed,
        start_ms=args.start,
        paused=args.paused,
        accounts=tuple(args.account) or (DEMO_ACCOUNT,),
        updates_per_minute=args.updates_per_minute,
        close_delay_ms=args.close_delay_ms,
        history_minutes=args.history_minutes,
        legacy_kline_silence=not args.no_legacy_kline_silence,
        weight_limit_1m=args.weight_limit,
    )


async def serve(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with SimServer(config) as sim:
        for k, v in sim.env().items():
            print(f"{k}={v}", flush=True)
        await stop.wait()
        st = sim.admin.state()
        log.info(
            "exchange_sim stopping: sim_time=%s rest=%s ws=%s faults=%s",
            st["clock"]["nowMs"], st["counters"]["rest"], st["counters"]["ws"],
            st["faults"]["applied"],
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
        if config.source == "replay" and not config.data:
            raise ValueError("--source replay needs --data PATH...")
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(serve(config))
        else:
            uvloop.run(serve(config))
    except (ValueError, OSError) as exc:
        print(f"exchange_sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
