"""Learner: learns a planted pattern, gates challengers walk-forward, models as data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xgboost as xgb

from services.trader.learner import (
    COMPILED_MAX_ROWS,
    FeatureMismatch,
    Learner,
    ModelNotFound,
    ModelStore,
    NoModel,
    TrainedModel,
    auc,
    fit_platt,
    log_loss,
)
from services.trader.signals import MODEL_FEATURE_NAMES, MODEL_FEATURES_VERSION
from services.trader.tree_eval import CompiledTrees, _exact_base, compile_booster, probe_rows
from shared.config import load_settings

F = len(MODEL_FEATURE_NAMES)
HOUR = 3_600_000


def cfg(**kw):
    base = dict(min_train_samples=100, retrain_after_trades=20, retrain_interval_hours=24,
                n_estimators=50, max_depth=3, learning_rate=0.1)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label depends on features 0 and 3 (with an interaction); the rest is noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F))
    logit = 2.5 * X[:, 0] - 2.0 * X[:, 3] * (X[:, 5] > 0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_metrics_helpers() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert log_loss(y, np.full(4, 0.5)) == pytest.approx(np.log(2))


def test_platt_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(0, 2, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(0.5 * m - 1.0)))).astype(int)
    a, b = fit_platt(m, y)
    assert a == pytest.approx(0.5, abs=0.08) and b == pytest.approx(-1.0, abs=0.12)
    assert fit_platt(-m, y)[0] == 0.0  # never reverses the ranking


def test_learns_planted_pattern(tmp_path: Path) -> None:
    learner = Learner(cfg(), store=ModelStore(tmp_path))
    with pytest.raises(NoModel):
        learner.predict(np.zeros((1, F)))
    X, y = planted(400, seed=1)
    report = learner.fit_cold_start(X, y, {"times": np.arange(400) * 60_000})
    assert report.accepted and report.reason == "accepted_first_model"
    assert report.n_train + report.n_holdout == 400 and report.n_holdout >= 50
    Xt, yt = planted(1500, seed=2)
    p = learner.predict(Xt)
    assert p.shape == (1500,) and ((p > 0) & (p < 1)).all()
    assert auc(yt, p) > 0.75
    assert abs(p.mean() - yt.mean()) < 0.1  # calibrated to the base rate
    assert learner.current_version == report.version
    # inference runs on one thread (robust latency on a busy 2-core box), training on two
    config = json.loads(learner.champion.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "1"


def test_rejects_worse_challenger_and_accepts_better() -> None:
    learner = Learner(cfg())
    X, y = planted(400, seed=4)
    learner.fit_cold_start(X, y, {})
    champion = learner.current_version
    Xh, yh = planted(300, seed=5)
    Xs, ys = planted(400, seed=6)
    shuffled = np.random.default_rng(0).permutation(ys)
    bad = learner.propose(Xs, shuffled, Xh, yh, now_ms=10 * HOUR)
    assert not bad.accepted and bad.reason == "not_better_than_champion"
    assert bad.challenger["auc"] < bad.champion["auc"]
    assert learner.current_version == champion
    # a champion trained on noise (forced in with a negative margin) loses to a real one
    weak = Learner(cfg(), min_auc_gain=-1.0)
    assert weak.propose(Xs, shuffled, Xh, yh, now_ms=1).accepted
    weak.min_auc_gain = 0.01
    good = weak.propose(Xs, ys, Xh, yh, now_ms=2)
    assert good.accepted and good.reason == "accepted_better_auc"
    assert good.challenger["auc"] > good.champion["auc"] + 0.01
    # with no champion, noise must beat a random ranking, and does not
    fresh = Learner(cfg())
    noise = fresh.propose(Xs, shuffled, Xh, np.random.default_rng(1).permutation(yh), now_ms=3)
    assert not noise.accepted and noise.reason == "not_better_than_random"
    assert fresh.champion is None


def test_single_class_and_small_data_are_rejected_with_reasons() -> None:
    learner = Learner(cfg())
    X, y = planted(200, seed=7)
    assert learner.propose(X, np.ones(200, int), X, y, 1).reason == "train_single_class"
    assert learner.propose(X, y, X, np.zeros(200, int), 1).reason == "holdout_single_class"
    assert learner.fit_cold_start(X[:60], y[:60], {}).reason == "not_enough_samples"
    assert learner.champion is None


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    learner = Learner(cfg(), store=store)
    X, y = planted(300, seed=8)
    v = learner.fit_cold_start(
        X, y, {"times": 1_000 + np.arange(300), "created_at_ms": 5 * HOUR}
    ).version
    assert store.versions() == [v] and v.startswith(f"{5 * HOUR}-")
    meta = json.loads((tmp_path / f"{v}.json").read_text())
    assert meta["features"] == list(MODEL_FEATURE_NAMES)
    assert meta["features_version"] == MODEL_FEATURES_VERSION
    assert meta["created_at_ms"] == 5 * HOUR and meta["window_start_ms"] == 1_000
    assert {"auc", "log_loss"} <= set(meta["metrics"]) and meta["n_train"] > 0
    assert (tmp_path / f"{v}.ubj").stat().st_size > 0

    other = Learner(cfg(), store=store)
    assert other.load(v) == v
    np.testing.assert_allclose(other.predict(X), learner.predict(X), rtol=1e-6)
    restarted = Learner(cfg(), store=store)
    assert restarted.load_latest() == v
    assert restarted.add_samples(X, y, 1_000 + np.arange(300)) == 300  # base for the next retrain
    assert restarted.n_samples == 300 and restarted.current_version == v

    with pytest.raises(FeatureMismatch):
        store.load(v, MODEL_FEATURE_NAMES[:-1] + ("something_else",), MODEL_FEATURES_VERSION)
    with pytest.raises(FeatureMismatch):
        store.load(v, MODEL_FEATURE_NAMES, "mc-0+cand-0")
    renamed = Learner(cfg(), store=store, feature_names=[f"f{i}" for i in range(F)])
    with pytest.raises(FeatureMismatch):
        renamed.load(v)
    assert renamed.load_latest() is None  # nothing stored fits its features
    with pytest.raises(ModelNotFound):
        store.load("123-0000000000", MODEL_FEATURE_NAMES, MODEL_FEATURES_VERSION)
    with pytest.raises(ModelNotFound):
        store.load("../../etc/passwd", MODEL_FEATURE_NAMES, MODEL_FEATURES_VERSION)
    with pytest.raises(FeatureMismatch):
        learner.predict(np.zeros((2, F - 1)))


def test_add_closed_trade_is_idempotent_and_triggers_retrain() -> None:
    learner = Learner(cfg(retrain_after_trades=3, min_train_samples=10))
    row = dict(zip(MODEL_FEATURE_NAMES, np.linspace(0, 1, F), strict=True))
    assert learner.add_closed_trade(row, 1.5, "t1", event_time_ms=HOUR)
    assert not learner.add_closed_trade(row, -9.0, "t1", event_time_ms=HOUR)
    assert learner.n_samples == 1 and learner.new_samples == 1
    with pytest.raises(FeatureMismatch):
        learner.add_closed_trade({"ret_1": 0.0}, 1.0, "t2")
    with pytest.raises(FeatureMismatch):
        learner.add_closed_trade([0.0] * (F - 2), 1.0, "t3")
    assert learner.n_samples == 1
    X, y = planted(30, seed=9)
    for i in range(9):
        learner.add_closed_trade(X[i], 1.0 if y[i] else -1.0, f"x{i}", event_time_ms=HOUR + i)
    assert learner.should_retrain(2 * HOUR)  # 10 samples, 10 new >= 3, never trained
    learner.maybe_retrain(2 * HOUR)  # too few for a holdout: rejected, counters reset
    assert learner.new_samples == 0 and learner.last_train_ms == 2 * HOUR
    learner.add_closed_trade(X[20], 1.0, "late", event_time_ms=3 * HOUR)
    assert not learner.should_retrain(3 * HOUR)  # 1 new, 1 h since the last attempt
    assert learner.should_retrain(2 * HOUR + 24 * HOUR)  # the interval passed
    assert learner.maybe_retrain(2 * HOUR + 1) is None


def test_walk_forward_split_purges_label_overlap() -> None:
    """Holdout = the latest 25 %; training rows whose 60-minute label horizon reaches into
    the holdout are dropped."""
    X, y = planted(400, seed=10)
    times = np.arange(400) * 60_000  # one sample a minute
    purged = Learner(cfg(label_horizon=60)).fit_cold_start(X, y, {"times": times})
    assert (purged.n_train, purged.n_holdout) == (240, 100)
    plain = Learner(cfg(label_horizon=0)).fit_cold_start(X, y, {"times": times})
    assert (plain.n_train, plain.n_holdout) == (300, 100)
    shuffled_rows = np.random.default_rng(0).permutation(400)  # rows are sorted by time first
    again = Learner(cfg(label_horizon=60)).fit_cold_start(
        X[shuffled_rows], y[shuffled_rows], {"times": times[shuffled_rows]}
    )
    assert again.challenger == pytest.approx(purged.challenger)


def test_interval_retrain_waits_for_enough_new_trades() -> None:
    """`retrain_min_new_trades` gates the interval trigger only: the count trigger and the
    first training do not wait."""
    learner = Learner(cfg(retrain_after_trades=5, min_train_samples=10, retrain_min_new_trades=3))
    X, y = planted(20, seed=11)
    for i in range(10):
        learner.add_closed_trade(X[i], 1.0 if y[i] else -1.0, f"a{i}", event_time_ms=HOUR + i)
    assert learner.should_retrain(2 * HOUR)  # never trained
    learner.maybe_retrain(2 * HOUR)
    day_later = 2 * HOUR + 24 * HOUR
    for i in range(2):
        learner.add_closed_trade(X[10 + i], 1.0, f"b{i}", event_time_ms=3 * HOUR + i)
        assert not learner.should_retrain(day_later)  # 1, then 2 new: the interval waits
    learner.add_closed_trade(X[12], 1.0, "b2", event_time_ms=4 * HOUR)
    assert learner.should_retrain(day_later) and not learner.should_retrain(3 * HOUR)
    for i in range(2):
        learner.add_closed_trade(X[13 + i], 1.0, f"c{i}", event_time_ms=4 * HOUR + i)
    assert learner.should_retrain(3 * HOUR)  # 5 new: the count trigger, no interval needed
    assert load_settings().model.retrain_min_new_trades == 10  # the services' default


def _boosters() -> list[tuple[xgb.Booster, int]]:
    """Boosters of several shapes (depth 1-6, few/many rounds, coarse/fine bins, NaN in
    the training data), each with its number of features."""
    rng = np.random.default_rng(12)
    out = []
    for depth, rounds, bins in ((1, 7, 16), (3, 60, 64), (4, 200, 256), (6, 120, 32)):
        n = 600
        X = rng.normal(size=(n, F)) * rng.uniform(0.01, 100.0, F)
        X[rng.random(X.shape) < 0.03] = np.nan
        y = (np.nan_to_num(X[:, 0]) / 50 + rng.normal(size=n) > 0.3).astype(int)
        params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": depth,
                  "max_bin": bins, "subsample": 0.8, "colsample_bytree": 0.8, "nthread": 1,
                  "seed": depth}  # fmt: skip
        out.append((xgb.train(params, xgb.DMatrix(X, label=y), rounds), F))
    return out


def _at_splits(trees: CompiledTrees, rows: int, rng: np.random.Generator) -> np.ndarray:
    """float64 rows on, or a hair below, split values: XGBoost compares in float32, where
    `split - 1e-12` is the split itself (goes right), and a float64 comparison would not."""
    X = rng.normal(size=(rows, trees.n_features))
    for f in range(trees.n_features):
        splits = trees.threshold[(trees.feature == f) & (trees.left != np.arange(len(trees.left)))]
        if len(splits):
            at = splits[rng.integers(0, len(splits), rows)].astype(np.float64)
            X[:, f] = at - rng.choice([0.0, 1e-12], rows) * np.maximum(np.abs(at), 1.0)
    return X


def test_compiled_trees_give_xgboost_margins_bit_for_bit() -> None:
    rng = np.random.default_rng(13)
    for booster, nf in _boosters():
        trees = compile_booster(booster)
        assert trees is not None
        for rows in (1, 3, 32, 500):
            X = rng.normal(size=(rows, nf)) * rng.uniform(0.01, 100.0, nf)
            X[rng.random(X.shape) < 0.05] = np.nan
            for x in (X, _at_splits(trees, rows, rng)):
                want = booster.inplace_predict(x, predict_type="margin")
                np.testing.assert_array_equal(trees.margin(x), want)
        # the base margin is found even when the estimate from the model file is off
        exact, probe = trees.base_margin, probe_rows(trees)
        want = booster.inplace_predict(probe, predict_type="margin")
        trees.base_margin = np.nextafter(np.nextafter(exact, np.float32(9)), np.float32(9))
        assert _exact_base(trees, probe, want) == exact


def test_champion_confidence_is_the_boosters_and_large_batches_use_xgboost() -> None:
    learner = Learner(cfg())
    X, y = planted(400, seed=14)
    learner.fit_cold_start(X, y, {})
    champ = learner.champion
    assert champ is not None and champ.trees is not None
    a, b = champ.meta.calibration
    Xt = np.random.default_rng(15).normal(size=(200, F))
    margin = np.asarray(champ.booster.inplace_predict(Xt, predict_type="margin"), np.float64)
    ref = 1 / (1 + np.exp(-(a * margin + b)))
    for rows in (1, 5, COMPILED_MAX_ROWS, 200):  # compiled up to COMPILED_MAX_ROWS, then xgboost
        np.testing.assert_allclose(learner.predict(Xt[:rows]), ref[:rows], rtol=0, atol=1e-12)
    plain = TrainedModel(champ.booster, champ.meta, None)
    object.__setattr__(plain, "trees", None)  # a booster that could not be compiled
    np.testing.assert_allclose(plain.predict(Xt[:3]), ref[:3], rtol=0, atol=1e-12)


def test_compile_refuses_what_it_does_not_model() -> None:
    rng = np.random.default_rng(16)
    X, y = rng.normal(size=(200, 4)), rng.integers(0, 3, 200)
    multi = xgb.train({"objective": "multi:softprob", "num_class": 3, "nthread": 1},
                      xgb.DMatrix(X, label=y), 5)  # fmt: skip
    assert compile_booster(multi) is None
    squared = xgb.train({"objective": "reg:squarederror", "nthread": 1},
                        xgb.DMatrix(X, label=y.astype(float)), 5)  # fmt: skip
    assert compile_booster(squared) is None
