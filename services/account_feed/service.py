"""account_feed: the user data stream, with a listenKey that never silently dies.

Two loops, both tracked by the runtime:
- connection (`run`): POST a listenKey (the active key, extended, or a new one) ->
  connect `<exchange.user_ws_url>/private/ws/<listenKey>` -> start reading -> reconcile
  positions, balances and leverage over REST (whatever happened while we were not
  listening) -> apply and publish every event -> when the socket closes, a
  `listenKeyExpired` arrives (the socket may stay open and silent: we act on the event)
  or the key is lost (-1125, keepalive given up): start over.  Reconnects after a key
  loss are immediate; after socket failures they back off (websocket.reconnect_delay,
  doubled, jittered, capped at reconnect_max_delay).
- keepalive (`keeper.KeyKeeper`): does what `ListenKeyLifecycle.next()` says: PUT every
  websocket.listen_key_renewal s, retries with backoff before the key's 60 minutes run
  out, gives the key up (-> new key + reconcile) when they nearly have.
On shutdown the key is DELETEd.

Per socket, a reader task moves frames into a bounded queue and a writer drains it:
everything waiting is parsed as one batch and applied + published in one Lua call
(`cache.AccountCache`), so an ACCOUNT_UPDATE reaches its position hash in one round
trip and a burst costs one call.  A full queue stops the reader (back-pressure, never an
unbounded buffer).  Redis down: the batch is retried until Redis answers (or, at
worst, until the socket session ends: the reconcile after the reconnect then repairs
the caches, though that batch's bus entries are lost); a script error drops the batch
and schedules a reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from services.account_feed.cache import AccountCache
from services.account_feed.events import process_batch
from services.account_feed.keeper import TRANSIENT, KeyKeeper, backoff
from services.account_feed.listen_key import KeyPolicy, ListenKeyLifecycle
from services.account_feed.reconcile import Reconciler
from shared.binance.client import BinanceClient
from shared.binance.errors import AuthError
from shared.config import Settings
from shared.errors import MessageError
from shared.health import Status
from shared.runtime import Service

log = logging.getLogger(__name__)
# websockets logs the request line (with the listenKey, a read token for the account)
# at DEBUG: its logger for the user stream never goes below INFO.
ws_log = logging.getLogger(f"{__name__}.ws")
ws_log.setLevel(logging.INFO)

MAX_BATCH = 500
QUEUE_SIZE = 10_000
STABLE_AFTER = 10.0  # a socket that lived this long resets the reconnect backoff
COUNTERS = ("reconnects", "reconciliations", "reconcile_failures", "events_in",
            "events_published", "bad_messages", "ignored_messages", "stale_writes",
            "redis_errors", "connect_failures")  # fmt: skip


def iso_ms(ms: float | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


class AccountFeedService(Service):
    name = "account_feed"
    counter_keys = frozenset(
        {*COUNTERS, "renewal_attempts", "renewal_successes", "renewal_failures",
         "renewals_ok", "renewals_failed", "keys_created", "key_invalidations",
         "key_create_failures", "bad_rest_rows"}
    )  # fmt: skip

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: BinanceClient | None = None,
        key_validity: float = 3600.0,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        probe_after: float | None = 600.0,
        open_timeout: float = 10.0,
        queue_size: int = QUEUE_SIZE,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """`client`: a ready REST client (tests pass one on the simulator's clock);
        `key_validity`: the exchange's listenKey validity in our seconds (a simulator
        at speed N: 3600 / N); `retry_*`: keepalive retry backoff."""
        super().__init__(settings)
        self.client = client
        self._own_client = client is None
        self._policy = KeyPolicy(validity=key_validity, retry_base=retry_base,
                                 retry_max=retry_max, probe_after=probe_after)  # fmt: skip
        self.lifecycle = ListenKeyLifecycle(self._policy)
        self.cache: AccountCache | None = None
        self.reconciler: Reconciler | None = None
        self.keeper: KeyKeeper | None = None
        self.open_timeout = open_timeout
        self.queue_size = queue_size
        self._rand = rand
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.connected = False
        self.reconcile_pending = True
        self._reconcile_wanted = asyncio.Event()  # a refused batch: reconcile again

    # ---- lifecycle hooks ------------------------------------------------------------
    async def setup(self) -> None:
        renewal = float(self.settings.websocket.listen_key_renewal)
        self.lifecycle = ListenKeyLifecycle(replace(self._policy, renewal_interval=renewal))
        if self.client is None:
            self.client = BinanceClient(self.settings, self.redis)
        maxlen = self.bus.maxlen(self.keys.stream_account) if self.bus else 100_000
        self.cache = AccountCache(self.redis, self.keys, maxlen)
        self.reconciler = Reconciler(self.client, self.cache)
        self.keeper = KeyKeeper(self.client, self.lifecycle, self.stop_event, self.sleep,
                                self._rand)  # fmt: skip

    async def run(self) -> None:
        assert self.keeper is not None
        self.spawn(self.keeper.run(), "keepalive", critical=True)
        failures = 0
        ws = self.settings.websocket
        while not self.stopping:
            outcome = await self._session()
            if self.stopping:
                break
            self.counters["reconnects"] += 1
            failures = 0 if outcome in ("key_lost", "served") else failures + 1
            if failures:
                delay = backoff(failures, ws.reconnect_delay, ws.reconnect_max_delay,
                                 self._rand())  # fmt: skip
                log.info("reconnecting", extra={"in_s": round(delay, 3), "after": outcome})
                if not await self.sleep(delay):
                    break

    async def teardown(self) -> None:
        """DELETE the listenKey (the exchange stops the stream), close the REST client."""
        if self.keeper is not None:
            await self.keeper.close()
        if self._own_client and self.client is not None:
            await self.client.close()

    # ---- connection ------------------------------------------------------------------
    def user_stream_url(self, key: str) -> str:
        return f"{self.settings.exchange.user_ws_url}/private/ws/{key}"

    async def _session(self) -> str:
        """One key + socket, until it ends: stopped | key_lost | served | failed."""
        assert self.keeper is not None
        try:
            key = await self.keeper.obtain()
        except AuthError as exc:
            log.error("the API key cannot open a user stream: %s", exc)
            self.request_stop("listenKey refused: bad API key", exit_code=1)
            return "stopped"
        if key is None:
            return "stopped"
        try:
            ws = await connect(
                self.user_stream_url(key), open_timeout=self.open_timeout, ping_interval=20,
                ping_timeout=20, close_timeout=2, max_queue=1024, max_size=2**22, logger=ws_log,
            )  # fmt: skip
        except InvalidStatus as exc:
            self.counters["connect_failures"] += 1
            if exc.response.status_code == 400:  # -1125: the key died before we came
                self.keeper.refused(key)
                return "key_lost"
            log.warning("user stream refused: HTTP %s", exc.response.status_code)
            return "failed"
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.counters["connect_failures"] += 1
            log.warning("user stream connect failed: %s", type(exc).__name__)
            return "failed"
        self.connected = True
        opened = time.monotonic()
        log.info("user stream connected")
        try:
            outcome = await self._serve(ws, key)
            if outcome == "served" and time.monotonic() - opened < STABLE_AFTER:
                outcome = "failed"  # a socket that keeps dropping at once backs off
            return outcome
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await ws.close()

    async def _serve(self, ws: ClientConnection, key: str) -> str:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(self.queue_size)
        reader = asyncio.create_task(self._read(ws, queue), name="account_feed.reader")
        writer = asyncio.create_task(self._write(queue), name="account_feed.writer")
        recon = asyncio.create_task(self._reconcile_loop(), name="account_feed.reconcile")
        assert self.keeper is not None
        lost = asyncio.create_task(self.keeper.key_lost.wait(), name="account_feed.key_lost")
        stop = asyncio.create_task(self.stop_event.wait(), name="account_feed.stop")
        try:
            done, _ = await asyncio.wait(
                {reader, writer, lost, stop}, return_when=asyncio.FIRST_COMPLETED
            )
            if writer in done:
                writer.result()  # a bug in the writer: let it surface
            if reader in done:
                return "served"
            return "key_lost" if lost in done else "stopped"
        finally:
            for task in (reader, recon, lost, stop):
                task.cancel()
            await self._finish_writer(queue, writer)
            await asyncio.gather(reader, recon, lost, stop, return_exceptions=True)

    async def _finish_writer(self, queue: asyncio.Queue[bytes | None], writer: Any) -> None:
        """Let the writer apply what was read (bounded), then stop it."""
        if writer.done():
            return
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), 2.0)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)

    async def _read(self, ws: ClientConnection, queue: asyncio.Queue[bytes | None]) -> None:
        try:
            while True:
                raw = await ws.recv(decode=False)
                self.counters["events_in"] += 1
                await queue.put(raw)
        except ConnectionClosed as exc:
            log.info("user stream closed", extra={"code": exc.rcvd.code if exc.rcvd else None})

    async def _write(self, queue: asyncio.Queue[bytes | None]) -> None:
        while True:
            raw = await queue.get()
            if raw is None:
                return
            batch, end = [raw], False
            while len(batch) < MAX_BATCH and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    end = True
                    break
                batch.append(item)
            await self.handle_batch(batch)
            if end:
                return

    async def handle_batch(self, batch: list[bytes]) -> None:
        """Apply + publish one batch of raw messages; act on listenKeyExpired."""
        self.lifecycle.on_heard(time.monotonic())
        result = process_batch(batch)
        self.counters["bad_messages"] += result.bad
        self.counters["ignored_messages"] += result.ignored
        if result.bad:
            log.warning("bad user-stream messages dropped",
                        extra={"count": result.bad, "reasons": result.reasons})  # fmt: skip
        if result.writes or result.entries:
            applied = await self._apply(result.writes, result.entries)
            if applied is not None:
                self.counters["stale_writes"] += applied.count(False)
                self.counters["events_published"] += len(result.entries)
        if result.last_event_time is not None:
            self.mark_event(result.last_event_time)
        for key in result.expired_keys:
            if self.keeper is not None:
                self.keeper.expired(key)

    async def _apply(self, writes: list[Any], entries: list[Any]) -> list[bool] | None:
        """cache.apply, retried while Redis is unreachable; None if the batch was refused."""
        assert self.cache is not None
        delay = 0.05
        while True:
            try:
                return await self.cache.apply(writes, entries)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.counters["redis_errors"] += 1
                log.warning("redis write failed, retrying: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except RedisError as exc:
                self.counters["redis_errors"] += 1
                log.error("redis refused an account batch (dropped, reconciling): %r", exc)
                self.reconcile_pending = True
                self._reconcile_wanted.set()
                return None

    # ---- reconciliation -------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        """Reconcile after each connect (retrying with backoff until it succeeds), and
        again whenever a batch could not be applied."""
        while True:
            self._reconcile_wanted.clear()
            self.reconcile_pending = True
            attempt = 0
            while True:
                try:
                    await self.reconcile()
                    break
                except (*TRANSIENT, MessageError, RedisError) as exc:
                    attempt += 1
                    self.counters["reconcile_failures"] += 1
                    delay = backoff(attempt, 0.5, 30.0, self._rand())
                    log.warning("reconcile failed: %s; retry in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
            await self._reconcile_wanted.wait()

    async def reconcile(self) -> dict[str, int]:
        """Make the caches equal the exchange now (see reconcile.py)."""
        assert self.reconciler is not None
        summary = await self.reconciler.run()
        self.reconcile_pending = False
        self.counters["reconciliations"] += 1
        log.info("reconciled", extra=summary)
        return summary

    # ---- health ---------------------------------------------------------------------------
    def _wall_ms(self, mono: float | None) -> int | None:
        if mono is None:
            return None
        return int((time.time() - time.monotonic() + mono) * 1000)

    def stats(self) -> dict[str, Any]:
        lc = self.lifecycle
        c = lc.counters
        last = self._wall_ms(lc.last_renewal)
        nxt = self._wall_ms(lc.due()) if lc.valid and lc.next_at is not None else None
        rate = lc.success_rate
        return {
            "connected": self.connected,
            "listen_key_valid": lc.valid,
            "last_renewal": last,  # ms; the reporter reads these two
            "next_renewal": nxt,
            **self.counters,
            "renewal_attempts": c["renewal_attempts"],
            "renewal_successes": c["renewal_successes"],
            "renewal_failures": c["renewal_failures"],
            "renewal_success_rate": None if rate is None else round(rate, 6),
            "renewals_ok": c["renewal_successes"],  # the reporter's names
            "renewals_failed": c["renewal_failures"],
            "keys_created": c["keys_created"],
            "key_create_failures": self.keeper.create_failures if self.keeper else 0,
            "key_invalidations": c["key_invalidations"],
            "reconcile_pending": self.reconcile_pending,
            "leverage_source": self.reconciler.leverage_source if self.reconciler else "",
            "bad_rest_rows": self.reconciler.bad_rows if self.reconciler else 0,
            "last_event_time": self.last_event_time,
            "account_feed": {  # the seed's get_stats() block, verbatim shape
                "connected": self.connected,
                "listen_key_valid": lc.valid,
                "last_renewal": iso_ms(last),
                "next_renewal": iso_ms(nxt),
            },
            "rest": self.client.stats() if self.client is not None else {},
        }

    def healthy(self) -> bool | Status:
        """Degraded (alive, rest_fallback covers) while not listening or not reconciled."""
        if not self.connected or not self.lifecycle.valid or self.reconcile_pending:
            return "degraded"
        return True
