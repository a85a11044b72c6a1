"""The fault schedule: what breaks, in which order, and a record of what was done (with
the simulator's own count of what each injection hit), so the checks can compare it
with what the services counted.

Every failure the issue lists appears in one cycle: WebSocket drops (abort and close)
and stalls on the kline, mark-price and user streams, listenKey expiry, a failed
keepalive, REST 5xx bursts (30 failures: with at most 5 REST clients one of them sees
5 in a row, so a breaker opens), REST timeouts, 429 and 418, `kill -9` of each service in
turn (the supervisor restarts it), a Redis restart (AOF on), malformed messages of every
shape and duplicate closed klines - plus a process freeze (SIGSTOP) of each feed, which
is what makes rest_fallback take over.

429 / 418 under a fast simulator.  `shared/binance/client.py` stores the shared
Retry-After ban as "exchange ms" computed from each process's own server-time offset
and compares it with another process's offset; at speed S those offsets drift apart by
(S - 1) x the time since each process last synced, so a ban set by one process can block
another for hours.  The throttles are therefore sent on the listenKey path (only
account_feed calls it, and its offset is the stalest of the synced processes, so its ban
stops only itself), each followed by a `kill -9` of account_feed (a new process starts
with a fresh offset), and all of it before the round of kills (which restarts every
process).  See the report of issue #11 for the bug itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .config import SERVICES
from .system import System

log = logging.getLogger("e2e.faults")

Action = Callable[[System], Awaitable[Any]]
LISTEN_KEY_PATH = "/fapi/v1/listenKey"


@dataclass(frozen=True)
class Step:
    delay: float  # real seconds after the previous step finished
    name: str
    action: Action


@dataclass
class FaultLog:
    """What the schedule did: steps done by name, what each hit (`hits`: connections
    cut, messages sent, as the simulator answered), failures, and a timeline."""

    done: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)


def _admin(route: str, **body: Any) -> Action:
    async def act(system: System) -> Any:
        return await system.admin(route, **body)

    return act


def _kill(service: str) -> Action:
    async def act(system: System) -> None:
        await system.kill9(service)

    return act


def _freeze(service: str, seconds: float) -> Action:
    async def act(system: System) -> None:
        await system.freeze(service, seconds)

    return act


def _freeze_across_fill(service: str, after_fill_s: float, limit_s: float = 20.0) -> Action:
    """SIGSTOP `service` until the exchange has filled an order meanwhile (trading goes
    on) and `after_fill_s` more seconds have passed (its heartbeat lapses, the others
    fall back to REST), then SIGCONT: the events it missed arrive late, all at once."""

    async def act(system: System) -> int:
        pid = system.pid(service)
        assert pid, f"{service} is not running"
        fills0 = (await system.admin_get("e2e/view"))["audit"]["fills"]
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + limit_s
            filled = False
            while time.monotonic() < deadline and not filled:
                await asyncio.sleep(0.1)
                filled = (await system.admin_get("e2e/view"))["audit"]["fills"] > fills0
            await asyncio.sleep(after_fill_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return int(filled)

    return act


async def _restart_redis(system: System) -> None:
    await system.restart_redis()


def _wait_applied(fault: str, count: int, limit_s: float = 20.0) -> Action:
    """Until the simulator has applied `count` faults of this kind (e.g. `rest_429`)."""

    async def act(system: System) -> int:
        deadline = time.monotonic() + limit_s
        while True:
            applied = (await system.admin_state())["faults"]["applied"].get(fault, 0)
            if applied >= count:
                return 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fault}: {applied} applied, waited for {count}")
            await asyncio.sleep(0.1)

    return act


def _wait_ok(service: str, limit_s: float = 30.0) -> Action:
    async def act(system: System) -> int:
        await system.wait_status({service}, ("ok",), limit_s)
        return 0

    return act


def one_cycle(symbol: str, kill_gap: float, n: int = 1) -> list[Step]:
    """Every fault once.  `symbol` picks the connections (its kline / mark-price stream);
    `n` numbers the cycle, for the throttle waits (cumulative counts)."""
    kl, mk = f"{symbol.lower()}@kline_1m", f"{symbol.lower()}@markPrice@1s"
    malformed = [
        Step(0.2, "ws_malformed_market", _admin("ws/malformed", kind="market", stream=kl,
                                                what=what, count=2))
        for what in ("garbage", "missing_fields", "nan", "nan_bare")
    ]  # fmt: skip
    steps = [
        Step(0.0, "ws_drop_klines", _admin("ws/drop", kind="market", stream=kl, mode="abort")),
        *malformed,
        Step(1.0, "ws_duplicate", _admin("ws/duplicate", count=2)),
        Step(1.0, "ws_drop_marks", _admin("ws/drop", kind="market", stream=mk, mode="abort")),
        Step(1.0, "ws_drop_user", _admin("ws/drop", kind="user", mode="close")),
        Step(2.0, "ws_stall_market", _admin("ws/stall", kind="market", seconds=4)),
        Step(1.0, "ws_malformed_user", _admin("ws/malformed", kind="user", what="garbage")),
        Step(0.2, "ws_malformed_user", _admin("ws/malformed", kind="user", what="missing_fields")),
        Step(0.2, "ws_malformed_user", _admin("ws/malformed", kind="user", what="nan")),
        Step(3.0, "listenkey_expire", _admin("listenkey/expire")),
        Step(3.0, "keepalive_fail", _admin("listenkey/fail_keepalive", count=1, mode="5xx")),
        Step(0.0, "wait", _wait_applied("keepalive_5xx", n)),
        Step(2.0, "rest_5xx_burst", _admin("rest/fail", mode="5xx", count=30, status=503)),
        Step(3.0, "ws_stall_user", _admin("ws/stall", kind="user", seconds=3)),
        Step(3.0, "ws_drop_klines", _admin("ws/drop", kind="market", stream=kl, mode="close")),
        Step(1.0, "ws_drop_user", _admin("ws/drop", kind="user", mode="abort")),
        Step(2.0, "rest_timeout", _admin("rest/fail", mode="timeout", count=2, hang_s=4)),
        Step(3.0, "rest_5xx_burst", _admin("rest/fail", mode="5xx", count=30, status=502)),
        Step(3.0, "freeze_kline_feed", _freeze("kline_feed", 5)),
        Step(3.0, "freeze_account_feed", _freeze_across_fill("account_feed", 5)),
        # throttles: see the module doc
        Step(0.0, "wait", _wait_ok("account_feed")),
        Step(3.0, "rest_429", _admin("rest/fail", mode="429", count=1, path=LISTEN_KEY_PATH)),
        Step(0.0, "wait", _wait_applied("rest_429", n)),
        Step(2.0, "kill9_account_feed", _kill("account_feed")),
        Step(0.0, "wait", _wait_ok("account_feed")),
        Step(3.0, "rest_418", _admin("rest/fail", mode="418", count=1, path=LISTEN_KEY_PATH)),
        Step(0.0, "wait", _wait_applied("rest_418", n)),
        Step(2.0, "kill9_account_feed", _kill("account_feed")),
    ]
    for service in SERVICES:
        steps.append(Step(kill_gap, f"kill9_{service}", _kill(service)))
    steps.append(Step(kill_gap, "redis_restart", _restart_redis))
    return steps


async def run_schedule(system: System, steps: list[Step], record: FaultLog) -> None:
    """Carry out `steps` in order; a failed step is recorded, not fatal (the checks then
    show what it did not cause)."""
    t0 = time.monotonic()
    for step in steps:
        if step.delay > 0:
            await asyncio.sleep(step.delay)
        try:
            result = await step.action(system)
        except Exception as exc:  # the run goes on; the figure shows the failed step
            log.warning("fault %s failed: %r", step.name, exc)
            record.failed.append(f"{step.name}: {exc!r}")
            continue
        if step.name == "wait":
            continue
        record.done[step.name] += 1
        if isinstance(result, int) and not isinstance(result, bool):
            record.hits[step.name] += result
        record.timeline.append((round(time.monotonic() - t0, 2), step.name))
