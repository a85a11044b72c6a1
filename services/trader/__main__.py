"""`python -m services.trader [--check] [--port N]` (also `slt run trader`).

Runs the trader (see service.py): closed klines -> one batched decision per minute ->
slt:stream:signals, entries with protective stop and take-profit on the exchange, closed
trades -> the self-learning model.  `--check` is the Docker healthcheck: exit 0 when this
service's heartbeat in Redis is fresh and alive.  Exit status: 0 clean stop / healthy,
1 runtime failure / unhealthy, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.trader.service import TraderService
from shared.config import ConfigError, load_settings
from shared.health import check_health
from shared.runtime import run_service

# An entry in flight when SIGTERM comes is finished (protected or closed), not cut off.
DRAIN_TIMEOUT_S = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trader",
        description="Closed klines -> ranked decisions (slt:stream:signals) -> protected "
        "entries; closed trades -> the self-learning XGBoost model.",
    )
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
        return check_health(settings, TraderService.name)
    return run_service(
        TraderService(settings), settings, port=args.port, drain_timeout=DRAIN_TIMEOUT_S
    )


if __name__ == "__main__":
    sys.exit(main())
