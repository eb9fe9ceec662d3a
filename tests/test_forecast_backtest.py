"""Backtest and baseline probabilities: exact sums on a tiny history, no leakage, quality on real data."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cockpit.forecast.backtest import backtest, past_quarters
from cockpit.forecast.baseline import CrmProbabilities, InQuarterRates, StageRates
from cockpit.forecast.config import ForecastConfig
from cockpit.forecast.deals import stage_index
from cockpit.models import (
    DealHistory,
    FiscalCalendar,
    Opportunity,
    OrgTree,
    Owner,
    StageChange,
    complete_history,
    end_of_day,
    histories_of,
    snapshot_of,
)
from cockpit.models.submission import CategoryAmounts, Submission
from tests.factories import PIPELINE, demo_forecast_config
from tests.shared_data import MAVEN

UTC = UTC
CAL = FiscalCalendar()
STAGES = stage_index([PIPELINE])
CONFIG = ForecastConfig(reporting_currency="CNY", run_rate_quarters=1)
MAVEN_MAPPING = Path(__file__).resolve().parent.parent / "examples" / "maven-crm.toml"


def history(deal_id: str, rows: list[tuple[date, str, str, date]], owner: str = "r1") -> DealHistory:
    changes = [
        StageChange(
            opportunity_id=deal_id,
            changed_at=datetime(d.year, d.month, d.day, 10, tzinfo=UTC) + timedelta(minutes=i),
            stage_id=s,
            amount=Decimal(a),
            close_date=c,
        )
        for i, (d, s, a, c) in enumerate(rows)
    ]
    last = changes[-1]
    closed = last.stage_id in {"won", "lost"}
    deal = Opportunity(
        id=deal_id,
        owner_id=owner,
        pipeline_id="nb",
        stage_id=last.stage_id,
        amount=last.amount,
        close_date=last.close_date,
        currency="CNY",
        is_closed=closed,
        is_won=last.stage_id == "won",
        closed_at=last.changed_at if closed else None,
        created_at=changes[0].changed_at,
    )
    return DealHistory(deal=deal, changes=tuple(complete_history(deal, changes)))


d = date
TINY = [
    # won in week 1 of Q3 2026 (before the week-2 forecast), in commit stage before
    history(
        "a",
        [(d(2026, 6, 1), "negotiate", "1000", d(2026, 7, 3)), (d(2026, 7, 3), "won", "1000", d(2026, 7, 3))],
    ),
    # open at quarter start with a close date in Q3, won in week 10
    history(
        "b",
        [(d(2026, 6, 10), "proposal", "2000", d(2026, 9, 1)), (d(2026, 9, 1), "won", "2000", d(2026, 9, 1))],
        owner="r2",
    ),
    # created in the quarter and won in it: the run-rate's kind of deal
    history(
        "c",
        [(d(2026, 8, 1), "qualify", "500", d(2026, 8, 20)), (d(2026, 8, 20), "won", "500", d(2026, 8, 20))],
    ),
    # open in Q3 pipeline, lost
    history(
        "e",
        [(d(2026, 6, 1), "qualify", "4000", d(2026, 8, 1)), (d(2026, 8, 5), "lost", "4000", d(2026, 8, 5))],
    ),
]


def test_backtest_arithmetic_on_a_tiny_history():
    q3 = CAL.quarter(2026, 3)
    report = backtest(
        TINY, [PIPELINE], CAL, CONFIG, probabilities_at=CrmProbabilities(STAGES), quarters=[q3], weeks=[1, 2]
    )
    p1, p2 = report.points
    assert p1.as_of == d(2026, 7, 1) and p2.as_of == d(2026, 7, 8)
    assert p1.actual == p2.actual == Decimal("3500")
    assert p1.closed == 0 and p2.closed == Decimal("1000")
    # week 1: a (0.8 × 1000), b (0.4 × 2000), e (0.1 × 4000) are open in the quarter's pipeline
    assert p1.stage_weighted == Decimal("800") + Decimal("800") + Decimal("400")
    assert p1.commit == Decimal("1000")
    assert p1.model.expected == Decimal("2000.00")  # no earlier quarter: no run-rate yet
    assert p1.error(p1.model.p50) == pytest.approx(float((p1.model.p50 - 3500) / 3500 * 100))
    assert p2.stage_weighted == Decimal("1000") + Decimal("800") + Decimal("400")
    week1 = report.week(1)
    assert week1.quarters == 1
    assert week1.stage_weighted_error == pytest.approx(abs(2000 - 3500) / 3500 * 100)
    assert week1.commit_error == pytest.approx(abs(1000 - 3500) / 3500 * 100)
    assert week1.submission_error is None
    # the miss the range itself expects: its P10-P90 read as a normal's, mean absolute deviation
    sigma = float(p1.model.p90 - p1.model.p10) / 2.563
    assert week1.expected_error == pytest.approx(sigma * 0.798 / float(p1.model.p50) * 100)
    assert week1.expected_error > 0
    assert 0.0 <= report.inside_range <= 1.0
    as_json = report.to_dict()
    assert as_json["points"][0]["actual"] == "3500.00" and as_json["points"][0]["as_of"] == "2026-07-01"


def test_backtest_scores_submissions_and_owner_bias():
    q3 = CAL.quarter(2026, 3)
    tree = OrgTree(
        [
            Owner(id="m1", name="M"),
            Owner(id="r1", name="R1", manager_id="m1"),
            Owner(id="r2", name="R2", manager_id="m1"),
        ]
    )

    def sub(scope: str, number: str, when: date) -> Submission:
        return Submission(
            quarter=q3.label,
            scope=scope,
            author="a",
            created_at=end_of_day(when) - timedelta(hours=2),
            currency="CNY",
            totals=CategoryAmounts(),
            manager_number=Decimal(number),
            reason="call",
        )

    subs = [
        sub("m1", "3000", d(2026, 7, 1)),
        sub("m1", "4200", d(2026, 7, 6)),
        sub("r1", "1000", d(2026, 7, 2)),
    ]
    report = backtest(
        TINY,
        [PIPELINE],
        CAL,
        CONFIG,
        probabilities_at=CrmProbabilities(STAGES),
        quarters=[q3],
        weeks=[1, 2],
        submissions=subs,
        scope="m1",
        tree=tree,
        owner_ids={"r1", "r2"},
    )
    assert [p.submission for p in report.points] == [Decimal("3000"), Decimal("4200")]
    assert report.week(2).submission_error == pytest.approx(20.0)
    bias = {b.owner_id: b for b in report.owner_bias}
    assert bias["m1"].submissions == 2 and bias["m1"].bias == pytest.approx(
        (-500 / 3500 + 700 / 3500) / 2 * 100
    )
    assert bias["r1"].bias == pytest.approx((1000 - 1500) / 1500 * 100)  # r1 closed a and c


def test_past_quarters():
    assert [q.label for q in past_quarters(CAL, d(2026, 8, 10), 3)] == ["FY2025-Q4", "FY2026-Q1", "FY2026-Q2"]


def test_stage_rates_learn_only_from_deals_closed_before_as_of():
    rates = StageRates(TINY, STAGES)
    assert rates.rates(d(2026, 7, 2)) == {}
    assert rates.rates(d(2026, 7, 3)) == {"negotiate": 1.0, "won": 1.0}
    later = rates.rates(d(2026, 9, 30))
    assert later["qualify"] == pytest.approx(0.5) and later["proposal"] == 1.0
    snaps = [s for h in TINY if (s := snapshot_of(h, d(2026, 7, 10), STAGES)) is not None]
    assert StageRates(TINY, STAGES)(d(2026, 7, 10), snaps) == {
        "b": 0.4,
        "e": 0.1,
    }  # no history yet: CRM default


# --------------------------------------------------------------------------- on generated and real data


def demo(size: int, as_of: date, seed: int = 7):
    from connectors.demo import DemoConnector

    pipelines, owners, histories = [], [], []
    for batch in DemoConnector(seed=seed, size=size, as_of=as_of).generate():
        pipelines += batch.pipelines
        owners += batch.owners
        histories += histories_of(batch.opportunities, batch.changes, batch.activities, complete=True)
    return pipelines, owners, histories, demo_forecast_config()


def truncated(h: DealHistory, as_of: date) -> DealHistory | None:
    cutoff = end_of_day(as_of)
    rows = tuple(r for r in h.changes if r.changed_at < cutoff)
    if not rows:
        return None
    return DealHistory(deal=h.deal, changes=rows, activities=tuple(a for a in h.activities if a <= as_of))


def test_in_quarter_rates_do_not_look_ahead():
    pipelines, _, histories, config = demo(1200, d(2026, 6, 30))
    stages = stage_index(pipelines)
    as_of = d(2026, 5, 13)
    full = InQuarterRates(histories, stages, CAL, fx=config.fx(as_of))
    cut = [t for h in histories if (t := truncated(h, as_of)) is not None]
    known = InQuarterRates(cut, stages, CAL, fx=config.fx(as_of))
    snaps = [s for h in cut if (s := snapshot_of(h, as_of, stages)) is not None]
    got, want = full(as_of, snaps), known(as_of, snaps)
    assert got.keys() == want.keys() and len(got) > 50
    assert max(abs(got[k] - want[k]) for k in got) < 1e-12
    assert all(0.0 <= p <= 1.0 for p in got.values())


def test_demo_backtest_model_beats_the_stage_weighted_pipeline():
    pipelines, _, histories, config = demo(3000, d(2026, 6, 30))
    stages = stage_index(pipelines)
    probs = InQuarterRates(histories, stages, CAL, fx=config.fx(d(2026, 6, 30)))
    report = backtest(
        histories,
        pipelines,
        CAL,
        config,
        probabilities_at=probs,
        quarters=past_quarters(CAL, d(2026, 6, 30), 2),
        weeks=[1, 7],
    )
    for week in report.weeks:
        assert week.model_error is not None and week.stage_weighted_error is not None
        assert week.model_error <= 15.0
        assert week.model_error < week.stage_weighted_error / 2


@pytest.mark.skipif(not MAVEN.is_dir(), reason="Maven CRM data not available")
def test_maven_p50_within_ten_percent_in_2017q3_and_q4():
    from connectors.csv import CsvConnector

    imported = CsvConnector(MAVEN, mapping=MAVEN_MAPPING).load()
    histories = histories_of(imported.opportunities, imported.changes)
    stages = stage_index(imported.pipelines)
    config = ForecastConfig(reporting_currency="USD", run_rate_quarters=1)
    probs = InQuarterRates(histories, stages, CAL, quarters=1)
    quarters = [CAL.quarter(2017, 3), CAL.quarter(2017, 4)]
    report = backtest(
        histories, imported.pipelines, CAL, config, probabilities_at=probs, quarters=quarters, weeks=[1]
    )
    errors = {p.quarter: p.error(p.model.p50) for p in report.points}
    assert set(errors) == {"FY2017-Q3", "FY2017-Q4"}
    for quarter, error in errors.items():
        assert error is not None and abs(error) <= 10.0, f"{quarter}: P50 off by {error:+.1f}%"


def test_fit_logistic_recovers_rates_and_survives_separation():
    import numpy as np

    from cockpit.forecast.baseline import fit_logistic

    # one binary feature: 30 % for the group without it, 80 % with it
    x = np.array([[1.0, 0.0], [1.0, 1.0]])
    w = fit_logistic(x, np.array([300.0, 800.0]), np.array([1000.0, 1000.0]), l2=1e-6)
    p = 1 / (1 + np.exp(-(x @ w)))
    assert p == pytest.approx([0.3, 0.8], abs=1e-4)
    # perfectly separated cells and a cell without any win: the penalty keeps every coefficient finite
    x = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    w = fit_logistic(x, np.array([0.0, 40.0, 0.0]), np.array([500.0, 40.0, 3.0]))
    assert np.all(np.isfinite(w)) and np.max(np.abs(w)) < 50
    p = 1 / (1 + np.exp(-(x @ w)))
    assert p[0] < 0.05 and p[1] > 0.7 and p[2] < 0.1  # shrunk toward the intercept, not to 0 or 1
