"""One WebSocket connection per group of streams, kept alive whatever the socket does.

`FeedConnection.run()` loops forever (until cancelled):
  connect (routed combined-stream URL) -> read -> on close / error / stall -> wait a
  jittered backoff starting at `websocket.reconnect_delay` -> connect again.
- Client: aiohttp's (already a dependency): its frame reader is compiled, so a message
  costs ~1.3 us of CPU where `websockets` took ~4.3 us (measured on bursts of 200
  frames), and a minute's burst is 200 closes plus as many open-candle updates.
- Pings: the server pings, aiohttp answers with pongs inside `receive()` (we always
  read); we send no pings of our own (Binance counts every client frame against 10 per
  second).
- Stall: no message for `stall_timeout` seconds -> the connection is aborted and
  reopened (a socket can stay "open" while nothing arrives).
- Rotation: Binance cuts every connection at 24 h.  Before `max_connection_age` (on the
  exchange's clock, which is what the cut follows) a NEW connection is opened first and
  the old one is closed only once the new one delivers, so there is no gap; during the
  overlap both deliver the same klines and the exactly-once script drops the second copy.
Missed klines are not this module's business: the feed's gap rule backfills them.

The per-message path is `receive()` (bytes, no text decoding) + the handler call; the
handler returns an awaitable only when it wants the reader to wait (back-pressure or a
turn for the flusher), so nothing here queues without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse, ClientWSTimeout, WSMsgType

__all__ = ["FeedConnection", "Session", "backoff_delay"]

log = logging.getLogger(__name__)

Handler = Callable[[bytes, "FeedConnection"], Awaitable[None] | None]

YIELD_EVERY = 256  # messages handled before the reader lets other tasks run
MAX_MESSAGE = 1 << 20
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
OPEN_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class SocketClosed(ConnectionError):
    """The server closed the socket (or it failed): the reader's end."""


def backoff_delay(attempt: int, base: float, cap: float, draw: float) -> float:
    """Seconds before reconnect number `attempt` (0 = first): `base` doubled per failed
    attempt, capped at `cap`, then stretched by up to 25 % with `draw` in [0, 1) so
    replicas dropped together do not come back together."""
    if attempt == 0:
        delay = base
    else:
        delay = min(cap, max(base, 0.1) * 2.0 ** min(attempt, 30))
    return delay * (1.0 + 0.25 * min(max(draw, 0.0), 1.0))


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Session:
    """One opened socket."""

    __slots__ = ("ws", "http", "opened_wall", "opened_mono", "opened_exchange_ms", "last_msg",
                 "messages", "seen", "first", "why", "rotate_not_before")  # fmt: skip

    def __init__(
        self, ws: ClientWebSocketResponse[Any], http: aiohttp.ClientSession,
        opened_exchange_ms: int | None,
    ) -> None:  # fmt: skip
        self.ws = ws
        self.http = http  # owns the socket: closing it drops the connection at once
        self.opened_wall = time.time()
        self.opened_mono = self.last_msg = time.monotonic()
        self.opened_exchange_ms = opened_exchange_ms
        self.messages = 0
        self.seen = 0  # `messages` when `last_msg` was last moved
        self.rotate_not_before = 0.0  # monotonic: after a failed rotation, wait
        self.first = asyncio.Event()  # set at the first message (rotation waits for it)
        self.why = ""

    def progress(self, mono: float) -> None:
        """Move `last_msg` to `mono` if messages arrived since the previous call."""
        if self.messages != self.seen:
            self.seen = self.messages
            self.last_msg = mono


