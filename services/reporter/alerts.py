"""Alerts raised ONCE per condition and cleared when the condition recovers.

Why it looks like this: a health loop sees "kline_feed is down" every two seconds; the
operator must hear it once.  The set of raised alerts lives in Redis
(`Keys.alerts_active`, alert id -> JSON), so "once" holds across reporter restarts and
replicas.  Marking an alert active and appending it to `Keys.stream_alerts` happen in
one Lua script: a crash can never leave an alert marked but unannounced, or announced
twice.  Then it is logged and, if configured, sent to the webhook in the background.

Stream entries follow the bus codec: type `alert` or `alert_resolved`, `event_time` is
the system's event time when known (so a replay's alerts land in its simulated day),
data `{alert_id, state, message, severity, time (wall ms), details}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.reporter.webhook import WebhookSender
from shared.codec import encode_event
from shared.keys import Keys

log = logging.getLogger(__name__)

# KEYS: active hash, stream. ARGV: op, alert id, json, maxlen, field1, value1, ...
_SCRIPT = """
local changed
if ARGV[1] == 'raise' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if changed == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
return 1
"""


@dataclass(frozen=True, slots=True)
class Alert:
    """One condition.  `alert_id` names the condition (`service_down:kline_feed`), so
    the same condition seen again is the same alert."""

    alert_id: str
    message: str
    severity: str = "critical"
    details: dict[str, Any] = field(default_factory=dict)


class Alerter:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        maxlen: int = 10_000,
        webhook: WebhookSender | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.webhook = webhook
        self._script = redis.register_script(_SCRIPT)
        self.raised = 0
        self.resolved = 0

    async def _apply(self, op: str, alert: Alert, wall_ms: int, event_time: int | None) -> bool:
        state = "raised" if op == "raise" else "resolved"
        data = {
            "alert_id": alert.alert_id,
            "state": state,
            "message": alert.message,
            "severity": alert.severity,
            "time": wall_ms,
            "details": alert.details,
        }
        fields = encode_event(
            "alert" if op == "raise" else "alert_resolved",
            data,
            event_time=event_time if event_time is not None else wall_ms,
        )
        args: list[Any] = [op, alert.alert_id, orjson.dumps(data, default=str), self.maxlen]
        for k, v in fields.items():
            args += [k, v]
        changed = await self._script(
            keys=[self.keys.alerts_active, self.keys.stream_alerts], args=args
        )
        if not changed:
            return False
        level = logging.ERROR if op == "raise" and alert.severity == "critical" else logging.WARNING
        log.log(level, f"alert {state}: {alert.message}", extra={"alert_id": alert.alert_id})
        if self.webhook is not None:
            self.webhook.submit({"kind": "alert", **data}, what=f"alert:{alert.alert_id}")
        return True

    async def raise_alert(self, alert: Alert, wall_ms: int, event_time: int | None = None) -> bool:
        """True when this call raised it; False if it was already active."""
        done = await self._apply("raise", alert, wall_ms, event_time)
        self.raised += done
        return done

    async def resolve(
        self, alert_id: str, message: str, wall_ms: int, event_time: int | None = None
    ) -> bool:
        """True when this call cleared an active alert."""
        done = await self._apply("resolve", Alert(alert_id, message, "info"), wall_ms, event_time)
        self.resolved += done
        return done

    async def active(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.alerts_active)
        out = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[k.decode()] = {"alert_id": k.decode(), "message": "(unreadable)"}
        return out

    async def sync(
        self,
        family: str,
        current: Mapping[str, Alert],
        wall_ms: int,
        event_time: int | None = None,
    ) -> tuple[list[str], list[str]]:
        """Make the active alerts whose id starts with `family` equal `current`:
        raise the new ones, resolve those whose condition is gone.  Returns
        (raised ids, resolved ids)."""
        raised = [
            a.alert_id for a in current.values() if await self.raise_alert(a, wall_ms, event_time)
        ]
        resolved = []
        for alert_id in await self.active():
            if alert_id.startswith(family) and alert_id not in current:
                msg = f"recovered: {alert_id.removeprefix(family)}"
                if await self.resolve(alert_id, msg, wall_ms, event_time):
                    resolved.append(alert_id)
        return raised, resolved

    def stats(self) -> dict[str, int]:
        return {"raised_total": self.raised, "resolved_total": self.resolved}
