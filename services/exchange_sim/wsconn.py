"""WebSocket connections of the simulator and the fast path that writes to them.

WHY a custom write path: the simulator must push >= 50k messages/s from one process. The
costly parts of a naive server are per-message JSON encoding, per-message framing and one
`transport.write` per message per subscriber. Here every message is encoded once, framed
once (`frame_text`: an unmasked RFC 6455 text frame, the bytes a server sends), the same
frame object is queued on every subscriber, and each connection gets ONE `transport.write`
per driver tick with all its frames joined. aiohttp still owns the handshake, the reader,
pings/pongs and close frames; frames never interleave because the event loop is single
threaded and each write carries whole frames. Per-message deflate is never negotiated.

Slow consumers (`slow_consumer`): "drop" (default, Binance's behaviour) aborts a socket
whose unsent buffer passes `max_buffer` (16 MB: about 50k kline messages); "wait" holds
the simulation instead — the clock is paused while any socket holds more than a quarter
of `max_buffer`, and resumed when it drains below 1/32 — so a slow test consumer sees
every message and simulated time simply runs slower; a socket that does not drain within
`slow_timeout_s` is aborted anyway. Either way a slow client never grows the simulator's
memory without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import WSMsgType, web

MAX_BUFFER = 16 * 1024 * 1024
# payload length -> text frame header; kline messages come in a few dozen lengths, so the
# hot path (`MarketHub.publish_encoded`) looks the header up instead of building it
HEADERS: dict[int, bytes] = {}


def frame_text(payload: bytes) -> bytes:
    """One FIN text frame, server->client (no mask)."""
    return frame_header(len(payload)) + payload


def frame_header(n: int) -> bytes:
    """The header of a FIN text frame carrying `n` payload bytes (remembered in HEADERS)."""
    header = HEADERS.get(n)
    if header is None:
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + n.to_bytes(8, "big")
        if len(HEADERS) < 4096:
            HEADERS[n] = header
    return header


def combined(stream: str, payload: bytes) -> bytes:
    """Binance's combined-stream wrapper `{"stream":..,"data":..}` around raw JSON bytes."""
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"


class WsConn:
    """One accepted socket: its kind, route, subscriptions and pending frames."""

    __slots__ = (
        "id", "kind", "route", "path", "ws", "transport", "combined", "opened_ms",
        "streams", "pending", "stalled_until", "sent", "dropped", "last_pong",
        "incoming", "silent", "listen_key", "account_id", "kline_silent", "closing",
    )  # fmt: skip

    def __init__(
        self,
        conn_id: int,
        kind: str,
        route: str,
        path: str,
        ws: web.WebSocketResponse,
        transport: Any,
        is_combined: bool,
        opened_ms: int,
    ) -> None:
        self.id = conn_id
        self.kind = kind  # "market" | "user"
        self.route = route  # "market" | "public" | "private" | "legacy"
        self.path = path
        self.ws = ws
        self.transport = transport
        self.combined = is_combined
        self.opened_ms = opened_ms  # simulator time, for the 24 h cut
        self.streams: dict[str, None] = {}  # ordered set, as LIST_SUBSCRIPTIONS shows
        self.pending: list[bytes] = []
        self.stalled_until = 0.0  # time.monotonic(); frames due while stalled are lost
        self.sent = 0
        self.dropped = 0
        self.last_pong = time.monotonic()
        self.incoming: deque[float] = deque()
        self.silent = False  # user stream after listenKeyExpired
        self.listen_key = ""
        self.account_id = ""
        self.kline_silent = False  # legacy route that carries no klines
        self.closing = False

    @property
    def alive(self) -> bool:
        return not self.closing and not self.ws.closed and not self.transport.is_closing()

    def flush(self, now_mono: float) -> int:
        """Write all pending frames in one syscall-sized chunk; returns frames written."""
        frames = self.pending
        if not frames:
            return 0
        self.pending = []
        if self.stalled_until > now_mono or not self.alive:
            self.dropped += len(frames)
            return 0
        self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self.sent += len(frames)
        return len(frames)

    def buffered(self) -> int:
        try:
            return int(self.transport.get_write_buffer_size())
        except (AttributeError, RuntimeError):
            return 0

    def abort(self) -> None:
        """Cut the TCP connection without a close frame (what a network fault looks like)."""
        self.closing = True
        self.pending = []
        self.transport.abort()

    def info(self, now_mono: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "route": self.route,
            "path": self.path,
            "combined": self.combined,
            "streams": len(self.streams),
            "sent": self.sent,
            "dropped": self.dropped,
            "stalled": self.stalled_until > now_mono,
            "silent": self.silent,
            "openedMs": self.opened_ms,
        }


