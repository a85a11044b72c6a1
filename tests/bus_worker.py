"""A consumer process for test_bus's kill tests (not a test module).

`python -m tests.bus_worker <redis_url> <stream> <group> <consumer_name>` reads one
batch through `shared.bus.Consumer`, prints each entry id on stdout, then hangs without
acknowledging, so the test can SIGKILL it mid-"handler".
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from shared.bus import Consumer


async def main(url: str, stream: str, group: str, name: str) -> None:
    client = aioredis.from_url(url)
    consumer = Consumer(client, stream, group, name, block_ms=500)
    await consumer.ensure_group()
    while True:
        batch = await consumer.read()
        if batch:
            for entry_id, _ in batch:
                print(entry_id, flush=True)
            await asyncio.sleep(3600)  # "handling" until killed; never acks


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
