"""Domain models: plain pydantic, no I/O."""

from cockpit.models.calendar import FiscalCalendar, Quarter
from cockpit.models.opportunity import (
    Activity,
    Attribute,
    AwareDatetime,
    Money,
    Opportunity,
    StageChange,
    complete_history,
)
from cockpit.models.owner import OrgTree, Owner
from cockpit.models.pipeline import ForecastCategory, Pipeline, Stage
from cockpit.models.snapshot import DealSnapshot
from cockpit.models.sync import SyncBatch, SyncProgress

__all__ = [
    "Activity",
    "DealSnapshot",
    "Attribute",
    "AwareDatetime",
    "FiscalCalendar",
    "ForecastCategory",
    "Money",
    "Opportunity",
    "OrgTree",
    "Owner",
    "Pipeline",
    "Quarter",
    "Stage",
    "StageChange",
    "SyncBatch",
    "SyncProgress",
    "complete_history",
]
