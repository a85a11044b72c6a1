"""One ordered, pipelined Redis connection for the feed's live klines: chunks go out as
soon as they are ready and nobody waits for a reply before sending the next one.

WHY: a minute's 200 closes arrive together.  Waiting for the whole burst and then for
each reply serialises socket parsing, encoding and the script's run.  Here the first
chunk is running in Redis (on the other core) while the feed still parses the rest, and
the replies are read by a task of their own, off the path of the next send: chunks are
written by the socket reader itself (`send_now`, no loop turn), so the replies are
settled after the burst, not between its chunks.  The connection is the lane's own,
without redis-py's socket timeout (with one, each write is an `asyncio.wait_for`: a task
and three loop turns); replies are read under READ_TIMEOUT_S.

Two kinds of chunk share the lane: the publish script's (`send_now` / `send`: stream
entries and the guard) and, once a burst is in, the cache script's (`send_cache_now` /
`send_cache`: the `kline:<SYMBOL>` hashes, off the path of the stream).

Order: Redis runs one connection's commands in the order sent, so per-symbol order holds
as long as every live kline goes through this one lane.  A reply only settles state
(`on_done(klines, results or None)` for a publish chunk, `on_cache(klines, ok)` for a
cache chunk): None means "outcome unknown" (the connection broke, NOSCRIPT, any error
reply); the caller re-reads Redis.  Later chunks may still have run,
which is why the caller passes per kline the open time Redis must hold before it
(`expect`): a kline whose predecessor did not make it is refused by the script, never
published over a hole.

After a broken connection the lane sends nothing until every chunk sent on it has been
settled (as unknown), then reconnects on the next send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from shared.kline_encoding import AnyKline
from shared.kline_publisher import KlinePublisher, PublishResult, parse_results
from shared.resp import resp_command

log = logging.getLogger(__name__)

Done = Callable[[list[AnyKline], list[PublishResult] | None], None]
CacheDone = Callable[[list[AnyKline], bool], None]
PUBLISH, CACHE = 0, 1  # the kind of a chunk in the lane
LANE_ERRORS = (RedisError, OSError, TimeoutError)
READ_TIMEOUT_S = 5.0  # a reply later than this: the connection is dropped (outcome unknown)


class PublishLane:
    """See module doc.  `run()` is the reply reader (a long-lived task)."""

    def __init__(
        self, publisher: KlinePublisher, on_done: Done, on_cache: CacheDone | None = None
    ) -> None:
        self.publisher = publisher
        self._on_done = on_done
        self._on_cache = on_cache or (lambda klines, ok: None)
        self._conn: Any = None
        self._fifo: deque[tuple[int, list[AnyKline]]] = deque()
        self.inflight = 0  # klines of publish chunks sent and not settled
        self._more = asyncio.Event()
        self._usable = asyncio.Event()  # cleared from a failure until the fifo is settled
        self._usable.set()
        self.errors = 0
        self._closed = False
        self._writing = False  # an async `send` is under way (order: no `send_now` now)

    def send_now(self, klines: list[AnyKline], expects: Sequence[int]) -> bool:
        """Write one chunk without yielding (from the socket reader, in the middle of a
        burst); False when that cannot be done now (not connected, broken, script not
        loaded, an async `send` under way): use `send` then.

        Without a yield the socket reader goes on with the burst at once, and the lane's
        replies are settled after it, not between its chunks.  The write goes to the
        connection's asyncio StreamWriter (redis-py's `_writer`; absent in some future
        version, this returns False and `send` does the work)."""
        writer = self._writer_now()
        if writer is None:
            return False
        writer.write(resp_command(self.publisher.eval_args(klines, expects)))
        self._sent(PUBLISH, klines)
        return True

    def send_cache_now(self, chunks: list[list[AnyKline]]) -> bool:
        """`send_now` for chunks of cache writes, in one write (they go out together,
        after a burst: one syscall, not one per chunk)."""
        writer = self._writer_now()
        if writer is None:
            return False
        cache_args = self.publisher.cache_args
        writer.write(b"".join([resp_command(cache_args(c)) for c in chunks]))
        for c in chunks:
            self._sent(CACHE, c)
        return True

    def _writer_now(self) -> Any:
        conn = self._conn
        writer = getattr(conn, "_writer", None)
        if (writer is None or self._writing or not self._usable.is_set()
                or not self.publisher.script_loaded or writer.transport.is_closing()):  # fmt: skip
            return None
        return writer

    async def send(self, klines: list[AnyKline], expects: Sequence[int]) -> None:
        """Write one chunk (ordered after every earlier one); returns without its reply.
        A failure settles the chunk as unknown."""
        await self._send(PUBLISH, klines, expects)

    async def send_cache(self, klines: list[AnyKline]) -> None:
        """`send` for a chunk of cache writes."""
        await self._send(CACHE, klines, ())

    async def _send(self, kind: int, klines: list[AnyKline], expects: Sequence[int]) -> None:
        await self._usable.wait()
        self._writing = True
        try:
            await self.publisher.load_script()
            conn = self._conn or await self._connect()
            args = (self.publisher.eval_args(klines, expects) if kind == PUBLISH
                    else self.publisher.cache_args(klines))  # fmt: skip
            await conn.send_packed_command(resp_command(args), check_health=False)
        except LANE_ERRORS as exc:
            self._fail(exc)
            self._done(kind, klines, None)
            return
        finally:
            self._writing = False
        if conn is not self._conn:  # the lane broke while this write waited: unknown
            self._done(kind, klines, None)
            return
        self._sent(kind, klines)

    def _sent(self, kind: int, klines: list[AnyKline]) -> None:
        self._fifo.append((kind, klines))
        if kind == PUBLISH:
            self.inflight += len(klines)
        self._more.set()

    def _done(self, kind: int, klines: list[AnyKline], raw: Any) -> None:
        if kind == CACHE:
            self._on_cache(klines, raw is not None)
        else:
            self._on_done(klines, None if raw is None else parse_results(raw))

    async def run(self) -> None:
        """Read replies in order, settle each chunk; returns after `close()` once every
        chunk is settled."""
        while True:
            if not self._fifo:
                if not self._usable.is_set():
                    await self._reset()
                if self._closed:
                    await self._reset()
                    return
                self._more.clear()
                await self._more.wait()
                continue
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    raw = await self._conn.read_response()
            except NoScriptError:
                self.publisher.forget_script()
                self._settle(None)
            except ResponseError as exc:  # an error reply: the connection is fine
                self._log(exc)
                self._settle(None)
            except LANE_ERRORS as exc:
                self._fail(exc)
                while self._fifo:
                    self._settle(None)
            else:
                self._settle(raw)

    def close(self) -> None:
        """`run` returns once the chunks sent so far are settled (send no more)."""
        self._closed = True
        self._more.set()

    # ---- internals -------------------------------------------------------------------
    def _settle(self, raw: Any) -> None:
        """The oldest chunk's reply (None: unknown)."""
        kind, klines = self._fifo.popleft()
        if kind == PUBLISH:
            self.inflight -= len(klines)
        self._done(kind, klines, raw)

    def _fail(self, exc: BaseException) -> None:
        """Stop sending until the chunks on this connection are settled (see `run`)."""
        self._log(exc)
        self._usable.clear()
        if not self._fifo:
            self._more.set()  # `run` resets the connection

    async def _connect(self) -> Any:
        """The lane's own connection, made like the client's but without redis-py's
        socket timeout: with one, every send runs in `asyncio.wait_for` (a task and
        three loop turns, during which the socket reader takes more closes).  Replies
        are read under READ_TIMEOUT_S instead."""
        pool = self.publisher.redis.connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        await conn.connect()
        self._conn = conn
        return conn

    async def _reset(self) -> None:
        """Drop the connection; the next send makes a fresh one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*LANE_ERRORS):
                await conn.disconnect()
        self._usable.set()

    def _log(self, exc: BaseException) -> None:
        self.errors += 1
        log.warning("publish lane error; symbols go to backfill", extra={"error": repr(exc)})
