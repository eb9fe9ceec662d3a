"""The review walk: navigation across stages, calls of each kind, filters, and the draft round trip."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from cockpit.models import DealScore, ForecastCategory
from cockpit.review import ExceptionFilter, ReviewDeal, ReviewWalk, SortOrder, model_call
from tests.factories import PIPELINE


def deal(i: str, stage: str, value: int, *, p: float | None = None, flags=(), changed=()) -> ReviewDeal:
    return ReviewDeal(
        id=i, name=f"Deal {i}", account="Acme", owner_id="r1", owner_name="王磊", pipeline_id="nb", stage_id=stage,
        stage_name=PIPELINE.stage(stage).name, amount=Decimal(value), currency="CNY", value=Decimal(value) / 7,
        fx_rate=Decimal(1) / 7, close_date=date(2026, 12, 1), close_date_pushes=0,
        rep_category=PIPELINE.stage(stage).category, crm_probability=float(PIPELINE.stage(stage).probability),
        days_in_stage=10, stage_median_days=8.0,
        score=None if p is None else DealScore(opportunity_id=i, as_of=date(2026, 11, 23), p_won=p, p_in_quarter=p),
        flags=tuple(flags), changed=tuple(changed),
    )


@pytest.fixture
def walk():
    deals = [
        deal("q1", "qualify", 5000, p=0.1), deal("q2", "qualify", 9000, p=0.2, flags=["stale"]),
        deal("p1", "proposal", 20000, p=0.75), deal("n1", "negotiate", 70000, p=0.3, changed=["amount up"]),
        deal("n2", "negotiate", 10000),
    ]
    return ReviewWalk(quarter="FY2026-Q4", scope="m1", author="me", currency="USD", pipelines=[PIPELINE],
                      deals={d.id: d for d in deals})


def test_walk_starts_at_the_first_stage_biggest_deal(walk):
    assert (walk.stage_id, walk.deal_id) == ("qualify", "q2")
    assert walk.progress() == "Qualify 1/3 · 0/5 deals reviewed"


def test_stepping_crosses_stages_both_ways(walk):
    seen = [walk.deal_id]
    while walk.step_deal(1):
        seen.append(walk.deal_id)
    assert seen == ["q2", "q1", "p1", "n1", "n2"]
    while walk.step_deal(-1):
        seen.append(walk.deal_id)
    assert seen[-1] == "q2"
    walk.step_stage(1)
    assert walk.stage_id == "proposal"


def test_calls_of_each_kind_and_progress(walk):
    walk.call("q2", ForecastCategory.OMITTED)
    walk.override_amount("q2", Decimal(4000))
    walk.override_close_date("q2", date(2027, 1, 15))
    walk.note("q2", "  champion left  ")
    walk.mark_reviewed("q2")
    line = walk.line("q2")
    assert (line.category, line.amount_override, line.close_date_override, line.note, line.reviewed) == (
        ForecastCategory.OMITTED, Decimal(4000), date(2027, 1, 15), "champion left", True)
    assert walk.progress() == "Qualify 1/3 · 1/5 deals reviewed"
    with pytest.raises(ValueError, match="not Closed"):
        walk.call("q1", ForecastCategory.CLOSED)
    with pytest.raises(ValueError, match="negative"):
        walk.override_amount("q1", Decimal(-1))


def test_exception_filters(walk):
    walk.cycle_filter()
    assert walk.filter is ExceptionFilter.FLAGGED
    assert [d.id for s in walk.stages() for d in walk.visible_deals(s.stage.id)] == ["q2"]
    walk.cycle_filter()  # call differs from the model: p1 (best case vs model commit), n1 (commit vs pipeline)
    assert sorted(d.id for s in walk.stages() for d in walk.visible_deals(s.stage.id)) == ["n1", "p1"]
    walk.call("p1", ForecastCategory.COMMIT)
    assert sorted(d.id for s in walk.stages() for d in walk.visible_deals(s.stage.id)) == ["n1"]
    walk.cycle_filter()
    assert [d.id for s in walk.stages() for d in walk.visible_deals(s.stage.id)] == ["n1"]
    assert walk.deal_id == "n1"


def test_sort_by_risk(walk):
    walk.set_stage("negotiate")
    assert [d.id for d in walk.visible_deals()] == ["n1", "n2"]
    walk.toggle_sort()
    assert walk.sort is SortOrder.RISK
    assert walk.visible_deals()[0].id == "n1"  # 70k at 30% puts the most money at risk


def test_draft_round_trip_resumes_position_and_calls(walk):
    walk.step_deal(1)
    walk.step_deal(1)
    walk.call("p1", ForecastCategory.COMMIT)
    walk.mark_reviewed("p1")
    draft = walk.draft()
    again = ReviewWalk.resume(draft, quarter="FY2026-Q4", scope="m1", author="me", currency="USD",
                              pipelines=[PIPELINE], deals=walk.deals)
    assert (again.stage_id, again.deal_id) == ("proposal", "p1")
    assert again.call_of(walk.deals["p1"]) is ForecastCategory.COMMIT
    assert again.is_reviewed("p1")


def test_model_call_thresholds():
    assert model_call(None) is None
    assert model_call(0.7) is ForecastCategory.COMMIT
    assert model_call(0.5) is ForecastCategory.BEST_CASE
    assert model_call(0.1) is ForecastCategory.PIPELINE
