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
from cockpit.models.score import DealScore, Reason
from cockpit.models.snapshot import DealHistory, DealSnapshot, end_of_day, histories_of, snapshot_of
from cockpit.models.sync import SyncBatch, SyncProgress

__all__ = [
    "DealHistory",
    "DealScore",
    "Reason",
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
    "end_of_day",
    "histories_of",
    "snapshot_of",
]
