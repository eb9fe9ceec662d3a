"""Scores of probability forecasts: ROC AUC, Brier score, log loss, calibration error, reliability.

Plain numpy so that reports can be computed and re-rendered without scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

_EPS = 1e-15


@dataclass(frozen=True)
class ReliabilityBin:
    """One of ten equal-width bins of predicted probability."""

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True)
class Metrics:
    """How good one forecast is on one set of examples (NaN where undefined)."""

    examples: int
    positives: int
    roc_auc: float
    brier: float
    log_loss: float
    ece: float
    reliability: tuple[ReliabilityBin, ...] = field(default=())

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("roc_auc", "brier", "log_loss", "ece"):
            out[key] = None if math.isnan(out[key]) else round(out[key], 6)
        out["reliability"] = [
            {
                k: (
                    None
                    if isinstance(v, float) and math.isnan(v)
                    else (round(v, 6) if isinstance(v, float) else v)
                )
                for k, v in b.items()
            }
            for b in out["reliability"]
        ]
        return out


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN unless both classes are present."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sorted_p = np.asarray(p)[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # Average rank of each run of ties.
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(p)]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities."""
    return float(np.mean((np.asarray(p) - np.asarray(y)) ** 2)) if len(y) else math.nan


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood (probabilities clipped to [1e-15, 1 - 1e-15])."""
    if not len(y):
        return math.nan
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[ReliabilityBin, ...]:
    """Ten equal-width bins: how many examples, mean predicted probability, observed rate."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    out = []
    for b in range(bins):
        n = int(count[b])
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=n,
                mean_predicted=float(sum_p[b] / n) if n else math.nan,
                observed_rate=float(sum_y[b] / n) if n else math.nan,
            )
        )
    return tuple(out)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Example-weighted mean |predicted - observed| over ten equal-width bins."""
    if not len(y):
        return math.nan
    table = reliability(y, p, bins)
    total = sum(b.count for b in table)
    return float(sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in table if b.count) / total)


def evaluate(y: np.ndarray, p: np.ndarray) -> Metrics:
    """All metrics of forecast `p` against outcomes `y` (1 = yes)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return Metrics(
        examples=len(y),
        positives=int(y.sum()),
        roc_auc=roc_auc(y, p),
        brier=brier(y, p),
        log_loss=log_loss(y, p),
        ece=expected_calibration_error(y, p),
        reliability=reliability(y, p) if len(y) else (),
    )
