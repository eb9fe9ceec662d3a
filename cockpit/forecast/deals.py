"""Which deals count for a quarter, in which category, and for how much in the reporting currency.

The rules every part of the forecast shares (roll-up, range, changes, backtest):

- A **won** deal counts as closed won in the quarter that contains its booking date: its close date,
  or the day it entered the won stage when the CRM has no close date (CRM convention: bookings by
  close date).
- An **open** deal is in the quarter's pipeline when its close date falls in the quarter. While the
  quarter is current (it contains the as-of date), open deals whose close date already passed count
  in it too and carry `past_due=True`: they still need a call. Open deals without a close date are in
  no quarter's pipeline (they show up in the hygiene list).
- Every open deal, in the quarter or not, can still be won by quarter end: the model's view uses the
  in-quarter probability of *every* open deal in scope (a deal dated next quarter has a small one).
- All amounts of one calculation are converted at the FX rates in effect on its as-of date and
  rounded to the cent, so totals are exact sums of per-deal values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from cockpit.forecast.config import ForecastConfig, Fx
from cockpit.models import DealSnapshot, ForecastCategory, Opportunity, Pipeline, Quarter, Stage


@dataclass(frozen=True, slots=True)
class ForecastDeal:
    """One deal as the forecast sees it on the as-of date."""

    opportunity_id: str
    name: str
    owner_id: str
    pipeline_id: str
    stage_id: str
    amount: Decimal
    """In the deal's own currency."""
    currency: str
    value: Decimal
    """`amount` in the reporting currency (cent-rounded)."""
    close_date: date | None
    category: ForecastCategory
    """Closed for won deals; else the rep's call or the stage default (see ForecastConfig.category)."""
    won: bool
    """Won and booked in the quarter."""
    in_quarter: bool
    """Open and in the quarter's pipeline (close date in the quarter, or past due in the current one)."""
    past_due: bool
    stage_probability: Decimal
    """The CRM's probability: the deal's own if the rep set one, else the stage default."""
    p_in_quarter: float | None
    """The model's probability of winning by quarter end (None: not scored)."""

    @property
    def is_open(self) -> bool:
        return not self.won

    @property
    def weighted(self) -> Decimal:
        """CRM stage-weighted value."""
        return self.value * self.stage_probability


def booking_date(deal: Opportunity) -> date | None:
    """The day a won deal books: its close date, else the day it entered the won stage."""
    if deal.close_date is not None:
        return deal.close_date
    return deal.closed_at.date() if deal.closed_at is not None else None


def is_current(quarter: Quarter, as_of: date) -> bool:
    """The quarter contains the as-of date (so past-due deals count in it)."""
    return quarter.contains(as_of)


def in_quarter_pipeline(deal: Opportunity, quarter: Quarter, as_of: date) -> tuple[bool, bool]:
    """(in the quarter's open pipeline, past due) for an open deal; (False, False) for closed ones."""
    if deal.is_closed or deal.close_date is None:
        return False, False
    if quarter.contains(deal.close_date):
        return True, False
    if deal.close_date < quarter.start and is_current(quarter, as_of):
        return True, True
    return False, False


def stage_index(pipelines: Iterable[Pipeline]) -> dict[str, Stage]:
    """Stage id → stage over all pipelines."""
    return {stage.id: stage for pipeline in pipelines for stage in pipeline.stages}


def forecast_deals(
    snapshots: Iterable[DealSnapshot],
    quarter: Quarter,
    as_of: date,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    *,
    owner_ids: Collection[str] | None = None,
    probabilities: Mapping[str, float] | None = None,
    fx: Fx | None = None,
) -> list[ForecastDeal]:
    """The deals that matter for `quarter` on `as_of`: won in the quarter, and every open deal.

    `owner_ids` limits the scope (None: everyone). Lost deals and deals won in other quarters are
    left out. Open deals outside the quarter's pipeline are kept (`in_quarter=False`) because the
    model may give them an in-quarter probability.
    """
    scope = set(owner_ids) if owner_ids is not None else None
    fx = fx or config.fx(as_of)
    out: list[ForecastDeal] = []
    for snap in snapshots:
        deal = snap.deal
        if scope is not None and deal.owner_id not in scope:
            continue
        if deal.is_closed:
            booked = booking_date(deal) if deal.is_won else None
            if booked is None or not quarter.contains(booked):
                continue
            member, past_due = False, False
        else:
            member, past_due = in_quarter_pipeline(deal, quarter, as_of)
        stage = _stage(stages, deal)
        out.append(
            ForecastDeal(
                opportunity_id=deal.id,
                name=deal.name,
                owner_id=deal.owner_id,
                pipeline_id=deal.pipeline_id,
                stage_id=deal.stage_id,
                amount=deal.amount,
                currency=deal.currency,
                value=fx(deal.amount, deal.currency),
                close_date=deal.close_date,
                category=config.category(deal, stage),
                won=deal.is_won,
                in_quarter=member,
                past_due=past_due,
                stage_probability=deal.probability if deal.probability is not None else stage.probability,
                p_in_quarter=None if deal.is_closed or probabilities is None else probabilities.get(deal.id),
            )
        )
    return out


def _stage(stages: Mapping[str, Stage], deal: Opportunity) -> Stage:
    try:
        return stages[deal.stage_id]
    except KeyError:
        raise KeyError(
            f"deal {deal.id!r} is in stage {deal.stage_id!r}, which no pipeline defines "
            f"(pipeline {deal.pipeline_id!r}); sync the pipelines again"
        ) from None
