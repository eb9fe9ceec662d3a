"""The estimators behind a score, as plain arrays: categorical encoding, binning, trees, logistic
tables and calibration.

Both models work on a *binned* matrix (one small integer per feature, 255 = missing): the gradient
boosting model uses scikit-learn's own bins and tree predictors (`predict_binned`, the fast path), the
logistic model one-hot encodes quantile bins (a regularised additive model). Reasons replace a group
of bins by a reference deal's bins and predict again, so both models share one reason code path.

scikit-learn is imported inside functions only: fitting needs it, and so does predicting with trees,
but importing this module does not.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

import numpy as np

from cockpit.scoring.config import ScoringConfig
from cockpit.scoring.features import FeatureFrame, FeatureSpec

if TYPE_CHECKING:
    from cockpit.scoring.counterfactual import TreePaths

MISSING = 255
"""Bin of a missing value (scikit-learn's `missing_values_bin_idx_` with the default 255 bins)."""
OTHER = "(other)"
"""Category pooling the rare values of a categorical feature."""

NODE_FIELDS = (
    "value",
    "count",
    "feature_idx",
    "num_threshold",
    "missing_go_to_left",
    "left",
    "right",
    "gain",
    "depth",
    "is_leaf",
    "bin_threshold",
    "is_categorical",
    "bitset_idx",
)
"""Fields of a tree node as scikit-learn's TreePredictor stores them (saved one array per field)."""


def load_sklearn() -> None:
    """Prepare the first scikit-learn import: OpenMP threads that sleep rather than spin while waiting.

    libgomp's default spin-waiting makes gradient boosting up to 10x slower when the cores are shared
    with other work (measured: 29 s instead of 2 s for the same fit on a busy 2-core machine). The
    setting is read when scikit-learn's OpenMP runtime loads, so it must be set before the first
    import; a value the user set is kept.
    """
    import sys

    if "sklearn" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35.0, 35.0)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def n_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# --------------------------------------------------------------------------------------------------
# Categorical encoding
# --------------------------------------------------------------------------------------------------


@dataclass
class Encoder:
    """Maps a frame to the model's matrix: categorical columns first (the order scikit-learn's
    boosting model uses internally), strings to the model's codes, rare ones pooled into OTHER."""

    specs: tuple[FeatureSpec, ...]
    """The model's columns: categorical features first, then numeric ones, each in frame order."""
    vocab: dict[str, list[str]]

    @classmethod
    def fit(cls, frame: FeatureFrame, rows: np.ndarray, config: ScoringConfig) -> Encoder:
        """Keep the categories seen in at least `min_category_examples` training rows, most frequent
        first."""
        vocab: dict[str, list[str]] = {}
        for j, spec in enumerate(frame.specs):
            if spec.kind != "cat":
                continue
            local = frame.categories[spec.name]
            col = frame.values[rows, j]
            col = col[~np.isnan(col)].astype(np.int64)
            counts = np.bincount(col, minlength=len(local)) if len(local) else np.zeros(0, dtype=np.int64)
            order = np.argsort(-counts, kind="stable")
            kept = [
                int(i) for i in order[: config.max_categories] if counts[i] >= config.min_category_examples
            ]
            pooled = counts.sum() > counts[kept].sum() if len(counts) else False
            vocab[spec.name] = [local[i] for i in kept] + ([OTHER] if pooled else [])
        specs = tuple(s for s in frame.specs if s.kind == "cat") + tuple(
            s for s in frame.specs if s.kind != "cat"
        )
        return cls(specs, vocab)

    def transform(self, frame: FeatureFrame) -> np.ndarray:
        """The frame's matrix with categorical columns recoded to the model's codes (NaN = missing)."""
        where = {s.name: j for j, s in enumerate(frame.specs)}
        if set(where) != {s.name for s in self.specs}:
            raise ValueError("feature frame and model disagree on the feature list")
        X = frame.values[:, [where[s.name] for s in self.specs]]
        for j, spec in enumerate(self.specs):
            if spec.kind != "cat":
                continue
            vocab = self.vocab[spec.name]
            index = {v: i for i, v in enumerate(vocab)}
            fallback = index.get(OTHER, math.nan)
            local = frame.categories[spec.name]
            lut = np.array([index.get(v, fallback) for v in local] + [math.nan], dtype=np.float64)
            col = X[:, j]
            codes = np.where(np.isnan(col), len(local), col).astype(np.int64)
            X[:, j] = lut[codes]
        return X

    def category(self, name: str, code: float) -> str | None:
        if math.isnan(code):
            return None
        return self.vocab[name][int(code)]

    @property
    def is_categorical(self) -> np.ndarray:
        return np.array([s.kind == "cat" for s in self.specs], dtype=bool)


