"""`python -m services.position_controller [--check] [--port N]` (also `slt run position_controller`).

Exit status: 0 clean stop / healthy, 1 runtime failure / unhealthy, 2 bad configuration
(one line, no traceback). `--check` is the Docker healthcheck.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.position_controller.service import PositionControllerService
from shared.runtime import service_main


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        PositionControllerService,
        argv,
        name=PositionControllerService.name,
        description="Exits within milliseconds of an account event or a mark-price tick, "
        "with a periodic sweep as reconciliation and safety net.",
    )


if __name__ == "__main__":
    sys.exit(main())
