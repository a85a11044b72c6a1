"""`python -m services.rest_fallback [--check] [--port N]` / `slt run rest_fallback ...`.

Exit status: 0 clean stop / healthy, 1 runtime failure / unhealthy, 2 bad configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.runtime import service_main

from .service import RestFallbackService


def main(argv: Sequence[str] | None = None) -> int:
    return service_main(
        RestFallbackService,
        argv,
        name=RestFallbackService.name,
        description="Fills the kline and account caches over REST while a feed is down, "
        "empty or stale.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
