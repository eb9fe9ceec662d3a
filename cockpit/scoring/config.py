"""Admin control of the win model: features switched off and thresholds, from the `[scoring]` table.

Example (config.toml):

    [scoring]
    disabled_features = ["lead_source", "activity"]   # feature or reason-group names, or "attr:<field>"
    min_closed_deals = 50
    example_step_days = 7
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cockpit.scoring.features import FEATURE_NAMES, GROUP_NAMES


class ScoringConfig(BaseModel):
    """Everything an admin may change about training and scoring without touching code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    disabled_features: frozenset[str] = frozenset()
    """Features switched off: a feature name ("deal_age"), a reason group ("activity") or "attr:<field>"."""
    example_step_days: int = Field(default=7, ge=1, le=91)
    """Days between two as-of dates of a closed deal's point-in-time examples (counted from each
    quarter's first day, so every quarter's week 1 is an example date)."""
    min_closed_deals: int = Field(default=30, ge=10)
    """Below this many closed deals training refuses ("insufficient history")."""
    min_stage_examples: int = Field(default=20, ge=1)
    """A stage with fewer training deals than this is scored with its historical rate, and the report
    says "insufficient history" for it."""
    min_deals_for_boosting: int = Field(default=400, ge=0)
    """Below this many training deals the regularised logistic model is used instead of gradient boosting."""
    shrinkage_deals: float = Field(default=10.0, ge=0)
    """Pseudo-deals pulling a stage's model score toward the stage's historical rate (thin stages move
    more)."""
    win_rate_prior_deals: float = Field(default=10.0, ge=0)
    """Pseudo-deals pulling an owner's or team's past win rate toward everyone's past win rate."""
    activity_window_days: int = Field(default=30, ge=1, le=365)
    """Window of the `activities_30d` feature."""
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    """Share of closed deals (the latest to close) held out to test the model."""
    tuning_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    """Share of closed deals (closing just before the test deals) whose labels decide when boosting stops."""
    max_iter: int = Field(default=300, ge=10, le=2000)
    """Most boosting rounds; fewer are kept when the tuning slice stops improving."""
    early_stopping_tolerance: float = Field(default=0.002, ge=0, le=0.1)
    """Boosting keeps the fewest rounds whose log loss on the tuning slice is within this share of the
    best round's (0: the best round itself)."""
    learning_rate: float = Field(default=0.2, gt=0, le=1)
    max_leaf_nodes: int = Field(default=15, ge=2, le=255)
    min_category_examples: int = Field(default=30, ge=1)
    """Categories seen in fewer training examples are pooled into "other"."""
    max_categories: int = Field(default=60, ge=2, le=250)
    """Most categories kept per categorical feature (the most frequent ones)."""
    max_reasons: int = Field(default=5, ge=1, le=8)
    """Reasons attached to each score (the strongest first)."""
    min_reasons: int = Field(default=3, ge=0, le=8)
    """Reasons shown even when their effect is tiny (so a score is never unexplained)."""
    reasons_target: Literal["auto", "won", "in_quarter"] = "auto"
    """Which probability the reasons explain; "auto": the one where the model beats its baselines by
    more (on data where only the quarter target has signal, its reasons are the useful ones)."""
    random_state: int = 0

    @field_validator("disabled_features", mode="before")
    @classmethod
    def _known_names(cls, value: Any) -> frozenset[str]:
        if isinstance(value, str):
            value = [value]
        names = frozenset(str(v).strip() for v in value)
        known = set(FEATURE_NAMES) | set(GROUP_NAMES)
        unknown = sorted(n for n in names if n not in known and not (n.startswith("attr:") and len(n) > 5))
        if unknown:
            raise ValueError(
                f"unknown feature(s) {', '.join(map(repr, unknown))}; use one of "
                f"{', '.join(sorted(known))}, or 'attr:<field>' for a kept CRM field"
            )
        return names

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None, source: str = "[scoring]") -> ScoringConfig:
        """Read the config file's `[scoring]` table; a bad value raises ValueError naming the key."""
        try:
            return cls.model_validate(dict(table or {}))
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "?"
            got = first.get("input")
            raise ValueError(f"{source} {key}: {first['msg']} (got {got!r})") from None
