"""What the position controller keeps in Redis, and the outbox that writes it there.

WHY: the exchange knows the positions but not what we know about them.  A restart must
resume with (a) when each position opened (its close ids and time stop hang on it), (b)
the ledger's open lots (entry fills, fees, funding, the entry's client id that joins its
decision record), (c) the last applied account event per symbol, so a redelivered older
event cannot bring a closed position back, and (d) the outcome of every order we sent,
so a decision replayed right after a restart is not sent again.  (a)-(c) are one JSON
document at `Keys.pc_state`; (d) is the hash `Keys.pc_orders` (client id -> JSON).

The outbox: every write this service makes (order/risk logs, closed trades, position-cache
repairs, the state) goes through one ordered in-memory queue that is flushed in a MULTI
transaction and kept on a Redis error, so a brief Redis outage delays writes instead of
losing them, and the close orders (REST only) never wait for Redis.  A closed trade is
written by a Lua script that SADDs its id to `Keys.trades_recorded` and XADDs it only when
the id was new: a replay or a crash between the two can never write a trade twice.
Position-cache repairs go through `shared.account_cache`'s script (the event-time rule
of the cache's one writer), queued in the same transaction.
Log entries are dropped (counted) past `max_ops`; trades, repairs and the state are not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.account_cache import APPLY_LUA, LeverageWrite, PositionWrite, Write, build_call
from shared.codec import encode_event
from shared.errors import MessageError, excerpt
from shared.keys import Keys
from shared.models import ClosedTrade, Position

log = logging.getLogger(__name__)

STATE_VERSION = 1
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS[1] recorded-trades set, KEYS[2] trades stream; ARGV[1] trade id, ARGV[2] maxlen,
# ARGV[3..] the entry's fields.  Returns the entry id, or 0 when the trade was recorded.
RECORD_TRADE_LUA = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""


class StateError(Exception):
    """The persisted state cannot be read (it is then ignored: the exchange is the truth)."""

    def __init__(self, reason: str, raw: Any = None) -> None:
        self.reason = reason
        self.excerpt = excerpt(raw) if raw is not None else ""
        super().__init__(f"bad position controller state: {reason}")


@dataclass(frozen=True, slots=True)
class ControllerState:
    """The part of the controller's memory the exchange cannot give back."""

    open_times: dict[str, int] = field(default_factory=dict)
    event_times: dict[str, int] = field(default_factory=dict)
    positions: tuple[Position, ...] = ()
    ledger: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "open_times": self.open_times,
                "event_times": self.event_times,
                "positions": [p.to_dict() for p in self.positions],
                "ledger": self.ledger,
            },
            default=str,
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ControllerState:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"not JSON ({exc})", raw) from None
        if not isinstance(data, dict) or data.get("v") != STATE_VERSION:
            raise StateError("not a version-1 state document", raw)
        try:
            return cls(
                {str(k): int(v) for k, v in dict(data.get("open_times") or {}).items()},
                {str(k): int(v) for k, v in dict(data.get("event_times") or {}).items()},
                tuple(Position.from_dict(p) for p in data.get("positions") or ()),
                dict(data.get("ledger") or {}),
            )
        except (MessageError, TypeError, ValueError) as exc:
            raise StateError(f"bad field: {exc}", raw) from None


