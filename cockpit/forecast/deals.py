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
from datetime import date
from decimal import Decimal
from typing import NamedTuple, NoReturn

from cockpit.forecast.config import CENT, MONEY, ForecastConfig, Fx
from cockpit.models import DealSnapshot, ForecastCategory, Opportunity, Pipeline, Quarter, Stage
from cockpit.models.trusted import gc_paused


class ForecastDeal(NamedTuple):
    """One deal as the forecast sees it on the as-of date (the CRM fields are on `deal`).

    A named tuple: built for every deal of a roll-up, so it must be cheap to make.
    """

    deal: Opportunity
    value: Decimal
    """`deal.amount` in the reporting currency (cent-rounded)."""
    category: ForecastCategory
    """Closed for won deals; else the rep's call or the stage default (see ForecastConfig.category)."""
    won: bool
    """Won and booked in the quarter."""
    in_quarter: bool
    """Open and in the quarter's pipeline (close date in the quarter, or past due in the current one)."""
    past_due: bool
    """Open with a close date before the as-of date."""
    stage_probability: Decimal
    """The CRM's probability: the deal's own if the rep set one, else the stage default."""
    p_in_quarter: float | None
    """The model's probability of winning by quarter end (None: not scored, or closed)."""

    @property
    def opportunity_id(self) -> str:
        return self.deal.id

    @property
    def name(self) -> str:
        return self.deal.name

    @property
    def owner_id(self) -> str:
        return self.deal.owner_id

    @property
    def pipeline_id(self) -> str:
        return self.deal.pipeline_id

    @property
    def stage_id(self) -> str:
        return self.deal.stage_id

    @property
    def amount(self) -> Decimal:
        """In the deal's own currency."""
        return self.deal.amount

    @property
    def currency(self) -> str:
        return self.deal.currency

    @property
    def close_date(self) -> date | None:
        return self.deal.close_date

    @property
    def is_open(self) -> bool:
        return not self.deal.is_closed

    @property
    def weighted(self) -> Decimal:
        """CRM stage-weighted value."""
        return self.value * self.stage_probability


CLOSED, COMMIT, OMITTED = ForecastCategory.CLOSED, ForecastCategory.COMMIT, ForecastCategory.OMITTED
NO_RATE = Decimal(-1)
"""Marker: the converter has no rate for the currency."""


def booking_date(deal: Opportunity) -> date | None:
    """The day a won deal books: its close date, else the day it entered the won stage."""
    if deal.close_date is not None:
        return deal.close_date
    return deal.closed_at.date() if deal.closed_at is not None else None


def in_pipeline(close: date | None, quarter: Quarter, current: bool) -> bool:
    """Whether an open deal with this close date is in `quarter`'s pipeline: dated in the quarter,
    or past due while the quarter is `current` (contains the as-of date)."""
    return close is not None and (quarter.start <= close < quarter.end or (current and close < quarter.start))


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
    every_deal: bool = False,
) -> list[ForecastDeal]:
    """The deals that matter for `quarter` on `as_of`: won in the quarter, and every open deal.

    `owner_ids` limits the scope (None: everyone). Lost deals and deals won in other quarters are
    left out unless `every_deal` (then `won` still means won *in the quarter*). Open deals outside the
    quarter's pipeline are kept (`in_quarter=False`) because the model may give them an in-quarter
    probability.
    """
    scope = set(owner_ids) if owner_ids is not None else None
    fx = fx or config.fx(as_of)
    q_start, q_end = quarter.start, quarter.end
    current = quarter.contains(as_of)  # past-due deals count in the current quarter only
    # Per stage: an open deal's default category (the override, else the stage's; "closed" counts
    # as commit) and the stage's probability, so a deal's defaults cost one lookup.
    overrides = config.category_overrides
    defaults = {
        sid: (COMMIT if (c := overrides.get(sid, stage.category)) is CLOSED else c, stage.probability)
        for sid, stage in stages.items()
    }
    rates: dict[str, Decimal | None] = {c: (None if r == 1 else r) for c, r in fx.rates.items()}
    probs = probabilities if probabilities is not None else {}
    quantize, multiply = MONEY.quantize, MONEY.multiply
    new = tuple.__new__  # ForecastDeal(...) goes through a Python-level __new__: twice the cost
    out: list[ForecastDeal] = []
    append = out.append
    with gc_paused():  # a few hundred thousand tuples: no cycles, nothing for the collector to find
        # The body is inlined (ForecastConfig.category, in_pipeline, Fx.__call__): it runs once per deal.
        for snap in snapshots:
            deal = snap.deal
            if scope is not None and deal.owner_id not in scope:
                continue
            default, stage_p = defaults.get(deal.stage_id) or _unknown_stage(deal)
            close = deal.close_date
            if deal.is_closed:
                booked = booking_date(deal) if deal.is_won else None
                won = booked is not None and q_start <= booked < q_end
                if not won and not every_deal:
                    continue
                member = past_due = False
                p = None
                category = CLOSED if deal.is_won else OMITTED
            else:
                won = False
                if close is None:
                    member = past_due = False
                else:
                    past_due = close < as_of
                    member = q_start <= close < q_end or (current and close < q_start)
                p = probs.get(deal.id)
                category = deal.forecast_category
                if category is None:
                    category = default
                elif category is CLOSED:
                    category = COMMIT
            if deal.probability is not None:
                stage_p = deal.probability
            rate = rates.get(deal.currency, NO_RATE)
            if rate is None:  # the reporting currency
                value = quantize(deal.amount, CENT)
            elif rate is NO_RATE:
                value = fx(deal.amount, deal.currency)  # raises the explanatory FxError
            else:
                value = quantize(multiply(deal.amount, rate), CENT)
            append(new(ForecastDeal, (deal, value, category, won, member, past_due, stage_p, p)))
    return out


def _unknown_stage(deal: Opportunity) -> NoReturn:
    raise KeyError(
        f"deal {deal.id!r} is in stage {deal.stage_id!r}, which no pipeline defines "
        f"(pipeline {deal.pipeline_id!r}); sync the pipelines again"
    )
