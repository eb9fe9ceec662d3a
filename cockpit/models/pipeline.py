"""Pipelines (funnel models) and their stages."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ForecastCategory(StrEnum):
    """The rep's (or the manager's) call on a deal, in the order a forecast rolls them up."""

    CLOSED = "closed"
    COMMIT = "commit"
    BEST_CASE = "best_case"
    PIPELINE = "pipeline"
    OMITTED = "omitted"

    @property
    def label(self) -> str:
        """Human label: "Best case", "Commit", ..."""
        return self.value.replace("_", " ").capitalize()

    @classmethod
    def parse(cls, text: str) -> ForecastCategory:
        """Read a category from the spellings CRMs use ("Best Case", "BestCase", "Forecast", ...)."""
        key = text.strip().lower().replace(" ", "_").replace("-", "_")
        aliases = {
            "bestcase": "best_case",
            "forecast": "commit",
            "closed_won": "closed",
            "won": "closed",
            "mostlikely": "best_case",
            "most_likely": "best_case",
            "omit": "omitted",
        }
        key = aliases.get(key, key)
        try:
            return cls(key)
        except ValueError:
            allowed = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown forecast category {text!r} (expected one of {allowed})") from None


class Stage(BaseModel):
    """One step of a pipeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    """Stable id of the stage within the CRM (unique across pipelines)."""
    name: str = Field(min_length=1)
    """Display name ("Proposal")."""
    order: int = Field(ge=0)
    """Position in the funnel; closed stages come after every open stage."""
    probability: Decimal = Field(ge=0, le=1)
    """The CRM's default win probability for a deal at this stage, 0..1."""
    category: ForecastCategory = ForecastCategory.PIPELINE
    """Default forecast category for a deal at this stage."""
    is_closed: bool = False
    """True for the won and lost stages."""
    is_won: bool = False
    """True for the won stage."""

    @model_validator(mode="after")
    def _won_is_closed(self) -> Stage:
        if self.is_won and not self.is_closed:
            raise ValueError(f"stage {self.id!r}: is_won=True requires is_closed=True")
        return self


class Pipeline(BaseModel):
    """A funnel: ordered stages ending in won and lost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    stages: tuple[Stage, ...]

    @model_validator(mode="after")
    def _check_stages(self) -> Pipeline:
        ids = [s.id for s in self.stages]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"pipeline {self.id!r}: duplicate stage ids {dupes}")
        if not self.stages:
            raise ValueError(f"pipeline {self.id!r}: has no stages")
        return self

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id; KeyError names the pipeline if it is not here."""
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(f"stage {stage_id!r} is not in pipeline {self.id!r}")

    @property
    def open_stages(self) -> tuple[Stage, ...]:
        """Open stages in funnel order."""
        return tuple(sorted((s for s in self.stages if not s.is_closed), key=lambda s: s.order))

    @property
    def won_stage(self) -> Stage | None:
        return next((s for s in self.stages if s.is_won), None)

    @property
    def lost_stage(self) -> Stage | None:
        return next((s for s in self.stages if s.is_closed and not s.is_won), None)
