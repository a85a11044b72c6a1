"""A trained booster's trees as flat numpy arrays, evaluated without XGBoost's call overhead.

WHY: the trader scores a minute's few candidates in one call.  `Booster.inplace_predict`
costs ~0.2-0.4 ms per call whatever the batch size (argument checks, feature-name
validation, array-interface JSON, ctypes), while walking 200 depth-4 trees for a handful of
rows is a few dozen numpy operations (~30 us).  A backtest makes ~70k such calls a year.

Same numbers as XGBoost, not merely close: XGBoost reads features as float32, goes left
when `x < split` (float32), takes the node's default child for a missing value (NaN), and
adds the leaf values tree by tree to the base margin in float32.  `margin` does exactly
that (the leaf sum is a float32 cumulative sum, which numpy evaluates left to right).  The
base margin is the one number the model file does not give exactly (base_score is printed
with too few digits, and its logit is taken in float32), so `compile_booster` takes the
float32 nearest the printed value's logit that reproduces the booster's margins on probe
rows, and refuses (returns None) when none does or when the booster has anything this
module does not model (categorical splits, several outputs, other objectives); the caller
then keeps using the booster.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

BASE_ULPS = 4  # how far the stored base score may be from the one XGBoost adds
_LOGISTIC = frozenset({"binary:logistic", "binary:logitraw", "reg:logistic"})


class CompiledTrees:
    """Trees of one booster, nodes renumbered into one global array (module doc)."""

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        default_left: np.ndarray,
        value: np.ndarray,
        roots: np.ndarray,
        depth: int,
        base_margin: np.float32,
        n_features: int,
    ) -> None:
        self.feature, self.threshold = feature, threshold
        self.left, self.right, self.default_left = left, right, default_left
        self.value, self.roots, self.depth = value, roots, depth
        self.base_margin, self.n_features = base_margin, n_features

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf value each row reaches in each tree, (rows, trees) float32."""
        x = np.asarray(X, dtype=np.float32)
        rows = x.shape[0]
        flat = x.reshape(-1)
        offset = (np.arange(rows, dtype=np.intp) * self.n_features)[:, None]
        node = np.broadcast_to(self.roots, (rows, len(self.roots)))
        missing = bool(np.isnan(flat).any())
        feature, threshold, left, right = self.feature, self.threshold, self.left, self.right
        for _ in range(self.depth):  # leaves point to themselves: extra steps stay put
            v = flat[offset + feature[node]]
            go_left = v < threshold[node]
            if missing:
                go_left = np.where(np.isnan(v), self.default_left[node], go_left)
            node = np.where(go_left, left[node], right[node])
        out: np.ndarray = self.value[node]
        return out

    def margin(self, X: np.ndarray) -> np.ndarray:
        """Raw margins (float32, one per row) exactly as `inplace_predict(X, "margin")`."""
        return _accumulate(self.base_margin, self.leaves(X))


def _accumulate(base: np.float32, leaves: np.ndarray) -> np.ndarray:
    """base + leaf 0 + leaf 1 + ..., left to right in float32, as XGBoost adds them."""
    terms = np.empty((leaves.shape[0], leaves.shape[1] + 1), dtype=np.float32)
    terms[:, 0] = base
    terms[:, 1:] = leaves
    out: np.ndarray = np.cumsum(terms, axis=1, dtype=np.float32)[:, -1]
    return out


def _tree_arrays(tree: dict[str, Any], start: int) -> tuple[list[Any], int]:
    """One tree's nodes, breadth first from its root, renumbered from `start`; leaves get
    themselves as both children and their value; returns (columns, depth)."""
    lc, rc = tree["left_children"], tree["right_children"]
    cond, idx, dl = tree["split_conditions"], tree["split_indices"], tree["default_left"]
    order, depth_of = [0], {0: 0}
    for nid in order:  # breadth first; `order` grows while iterated
        if lc[nid] != -1:
            for child in (lc[nid], rc[nid]):
                depth_of[child] = depth_of[nid] + 1
                order.append(child)
    new = {nid: start + i for i, nid in enumerate(order)}
    cols: list[list[Any]] = [[], [], [], [], [], []]  # feature, thr, left, right, dl, value
    for nid in order:
        leaf = lc[nid] == -1
        g = new[nid]
        cols[0].append(0 if leaf else idx[nid])
        cols[1].append(0.0 if leaf else cond[nid])
        cols[2].append(g if leaf else new[lc[nid]])
        cols[3].append(g if leaf else new[rc[nid]])
        cols[4].append(bool(dl[nid]))
        cols[5].append(cond[nid] if leaf else 0.0)
    return cols, max(depth_of.values())


