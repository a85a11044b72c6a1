"""The self-learning part: an XGBoost model of P(trade profitable net of fees).

Life cycle
- Cold start: `fit_cold_start(X, y, meta)` with triple-barrier-labelled history (labels.py).
- Every closed trade adds one sample (`add_closed_trade`, idempotent per trade id).
- Retrain after `model.retrain_after_trades` new samples, or when `model.retrain_interval_hours`
  passed since the last attempt and at least `model.retrain_min_new_trades` new samples
  arrived (the caller passes event time; `should_retrain` says why the minimum).
- Walk-forward gate: the challenger trains on the older samples and is scored on the most
  recent `holdout` ones (time-ordered split, training rows whose label horizon reaches into
  the holdout purged).  It replaces the champion ONLY if its holdout
  AUC beats the champion's AUC on the same rows by more than `min_auc_gain`; with no
  champion it must beat a random ranking (AUC 0.5) by that margin.  WHY AUC: it is
  rank-based, so it does not move under the monotone calibration fitted on that holdout, and
  the gate cannot be won by calibration alone.  The champion may have trained on part of the
  holdout, which favours the champion: the bias is towards keeping what works.
- Calibration: Platt scaling of the booster's margin on the holdout (two parameters, Platt's
  smoothed targets, Newton with backtracking), so `predict` returns a probability.
- Models are data: booster in XGBoost's UBJ format + metadata JSON (`ModelStore`); a model
  whose feature list or features version differs from the code is refused (`FeatureMismatch`).

Training is CPU work (~1 s for 10k rows, `nthread` threads): the service may run
`maybe_retrain` in a worker thread; it snapshots samples first and swaps the champion with one
assignment.  Inference: batches of up to `COMPILED_MAX_ROWS` rows (a minute's usual few
candidates) go through the booster compiled to numpy arrays (tree_eval.py: bit-identical
margins, ~20-40 us instead of XGBoost's ~0.1-0.4 ms per call); larger ones through XGBoost
with `predict_nthread` (default 1): for a few hundred rows one thread takes ~0.3 ms, while two
OpenMP threads wait on each other for 20-30 ms at p99 when the other core is busy (measured
on these 2-core machines).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from scipy.stats import rankdata

from services.trader.signals import MODEL_FEATURE_NAMES, MODEL_FEATURES_VERSION
from services.trader.tree_eval import CompiledTrees, compile_booster

__all__ = [
    "FeatureMismatch", "Learner", "ModelError", "ModelMeta", "ModelNotFound", "ModelStore", "NoModel",
    "TrainReport", "TrainedModel", "auc", "fit_platt", "log_loss",
]  # fmt: skip

log = logging.getLogger(__name__)
COMPILED_MAX_ROWS = 32  # larger batches: XGBoost's own loop is faster than numpy's


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties averaged); NaN for a single class."""
    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def fit_platt(margin: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """(a, b) minimising the log-loss of sigmoid(a*margin + b) against Platt's smoothed
    targets; a >= 0 so calibration never reverses the model's ranking."""
    m, y = np.asarray(margin, np.float64), np.asarray(y, np.float64)
    n1 = y.sum()
    n0 = len(y) - n1
    t = np.where(y > 0, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))

    def loss(a: float, b: float) -> float:
        z = a * m + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    a, b, cur = 1.0, 0.0, loss(1.0, 0.0)
    for _ in range(iters):
        p = _sigmoid(a * m + b)
        w = p * (1.0 - p) + 1e-12
        g = np.array([np.sum((p - t) * m), np.sum(p - t)])
        h = np.array([[np.sum(w * m * m) + 1e-9, np.sum(w * m)], [np.sum(w * m), np.sum(w) + 1e-9]])
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= cur:
                break
            scale *= 0.5
        else:
            break
        a, b, done = na, nb, cur - new < 1e-12
        cur = new
        if done:
            break
    return max(a, 0.0), b


