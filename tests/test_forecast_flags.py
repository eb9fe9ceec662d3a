"""Risk flags, stage medians and the hygiene list."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from cockpit.forecast.config import ForecastConfig, RiskThresholds
from cockpit.forecast.deals import stage_index
from cockpit.forecast.flags import FlagKind, StageMedian, flag_deals, hygiene_list, stage_medians
from cockpit.models import DealHistory, DealSnapshot, Opportunity, StageChange
from tests.factories import PIPELINE

UTC = UTC
STAGES = stage_index([PIPELINE])
AS_OF = date(2026, 8, 31)
CONFIG = ForecastConfig(
    reporting_currency="CNY",
    risk=RiskThresholds(
        stale_days=14,
        max_pushes=2,
        stuck_ratio=3.0,
        min_stage_samples=2,
        amount_outlier_ratio=3.0,
        min_owner_deals=3,
        backward_days=30,
    ),
)


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def snapshot(
    deal_id: str,
    *,
    stage: str = "proposal",
    amount: str = "1000",
    close: date | None = date(2026, 9, 30),
    entered: date = date(2026, 8, 20),
    last_activity: date | None = date(2026, 8, 28),
    next_step: str | None = "Call the CFO",
    next_step_date: date | None = date(2026, 9, 3),
    pushes: int = 0,
    owner: str = "r1",
) -> DealSnapshot:
    deal = Opportunity(
        id=deal_id,
        name=f"Deal {deal_id}",
        owner_id=owner,
        pipeline_id="nb",
        stage_id=stage,
        amount=Decimal(amount),
        currency="CNY",
        close_date=close,
        created_at=at(date(2026, 6, 1)),
        last_activity=last_activity,
        next_step=next_step,
        next_step_date=next_step_date,
        is_closed=stage in {"won", "lost"},
        is_won=stage == "won",
        closed_at=at(entered) if stage in {"won", "lost"} else None,
    )
    return DealSnapshot(as_of=AS_OF, deal=deal, stage_entered_at=at(entered), close_date_pushes=pushes)


def kinds(flags) -> dict[str, set[FlagKind]]:
    return {f.opportunity_id: {x.kind for x in f.flags} for f in flags}


def test_each_flag_and_its_threshold():
    snaps = [
        snapshot("clean"),
        snapshot("stale", last_activity=date(2026, 8, 17)),
        snapshot("fresh-enough", last_activity=date(2026, 8, 18)),
        snapshot("never-touched", last_activity=None),
        snapshot("past", close=date(2026, 8, 30)),
        snapshot("no-date", close=None),
        snapshot("pushed", pushes=2),
        snapshot("pushed-once", pushes=1),
        snapshot("no-step", next_step="  "),
        snapshot("overdue", next_step_date=date(2026, 8, 30)),
        snapshot("stuck", entered=date(2026, 8, 1)),
        snapshot("zero", amount="0"),
    ]
    medians = {"proposal": StageMedian(days=10.0, samples=5)}
    got = kinds(flag_deals(snaps, AS_OF, stages=STAGES, config=CONFIG, medians=medians))
    assert got["clean"] == set()
    assert got["stale"] == {FlagKind.STALE}
    assert got["fresh-enough"] == set()
    assert got["never-touched"] == {FlagKind.STALE}  # created 2026-06-01, nothing logged since
    assert got["past"] == {FlagKind.CLOSE_DATE_PAST}
    assert got["no-date"] == {FlagKind.NO_CLOSE_DATE}
    assert got["pushed"] == {FlagKind.PUSHED} and got["pushed-once"] == set()
    assert got["no-step"] == {FlagKind.NEXT_STEP_MISSING}
    assert got["overdue"] == {FlagKind.NEXT_STEP_OVERDUE}
    assert got["stuck"] == {FlagKind.STUCK}  # 30 days, 3.0× the median of 10
    assert got["zero"] == {FlagKind.ZERO_AMOUNT}


def test_stuck_needs_enough_history_for_the_median():
    snaps = [snapshot("stuck", entered=date(2026, 6, 1))]
    thin = {"proposal": StageMedian(days=10.0, samples=1)}
    assert kinds(flag_deals(snaps, AS_OF, stages=STAGES, config=CONFIG, medians=thin))["stuck"] == set()


def test_amount_outlier_against_the_owners_median():
    snaps = [snapshot(f"n{i}", amount="1000") for i in range(3)] + [snapshot("big", amount="3000")]
    snaps.append(snapshot("other-owner-big", amount="9000", owner="r2"))
    got = flag_deals(snaps, AS_OF, stages=STAGES, config=CONFIG)
    by_id = {f.opportunity_id: f for f in got}
    assert {x.kind for x in by_id["big"].flags} == {FlagKind.AMOUNT_OUTLIER}
    assert "3.0× the owner's median deal" in by_id["big"].flags[0].message
    assert by_id["other-owner-big"].flags == ()  # r2 has too few deals to judge


def history(deal_id: str, rows: list[tuple[date, str]], activities: tuple[date, ...] = ()) -> DealHistory:
    changes = tuple(
        StageChange(
            opportunity_id=deal_id,
            changed_at=at(day) + timedelta(minutes=i),
            stage_id=stage,
            amount=Decimal(1000),
            close_date=date(2026, 9, 30),
        )
        for i, (day, stage) in enumerate(rows)
    )
    deal = Opportunity(
        id=deal_id,
        owner_id="r1",
        pipeline_id="nb",
        stage_id=rows[-1][0] and rows[-1][1],
        amount=Decimal(1000),
        close_date=date(2026, 9, 30),
        created_at=changes[0].changed_at,
    )
    return DealHistory(deal=deal, changes=changes, activities=activities)


def test_stage_medians_use_stays_that_ended_by_as_of():
    hs = [
        history(
            "a",
            [(date(2026, 7, 1), "qualify"), (date(2026, 7, 5), "proposal"), (date(2026, 7, 25), "negotiate")],
        ),
        history("b", [(date(2026, 7, 1), "qualify"), (date(2026, 7, 11), "proposal")]),
        history("c", [(date(2026, 7, 1), "qualify"), (date(2026, 9, 15), "proposal")]),  # after as_of
    ]
    medians = stage_medians(hs, AS_OF)
    assert medians["qualify"].samples == 2 and medians["qualify"].days == pytest.approx(7.0, abs=0.01)
    assert medians["proposal"].samples == 1 and medians["proposal"].days == pytest.approx(20.0, abs=0.01)
    assert "negotiate" not in medians


def test_backward_moves_and_point_in_time_activity_from_history():
    h = history(
        "back",
        [(date(2026, 7, 1), "qualify"), (date(2026, 7, 20), "negotiate"), (date(2026, 8, 15), "proposal")],
        activities=(date(2026, 8, 1), date(2026, 9, 20)),
    )
    snap = snapshot("back", stage="proposal", entered=date(2026, 8, 15), last_activity=date(2026, 9, 20))
    got = flag_deals([snap], AS_OF, stages=STAGES, config=CONFIG, histories={"back": h})[0]
    assert {f.kind for f in got.flags} == {FlagKind.BACKWARD_MOVE, FlagKind.STALE}
    backward = next(f for f in got.flags if f.kind is FlagKind.BACKWARD_MOVE)
    assert backward.message == "moved back from Negotiate to Proposal on 2026-08-15"
    later = flag_deals([snap], date(2026, 9, 20), stages=STAGES, config=CONFIG, histories={"back": h})[0]
    assert FlagKind.BACKWARD_MOVE not in {f.kind for f in later.flags}  # more than 30 days ago


def test_closed_deals_are_skipped_and_hygiene_keeps_data_problems_only():
    won = snapshot("won", stage="won")
    snaps = [won, snapshot("past-and-stale", close=date(2026, 8, 1), last_activity=None), snapshot("ok")]
    flags = flag_deals(snaps, AS_OF, stages=STAGES, config=CONFIG)
    assert [f.opportunity_id for f in flags] == ["past-and-stale", "ok"]
    rows = hygiene_list(flags)
    assert [r.opportunity_id for r in rows] == ["past-and-stale"]
    assert [f.kind for f in rows[0].flags] == [FlagKind.CLOSE_DATE_PAST]
    assert {f.kind for f in flags[0].risks} == {FlagKind.STALE}
