"""Market-data WebSocket of the simulator: routes, live (un)subscription, limits, fan-out.

Paths (base `ws://127.0.0.1:<port>`), as fstream.binance.com serves them since 2026:
- routed `/market/ws/<s1>/<s2>` (raw payloads) and `/market/stream?streams=<s1>/<s2>`
  (combined `{"stream":..,"data":..}`); `/public/...` likewise, but it carries only the
  high-frequency "public" streams (depth, bookTicker: not produced here), so klines and
  mark prices are accepted there and never pushed — as on Binance.
- legacy unrouted `/ws/...` and `/stream?streams=...` carry market data, EXCEPT (our
  issue, Binance change of 2026-04-23) the unrouted `/stream` carries no klines and
  answers a SUBSCRIBE that names a kline stream with silence: `legacy_kline_silence`
  (default on). `legacy_ws_kline_silence` (default off) extends that to unrouted `/ws`,
  which is what Binance documents for every unrouted market stream.

Produced streams: `<symbol>@kline_1m`, `<symbol>@markPrice@1s`, `<symbol>@markPrice` (3 s).
Other well-formed stream names are accepted and stay silent.

Control messages: SUBSCRIBE / UNSUBSCRIBE -> `{"result":null,"id":..}`, LIST_SUBSCRIPTIONS
-> `{"result":[..],"id":..}`, SET_PROPERTY / GET_PROPERTY `combined`. Errors use Binance's
`{"error":{"code":..,"msg":..},"id":..}`. Limits: `max_streams` (1024) per connection ->
error reply (or HTTP 400 at the handshake); more than 10 incoming frames in one second
(text, ping or pong; `ConnRegistry.admit`) -> the connection is closed with code 1008.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from .wsconn import HEADERS, ConnRegistry, WsConn, combined, frame_header, frame_text

RAW, COMBINED = 1, 2  # bits of `MarketHub.forms`
_NOBODY: frozenset[WsConn] = frozenset()
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
PUBLIC_MARKERS = ("@depth", "@bookTicker")


def canonical(stream: str) -> str:
    """Binance stream names: lowercase symbol, event part as documented (`markPrice`)."""
    sym, sep, rest = stream.partition("@")
    return sym.lower() + sep + rest if sep else stream


def is_kline(stream: str) -> bool:
    return "@kline_" in stream


def category(stream: str) -> str:
    return "public" if any(m in stream for m in PUBLIC_MARKERS) else "market"


def valid_stream(stream: str) -> bool:
    sym, sep, rest = stream.partition("@")
    return bool(sep and rest and (sym.isalnum() or sym.startswith("!")))


def _err(code: int, msg: str, req_id: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": req_id})


class TooManyStreams(Exception):
    """A connection asked for more than `max_streams` subscriptions."""


class MarketHub:
    """Stream -> subscribers, and publishing one encoded payload to all of them."""

    def __init__(
        self,
        registry: ConnRegistry,
        max_streams: int = 1024,
        legacy_kline_silence: bool = True,
        legacy_ws_kline_silence: bool = False,
    ) -> None:
        self.registry = registry
        self.max_streams = max_streams
        self.legacy_kline_silence = legacy_kline_silence
        self.legacy_ws_kline_silence = legacy_ws_kline_silence
        self.raw_subs: dict[str, set[WsConn]] = {}
        self.comb_subs: dict[str, set[WsConn]] = {}
        self.active: set[str] = set()  # streams with at least one deliverable subscriber
        # stream -> RAW | COMBINED: which encodings its subscribers need (no key: none)
        self.forms: dict[str, int] = {}
        self.version = 0  # bumped by every (un)subscription: lets callers cache lookups
        self.stalled_streams: dict[str, float] = {}  # stream -> monotonic deadline
        self.counters = {"published": 0, "control_msgs": 0, "control_errors": 0}

    # ---- subscriptions -------------------------------------------------------------
    def deliverable(self, conn: WsConn, stream: str) -> bool:
        if conn.route == "public":
            return category(stream) == "public"
        if conn.route == "market":
            return category(stream) == "market"
        return not (conn.kline_silent and is_kline(stream))

    def subscribe(self, conn: WsConn, streams: list[str]) -> None:
        new = [s for s in streams if s not in conn.streams]
        if len(conn.streams) + len(new) > self.max_streams:
            raise TooManyStreams
        self.version += 1
        for s in new:
            conn.streams[s] = None
            if self.deliverable(conn, s):
                subs = self.comb_subs if conn.combined else self.raw_subs
                subs.setdefault(s, set()).add(conn)
                self.active.add(s)
                self.forms[s] = self.forms.get(s, 0) | (COMBINED if conn.combined else RAW)

    def unsubscribe(self, conn: WsConn, streams: list[str]) -> None:
        self.version += 1
        for s in streams:
            conn.streams.pop(s, None)
            for subs in (self.raw_subs, self.comb_subs):
                group = subs.get(s)
                if group is not None:
                    group.discard(conn)
                    if not group:
                        del subs[s]
            forms = (RAW if s in self.raw_subs else 0) | (COMBINED if s in self.comb_subs else 0)
            if forms:
                self.forms[s] = forms
            else:
                self.active.discard(s)
                self.forms.pop(s, None)

    def set_combined(self, conn: WsConn, flag: bool) -> None:
        streams = list(conn.streams)
        self.unsubscribe(conn, streams)
        conn.combined = flag
        self.subscribe(conn, streams)

    def drop(self, conn: WsConn) -> None:
        self.unsubscribe(conn, list(conn.streams))

    # ---- publishing ----------------------------------------------------------------
    def wants(self, stream: str) -> bool:
        return stream in self.active

    def publish(self, stream: str, payload: bytes) -> None:
        """Queue one event (raw JSON bytes) for every subscriber of `stream`."""
        if self.stalled_streams and self._stalled(stream):
            return
        dirty = self.registry.dirty
        raw = self.raw_subs.get(stream)
        if raw:
            frame = frame_text(payload)
            for conn in raw:
                conn.pending.append(frame)
            dirty.update(raw)
        comb = self.comb_subs.get(stream)
        if comb:
            frame = frame_text(combined(stream, payload))
            for conn in comb:
                conn.pending.append(frame)
            dirty.update(comb)
        self.counters["published"] += 1

    def publish_encoded(self, events: list[tuple[str, bytes | None, bytes | None]]) -> None:
        """`publish` for events whose caller encoded the forms `forms[stream]` asks for.

        Each event is (stream, raw, wrapped): `raw` the event JSON (for RAW subscribers),
        `wrapped` the same event already inside `{"stream":..,"data":..}` (for COMBINED
        ones), None for a form nobody needs. WHY: the kline encoder builds the combined
        message in the same `%` as the event, and a batch costs one call per driver step."""
        if self.stalled_streams:
            events = [ev for ev in events if not self._stalled(ev[0])]
        dirty, raw_subs, comb_subs = self.registry.dirty, self.raw_subs, self.comb_subs
        header = HEADERS.get
        for stream, raw, wrapped in events:
            if raw is not None:
                frame = (header(len(raw)) or frame_header(len(raw))) + raw
                subs = raw_subs.get(stream, _NOBODY)
                for conn in subs:
                    conn.pending.append(frame)
                dirty.update(subs)
            if wrapped is not None:
                frame = (header(len(wrapped)) or frame_header(len(wrapped))) + wrapped
                subs = comb_subs.get(stream, _NOBODY)
                for conn in subs:
                    conn.pending.append(frame)
                dirty.update(subs)
        self.counters["published"] += len(events)

    def _stalled(self, stream: str) -> bool:
        until = self.stalled_streams.get(stream)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self.stalled_streams[stream]
        return False

    def send_to(self, conn: WsConn, stream: str, payload: bytes) -> None:
        """Queue a payload for one connection in its own framing (fault injection)."""
        conn.pending.append(frame_text(combined(stream, payload) if conn.combined else payload))
        self.registry.dirty.add(conn)

    # ---- control messages ------------------------------------------------------------
    def control(self, conn: WsConn, text: str) -> bytes | None:
        """Answer one client message; None means "no reply" (legacy kline silence)."""
        self.counters["control_msgs"] += 1
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.counters["control_errors"] += 1
            return _err(3, f"Invalid JSON: {exc.msg}", None)
        if not isinstance(msg, dict):
            self.counters["control_errors"] += 1
            return _err(2, "Invalid request: expected a JSON object", None)
        req_id = msg.get("id")
        if isinstance(req_id, bool) or not (
            (isinstance(req_id, int) and req_id >= 0) or isinstance(req_id, str)
        ):
            self.counters["control_errors"] += 1
            return _err(2, "Invalid request: request ID must be an unsigned integer", None)
        method = msg.get("method")
        if method not in METHODS:
            self.counters["control_errors"] += 1
            return _err(
                2,
                f"Invalid request: unknown variant {method!r}, expected one of "
                + ", ".join(METHODS),
                req_id,
            )
        return self._dispatch(conn, method, msg.get("params"), req_id)

    def _dispatch(self, conn: WsConn, method: str, params: Any, req_id: Any) -> bytes | None:
        if method == "LIST_SUBSCRIPTIONS":
            return orjson.dumps({"result": list(conn.streams), "id": req_id})
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            return self._property(conn, method, params, req_id)
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            self.counters["control_errors"] += 1
            return _err(2, "Invalid request: params must be an array of stream names", req_id)
        streams = [canonical(p) for p in params]
        if not all(valid_stream(s) for s in streams):
            self.counters["control_errors"] += 1
            return _err(2, "Invalid request: invalid stream name", req_id)
        if method == "UNSUBSCRIBE":
            self.unsubscribe(conn, streams)
            return orjson.dumps({"result": None, "id": req_id})
        silent = conn.kline_silent and any(is_kline(s) for s in streams)
        if silent:
            streams = [s for s in streams if not is_kline(s)]
        try:
            self.subscribe(conn, streams)
        except TooManyStreams:
            self.counters["control_errors"] += 1
            return _err(
                2, f"Invalid request: too many streams, limit is {self.max_streams}", req_id
            )
        return None if silent else orjson.dumps({"result": None, "id": req_id})

    def _property(self, conn: WsConn, method: str, params: Any, req_id: Any) -> bytes:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            return _err(2, "Invalid request: property name must be a string", req_id)
        if params[0] != "combined":
            return _err(0, "Unknown property", req_id)
        if method == "GET_PROPERTY":
            return orjson.dumps({"result": conn.combined, "id": req_id})
        if len(params) < 2 or not isinstance(params[1], bool):
            return _err(1, "Invalid value type: expected Boolean", req_id)
        self.set_combined(conn, params[1])
        return orjson.dumps({"result": None, "id": req_id})

    # ---- the socket --------------------------------------------------------------------
    async def serve(
        self,
        request: web.Request,
        route: str,
        is_combined: bool,
        url_streams: list[str],
        now_ms: int,
    ) -> web.StreamResponse:
        """Accept and run one market socket until it closes."""
        streams = [canonical(s) for s in url_streams if s]
        if len(streams) > self.max_streams or not all(valid_stream(s) for s in streams):
            return web.json_response({"code": -1100, "msg": "Invalid stream list."}, status=400)
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        conn = WsConn(
            self.registry.new_id(), "market", route, request.path_qs, ws,
            request.transport, is_combined, now_ms,
        )  # fmt: skip
        conn.kline_silent = route == "legacy" and (
            self.legacy_kline_silence if is_combined else self.legacy_ws_kline_silence
        )
        if conn.kline_silent:
            streams = [s for s in streams if not is_kline(s)]
        self.subscribe(conn, streams)
        self.registry.add(conn)
        try:
            await self._read_loop(conn)
        finally:
            self.drop(conn)
            self.registry.remove(conn)
        return ws

    async def _read_loop(self, conn: WsConn) -> None:
        async def on_text(text: str) -> None:
            reply = self.control(conn, text)
            if reply is not None and conn.alive:
                await conn.ws.send_frame(reply, WSMsgType.TEXT)

        await self.registry.read_loop(conn, on_text)