def _base_estimate(model: dict[str, Any]) -> np.float32:
    """XGBoost stores base_score in probability space for logistic objectives (printed
    with too few digits to be always exact) and adds `-logf(1.0f / p - 1.0f)` to every
    margin; the correctly rounded log of the float32 quotient is that logf ~98% of the
    time, and one float32 step off otherwise (`_exact_base` settles it)."""
    raw = model["learner_model_param"]["base_score"]
    base = np.float32(float(raw.strip("[]").split(",")[0]))
    if model["objective"]["name"] in ("binary:logistic", "reg:logistic"):
        one = np.float32(1.0)
        with np.errstate(all="ignore"):
            q = float(one / base - one)
        return np.float32(-math.log(q)) if 0.0 < q < math.inf else np.float32(math.nan)
    return base


def _exact_base(trees: CompiledTrees, X: np.ndarray, want: np.ndarray) -> np.float32 | None:
    """The float32 within `BASE_ULPS` of the estimate, nearest first, that reproduces the
    booster's margins on `X`; None if none does."""
    leaves = trees.leaves(X)
    down = up = trees.base_margin
    cands = [down]
    for _ in range(BASE_ULPS):
        down, up = np.nextafter(down, np.float32(-np.inf)), np.nextafter(up, np.float32(np.inf))
        cands += [down, up]
    for b in cands:
        if np.array_equal(_accumulate(b, leaves), want, equal_nan=True):
            return b
    return None


def _parse(booster: Any) -> CompiledTrees | None:
    model = json.loads(bytes(booster.save_raw("json")))["learner"]
    if model["objective"]["name"] not in _LOGISTIC:
        return None
    gb = model["gradient_booster"]
    if gb.get("name") != "gbtree" or int(model["learner_model_param"].get("num_target", 1)) != 1:
        return None
    trees = gb["model"]["trees"]
    if not trees or any(any(t.get("split_type", [])) for t in trees):
        return None  # no trees, or categorical splits
    cols: list[list[Any]] = [[], [], [], [], [], []]
    roots, depth, start = [], 0, 0
    for tree in trees:
        part, d = _tree_arrays(tree, start)
        roots.append(start)
        start += len(part[0])
        depth = max(depth, d)
        for acc, col in zip(cols, part, strict=True):
            acc.extend(col)
    n_features = int(model["learner_model_param"]["num_feature"])
    return CompiledTrees(
        np.array(cols[0], np.intp), np.array(cols[1], np.float32), np.array(cols[2], np.intp),
        np.array(cols[3], np.intp), np.array(cols[4], bool), np.array(cols[5], np.float32),
        np.array(roots, np.intp), depth, _base_estimate(model), n_features,
    )  # fmt: skip


def probe_rows(trees: CompiledTrees, n: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that reach many leaves: each feature at split values, just beside them, or
    missing - so a probe exercises both sides of many splits and the default directions."""
    rng = np.random.default_rng(seed)
    splits = [trees.threshold[trees.feature == f] for f in range(trees.n_features)]
    X = rng.normal(size=(n, trees.n_features)).astype(np.float32)
    for f, s in enumerate(splits):
        if len(s):
            pick = s[rng.integers(0, len(s), n)]
            nudge = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), n)
            X[:, f] = np.nextafter(pick, pick + nudge).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X


def compile_booster(booster: Any) -> CompiledTrees | None:
    """The booster's trees as arrays, or None if it has anything this module does not
    model or if its margins differ from the booster's on probe rows (module doc)."""
    try:
        trees = _parse(booster)
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    if trees is None or not math.isfinite(float(trees.base_margin)):
        return None
    X = probe_rows(trees)
    want = np.asarray(booster.inplace_predict(X, predict_type="margin"), np.float32)
    base = _exact_base(trees, X, want)
    if base is None:
        return None
    trees.base_margin = base
    one = trees.margin(X[:1])  # the single-row path the trader uses most
    return trees if np.array_equal(one, want[:1], equal_nan=True) else None
