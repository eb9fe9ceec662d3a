"""Point-in-time training examples with their two targets, and the rules of the time split.

Every deal contributes one example per as-of date while it was open (dates `example_step_days`
apart, counted from each fiscal quarter's first day), with features computed only from what was
known at the end of that date. The two targets:

- `won`: the deal was eventually won. Known once the deal closed; a deal still open has no label.
- `in_quarter`: the deal was won by the end of the as-of date's fiscal quarter. Every example of a
  quarter is settled on the quarter's last day, including deals still open today (a settled "no" for
  every quarter that has ended). Settling a whole quarter at once matters twice: leaving open deals out
  would teach the model that every old deal eventually closes (stale deals that never close are
  exactly what a quarter forecast must discount), and settling early wins before the quarter ends
  would fill the latest quarter with wins whose "no"s are not known yet.

Each label has the day it became known. A cut-off C splits the examples by that day: training uses
the labels known before C, testing the ones that became known from C on. For `won` this is exactly
"train on deals closed before C, test on later ones", and one deal's examples never straddle the
split. For `in_quarter` whole quarters fall on one side; a deal open across C can have settled
quarters in training and later ones in the test, but no example is in both and every training
label was known at C.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from cockpit.models import DealHistory, FiscalCalendar, Owner, Pipeline
from cockpit.scoring.config import ScoringConfig
from cockpit.scoring.features import (
    CallEvents,
    FeatureContext,
    FeatureFrame,
    Flat,
    StageTable,
    attribute_kinds,
    build_frame,
    flatten,
    make_context,
    stage_medians,
)

TARGETS = ("won", "in_quarter")
"""The two targets: won eventually, and won by the end of the as-of date's quarter."""

NEVER = np.inf


@dataclass(frozen=True)
class Outcomes:
    """Each deal's state at the end of the knowledge day: closed when, and won or not."""

    close_day: np.ndarray
    """Day the deal closed (entered its final closed stage), NaN if open."""
    won: np.ndarray
    first_day: np.ndarray
    """Day the deal first appears (NaN for a deal without any date)."""

    @property
    def closed(self) -> np.ndarray:
        return ~np.isnan(self.close_day)


@dataclass
class Prepared:
    """Histories flattened once, with their outcomes at the knowledge day."""

    histories: list[DealHistory]
    pipelines: list[Pipeline]
    owners: list[Owner]
    calendar: FiscalCalendar
    stages: StageTable
    attributes: dict[str, str]
    flat: Flat
    knowledge_day: int
    outcomes: Outcomes


@dataclass
class ExampleSet:
    """Point-in-time examples of deals, with both targets and when each label became known."""

    frame: FeatureFrame
    labels: dict[str, np.ndarray]
    """Target -> 1.0 / 0.0, NaN where the label is not known at the knowledge day."""
    known: dict[str, np.ndarray]
    """Target -> day the label became known (inf if never)."""
    context: FeatureContext
    deal_ids: list[str]
    knowledge_day: int

    def __len__(self) -> int:
        return len(self.frame.day)

    def known_before(self, target: str, day: float) -> np.ndarray:
        """Examples whose `target` label was known before `day` (the training side of a cut-off)."""
        return self.known[target] < day

    def known_between(self, target: str, start: float, stop: float) -> np.ndarray:
        """Examples whose `target` label became known in [start, stop)."""
        k = self.known[target]
        return (k >= start) & (k < stop)


def prepare(
    histories: Iterable[DealHistory],
    pipelines: Sequence[Pipeline],
    owners: Sequence[Owner],
    calendar: FiscalCalendar,
    config: ScoringConfig,
    as_of: date | None = None,
) -> Prepared:
    """Flatten `histories` and settle each deal's outcome as known at the end of `as_of`.

    Without `as_of`, the knowledge day is the latest day anything happened in the data.
    """
    hist = list(histories)
    stages = StageTable.of(pipelines)
    attributes = attribute_kinds(hist, config.disabled_features)
    flat = flatten(hist, stages, attributes)
    if as_of is not None:
        day = as_of.toordinal()
    else:
        dated = flat.row_day[flat.row_day > 0]
        latest = [float(dated.max())] if len(dated) else []
        if len(flat.act_day):
            latest.append(float(flat.act_day.max()))
        day = int(max(latest)) if latest else date.today().toordinal()
    return Prepared(
        hist,
        list(pipelines),
        list(owners),
        calendar,
        stages,
        attributes,
        flat,
        day,
        outcomes_at(flat, stages, day),
    )


def outcomes_at(flat: Flat, stages: StageTable, day: int) -> Outcomes:
    """Each deal's outcome as known at the end of `day`, from its history.

    A deal is closed if its last row on or before `day` is in a closed stage (closed on the day it
    entered that stage). A history without a closing row falls back to the CRM record's close time.
    """
    n = flat.n_deals
    deals = np.arange(n, dtype=np.int64)
    pos = np.searchsorted(flat.row_key, (deals << 20) + day, side="right") - 1
    exists = pos >= flat.row_start[:-1]
    safe = np.where(exists, pos, 0)
    stage = np.where(exists, flat.row_stage[safe], -1)
    in_closed = (stage >= 0) & stages.is_closed[np.where(stage >= 0, stage, 0)]
    close_day = np.where(in_closed, flat.row_entered[safe], np.nan)
    won = in_closed & stages.is_won[np.where(stage >= 0, stage, 0)]
    fallback = ~in_closed & exists & (flat.deal_closed_day <= day)
    fallback &= flat.deal_closed_day >= np.where(exists, flat.row_day[safe], np.inf)
    close_day = np.where(fallback, flat.deal_closed_day, close_day)
    won = np.where(fallback, flat.deal_won, won)
    first = np.where(flat.first_day <= day, flat.first_day, np.nan)
    return Outcomes(close_day=close_day, won=won.astype(bool), first_day=first)


