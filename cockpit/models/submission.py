"""A committed forecast (Submission) and a review call in progress (Draft).

A submission is the manager's number for one quarter and one scope (their team), with one line per
deal carrying the call. It is a fact: never edited or deleted; a later one supersedes it.

Money: every line keeps the deal's amount in its own currency and the FX rate into the reporting
currency used at submission time; its reporting value is `(override or amount) × fx_rate`, rounded
half-even to the cent. `totals` must equal the sum of the lines' reporting values per category, so
a submission read back from any export checks itself.

The manager's number: the bookings the manager commits to for the quarter, closed won included.
The lines imply `closed + commit` (the "sum"); a `manager_number` that differs from it needs a
`reason`.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cockpit.models.opportunity import AwareDatetime
from cockpit.models.pipeline import ForecastCategory

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
CENT = Decimal("0.01")
ALL_SCOPE = "*"
"""The scope of a submission for everyone (no single owner at the top)."""


class CategoryAmounts(BaseModel):
    """Money per forecast category, reporting currency. Categories are disjoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    closed: Decimal = Decimal(0)
    commit: Decimal = Decimal(0)
    best_case: Decimal = Decimal(0)
    pipeline: Decimal = Decimal(0)
    omitted: Decimal = Decimal(0)

    def of(self, category: ForecastCategory) -> Decimal:
        return getattr(self, category.value)

    @property
    def commit_forecast(self) -> Decimal:
        """closed + commit: what the calls add up to as a commit number."""
        return self.closed + self.commit

    @classmethod
    def from_mapping(cls, amounts: dict[ForecastCategory, Decimal]) -> CategoryAmounts:
        return cls(**{c.value: amounts.get(c, Decimal(0)) for c in ForecastCategory})


class ModelRange(BaseModel):
    """The model's view when the submission was made (reporting currency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expected: Decimal
    p10: Decimal
    p50: Decimal
    p90: Decimal

    @model_validator(mode="after")
    def _ordered(self) -> ModelRange:
        if not self.p10 <= self.p50 <= self.p90:
            raise ValueError(
                f"model range must have p10 <= p50 <= p90, got {self.p10}, {self.p50}, {self.p90}"
            )
        return self


class SubmissionLine(BaseModel):
    """One deal and the call on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    opportunity_id: str = Field(min_length=1)
    name: str = ""
    owner_id: str = Field(min_length=1)
    pipeline_id: str = Field(min_length=1)
    stage_id: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)
    """The deal's amount in its own currency, as the CRM had it."""
    currency: Currency
    fx_rate: Decimal = Field(default=Decimal(1), gt=0)
    """Reporting-currency units per unit of `currency` at submission time."""
    close_date: date | None = None
    won: bool = False
    """Won and booked in the quarter (its category is then `closed`)."""
    category: ForecastCategory
    """The call."""
    amount_override: Decimal | None = Field(default=None, ge=0)
    """The amount the manager believes, in the deal's currency."""
    close_date_override: date | None = None
    note: str = ""
    reviewed: bool = False

    @model_validator(mode="after")
    def _closed_means_won(self) -> SubmissionLine:
        if self.won != (self.category is ForecastCategory.CLOSED):
            state = "won" if self.won else "open"
            raise ValueError(
                f"line {self.opportunity_id!r}: an {state} deal cannot be called {self.category.value!r} "
                "(only won deals are 'closed')"
            )
        return self

    @property
    def effective_amount(self) -> Decimal:
        return self.amount if self.amount_override is None else self.amount_override

    @property
    def effective_close_date(self) -> date | None:
        return self.close_date if self.close_date_override is None else self.close_date_override

    @property
    def value(self) -> Decimal:
        """Effective amount in the reporting currency, cent-rounded."""
        return (self.effective_amount * self.fx_rate).quantize(CENT, rounding=ROUND_HALF_EVEN)


def line_totals(lines: tuple[SubmissionLine, ...] | list[SubmissionLine]) -> CategoryAmounts:
    """Sum of the lines' reporting values per category."""
    sums = {c: Decimal(0) for c in ForecastCategory}
    for line in lines:
        sums[line.category] += line.value
    return CategoryAmounts.from_mapping(sums)


def _sorted_unique(lines: tuple[SubmissionLine, ...]) -> tuple[SubmissionLine, ...]:
    """Lines in opportunity-id order (stable exports); a deal may have one line only."""
    ordered = tuple(sorted(lines, key=lambda line: line.opportunity_id))
    for prev, line in zip(ordered, ordered[1:]):
        if prev.opportunity_id == line.opportunity_id:
            raise ValueError(f"deal {line.opportunity_id!r} has two lines")
    return ordered


class Submission(BaseModel):
    """A manager's committed forecast for a quarter and a scope. Append-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int | None = None
    """Set by the store; None until stored."""
    quarter: str = Field(min_length=1)
    """Fiscal quarter label, e.g. FY2026-Q3."""
    scope: str = Field(min_length=1)
    """Owner id at the top of the team the number covers (`*` for everyone)."""
    author: str = Field(min_length=1)
    """The OS user who submitted."""
    created_at: AwareDatetime
    currency: Currency
    """Reporting currency of every total."""
    totals: CategoryAmounts
    manager_number: Decimal = Field(ge=0)
    reason: str = ""
    """Why the number differs from closed + commit (required then)."""
    model: ModelRange | None = None
    model_version: str = ""
    data_fingerprint: str = ""
    """Fingerprint of the deal data the submission was made on (see cockpit.forecast.submissions)."""
    lines: tuple[SubmissionLine, ...] = ()
    """One per deal, ordered by opportunity id."""

    _order_lines = field_validator("lines")(_sorted_unique)

    @model_validator(mode="after")
    def _check(self) -> Submission:
        computed = line_totals(self.lines)
        for category in ForecastCategory:
            if computed.of(category) != self.totals.of(category):
                raise ValueError(
                    f"totals.{category.value} is {self.totals.of(category)} but the lines add up to "
                    f"{computed.of(category)}"
                )
        if self.differs and not self.reason.strip():
            raise ValueError(
                f"manager_number {self.manager_number} differs from closed + commit "
                f"({self.totals.commit_forecast}); give a reason"
            )
        return self

    @property
    def call_sum(self) -> Decimal:
        """closed + commit, from the calls."""
        return self.totals.commit_forecast

    @property
    def differs(self) -> bool:
        """The manager's number is not the sum of the calls."""
        return self.manager_number != self.call_sum


class DraftPosition(BaseModel):
    """Where a review call stopped: pipeline, stage and deal to resume on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline_id: str | None = None
    stage_id: str | None = None
    opportunity_id: str | None = None


class Draft(BaseModel):
    """A review call in progress: the calls made so far, resumable. One per quarter, scope and author."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quarter: str = Field(min_length=1)
    scope: str = Field(min_length=1)
    author: str = Field(min_length=1)
    updated_at: AwareDatetime
    currency: Currency
    lines: tuple[SubmissionLine, ...] = ()
    position: DraftPosition | None = None
    manager_number: Decimal | None = Field(default=None, ge=0)
    reason: str = ""

    _order_lines = field_validator("lines")(_sorted_unique)

    @property
    def reviewed(self) -> int:
        return sum(1 for line in self.lines if line.reviewed)
