"""`python -m services.account_feed [--check] [--port N]` (also `slt run account_feed`).

Runs the user-data-stream service (see service.py).  `--check` is the Docker
healthcheck: exit 0 when this service's heartbeat in Redis is fresh and alive.
A configuration problem ends start-up with one line and exit status 2.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from services.account_feed.service import AccountFeedService
from shared.runtime import service_main


def _freeze_startup_objects() -> None:
    """Everything imported so far lives for the whole process: move it out of the
    collector's sight, so a full collection scans only what the feed allocates (a full
    pass over the ~65k start-up objects is 30+ ms: a latency spike)."""
    gc.collect()
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        AccountFeedService,
        argv,
        name=AccountFeedService.name,
        description="User data stream -> slt:stream:account and the position/balance "
        "caches, with a listenKey that is kept alive, recreated and reconciled.",
        before_run=_freeze_startup_objects,
    )


if __name__ == "__main__":
    sys.exit(main())
