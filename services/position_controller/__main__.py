"""`python -m services.position_controller [--check] [--port N]` (also `slt run position_controller`).

Exits: the service's exit code; 2 on a configuration error (one line, no traceback);
`--check` 0 when this instance's heartbeat is fresh and alive, else 1 (Docker healthcheck).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.position_controller.service import PositionControllerService
from shared.config import ConfigError, load_settings
from shared.health import check_health
from shared.runtime import run_service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.position_controller",
        description="Exits within milliseconds of an account event or a mark-price tick, "
        "with a periodic sweep as reconciliation and safety net.",
    )
    parser.add_argument("--check", action="store_true", help="exit 0 if healthy (Docker)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (0 = any free)")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, or a bad argument (argparse printed why)
        return int(exc.code or 0)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.check:
        return check_health(settings, PositionControllerService.name)
    return run_service(PositionControllerService(settings), settings, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
