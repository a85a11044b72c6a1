"""`python -m services.account_feed [--check] [--port N]` (also `slt run account_feed`).

Runs the user-data-stream service (see service.py).  `--check` is the Docker
healthcheck: exit 0 when this service's heartbeat in Redis is fresh and alive.
A configuration problem ends start-up with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from services.account_feed.service import AccountFeedService
from shared.config import ConfigError, load_settings
from shared.health import check_health
from shared.runtime import run_service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="account_feed",
        description="User data stream -> slt:stream:account and the position/balance "
        "caches, with a listenKey that is kept alive, recreated and reconciled.",
    )
    parser.add_argument("--check", action="store_true", help="exit 0 if healthy (Docker)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (0 = any free)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.check:
        return check_health(settings, AccountFeedService.name)
    # Everything imported so far lives for the whole process: move it out of the
    # collector's sight, so a full collection scans only what the feed allocates
    # (a full pass over the ~65k start-up objects is 30+ ms: a latency spike).
    gc.collect()
    gc.freeze()
    return run_service(AccountFeedService(settings), settings, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
