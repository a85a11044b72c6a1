"""Health of one service instance: heartbeat hash, HTTP endpoints, `--check`.

Three views of the same snapshot (`HealthView.snapshot()`):
- `GET /healthz` -> JSON `{service, instance, status, phase, uptime_s, last_event_time,
  pid, counters}`; 200 when status is `ok` or `degraded` (alive, maybe on a fallback),
  503 when `down` (starting, stopping, or the service says it is unhealthy).
- `GET /metrics` -> Prometheus text from the service's private registry.
- The heartbeat hash `Keys.health(<service>[:<instance>])`, rewritten every
  `service.heartbeat_interval` seconds with a TTL of `service.heartbeat_ttl`, so a dead
  process disappears from Redis by itself.  Layout: the service's `stats()` FLATTENED
  with dotted keys (`consumer.acked`), every value a plain string (bool -> true/false,
  None -> "", lists -> JSON), then the fixed fields `service`, `instance`, `status`,
  `phase`, `heartbeat` (ms), `started_at` (ms), `uptime_s`, `last_event_time` (ms or
  ""), `pid`, `host`, `port`; a fixed field wins over a stat of the same name.  The
  hash is replaced atomically (DEL + HSET + PEXPIRE in MULTI) so no stale stat lingers.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
import redis
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from shared.bus import plain_text
from shared.config import Settings
from shared.keys import Keys
from shared.metrics import flatten, render

log = logging.getLogger(__name__)

Status = Literal["ok", "degraded", "down"]
ALIVE: frozenset[str] = frozenset({"ok", "degraded"})


def instance_id(settings: Settings) -> str | None:
    """This replica's instance name for keys and labels: None when the service is not
    sharded, `str(instance_index)` when it is, and `auto-<hostname>` for
    instance_index=-1 until the service claims a shard and sets `service.instance`."""
    svc = settings.service
    if svc.instance_index < 0:
        return f"auto-{socket.gethostname()}"
    return str(svc.instance_index) if svc.instance_count > 1 else None


def heartbeat_key(keys: Keys, service: str, instance: str | None) -> str:
    """`<prefix>health:<service>` or `<prefix>health:<service>:<instance>`."""
    return keys.health(service if instance is None else f"{service}:{instance}")


def health_key(settings: Settings, service: str) -> str:
    """The heartbeat key of this process's instance as configured in `settings`."""
    return heartbeat_key(Keys(settings.redis.prefix), service, instance_id(settings))


class Observed(Protocol):
    """What health reads from a running service (shared.runtime.Service)."""

    name: str
    instance: str | None
    phase: str
    last_event_time: int | None

    def all_stats(self) -> dict[str, Any]: ...

    def status(self) -> Status: ...


@dataclass
class HealthView:
    """Builds the snapshot shared by /healthz, /metrics and the heartbeat."""

    service: Observed
    started_at: float  # wall clock seconds, for humans and the heartbeat
    started_mono: float
    port: int = 0

    def snapshot(self) -> dict[str, Any]:
        svc = self.service
        try:
            stats = dict(svc.all_stats())
        except Exception:
            log.exception("stats() failed")
            stats = {"stats_error": True}
        return {
            "service": svc.name,
            "instance": svc.instance,
            "status": svc.status(),
            "phase": svc.phase,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "last_event_time": svc.last_event_time,
            "pid": os.getpid(),
            "counters": stats,
        }

    def heartbeat_fields(self) -> dict[str, str]:
        snap = self.snapshot()
        fields = {k: str(plain_text(v)) for k, v in flatten(snap.pop("counters")).items()}
        snap.update(
            heartbeat=int(time.time() * 1000),
            started_at=int(self.started_at * 1000),
            host=socket.gethostname(),
            port=self.port,
        )
        fields.update({k: str(plain_text(v)) for k, v in snap.items()})
        return fields


async def write_heartbeat(
    client: aioredis.Redis,
    key: str,
    fields: Mapping[str, str],
    ttl_s: float,
    old_key: str | None = None,
) -> None:
    """Replace the heartbeat hash atomically and (re)arm its TTL; `old_key` is the
    previous key when the instance name changed (a shard was claimed)."""
    async with client.pipeline(transaction=True) as pipe:
        if old_key and old_key != key:
            pipe.delete(old_key)
        pipe.delete(key)
        pipe.hset(key, mapping=dict(fields))
        pipe.pexpire(key, max(1, int(ttl_s * 1000)))
        await pipe.execute()


def build_app(
    view: HealthView, registry: CollectorRegistry, extra_routes: list[web.AbstractRouteDef]
) -> web.Application:
    """The aiohttp app: /healthz, /metrics and whatever routes the service adds."""

    async def healthz(_: web.Request) -> web.Response:
        snap = view.snapshot()
        body = orjson.dumps(snap, default=str, option=orjson.OPT_NON_STR_KEYS)
        code = 200 if snap["status"] in ALIVE else 503
        return web.Response(body=body, status=code, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        body, ctype = render(registry)
        return web.Response(body=body, headers={"Content-Type": ctype})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/metrics", metrics), *extra_routes])
    return app


def check_health(settings: Settings, service: str, *, redis_url: str | None = None) -> int:
    """Docker HEALTHCHECK: 0 if this instance's heartbeat is fresh and alive, else 1.

    With instance_index=-1 the shard is only known to the running process, so the
    heartbeat is found by this container's hostname.  Prints one line saying why,
    which `docker inspect` shows."""
    client = redis.Redis.from_url(
        redis_url or settings.redis.url, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        key, fields = _own_heartbeat(client, settings, service)
    except (redis.RedisError, OSError) as exc:
        print(f"{service}: unhealthy: cannot read its heartbeat: {exc}")
        return 1
    finally:
        client.close()
    if not fields:
        print(f"{service}: unhealthy: no heartbeat at {key}")
        return 1
    age_s = time.time() - int(fields.get("heartbeat") or 0) / 1000
    status = fields.get("status", "")
    if status not in ALIVE:
        print(f"{service}: unhealthy: status={status} phase={fields.get('phase', '')}")
        return 1
    if age_s > settings.service.heartbeat_ttl:
        print(f"{service}: unhealthy: heartbeat {age_s:.1f}s old")
        return 1
    print(f"{service}: {status} (heartbeat {age_s:.1f}s old)")
    return 0


def _own_heartbeat(
    client: redis.Redis, settings: Settings, service: str
) -> tuple[str, dict[str, str]]:
    keys = Keys(settings.redis.prefix)
    candidates = [health_key(settings, service)]
    if settings.service.instance_index < 0:
        candidates = [k.decode() for k in client.scan_iter(keys.health_instances_pattern(service))]
    host = socket.gethostname()
    for key in candidates:
        fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        if fields and (settings.service.instance_index >= 0 or fields.get("host") == host):
            return key, fields
    return candidates[0] if candidates else keys.health_instances_pattern(service), {}
