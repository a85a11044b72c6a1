"""The Redis stream bus: bounded publishing and at-least-once consumer groups.

Why it looks like this:
- Every `XADD` carries `MAXLEN ~ n` (Redis trims whole macro-nodes, so the stream stays
  near n at almost no cost); an unbounded stream is a slow memory leak in a 24/7 system.
- A consumer acknowledges an entry only after its handler has done the effect, so a
  crash between read and effect leaves the entry pending, never lost.  On start a
  consumer first re-reads its own pending entries (a restart with the same name), then
  `XAUTOCLAIM`s entries that dead consumers left idle; it keeps claiming periodically so
  a sibling that never comes back is covered too.
- `ack_with_read=True` (a latency-sensitive consumer): the acks of a handled batch go out
  in ONE pipeline with the next XREADGROUP instead of their own round trip first, so the
  next batch is asked for at once.  Still after the effect; pending acks are sent before
  any re-read of pending entries (retry, recovery) and when the loop ends, and an ack that
  never got out only means a redelivery (at-least-once, as after a crash).
- A handler failure leaves the entry pending; it is retried one entry at a time.  An
  entry that fails `max_deliveries` times (delivery count from `XPENDING`) goes to the
  dead-letter stream `<stream>:dead` and is acknowledged in the same transaction, so a
  bad message never blocks the stream and is never silently dropped.

The client must be a bytes client (`decode_responses=False`): `data` is msgpack.
Entry ids are returned as `str`, fields as the `dict[bytes, bytes]` Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import MessageError
from shared.keys import Keys

log = logging.getLogger(__name__)

Fields = Mapping[str | bytes, Any]
Entry = tuple[str, dict[bytes, bytes]]
Batch = list[Entry]
BatchHandler = Callable[[Batch], Awaitable[Collection[str | bytes] | None]]
EntryHandler = Callable[[str, dict[bytes, bytes]], Awaitable[None]]

DEFAULT_MAXLEN = 100_000
DEAD_MAXLEN = 10_000
PIPELINE_CHUNK = 1_000


class PoisonEntry(Exception):
    """Raised by a handler for an entry that can never succeed: it goes to the
    dead-letter stream at once, without retries.  `shared.errors.MessageError` (what
    `decode_event` raises on a malformed entry) is treated the same by default."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def plain_text(value: Any) -> str | bytes:
    """A hash value as the plain string an operator reads in redis-cli: bool ->
    true/false, None -> "", numbers -> str(); str and bytes unchanged."""
    if isinstance(value, str | bytes):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class StreamBus:
    """Publishes events to streams (always trimmed) and latest state to hashes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        maxlen: Mapping[str, int],
        *,
        default_maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        """`maxlen` maps short stream names (`settings.redis.stream_maxlen`, e.g.
        `klines`) or full stream names to their bound; others get `default_maxlen`."""
        self.redis = redis
        self.keys = keys
        self.default_maxlen = default_maxlen
        self._maxlen: dict[str, int] = {}
        for name, n in maxlen.items():
            full = name if name.startswith(keys.prefix) else keys.stream(name)
            self._maxlen[full] = int(n)

    def maxlen(self, stream: str) -> int:
        if stream in self._maxlen:
            return self._maxlen[stream]
        if stream.endswith(Keys.dead_letter("")):
            return DEAD_MAXLEN
        return self.default_maxlen

    async def publish(self, stream: str, fields: Fields) -> str:
        """`XADD stream MAXLEN ~ n * fields`; returns the entry id."""
        n = self.maxlen(stream)
        entry_id = await self.redis.xadd(stream, fields, maxlen=n, approximate=True)  # type: ignore[arg-type]
        return _id(entry_id)

    async def publish_many(self, stream: str, entries: Sequence[Fields]) -> list[str]:
        """Pipelined XADDs (no MULTI) for bursts; ids come back in input order.

        Redis runs a connection's commands in order, so the stream order is the list
        order.  Sent in chunks so a huge burst does not build one giant buffer."""
        n = self.maxlen(stream)
        ids: list[str] = []
        for start in range(0, len(entries), PIPELINE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for fields in entries[start : start + PIPELINE_CHUNK]:
                    pipe.xadd(stream, fields, maxlen=n, approximate=True)  # type: ignore[arg-type]
                ids.extend(_id(r) for r in await pipe.execute())
        return ids

    async def set_state(self, key: str, mapping: Mapping[str, Any]) -> None:
        """HSET the latest state; values become plain strings (bool -> true/false)."""
        if mapping:
            await self.redis.hset(key, mapping={k: plain_text(v) for k, v in mapping.items()})

    async def get_state(self, key: str) -> dict[str, str]:
        raw = await self.redis.hgetall(key)
        return {_id(k): _id(v) for k, v in raw.items()}


class Consumer:
    """One member of a consumer group on one stream. See the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        consumer_name: str,
        *,
        count: int = 100,
        block_ms: int = 1_000,
        claim_idle_ms: int = 60_000,
        start_id: str = "0",
        max_deliveries: int = 5,
        retry_delay: float = 0.5,
        poison_errors: tuple[type[BaseException], ...] = (PoisonEntry, MessageError),
        dead_maxlen: int = DEAD_MAXLEN,
        ack_with_read: bool = False,
    ) -> None:
        """`start_id` is where a *new* group starts: '0' (default) so nothing
        published before the first start is lost, '$' for only new entries."""
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.name = consumer_name
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.start_id = start_id
        self.max_deliveries = max_deliveries
        self.retry_delay = retry_delay
        self.poison_errors = poison_errors
        self.dead_stream = Keys.dead_letter(stream)
        self.dead_maxlen = dead_maxlen
        self.counters = dict.fromkeys(
            ("read", "acked", "failed", "handler_errors", "dead_lettered", "claimed",
             "redelivered", "gone", "poison", "read_errors"), 0,
        )  # fmt: skip
        self.ack_with_read = ack_with_read
        self._unacked: list[str] = []  # handled, ack deferred to the next read
        self._retry = False
        self._errors: dict[str, str] = {}  # entry id -> last failure, for dead letters
        self._poison: set[str] = set()

    # ---- primitives ---------------------------------------------------------
    async def ensure_group(self) -> bool:
        """XGROUP CREATE ... MKSTREAM; True if created, False if it existed."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, self.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read(self, block_ms: int | None = None) -> Batch:
        """New entries (`>`) for this consumer; [] when the block times out.  Deferred
        acks (`ack_with_read`) go in the same pipeline, ahead of the read."""
        block = self.block_ms if block_ms is None else block_ms
        if self._unacked:
            ids = list(self._unacked)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, self.group, *ids)
                pipe.xreadgroup(self.group, self.name, {self.stream: ">"}, count=self.count,
                                block=block)  # fmt: skip
                acked, resp = await pipe.execute()
            del self._unacked[: len(ids)]  # only once sent and answered (else: sent again)
            self.counters["acked"] += int(acked)
        else:
            resp = await self.redis.xreadgroup(
                self.group, self.name, {self.stream: ">"}, count=self.count, block=block
            )
        batch = [(_id(i), f) for i, f in resp[0][1]] if resp else []
        self.counters["read"] += len(batch)
        return batch

    async def flush_acks(self) -> int:
        """Send the deferred acks now (before pending entries are read again)."""
        if not self._unacked:
            return 0
        ids = list(self._unacked)
        done = await self.ack(ids)
        del self._unacked[: len(ids)]
        return done

    async def read_pending(self, after: str = "0", count: int | None = None) -> Batch:
        """This consumer's own pending entries with ids > `after` (delivered again,
        so their delivery count goes up).  Trimmed entries come back with {}."""
        resp = await self.redis.xreadgroup(
            self.group, self.name, {self.stream: after}, count=count or self.count
        )
        batch = [(_id(i), f) for i, f in resp[0][1]] if resp else []
        self.counters["redelivered"] += len(batch)
        return batch

    async def claim(self, start: str = "0-0") -> tuple[str, Batch]:
        """One XAUTOCLAIM page of entries idle > claim_idle_ms: (next cursor, batch)."""
        resp = await self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, start, count=self.count
        )
        batch = [(_id(i), f) for i, f in resp[1] if i is not None]
        self.counters["claimed"] += len(batch)
        return _id(resp[0]), batch

    async def ack(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        done = int(await self.redis.xack(self.stream, self.group, *ids))
        self.counters["acked"] += done
        return done

    async def deliveries(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery count of each id still pending for this consumer (XPENDING, one
        exact-range query per id, pipelined).  Only used on failure and recovery."""
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.xpending_range(self.stream, self.group, i, i, 1, consumername=self.name)
            replies = await pipe.execute()
        return {
            i: int(rows[0]["times_delivered"]) for i, rows in zip(ids, replies, strict=True) if rows
        }

    async def dead_letter(self, entry: Entry, reason: str, deliveries: int) -> None:
        """Copy the entry to `<stream>:dead` with why, and ack it, atomically."""
        entry_id, fields = entry
        dead = dict(fields)
        dead.update(
            {b"dl_id": entry_id, b"dl_stream": self.stream, b"dl_group": self.group,
             b"dl_consumer": self.name, b"dl_reason": reason[:500],
             b"dl_deliveries": str(deliveries)}
        )  # fmt: skip
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, dead, maxlen=self.dead_maxlen, approximate=True)
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        self.counters["dead_lettered"] += 1
        self.counters["acked"] += 1
        log.error(
            "entry moved to dead-letter stream",
            extra={"stream": self.stream, "group": self.group, "entry_id": entry_id,
                   "reason": reason[:500], "deliveries": deliveries},
        )  # fmt: skip

    # ---- handling -----------------------------------------------------------
    async def handle(self, handler: BatchHandler, batch: Batch, *, recovered: bool) -> None:
        """Run the handler on a batch, ack what it did, dead-letter what keeps failing.

        `recovered` batches (own pending, claimed) are checked against the delivery
        limit first: an entry over it crashed its consumers without ever failing
        cleanly, and is dead-lettered instead of being handed over again."""
        gone = [i for i, f in batch if not f]
        if gone:  # trimmed away while pending: nothing left to handle
            self.counters["gone"] += len(gone)
            await self.ack(gone)
            batch = [e for e in batch if e[1]]
        if recovered and batch:
            counts = await self.deliveries([i for i, _ in batch])
            over = [e for e in batch if counts.get(e[0], 0) > self.max_deliveries]
            for entry in over:
                reason = "delivered too often without an ack (consumer crashed on it?)"
                await self.dead_letter(entry, reason, counts[entry[0]])
            batch = [e for e in batch if counts.get(e[0], 0) <= self.max_deliveries]
        if not batch:
            return
        self._errors.clear()
        self._poison.clear()
        try:
            result = await handler(batch)
        except Exception as exc:
            result = ()
            if len(batch) == 1:
                self._note_failure(batch[0][0], exc)
            else:
                self.counters["handler_errors"] += 1
                log.exception("batch handler failed", extra={"stream": self.stream})
                self._errors.update({i: repr(exc) for i, _ in batch})
        ids = [i for i, _ in batch]
        done = set(ids) if result is None else {_id(i) for i in result}
        if self.ack_with_read and not recovered:
            self._unacked.extend(i for i in ids if i in done)
        else:
            await self.ack([i for i in ids if i in done])
        await self._after_failures([e for e in batch if e[0] not in done])

    async def _after_failures(self, failed: Batch) -> None:
        if not failed:
            return
        self.counters["failed"] += len(failed)
        counts = await self.deliveries([i for i, _ in failed])
        for entry in failed:
            reason = self._errors.get(entry[0], "handler did not return this id")
            n = counts.get(entry[0], 0)
            if entry[0] in self._poison or n >= self.max_deliveries:
                await self.dead_letter(entry, reason, n)
            else:
                self._retry = True

    def _note_failure(self, entry_id: str, exc: Exception) -> None:
        self._errors[entry_id] = repr(exc)
        if isinstance(exc, self.poison_errors):
            self._poison.add(entry_id)
            self.counters["poison"] += 1
            log.warning("poison entry", extra={"entry_id": entry_id, "error": repr(exc)})
        else:
            self.counters["handler_errors"] += 1
            log.error("entry handler failed", exc_info=exc, extra={"entry_id": entry_id})

    def per_entry(self, handler: EntryHandler) -> BatchHandler:
        """Wrap an entry handler: one entry's failure leaves only that entry pending."""

        async def run_batch(batch: Batch) -> list[str]:
            done = []
            for entry_id, fields in batch:
                try:
                    await handler(entry_id, fields)
                except Exception as exc:
                    self._note_failure(entry_id, exc)
                else:
                    done.append(entry_id)
            return done

        return run_batch

    # ---- loop ---------------------------------------------------------------
    async def _recovered(self, stop: asyncio.Event, size: int) -> AsyncIterator[Batch]:
        """Own pending entries once each (id '0' onwards), then every claimable page."""
        after = "0"
        while not stop.is_set() and (batch := await self.read_pending(after, size)):
            after = batch[-1][0]
            yield batch
        cursor = "0-0"
        while not stop.is_set():
            cursor, batch = await self.claim(cursor)
            if batch:
                yield batch
            if cursor == "0-0":
                break

    async def recover(self, handler: BatchHandler, stop: asyncio.Event, size: int) -> None:
        """Handle own pending entries once each, then everything claimable."""
        await self.flush_acks()  # a handled entry must not come back as pending
        async for batch in self._recovered(stop, size):
            await self.handle(handler, batch, recovered=True)

    async def run(
        self, handler: BatchHandler | EntryHandler, stop: asyncio.Event, *, per_entry: bool = False
    ) -> None:
        """Consume until `stop` is set; the batch in hand is finished and acked first.

        `handler(batch)` returns the ids it processed (None = all of them); with
        `per_entry=True` it is `handler(entry_id, fields)` instead.  Failed entries are
        retried after `retry_delay`, doubling while they keep failing (0.5, 1, 2, 4 s
        by default before the 5th delivery dead-letters them).  Redis outages are
        logged and retried with backoff; they never end the loop."""
        work: BatchHandler = self.per_entry(handler) if per_entry else handler  # type: ignore[arg-type,assignment]
        loop = asyncio.get_running_loop()
        stop_wait = asyncio.ensure_future(stop.wait())
        backoff, retry_in, need_group, next_claim = 0.1, self.retry_delay, True, 0.0
        try:
            while not stop.is_set():
                try:
                    if need_group:
                        await self.ensure_group()
                        need_group = False
                    if self._retry:  # failed entries: again, one by one, backing off
                        self._retry = False
                        await _sleep_or_stop(stop_wait, retry_in)
                        await self.recover(work, stop, 1)
                        retry_in = min(retry_in * 2, 30.0) if self._retry else self.retry_delay
                    elif loop.time() >= next_claim:
                        next_claim = loop.time() + self.claim_idle_ms / 2000
                        await self.recover(work, stop, self.count)
                    batch = await self._read_or_stop(stop_wait)
                    if batch:
                        await self.handle(work, batch, recovered=False)
                    backoff = 0.1
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    self.counters["read_errors"] += 1
                    log.warning("redis error in consumer, retrying in %.1fs: %r", backoff, exc)
                    await _sleep_or_stop(stop_wait, backoff)
                    backoff, next_claim = min(backoff * 2, 5.0), 0.0  # then recover at once
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("consumer group %s vanished (Redis restarted?)", self.group)
                    need_group, next_claim = True, 0.0
                    self._unacked.clear()  # a new group has nothing of ours pending
        finally:
            stop_wait.cancel()
            await self._final_acks()

    async def _final_acks(self) -> None:
        """The loop ends: the handled entries' deferred acks go out (best effort: one not
        sent is redelivered after the restart, as after a crash)."""
        try:
            await self.flush_acks()
        except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
            log.warning("deferred acks not sent on stop: %r", exc)

    async def batches(self, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """Low-level loop: own pending, then claimable, then new batches until `stop`.
        The caller acks; no retries or dead letters here (`run()` does those)."""
        await self.ensure_group()
        async for batch in self._recovered(stop, self.count):
            yield batch
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while (batch := await self._read_or_stop(stop_wait)) is not None:
                if batch:
                    yield batch
        finally:
            stop_wait.cancel()

    async def _read_or_stop(self, stop_wait: asyncio.Future[Any]) -> Batch | None:
        """A blocking read that gives up as soon as stop is set.  Cancelling a read in
        flight is safe: whatever Redis already delivered stays pending for this name."""
        if stop_wait.done():
            return None
        read = asyncio.ensure_future(self.read())
        await asyncio.wait((read, stop_wait), return_when=asyncio.FIRST_COMPLETED)
        if not read.done():
            read.cancel()
        try:
            return await read
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return None

    def stats(self) -> dict[str, Any]:
        return {"stream": self.stream, "group": self.group, "consumer": self.name,
                **self.counters}  # fmt: skip


async def _sleep_or_stop(stop_wait: asyncio.Future[Any], seconds: float) -> None:
    if seconds > 0 and not stop_wait.done():
        await asyncio.wait((stop_wait,), timeout=seconds)