def example_days(calendar: FiscalCalendar, first: int, last: int, step: int) -> np.ndarray:
    """As-of dates from `first` to `last` (ordinals): each quarter's first day, then every `step` days."""
    days: list[int] = []
    quarter = calendar.quarter_of(date.fromordinal(first))
    while quarter.start.toordinal() <= last:
        start, end = quarter.start.toordinal(), quarter.end.toordinal()
        days.extend(range(start, end, step))
        quarter = quarter.next()
    out = np.array(days, dtype=np.int64)
    return out[(out >= first) & (out <= last)]


def context_for(prep: Prepared, config: ScoringConfig, median_before: int | None = None) -> FeatureContext:
    """The feature context of `prep`: past outcomes of all deals closed by the knowledge day, and
    every forecast call made by then."""
    out = prep.outcomes
    closed = np.flatnonzero(out.closed)
    events = [(int(out.close_day[i]), prep.flat.owner_ids[i], bool(out.won[i])) for i in closed]
    return make_context(
        prep.pipelines,
        prep.owners,
        prep.calendar,
        closed=events,
        medians=stage_medians(prep.flat, prep.stages, median_before),
        calls=CallEvents.from_flat(prep.flat, prep.stages, prep.knowledge_day),
        attributes=prep.attributes,
        disabled=config.disabled_features,
        win_rate_prior=config.win_rate_prior_deals,
        activity_window_days=config.activity_window_days,
    )


def examples_from(prep: Prepared, context: FeatureContext, config: ScoringConfig) -> ExampleSet:
    """Examples of every dated deal of `prep` on the as-of grid, with labels and when they were known."""
    out = prep.outcomes
    day = prep.knowledge_day
    dated = ~np.isnan(out.first_day)
    if not dated.any():
        return _empty(prep, context)
    first_all = int(np.nanmin(out.first_day))
    grid = example_days(prep.calendar, first_all, day, config.example_step_days)
    open_limit = prep.calendar.quarter_of(date.fromordinal(day + 1)).start.toordinal()
    # Closed deals: as-of days before the close day. Open deals: days in quarters that have ended.
    stop = np.where(out.closed, out.close_day, float(open_limit))
    lo = np.searchsorted(grid, np.where(dated, out.first_day, np.inf), side="left")
    hi = np.searchsorted(grid, np.where(dated, stop, -np.inf), side="left")
    count = np.maximum(hi - lo, 0)
    deal = np.repeat(np.arange(prep.flat.n_deals, dtype=np.int64), count)
    offsets = np.repeat(np.cumsum(count) - count, count)
    days = grid[np.repeat(lo, count) + (np.arange(len(deal)) - offsets)]
    frame = build_frame(prep.flat, deal, days, context)
    frame = frame.subset(frame.is_open)
    return _label(prep, context, frame)


def _label(prep: Prepared, context: FeatureContext, frame: FeatureFrame) -> ExampleSet:
    out = prep.outcomes
    deal = frame.deal
    close = out.close_day[deal]
    closed = ~np.isnan(close)
    won = out.won[deal] & closed
    qend = frame.quarter_end.astype(np.float64)
    y_won = np.where(closed, won.astype(np.float64), np.nan)
    known_won = np.where(closed, close, NEVER)
    y_q = (won & (close < qend)).astype(np.float64)
    known_q = qend - 1
    settled = known_q <= prep.knowledge_day
    y_q = np.where(settled, y_q, np.nan)
    known_q = np.where(settled, known_q, NEVER)
    return ExampleSet(
        frame=frame,
        labels={"won": y_won, "in_quarter": y_q},
        known={"won": known_won, "in_quarter": known_q},
        context=context,
        deal_ids=prep.flat.deal_ids,
        knowledge_day=prep.knowledge_day,
    )


def _empty(prep: Prepared, context: FeatureContext) -> ExampleSet:
    frame = build_frame(prep.flat, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), context)
    return _label(prep, context, frame)


def build_examples(
    histories: Iterable[DealHistory],
    pipelines: Sequence[Pipeline],
    owners: Sequence[Owner],
    calendar: FiscalCalendar,
    config: ScoringConfig | None = None,
    *,
    as_of: date | None = None,
) -> ExampleSet:
    """Point-in-time examples of the deals in `histories`, both targets, as known at the end of `as_of`.

    Closed deals give examples for both targets; deals still open give settled `in_quarter` "no"s for
    the quarters that have ended. Nothing after `as_of` (default: the latest day in the data) is used.
    """
    config = config or ScoringConfig()
    prep = prepare(histories, pipelines, owners, calendar, config, as_of)
    return examples_from(prep, context_for(prep, config), config)
