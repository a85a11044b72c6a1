"""Supervised child processes for `slt up`.

Each child is restarted with exponential backoff when it dies, and its output is
prefixed with its name (colored on a terminal) so one console shows the whole system.
Stopping sends SIGTERM, waits for a clean exit, then SIGKILLs what is left: nothing is
orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field

log = logging.getLogger("slt.up")

COLORS = ["36", "32", "33", "35", "34", "31", "96", "92", "93"]


@dataclass
class ChildSpec:
    """What to run: a name, an argv and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True


@dataclass
class ChildState:
    spec: ChildSpec
    color: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    last_exit: int | None = None
    pump: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, watches and restarts children; `stop()` ends all of them."""

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        color: bool | None = None,
        out=None,
    ) -> None:
        self.out = out or sys.stdout
        use_color = self.out.isatty() if color is None else color
        self.children = {
            s.name: ChildState(s, COLORS[i % len(COLORS)] if use_color else "")
            for i, s in enumerate(specs)
        }
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self._width = max((len(s.name) for s in specs), default=8)

    async def start(self) -> None:
        for state in self.children.values():
            await self._spawn(state)
            self._watchers.append(
                asyncio.create_task(self._watch(state), name=f"watch:{state.spec.name}")
            )

    def pids(self) -> dict[str, int | None]:
        return {n: (s.proc.pid if s.proc else None) for n, s in self.children.items()}

    def restarts(self) -> dict[str, int]:
        return {n: s.restarts for n, s in self.children.items()}

    async def _spawn(self, state: ChildState) -> None:
        env = {**os.environ, **state.spec.env, "PYTHONUNBUFFERED": "1"}
        state.proc = await asyncio.create_subprocess_exec(
            *state.spec.argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        state.pump = asyncio.create_task(self._pump(state), name=f"pump:{state.spec.name}")

    async def _pump(self, state: ChildState) -> None:
        assert state.proc and state.proc.stdout
        name = state.spec.name.ljust(self._width)
        prefix = f"\x1b[{state.color}m{name} |\x1b[0m " if state.color else f"{name} | "
        async for line in state.proc.stdout:
            self.out.write(prefix + line.decode(errors="replace"))
            self.out.flush()

    async def _watch(self, state: ChildState) -> None:
        delay = self.base_delay
        while True:
            assert state.proc
            code = await state.proc.wait()
            if state.pump:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(state.pump, 2)
            state.last_exit = code
            if self._stopping.is_set() or not state.spec.restart:
                return
            log.warning("%s exited with %s; restarting in %.1fs", state.spec.name, code, delay)
            self.out.write(f"[slt up] {state.spec.name} exited ({code}); restart in {delay:.1f}s\n")
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            state.restarts += 1
            delay = min(delay * 2, self.max_delay)
            await self._spawn(state)

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every child (in reverse start order), then SIGKILL stragglers."""
        self._stopping.set()
        for state in reversed(list(self.children.values())):
            if state.proc and state.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    state.proc.send_signal(signal.SIGTERM)
        for state in self.children.values():
            if state.proc and state.proc.returncode is None:
                try:
                    await asyncio.wait_for(state.proc.wait(), grace_s)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(state.proc.pid, signal.SIGKILL)
                    await state.proc.wait()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