@dataclass(frozen=True, slots=True)
class SentOrder:
    """The outcome of one order we sent (wall-clock ms: it must survive a restart)."""

    client_order_id: str
    symbol: str
    status: str
    sent_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps({"symbol": self.symbol, "status": self.status, "sent_ms": self.sent_ms})

    @classmethod
    def from_json(cls, client_order_id: str, raw: bytes | str) -> SentOrder:
        try:
            d = orjson.loads(raw)
            return cls(client_order_id, str(d["symbol"]), str(d["status"]), int(d["sent_ms"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"bad sent order {client_order_id!r}: {exc!r}", raw) from None


async def load_state(redis: aioredis.Redis, keys: Keys) -> ControllerState | None:
    """The persisted state, None when there is none.  Raises StateError when unreadable."""
    raw = await redis.get(keys.pc_state)
    return None if raw is None else ControllerState.from_json(raw)


async def load_sent_orders(
    redis: aioredis.Redis, keys: Keys, now_ms: int, keep_ms: int
) -> dict[str, SentOrder]:
    """Outcomes of orders sent within `keep_ms`; older (and unreadable) ones are deleted,
    so the hash stays small."""
    raw = await redis.hgetall(keys.pc_orders)
    out: dict[str, SentOrder] = {}
    stale: list[bytes] = []
    for k, v in raw.items():
        cid = k.decode() if isinstance(k, bytes) else str(k)
        try:
            rec = SentOrder.from_json(cid, v)
        except StateError as exc:
            log.warning("dropping unreadable sent-order record: %s", exc)
            stale.append(k)
            continue
        if now_ms - rec.sent_ms > keep_ms:
            stale.append(k)
        else:
            out[cid] = rec
    if stale:
        await redis.hdel(keys.pc_orders, *stale)
    return out


# ---- the outbox ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Op:
    kind: str  # xadd | trade | account | hset
    key: str
    payload: Any
    extra: Any = None


class Outbox:
    """Ordered, retried Redis writes (see module doc).  Adding is synchronous and cheap;
    `flush()` writes what is queued; `run()` flushes whenever something is added."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        maxlen: Callable[[str], int],
        *,
        max_ops: int = 10_000,
        batch: int = 500,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.max_ops = max_ops
        self.batch = batch
        self._ops: deque[_Op] = deque()
        self._state: bytes | None = None  # latest state not yet written (coalesced)
        self._written_state: bytes | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._record_trade = redis.register_script(RECORD_TRADE_LUA)
        self._apply_account = redis.register_script(APPLY_LUA)
        self.counters = dict.fromkeys(
            ("written", "dropped", "errors", "trades_recorded", "trades_duplicate",
             "states_saved"), 0,
        )  # fmt: skip

    # ---- adding ---------------------------------------------------------------------
    def xadd(self, stream: str, fields: Mapping[str, Any]) -> None:
        """A log entry (droppable under pressure)."""
        self._add(_Op("xadd", stream, dict(fields)))

    def event(self, stream: str, etype: str, data: dict[str, Any], *, symbol: str | None,
              event_time: int | None) -> None:  # fmt: skip
        self.xadd(stream, encode_event(etype, data, symbol=symbol, event_time=event_time))

    def trade(self, trade: ClosedTrade) -> None:
        """Write the closed trade once (guarded by `Keys.trades_recorded`)."""
        fields = encode_event("closed_trade", trade.to_dict(), symbol=trade.symbol,
                              event_time=trade.exit_time)  # fmt: skip
        self._add(_Op("trade", trade.trade_id, fields))

    def position(self, symbol: str, position: Position | None, event_time: int) -> None:
        """Set the symbol's position-cache hash as of `event_time` (delete it when None or
        flat), through `shared.account_cache`'s one writer: a repair older than what
        account_feed has already written is dropped there, never applied over it."""
        flat = position is None or position.size == 0
        writes: list[Write] = [PositionWrite(symbol, event_time, None if flat else position)]
        if not flat and position is not None and position.leverage is not None:
            writes.append(LeverageWrite(symbol, event_time, position.leverage))
        self._add(_Op("account", symbol, writes))

    def hset(self, key: str, name: str, value: bytes | str) -> None:
        self._add(_Op("hset", key, value, name))

    def state(self, blob: bytes) -> bool:
        """Queue the state document unless it equals the last one written."""
        if blob == self._written_state or blob == self._state:
            return False
        self._state = blob
        self._wake.set()
        return True

    def _add(self, op: _Op) -> None:
        self._ops.append(op)
        if len(self._ops) > self.max_ops:
            for i, old in enumerate(self._ops):
                if old.kind == "xadd":
                    del self._ops[i]
                    self.counters["dropped"] += 1
                    break
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._ops) + (self._state is not None)

    # ---- writing --------------------------------------------------------------------
    async def flush(self) -> None:
        """Write everything queued, in order.  Raises the Redis error (nothing is lost:
        unwritten ops stay queued)."""
        async with self._lock:
            while self._ops or self._state is not None:
                ops = [self._ops[i] for i in range(min(self.batch, len(self._ops)))]
                state = self._state if len(ops) < self.batch else None
                try:
                    results = await self._write(ops, state)
                except _TRANSIENT:
                    self.counters["errors"] += 1
                    raise
                except RedisError as exc:  # a command Redis refused: never retry it
                    self.counters["errors"] += 1
                    self.counters["dropped"] += len(ops)
                    log.error("outbox batch refused by Redis, dropped: %r", exc)
                    results = [None] * len(ops)
                for _ in ops:
                    self._ops.popleft()
                self._count(ops, results)
                if state is not None:
                    self._written_state = state
                    if self._state is state:
                        self._state = None
                    self.counters["states_saved"] += 1

    async def _write(self, ops: list[_Op], state: bytes | None) -> list[Any]:
        """One MULTI/EXEC; returns the reply of each op's last command."""
        ends: list[int] = []
        n = 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for op in ops:
                n += await self._queue(pipe, op)
                ends.append(n - 1)
            if state is not None:
                pipe.set(self.keys.pc_state, state)
            results = await pipe.execute()
        return [results[i] for i in ends]

    async def _queue(self, pipe: Any, op: _Op) -> int:
        """Queue one op's commands on the pipeline; returns how many."""
        if op.kind == "xadd":
            pipe.xadd(op.key, op.payload, maxlen=self.maxlen(op.key), approximate=True)
            return 1
        if op.kind == "trade":
            fields = [x for kv in op.payload.items() for x in kv]
            stream = self.keys.stream_trades
            await self._record_trade(keys=[self.keys.trades_recorded, stream],
                                     args=[op.key, self.maxlen(stream), *fields], client=pipe)  # fmt: skip
            return 1
        if op.kind == "account":
            stream = self.keys.stream_account
            script_keys, args = build_call(self.keys, op.payload, (), self.maxlen(stream))
            await self._apply_account(keys=script_keys, args=args, client=pipe)
            return 1
        pipe.hset(op.key, op.extra, op.payload)
        return 1

    def _count(self, ops: list[_Op], results: list[Any]) -> None:
        self.counters["written"] += len(ops)
        for op, res in zip(ops, results, strict=False):
            if op.kind != "trade" or res is None:
                continue
            if res in (0, b"0"):
                self.counters["trades_duplicate"] += 1
                log.info("closed trade already recorded", extra={"trade_id": op.key})
            else:
                self.counters["trades_recorded"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Flush whenever woken; back off (0.1 s doubling to 2 s) while Redis fails."""
        backoff = 0.1
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait((wake, stop_wait), return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                self._wake.clear()
                try:
                    await self.flush()
                    backoff = 0.1
                except _TRANSIENT as exc:
                    log.warning("outbox: Redis unavailable (%r); %d writes kept", exc,
                                self.pending)  # fmt: skip
                    await asyncio.wait((stop_wait,), timeout=backoff)
                    backoff = min(backoff * 2, 2.0)
                    self._wake.set()
        finally:
            stop_wait.cancel()

    def stats(self) -> dict[str, Any]:
        return {"pending": self.pending, **{f"{k}_total": v for k, v in self.counters.items()}}
