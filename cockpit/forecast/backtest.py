"""Accuracy: for past quarters and each week of them, the forecasts of the day against what closed.

For quarter Q and week w the forecast is made as of the first day of that week (end of day,
`Q.week_start(w)`): the pipeline is rebuilt as it stood then (`snapshot_at`, by default
`snapshot_of` over the histories), the in-quarter probabilities come from `probabilities_at` (which
must use only what was known then), and the run-rate is learned from quarters that had ended. The
forecasts compared with the actual bookings of Q (deals won and booked in Q, at their final
amounts):

- model: the P50 of the model's range (closed so far + open deals + run-rate), and whether the
  actual fell inside P10–P90;
- stage-weighted: closed so far + Σ CRM probability × value of the quarter's open pipeline;
- commit: closed so far + the commit category;
- submission: the scope's latest submission made on or before that day, where one exists.

Every amount of a quarter is converted at the FX rates of its last day, so exchange-rate moves do
not show up as forecast error. Error % = (forecast − actual) ÷ actual × 100.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from cockpit.format import json_ready
from cockpit.forecast.config import ForecastConfig, Fx
from cockpit.forecast.deals import forecast_deals, stage_index
from cockpit.forecast.distribution import ForecastRange, forecast_range
from cockpit.forecast.rollup import totals_of
from cockpit.forecast.runrate import DealOutcome, deal_outcomes, learn_run_rate
from cockpit.models import (
    DealHistory,
    DealSnapshot,
    FiscalCalendar,
    OrgTree,
    Pipeline,
    Quarter,
    Stage,
    end_of_day,
    snapshot_of,
)
from cockpit.models.submission import ALL_SCOPE, Submission

ProbabilitiesAt = Callable[[date, Sequence[DealSnapshot]], Mapping[str, float]]
"""In-quarter win probabilities of the open deals on a date, from what was known on that date."""
SnapshotAt = Callable[[date], Sequence[DealSnapshot]]
"""Every deal as it stood at the end of a date."""


@dataclass(frozen=True, slots=True)
class BacktestPoint:
    """One quarter-week: the forecasts made then and the quarter's actual bookings."""

    quarter: str
    week: int
    as_of: date
    actual: Decimal
    closed: Decimal
    """Already won in the quarter on as_of."""
    model: ForecastRange
    stage_weighted: Decimal
    commit: Decimal
    submission: Decimal | None = None

    def error(self, forecast: Decimal | None) -> float | None:
        """(forecast − actual) ÷ actual, in %; None without a forecast or with no actual bookings."""
        if forecast is None or not self.actual:
            return None
        return float((forecast - self.actual) / self.actual * 100)

    @property
    def inside(self) -> bool:
        return self.model.contains(self.actual)


@dataclass(frozen=True, slots=True)
class WeekAccuracy:
    """Errors at one week of quarter over the backtested quarters (mean absolute and mean signed, %)."""

    week: int
    quarters: int
    model_error: float | None
    model_bias: float | None
    stage_weighted_error: float | None
    commit_error: float | None
    submission_error: float | None
    inside_range: float
    """Share of these quarters whose actual fell inside P10–P90."""
    expected_error: float | None = None
    """The mean absolute error % the model's own ranges imply: what a calibrated forecast would still
    miss by, from the chance in the deals themselves. An error well above it is the model's; one near
    it is the quarter's luck."""


NORMAL_P10_P90 = 2.563
"""Width of a normal distribution's P10–P90 in standard deviations."""
NORMAL_MEAN_ABS = 0.798
"""A normal's mean absolute deviation in standard deviations (√(2/π))."""


@dataclass(frozen=True, slots=True)
class OwnerBias:
    """How a scope owner's submissions compared with what their team closed (%, + means over-called)."""

    owner_id: str
    submissions: int
    bias: float
    mean_abs_error: float


