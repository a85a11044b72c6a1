"""`python -m services.reporter [--check] [--port N] [--token]` (also `slt run reporter`).

Configuration problems end start-up with one line and exit status 2, before anything
binds a port: in particular a dashboard exposed beyond loopback without SESSION_SECRET.
`--token` prints the dashboard login token derived from SESSION_SECRET.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.reporter.dashboard import check_exposure, dashboard_token
from services.reporter.service import ReporterService
from shared.config import ConfigError, load_settings
from shared.health import check_health
from shared.runtime import run_service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reporter", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 0 if healthy (Docker)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (0 = any free)")
    parser.add_argument("--token", action="store_true", help="print the dashboard login token")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        settings = load_settings()
        if args.token:
            if not settings.session_secret:
                raise ConfigError("SESSION_SECRET", "not set: there is no login token")
            print(dashboard_token(settings.session_secret.get_secret_value()))
            return 0
        if args.check:
            return check_health(settings, ReporterService.name)
        check_exposure(settings)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return run_service(ReporterService(settings), settings, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
