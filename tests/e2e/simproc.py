"""`python -m tests.e2e.simproc <exchange_sim options>`: the simulator exactly as
`python -m services.exchange_sim` runs it (same parser, same `SimServer`), plus one
read-only observer route for the chaos harness:

    GET /admin/e2e/view    {nowMs, positions (positionRisk v2 rows, open ones),
                            algos (open algo orders), balances, audit counts}
    GET /admin/e2e/audit   {orders: [...], fills: [...], rejects: [...], duplicates: [...]}

WHY a wrapper: the harness must see positions, open stop orders and the engine's audit
(every accepted client order id) throughout the run, and the simulator's `/admin` API
does not serve them.  Signed REST would do for positions but not for the audit, and the
harness's own REST calls would eat the REST faults it injects.  Under `/admin`, nothing
here is rate limited or hit by a fault; it only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import orjson
from aiohttp import web

from services.exchange_sim.__main__ import build_parser, config_from_args
from services.exchange_sim.engine.audit import FillRecord
from services.exchange_sim.server import SimServer


def _records(rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = {f: getattr(r, f) for f in r.__slots__}
        out.append({k: str(v) if not isinstance(v, int | bool | str) else v for k, v in d.items()})
    return out


class ObservedSim(SimServer):
    """SimServer with the observer routes (module doc), and the leverage of the position
    at every fill (the audit has none): "never above the cap" then covers every fill, not
    only the moments the harness sampled."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.fill_leverage: dict[str, int] = {}  # symbol -> highest leverage at a fill
        self.fills_by_leverage: dict[int, int] = {}
        previous = self.exchange.audit.hook

        def hook(rec: Any) -> None:
            if isinstance(rec, FillRecord):
                self._on_fill(rec)
            if previous is not None:
                previous(rec)

        self.exchange.audit.hook = hook

    def _on_fill(self, rec: FillRecord) -> None:
        acct = self.exchange.accounts.get(rec.account_id)
        pos = acct.positions.get(rec.symbol) if acct else None
        if pos is None:
            return
        lev = int(pos.leverage)
        self.fill_leverage[rec.symbol] = max(lev, self.fill_leverage.get(rec.symbol, 0))
        self.fills_by_leverage[lev] = self.fills_by_leverage.get(lev, 0) + 1

    @property
    def account_id(self) -> str:
        return self.config.accounts[0].account_id

    def view(self) -> dict[str, Any]:
        now = self.catch_up()
        ex, acct = self.exchange, self.account_id
        audit = ex.audit
        return {
            "nowMs": now,
            "positions": [
                r
                for r in ex.position_risk(acct, version=2)
                if r["positionAmt"] not in ("0", "0.0") and float(r["positionAmt"]) != 0
            ],
            "algos": ex.open_algo_orders(acct),
            "balances": ex.balances(acct),
            "audit": {
                "orders": len(audit.orders),
                "fills": len(audit.fills),
                "rejects": len(audit.rejects),
                "duplicates": len(audit.duplicate_client_ids()),
            },
        }

    def audit(self) -> dict[str, Any]:
        a = self.exchange.audit
        return {
            "orders": _records(a.orders),
            "fills": _records(a.fills),
            "rejects": _records(a.rejects),
            "duplicates": [list(d) for d in a.duplicate_client_ids()],
            "fill_leverage": self.fill_leverage,
            "fills_by_leverage": {str(k): v for k, v in self.fills_by_leverage.items()},
        }

    def make_app(self) -> web.Application:
        app = super().make_app()

        async def view(_: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(self.view()), content_type="application/json")

        async def audit(_: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(self.audit()), content_type="application/json")

        app.router.add_get("/admin/e2e/view", view)
        app.router.add_get("/admin/e2e/audit", audit)
        return app


async def serve(sim: ObservedSim) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        sim = ObservedSim(config_from_args(args))
        import uvloop

        uvloop.run(serve(sim))
    except (ValueError, OSError) as exc:
        print(f"exchange_sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
