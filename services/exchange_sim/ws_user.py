"""User-data WebSocket of the simulator: one account's events, bound to a listenKey.

Paths: routed `/private/ws/<listenKey>` (also `/private/ws?listenKey=<key>`), legacy
`/ws/<listenKey>`, and combined `/private/stream?streams=<listenKey>` or
`/stream?streams=<listenKey>` (wrapped as `{"stream":"<listenKey>","data":..}`).

Behaviour, as Binance USD-M futures:
- Every engine event of the account (ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, ...) goes, encoded
  once, to every socket listening on one of the account's valid keys.
- When the key expires (60 min of simulator time without keepalive, or the admin fault),
  each such socket gets `{"e":"listenKeyExpired","E":"<ms>","listenKey":..}` (the current
  USD-M docs show `E` as a string) and then no more events; the socket stays open.
- DELETE /fapi/v1/listenKey closes the key's sockets without that event.
- An unknown or expired key at connect time is refused with HTTP 400 (-1125).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .listenkeys import ListenKey, ListenKeyRegistry
from .wsconn import ConnRegistry, WsConn, combined, frame_text


def encode(payload: Mapping[str, Any]) -> bytes:
    """Engine payloads are Binance dicts; Decimals (if any) become strings, as on the wire."""
    return orjson.dumps(payload, default=str)


class UserHub:
    """Account -> listening sockets; pushes engine events and expiry notices."""

    def __init__(self, registry: ConnRegistry, keys: ListenKeyRegistry) -> None:
        self.registry = registry
        self.keys = keys
        self.by_account: dict[str, set[WsConn]] = {}
        self.counters = {"events": 0, "expired_notices": 0}

    def push(self, account_id: str, payload: bytes) -> int:
        """Queue one encoded event for the account's live sockets; returns sockets reached."""
        conns = self.by_account.get(account_id)
        if not conns:
            return 0
        raw_frame: bytes | None = None
        reached = 0
        for conn in conns:
            if conn.silent:
                continue
            if conn.combined:
                frame = frame_text(combined(conn.listen_key, payload))
            else:
                raw_frame = raw_frame or frame_text(payload)
                frame = raw_frame
            conn.pending.append(frame)
            self.registry.dirty.add(conn)
            reached += 1
        self.counters["events"] += 1
        return reached

    def push_event(self, account_id: str, payload: Mapping[str, Any]) -> int:
        return self.push(account_id, encode(payload))

    def sockets_of_key(self, key: str) -> list[WsConn]:
        return [c for c in self.registry if c.kind == "user" and c.listen_key == key]

    def expire(self, lk: ListenKey, now_ms: int) -> int:
        """Send listenKeyExpired once to every socket on the key, then silence them."""
        body = orjson.dumps({"e": "listenKeyExpired", "E": str(now_ms), "listenKey": lk.key})
        n = 0
        for conn in self.sockets_of_key(lk.key):
            if conn.silent:
                continue
            data = combined(lk.key, body) if conn.combined else body
            conn.pending.append(frame_text(data))
            self.registry.dirty.add(conn)
            conn.silent = True
            n += 1
        self.counters["expired_notices"] += n
        return n

    def close_key(self, key: str) -> None:
        """DELETE listenKey: its sockets are closed normally (no expiry event)."""
        for conn in self.sockets_of_key(key):
            conn.silent = True
            self.registry.close_later(conn, 1000, b"listenKey closed")

    def send_to(self, conn: WsConn, payload: bytes) -> None:
        """Queue a payload for one socket in its framing (fault injection)."""
        data = combined(conn.listen_key, payload) if conn.combined else payload
        conn.pending.append(frame_text(data))
        self.registry.dirty.add(conn)

    async def serve(
        self, request: web.Request, route: str, is_combined: bool, key: str, now_ms: int
    ) -> web.StreamResponse:
        """Accept and run one user-data socket until it closes."""
        lk = self.keys.active(key, now_ms)
        if lk is None:
            return web.json_response(
                {"code": -1125, "msg": "This listenKey does not exist."}, status=400
            )
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        conn = WsConn(
            self.registry.new_id(), "user", route, request.path, ws,
            request.transport, is_combined, now_ms,
        )  # fmt: skip
        conn.listen_key = lk.key
        conn.account_id = lk.account_id
        conn.streams[lk.key] = None
        self.by_account.setdefault(lk.account_id, set()).add(conn)
        self.registry.add(conn)
        try:
            await self.registry.read_loop(conn, self._ignore_text)
        finally:
            group = self.by_account.get(lk.account_id)
            if group is not None:
                group.discard(conn)
                if not group:
                    del self.by_account[lk.account_id]
            self.registry.remove(conn)
        return ws

    @staticmethod
    async def _ignore_text(text: str) -> None:
        """User streams take no commands; messages still count toward the rate limit."""
        del text