# --------------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------------


def bin_matrix(X: np.ndarray, thresholds: list[np.ndarray], is_cat: np.ndarray) -> np.ndarray:
    """Bin each column: numeric x goes to bin i iff t[i-1] < x <= t[i]; a category to its index among
    the known ones; NaN and unknown categories to MISSING."""
    n, p = X.shape
    out = np.empty((n, p), dtype=np.uint8)
    for j in range(p):
        col = X[:, j]
        t = thresholds[j]
        b = np.searchsorted(t, col, side="left")
        missing = np.isnan(col)
        if is_cat[j]:
            hit = b < len(t)
            hit[hit] = t[b[hit]] == col[hit]
            missing |= ~hit
        out[:, j] = np.where(missing, MISSING, np.minimum(b, MISSING - 1))
    return out


# --------------------------------------------------------------------------------------------------
# Gradient-boosted trees
# --------------------------------------------------------------------------------------------------


@dataclass
class TreeModel:
    """A fitted HistGradientBoostingClassifier reduced to arrays (binned prediction only)."""

    thresholds: list[np.ndarray]
    is_cat: np.ndarray
    baseline: float
    nodes: dict[str, np.ndarray]
    """Node fields of all trees, concatenated (child indices are relative to their tree)."""
    tree_offsets: np.ndarray
    bitsets: np.ndarray
    """Binned left-category bitsets of all trees, concatenated, shape (m, 8) uint32."""
    bitset_offsets: np.ndarray
    _predictors: list | None = field(default=None, repr=False)

    kind: Literal["gradient_boosting"] = "gradient_boosting"

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    def bin(self, X: np.ndarray) -> np.ndarray:
        return bin_matrix(X, self.thresholds, self.is_cat)

    def predictors(self) -> list:
        """scikit-learn TreePredictors rebuilt from the arrays (imports scikit-learn on first use)."""
        if self._predictors is None:
            load_sklearn()
            from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
            from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

            total = len(self.nodes["value"])
            records = np.zeros(total, dtype=PREDICTOR_RECORD_DTYPE)
            for name in PREDICTOR_RECORD_DTYPE.names:
                if name not in self.nodes:
                    raise ValueError(f"tree nodes lack the field {name!r} this scikit-learn needs")
                records[name] = self.nodes[name]
            out = []
            empty = np.zeros((0, 8), dtype=np.uint32)
            for t in range(self.n_trees):
                a, b = self.tree_offsets[t], self.tree_offsets[t + 1]
                bits = np.ascontiguousarray(self.bitsets[self.bitset_offsets[t] : self.bitset_offsets[t + 1]])
                out.append(
                    TreePredictor(records[a:b], bits if len(bits) else empty, bits if len(bits) else empty)
                )
            self._predictors = out
        return self._predictors

    def tree_features(self) -> list[np.ndarray]:
        """Features each tree splits on."""
        feats = self.nodes["feature_idx"]
        leaf = self.nodes["is_leaf"].astype(bool)
        return [np.unique(feats[a:b][~leaf[a:b]]) for a, b in pairwise(self.tree_offsets)]

    def raw(self, B: np.ndarray, trees: np.ndarray | None = None, with_baseline: bool = True) -> np.ndarray:
        """Sum of the trees' outputs (log-odds) on binned rows; `trees` restricts to some trees."""
        preds = self.predictors()
        out = np.full(len(B), self.baseline if with_baseline else 0.0)
        if not len(B):
            return out
        threads = n_threads()
        for t in range(self.n_trees) if trees is None else trees:
            out += preds[t].predict_binned(B, MISSING, threads)
        return out

    def raw_by_group(self, B: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Total log-odds, and for each feature group the summed output of the trees that use it."""
        preds = self.predictors()
        uses = self._group_trees(groups)
        total = np.full(len(B), self.baseline)
        per_group = np.zeros((len(groups), len(B)))
        threads = n_threads()
        for t in range(self.n_trees):
            out = preds[t].predict_binned(B, MISSING, threads)
            total += out
            for g in np.flatnonzero(uses[:, t]):
                per_group[g] += out
        return total, per_group

    def group_raw(self, B: np.ndarray, groups: list[np.ndarray], g: int) -> np.ndarray:
        """Summed output of the trees that use group `g`, on binned rows `B`."""
        uses = self._group_trees(groups)
        return self.raw(B, np.flatnonzero(uses[g]), with_baseline=False)

    def paths(self, groups: list[np.ndarray]) -> TreePaths:
        """Leaf predictors and which groups each node's path crosses (built once per groups)."""
        from cockpit.scoring.counterfactual import TreePaths

        key = tuple(tuple(int(i) for i in g) for g in groups)
        cache = getattr(self, "_paths_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        paths = TreePaths.of(self, groups)
        object.__setattr__(self, "_paths_cache", (key, paths))
        return paths

    def _group_trees(self, groups: list[np.ndarray]) -> np.ndarray:
        key = tuple(tuple(int(i) for i in g) for g in groups)
        cache = getattr(self, "_uses_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        feats = self.tree_features()
        uses = np.zeros((len(groups), self.n_trees), dtype=bool)
        for g, members in enumerate(groups):
            for t, f in enumerate(feats):
                uses[g, t] = bool(np.intersect1d(f, members, assume_unique=False).size)
        object.__setattr__(self, "_uses_cache", (key, uses))
        return uses

    def validate(self, n_features: int) -> None:
        """Check node indices so a damaged or hand-made file cannot make the predictor read out of bounds."""
        if len(self.thresholds) != n_features or len(self.is_cat) != n_features:
            raise ValueError("bin thresholds do not match the feature list")
        lengths = {len(v) for v in self.nodes.values()}
        if len(lengths) > 1:
            raise ValueError("tree node fields differ in length")
        total = lengths.pop() if lengths else 0
        offsets, bit_offsets = self.tree_offsets, self.bitset_offsets
        if offsets[0] != 0 or offsets[-1] != total or np.any(np.diff(offsets) < 1):
            raise ValueError("tree offsets are inconsistent")
        if bit_offsets[0] != 0 or bit_offsets[-1] != len(self.bitsets) or np.any(np.diff(bit_offsets) < 0):
            raise ValueError("bitset offsets are inconsistent")
        if len(bit_offsets) != len(offsets) or self.bitsets.ndim != 2 or self.bitsets.shape[1] != 8:
            raise ValueError("category bitsets are malformed")
        size = np.repeat(np.diff(offsets), np.diff(offsets))
        n_bits = np.repeat(np.diff(bit_offsets), np.diff(offsets))
        inner = self.nodes["is_leaf"] == 0
        for child in ("left", "right"):
            if np.any(inner & (self.nodes[child] >= size)):
                raise ValueError("a tree node points outside its tree")
        feature = self.nodes["feature_idx"]
        if np.any(inner & ((feature < 0) | (feature >= n_features))):
            raise ValueError("a tree node splits on an unknown feature")
        cat = inner & (self.nodes["is_categorical"] != 0)
        if np.any(cat & (self.nodes["bitset_idx"] >= n_bits)):
            raise ValueError("a tree node points outside its category bitsets")
        if any(np.any(np.diff(t) <= 0) for t in self.thresholds if len(t) > 1):
            raise ValueError("bin thresholds are not increasing")


def fit_trees(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    is_cat: np.ndarray,
    config: ScoringConfig,
    rounds: int | None = None,
    examples_per_deal: float = 1.0,
) -> TreeModel:
    """Gradient boosting. With `rounds`, exactly that many trees; otherwise early stopping on a later
    slice (`X_val`): boost in chunks while the slice's log loss improves by more than
    `config.early_stopping_tolerance`, keep the fewest rounds within it of the best.

    A leaf needs the examples of about 20 deals (weekly examples of one deal are near copies, so
    counting examples alone would let a leaf learn a handful of deals by heart).
    """
    load_sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, X_val = _fill_empty_columns(X, X_val)
    chunk, patience = 25, 20
    target = rounds if rounds is not None else config.max_iter
    clf = HistGradientBoostingClassifier(
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=int(min(max(20, 20 * examples_per_deal), max(20, len(y) // 20))),
        l2_regularization=1.0,
        max_iter=target if rounds is not None else min(chunk, target),
        early_stopping=False,
        warm_start=rounds is None,
        categorical_features=is_cat if is_cat.any() else None,
        random_state=config.random_state,
    )
    if rounds is not None or not len(y_val):
        clf.fit(X, y)
        return _extract(clf, len(clf._predictors))
    losses: list[float] = []
    raw_val = np.zeros(0)
    B_val = None
    done = best = 0
    while True:
        clf.fit(X, y)
        if B_val is None:
            first = _extract(clf, 0)
            B_val = first.bin(X_val)
            raw_val = np.full(len(y_val), first.baseline)
        for predictors in clf._predictors[done:]:
            raw_val = raw_val + predictors[0].predict_binned(B_val, MISSING, n_threads())
            losses.append(_log_loss(y_val, sigmoid(raw_val)))
        done = len(clf._predictors)
        best = _enough_rounds(losses, config.early_stopping_tolerance)
        if done >= target or done - best >= patience or done < clf.max_iter:
            break
        clf.max_iter = min(done + chunk, target)
    return _extract(clf, best)


def _enough_rounds(losses: list[float], tolerance: float) -> int:
    """The fewest rounds whose slice log loss is within `tolerance` (relative) of the best round's.

    Late rounds often buy a few hundredths of a percent of log loss, less than the slice can tell
    apart, while every round is paid again by the fits that reuse the count."""
    curve = np.asarray(losses)
    return int(np.flatnonzero(curve <= curve.min() * (1.0 + tolerance))[0]) + 1


def _fill_empty_columns(X: np.ndarray, X_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns with no value at all in training become zeros (scikit-learn cannot bin them); the
    trees then never split on them, and a missing value at prediction takes the missing branch."""
    empty = np.isnan(X).all(axis=0) if len(X) else np.zeros(X.shape[1], dtype=bool)
    if not empty.any():
        return X, X_val
    X = X.copy()
    X[:, empty] = 0.0
    X_val = X_val.copy()
    X_val[:, empty] = 0.0
    return X, X_val


def _extract(clf, n_trees: int) -> TreeModel:
    """Arrays of the first `n_trees` trees, with bins expressed on our own (encoded) matrix."""
    mapper = clf._bin_mapper
    if int(mapper.missing_values_bin_idx_) != MISSING:
        raise RuntimeError("unexpected number of bins in the boosting model")
    thresholds = [np.asarray(t, dtype=np.float64) for t in mapper.bin_thresholds_]
    pre = getattr(clf, "_preprocessor", None)
    if pre is not None:
        # scikit-learn ordinal-encodes categorical columns and moves them first; ours already are
        # first, so only the category values need mapping: bin k is the k-th known value.
        cat_cols = np.flatnonzero(clf.is_categorical_)
        if not np.array_equal(cat_cols, np.arange(len(cat_cols))):
            raise RuntimeError("categorical columns must come first")
        encoder = pre.named_transformers_["encoder"]
        for j, cats in zip(cat_cols, encoder.categories_, strict=True):
            cats = np.asarray(cats, dtype=np.float64)
            cats = cats[~np.isnan(cats)]
            if not np.array_equal(thresholds[j], np.arange(len(cats), dtype=np.float64)):
                raise RuntimeError("unexpected category bins in the boosting model")
            thresholds[j] = cats
    trees = [p[0] for p in clf._predictors[:n_trees]]
    nodes = {
        name: (np.concatenate([t.nodes[name] for t in trees]) if trees else np.zeros(0, dtype=np.float64))
        for name in NODE_FIELDS
    }
    sizes = [len(t.nodes) for t in trees]
    bits = [np.asarray(t.binned_left_cat_bitsets, dtype=np.uint32).reshape(-1, 8) for t in trees]
    return TreeModel(
        thresholds=thresholds,
        is_cat=np.asarray(mapper.is_categorical_, dtype=bool),
        baseline=float(np.ravel(clf._baseline_prediction)[0]),
        nodes=nodes,
        tree_offsets=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
        bitsets=np.concatenate(bits) if bits else np.zeros((0, 8), dtype=np.uint32),
        bitset_offsets=np.concatenate(([0], np.cumsum([len(b) for b in bits]))).astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------
# Regularised logistic model on bins
# --------------------------------------------------------------------------------------------------


@dataclass
class LinearModel:
    """Logistic regression on one-hot bins: log-odds = intercept + sum of one weight per feature."""

    thresholds: list[np.ndarray]
    is_cat: np.ndarray
    intercept: float
    table: np.ndarray
    """Weights, shape (n_features, 256): table[j, bin] (bin 255 = missing)."""
    c: float = 0.1
    """Inverse regularisation strength it was fitted with."""

    kind: Literal["logistic"] = "logistic"

    def bin(self, X: np.ndarray) -> np.ndarray:
        return bin_matrix(X, self.thresholds, self.is_cat)

    def raw(self, B: np.ndarray) -> np.ndarray:
        if not B.shape[1]:
            return np.full(len(B), self.intercept)
        return self.intercept + self.table[np.arange(B.shape[1])[None, :], B].sum(axis=1)

    def raw_by_group(self, B: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        parts = self.table[np.arange(B.shape[1])[None, :], B] if B.shape[1] else np.zeros((len(B), 0))
        total = self.intercept + parts.sum(axis=1)
        per_group = np.stack([parts[:, g].sum(axis=1) for g in groups]) if groups else np.zeros((0, len(B)))
        return total, per_group

    def group_raw(self, B: np.ndarray, groups: list[np.ndarray], g: int) -> np.ndarray:
        cols = groups[g]
        return self.table[cols[None, :], B[:, cols]].sum(axis=1)

    def validate(self, n_features: int) -> None:
        if self.table.shape != (n_features, 256) or len(self.thresholds) != n_features:
            raise ValueError("logistic weights do not match the feature list")


def _linear_thresholds(X: np.ndarray, is_cat: np.ndarray, bins: int = 8) -> list[np.ndarray]:
    out = []
    for j in range(X.shape[1]):
        col = X[:, j]
        col = col[~np.isnan(col)]
        if is_cat[j]:
            out.append(np.unique(col))
        elif len(col):
            qs = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
            out.append(qs.astype(np.float64))
        else:
            out.append(np.zeros(0))
    return out


def fit_linear(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    is_cat: np.ndarray,
    config: ScoringConfig,
    c: float | None = None,
) -> LinearModel:
    """L2-regularised logistic regression on quantile bins; the strength `c` is chosen on the later
    slice unless given."""
    thresholds = _linear_thresholds(X, is_cat)
    p = X.shape[1]
    base = float((y.sum() + 1.0) / (len(y) + 2.0))
    empty = LinearModel(thresholds, is_cat, float(logit(np.array([base]))[0]), np.zeros((p, 256)))
    if p == 0 or y.min() == y.max():
        return empty
    load_sklearn()
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    B = bin_matrix(X, thresholds, is_cat)
    cols = (np.arange(p)[None, :] * 256 + B).ravel()
    used, index = np.unique(cols, return_inverse=True)
    design = csr_matrix(
        (np.ones(len(cols)), (np.repeat(np.arange(len(B)), p), index)), shape=(len(B), len(used))
    )

    def fit(strength: float) -> LinearModel:
        clf = LogisticRegression(C=strength, max_iter=2000)
        clf.fit(design, y)
        table = np.zeros(p * 256)
        table[used] = clf.coef_[0]
        return LinearModel(thresholds, is_cat, float(clf.intercept_[0]), table.reshape(p, 256), strength)

    if c is not None or not len(y_val):
        return fit(c if c is not None else 0.1)
    B_val = bin_matrix(X_val, thresholds, is_cat)
    fitted = [fit(c) for c in (0.01, 0.03, 0.1, 0.3, 1.0)]
    losses = [_log_loss(y_val, sigmoid(m.raw(B_val))) for m in fitted]
    return fitted[int(np.argmin(losses))]


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


WEEKS_LEFT_EDGES = (14.0, 35.0, 56.0, 77.0)
"""Days left in the quarter that bound the context shift's buckets: the last two weeks, 3-5, 6-8,
9-11 weeks, and more."""
SHIFT_RIDGE = 10.0
"""Ridge penalty of the context shift's coefficients (log-likelihood units)."""


@dataclass
class ContextShift:
    """A log-odds correction by the deal's situation, applied after the base calibration.

    The base calibration maps the model's score to a probability that is right on average; the
    boosted trees can still leave it off for some situations: in the demo, P(won this quarter) came
    out 10% low in a quarter's first weeks and 30% high in its last two, and twice too high for the
    largest deals (which matter most to a forecast in money). The shift adds, in log-odds, a term
    for the weeks left in the quarter (5 buckets) and one for the deal's size, log(amount) against
    the median of its currency, fitted on the out-of-sample scores the calibration uses.
    """

    days_col: int
    """Column of days_left_in_quarter in the model's matrix (-1: switched off)."""
    amount_col: int
    currency_col: int
    """Column of the currency code (-1: switched off; sizes are then against every deal's median)."""
    medians: np.ndarray
    """Median log(amount) per currency code, the last entry over every currency."""
    weights: np.ndarray
    """Intercept, one weight per weeks-left bucket, and the size slope."""

    @classmethod
    def columns(cls, specs: tuple[FeatureSpec, ...]) -> tuple[int, int, int]:
        where = {s.name: j for j, s in enumerate(specs)}
        return where.get("days_left_in_quarter", -1), where.get("amount", -1), where.get("currency", -1)

    def design(self, X: np.ndarray) -> np.ndarray:
        n = len(X)
        Z = np.zeros((n, len(WEEKS_LEFT_EDGES) + 3))
        Z[:, 0] = 1.0
        if self.days_col >= 0:
            days = X[:, self.days_col]
            bucket = np.searchsorted(np.array(WEEKS_LEFT_EDGES), days, side="right")
            known = ~np.isnan(days)
            Z[np.flatnonzero(known), 1 + bucket[known]] = 1.0
        if self.amount_col >= 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                size = np.log(X[:, self.amount_col])
            median = np.full(n, self.medians[-1])
            if self.currency_col >= 0:
                code = X[:, self.currency_col]
                known = ~np.isnan(code) & (code >= 0) & (code < len(self.medians) - 1)
                median[known] = self.medians[code[known].astype(np.int64)]
            size = np.clip(size - median, -3.0, 3.0)
            Z[:, -1] = np.where(np.isfinite(size), size, 0.0)
        return Z

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.design(X) @ self.weights

    @property
    def used_columns(self) -> list[int]:
        return [c for c in (self.days_col, self.amount_col, self.currency_col) if c >= 0]

    def validate(self, n_features: int) -> None:
        if len(self.weights) != len(WEEKS_LEFT_EDGES) + 3 or not np.all(np.isfinite(self.weights)):
            raise ValueError("context shift weights are malformed")
        if max(self.days_col, self.amount_col, self.currency_col) >= n_features or not len(self.medians):
            raise ValueError("context shift columns do not match the feature list")

    @classmethod
    def fit(cls, offset: np.ndarray, y: np.ndarray, X: np.ndarray, specs: tuple[FeatureSpec, ...]) -> ContextShift:
        """Fit the weights by penalised logistic regression with the base log-odds as offset."""
        days_col, amount_col, currency_col = cls.columns(specs)
        n_codes = 0
        if currency_col >= 0 and len(X):
            codes = X[:, currency_col]
            n_codes = int(np.nanmax(codes)) + 1 if np.any(~np.isnan(codes)) else 0
        medians = np.zeros(n_codes + 1)
        if amount_col >= 0 and len(X):
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log(X[:, amount_col])
            ok = np.isfinite(logs)
            medians[-1] = float(np.median(logs[ok])) if ok.any() else 0.0
            for c in range(n_codes):
                rows = ok & (X[:, currency_col] == c)
                medians[c] = float(np.median(logs[rows])) if rows.sum() >= 20 else medians[-1]
        shift = cls(days_col, amount_col, currency_col, medians, np.zeros(len(WEEKS_LEFT_EDGES) + 3))
        Z = shift.design(X)
        shift.weights = newton_logistic(
            Z, y, np.zeros(Z.shape[1]), offset=offset, penalty=np.full(Z.shape[1], SHIFT_RIDGE),
            iterations=30, tolerance=1e-8,
        )
        return shift


@dataclass
class Calibrator:
    """Maps log-odds to a calibrated probability: identity, Platt (sigmoid) or isotonic, then
    optionally a `ContextShift` (which needs the rows' feature matrix)."""

    kind: Literal["identity", "sigmoid", "isotonic"] = "identity"
    a: float = 1.0
    b: float = 0.0
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shift: ContextShift | None = None

    def __call__(self, raw: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
        if self.shift is not None and X is None:
            raise ValueError("this calibration shifts by the deal's situation: pass the feature matrix")
        return self.apply(raw, self.shift_of(X) if X is not None else None)

    def shift_of(self, X: np.ndarray) -> np.ndarray | None:
        """The context shift of rows `X` in log-odds (None without a shift)."""
        return self.shift(X) if self.shift is not None else None

    def apply(self, raw: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
        """Calibrated probabilities of scores `raw` whose rows have the context shift `shift`."""
        p = self.base(raw)
        if shift is None:
            return p
        return sigmoid(logit(p) + shift)

    def base(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "sigmoid":
            return sigmoid(self.a * raw + self.b)
        p = sigmoid(raw)
        if self.kind == "isotonic":
            return np.interp(p, self.x, self.y)
        return p

    def validate(self, n_features: int | None = None) -> None:
        if self.kind not in ("identity", "sigmoid", "isotonic"):
            raise ValueError(f"unknown calibration {self.kind!r}")
        if self.kind == "isotonic" and (
            len(self.x) != len(self.y) or not len(self.x) or np.any(np.diff(self.x) < 0)
        ):
            raise ValueError("isotonic calibration table is malformed")
        if self.shift is not None and n_features is not None:
            self.shift.validate(n_features)


def fit_calibrator(
    raw: np.ndarray, y: np.ndarray, X: np.ndarray | None = None, specs: tuple[FeatureSpec, ...] = ()
) -> Calibrator:
    """Calibrate on a later slice: isotonic or sigmoid, whichever predicts the slice's second half
    better when fitted on its first half (isotonic needs 1,000 examples); none with too few labels.
    With the rows' matrix `X`, a `ContextShift` on top, kept only if it predicts the second half
    better too.

    A weak model gets the sigmoid, whose slope can fall to zero, instead of an isotonic staircase
    that would turn noise into confident steps.
    """
    load_sklearn()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if min(n_pos, n_neg) < 5:
        return Calibrator()
    candidates = ["sigmoid"]
    if len(y) >= 1000 and min(n_pos, n_neg) >= 50:
        candidates.append("isotonic")
    kind = candidates[0]
    half = len(y) // 2
    first, second = slice(0, half), slice(half, None)
    if len(candidates) > 1 and 0 < y[first].sum() < half:
        losses = [_log_loss(y[second], _fit_kind(k, raw[first], y[first])(raw[second])) for k in candidates]
        kind = candidates[int(np.argmin(losses))]
    calibrator = _fit_kind(kind, raw, y)
    halves_usable = 0 < y[first].sum() < half and 0 < y[second].sum() < len(y) - half
    if X is None or not halves_usable or len(y) < 1000 or min(n_pos, n_neg) < 50:
        return calibrator
    base_first = _fit_kind(kind, raw[first], y[first])
    shift = ContextShift.fit(logit(base_first(raw[first])), y[first], X[first], specs)
    plain = base_first(raw[second])
    shifted = sigmoid(logit(plain) + shift(X[second]))
    if _log_loss(y[second], shifted) < _log_loss(y[second], plain):
        calibrator.shift = ContextShift.fit(logit(calibrator(raw)), y, X, specs)
    return calibrator


def _fit_kind(kind: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(sigmoid(raw), y)
        return Calibrator(
            "isotonic", x=np.asarray(iso.X_thresholds_, float), y=np.asarray(iso.y_thresholds_, float)
        )
    a, b = platt(raw, y)
    return Calibrator("sigmoid", a=a, b=b)


def platt(raw: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Sigmoid calibration p = sigmoid(a * raw + b) by Newton's method on the log loss (a tiny ridge
    keeps it finite when the classes separate)."""
    ridge = 1e-6 * max(1, len(y))
    a, b = newton_logistic(
        np.column_stack([raw, np.ones(len(raw))]), y, np.array([1.0, 0.0]),
        penalty=np.array([ridge, 0.0]), floor=np.array([0.0, 1e-12]), iterations=iterations, tolerance=1e-9,
    )
    return float(a), float(b)


def newton_logistic(
    Z: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    *,
    offset: np.ndarray | float = 0.0,
    penalty: np.ndarray,
    floor: np.ndarray | float = 0.0,
    iterations: int,
    tolerance: float,
) -> np.ndarray:
    """Weights w of p = sigmoid(offset + Z w) by Newton's method on the log loss plus
    ½ Σ penalty·w² (`floor` only steadies the Hessian); stops when no weight moves by `tolerance`."""
    w = start.astype(np.float64)
    for _ in range(iterations):
        p = sigmoid(offset + Z @ w)
        g = Z.T @ (p - y) + penalty * w
        h = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(penalty + floor)
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        w = w - step
        if np.abs(step).max() < tolerance:
            break
    return w


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
