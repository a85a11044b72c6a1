"""Reads of Redis for the report and the dashboard (the I/O half of the reporter).

Every reader is bounded (streams are scanned in chunks and stop once they are past the
wanted time) and tolerant: an entry that does not decode is counted and skipped, never
an exception that loses the whole report.  Health hashes come from
`shared.ops.read_health`, the same reader `slt status` uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.reporter.health_view import iso
from services.reporter.report import DAY_MS, AlertRecord, ModelInfo, PositionView, dec
from shared.codec import EventMeta, decode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.models import ClosedTrade, Position
from shared.ops import read_health

__all__ = ["read_health", "Reads", "recent_events"]

log = logging.getLogger(__name__)
CHUNK = 500
QUOTE_ASSET = "USDT"


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


@dataclass
class Reads:
    """Stream/hash readers bound to one client; `bad` counts undecodable entries."""

    redis: aioredis.Redis
    keys: Keys
    bad: int = 0

    async def _scan_back(
        self, stream: str, since_ms: int
    ) -> list[tuple[str, dict[str, Any], EventMeta]]:
        """Decoded entries newest first, until a whole chunk is older than `since_ms`
        minus a day by event time (streams are in arrival order, which follows event
        time only loosely, hence the slack)."""
        out: list[tuple[str, dict[str, Any], EventMeta]] = []
        upper = "+"
        while True:
            batch = await self.redis.xrevrange(stream, max=upper, min="-", count=CHUNK)
            if not batch:
                break
            all_old = True
            for _entry_id, fields in batch:
                try:
                    etype, data, meta = decode_event(fields)
                except MessageError:
                    self.bad += 1
                    continue
                if meta.event_time is None or meta.event_time >= since_ms - DAY_MS:
                    all_old = False
                out.append((etype, data, meta))
            upper = "(" + _text(batch[-1][0])  # exclusive: Redis >= 6.2
            if all_old or len(batch) < CHUNK:
                break
        return out

    async def trades(self, since_ms: int) -> list[ClosedTrade]:
        """Closed trades whose exit time is at or after `since_ms`, oldest first."""
        found: dict[str, ClosedTrade] = {}
        for _etype, data, _meta in await self._scan_back(self.keys.stream_trades, since_ms):
            t = self._trade(data)
            if t is not None and t.exit_time >= since_ms:
                found[t.trade_id] = t  # a trade recorded twice counts once
        return sorted(found.values(), key=lambda t: (t.exit_time, t.trade_id))

    async def trades_after(self, entry_id: str) -> tuple[list[ClosedTrade], str]:
        """Closed trades in entries after `entry_id`, and the id of the last entry read."""
        out: list[ClosedTrade] = []
        while True:
            batch = await self.redis.xrange(
                self.keys.stream_trades, min=f"({entry_id}", count=CHUNK
            )
            for raw_id, fields in batch:
                entry_id = _text(raw_id)
                try:
                    t = self._trade(decode_event(fields)[1])
                except MessageError:
                    self.bad += 1
                    continue
                if t is not None:
                    out.append(t)
            if len(batch) < CHUNK:
                return out, entry_id

    def _trade(self, data: dict[str, Any]) -> ClosedTrade | None:
        """A ClosedTrade from an entry's data (the trade itself, or under `trade`)."""
        body = data.get("trade") if isinstance(data.get("trade"), dict) else data
        try:
            return ClosedTrade.from_dict(body)
        except MessageError:
            self.bad += 1
            return None

    async def alerts(self, since_ms: int) -> list[AlertRecord]:
        out = []
        for etype, data, meta in await self._scan_back(self.keys.stream_alerts, since_ms):
            when = meta.event_time if meta.event_time is not None else int(data.get("time") or 0)
            if when < since_ms:
                continue
            state = str(data.get("state") or ("resolved" if "resolved" in etype else "raised"))
            out.append(
                AlertRecord(
                    time=when,
                    alert_id=str(data.get("alert_id") or data.get("id") or etype),
                    state=state,
                    message=str(data.get("message", "")),
                    severity=str(data.get("severity", "critical")),
                )
            )
        return sorted(out, key=lambda a: a.time)

    async def positions(self) -> list[PositionView]:
        prices = {
            _text(k): dec(_text(v)) for k, v in (await self.redis.hgetall(self.keys.prices)).items()
        }
        out = []
        async for key in self.redis.scan_iter(match=self.keys.position("*"), count=200):
            raw = await self.redis.hgetall(key)
            if not raw:
                continue
            try:
                p = Position.from_hash(raw)
            except MessageError:
                self.bad += 1
                continue
            lev = Decimal(p.leverage) if p.leverage is not None else Decimal(0)
            mark = prices.get(p.symbol, Decimal(0))
            out.append(PositionView(p.symbol, p.size, p.entry_price, mark, p.unrealized_pnl, lev))
        return sorted(out, key=lambda p: p.symbol)

    async def wallet(self, asset: str = QUOTE_ASSET) -> Decimal | None:
        raw = await self.redis.hget(self.keys.balance(asset), "wallet_balance")
        return dec(_text(raw)) if raw not in (None, b"") else None

    async def model(self) -> ModelInfo | None:
        current = await self.redis.get(self.keys.model_current)
        if not current:
            return None
        version = _text(current)
        meta: dict[str, Any] = {}
        raw = await self.redis.hget(self.keys.model_history, version)
        if raw:
            try:
                loaded = orjson.loads(raw)
                meta = loaded if isinstance(loaded, dict) else {}
            except orjson.JSONDecodeError:
                self.bad += 1
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        trained = meta.get("trained_at")
        if trained is None and isinstance(meta.get("created_at_ms"), int):  # trader's learner
            trained = iso(meta["created_at_ms"])
        return ModelInfo(version, dict(metrics), None if trained is None else str(trained))

    async def baseline(self, day: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.report_baselines, day)
        if not raw:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None


async def recent_events(redis: aioredis.Redis, stream: str, count: int) -> list[dict[str, Any]]:
    """The last `count` entries of a stream, newest first, as JSON-ready dicts."""
    out = []
    for entry_id, fields in await redis.xrevrange(stream, count=count):
        try:
            etype, data, meta = decode_event(fields)
        except MessageError:
            continue
        out.append(
            {
                "id": _text(entry_id),
                "type": etype,
                "symbol": meta.symbol,
                "event_time": meta.event_time,
                "data": orjson.loads(orjson.dumps(data, default=str)),
            }
        )
    return out
