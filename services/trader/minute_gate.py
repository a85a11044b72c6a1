"""When is a minute complete?  The trader decides each minute ONCE, batched over symbols.

WHY a gate: the closed klines of one minute arrive one symbol at a time (kline_feed's
shards, REST fallbacks, Binance's ~2 s close delay).  Deciding on the first would rank a
handful of candidates while better ones are still on their way; waiting forever for a
delisted or silent symbol would stall every decision.  So minute M is decided as soon as
ONE of these holds:

1. every expected symbol has delivered its kline for M (the common case: no waiting);
2. a kline arrives whose EVENT time is `grace_ms` past the event time of M's first kline
   (exchange time, so a fast simulator or a replay behaves like the live market);
3. a kline of a LATER minute arrives: M is decided before that kline is fed, because
   feeding it would replace the symbol's context and candidates of M;
4. the bounded timer fallback: `timeout_ms` of receive time (the shell's monotonic clock)
   after M's first kline, when no later event comes to trigger rule 2.

A kline of a minute already decided (late, replayed after a restart) is only fed to the
market context (which drops exact duplicates); it never reopens the minute.  Pure: every
time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable


class MinuteGate:
    def __init__(
        self, symbols: Iterable[str], grace_ms: int, timeout_ms: int, last_decided: int = -1
    ) -> None:
        self.symbols = frozenset(symbols)
        self.grace_ms, self.timeout_ms = int(grace_ms), int(timeout_ms)
        self.last_decided = int(last_decided)
        self.current: int | None = None  # open time of the minute being collected
        self.first_event_ms = 0
        self.first_received_ms = 0
        self.seen: set[str] = set()
        self.late = 0  # klines of minutes already decided
        self.by_rule = {"complete": 0, "grace": 0, "next_minute": 0, "timeout": 0}

    def before(self, open_time: int) -> int | None:
        """A kline of minute `open_time` is about to be fed: the older minute to decide
        FIRST (rule 3), or None."""
        if self.current is not None and open_time > self.current:
            return self._close("next_minute")
        return None

    def after(self, symbol: str, open_time: int, event_ms: int, received_ms: int) -> int | None:
        """The kline was fed: the minute to decide now (rules 1 and 2), or None."""
        if open_time <= self.last_decided:
            self.late += 1
            return None
        if self.current is None:
            self.current, self.seen = open_time, set()
            self.first_event_ms, self.first_received_ms = event_ms, received_ms
        elif open_time < self.current:  # an older, undecided minute: never after rule 3
            self.late += 1
            return None
        self.seen.add(symbol)
        if self.symbols and self.symbols <= self.seen:
            return self._close("complete")
        if event_ms - self.first_event_ms >= self.grace_ms:
            return self._close("grace")
        return None

    def deadline(self) -> int | None:
        """Receive time at which the open minute is decided anyway (rule 4)."""
        return None if self.current is None else self.first_received_ms + self.timeout_ms

    def expire(self, now_ms: int) -> int | None:
        deadline = self.deadline()
        if deadline is not None and now_ms >= deadline:
            return self._close("timeout")
        return None

    def _close(self, rule: str) -> int:
        minute = self.current
        assert minute is not None
        self.by_rule[rule] += 1
        self.last_decided = max(self.last_decided, minute)
        self.current, self.seen = None, set()
        return minute
