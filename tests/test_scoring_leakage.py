"""No feature of an example depends on anything after its as-of date (property tests).

A deal's history is cut at the end of the as-of day (rows with `changed_at < end_of_day(as_of)`,
activities on or before it), and other deals' outcomes are cut the same way; the features must not
change. If any feature read a later row, a later activity, a later close or a later forecast call,
some random history would tell the difference.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cockpit.models import DealHistory, FiscalCalendar, ForecastCategory, Opportunity, StageChange, end_of_day
from cockpit.scoring import features_at, make_context
from cockpit.scoring.features import CallEvents, StageTable, day_of, flatten
from tests.test_scoring import OWNERS, PIPELINE

START = datetime(2024, 1, 1, tzinfo=UTC)
STAGES = [s.id for s in PIPELINE.stages]
CATEGORIES = [None, *ForecastCategory]


@st.composite
def histories(draw: st.DrawFn) -> tuple[DealHistory, date]:
    """A random deal: rows at random minutes (several per day possible), stages in any order (back
    moves, reopened deals), amounts and close dates that move both ways, activities, and an as-of
    date anywhere from before creation to after the last row."""
    n = draw(st.integers(1, 8))
    gaps = draw(st.lists(st.integers(0, 60 * 24 * 40), min_size=n, max_size=n))
    moments, t = [], START
    for gap in gaps:
        t = t + timedelta(minutes=gap)
        moments.append(t)
    rows = tuple(
        StageChange(
            opportunity_id="H",
            changed_at=m,
            stage_id=draw(st.sampled_from(STAGES)),
            amount=Decimal(draw(st.integers(0, 5)) * 1000),
            close_date=draw(st.none() | st.dates(date(2023, 12, 1), date(2025, 6, 1))),
            forecast_category=draw(st.sampled_from(CATEGORIES)),
        )
        for m in moments
    )
    last = rows[-1]
    closed = last.stage_id in ("won", "lost")
    deal = Opportunity(
        id="H",
        owner_id=draw(st.sampled_from(["ann", "bo", "cy", "zed"])),
        pipeline_id="sales",
        stage_id=last.stage_id,
        amount=last.amount,
        close_date=last.changed_at.date() if closed else last.close_date,
        created_at=moments[0],
        lead_source=draw(st.sampled_from([None, "web", "partner"])),
        is_closed=closed,
        is_won=last.stage_id == "won",
        closed_at=last.changed_at if closed else None,
        attributes={"segment": draw(st.sampled_from(["smb", "ent"])), "employees": 40.0},
    )
    activities = tuple(sorted(draw(st.lists(st.dates(date(2023, 12, 1), date(2025, 6, 1)), max_size=10))))
    as_of = moments[0].date() + timedelta(days=draw(st.integers(0, 400)))
    return DealHistory(deal=deal, changes=rows, activities=activities), as_of


def _cut(history: DealHistory, as_of: date) -> DealHistory:
    cutoff = end_of_day(as_of)
    return history.model_copy(
        update={
            "changes": tuple(c for c in history.changes if c.changed_at < cutoff),
            "activities": tuple(a for a in history.activities if a <= as_of),
        }
    )


def _equal(a: dict, b: dict) -> bool:
    def same(x: object, y: object) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return x == y

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


CONTEXT = make_context(
    [PIPELINE], OWNERS, FiscalCalendar(), attributes={"segment": "cat", "employees": "num"}
)


@settings(max_examples=300, deadline=None)
@given(histories())
def test_cutting_the_history_at_the_as_of_date_changes_no_feature(case):
    history, as_of = case
    cut = _cut(history, as_of)
    if not cut.changes:
        return  # the deal did not exist yet: both raise (checked below)
    assert _equal(features_at(history, as_of, CONTEXT), features_at(cut, as_of, CONTEXT))


@settings(max_examples=50, deadline=None)
@given(histories())
def test_a_deal_that_did_not_exist_yet_has_no_features(case):
    history, _ = case
    before = history.changes[0].changed_at.date() - timedelta(days=1)
    try:
        features_at(history, before, CONTEXT)
    except ValueError:
        return
    raise AssertionError("features of a deal before its first history row")


@st.composite
def outcomes(draw: st.DrawFn) -> list[tuple[int, str, bool]]:
    days = draw(st.lists(st.integers(0, 300), min_size=0, max_size=30))
    return [
        (
            date(2024, 1, 1).toordinal() + d,
            draw(st.sampled_from(["ann", "bo", "cy", "di"])),
            draw(st.booleans()),
        )
        for d in days
    ]


@settings(max_examples=150, deadline=None)
@given(histories(), outcomes())
def test_win_rates_ignore_deals_closed_on_or_after_the_as_of_date(case, closed):
    history, as_of = case
    if not history.changes or history.changes[0].changed_at >= end_of_day(as_of):
        return
    everything = make_context([PIPELINE], OWNERS, FiscalCalendar(), closed=closed)
    known = make_context(
        [PIPELINE], OWNERS, FiscalCalendar(), closed=[c for c in closed if c[0] < as_of.toordinal()]
    )
    a, b = features_at(history, as_of, everything), features_at(history, as_of, known)
    assert a["owner_win_rate"] == b["owner_win_rate"]
    assert a["team_win_rate"] == b["team_win_rate"]


@settings(max_examples=100, deadline=None)
@given(histories(), st.lists(histories(), max_size=4))
def test_call_habits_ignore_calls_made_after_the_as_of_date(case, others):
    history, as_of = case
    cut = _cut(history, as_of)
    if not cut.changes:
        return
    stages = StageTable.of([PIPELINE])
    later = date(2026, 1, 1).toordinal()

    def context(deals: list[DealHistory]):
        calls = CallEvents.from_flat(flatten(deals, stages, {}), stages, through_day=later)
        return make_context([PIPELINE], OWNERS, FiscalCalendar(), calls=calls)

    everyone = [history] + [h for h, _ in others]
    known = [cut] + [c for c in (_cut(h, as_of) for h, _ in others) if c.changes]
    a, b = features_at(history, as_of, context(everyone)), features_at(cut, as_of, context(known))
    assert _equal(
        {k: a[k] for k in ("owner_call_habit", "call_vs_habit")},
        {k: b[k] for k in ("owner_call_habit", "call_vs_habit")},
    )


def test_day_of_matches_the_end_of_day_rule():
    for minutes in range(0, 60 * 24 * 3, 37):
        moment = START + timedelta(minutes=minutes)
        day = date.fromordinal(day_of(moment))
        assert moment < end_of_day(day) and not moment < end_of_day(day - timedelta(days=1))
    east = timezone(timedelta(hours=8))
    moment = datetime(2024, 3, 1, 3, 0, tzinfo=east)  # 2024-02-29 19:00 UTC
    assert date.fromordinal(day_of(moment)) == date(2024, 2, 29)
