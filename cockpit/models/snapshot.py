"""A deal as it stood on a given date, reconstructed from its history."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone

from pydantic import BaseModel, ConfigDict

from cockpit.models.opportunity import Activity, Opportunity, StageChange, complete_history
from cockpit.models.pipeline import Stage


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


class DealHistory(BaseModel):
    """A deal with its complete history: the raw material of the win model and of "what changed"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deal: Opportunity
    changes: tuple[StageChange, ...]
    """Complete snapshot rows, oldest first (see `complete_history`)."""
    activities: tuple[date, ...] = ()
    """Dates of logged activities, oldest first."""


def histories_of(
    opportunities: Iterable[Opportunity],
    changes: Iterable[StageChange],
    activities: Iterable[Activity] = (),
    *,
    complete: bool = False,
) -> list[DealHistory]:
    """Each opportunity with its history rows (in the order given) and its activity dates (sorted):
    a connector's rows grouped as the store returns them. `complete` forward-fills each history
    with `complete_history`, as the store does when it writes."""
    rows: dict[str, list[StageChange]] = defaultdict(list)
    for change in changes:
        rows[change.opportunity_id].append(change)
    days: dict[str, list[date]] = defaultdict(list)
    for activity in activities:
        days[activity.opportunity_id].append(activity.on)
    return [
        DealHistory(
            deal=opp,
            changes=tuple(complete_history(opp, rows[opp.id]) if complete else rows[opp.id]),
            activities=tuple(sorted(days[opp.id])),
        )
        for opp in opportunities
    ]


def end_of_day(day: date) -> datetime:
    """The instant after `day` ends (UTC): "as of D" means everything before this."""
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)


def snapshot_of(history: DealHistory, as_of: date, stages: Mapping[str, Stage]) -> DealSnapshot | None:
    """The deal as it stood at the end of `as_of`, or None if it did not exist yet.

    This is the reference definition the store's SQL reconstruction is tested against.
    """
    cutoff = end_of_day(as_of)
    rows = [c for c in history.changes if c.changed_at < cutoff]
    if not rows:
        return None
    last = rows[-1]
    entered = last.changed_at
    stage_changes = 0
    pushes = 0
    for prev, row in zip(rows, rows[1:]):
        if row.stage_id != prev.stage_id:
            stage_changes += 1
        if row.close_date and prev.close_date and row.close_date > prev.close_date:
            pushes += 1
    for row in reversed(rows):
        if row.stage_id != last.stage_id:
            break
        entered = row.changed_at
    stage = stages[last.stage_id]
    update = {
        "stage_id": last.stage_id,
        "amount": last.amount if last.amount is not None else history.deal.amount,
        "close_date": last.close_date,
        "forecast_category": last.forecast_category,
        "is_closed": stage.is_closed,
        "is_won": stage.is_won,
        "closed_at": entered if stage.is_closed else None,
    }
    return DealSnapshot.model_construct(
        as_of=as_of,
        deal=history.deal.model_copy(update=update),
        stage_entered_at=entered,
        stage_changes=stage_changes,
        close_date_pushes=pushes,
    )
