"""The model's life in the running trader: cold start, restart, learning, retraining.

- History: closed klines over REST (`fetch_closed_klines`, paged backwards, only rows
  proven closed) or Binance kline CSV files (`history_from_files`), as `labels.Bars`.
- Start (`ModelLifecycle.start`): the version id in `Keys.model_current` is loaded from the
  model store INSTEAD of retraining (a missing/unreadable one is logged and counted, then
  the newest compatible stored model is tried, then a cold start).  Cold start: label the
  history with the strategy's own barriers (`labels.build_cold_start`) and train once,
  before the first trade.  After a restart the same history is added as samples without
  training, so the next retrain learns from the same base as before.
- Every accepted model: id in `Keys.model_current`, metadata (training window, sample
  counts, holdout metrics, parent) in `Keys.model_history`.  A challenger that does not
  beat the champion on the walk-forward holdout is discarded; that is logged and counted.
- Closed trades (`on_trade`): each trade id once (`SADD Keys.learner_seen`), then the core
  (win rate + learning sample).  On start `restore_trades` re-reads `Keys.stream_trades`
  and gives the learner back the trades it had already taken (in-memory samples do not
  survive a restart; the stream does), without counting them as new.
- Retraining (after `model.retrain_after_trades` new samples, or every
  `model.retrain_interval_hours` of event time) runs in a worker thread, one at a time;
  the learner swaps its champion with one assignment, so decisions never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from services.trader.core import TraderCore
from services.trader.labels import Bars, ColdStartData, build_cold_start, read_kline_csv
from services.trader.learner import Learner, ModelError, TrainReport
from services.trader.signals import SignalParams
from shared.codec import decode_event
from shared.errors import MessageError
from shared.keys import Keys
from shared.kline_publisher import closed_rest_klines
from shared.models import ClosedTrade, Kline

log = logging.getLogger(__name__)

MAX_LIMIT = 1500
_SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
Spawn = Callable[[Coroutine[Any, Any, Any], str], Any]


# ---- history ------------------------------------------------------------------------------
async def fetch_closed_klines(client: Any, symbol: str, interval: str, bars: int) -> list[Kline]:
    """The latest `bars` closed klines of `symbol`, oldest first (pages of 1500 backwards;
    the still-open candle is dropped because nothing proves it closed)."""
    out: list[Kline] = []
    end: int | None = None
    while len(out) < bars:
        limit = max(2, min(MAX_LIMIT, bars - len(out) + (1 if end is None else 0)))
        rows = await client.klines(symbol, interval, end_time=end, limit=limit)
        now = int(time.time() * 1000)
        page = closed_rest_klines(
            symbol, interval, rows, proven_upto=None if not out else out[0].open_time,
            received_ms=now, exchange_ms=now,
        )  # fmt: skip
        page = [k for k in page if not out or k.open_time < out[0].open_time]
        if not page:
            break
        out = page + out
        if len(rows) < limit:
            break
        end = page[0].open_time - 1
    return out[-bars:]


def bars_of(klines: Sequence[Kline]) -> Bars:
    def col(name: str) -> np.ndarray:
        return np.array([getattr(k, name) for k in klines], dtype=np.float64)

    return Bars(np.array([k.open_time for k in klines], dtype=np.int64), col("open"), col("high"),
                col("low"), col("close"), col("volume"), col("quote_volume"), col("trades"),
                col("taker_buy_volume"))  # fmt: skip


def symbol_of_file(spec: str) -> tuple[str, Path]:
    """`SYMBOL=path`, or the symbol from the file name: `AVAXUSDT-1m-2023-02.csv`,
    `BTC_USDT_USDT-1m-futures.csv.gz` (freqtrade) -> BTCUSDT."""
    if "=" in spec:
        symbol, _, path = spec.partition("=")
        return symbol.strip().upper(), Path(path.strip())
    path = Path(spec)
    parts = path.name.split("-")[0].upper().split("_")
    symbol = parts[0] + parts[1] if len(parts) >= 2 else parts[0]
    if not _SYMBOL_RE.fullmatch(symbol):
        raise ValueError(f"cannot tell the symbol of {spec!r}; write SYMBOL=path")
    return symbol, path


def history_from_files(specs: Iterable[str]) -> dict[str, Bars]:
    out = {}
    for spec in specs:
        symbol, path = symbol_of_file(spec)
        out[symbol] = read_kline_csv(path)
    return out


# ---- lifecycle ----------------------------------------------------------------------------
def meta_json(report: TrainReport, learner: Learner, trigger: str) -> bytes:
    """`Keys.model_history` value: the stored metadata plus why it was trained."""
    assert learner.champion is not None
    meta = asdict(learner.champion.meta)
    meta.update(trigger=trigger, reason=report.reason,
                champion_metrics=report.champion)  # fmt: skip
    return orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY, default=_nan_safe)


def _nan_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)


class ModelLifecycle:
    def __init__(
        self, settings: Any, redis: Any, keys: Keys, core: TraderCore, learner: Learner,
        params: SignalParams, spawn: Spawn,
    ) -> None:  # fmt: skip
        self.settings, self.redis, self.keys = settings, redis, keys
        self.core, self.learner, self.params, self._spawn = core, learner, params, spawn
        self.source = "baseline"  # redis | store | cold_start | baseline
        self.training = False
        self.last_report: dict[str, Any] = {}
        self.counters = dict.fromkeys(
            ("loads", "trainings", "accepted", "rejected", "errors", "trades_learned",
             "trades_duplicate", "trades_restored", "samples_restored", "bad_trades"), 0,
        )  # fmt: skip

    @property
    def version(self) -> str:
        return self.learner.current_version or "baseline"

    async def cold_data(self, history: Mapping[str, Bars] | None) -> ColdStartData | None:
        """Labelled samples from `history` (REST) or the configured files; None when the
        cold start is off or there is nothing to label."""
        cfg = self.settings.model
        if cfg.cold_start == "off":
            return None
        if cfg.cold_start == "file":
            history = await asyncio.to_thread(history_from_files, cfg.cold_start_files)
        if not history:
            return None
        horizon, fee = cfg.label_horizon, float(self.settings.exchange.taker_fee)
        return await asyncio.to_thread(build_cold_start, history, self.params, horizon, fee)

    async def start(self, history: Mapping[str, Bars] | None) -> str:
        """Load the current version, or the newest stored one, or cold-start (module doc)."""
        raw = await self.redis.get(self.keys.model_current)
        if raw:
            version = raw.decode()
            try:
                await asyncio.to_thread(self.learner.load, version)
                self.source, self.counters["loads"] = "redis", self.counters["loads"] + 1
            except (ModelError, OSError, ValueError) as exc:  # XGBoostError is a ValueError
                self.counters["errors"] += 1
                log.error("model %s from Redis not loadable: %s", version, exc)
        if self.learner.champion is None and self.learner.store is not None:
            try:
                if await asyncio.to_thread(self.learner.load_latest):
                    self.source, self.counters["loads"] = "store", self.counters["loads"] + 1
                    await self._set_current(None, "store")
            except (ModelError, OSError, ValueError) as exc:
                self.counters["errors"] += 1
                log.error("stored models not loadable: %s", exc)
        data = await self.cold_data(history)
        if self.learner.champion is not None:
            if data is not None and len(data.y):  # restore the base, do not train
                self.learner.add_samples(data.X, data.y, data.times)
                self.counters["samples_restored"] += len(data.y)
            self.learner.last_train_ms = self.learner.champion.meta.created_at_ms
            log.info("model %s loaded (%s), not retrained", self.version, self.source)
        elif data is not None and len(data.y):
            report = await self._train(
                lambda: self.learner.fit_cold_start(data.X, data.y, {"times": data.times})
            )
            await self._record(report, "cold_start")
            if report is not None and report.accepted:
                self.source = "cold_start"
        return self.source

    async def restore_trades(self, chunk: int = 500) -> int:
        """Give the learner back the trades it had taken before a restart (module doc)."""
        after, restored = "-", 0
        while True:
            batch = await self.redis.xrange(self.keys.stream_trades, min=after, count=chunk)
            trades = [t for t in (self._parse(f) for _i, f in batch) if t is not None]
            if trades:
                seen = await self.redis.smismember(self.keys.learner_seen,
                                                   [t.trade_id for t in trades])  # fmt: skip
                for trade, known in zip(trades, seen, strict=True):
                    if known and self.core.on_closed_trade(trade):
                        restored += 1
            if len(batch) < chunk:
                break
            last = batch[-1][0]
            after = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        self.counters["trades_restored"] += restored
        if self.source in ("redis", "store"):
            self.learner.new_samples = 0  # restored, not new: no retrain for them
        return restored

    def _parse(self, fields: dict[Any, Any]) -> ClosedTrade | None:
        try:
            return parse_trade(fields)
        except MessageError:
            self.counters["bad_trades"] += 1
            return None

    async def on_trade(self, trade: ClosedTrade) -> bool:
        """Each trade id once (Redis set), then win rate + learning sample; may retrain."""
        if not await self.redis.sadd(self.keys.learner_seen, trade.trade_id):
            self.counters["trades_duplicate"] += 1
            return False
        self.core.on_closed_trade(trade)
        self.counters["trades_learned"] += 1
        self.maybe_retrain(trade.exit_time)
        return True

    def maybe_retrain(self, now_ms: int) -> None:
        """Start a retrain in a worker thread when one is due and none is running."""
        if self.training or not self.learner.should_retrain(now_ms):
            return
        self.training = True
        self._spawn(self._retrain(now_ms), "retrain")

    async def _retrain(self, now_ms: int) -> None:
        try:
            report = await self._train(lambda: self.learner.maybe_retrain(now_ms))
            await self._record(report, "retrain")
        finally:
            self.training = False

    async def _train(self, fn: Callable[[], TrainReport | None]) -> TrainReport | None:
        self.training = True
        try:
            report = await asyncio.to_thread(fn)
        except Exception as exc:  # the model boundary: a failed training never stops trading
            self.counters["errors"] += 1
            log.exception("training failed: %r", exc)
            return None
        finally:
            self.training = False
        if report is not None:
            self.counters["trainings"] += 1
        return report

    async def _record(self, report: TrainReport | None, trigger: str) -> None:
        if report is None:
            return
        self.last_report = {"trigger": trigger, "accepted": report.accepted,
                            "reason": report.reason, "n_train": report.n_train,
                            "n_holdout": report.n_holdout, **{f"challenger_{k}": v for k, v in
                                                              report.challenger.items()}}  # fmt: skip
        if not report.accepted:
            self.counters["rejected"] += 1
            log.warning("challenger discarded (%s): %s", trigger, report.reason,
                        extra={"challenger": report.challenger, "champion": report.champion})  # fmt: skip
            return
        self.counters["accepted"] += 1
        await self._set_current(report, trigger)

    async def _set_current(self, report: TrainReport | None, trigger: str) -> None:
        champion = self.learner.champion
        if champion is None:
            return
        version = champion.meta.version
        if report is None:
            report = TrainReport(True, trigger, version, champion.meta.n_train,
                                 champion.meta.n_holdout)  # fmt: skip
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self.keys.model_history, version, meta_json(report, self.learner, trigger)
                )
                pipe.set(self.keys.model_current, version)
                await pipe.execute()
        except Exception as exc:  # the file is saved; the next start finds it in the store
            self.counters["errors"] += 1
            log.error("model %s saved but not recorded in Redis: %r", version, exc)
            return
        log.info("model %s is current (%s)", version, trigger)

    def stats(self) -> dict[str, Any]:
        champion = self.learner.champion
        return {
            "model_version": self.version,
            "model_source": self.source,
            "model_training": self.training,
            "model_samples": self.learner.n_samples,
            "model_new_samples": self.learner.new_samples,
            "model_auc": None if champion is None else champion.meta.metrics.get("auc"),
            **{f"model_{k}_total": v for k, v in self.counters.items()},
            "model_last_report": orjson.dumps(self.last_report, default=str).decode(),
        }  # fmt: skip


def parse_trade(fields: dict[Any, Any]) -> ClosedTrade:
    """A ClosedTrade from a `Keys.stream_trades` entry (the trade, or under `trade`)."""
    _etype, data, _meta = decode_event(fields)
    body = data.get("trade") if isinstance(data.get("trade"), dict) else data
    return ClosedTrade.from_dict(body)  # type: ignore[no-any-return]