class ConnRegistry:
    """Every open socket of both kinds: flushing, draining, pings, drops and the 24 h cut."""

    def __init__(
        self,
        ping_interval_s: float = 180.0,
        pong_timeout_s: float = 600.0,
        slow_timeout_s: float = 5.0,
        max_incoming_per_s: int = 10,
        slow_consumer: str = "drop",
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        if slow_consumer not in ("drop", "wait"):
            raise ValueError("slow_consumer must be drop or wait")
        self._ids = itertools.count(1)
        self.conns: dict[int, WsConn] = {}
        self.dirty: set[WsConn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.slow_timeout_s = slow_timeout_s
        self.max_incoming_per_s = max_incoming_per_s
        self.slow_consumer = slow_consumer
        self.high_water = max_buffer if slow_consumer == "drop" else max_buffer // 4
        self.low_water = max_buffer // 32
        self._congested: list[WsConn] = []
        self.counters = {
            "opened": 0, "closed": 0, "frames_sent": 0, "pings_sent": 0, "pong_timeouts": 0,
            "slow_consumer_drops": 0, "cut_24h": 0, "rate_limit_disconnects": 0,
            "backpressure_holds": 0,
        }  # fmt: skip

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, conn: WsConn) -> None:
        self.conns[conn.id] = conn
        self.counters["opened"] += 1

    def remove(self, conn: WsConn) -> None:
        if self.conns.pop(conn.id, None) is not None:
            self.counters["closed"] += 1
        self.dirty.discard(conn)

    def __iter__(self) -> Iterator[WsConn]:
        return iter(list(self.conns.values()))

    def select(self, kind: str = "all", stream: str | None = None) -> list[WsConn]:
        out = []
        for c in self.conns.values():
            if kind != "all" and c.kind != kind:
                continue
            if stream is not None and stream not in c.streams and stream != c.listen_key:
                continue
            out.append(c)
        return out

    def flush_all(self) -> int:
        """One write per connection that has frames queued."""
        if not self.dirty:
            return 0
        now = time.monotonic()
        total = 0
        high = self.high_water
        for conn in self.dirty:
            total += conn.flush(now)
            if conn.buffered() > high:
                self._congested.append(conn)
        self.dirty.clear()
        self.counters["frames_sent"] += total
        return total

    async def relieve(self, clock: Any, may_resume: Callable[[], bool]) -> None:
        """Deal with sockets left above the high-water mark by the last flush."""
        slow = [c for c in self._congested if c.alive]
        self._congested = []
        if not slow:
            return
        if self.slow_consumer == "drop":
            self._drop_slow(slow)
            return
        held = not clock.paused
        if held:
            clock.pause()
            self.counters["backpressure_holds"] += 1
        try:
            deadline = time.monotonic() + self.slow_timeout_s
            while slow and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
                slow = [c for c in slow if c.alive and c.buffered() > self.low_water]
        finally:
            if held and may_resume():
                clock.resume()
        self._drop_slow(slow)

    def _drop_slow(self, conns: list[WsConn]) -> None:
        for conn in conns:
            self.counters["slow_consumer_drops"] += 1
            conn.abort()

    def cut_older_than(self, now_ms: int, max_age_ms: int) -> int:
        """Binance closes every connection at the 24 h mark (simulator time here)."""
        old = [c for c in self.conns.values() if now_ms - c.opened_ms >= max_age_ms]
        for conn in old:
            self.counters["cut_24h"] += 1
            self.close_later(conn, 1000, b"24h")
        return len(old)

    def close_later(self, conn: WsConn, code: int, message: bytes) -> None:
        """Send a close frame from a tracked task (callers are synchronous driver code)."""
        if conn.closing:
            return
        conn.closing = True
        conn.pending = []
        task = asyncio.get_running_loop().create_task(
            self._close(conn, code, message), name=f"ws-close-{conn.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close(conn: WsConn, code: int, message: bytes) -> None:
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=message), timeout=2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            conn.transport.abort()

    async def aclose(self) -> None:
        """Abort every socket and cancel pending close tasks (server shutdown)."""
        for conn in self:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ping_loop(self) -> None:
        """Ping every socket every `ping_interval_s`; drop one silent past the pong timeout."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            now = time.monotonic()
            for conn in self:
                if not conn.alive:
                    continue
                if now - conn.last_pong > self.pong_timeout_s:
                    self.counters["pong_timeouts"] += 1
                    conn.abort()
                    continue
                try:
                    await conn.ws.ping(b"")
                    self.counters["pings_sent"] += 1
                except (ConnectionError, RuntimeError):
                    conn.abort()

    def admit(self, conn: WsConn) -> bool:
        """Binance: more than 10 incoming messages in one second disconnects the socket."""
        now = time.monotonic()
        q = conn.incoming
        q.append(now)
        while q and now - q[0] > 1.0:
            q.popleft()
        if len(q) > self.max_incoming_per_s:
            self.counters["rate_limit_disconnects"] += 1
            return False
        return True

    async def read_loop(self, conn: WsConn, on_text: Callable[[str], Awaitable[None]]) -> None:
        """Read client frames: count them, answer pings, note pongs, pass text on."""
        async for msg in conn.ws:
            if not self.admit(conn):
                conn.closing = True
                await conn.ws.close(code=1008, message=b"Too many messages")
                return
            if msg.type == WSMsgType.TEXT:
                await on_text(msg.data)
            elif msg.type == WSMsgType.PING:
                await conn.ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                conn.last_pong = time.monotonic()

    def state(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [c.info(now) for c in self.conns.values()]