class FeedConnection:
    """Keeps `streams` subscribed on one connection at a time (see module doc)."""

    def __init__(
        self,
        conn_id: str,
        url: str,
        streams: list[str],
        on_message: Handler,
        *,
        reconnect_delay: float,
        max_delay: float,
        stall_timeout: float,
        max_age_ms: float,
        exchange_now: Callable[[], int | None],
        on_open: Callable[[FeedConnection], None] | None = None,
        open_timeout: float = 10.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.id = conn_id
        self.url = url
        self.streams = streams
        self._on_message = on_message
        self._on_open = on_open
        self.reconnect_delay = reconnect_delay
        self.max_delay = max_delay
        self.stall_timeout = stall_timeout
        self.max_age_ms = max_age_ms
        self._exchange_now = exchange_now
        self._open_timeout = open_timeout
        self._rand = rand
        self.session: Session | None = None
        self._live: set[Session] = set()
        self._done_messages = 0
        self.counters = dict.fromkeys(
            ("connects", "reconnects", "connect_failures", "stalls", "rotations", "closed"), 0
        )
        self.last_error = ""

    # ---- state --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.session is not None

    @property
    def messages(self) -> int:
        """Messages received over every session of this connection."""
        live = sum(s.messages for s in self._live)
        return self._done_messages + live

    def silent_for(self, mono: float) -> float:
        """Seconds since a message last arrived (or since the connection opened), to the
        resolution of the stall check."""
        s = self.session
        if s is None:
            return float("inf")
        s.progress(mono)
        return mono - s.last_msg

    def state(self) -> dict[str, Any]:
        s = self.session
        return {
            "streams": len(self.streams),
            "connected": s is not None,
            "since": _iso(s.opened_wall) if s else "",
            "messages": self.messages,
            "session_messages": s.messages if s else 0,
            **self.counters,
            "last_error": self.last_error,
        }

    # ---- the loop -----------------------------------------------------------------
    async def run(self) -> None:
        attempt = 0
        ever = False
        while True:
            session = await self._open()
            if session is None:
                await asyncio.sleep(self._delay(attempt))
                attempt += 1
                continue
            if ever:
                self.counters["reconnects"] += 1
            ever = True
            await self._serve(session)
            if session.messages:
                attempt = 0  # it worked for a while: start the backoff over
            await asyncio.sleep(self._delay(attempt))
            attempt += 1

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.reconnect_delay, self.max_delay, self._rand())

    async def _open(self) -> Session | None:
        http = aiohttp.ClientSession(trust_env=False)
        try:
            ws = await asyncio.wait_for(http.ws_connect(
                self.url, compress=0, autoping=True, heartbeat=None, max_msg_size=MAX_MESSAGE,
                decode_text=False, timeout=ClientWSTimeout(ws_receive=None, ws_close=1.0),
            ), self._open_timeout)  # fmt: skip
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await http.close()
            if not isinstance(exc, OPEN_ERRORS):
                raise
            self.counters["connect_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("connect failed", extra={"conn": self.id, "error": self.last_error})
            return None
        self.counters["connects"] += 1
        session = Session(ws, http, self._exchange_now())
        self._live.add(session)
        log.info("connected", extra={"conn": self.id, "streams": len(self.streams)})
        return session

    async def _serve(self, session: Session) -> None:
        """Read `session` until it dies; rotate it when it is old.  Returns when the
        current session (the rotated one, maybe) has ended."""
        self.session = session
        if self._on_open is not None:
            self._on_open(self)
        reader = asyncio.ensure_future(self._read(session))
        try:
            while True:
                tick = max(0.005, min(self.stall_timeout / 4, 1.0))
                await asyncio.wait((reader,), timeout=tick)
                if reader.done():
                    self._ended(session, reader)
                    return
                mono = time.monotonic()
                session.progress(mono)
                if mono - session.last_msg > self.stall_timeout:
                    self.counters["stalls"] += 1
                    session.why = "stall"
                    log.warning("stalled, reconnecting", extra={"conn": self.id})
                    await _drop(session)
                    await asyncio.wait((reader,), timeout=2)
                    self._ended(session, reader)
                    return
                if mono >= session.rotate_not_before and self._too_old(session):
                    rotated = await self._rotate(session, reader)
                    if rotated is not None:
                        session, reader = rotated
        finally:
            self.session = None
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            await self._close(session)

    def _ended(self, session: Session, reader: asyncio.Future[Any]) -> None:
        self.counters["closed"] += 1
        exc = None if reader.cancelled() else reader.exception()
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        log.warning(
            "connection ended",
            extra={"conn": self.id, "why": session.why or self.last_error,
                   "messages": session.messages},
        )  # fmt: skip

    def _too_old(self, session: Session) -> bool:
        now = self._exchange_now()
        if now is not None and session.opened_exchange_ms is not None:
            age_ms = now - session.opened_exchange_ms
        else:
            age_ms = (time.monotonic() - session.opened_mono) * 1000.0
        return age_ms >= self.max_age_ms

    async def _rotate(
        self, old: Session, old_reader: asyncio.Future[Any]
    ) -> tuple[Session, asyncio.Future[Any]] | None:
        """Open a new connection, wait until it delivers, then close the old one."""
        retry_at = time.monotonic() + max(1.0, self.reconnect_delay)
        new = await self._open()
        if new is None:
            old.rotate_not_before = retry_at  # keep the old one; try again shortly
            return None
        new_reader = asyncio.ensure_future(self._read(new))
        first = asyncio.ensure_future(new.first.wait())
        await asyncio.wait((first, new_reader), timeout=self.stall_timeout,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        first.cancel()
        if not new.first.is_set():
            new_reader.cancel()
            with contextlib.suppress(BaseException):
                await new_reader
            await self._close(new)
            old.rotate_not_before = retry_at
            return None
        self.session = new
        self.counters["rotations"] += 1
        old.why = "rotated"
        old_reader.cancel()
        with contextlib.suppress(BaseException):
            await old_reader
        await self._close(old)
        log.info("rotated", extra={"conn": self.id, "old_messages": old.messages})
        return new, new_reader

    async def _read(self, session: Session) -> None:
        """The per-message loop: receive, count, hand over.  Stall detection watches the
        count from `_serve` instead of reading a clock here.  Ends (raises SocketClosed)
        when the socket closes; pings are answered inside `receive()`."""
        receive, on, pause = session.ws.receive, self._on_message, asyncio.sleep
        msg = await receive()
        if msg.type in _DATA:
            session.first.set()
        n = 0
        while msg.type in _DATA:
            session.messages += 1
            wait = on(msg.data, self)
            if wait is not None:
                await wait
            n += 1
            if n >= YIELD_EVERY:
                # receive() does not yield while frames are buffered: give the flusher,
                # the lane's replies and the watchdog their turn
                n = 0
                await pause(0)
            msg = await receive()
        if msg.type is WSMsgType.ERROR:
            raise SocketClosed(f"socket error: {msg.data!r}")
        raise SocketClosed(f"closed by the server (code {session.ws.close_code})")

    async def _close(self, session: Session) -> None:
        if session in self._live:
            self._live.discard(session)
            self._done_messages += session.messages
        await _drop(session)


async def _drop(session: Session) -> None:
    """Close the socket now, without a closing handshake: a stalled peer would not
    answer one, and aiohttp's `close()` reads until the peer's close frame, which a
    stream that keeps sending can postpone forever (its reads never wait, so no timeout
    fires).  Binance needs no goodbye."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.http.close(), timeout=1.5)
