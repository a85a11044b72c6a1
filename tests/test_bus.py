"""StreamBus and Consumer against a real Redis, including a real SIGKILL of a consumer."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.bus import Batch, Consumer, PoisonEntry, StreamBus
from shared.codec import decode_event, encode_event
from shared.keys import Keys
from tests.polling import until

REPO = Path(__file__).resolve().parent.parent


def _bus(client: aioredis.Redis, prefix: str, **maxlen: int) -> StreamBus:
    return StreamBus(client, Keys(prefix), maxlen or {"klines": 100}, default_maxlen=50)


async def _run_until(
    consumer: Consumer,
    handler: Any,
    done: Callable[[], Awaitable[bool] | bool],
    *,
    per_entry: bool = True,
) -> None:
    """Run the consumer loop until `done()` holds, then stop it and wait for it."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(handler, stop, per_entry=per_entry))

    async def done_or_crashed() -> bool:
        if task.done():
            raise AssertionError(f"consumer loop ended early: {task.exception()!r}")
        ok = done()
        return ok if isinstance(ok, bool) else await ok

    try:
        await until(done_or_crashed, 8.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _pending(client: aioredis.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


# ---- publishing ----------------------------------------------------------------------
async def test_publish_is_trimmed_near_maxlen(redis_client: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    bus = _bus(redis_client, prefix, klines=100)
    assert bus.maxlen(keys.stream_klines) == 100
    for i in range(600):
        await bus.publish(keys.stream_klines, {"i": i})
    single = await redis_client.xlen(keys.stream_klines)
    await bus.publish_many(keys.stream_klines, [{"i": i} for i in range(3000)])
    many = await redis_client.xlen(keys.stream_klines)
    other = keys.stream("unlisted")
    await bus.publish_many(other, [{"i": i} for i in range(1000)])
    # MAXLEN ~ trims whole macro-nodes (100 entries each by default): near n, never far.
    assert 100 <= single < 300
    assert 100 <= many < 300
    assert 50 <= await redis_client.xlen(other) < 250


async def test_publish_many_keeps_order(redis_client: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    bus = _bus(redis_client, prefix, klines=100_000)
    n = 2_345  # spans several pipeline chunks
    ids = await bus.publish_many(keys.stream_klines, [{"seq": i} for i in range(n)])
    assert len(ids) == n
    rows = await redis_client.xrange(keys.stream_klines)
    assert [r[0].decode() for r in rows] == ids
    assert [int(r[1][b"seq"]) for r in rows] == list(range(n))
    as_tuples = [tuple(map(int, i.split("-"))) for i in ids]
    assert as_tuples == sorted(as_tuples) and len(set(as_tuples)) == n


async def test_state_hash_is_plain_strings(redis_client: aioredis.Redis, prefix: str) -> None:
    bus = _bus(redis_client, prefix)
    key = Keys(prefix).position("BTCUSDT")
    await bus.set_state(key, {"qty": 0.5, "open": True, "note": None, "side": "LONG", "n": 3})
    assert await bus.get_state(key) == {
        "qty": "0.5", "open": "true", "note": "", "side": "LONG", "n": "3",
    }  # fmt: skip
    assert await bus.get_state(Keys(prefix).position("NOPE")) == {}


# ---- groups ----------------------------------------------------------------------------
async def test_group_creation_is_idempotent_and_start_id(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    first = Consumer(redis_client, stream, "g0", "c")
    assert await first.ensure_group() is True  # MKSTREAM: stream did not exist
    assert await first.ensure_group() is False  # BUSYGROUP ignored
    await redis_client.xadd(stream, {"k": "before"})
    from_zero = Consumer(redis_client, stream, "g-zero", "c", block_ms=10)
    from_new = Consumer(redis_client, stream, "g-new", "c", block_ms=10, start_id="$")
    await from_zero.ensure_group()
    await from_new.ensure_group()
    await redis_client.xadd(stream, {"k": "after"})
    assert [f[b"k"] for _, f in await from_zero.read()] == [b"before", b"after"]
    assert [f[b"k"] for _, f in await from_new.read()] == [b"after"]


# ---- crash recovery --------------------------------------------------------------------
@pytest.mark.parametrize("same_name", [False, True], ids=["autoclaim", "own-pending"])
async def test_entry_of_killed_consumer_is_redelivered(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, same_name: bool
) -> None:
    """A consumer process reads an entry and is SIGKILLed before acking; the next
    consumer gets it: via XAUTOCLAIM (other name) or its own PEL (same name)."""
    stream = Keys(prefix).stream_klines
    entry_id = (await redis_client.xadd(stream, encode_event("kline", {"c": 1}))).decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bus_worker", redis_url, stream, "g", "worker-1",
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
        assert line.decode().strip() == entry_id
    finally:
        proc.kill()  # SIGKILL: no cleanup, no ack
        await asyncio.wait_for(proc.wait(), 5)
    assert proc.returncode == -9
    rows = await redis_client.xpending_range(stream, "g", "-", "+", 10)
    assert [(r["message_id"].decode(), r["consumer"]) for r in rows] == [(entry_id, b"worker-1")]

    got: list[tuple[str, str]] = []

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        got.append((eid, decode_event(fields)[0]))

    name = "worker-1" if same_name else "worker-2"
    consumer = Consumer(redis_client, stream, "g", name, claim_idle_ms=300, block_ms=50)
    await _run_until(consumer, handler, lambda: bool(got))
    assert got == [(entry_id, "kline")]
    assert await _pending(redis_client, stream, "g") == 0
    assert consumer.counters["claimed" if not same_name else "redelivered"] == 1


async def test_stop_finishes_and_acks_the_entry_in_hand(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    await redis_client.xadd(stream, {"k": "1"})
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(eid: str, fields: dict[bytes, bytes]) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    consumer = Consumer(redis_client, stream, "g", "c", block_ms=5_000)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(slow, stop, per_entry=True))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert finished.is_set()
    assert await _pending(redis_client, stream, "g") == 0
    # And a stop while blocked in XREADGROUP (5 s block) returns at once.
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(consumer.run(slow, stop2, per_entry=True))
    await asyncio.sleep(0.2)
    stop2.set()
    await asyncio.wait_for(task2, 1.0)


# ---- failures and dead letters ---------------------------------------------------------
async def test_failing_entry_goes_to_dead_letter_after_n_tries(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    dead = Keys.dead_letter(stream)
    for k in ("good1", "bad", "good2"):
        await redis_client.xadd(stream, {"k": k})
    calls: dict[str, int] = {}

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        k = fields[b"k"].decode()
        calls[k] = calls.get(k, 0) + 1
        if k == "bad":
            raise RuntimeError("cannot handle bad")

    consumer = Consumer(
        redis_client, stream, "g", "c", max_deliveries=3, retry_delay=0.01, block_ms=20
    )

    async def dead_written() -> bool:
        return await redis_client.xlen(dead) == 1

    await _run_until(consumer, handler, dead_written)
    assert calls == {"good1": 1, "bad": 3, "good2": 1}
    [(_, fields)] = await redis_client.xrange(dead)
    assert fields[b"k"] == b"bad"
    assert fields[b"dl_deliveries"] == b"3"
    assert b"cannot handle bad" in fields[b"dl_reason"]
    assert fields[b"dl_group"] == b"g"
    assert await _pending(redis_client, stream, "g") == 0
    assert consumer.counters["dead_lettered"] == 1
    assert consumer.counters["handler_errors"] == 3
    assert consumer.counters["acked"] == 3


async def test_malformed_entry_is_dead_lettered_at_once(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    await redis_client.xadd(stream, {"type": "kline", "v": "1"})  # no event_time, no data
    await redis_client.xadd(stream, encode_event("kline", {"c": 2}, event_time=5))
    await redis_client.xadd(stream, {"k": "explicit"})
    seen: list[int | None] = []

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        if b"k" in fields:
            raise PoisonEntry("not an event")
        seen.append(decode_event(fields)[2].event_time)  # MessageError on the first

    consumer = Consumer(redis_client, stream, "g", "c", max_deliveries=5, block_ms=20)
    await _run_until(consumer, handler, lambda: consumer.counters["dead_lettered"] == 2)
    assert seen == [5]
    assert consumer.counters["poison"] == 2 and consumer.counters["handler_errors"] == 0
    reasons = [f[b"dl_reason"] for _, f in await redis_client.xrange(Keys.dead_letter(stream))]
    assert b"MessageError" in reasons[0] and b"not an event" in reasons[1]
    assert await _pending(redis_client, stream, "g") == 0


async def test_batch_handler_failure_isolates_the_bad_entry(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """A batch handler that raises on any batch containing `bad`: the batch is retried
    one entry at a time, so only `bad` is dead-lettered and the rest are handled."""
    stream = Keys(prefix).stream_klines
    await StreamBus(redis_client, Keys(prefix), {}).publish_many(
        stream, [{"k": k} for k in ("a", "b", "bad", "c")]
    )
    handled: list[str] = []

    async def batch_handler(batch: Batch) -> None:
        keys = [f[b"k"].decode() for _, f in batch]
        if "bad" in keys:
            raise ValueError("bad in batch")
        handled.extend(keys)

    consumer = Consumer(
        redis_client, stream, "g", "c", max_deliveries=2, retry_delay=0.01, block_ms=20
    )
    await _run_until(
        consumer, batch_handler, lambda: consumer.counters["dead_lettered"] == 1, per_entry=False
    )
    assert sorted(handled) == ["a", "b", "c"]
    assert await _pending(redis_client, stream, "g") == 0


async def test_partial_batch_result_leaves_the_rest_pending(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    ids = await StreamBus(redis_client, Keys(prefix), {}).publish_many(
        stream, [{"k": str(i)} for i in range(4)]
    )
    deliveries: list[str] = []

    async def first_half_then_all(batch: Batch) -> list[str]:
        deliveries.extend(i for i, _ in batch)
        return [i for i, _ in batch][:2] if len(deliveries) <= 4 else [i for i, _ in batch]

    consumer = Consumer(redis_client, stream, "g", "c", retry_delay=0.01, block_ms=20)

    async def all_acked() -> bool:
        return consumer.counters["acked"] == 4

    await _run_until(consumer, first_half_then_all, all_acked, per_entry=False)
    assert deliveries == ids + ids[2:]  # the two not returned were delivered again
    assert await _pending(redis_client, stream, "g") == 0


async def test_crash_looping_entry_is_dead_lettered_without_handling(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """An entry delivered more than max_deliveries times without any ack (its consumer
    kept dying on it) is not handed to the handler again."""
    stream = Keys(prefix).stream_klines
    consumer = Consumer(redis_client, stream, "g", "c", max_deliveries=2, block_ms=20)
    await consumer.ensure_group()
    await redis_client.xadd(stream, {"k": "killer"})
    await consumer.read()
    await consumer.read_pending()
    await consumer.read_pending()  # delivered 3 times, never acked
    called: list[str] = []

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        called.append(eid)

    await _run_until(consumer, handler, lambda: consumer.counters["dead_lettered"] == 1)
    assert called == []
    [(_, fields)] = await redis_client.xrange(Keys.dead_letter(stream))
    assert fields[b"dl_deliveries"] == b"4"


async def test_pending_entry_trimmed_away_is_acked_as_gone(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    consumer = Consumer(redis_client, stream, "g", "c", block_ms=20)
    await consumer.ensure_group()
    entry_id = (await redis_client.xadd(stream, {"k": "x"})).decode()
    await consumer.read()
    await redis_client.xdel(stream, entry_id)
    called: list[str] = []

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        called.append(eid)

    await _run_until(consumer, handler, lambda: consumer.counters["gone"] == 1)
    assert called == []
    assert await _pending(redis_client, stream, "g") == 0


async def test_batches_iterator_yields_pending_then_new(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    first = Consumer(redis_client, stream, "g", "c", block_ms=50)
    await first.ensure_group()
    old = (await redis_client.xadd(stream, {"k": "old"})).decode()
    await first.read()  # delivered, never acked: pending for "c"
    new = (await redis_client.xadd(stream, {"k": "new"})).decode()
    again = Consumer(redis_client, stream, "g", "c", block_ms=50)
    stop = asyncio.Event()
    seen: list[list[str]] = []
    async with asyncio.timeout(5):
        async for batch in again.batches(stop):
            seen.append([i for i, _ in batch])
            await again.ack(seen[-1])
            if len(seen) == 2:
                stop.set()
    assert seen == [[old], [new]]
    assert await _pending(redis_client, stream, "g") == 0


# ---- acks riding with the next read ------------------------------------------------------
async def test_ack_with_read_sends_acks_with_the_next_read(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    stream = Keys(prefix).stream_klines
    bus = StreamBus(redis_client, Keys(prefix), {})
    await bus.publish_many(stream, [{"k": str(i)} for i in range(3)])
    consumer = Consumer(redis_client, stream, "g", "c", block_ms=20, ack_with_read=True)
    await consumer.ensure_group()
    batch = await consumer.read()

    async def handler(b: Batch) -> None:
        return None

    await consumer.handle(handler, batch, recovered=False)
    assert await _pending(redis_client, stream, "g") == 3  # handled, ack not sent yet
    await bus.publish(stream, {"k": "3"})
    assert [f[b"k"] for _, f in await consumer.read()] == [b"3"]  # ...now, with this read
    assert await _pending(redis_client, stream, "g") == 1
    assert consumer.counters["acked"] == 3
    assert await consumer.flush_acks() == 0  # nothing deferred any more


async def test_ack_with_read_loop_acks_everything_once_and_on_stop(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """A failing entry is retried from the pending list: the entries handled before it
    (acks still deferred) must not come back with it, and the last acks go out on stop."""
    stream = Keys(prefix).stream_klines
    await StreamBus(redis_client, Keys(prefix), {}).publish_many(
        stream, [{"k": k} for k in ("a", "b", "flaky", "c")]
    )
    seen: list[str] = []
    failed = False
    stop = asyncio.Event()

    async def handler(eid: str, fields: dict[bytes, bytes]) -> None:
        nonlocal failed
        key = fields[b"k"].decode()
        if key == "flaky" and not failed:
            failed = True
            raise ValueError("once")
        seen.append(key)
        if len(seen) in (4, 6):
            stop.set()  # the loop ends after this batch: no further read carries the ack

    consumer = Consumer(
        redis_client, stream, "g", "c", retry_delay=0.01, block_ms=20, ack_with_read=True
    )
    await asyncio.wait_for(consumer.run(handler, stop, per_entry=True), 8)
    assert sorted(seen) == ["a", "b", "c", "flaky"]  # each handled exactly once
    assert await _pending(redis_client, stream, "g") == 0
    await StreamBus(redis_client, Keys(prefix), {}).publish_many(stream, [{"k": "d"}, {"k": "e"}])
    stop.clear()
    await asyncio.wait_for(consumer.run(handler, stop, per_entry=True), 8)
    assert seen[-2:] == ["d", "e"]
    assert await _pending(redis_client, stream, "g") == 0  # the last acks went out on stop
