"""The trader's latency helpers: where a decided minute's time goes (`DecisionTiming`,
shown in health as latency_<stage>_p50/p99_ms) and what keeps pauses off that path
(`GcHold`, `drop_result` for a prefetched read nobody needed)."""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from typing import Any

import numpy as np


class GcHold:
    """Cyclic GC off from a minute's first kline until its decisions are published.

    WHY: a decided minute allocates tens of thousands of short-lived objects; generation-0
    and -1 passes then run several times between its first kline and its publish (~0.5-2
    ms each on a busy machine, right on the latency path).  The objects are freed by
    reference counting; what is left is collected by the first pass after `release()`,
    when nothing waits.  The service releases when no minute is open (after a decision,
    or when the timer decides one), so GC is never held for longer than the gate's
    timeout."""

    def __init__(self) -> None:
        self.held = False

    def hold(self) -> None:
        if not self.held and gc.isenabled():
            gc.disable()
            self.held = True

    def release(self) -> None:
        if self.held:
            gc.enable()
            self.held = False


def drop_result(task: asyncio.Future[Any]) -> None:
    """A prefetched read nobody needed: retrieve its outcome so nothing is logged."""
    if not task.cancelled():
        task.exception()


class DecisionTiming:
    """Where a decided minute's time goes: from the batch holding its last kline (read)
    to its decisions published.  Stages: feed (parse + context updates up to the
    decision), account (cache/REST read), decide (the core: score, rank, size), publish."""

    STAGES = ("feed", "account", "decide", "publish", "total")

    def __init__(self, keep: int = 1000) -> None:
        self.samples = {s: deque[float](maxlen=keep) for s in self.STAGES}
        self.last_ms: float | None = None

    def add(self, *marks: float) -> None:
        for stage, a, b in zip(self.STAGES, marks, marks[1:], strict=False):
            self.samples[stage].append((b - a) * 1000)
        self.last_ms = round((marks[-1] - marks[0]) * 1000, 3)
        self.samples["total"].append(self.last_ms)

    def stats(self) -> dict[str, Any]:
        """p50/p99 of each stage over the kept minutes: one numpy call for all stages (the
        heartbeat calls this every few seconds, on the same event loop as the decisions)."""
        out: dict[str, Any] = {"last_decision_latency_ms": self.last_ms}
        stages = [s for s in self.STAGES if self.samples[s]]
        if len({len(self.samples[s]) for s in stages}) == 1:  # the usual case: all filled
            rows = np.array([list(self.samples[s]) for s in stages], dtype=np.float64)
            pcts = np.percentile(rows, (50, 99), axis=1).T
        else:
            pcts = np.array([np.percentile(list(self.samples[s]), (50, 99)) for s in stages])
        for stage, (p50, p99) in zip(stages, pcts, strict=True):
            out[f"latency_{stage}_p50_ms"] = round(float(p50), 3)
            out[f"latency_{stage}_p99_ms"] = round(float(p99), 3)
        return out
