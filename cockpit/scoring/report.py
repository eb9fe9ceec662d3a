"""The training report: metrics of the model and both baselines on the time-based test split,
reliability tables, notes on thin stages, and which forecast the cockpit uses and why.

`to_dict()` is what `cockpit train --json` prints and what the model file stores; `to_text()` is the
human version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cockpit.scoring.metrics import Metrics

LABELS = {
    "model": "model",
    "crm_stage_probability": "CRM stage probability",
    "stage_win_rate": "stage win rate",
    "base_rate": "base rate (reference)",
}
TARGET_LABELS = {"won": "won eventually", "in_quarter": "won by the end of the as-of quarter"}


@dataclass
class TargetReport:
    """One target's test: every forecast's metrics, the choice, and the sentence that explains it."""

    target: str
    metrics: dict[str, Metrics]
    """"model", "crm_stage_probability", "stage_win_rate", "base_rate" -> metrics on the test split."""
    chosen: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "chosen": self.chosen,
            "why": self.why,
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
        }


@dataclass
class TrainReport:
    """Everything a training run measured."""

    model_kind: str
    """"gradient_boosting" or "logistic"."""
    trained_at: str
    knowledge_day: str
    """Last day of data the model saw (ISO date)."""
    cutoff: str
    """Test split: labels known from this day on are the test set (ISO date)."""
    tuning_cutoff: str
    """Labels known from this day until `cutoff` decide when boosting stops (ISO date)."""
    closed_deals: int
    train_deals: int
    test_deals: int
    examples: dict[str, dict[str, int]]
    """Target -> {"train": n, "test": n}."""
    targets: dict[str, TargetReport]
    features: list[str]
    stage_notes: list[str] = field(default_factory=list)
    """Stages with insufficient history (scored with their historical rate)."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chosen(self) -> str:
        """What scores P(won): "model" or the baseline used instead."""
        return self.targets["won"].chosen

    @property
    def why(self) -> str:
        return self.targets["won"].why

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_kind": self.model_kind,
            "trained_at": self.trained_at,
            "knowledge_day": self.knowledge_day,
            "cutoff": self.cutoff,
            "tuning_cutoff": self.tuning_cutoff,
            "closed_deals": self.closed_deals,
            "train_deals": self.train_deals,
            "test_deals": self.test_deals,
            "examples": self.examples,
            "features": self.features,
            "targets": {k: t.to_dict() for k, t in self.targets.items()},
            "stage_notes": self.stage_notes,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }

    def to_text(self) -> str:
        """A plain-text report: one metrics table and one reliability table per target."""
        kind = (
            "gradient boosting"
            if self.model_kind == "gradient_boosting"
            else "regularised logistic regression"
        )
        lines = [
            f"Win model ({kind}) trained {self.trained_at} on data up to {self.knowledge_day}.",
            (
                f"{self.closed_deals:,} closed deals: {self.train_deals:,} closed before {self.cutoff} "
                f"train and calibrate the model (boosting stops on those from {self.tuning_cutoff}), "
                f"{self.test_deals:,} later ones test it."
            ),
        ]
        for target in self.targets.values():
            lines += [
                "",
                (
                    f"Target: {TARGET_LABELS.get(target.target, target.target)}  "
                    f"({self.examples[target.target]['train']:,} training / "
                    f"{self.examples[target.target]['test']:,} test examples)"
                ),
            ]
            lines += _metrics_table(target.metrics)
            lines += ["", f"Uses: {LABELS.get(target.chosen, target.chosen)}. {target.why}"]
            model = target.metrics.get("model")
            if model is not None and model.reliability:
                lines += ["", "Reliability of the model (test split):"] + _reliability_table(model)
        if self.stage_notes:
            lines += ["", "Insufficient history:"] + [f"  - {n}" for n in self.stage_notes]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _metrics_table(metrics: dict[str, Metrics]) -> list[str]:
    head = f"  {'forecast':<24} {'ROC AUC':>8} {'Brier':>8} {'log loss':>9} {'ECE':>7}"
    rows = [head]
    for name, m in metrics.items():
        rows.append(
            f"  {LABELS.get(name, name):<24} {_fmt(m.roc_auc, 3):>8} {_fmt(m.brier):>8} "
            f"{_fmt(m.log_loss):>9} {_fmt(m.ece, 3):>7}"
        )
    return rows


def _reliability_table(m: Metrics) -> list[str]:
    rows = [f"  {'bin':<11} {'examples':>8} {'predicted':>10} {'observed':>9}"]
    for b in m.reliability:
        rows.append(
            f"  {b.lower:.1f}-{b.upper:.1f}    {b.count:>8,} "
            f"{_fmt(b.mean_predicted, 3):>10} {_fmt(b.observed_rate, 3):>9}"
        )
    return rows
