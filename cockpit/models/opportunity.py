"""Opportunities (deals) and their stage history."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from cockpit.models.pipeline import ForecastCategory


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime {value.isoformat()} has no time zone (expected e.g. 2026-03-01T09:00:00+00:00)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
"""A datetime that must carry a UTC offset."""

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. CNY")]
"""ISO 4217 currency code."""

Attribute = float | str
"""A kept CRM field: numeric (float) or categorical (str)."""


class Money(BaseModel):
    """An amount in one currency. Decimal, never float."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: Decimal
    currency: Currency

    def __str__(self) -> str:
        return f"{self.amount:,.2f} {self.currency}"


class Opportunity(BaseModel):
    """A deal as the CRM holds it now (or held it at the time of the snapshot)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = ""
    account: str = ""
    owner_id: str = Field(min_length=1)
    pipeline_id: str = Field(min_length=1)
    stage_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0, description="deal value; never negative")
    currency: Currency = "USD"
    close_date: date | None = None
    """Expected close date (open deals) or the date it closed (closed deals). None if the CRM has none."""
    created_at: AwareDatetime | None = None
    """When the deal was created; None where the CRM export has no date at all."""
    modified_at: AwareDatetime | None = None
    forecast_category: ForecastCategory | None = None
    """The rep's call; None means "use the stage's default"."""
    next_step: str | None = None
    next_step_date: date | None = None
    last_activity: date | None = None
    lead_source: str | None = None
    type: str | None = None
    is_closed: bool = False
    is_won: bool = False
    closed_at: AwareDatetime | None = None
    probability: Decimal | None = Field(default=None, ge=0, le=1)
    """The CRM's probability on the deal (0..1) if the rep changed it from the stage default."""
    attributes: dict[str, Attribute] = Field(default_factory=dict)
    """CRM fields outside the schema, kept for the win model (numeric or categorical)."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Opportunity:
        if self.is_won and not self.is_closed:
            raise ValueError(f"opportunity {self.id!r}: is_won=True but is_closed=False")
        if self.is_closed and self.closed_at is None:
            raise ValueError(f"opportunity {self.id!r}: closed but closed_at is missing")
        if self.created_at is not None and self.close_date is not None and self.is_closed:
            if self.close_date < self.created_at.date():
                raise ValueError(
                    f"opportunity {self.id!r}: close_date {self.close_date} is before creation "
                    f"{self.created_at.date()}"
                )
        return self

    @property
    def money(self) -> Money:
        return Money(amount=self.amount, currency=self.currency)


class StageChange(BaseModel):
    """One entry of a deal's history: the state of the deal right after a change.

    Each row is a full snapshot of the tracked fields (stage, amount, close date, category), as
    Salesforce's OpportunityHistory records it. Connectors that only know some fields fill the rest
    forward with `complete_history`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    opportunity_id: str = Field(min_length=1)
    changed_at: AwareDatetime
    stage_id: str = Field(min_length=1)
    amount: Decimal | None = Field(default=None, ge=0)
    close_date: date | None = None
    forecast_category: ForecastCategory | None = None


class Activity(BaseModel):
    """A logged touch on a deal (call, meeting, email, task done). Its date is what counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    opportunity_id: str = Field(min_length=1)
    on: date
    kind: str = "activity"


def complete_history(opp: Opportunity, changes: list[StageChange]) -> list[StageChange]:
    """Order a deal's history and fill unknown fields forward.

    Rows before the first known amount take it (or the deal's amount). An open deal's rows before
    the first known close date or category take the deal's current ones (the CRM's best guess). A
    closed deal's earlier rows never do: its close date and category are the outcome, and filling
    them backward would leak the answer into the past; only its closing row takes them.
    A deal with no history gets one row at its creation in its current stage. The result never has
    a None amount.
    """
    rows = sorted(changes, key=lambda c: c.changed_at)
    if rows and all(r.amount is not None and r.close_date is not None and r.forecast_category is not None
                    for r in rows):
        return rows  # already complete (the usual case for connectors that send full snapshots)
    if not rows:
        start = opp.created_at or opp.modified_at or opp.closed_at
        if start is None:
            return []
        rows = [StageChange(opportunity_id=opp.id, changed_at=start, stage_id=opp.stage_id)]
    amount: Decimal | None = next((r.amount for r in rows if r.amount is not None), opp.amount)
    if opp.is_closed:
        close, cat = None, None
    else:
        close = next((r.close_date for r in rows if r.close_date is not None), opp.close_date)
        cat = next((r.forecast_category for r in rows if r.forecast_category is not None), opp.forecast_category)
    out: list[StageChange] = []
    last = len(rows) - 1
    for n, row in enumerate(rows):
        amount = row.amount if row.amount is not None else amount
        close = row.close_date if row.close_date is not None else close
        cat = row.forecast_category if row.forecast_category is not None else cat
        if n == last and opp.is_closed:
            close = close if row.close_date is not None else (opp.close_date or close)
            cat = cat if row.forecast_category is not None else (opp.forecast_category or cat)
        out.append(row.model_copy(update={"amount": amount, "close_date": close, "forecast_category": cat}))
    return out
