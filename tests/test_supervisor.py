"""The supervisor behind `slt up`: restarts dead children, prefixes output, leaves none behind."""

from __future__ import annotations

import asyncio
import io
import os
import sys

from shared.supervisor import ChildSpec, Supervisor


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_for(cond, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_dead_child_is_restarted_and_output_prefixed() -> None:
    out = io.StringIO()
    crash = ChildSpec(
        "crasher", [sys.executable, "-c", "print('hello', flush=True); raise SystemExit(3)"]
    )
    sleeper = ChildSpec(
        "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    )
    sup = Supervisor([crash, sleeper], base_delay=0.05, max_delay=0.2, color=False, out=out)
    await sup.start()
    try:
        await _wait_for(lambda: sup.restarts()["crasher"] >= 2)
        await _wait_for(lambda: "sleeper | up" in out.getvalue())
    finally:
        await sup.stop(grace_s=5)
    text = out.getvalue()
    assert "crasher | hello" in text
    assert "crasher exited (3)" in text
    assert sup.restarts()["sleeper"] == 0


async def test_stop_leaves_no_child_behind() -> None:
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("stubborn", [sys.executable, "-c", ignore_term]),
         ChildSpec("polite", [sys.executable, "-c", "import time; time.sleep(60)"])],
        color=False, out=out,
    )  # fmt: skip
    await sup.start()
    await _wait_for(lambda: "stubborn | ready" in out.getvalue())
    pids = [p for p in sup.pids().values() if p]
    await sup.stop(grace_s=1)
    assert len(pids) == 2
    for pid in pids:
        assert not _alive(pid)
