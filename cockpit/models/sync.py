"""What a connector hands to the store: one batch of a sync run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cockpit.models.opportunity import Activity, Opportunity, StageChange
from cockpit.models.owner import Owner
from cockpit.models.pipeline import Pipeline


class SyncBatch(BaseModel):
    """A unit the store writes in one transaction.

    `changes` holds the complete history of every opportunity in `opportunities` (the store replaces
    a deal's history with what the batch brings). `cursor` is the connector's resume point after
    this batch; the store records it with the batch, so an interrupted sync resumes from the last
    batch that was written.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipelines: list[Pipeline] = Field(default_factory=list)
    owners: list[Owner] = Field(default_factory=list)
    opportunities: list[Opportunity] = Field(default_factory=list)
    changes: list[StageChange] = Field(default_factory=list)
    activities: list[Activity] = Field(default_factory=list)
    """Logged activities of the batch's opportunities (replaces what the store held for them)."""
    cursor: str | None = None
    """Opaque resume point (e.g. the newest SystemModstamp seen)."""
    deleted_ids: list[str] = Field(default_factory=list)
    """Opportunities the CRM reports deleted."""


class SyncProgress(BaseModel):
    """A progress report a connector emits while it works."""

    model_config = ConfigDict(frozen=True)

    records: int = 0
    total: int | None = None
    pages: int = 0
    message: str = ""
