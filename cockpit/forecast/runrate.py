"""The run-rate: bookings still to come this quarter from deals that do not exist yet.

About half of a quarter's bookings can come from deals created during the quarter; a forecast built
only from the pipeline open today cannot see them. For each of the last few complete quarters, the
run-rate looks at the same point of that quarter (the same number of days after its start) and sums
what was won in that quarter from deals created after that point. The expectation is the mean of
those sums, the variance the larger of their spread across quarters and their compound-Poisson
variance (Σ value²), so one quiet quarter does not make the range falsely narrow.

A past quarter counts only if the CRM was in use at its same point: the deals a CRM imports when it
goes live (the pipeline the organisation already had) are all "created" on that first day, so seen
from any earlier point they would look like new deals, and the run-rate of a quarter straddling the
go-live would hold that whole imported pipeline's bookings (several times a normal quarter's). The
CRM's first record is the earliest creation among the deals known on the as-of date.

Only what was known on the as-of date is used: quarters that ended on or before it, and wins
recorded by then.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from cockpit.forecast.config import ForecastConfig, Fx
from cockpit.models import DealHistory, Quarter, Stage, end_of_day


@dataclass(frozen=True, slots=True)
class DealOutcome:
    """What a deal's history says about its creation and its win, for learning from the past."""

    opportunity_id: str
    owner_id: str
    pipeline_id: str
    created_at: datetime
    """First row of its history: before this the deal did not exist."""
    won_at: datetime | None
    """When it entered the won stage (for good), None if it is not won."""
    booked_on: date | None
    """Its booking date (close date, else the day it was won)."""
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class RunRate:
    """Expected bookings from deals created after the as-of date, and their variance."""

    expected: Decimal
    variance: float
    """In reporting-currency units squared."""
    samples: tuple[Decimal, ...] = ()
    """One sum per past quarter it was learned from, newest first."""
    quarters: tuple[str, ...] = ()
    """Labels of those quarters."""

    @classmethod
    def zero(cls) -> RunRate:
        return cls(expected=Decimal(0), variance=0.0)


def deal_outcomes(histories: Iterable[DealHistory], stages: Mapping[str, Stage]) -> list[DealOutcome]:
    """One outcome per deal with a history (deals without any history row never existed at a date)."""
    out = []
    for history in histories:
        if not history.changes:
            continue
        deal = history.deal
        won_at: datetime | None = None
        last = history.changes[-1]
        if stages[last.stage_id].is_won:
            won_at = last.changed_at
            for row in reversed(history.changes):
                if row.stage_id != last.stage_id:
                    break
                won_at = row.changed_at
        booked = None
        if won_at is not None:
            booked = last.close_date or won_at.date()
        out.append(
            DealOutcome(
                opportunity_id=deal.id,
                owner_id=deal.owner_id,
                pipeline_id=deal.pipeline_id,
                created_at=history.changes[0].changed_at,
                won_at=won_at,
                booked_on=booked,
                amount=last.amount if last.amount is not None else deal.amount,
                currency=deal.currency,
            )
        )
    return out


def same_point(quarter: Quarter, as_of: date, past: Quarter) -> date:
    """The day in `past` as far from its start as `as_of` is from the start of `quarter`."""
    offset = (as_of - quarter.start).days
    return min(past.start + timedelta(days=max(offset, -1)), past.last_day)


def learn_run_rate(
    outcomes: Sequence[DealOutcome],
    quarter: Quarter,
    as_of: date,
    config: ForecastConfig,
    *,
    owner_ids: Collection[str] | None = None,
    fx: Fx | None = None,
    first_record: datetime | None = None,
) -> RunRate:
    """The run-rate for `quarter` seen on `as_of`, from the last `config.run_rate_quarters` quarters
    (fewer when the CRM's records begin later than the same point of the older ones).

    `first_record`: when the CRM's first deal was created (`Store.first_record`), for callers whose
    `outcomes` hold only won deals; by default the earliest creation among `outcomes`.
    """
    if as_of >= quarter.last_day:
        return RunRate.zero()
    fx = fx or config.fx(as_of)
    scope = set(owner_ids) if owner_ids is not None else None
    known = end_of_day(as_of)
    first = min((o.created_at for o in outcomes if o.created_at < known), default=None)
    if first_record is not None and first_record < known:
        first = first_record if first is None else min(first, first_record)
    past_quarters = []
    past = quarter.previous()
    while len(past_quarters) < config.run_rate_quarters and past.last_day <= as_of:
        if first is None or end_of_day(same_point(quarter, as_of, past)) <= first:
            break  # the CRM was not in use yet at that point (nor at any earlier one)
        past_quarters.append(past)
        past = past.previous()
    if not past_quarters:
        return _from_samples([], [], [])
    earliest = past_quarters[-1].start
    wins = [
        o
        for o in outcomes
        if o.won_at is not None
        and o.won_at < known
        and o.booked_on is not None
        and o.booked_on >= earliest
        and (scope is None or o.owner_id in scope)
    ]
    sums, squares = [], []
    for past in past_quarters:
        cut = end_of_day(same_point(quarter, as_of, past))
        values = [
            fx(o.amount, o.currency)
            for o in wins
            if o.created_at >= cut and past.contains(o.booked_on)  # type: ignore[arg-type]
        ]
        sums.append(sum(values, Decimal(0)))
        squares.append(sum(float(v) ** 2 for v in values))
    return _from_samples(sums, squares, [q.label for q in past_quarters])


def _from_samples(sums: list[Decimal], squares: list[float], labels: list[str]) -> RunRate:
    if not sums:
        return RunRate.zero()
    mean = sum(sums, Decimal(0)) / len(sums)
    poisson = sum(squares) / len(squares)
    spread = 0.0
    if len(sums) >= 2:
        m = float(mean)
        spread = sum((float(s) - m) ** 2 for s in sums) / (len(sums) - 1)
    return RunRate(
        expected=mean.quantize(Decimal("0.01")),
        variance=max(poisson, spread),
        samples=tuple(sums),
        quarters=tuple(labels),
    )
