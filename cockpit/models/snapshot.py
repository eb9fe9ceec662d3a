"""A deal as it stood on a given date, reconstructed from its history."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict

from cockpit.models.opportunity import Opportunity


class DealSnapshot(BaseModel):
    """`deal` holds the values as of `as_of`: stage, amount, close date, category and closed/won
    flags come from the last history row on or before that day; everything else is the CRM's
    current record (name, account, owner, source, type, attributes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    as_of: date
    deal: Opportunity
    stage_entered_at: datetime
    """When the deal entered the stage it was in on `as_of`."""
    stage_changes: int = 0
    """Number of stage changes up to `as_of`."""
    close_date_pushes: int = 0
    """How often the close date moved later up to `as_of`."""
