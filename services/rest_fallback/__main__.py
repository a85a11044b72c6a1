"""`python -m services.rest_fallback [--check] [--port N]` / `slt run rest_fallback ...`.

Exit status: 0 clean stop / healthy, 1 runtime failure / unhealthy, 2 bad configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.runtime import service_main

from .service import RestFallbackService


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return service_main(RestFallbackService, list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2): a status, not an exit
        return int(exc.code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