@dataclass
class BacktestReport:
    points: list[BacktestPoint]
    weeks: list[WeekAccuracy]
    inside_range: float
    """Share of all quarter-weeks whose actual fell inside P10–P90."""
    owner_bias: list[OwnerBias] = field(default_factory=list)

    def week(self, number: int) -> WeekAccuracy:
        return next(w for w in self.weeks if w.week == number)

    def only(self, quarters: Collection[str]) -> BacktestReport:
        """The same report over some of its quarters (labels), e.g. the last four."""
        points = [p for p in self.points if p.quarter in quarters]
        inside = sum(p.inside for p in points) / len(points) if points else 0.0
        return BacktestReport(
            points=points, weeks=by_week(points), inside_range=inside, owner_bias=list(self.owner_bias)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json` (money as strings)."""
        return json_ready(self)


def past_quarters(calendar: FiscalCalendar, today: date, count: int) -> list[Quarter]:
    """The `count` most recent quarters that ended before `today`, oldest first."""
    out = []
    quarter = calendar.quarter_of(today).previous()
    while len(out) < count:
        out.append(quarter)
        quarter = quarter.previous()
    return out[::-1]


class HistorySnapshots:
    """`snapshot_at` over in-memory histories, skipping deals that cannot matter on that date."""

    def __init__(self, histories: Iterable[DealHistory], stages: Mapping[str, Stage]) -> None:
        self.stages = dict(stages)
        self.histories = [h for h in histories if h.changes]

    def __call__(self, on: date, since: date | None = None) -> list[DealSnapshot]:
        """Deals as of `on`; with `since`, only those still open or whose history moved on or after it."""
        cutoff = end_of_day(on)
        floor = end_of_day(since - timedelta(days=1)) if since is not None else None
        out = []
        for history in self.histories:
            if history.changes[0].changed_at >= cutoff:
                continue
            if (
                floor is not None
                and history.changes[-1].changed_at < floor
                and self.stages[history.changes[-1].stage_id].is_closed
            ):
                continue
            snap = snapshot_of(history, on, self.stages)
            if snap is not None:
                out.append(snap)
        return out


def backtest(
    histories: Sequence[DealHistory],
    pipelines: Sequence[Pipeline],
    calendar: FiscalCalendar,
    config: ForecastConfig,
    *,
    probabilities_at: ProbabilitiesAt,
    quarters: Sequence[Quarter],
    weeks: Iterable[int] | None = None,
    snapshot_at: SnapshotAt | None = None,
    owner_ids: Collection[str] | None = None,
    submissions: Sequence[Submission] = (),
    scope: str | None = None,
    tree: OrgTree | None = None,
) -> BacktestReport:
    """Backtest `quarters` week by week (all weeks, or `weeks`) for the deals of `owner_ids` (None: all).

    `submissions` of `scope` (its owner id, or `*` for everyone) fill the submission column; with a
    `tree`, every submission's scope is also scored against its own team for the per-owner bias.
    """
    stages = stage_index(pipelines)
    outcomes = deal_outcomes(histories, stages)
    snap_at: Callable[..., Sequence[DealSnapshot]]
    if snapshot_at is None:
        own = HistorySnapshots(histories, stages)
        snap_at = own
    else:
        snap_at = snapshot_at
    scope_key = scope or ALL_SCOPE
    points = []
    for quarter in quarters:
        fx = config.fx(quarter.last_day)
        actual = _actual(outcomes, quarter, fx, owner_ids)
        mine = sorted(
            (s for s in submissions if s.quarter == quarter.label and s.scope == scope_key), key=_when
        )
        for week in weeks or range(1, quarter.weeks + 1):
            if week > quarter.weeks:
                continue
            as_of = quarter.week_start(week)
            snaps = snap_at(as_of, quarter.start) if snapshot_at is None else snap_at(as_of)
            points.append(
                _point(
                    snaps,
                    quarter,
                    week,
                    as_of,
                    actual,
                    stages,
                    config,
                    fx,
                    outcomes,
                    owner_ids,
                    probabilities_at,
                    _latest_before(mine, as_of),
                )
            )
    labels = {q.label for q in quarters}
    judged = [s for s in submissions if s.quarter in labels]
    bias = _owner_bias(judged, outcomes, calendar, config, tree) if tree is not None else []
    inside = sum(p.inside for p in points) / len(points) if points else 0.0
    return BacktestReport(points=points, weeks=by_week(points), inside_range=inside, owner_bias=bias)


def _when(sub: Submission):
    return sub.created_at


def _latest_before(subs: list[Submission], as_of: date) -> Decimal | None:
    cutoff = end_of_day(as_of)
    made = [s for s in subs if s.created_at < cutoff]
    return made[-1].manager_number if made else None


def _point(
    snaps: Sequence[DealSnapshot],
    quarter: Quarter,
    week: int,
    as_of: date,
    actual: Decimal,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    fx: Fx,
    outcomes: Sequence[DealOutcome],
    owner_ids: Collection[str] | None,
    probabilities_at: ProbabilitiesAt,
    submission: Decimal | None,
) -> BacktestPoint:
    scoped = [s for s in snaps if owner_ids is None or s.deal.owner_id in owner_ids]
    probabilities = probabilities_at(as_of, scoped)
    deals = forecast_deals(scoped, quarter, as_of, stages, config, probabilities=probabilities, fx=fx)
    totals = totals_of(deals)
    scored = [d for d in deals if not d.won and d.p_in_quarter is not None]
    run_rate = learn_run_rate(outcomes, quarter, as_of, config, owner_ids=owner_ids, fx=fx)
    model = forecast_range(
        totals.closed,
        [d.value for d in scored],
        [d.p_in_quarter for d in scored],
        run_rate,  # type: ignore[misc]
    )
    return BacktestPoint(
        quarter=quarter.label,
        week=week,
        as_of=as_of,
        actual=actual,
        closed=totals.closed,
        model=model,
        stage_weighted=totals.stage_weighted_forecast,
        commit=totals.commit_forecast,
        submission=submission,
    )


def _actual(
    outcomes: Sequence[DealOutcome], quarter: Quarter, fx: Fx, owner_ids: Collection[str] | None
) -> Decimal:
    """Bookings of the quarter: deals won and booked in it, at their final amounts."""
    return sum(
        (
            fx(o.amount, o.currency)
            for o in outcomes
            if o.booked_on is not None
            and quarter.contains(o.booked_on)
            and (owner_ids is None or o.owner_id in owner_ids)
        ),
        Decimal(0),
    )


def _mean(values: Iterable[float | None], absolute: bool) -> float | None:
    kept = [abs(v) if absolute else v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def by_week(points: Sequence[BacktestPoint]) -> list[WeekAccuracy]:
    """Errors of the points grouped by week of quarter."""
    out = []
    for week in sorted({p.week for p in points}):
        rows = [p for p in points if p.week == week]
        out.append(
            WeekAccuracy(
                week=week,
                quarters=len(rows),
                model_error=_mean((p.error(p.model.p50) for p in rows), True),
                model_bias=_mean((p.error(p.model.p50) for p in rows), False),
                stage_weighted_error=_mean((p.error(p.stage_weighted) for p in rows), True),
                commit_error=_mean((p.error(p.commit) for p in rows), True),
                submission_error=_mean((p.error(p.submission) for p in rows), True),
                inside_range=sum(p.inside for p in rows) / len(rows),
                expected_error=_mean((_expected_error(p) for p in rows), False),
            )
        )
    return out


def _expected_error(point: BacktestPoint) -> float | None:
    """The mean absolute error % the point's own P10–P90 implies (read as a normal's, around the P50)."""
    model = point.model
    if not model.p50:
        return None
    sigma = float(model.p90 - model.p10) / NORMAL_P10_P90
    return sigma * NORMAL_MEAN_ABS / float(model.p50) * 100


def _owner_bias(
    submissions: Sequence[Submission],
    outcomes: Sequence[DealOutcome],
    calendar: FiscalCalendar,
    config: ForecastConfig,
    tree: OrgTree,
) -> list[OwnerBias]:
    errors: dict[str, list[float]] = {}
    for sub in submissions:
        quarter = calendar.parse_quarter(sub.quarter)
        members = (
            None
            if sub.scope == ALL_SCOPE
            else set(tree.subtree(sub.scope))
            if sub.scope in tree.owners
            else None
        )
        if sub.scope != ALL_SCOPE and members is None:
            continue
        actual = _actual(outcomes, quarter, config.fx(quarter.last_day), members)
        if actual:
            errors.setdefault(sub.scope, []).append(float((sub.manager_number - actual) / actual * 100))
    return [
        OwnerBias(owner, len(errs), statistics.fmean(errs), statistics.fmean(abs(e) for e in errs))
        for owner, errs in sorted(errors.items())
    ]
