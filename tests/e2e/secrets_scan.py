"""Search every place a secret could leak: log files, every Redis key and value, report
files (and the model store).  A hit names the place, never the secret itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from .figures import Figure, at_least, exact, info
from .klines import PAGE, read_stream


@dataclass
class SecretHits:
    files_scanned: int = 0
    report_files: int = 0
    bytes_scanned: int = 0
    keys_scanned: int = 0
    hits: dict[str, list[str]] = field(default_factory=dict)  # secret name -> places

    def add(self, name: str, place: str) -> None:
        self.hits.setdefault(name, []).append(place)

    def count(self, where: str) -> int:
        return sum(1 for places in self.hits.values() for p in places if p.startswith(where))


def _search(blob: bytes, secrets: Mapping[str, bytes], place: str, out: SecretHits) -> None:
    for name, value in secrets.items():
        if value in blob:
            out.add(name, place)


def scan_files(paths: Iterable[Path], secrets: Mapping[str, str], out: SecretHits,
               kind: str) -> None:  # fmt: skip
    raw = {k: v.encode() for k, v in secrets.items()}
    for path in paths:
        if not path.is_file():
            continue
        blob = path.read_bytes()
        out.files_scanned += 1
        out.report_files += kind == "report"
        out.bytes_scanned += len(blob)
        _search(blob, raw, f"{kind}:{path.name}", out)


async def _value_blobs(redis: aioredis.Redis, key: bytes) -> list[bytes]:
    kind = (await redis.type(key)).decode()
    if kind == "string":
        return [await redis.get(key) or b""]
    if kind == "hash":
        return [b"\x00".join(k + b"=" + v for k, v in (await redis.hgetall(key)).items())]
    if kind == "set":
        return [b"\x00".join(await redis.smembers(key))]
    if kind == "list":
        return [b"\x00".join(await redis.lrange(key, 0, -1))]
    if kind == "zset":
        return [b"\x00".join(await redis.zrange(key, 0, -1))]
    if kind == "stream":
        entries = await read_stream(redis, key.decode())
        blobs = []
        for i in range(0, len(entries), PAGE):
            blobs.append(b"\x00".join(
                b"\x00".join(k + b"=" + v for k, v in fields.items())
                for _, fields in entries[i:i + PAGE]
            ))  # fmt: skip
        return blobs
    return []


async def scan_redis(redis: aioredis.Redis, secrets: Mapping[str, str], out: SecretHits) -> None:
    """SCAN every key of the database: its name and its whole value."""
    raw = {k: v.encode() for k, v in secrets.items()}
    async for key in redis.scan_iter(count=1000):
        out.keys_scanned += 1
        _search(key, raw, f"redis-key:{key.decode(errors='replace')}", out)
        for blob in await _value_blobs(redis, key):
            out.bytes_scanned += len(blob)
            _search(blob, raw, f"redis:{key.decode(errors='replace')}", out)


def figures(hits: SecretHits, sim_log_hits: int) -> list[Figure]:
    s = "secrets"
    places = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in hits.hits.items())
    return [
        info(s, "files scanned (logs, reports, models)", hits.files_scanned),
        at_least(s, "report files written and scanned", hits.report_files, 1,
                 "the daily report of the day the run crossed"),
        info(s, "redis keys scanned", hits.keys_scanned),
        info(s, "bytes scanned", hits.bytes_scanned),
        exact(s, "secrets in service logs", hits.count("log:"), 0, places),
        exact(s, "secrets in redis keys/values", hits.count("redis"), 0),
        exact(s, "secrets in reports/models", hits.count("report:") + hits.count("model:"), 0),
        info(s, "secrets in the simulator's own log", sim_log_hits,
             "the exchange knows the key; not our system"),
    ]  # fmt: skip
