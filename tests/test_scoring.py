"""Win model: point-in-time features, examples, training, baselines, reasons, configuration.

The deals come from a small seeded simulator in this file (`synth_histories`): weekly hazards of
advancing, winning and losing that depend on things a CRM sees (time in stage, close-date pushes,
activity, the rep, the lead source), so a model has real signal to find and the baselines do not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cockpit.models import (
    DealHistory,
    FiscalCalendar,
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Reason,
    Stage,
    StageChange,
    snapshot_of,
)
from cockpit.models.columns import HistoryColumns, ReasonColumns
from cockpit.scoring import (
    ScoringConfig,
    TrainingError,
    build_examples,
    features_at,
    make_context,
    train,
)
from cockpit.scoring.baselines import CRM, STAGE_RATE
from cockpit.scoring.examples import context_for, prepare
from cockpit.scoring.features import CALL_HABIT_PRIOR, FEATURE_NAMES, CallEvents, StageTable, attribute_kinds, build_frame, flatten, flatten_columns
from cockpit.scoring.estimators import _enough_rounds
from cockpit.scoring.model import MODEL, _with_recent_calls
from cockpit.scoring.reasons import describe
from cockpit.scoring.training import _choose

CALENDAR = FiscalCalendar()
END = date(2024, 12, 31)

PIPELINE = Pipeline(
    id="sales",
    name="Sales",
    stages=(
        Stage(id="qualify", name="Qualify", order=0, probability=Decimal("0.1")),
        Stage(
            id="propose",
            name="Propose",
            order=1,
            probability=Decimal("0.4"),
            category=ForecastCategory.BEST_CASE,
        ),
        Stage(
            id="negotiate",
            name="Negotiate",
            order=2,
            probability=Decimal("0.7"),
            category=ForecastCategory.COMMIT,
        ),
        Stage(
            id="won",
            name="Won",
            order=3,
            probability=Decimal(1),
            category=ForecastCategory.CLOSED,
            is_closed=True,
            is_won=True,
        ),
        Stage(
            id="lost",
            name="Lost",
            order=4,
            probability=Decimal(0),
            category=ForecastCategory.OMITTED,
            is_closed=True,
        ),
    ),
)
OPEN = ["qualify", "propose", "negotiate"]
OWNERS = [
    Owner(id="mgr", name="Mia Manager"),
    Owner(id="ann", name="Ann", manager_id="mgr", team="East"),
    Owner(id="bo", name="Bo", manager_id="mgr", team="East"),
    Owner(id="cy", name="Cy", manager_id="mgr", team="West"),
    Owner(id="di", name="Di", manager_id="mgr", team="West"),
]
SKILL = {"ann": 0.9, "bo": 0.2, "cy": -0.4, "di": -0.9}
SOURCE = {"web": 0.0, "partner": 0.6, "outbound": -0.6}


def _at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def synth_histories(
    n: int, seed: int = 0, start: date = date(2023, 1, 2), end: date = END
) -> list[DealHistory]:
    """`n` deals created between `start` and `end`, played week by week until they close or `end`."""
    rng = random.Random(seed)
    span = (end - start).days
    out = []
    for i in range(n):
        created = start + timedelta(days=rng.randrange(span))
        owner = rng.choice(list(SKILL))
        source = rng.choice(list(SOURCE))
        quality = rng.gauss(0.0, 1.0) + SKILL[owner] + SOURCE[source]
        out.append(_play(f"D{i:05d}", created, owner, source, quality, rng, end))
    return out


def _play(
    deal_id: str, created: date, owner: str, source: str, quality: float, rng: random.Random, end: date
) -> DealHistory:
    stage, weeks, pushes = 0, 0, 0
    amount = Decimal(rng.choice([5_000, 12_000, 30_000, 80_000]))
    close = created + timedelta(days=rng.randint(30, 90))
    rows = [(created, OPEN[0], close)]
    acts: list[date] = []
    day = created
    outcome = None
    while True:
        day += timedelta(days=7)
        if day > end:
            break
        weeks += 1
        if rng.random() < 0.55 / (1 + math.exp(-quality)):
            acts.append(day - timedelta(days=rng.randrange(7)))
        z = quality - 0.25 * weeks - 0.5 * pushes
        u = rng.random()
        if stage == 2 and u < 0.35 / (1 + math.exp(-z)):
            outcome = "won"
        elif u < 0.08 * (1 + weeks / 5) / (1 + math.exp(z)):
            outcome = "lost"
        elif stage < 2 and u < 0.3:
            stage, weeks = stage + 1, 0
            rows.append((day, OPEN[stage], close))
        if outcome:
            rows.append((day, outcome, day))
            break
        if close < day:
            pushes += 1
            close = day + timedelta(days=rng.randint(14, 45))
            rows.append((day, OPEN[stage], close))
    changes = tuple(
        StageChange(
            opportunity_id=deal_id,
            changed_at=_at(d, 9) + timedelta(minutes=k),
            stage_id=s,
            amount=amount,
            close_date=c,
            forecast_category=None,
        )
        for k, (d, s, c) in enumerate(rows)
    )
    last = changes[-1]
    closed = last.stage_id in ("won", "lost")
    deal = Opportunity(
        id=deal_id,
        name=deal_id,
        owner_id=owner,
        pipeline_id="sales",
        stage_id=last.stage_id,
        amount=amount,
        close_date=last.close_date,
        created_at=changes[0].changed_at,
        lead_source=source,
        type="New",
        is_closed=closed,
        is_won=last.stage_id == "won",
        closed_at=last.changed_at if closed else None,
        attributes={"segment": rng.choice(["smb", "mid", "ent"]), "employees": float(rng.randint(5, 5000))},
    )
    return DealHistory(deal=deal, changes=changes, activities=tuple(sorted(acts)))


@pytest.fixture(scope="module")
def histories() -> list[DealHistory]:
    return synth_histories(900, seed=3)


@pytest.fixture(scope="module")
def trained(histories):
    return train(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(min_deals_for_boosting=100))


def _stages() -> dict[str, Stage]:
    return {s.id: s for s in PIPELINE.stages}


# --------------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------------


def test_importing_scoring_and_building_features_does_not_import_sklearn():
    code = """
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from cockpit.models import DealHistory, FiscalCalendar, Opportunity, Pipeline, Stage, StageChange
from cockpit.scoring import ScoringConfig, build_examples, features_at, make_context
stages = (Stage(id="a", name="A", order=0, probability=Decimal("0.2")),
          Stage(id="w", name="Won", order=1, probability=Decimal(1), is_closed=True, is_won=True))
