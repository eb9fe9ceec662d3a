"""A win-probability score and the reasons behind it."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field


class Reason(BaseModel):
    """One feature's pull on a score, in plain units ("close date pushed 3 times: -9 pts")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature: str
    """Feature name as the model knows it ("days_in_stage")."""
    text: str
    """What a sales leader reads, without the points."""
    points: float
    """Effect on the probability, in percentage points (negative lowers it)."""

    def __str__(self) -> str:
        sign = "+" if self.points >= 0 else "\u2212"
        return f"{self.text}: {sign}{abs(self.points):.0f} pts"


class DealScore(BaseModel):
    """The model's view of one open deal on one date."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    opportunity_id: str
    as_of: date
    p_won: float = Field(ge=0, le=1)
    """Probability the deal is won eventually."""
    p_in_quarter: float = Field(ge=0, le=1)
    """Probability the deal is won by the end of the quarter containing `as_of`."""
    reasons: tuple[Reason, ...] = ()
    model_version: str = ""
    """Id of the model (or "baseline:stage-rate") that produced the score."""