# ---- models as data ---------------------------------------------------------------------
class ModelError(Exception):
    """Anything wrong with the model; the trader core turns it into `model_error`, never
    into an order."""


class NoModel(ModelError):
    """No champion yet (cold start not done): the core falls back to the signal score."""


class FeatureMismatch(ModelError):
    """Stored model or sample built for other features than this code computes."""

    def __init__(self, expected: Sequence[str], got: Sequence[str], where: str) -> None:
        self.expected, self.got, self.where = tuple(expected), tuple(got), where
        diff = sorted(set(self.expected) ^ set(self.got))[:5]
        super().__init__(f"{where}: feature mismatch (differing: {diff or list(self.got)[:3]})")


class ModelNotFound(ModelError):
    def __init__(self, version: str, directory: str) -> None:
        self.version, self.directory = version, directory
        super().__init__(f"model {version!r} not found in {directory}")


_VERSION_RE = re.compile(r"[0-9]{1,16}-[0-9a-f]{10}")


@dataclass(frozen=True, slots=True)
class ModelMeta:
    version: str  # "<created_at_ms>-<sha256 of the UBJ bytes, 10 hex>"
    features: tuple[str, ...]
    features_version: str
    window_start_ms: int  # training window (sample event times)
    window_end_ms: int
    n_train: int
    n_holdout: int
    metrics: dict[str, float]  # holdout: auc, log_loss, base_rate, champion_* when compared
    calibration: tuple[float, float]  # Platt (a, b) on the booster margin
    created_at_ms: int  # the caller's event time, never the clock
    parent: str | None = None  # the champion it replaced


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A booster and its metadata.  `trees`: the booster compiled to numpy arrays
    (tree_eval.py: the same margins, bit for bit, without XGBoost's ~0.1-0.4 ms per call),
    used for batches up to `COMPILED_MAX_ROWS`; None when the booster cannot be compiled."""

    booster: xgb.Booster
    meta: ModelMeta
    trees: CompiledTrees | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.trees is None:
            object.__setattr__(self, "trees", compile_booster(self.booster))

    def margin(self, X: np.ndarray) -> np.ndarray:
        """Raw booster margins (float32), one per row."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.meta.features):
            raise FeatureMismatch(self.meta.features, (f"X shape {X.shape}",), "predict")
        if self.trees is not None and len(X) <= COMPILED_MAX_ROWS:
            return self.trees.margin(X)
        return np.asarray(self.booster.inplace_predict(X, predict_type="margin"))

    def predict(self, X: np.ndarray) -> np.ndarray:
        a, b = self.meta.calibration
        return _sigmoid(a * np.asarray(self.margin(X), np.float64) + b)


class ModelStore:
    """Versioned models in `model.dir`: `<version>.ubj` (XGBoost's own format) and
    `<version>.json` (metadata, written last: a version exists once its JSON does)."""

    def __init__(self, directory: str | Path, nthread: int = 1) -> None:
        self.dir, self.nthread = Path(directory), nthread

    def _path(self, version: str, ext: str) -> Path:
        if not _VERSION_RE.fullmatch(version):
            raise ModelNotFound(version, str(self.dir))
        return self.dir / f"{version}.{ext}"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def save(self, model: TrainedModel) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        v = model.meta.version
        self._write(self._path(v, "ubj"), bytes(model.booster.save_raw("ubj")))
        self._write(self._path(v, "json"), json.dumps(asdict(model.meta), indent=1).encode())
        return v

    def versions(self) -> list[str]:
        """Stored versions, oldest first (by creation time, then id)."""
        if not self.dir.is_dir():
            return []
        found = [p.stem for p in self.dir.glob("*.json") if _VERSION_RE.fullmatch(p.stem)]
        return sorted(found, key=lambda v: (int(v.split("-")[0]), v))

    def load(self, version: str, features: Sequence[str], features_version: str) -> TrainedModel:
        """The stored model, refused (`FeatureMismatch`) unless built for these features."""
        meta_path = self._path(version, "json")
        if not meta_path.exists():
            raise ModelNotFound(version, str(self.dir))
        raw = json.loads(meta_path.read_text())
        meta = ModelMeta(**{**raw, "features": tuple(raw["features"]),
                            "calibration": tuple(raw["calibration"])})  # fmt: skip
        if meta.features != tuple(features) or meta.features_version != features_version:
            raise FeatureMismatch(features, meta.features, f"model {version}")
        booster = xgb.Booster(model_file=str(self._path(version, "ubj")))
        booster.set_param({"nthread": self.nthread})
        if booster.num_features() != len(meta.features):
            raise FeatureMismatch(features, (f"{booster.num_features()} in booster",), version)
        return TrainedModel(booster, meta)

    def load_latest(self, features: Sequence[str], features_version: str) -> TrainedModel | None:
        """Newest version that matches the code's features (others are skipped)."""
        for version in reversed(self.versions()):
            try:
                return self.load(version, features, features_version)
            except FeatureMismatch:
                log.warning("skipping model %s: feature mismatch", version)
        return None


@dataclass(frozen=True, slots=True)
class TrainReport:
    accepted: bool
    reason: str
    version: str | None  # the champion's version after this attempt
    n_train: int
    n_holdout: int
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)


