"""`python -m services.kline_feed [--check] [--port N]` / `slt run kline_feed ...`.

With `service.instance_index = -1` (AUTO, for `docker compose up --scale kline_feed=N`
with `SLT_SERVICE__INSTANCE_COUNT=N`), the shard index is claimed in Redis before the
service starts (see lease.py); `--check` then finds this replica's heartbeat by host name.
Exit status: 0 clean stop / healthy, 1 runtime failure / unhealthy, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

import redis

from shared.config import ConfigError, Settings, load_settings
from shared.health import check_health
from shared.keys import Keys
from shared.runtime import run_service

from .lease import NoFreeShard, claim_sync, new_token
from .service import KlineFeedService

NAME = KlineFeedService.name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kline_feed",
        description="Closed klines from Binance's WebSocket into Redis, exactly once "
        "(sharded by service.instance_index/instance_count; -1 = claim a shard in Redis).",
    )
    p.add_argument("--check", action="store_true", help="exit 0 if this instance is healthy")
    p.add_argument("--port", type=int, default=None, help="HTTP port for /healthz (0 = any)")
    return p


def _with_index(settings: Settings, index: int) -> Settings:
    service = settings.service.model_copy(update={"instance_index": index})
    return settings.model_copy(update={"service": service})


def _auto_check(settings: Settings) -> int:
    """--check in AUTO mode: the heartbeat of the shard this host holds."""
    if settings.service.instance_count == 1:
        return check_health(_with_index(settings, 0), NAME)
    keys = Keys(settings.redis.prefix)
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=2, socket_connect_timeout=2)
    host = socket.gethostname()
    try:
        for key in client.scan_iter(match=keys.health_instances_pattern(NAME), count=100):
            if client.hget(key, "host") == host.encode():
                index = client.hget(key, "instance")
                if index is not None and index.decode().isdigit():
                    return check_health(_with_index(settings, int(index)), NAME)
    except (redis.RedisError, OSError) as exc:
        print(f"{NAME}: unhealthy: {exc}")
        return 1
    finally:
        client.close()
    print(f"{NAME}: unhealthy: no heartbeat from host {host}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2): a status, not an exit
        return int(exc.code or 0)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    svc = settings.service
    auto = svc.instance_index < 0
    if args.check:
        return _auto_check(settings) if auto else check_health(settings, NAME)
    lease = None
    if auto:
        token = new_token()
        ttl_ms = int(max(svc.heartbeat_ttl, 3 * svc.heartbeat_interval) * 1000)
        try:
            index = claim_sync(settings.redis.url, Keys(settings.redis.prefix), NAME,
                               svc.instance_count, token, ttl_ms,
                               wait_s=ttl_ms / 1000 + 1)  # fmt: skip
        except (NoFreeShard, redis.RedisError, OSError) as exc:
            print(f"{NAME}: {exc}", file=sys.stderr)
            return 1
        settings = _with_index(settings, index)
        lease = (Keys(settings.redis.prefix).shard_lease(NAME, index), token, ttl_ms)
    service = KlineFeedService(settings, claimed_lease=lease)
    return run_service(service, settings, port=args.port)


if __name__ == "__main__":
    raise SystemExit(main())
