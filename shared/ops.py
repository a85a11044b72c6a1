"""Operator commands behind `slt status`, `slt tail`, `slt halt/resume` and `slt report`.

They read and write only Redis, so they work against any running deployment (local,
compose, remote) given `SLT_REDIS__URL`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from shared.config import Settings
from shared.keys import Keys
from shared.resp import fast_packing


def _client(url: str) -> aioredis.Redis:
    return fast_packing(aioredis.from_url(url, decode_responses=False, socket_connect_timeout=3))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def read_health(client: aioredis.Redis, keys: Keys) -> dict[str, dict[str, str]]:
    """Every `health:*` hash, keyed by the part after the prefix."""
    out: dict[str, dict[str, str]] = {}
    async for key in client.scan_iter(match=keys.health_pattern, count=200):
        name = _text(key).removeprefix(keys.health(""))
        raw = await client.hgetall(key)
        out[name] = {_text(k): _text(v) for k, v in raw.items()}
    return out


async def print_status(
    settings: Settings, redis_url: str | None = None, as_json: bool = False
) -> int:
    """Print the health of every service (a rich table, or JSON)."""
    keys = Keys(settings.redis.prefix)
    client = _client(redis_url or settings.redis.url)
    try:
        health = await read_health(client, keys)
        halted = await client.get(keys.halt)
    finally:
        await client.aclose()
    from rich.console import Console  # noqa: PLC0415

    from services.reporter.health_view import aggregate, render_status_table  # noqa: PLC0415

    view = aggregate(
        health,
        now_ms=int(time.time() * 1000),
        ttl_s=settings.service.heartbeat_ttl,
        halted=bool(halted),
    )
    if as_json:
        print(
            json.dumps(
                view.to_dict() if hasattr(view, "to_dict") else view,
                indent=2,
                default=str,
                sort_keys=True,
            )
        )
        return 0
    Console().print(render_status_table(view))
    return 0


async def status(settings: Settings, as_json: bool = False) -> int:
    try:
        return await print_status(settings, as_json=as_json)
    except (OSError, aioredis.ConnectionError) as exc:
        print(f"slt status: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1


def _format_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> str:
    from shared.codec import decode_event  # noqa: PLC0415

    try:
        etype, data, meta = decode_event(fields)
    except Exception as exc:  # an operator tool shows what it cannot decode
        return f"{_text(entry_id)}  <undecodable: {exc}>"
    when = getattr(meta, "event_time", None)
    stamp = ""
    if when:
        stamp = datetime.fromtimestamp(int(when) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{_text(entry_id)}  {stamp}  {etype}  {json.dumps(data, default=str)}"


async def tail(settings: Settings, stream: str, count: int, follow: bool) -> int:
    """Print the last `count` entries of a stream, decoded; `follow` keeps printing."""
    keys = Keys(settings.redis.prefix)
    name = stream if stream.startswith(settings.redis.prefix) else keys.stream(stream)
    client = _client(settings.redis.url)
    try:
        entries = await client.xrevrange(name, count=count)
        for entry_id, fields in reversed(entries):
            print(_format_entry(entry_id, fields))
        last = entries[0][0] if entries else b"$"
        while follow:
            got = await client.xread({name: last}, block=1000, count=100)
            for _stream, items in got or []:
                for entry_id, fields in items:
                    print(_format_entry(entry_id, fields), flush=True)
                    last = entry_id
    except (OSError, aioredis.ConnectionError) as exc:
        print(f"slt tail: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return 0
    finally:
        await client.aclose()
    return 0


async def set_halt(settings: Settings, halted: bool, reason: str) -> int:
    """Set or clear the global halt switch that stops new entries at once."""
    keys = Keys(settings.redis.prefix)
    client = _client(settings.redis.url)
    try:
        if halted:
            value = json.dumps({"reason": reason, "at": int(time.time() * 1000)})
            await client.set(keys.halt, value)
            print(f"halted: no new entries ({reason}); exits still run. `slt resume` to undo.")
        else:
            await client.delete(keys.halt)
            print("resumed: new entries allowed.")
    except (OSError, aioredis.ConnectionError) as exc:
        print(f"slt: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    return 0


async def report(settings: Settings, date: str | None) -> int:
    """Build the daily report for `date` (UTC) now and print where it was written."""
    from services.reporter.report import build_report  # noqa: PLC0415

    keys = Keys(settings.redis.prefix)
    day = date or datetime.now(UTC).strftime("%Y-%m-%d")
    try:
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        print(f"slt report: --date must be YYYY-MM-DD (got {day!r})", file=sys.stderr)
        return 2
    client = _client(settings.redis.url)
    try:
        result = await build_report(client, keys, day, settings=settings)
    except (OSError, aioredis.ConnectionError) as exc:
        print(f"slt report: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    print(json.dumps(result, indent=2, default=str) if isinstance(result, dict) else result)
    return 0
