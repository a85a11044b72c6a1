"""`slt` — the one command-line entry point.

Sub-commands are thin: each parses its arguments and hands over to the module that owns
the work, so `slt run kline_feed` and `python -m services.kline_feed` are the same code.
Every failure an operator can fix ends in one line on stderr and a non-zero exit:
2 for bad configuration or usage, 1 for a runtime failure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Sequence

from shared.config import SERVICES, ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def _fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _cmd_run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"services.{args.service}.__main__")
    entry: Callable[[Sequence[str] | None], int] = module.main
    return entry(list(args.service_args))


def _cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    print(settings.model_dump_json(indent=2, exclude={"api_key", "api_secret", "session_secret"}))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from shared.up import main as up_main

    return up_main(list(args.up_args))


def _cmd_status(args: argparse.Namespace) -> int:
    from shared.ops import status

    return asyncio.run(status(_settings_or_exit(), as_json=args.json))


def _cmd_tail(args: argparse.Namespace) -> int:
    from shared.ops import tail

    return asyncio.run(tail(_settings_or_exit(), args.stream, args.count, args.follow))


def _cmd_halt(args: argparse.Namespace) -> int:
    from shared.ops import set_halt

    return asyncio.run(set_halt(_settings_or_exit(), True, args.reason))


def _cmd_resume(args: argparse.Namespace) -> int:
    from shared.ops import set_halt

    return asyncio.run(set_halt(_settings_or_exit(), False, ""))


def _cmd_report(args: argparse.Namespace) -> int:
    from shared.ops import report

    return asyncio.run(report(_settings_or_exit(), args.date))


def _cmd_backtest(args: argparse.Namespace) -> int:
    module = importlib.import_module("backtest.cli")
    return int(module.main(list(args.backtest_args)))


def _cmd_data(args: argparse.Namespace) -> int:
    module = importlib.import_module("backtest.download")
    return int(module.main(list(args.data_args)))


# Sub-commands whose own parser takes every argument.  WHY not only REMAINDER: argparse's
# REMAINDER positional does not take a leading option (`slt backtest --data x`, `slt up
# --speed 60` fail with "unrecognized arguments").
_PASS_THROUGH = {
    "backtest": (_cmd_backtest, "backtest_args"),
    "data": (_cmd_data, "data_args"),
    "up": (_cmd_up, "up_args"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slt",
        description="SelfLearningTrader: Binance USD-M futures trading services over Redis Streams.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one service: " + ", ".join(SERVICES),
        description="Run one service in the foreground. Services: " + ", ".join(SERVICES),
    )
    run.add_argument("service", choices=SERVICES)
    run.add_argument("service_args", nargs=argparse.REMAINDER, help="passed to the service")
    run.set_defaults(func=_cmd_run)

    up = sub.add_parser(
        "up",
        help="run the whole system (embedded Redis, simulator, every service)",
        add_help=False,
    )
    up.add_argument("up_args", nargs=argparse.REMAINDER)
    up.set_defaults(func=_cmd_up)

    cfg = sub.add_parser("config", help="print the effective configuration (no secrets)")
    cfg.set_defaults(func=_cmd_config)

    st = sub.add_parser("status", help="health of every service")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_cmd_status)

    tl = sub.add_parser("tail", help="show a stream's entries decoded (klines, account, ...)")
    tl.add_argument("stream", help="stream short name: klines, account, signals, orders, ...")
    tl.add_argument("-n", "--count", type=int, default=10)
    tl.add_argument("-f", "--follow", action="store_true")
    tl.set_defaults(func=_cmd_tail)

    ht = sub.add_parser("halt", help="stop new entries at once (exits still run)")
    ht.add_argument("--reason", default="operator")
    ht.set_defaults(func=_cmd_halt)

    rs = sub.add_parser("resume", help="allow new entries again")
    rs.set_defaults(func=_cmd_resume)

    rp = sub.add_parser("report", help="build the daily report now")
    rp.add_argument("--date", default=None, help="YYYY-MM-DD (UTC); default: today")
    rp.set_defaults(func=_cmd_report)

    bt = sub.add_parser("backtest", help="backtest over kline files", add_help=False)
    bt.add_argument("backtest_args", nargs=argparse.REMAINDER)
    bt.set_defaults(func=_cmd_backtest)

    dt = sub.add_parser(
        "data", help="download Binance's public kline archive (slt data download ...)",
        add_help=False,
    )  # fmt: skip
    dt.add_argument("data_args", nargs=argparse.REMAINDER)
    dt.set_defaults(func=_cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASS_THROUGH:
        func, dest = _PASS_THROUGH[argv[0]]
        args = argparse.Namespace(func=func, **{dest: argv[1:]})
    else:
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
