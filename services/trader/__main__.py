"""`python -m services.trader [--check] [--port N]` (also `slt run trader`).

Runs the trader (see service.py): closed klines -> one batched decision per minute ->
slt:stream:signals, entries with protective stop and take-profit on the exchange, closed
trades -> the self-learning model.  `--check` is the Docker healthcheck: exit 0 when this
service's heartbeat in Redis is fresh and alive.  Exit status: 0 clean stop / healthy,
1 runtime failure / unhealthy, 2 bad configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.trader.service import TraderService
from shared.runtime import service_main

# An entry in flight when SIGTERM comes is finished (protected or closed), not cut off.
DRAIN_TIMEOUT_S = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        TraderService,
        argv,
        name=TraderService.name,
        description="Closed klines -> ranked decisions (slt:stream:signals) -> protected "
        "entries; closed trades -> the self-learning XGBoost model.",
        drain_timeout=DRAIN_TIMEOUT_S,
    )


if __name__ == "__main__":
    sys.exit(main())