class Learner:
    """Champion/challenger XGBoost learner; pure apart from the optional `ModelStore`."""

    def __init__(
        self,
        cfg: Any,
        *,
        store: ModelStore | None = None,
        feature_names: Sequence[str] = MODEL_FEATURE_NAMES,
        features_version: str = MODEL_FEATURES_VERSION,
        nthread: int = 2,
        predict_nthread: int = 1,
        seed: int = 0,
        holdout_fraction: float = 0.25,
        min_holdout: int = 50,
        min_auc_gain: float = 0.01,
        max_samples: int = 50_000,
    ) -> None:
        self.cfg, self.store = cfg, store
        self.feature_names = tuple(feature_names)
        self.features_version = features_version
        self.nthread, self.predict_nthread, self.seed = nthread, predict_nthread, seed
        self.holdout_fraction, self.min_holdout = holdout_fraction, min_holdout
        self.min_auc_gain, self.max_samples = min_auc_gain, max_samples
        self.champion: TrainedModel | None = None
        self._rows: list[np.ndarray] = []
        self._y: list[int] = []
        self._t: list[int] = []
        self._seen: dict[str, None] = {}  # trade ids, insertion-ordered for trimming
        self._lock = threading.Lock()
        self.new_samples = 0
        self.last_train_ms: int | None = None

    # ---- state -------------------------------------------------------------------------
    @property
    def current_version(self) -> str | None:
        return None if self.champion is None else self.champion.meta.version

    @property
    def n_samples(self) -> int:
        return len(self._y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(profit net of fees), one per row; one batched model call."""
        champion = self.champion
        if champion is None:
            raise NoModel("no trained model yet")
        return champion.predict(X)

    def load(self, version: str) -> str:
        """Make a stored version the champion (the service keeps the id in Redis)."""
        self.champion = self._require_store().load(
            version, self.feature_names, self.features_version
        )
        return self.champion.meta.version

    def load_latest(self) -> str | None:
        model = self._require_store().load_latest(self.feature_names, self.features_version)
        if model is not None:
            self.champion = model
        return self.current_version

    def _require_store(self) -> ModelStore:
        if self.store is None:
            raise ModelError("learner has no model store")
        return self.store

    # ---- samples -----------------------------------------------------------------------
    def _row(self, features: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(features, Mapping):
            missing = [n for n in self.feature_names if n not in features]
            if missing:
                raise FeatureMismatch(self.feature_names, tuple(features), "sample")
            return np.array([float(features[n]) for n in self.feature_names])
        row = np.asarray(features, dtype=np.float64).reshape(-1)
        if len(row) != len(self.feature_names):
            raise FeatureMismatch(self.feature_names, (f"{len(row)} values",), "sample")
        return row

    def _append(self, row: np.ndarray, label: int, time_ms: int) -> None:
        with self._lock:  # retrain may snapshot from a worker thread
            self._rows.append(row)
            self._y.append(label)
            self._t.append(time_ms)
            if len(self._y) > self.max_samples:
                drop = len(self._y) - self.max_samples
                del self._rows[:drop], self._y[:drop], self._t[:drop]

    def add_closed_trade(
        self,
        features: Mapping[str, float] | Sequence[float] | np.ndarray,
        net_pnl: float,
        trade_id: str,
        event_time_ms: int | None = None,
    ) -> bool:
        """One labelled sample (label = net_pnl > 0).  False if this trade id was seen:
        trades are replayed after restarts and must count once."""
        if trade_id in self._seen:
            return False
        row = self._row(features)
        self._seen[trade_id] = None
        if len(self._seen) > 4 * self.max_samples:
            for old in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[old]
        t = event_time_ms if event_time_ms is not None else (self._t[-1] if self._t else 0)
        self._append(row, int(float(net_pnl) > 0.0), int(t))
        self.new_samples += 1
        return True

    # ---- training ----------------------------------------------------------------------
    def add_samples(self, X: np.ndarray, y: np.ndarray, times: np.ndarray | None = None) -> int:
        """Labelled history as samples, without training: a restarted service that loaded
        its champion from the store restores the base its next retrain learns from."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names) or len(X) != len(y):
            raise FeatureMismatch(self.feature_names, (f"X shape {X.shape}",), "samples")
        t = np.zeros(len(y), np.int64) if times is None else np.asarray(times, dtype=np.int64)
        for i in np.argsort(t, kind="stable"):
            self._append(X[i], int(y[i] > 0), int(t[i]))
        return len(y)

    def fit_cold_start(self, X: np.ndarray, y: np.ndarray, meta: Mapping[str, Any]) -> TrainReport:
        """Seed samples from labelled history (once, at the first start) and train.  meta:
        optional `times` (ms per row) and `created_at_ms` (event time; default: last time)."""
        times = meta.get("times")
        self.add_samples(X, y, times)
        last = int(np.max(times)) if times is not None and len(times) else 0
        return self.retrain(int(meta.get("created_at_ms", last)))

    def should_retrain(self, now_ms: int) -> bool:
        """Enough samples, something new, and either `retrain_after_trades` new samples,
        no model trained yet, or `retrain_interval_hours` since the last attempt with at
        least `retrain_min_new_trades` new samples.  WHY the minimum: a challenger that
        differs from the last one by a sample or two costs a full training, is nearly
        always rejected, and each extra try of the gate is one more chance to accept a
        challenger that only won the holdout by noise."""
        new, cfg = self.new_samples, self.cfg
        if self.n_samples < cfg.min_train_samples or new == 0:
            return False
        if new >= cfg.retrain_after_trades or self.last_train_ms is None:
            return True
        if new < getattr(cfg, "retrain_min_new_trades", 1):
            return False
        return now_ms - self.last_train_ms >= cfg.retrain_interval_hours * 3_600_000

    def maybe_retrain(self, now_ms: int) -> TrainReport | None:
        return self.retrain(now_ms) if self.should_retrain(now_ms) else None

    def retrain(self, now_ms: int) -> TrainReport:
        """Walk-forward: train on older samples, gate on the most recent ones.  Training rows
        within `model.label_horizon` minutes before the holdout are purged (when the samples
        carry times): their labels were decided by bars inside the holdout period."""
        with self._lock:
            rows, ys, ts = list(self._rows), list(self._y), list(self._t)
        order = np.argsort(np.array(ts, dtype=np.int64), kind="stable")
        X, y, t = np.array(rows)[order], np.array(ys)[order], np.array(ts, dtype=np.int64)[order]
        self.new_samples, self.last_train_ms = 0, now_ms
        n = len(y)
        h = max(self.min_holdout, math.ceil(self.holdout_fraction * n))
        cut = max(n - h, 0)
        if 0 < cut and t[cut] > t[0]:  # rows carry times (cold start without times: no purge)
            purge_ms = int(getattr(self.cfg, "label_horizon", 0)) * 60_000
            cut = int(np.searchsorted(t[:cut], t[cut] - purge_ms, side="left"))
        if n < self.cfg.min_train_samples or cut < self.min_holdout:
            return self._reject("not_enough_samples", n, 0)
        window = (int(t[0]), int(t[cut - 1]))
        return self.propose(X[:cut], y[:cut], X[n - h :], y[n - h :], now_ms, window)

    def _reject(self, reason: str, n_train: int, n_hold: int, **kw: Any) -> TrainReport:
        log.info("challenger rejected: %s", reason, extra={"reason": reason, **kw})
        return TrainReport(False, reason, self.current_version, n_train, n_hold, **kw)

    def _train(self, X: np.ndarray, y: np.ndarray) -> xgb.Booster:
        params = {
            "objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
            "max_depth": self.cfg.max_depth, "eta": self.cfg.learning_rate,
            "subsample": 0.8, "colsample_bytree": 0.8, "min_child_weight": 1.0,
            "nthread": self.nthread, "seed": self.seed,
        }  # fmt: skip
        dtrain = xgb.DMatrix(
            X, label=y, feature_names=list(self.feature_names), nthread=self.nthread
        )
        booster = xgb.train(params, dtrain, num_boost_round=self.cfg.n_estimators)
        booster.set_param({"nthread": self.predict_nthread})  # see the module doc
        return booster

    def propose(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_hold: np.ndarray,
        y_hold: np.ndarray,
        now_ms: int,
        window: tuple[int, int] = (0, 0),
    ) -> TrainReport:
        """Train a challenger and let it replace the champion only if it wins on the holdout."""
        nt, nh = len(y_train), len(y_hold)
        if len(set(np.asarray(y_train).tolist())) < 2:
            return self._reject("train_single_class", nt, nh)
        if len(set(np.asarray(y_hold).tolist())) < 2:
            return self._reject("holdout_single_class", nt, nh)
        booster = self._train(X_train, y_train)
        margin = booster.inplace_predict(
            np.ascontiguousarray(X_hold, np.float64), predict_type="margin"
        )
        a, b = fit_platt(margin, y_hold)
        ch = {"auc": auc(y_hold, margin), "log_loss": log_loss(y_hold, _sigmoid(a * margin + b)),
              "base_rate": float(np.mean(y_hold))}  # fmt: skip
        champ: dict[str, float] = {}
        ref, reason = 0.5, "accepted_first_model"
        if self.champion is not None:
            p_champ = self.champion.predict(X_hold)
            champ = {"auc": auc(y_hold, p_champ), "log_loss": log_loss(y_hold, p_champ)}
            ref, reason = champ["auc"], "accepted_better_auc"
        if not ch["auc"] > ref + self.min_auc_gain:
            why = "not_better_than_champion" if champ else "not_better_than_random"
            return self._reject(why, nt, nh, challenger=ch, champion=champ)
        raw = bytes(booster.save_raw("ubj"))
        meta = ModelMeta(
            version=f"{int(now_ms)}-{hashlib.sha256(raw).hexdigest()[:10]}",
            features=self.feature_names, features_version=self.features_version,
            window_start_ms=window[0], window_end_ms=window[1], n_train=nt, n_holdout=nh,
            metrics={**ch, **{f"champion_{k}": v for k, v in champ.items()}},
            calibration=(float(a), float(b)), created_at_ms=int(now_ms),
            parent=self.current_version,
        )  # fmt: skip
        model = TrainedModel(booster, meta)
        if self.store is not None:
            self.store.save(model)
        self.champion = model
        log.info("challenger accepted: %s", meta.version, extra={"reason": reason, **ch})
        return TrainReport(True, reason, meta.version, nt, nh, ch, champ)