when = datetime(2024, 1, 2, tzinfo=timezone.utc)
deal = Opportunity(id="d", owner_id="o", pipeline_id="p", stage_id="a", amount=Decimal(10), created_at=when)
row = StageChange(opportunity_id="d", changed_at=when, stage_id="a", amount=Decimal(10))
h = DealHistory(deal=deal, changes=(row,))
pipelines = [Pipeline(id="p", name="P", stages=stages)]
features_at(h, date(2024, 2, 1), make_context(pipelines, [], FiscalCalendar()))
build_examples([h], pipelines, [], FiscalCalendar(), ScoringConfig())
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy"))))
"""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def test_features_agree_with_the_reference_snapshot(histories):
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    rng = random.Random(5)
    checked = 0
    for h in rng.sample(histories, 120):
        for offset in (0, 6, 20, 45, 90, 200):
            day = h.changes[0].changed_at.date() + timedelta(days=offset)
            snap = snapshot_of(h, day, _stages())
            f = features_at(h, day, ctx)
            assert f["stage"] == snap.deal.stage_id
            assert f["stage_changes"] == snap.stage_changes
            assert f["close_pushes"] == snap.close_date_pushes
            assert f["days_in_stage"] == (day - snap.stage_entered_at.date()).days
            assert f["days_to_close"] == (snap.deal.close_date - day).days
            assert f["deal_age"] == offset
            checked += 1
    assert checked == 720


def test_a_deal_has_no_features_before_it_exists(histories):
    h = histories[0]
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    with pytest.raises(ValueError, match="no history on or before"):
        features_at(h, h.changes[0].changed_at.date() - timedelta(days=1), ctx)


def test_activity_features_count_only_activities_up_to_the_day():
    created = date(2024, 2, 5)
    deal = Opportunity(id="A1", owner_id="ann", pipeline_id="sales", stage_id="qualify", amount=Decimal(100))
    change = StageChange(
        opportunity_id="A1", changed_at=_at(created), stage_id="qualify", amount=Decimal(100)
    )
    acts = (created + timedelta(days=2), created + timedelta(days=10), created + timedelta(days=40))
    h = DealHistory(deal=deal, changes=(change,), activities=acts)
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    f = features_at(h, created + timedelta(days=12), ctx)
    assert f["activities_30d"] == 2
    assert f["days_since_activity"] == 2
    f = features_at(h, created + timedelta(days=45), ctx)
    assert f["activities_30d"] == 1  # the one on day 40; days 2 and 10 are more than 30 days back
    assert f["days_since_activity"] == 5


def test_owner_and_team_win_rates_count_only_deals_closed_before_the_day():
    day = date(2024, 3, 1).toordinal()
    closed = [(day - 10, "ann", True), (day - 5, "ann", True), (day, "ann", False), (day + 3, "bo", False)]
    ctx = make_context([PIPELINE], OWNERS, CALENDAR, closed=closed, win_rate_prior=0.0)
    ev = ctx.win_events
    ann = ev.owner_ids.index("ann")
    rate = ev.rates(np.array([ann, ann, ann]), np.array([day - 5, day, day + 1]), "owner", 0.0)
    assert rate.tolist() == [1.0, 1.0, 2 / 3]  # the loss on `day` counts only from the next day
    east = ev.team_ids.index("team:East")
    team = ev.rates(np.array([east]), np.array([day + 4]), "team", 0.0)
    assert team.tolist() == [0.5]  # ann 2 of 3, bo 0 of 1


def test_win_rates_shrink_toward_everyones_rate():
    day = date(2024, 3, 1).toordinal()
    closed = [(day - 10, "ann", True)] + [(day - 9, "bo", False)] * 3
    ctx = make_context([PIPELINE], OWNERS, CALENDAR, closed=closed, win_rate_prior=10.0)
    ev = ctx.win_events
    rate = ev.rates(np.array([ev.owner_ids.index("ann")]), np.array([day]), "owner", 10.0)[0]
    everyone = (1 + 1) / (4 + 2)
    assert rate == pytest.approx((1 + 10 * everyone) / 11)


def _calls(owner: str, day: date, stages: list[tuple[str, ForecastCategory | None]]) -> DealHistory:
    """A deal of `owner` whose rows, one a day from `day`, are (stage, call) pairs."""
    rows = tuple(
        StageChange(
            opportunity_id=f"{owner}-{day}",
            changed_at=_at(day + timedelta(days=k)),
            stage_id=stage,
            amount=Decimal(100),
            forecast_category=call,
        )
        for k, (stage, call) in enumerate(stages)
    )
    deal = Opportunity(
        id=f"{owner}-{day}", owner_id=owner, pipeline_id="sales", stage_id=rows[-1].stage_id, amount=Decimal(100)
    )
    return DealHistory(deal=deal, changes=rows)


def test_call_habit_averages_the_owners_calls_against_stage_defaults_up_to_the_day():
    day = date(2024, 3, 1)
    c = ForecastCategory
    deals = [
        # qualify defaults to pipeline: commit is +2; propose defaults to best case: best case is 0
        _calls("ann", day, [("qualify", c.COMMIT), ("propose", c.BEST_CASE), ("won", c.CLOSED)]),
        _calls("ann", day + timedelta(days=5), [("qualify", c.OMITTED), ("negotiate", None)]),
        _calls("bo", day, [("qualify", c.PIPELINE)]),
    ]
    stages = StageTable.of([PIPELINE])
    calls = CallEvents.from_flat(flatten(deals, stages, {}), stages, through_day=END.toordinal())
    ann, bo, zed = calls.codes(["ann", "bo", "zed"])
    days = np.array([day.toordinal() + k for k in (-1, 0, 1, 4, 5)])
    habit = calls.habit(np.full(5, ann), days, prior=0.0)
    # the won row is no call; the omitted one on day 5 (-1) counts from that day; no category, no call
    assert habit.tolist() == [0.0, 2.0, 1.0, 1.0, 1 / 3]
    assert calls.habit(np.array([bo, zed]), days[-2:], prior=0.0).tolist() == [0.0, 0.0]
    shrunk = calls.habit(np.array([ann]), days[-1:], prior=CALL_HABIT_PRIOR)
    assert shrunk.tolist() == [pytest.approx(1 / (3 + CALL_HABIT_PRIOR))]


def test_call_habit_takes_calls_made_since_training_from_the_deals_scored():
    day = date(2024, 3, 1)
    c = ForecastCategory
    old = [_calls("ann", day, [("qualify", c.PIPELINE), ("qualify", c.PIPELINE)])]
    recent = [_calls("ann", day, [("qualify", c.PIPELINE), ("qualify", c.PIPELINE), ("qualify", c.COMMIT)])]
    stages = StageTable.of([PIPELINE])
    taken = CallEvents.from_flat(flatten(old, stages, {}), stages, through_day=day.toordinal() + 1)
    later = CallEvents.from_flat(
        flatten(recent, stages, {}), stages, through_day=day.toordinal() + 9, after_day=taken.through_day
    )
    both = taken.merged(later)
    assert both.through_day == day.toordinal() + 9 and both.calls.sum() == 3  # no call counted twice
    whole = CallEvents.from_flat(flatten(recent, stages, {}), stages, through_day=day.toordinal() + 9)
    ann = both.codes(["ann"])
    for d in range(day.toordinal() - 1, day.toordinal() + 10):
        assert both.habit(ann, np.array([d])) == whole.habit(whole.codes(["ann"]), np.array([d]))


def test_one_flattening_serves_any_number_of_days(histories):
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    flat = flatten(histories[:50], ctx.stages, ctx.attributes)
    deals = np.repeat(np.arange(50), 3)
    days = np.array(
        [histories[i].changes[0].changed_at.date().toordinal() + k * 30 for i in range(50) for k in range(3)]
    )
    frame = build_frame(flat, deals, days, ctx)
    for row in range(len(frame.day)):
        h = histories[frame.deal[row]]
        single = features_at(h, date.fromordinal(int(frame.day[row])), ctx)
        assert _same(frame.row_dict(row), single)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        or a[k] == b[k]
        for k in a
    )


def test_a_history_given_out_of_order_is_read_in_time_order(histories):
    h = next(x for x in histories if len(x.changes) >= 3)
    shuffled = h.model_copy(update={"changes": tuple(reversed(h.changes))})
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    day = h.changes[-1].changed_at.date()
    assert _same(features_at(shuffled, day, ctx), features_at(h, day, ctx))


def test_a_deal_without_any_date_still_gets_features_from_what_it_has():
    deal = Opportunity(
        id="X",
        owner_id="ann",
        pipeline_id="sales",
        stage_id="propose",
        amount=Decimal(900),
        lead_source="web",
    )
    f = features_at(
        DealHistory(deal=deal, changes=()), date(2024, 5, 1), make_context([PIPELINE], OWNERS, CALENDAR)
    )
    assert f["stage"] == "propose" and f["amount"] == 900 and f["lead_source"] == "web"
    assert math.isnan(f["deal_age"]) and math.isnan(f["days_in_stage"])


def test_gaps_and_unknown_stages_read_the_same_alone_or_among_other_deals(histories):
    """Missing amounts and close dates, a stage the pipeline does not know, and a deal without any
    history: flattening them together with complete deals gives each its features from alone."""
    start = date(2024, 2, 5)
    deal = Opportunity(id="G", owner_id="ann", pipeline_id="sales", stage_id="propose", amount=Decimal(500))
    rows = (
        StageChange(opportunity_id="G", changed_at=_at(start), stage_id="qualify"),
        StageChange(opportunity_id="G", changed_at=_at(start + timedelta(days=3)), stage_id="legacy",
                    amount=Decimal(400), close_date=start + timedelta(days=60)),
        StageChange(opportunity_id="G", changed_at=_at(start + timedelta(days=9)), stage_id="propose",
                    amount=Decimal(500)),
    )
    gappy = DealHistory(deal=deal, changes=rows, activities=(start + timedelta(days=4),))
    undated = DealHistory(deal=deal.model_copy(update={"id": "U", "amount": None}), changes=())
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    mixed = [histories[0], gappy, histories[1], undated, histories[2]]
    flat = flatten(mixed, ctx.stages, ctx.attributes)
    for day in (start + timedelta(days=1), start + timedelta(days=5), start + timedelta(days=20)):
        frame = build_frame(flat, np.array([1, 3]), np.full(2, day.toordinal()), ctx)
        assert _same(frame.row_dict(0), features_at(gappy, day, ctx))
        assert _same(frame.row_dict(1), features_at(undated, day, ctx))
    f = features_at(gappy, start + timedelta(days=5), ctx)
    assert f["amount"] == 400 and f["days_to_close"] == 55 and math.isnan(f["stage_order"])
    assert math.isnan(features_at(undated, start, ctx)["amount"])


# --------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------


def test_examples_are_weekly_point_in_time_and_labelled_both_ways(histories):
    ex = build_examples(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig())
    frame = ex.frame
    by_id = {h.deal.id: h for h in histories}
    stage_col = frame.names.index("stage")
    for row in range(0, len(ex), 37):
        h = by_id[ex.deal_ids[frame.deal[row]]]
        day = date.fromordinal(int(frame.day[row]))
        snap = snapshot_of(h, day, _stages())
        if h.deal.is_closed:
            assert ex.labels["won"][row] == float(h.deal.is_won)
        assert not snap.deal.is_closed  # examples only while the deal was open
        assert frame.categories["stage"][int(frame.values[row, stage_col])] == snap.deal.stage_id
        q_end = CALENDAR.quarter_of(day).end
        if math.isnan(ex.labels["in_quarter"][row]):  # quarters settle on their last day
            assert q_end.toordinal() - 1 > ex.knowledge_day
        elif h.deal.is_closed:
            assert ex.labels["in_quarter"][row] == float(h.deal.is_won and h.deal.closed_at.date() < q_end)
        else:
            assert math.isnan(ex.labels["won"][row])
            assert ex.labels["in_quarter"][row] == 0.0 and q_end <= END + timedelta(days=1)
        assert (day - CALENDAR.quarter_of(day).start).days % 7 == 0


def test_examples_never_use_the_future(histories):
    ex = build_examples(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(), as_of=date(2024, 6, 30))
    assert ex.frame.day.max() <= date(2024, 6, 30).toordinal()
    known = ex.known["won"][np.isfinite(ex.known["won"])]
    assert known.max() <= date(2024, 6, 30).toordinal()


# --------------------------------------------------------------------------------------------------
# Training and the report
# --------------------------------------------------------------------------------------------------


def test_training_reports_model_and_both_baselines(trained):
    report = trained.report
    assert report.model_kind == "gradient_boosting"
    for target in ("won", "in_quarter"):
        t = report.targets[target]
        assert set(t.metrics) == {MODEL, CRM, STAGE_RATE, "base_rate"}
        model = t.metrics[MODEL]
        assert len(model.reliability) == 10 and sum(b.count for b in model.reliability) == model.examples > 0
        assert 0 <= model.ece <= 1 and 0 < model.brier < 1 and 0.5 < model.roc_auc <= 1
        assert t.chosen == MODEL and "beats the best baseline" in t.why
        assert model.brier < min(t.metrics[CRM].brier, t.metrics[STAGE_RATE].brier)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["targets"]["won"]["metrics"]["model"]["reliability"][0]["lower"] == 0.0
    text = report.to_text()
    assert "CRM stage probability" in text and "stage win rate" in text and "Reliability" in text
    assert any("next step" in n.lower() for n in report.notes)
    calibration = [n for n in report.notes if " is calibrated with " in n]
    assert [n.split(" is ")[0] for n in calibration] == ["P(won)", "P(won by the end of the quarter)"]
    for target, note in zip(("won", "in_quarter"), calibration, strict=True):
        assert ("shifted by the weeks left" in note) == (trained.model.targets[target].calibrator.shift is not None)


def test_test_split_is_later_than_training(histories, trained):
    report = trained.report
    cutoff = date.fromisoformat(report.cutoff)
    closes = sorted(h.deal.closed_at.date() for h in histories if h.deal.is_closed)
    later = sum(d >= cutoff for d in closes)
    assert report.test_deals == later and report.train_deals == len(closes) - later
    assert 0.1 < later / len(closes) < 0.35


def test_small_data_uses_the_regularised_logistic_model():
    few = synth_histories(70, seed=11)
    result = train(few, [PIPELINE], OWNERS, CALENDAR, ScoringConfig())
    assert result.report.model_kind == "logistic"
    scores = result.model.score([h for h in few if not h.deal.is_closed], END)
    assert scores and all(0 < s.p_won < 1 for s in scores)


def test_too_little_history_is_refused_with_a_clear_message():
    with pytest.raises(TrainingError) as err:
        train(synth_histories(12, seed=2), [PIPELINE], OWNERS, CALENDAR, ScoringConfig())
    assert err.value.title == "Not enough history"
    assert "at least 30" in err.value.message


def test_a_stage_with_few_deals_is_scored_with_its_historical_rate(histories):
    rare = Stage(id="legal", name="Legal review", order=2, probability=Decimal("0.8"))
    stages = list(PIPELINE.stages)
    pipeline = PIPELINE.model_copy(update={"stages": (*stages[:2], rare, *stages[2:])})
    # Three deals pass through "Legal review" on their way to "negotiate".
    changed = list(histories)
    moved = 0
    for i, h in enumerate(changed):
        if moved < 3 and h.deal.is_closed and any(c.stage_id == "propose" for c in h.changes):
            rows = list(h.changes)
            j = next(k for k, c in enumerate(rows) if c.stage_id == "propose")
            rows.insert(
                j + 1,
                rows[j].model_copy(
                    update={"stage_id": "legal", "changed_at": rows[j].changed_at + timedelta(hours=1)}
                ),
            )
            changed[i] = h.model_copy(update={"changes": tuple(rows)})
            moved += 1
    result = train(changed, [pipeline], OWNERS, CALENDAR, ScoringConfig(min_deals_for_boosting=100))
    assert any("Legal review: insufficient history" in n for n in result.report.stage_notes)
    deal = Opportunity(
        id="L1",
        owner_id="ann",
        pipeline_id="sales",
        stage_id="legal",
        amount=Decimal(5000),
        created_at=_at(date(2024, 12, 1)),
    )
    h = DealHistory(
        deal=deal,
        changes=(
            StageChange(
                opportunity_id="L1", changed_at=_at(date(2024, 12, 1)), stage_id="legal", amount=Decimal(5000)
            ),
        ),
    )
    score = result.model.score([h], END)[0]
    rate = result.model.targets["won"].rates.predict(np.array([pipeline.stages.index(rare)]))[0]
    assert score.p_won == pytest.approx(rate)
    assert "insufficient history in Legal review" in score.reasons[0].text
    # Among other deals, it keeps its one reason and theirs stay theirs.
    others = [h for h in histories if not h.deal.is_closed][:40]
    mixed = result.model.score([*others[:20], h, *others[20:]], END)
    assert mixed[20] == score
    assert mixed[:20] + mixed[21:] == result.model.score(others, END)


def test_calibration_corrects_a_score_that_is_off_by_weeks_left_and_deal_size():
    """Scores right on average but too high late in the quarter and for big deals: the calibration's
    context shift puts each situation right, and is left out where there is nothing to correct."""
    from cockpit.scoring.estimators import ContextShift, FeatureSpec, fit_calibrator, sigmoid

    rng = np.random.default_rng(4)
    n = 40_000
    specs = (
        FeatureSpec("currency", "cat", "amount", ""),
        FeatureSpec("amount", "num", "amount", ""),
        FeatureSpec("days_left_in_quarter", "num", "calendar", ""),
    )
    currency = rng.integers(0, 2, n).astype(float)
    amount = np.exp(rng.normal(10.0, 1.0, n) + 2.0 * currency)  # the second currency's numbers are ~7x
    days_left = rng.integers(0, 91, n).astype(float)
    X = np.column_stack([currency, amount, days_left])
    raw = rng.normal(-1.0, 1.2, n)
    size = np.log(amount) - (10.0 + 2.0 * currency)
    truth = sigmoid(raw - 0.8 * (days_left < 14) - 0.4 * size)
    y = (rng.random(n) < truth).astype(float)

    calibrator = fit_calibrator(raw, y, X, specs)
    assert calibrator.shift is not None
    p = calibrator(raw, X)
    for rows in (days_left < 14, days_left >= 14, size > 1, size < -1):
        assert abs(p[rows].sum() / y[rows].sum() - 1) < 0.06
    plain = calibrator.base(raw)
    assert plain[days_left < 14].sum() / y[days_left < 14].sum() > 1.2  # what it corrected

    already_right = fit_calibrator(raw, (rng.random(n) < sigmoid(raw)).astype(float), X, specs)
    assert already_right.shift is None or np.allclose(already_right.shift.weights, 0, atol=0.1)
    with pytest.raises(ValueError, match="feature matrix"):
        calibrator(raw)
    assert ContextShift.columns(specs[:2]) == (-1, 1, 0)


def test_choice_falls_back_to_the_best_baseline_when_the_model_is_not_better():
    from cockpit.scoring.metrics import evaluate

    y = np.array([0, 1, 1, 0, 1, 0, 0, 1.0])
    good = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3, 0.2, 0.8])
    bad = np.full(8, 0.5)
    chosen, why = _choose(
        {MODEL: evaluate(y, bad), CRM: evaluate(y, good), STAGE_RATE: evaluate(y, bad)}, True
    )
    assert chosen == CRM and "not better than the CRM stage probability" in why
    chosen, why = _choose(
        {MODEL: evaluate(y, good), CRM: evaluate(y, bad), STAGE_RATE: evaluate(y, bad)}, True
    )
    assert chosen == MODEL


def test_a_target_scored_by_a_baseline_says_so(histories, trained):
    model = trained.model
    saved, saved_target = model.targets["won"].chosen, model.reason_settings.target
    try:
        model.targets["won"].chosen = STAGE_RATE
        model.reason_settings.target = "won"
        open_deals = [h for h in histories if not h.deal.is_closed][:20]
        scores = model.score(open_deals, END)
        for s in scores:
            assert len(s.reasons) == 1 and "the model did not beat this" in s.reasons[0].text
    finally:
        model.targets["won"].chosen = saved
        model.reason_settings.target = saved_target


def test_progress_is_reported_in_order(histories):
    seen: list[tuple[str, float]] = []
    train(
        histories[:300],
        [PIPELINE],
        OWNERS,
        CALENDAR,
        ScoringConfig(),
        progress=lambda m, f: seen.append((m, f)),
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


# --------------------------------------------------------------------------------------------------
# Scoring and reasons
# --------------------------------------------------------------------------------------------------


def test_scores_come_with_three_to_five_reasons_in_plain_units(histories, trained):
    open_deals = [h for h in histories if not h.deal.is_closed]
    scores = trained.model.score(open_deals, END)
    assert len(scores) == len(open_deals)
    for s in scores:
        assert 0 < s.p_in_quarter <= s.p_won < 1
        assert 3 <= len(s.reasons) <= 5
        assert s.model_version == trained.model.version
        points = [abs(r.points) for r in s.reasons]
        assert points == sorted(points, reverse=True)
        for r in s.reasons:
            assert r.feature in FEATURE_NAMES or r.feature.startswith("attr:")
            assert str(r).endswith(" pts")
    texts = " | ".join(r.text for s in scores for r in s.reasons)
    assert "days in " in texts and "× the median" in texts
    assert "close date" in texts


def test_scoring_counts_the_calls_made_since_training_once(trained):
    model = trained.model
    taken = model.context.call_events.through_day
    after = date.fromordinal(taken) + timedelta(days=1)
    c = ForecastCategory
    closed_since = _calls("ann", after, [("qualify", c.COMMIT), ("qualify", c.COMMIT), ("lost", c.OMITTED)])
    closed_since = closed_since.model_copy(
        update={"deal": closed_since.deal.model_copy(update={"is_closed": True, "closed_at": _at(after + timedelta(days=2))})}
    )
    still_open = _calls("ann", after + timedelta(days=3), [("qualify", c.COMMIT)])
    as_of = after + timedelta(days=5)
    ctx = model._context([closed_since], None)
    assert ctx.call_events.through_day == taken  # the closed deals alone do not make it complete
    ctx = _with_recent_calls(ctx, flatten([still_open], ctx.stages, {}), as_of.toordinal())
    calls = ctx.call_events
    ann = calls.codes(["ann"])
    before = model.context.call_events
    n_before = before.calls[before.owner == before.codes(["ann"])[0]].sum() if "ann" in before.owner_ids else 0
    assert calls.calls[calls.owner == ann[0]].sum() == n_before + 3  # two from the closed deal, one open
    assert calls.through_day == as_of.toordinal()


def test_the_call_habit_reason_names_the_owner_and_both_numbers():
    def text(habit: float, delta: float) -> str:
        return describe("call_habit", {"owner_call_habit": habit, "call_vs_habit": delta}, owner="Li Na")

    assert text(0.42, 1.2) == "call +1.2 categories vs Li Na's habit (+0.4 vs stage defaults)"
    assert text(-0.3, -0.5) == "call -0.5 categories vs Li Na's habit (-0.3 vs stage defaults)"
    assert text(0.42, 0.01) == "call in line with Li Na's habit (+0.4 vs stage defaults)"
    assert text(0.42, math.nan) == "Li Na's habit (+0.4 vs stage defaults)"  # no call on the deal
    assert text(-0.01, 1.0) == "call +1.0 categories vs Li Na's habit (at stage defaults)"  # no "-0.0"


def test_reason_points_are_the_models_own_differences(histories, trained):
    """A reason's points = p(deal) - p(deal with that group of features set to the stage's typical values)."""
    model = trained.model
    target = model.reason_settings.target
    tm = model.targets[target]
    open_deals = [h for h in histories if not h.deal.is_closed][:40]
    scores = model.score(open_deals, END)
    ctx = model.context
    flat = flatten(open_deals, ctx.stages, ctx.attributes)
    frame = build_frame(flat, np.arange(len(open_deals)), np.full(len(open_deals), END.toordinal()), ctx)
    X = model.encoder.transform(frame)
    groups = dict(model.reason_groups())
    checked = 0
    for k, s in enumerate(scores):
        p = tm.predict(frame.subset(np.array([k])), X[k : k + 1], ctx)[0]
        for reason in s.reasons:
            group = next(
                g for g, cols in groups.items() if model.encoder.specs[cols[0]].name == reason.feature
            )
            typical = X[k : k + 1].copy()
            cols = groups[group]
            typical[0, cols] = model.references[frame.stage[k], cols]
            p_typical = tm.predict(frame.subset(np.array([k])), typical, ctx)[0]
            assert reason.points == pytest.approx(round((p - p_typical) * 100, 1), abs=0.051)
            checked += 1
    assert checked >= 100


def test_counterfactual_trees_equal_predicting_every_tree_again(histories, trained):
    """Re-running only the trees whose path crosses a group gives the very same sums (bit for bit) as
    re-running every tree that uses the group on the changed rows."""
    from cockpit.scoring import counterfactual
    from cockpit.scoring.estimators import TreeModel

    model = trained.model
    open_deals = [h for h in histories if not h.deal.is_closed]
    ctx = model.context
    flat = flatten(open_deals, ctx.stages, ctx.attributes)
    frame = build_frame(flat, np.arange(len(open_deals)), np.full(len(open_deals), END.toordinal()), ctx)
    X = model.encoder.transform(frame)
    groups = [cols for _, cols in model.reason_groups()]
    compared = 0
    for tm in model.targets.values():
        est = tm.estimator
        if not isinstance(est, TreeModel):
            continue
        B = est.bin(X)
        paths = counterfactual.TreePaths.of(est, groups)
        done = counterfactual.evaluate(est, paths, B)
        total, per_group = est.raw_by_group(B, groups)
        assert np.array_equal(done.total, total) and np.array_equal(done.per_group, per_group)
        typical = np.where(frame.stage >= 0, frame.stage, len(model.references) - 1)
        refs = est.bin(model.references)
        R = refs[typical]
        for g, cols in enumerate(groups):
            rows = np.flatnonzero((B[:, cols] != R[:, cols]).any(axis=1))[::2]  # any subset of rows
            changed = B[rows]
            changed[:, cols] = R[rows][:, cols]
            expected = est.group_raw(changed, groups, g)
            got = counterfactual.group_raw(est, paths, done, g, cols, rows, B, refs, typical)
            assert np.array_equal(got, expected)
            compared += len(rows) * int(paths.uses[g].sum())
    assert compared > 1000


def test_a_path_agrees_with_typical_values_exactly_when_they_reach_the_same_leaf(trained):
    """`TreePaths.agreement` (the typical row goes the path's way at every split on the group) holds
    exactly when the row with the group set to the typical values ends in the same leaf; checked on
    random binned rows and typical rows, missing bins and categories included."""
    from cockpit.scoring import counterfactual
    from cockpit.scoring.estimators import MISSING, TreeModel

    model = trained.model
    est = model.targets["won"].estimator
    assert isinstance(est, TreeModel)
    groups = [cols for _, cols in model.reason_groups()]
    paths = counterfactual.TreePaths.of(est, groups)
    rng = np.random.default_rng(5)
    p = len(est.thresholds)
    width = np.array([len(t) + 1 for t in est.thresholds])

    def rows(n: int) -> np.ndarray:
        B = (rng.random((n, p)) * width).astype(np.uint8)
        B[rng.random((n, p)) < 0.15] = MISSING
        return B

    B, refs = rows(400), rows(6)
    agree = paths.agreement(refs)
    categorical_splits = 0
    for t, predictor in enumerate(paths.leaf_predictors):
        leaf = predictor.predict_binned(B, MISSING, 1).astype(np.intp)
        categorical_splits += int(predictor.nodes["is_categorical"][predictor.nodes["is_leaf"] == 0].sum())
        for g, cols in enumerate(groups):
            for k in range(len(refs)):
                changed = B.copy()
                changed[:, cols] = refs[k, cols]
                same = predictor.predict_binned(changed, MISSING, 1).astype(np.intp) == leaf
                assert np.array_equal(agree[t][leaf, g, k], same), (t, g, k)
    assert categorical_splits > 0


def test_flatten_reads_each_deal_field_as_before(histories):
    """The one-pass column reads give the per-field comprehensions' values (blank and missing strings
    coded -1, codes in order of first appearance)."""
    from cockpit.scoring.features import _encode

    codes, vocab = _encode(["b", None, "a", "", "b", "c", "a"])
    assert codes.tolist() == [0, -1, 1, -1, 0, 2, 1] and vocab == ["b", "a", "c"]
    codes, vocab = _encode([])
    assert codes.tolist() == [] and vocab == []
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    flat = flatten(histories[:60], ctx.stages, ctx.attributes)
    assert flat.deal_ids == [h.deal.id for h in histories[:60]]
    assert flat.owner_ids == [h.deal.owner_id for h in histories[:60]]
    assert flat.deal_won.tolist() == [h.deal.is_won for h in histories[:60]]
    empty = flatten([], ctx.stages, ctx.attributes)
    assert empty.n_deals == 0 and empty.deal_ids == [] and len(empty.row_day) == 0


def test_score_columns_are_the_scores_and_the_json_the_store_keeps(histories, trained):
    model = trained.model
    open_deals = [h for h in histories if not h.deal.is_closed]
    columns = model.score_columns(HistoryColumns.of(open_deals), END)
    scores = model.score(open_deals, END)
    assert columns.to_scores() == scores
    assert columns.reasons.json() == [
        json.dumps([r.model_dump() for r in s.reasons], ensure_ascii=False) for s in scores
    ]
    assert len(columns.reasons.text) < len(columns.reasons.index)  # shared reasons are kept once
    bare = model.score_columns(HistoryColumns.of(open_deals), END, reasons=False)
    assert bare.reasons.json() == ["[]"] * len(open_deals)


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["deal_age", "attr:区域"]), st.text(), st.floats(-100, 100, allow_nan=False)),
            max_size=5,
        ),
        max_size=6,
    )
)
def test_reason_columns_write_the_json_of_their_reasons(per_score):
    distinct = list(dict.fromkeys(r for rs in per_score for r in rs))
    where = {r: i for i, r in enumerate(distinct)}
    columns = ReasonColumns(
        start=np.cumsum([0, *map(len, per_score)]),
        index=np.array([where[r] for rs in per_score for r in rs], dtype=np.int64),
        feature=[f for f, _, _ in distinct],
        text=[t for _, t, _ in distinct],
        points=[p for _, _, p in distinct],
    )
    objects = [tuple(Reason(feature=f, text=t, points=p) for f, t, p in rs) for rs in per_score]
    assert columns.objects() == objects
    assert columns.json() == [json.dumps([r.model_dump() for r in rs], ensure_ascii=False) for rs in objects]


def test_deals_sharing_attribute_sets_read_as_deals_with_their_own(histories):
    """The store hands deals with equal attributes one shared set; the codes come out the same."""
    ctx = make_context([PIPELINE], OWNERS, CALENDAR)
    own = HistoryColumns.of(histories)
    texts = [json.dumps(a, sort_keys=True) for a in own.attributes()]
    distinct = sorted(set(texts), reverse=True)  # in another order than the deals'
    shared = dataclasses.replace(
        own,
        attribute_set=np.array([distinct.index(t) for t in texts]),
        attribute_sets=[json.loads(t) for t in distinct],
    )
    assert len(shared.attribute_sets) < len(own.attribute_sets) and shared.attributes() == own.attributes()
    kinds = attribute_kinds(histories)
    a, b = flatten_columns(own, ctx.stages, kinds), flatten_columns(shared, ctx.stages, kinds)
    assert a.attr_cat and a.attr_num
    for k, (codes, vocab) in a.attr_cat.items():
        assert b.attr_cat[k][0].tolist() == codes.tolist() and b.attr_cat[k][1] == vocab
    for k, values in a.attr_num.items():
        np.testing.assert_array_equal(b.attr_num[k], values)


def test_scores_match_the_frame_level_prediction(histories, trained):
    model = trained.model
    open_deals = [h for h in histories if not h.deal.is_closed]
    scores = model.score(open_deals, END, reasons=False)
    ctx = model.context
    flat = flatten(open_deals, ctx.stages, ctx.attributes)
    frame = build_frame(flat, np.arange(len(open_deals)), np.full(len(open_deals), END.toordinal()), ctx)
    p = model.predict_frame(frame)
    assert [s.p_won for s in scores] == pytest.approx(p["won"].tolist())
    assert [s.p_in_quarter for s in scores] == pytest.approx(p["in_quarter"].tolist())
    assert all(s.reasons == () for s in scores)


def test_scoring_can_refresh_past_outcomes_and_owners(histories, trained):
    model = trained.model
    open_deals = [h for h in histories if not h.deal.is_closed]
    before = model.score(open_deals, END)
    forgotten = model.score(open_deals, END, closed=[])  # nobody has a track record any more
    assert [s.p_won for s in forgotten] != [s.p_won for s in before]
    renamed = [o.model_copy(update={"name": o.name + " Smith"}) for o in OWNERS]
    after = model.score(open_deals, END, owners=renamed)
    assert [s.p_won for s in after] == [s.p_won for s in before]
    owner_texts = [r.text for s in after for r in s.reasons if r.feature == "owner_win_rate"]
    assert owner_texts and all(" Smith's win rate " in t or " Smith has no closed" in t for t in owner_texts)
    assert model.owner_names["ann"] == "Ann"  # the model itself is unchanged


def test_closed_or_not_yet_created_deals_are_not_scored(histories, trained):
    closed = [h for h in histories if h.deal.is_closed][:5]
    assert trained.model.score(closed, END) == []
    future = [h for h in histories if h.changes[0].changed_at.date() > date(2024, 6, 1)][:5]
    assert trained.model.score(future, date(2024, 6, 1)) == []


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def test_features_can_be_switched_off_by_name_or_group(histories):
    config = ScoringConfig(
        disabled_features=frozenset({"activity", "lead_source", "attr:segment"}), min_deals_for_boosting=100
    )
    result = train(histories[:500], [PIPELINE], OWNERS, CALENDAR, config)
    features = result.report.features
    assert "days_since_activity" not in features and "activities_30d" not in features
    assert "lead_source" not in features and "attr:segment" not in features
    assert "attr:employees" in features and "deal_age" in features
    assert "Switched off by configuration: activity, attr:segment, lead_source." in result.report.notes
    scores = result.model.score([h for h in histories[:500] if not h.deal.is_closed], END)
    assert not any(r.feature in ("days_since_activity", "lead_source") for s in scores for r in s.reasons)


def test_a_field_filled_only_on_closed_deals_is_flagged(histories):
    marked = [
        h.model_copy(
            update={"deal": h.deal.model_copy(update={"attributes": {**h.deal.attributes, "po": "P-1"}})}
        )
        if h.deal.is_closed
        else h
        for h in histories
    ]
    result = train(marked, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(min_deals_for_boosting=100))
    flagged = [n for n in result.report.notes if n.startswith("attr:po is empty on")]
    assert flagged and "but on no closed deal" in flagged[0]
    assert not any(n.startswith("attr:segment") for n in result.report.notes)


def test_config_rejects_unknown_features_and_bad_values_with_the_key_named():
    with pytest.raises(ValueError, match="unknown feature"):
        ScoringConfig(disabled_features=frozenset({"shoe_size"}))
    with pytest.raises(ValueError, match=r"\[scoring\] min_closed_deals"):
        ScoringConfig.from_mapping({"min_closed_deals": 3})
    with pytest.raises(ValueError, match=r"\[scoring\] colour"):
        ScoringConfig.from_mapping({"colour": "red"})
    config = ScoringConfig.from_mapping({"disabled_features": ["pushes"], "example_step_days": 14})
    assert config.disabled_features == frozenset({"pushes"}) and config.example_step_days == 14


def test_boosting_keeps_the_fewest_rounds_within_the_tolerance_of_the_best():
    losses = [1.0, 0.5, 0.41, 0.4005, 0.4, 0.4002]
    assert _enough_rounds(losses, 0.0) == 5  # the best round
    assert _enough_rounds(losses, 0.002) == 4  # 0.4005 is within 0.2 % of 0.4
    assert _enough_rounds(losses, 0.05) == 3


def test_thresholds_from_config_change_training(histories):
    config = ScoringConfig(min_closed_deals=5000)
    with pytest.raises(TrainingError, match="at least 5000"):
        train(histories, [PIPELINE], OWNERS, CALENDAR, config)
    prep = prepare(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(example_step_days=14))
    weekly = build_examples(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig())
    fortnightly = build_examples(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(example_step_days=14))
    assert 0.4 < len(fortnightly) / len(weekly) < 0.6
    assert context_for(prep, ScoringConfig()).win_rate_prior == 10.0
