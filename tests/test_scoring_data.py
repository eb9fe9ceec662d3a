"""Quality bars of the win model on the demo CRM and on the public Maven CRM data (issue 3).

- Demo: on the time-based test split the model beats the CRM stage probability's Brier score by at
  least 30 % and the stage win rate's by at least 15 %, with an expected calibration error of at
  most 0.03 (P(won this quarter), which the forecast uses; P(won) is held to what it reaches).
- Maven: won-vs-lost from static attributes has no signal, so the model's Brier score stays within
  0.003 of the base rate's; "won within the quarter" from point-in-time examples has signal in deal
  age (stale deals never close), and the model finds it: ROC AUC >= 0.75 on the deals open at the
  start of 2017Q4, trained on what was known that day.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from cockpit.models import DealHistory, FiscalCalendar, histories_of, snapshot_of
from cockpit.scoring import ScoringConfig, train
from cockpit.scoring.baselines import CRM, STAGE_RATE
from cockpit.scoring.metrics import roc_auc
from cockpit.scoring.model import MODEL
from tests.shared_data import MAVEN

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "maven-crm.toml"
DEMO_AS_OF = date(2026, 3, 31)


def _histories(opportunities, changes, activities) -> list[DealHistory]:
    """Each deal's rows oldest first (a stable sort keeps same-instant rows in their order)."""
    return histories_of(opportunities, sorted(changes, key=lambda c: c.changed_at), activities)


# --------------------------------------------------------------------------------------------------
# Demo CRM
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    demo_module = pytest.importorskip("connectors.demo")
    connector = demo_module.DemoConnector(seed=7, size=5000, as_of=DEMO_AS_OF)
    pipelines, owners, opportunities, changes, activities = [], [], [], [], []
    for batch in connector.generate():
        pipelines += batch.pipelines
        owners += batch.owners
        opportunities += batch.opportunities
        changes += batch.changes
        activities += batch.activities
    calendar = FiscalCalendar(start_month=demo_module.DEMO_FISCAL_START_MONTH)
    return _histories(opportunities, changes, activities), pipelines, owners, calendar


@pytest.fixture(scope="module")
def demo_result(demo):
    histories, pipelines, owners, calendar = demo
    return train(histories, pipelines, owners, calendar, ScoringConfig())


def _gain(metrics, baseline: str) -> float:
    return 1 - metrics[MODEL].brier / metrics[baseline].brier


def test_demo_quarter_probability_meets_the_bars(demo_result):
    target = demo_result.report.targets["in_quarter"]
    assert target.chosen == MODEL
    assert _gain(target.metrics, CRM) >= 0.30
    assert _gain(target.metrics, STAGE_RATE) >= 0.15
    assert target.metrics[MODEL].ece <= 0.03


def test_demo_win_probability_beats_both_baselines(demo_result):
    target = demo_result.report.targets["won"]
    assert target.chosen == MODEL
    assert _gain(target.metrics, CRM) >= 0.25  # 0.28 here; 0.30 is reached from about 50,000 deals
    assert _gain(target.metrics, STAGE_RATE) >= 0.15
    assert target.metrics[MODEL].ece <= 0.03


def test_demo_scores_explain_themselves(demo, demo_result):
    histories = demo[0]
    open_deals = [h for h in histories if not h.deal.is_closed]
    scores = demo_result.model.score(open_deals, DEMO_AS_OF)
    assert len(scores) == len(open_deals)
    assert all(3 <= len(s.reasons) <= 5 for s in scores)
    pushed = [r for s in scores for r in s.reasons if r.feature == "close_pushes" and "pushed" in r.text]
    assert pushed and np.mean([r.points for r in pushed]) < 0  # pushes hurt, as they do in the demo


# --------------------------------------------------------------------------------------------------
# Maven CRM
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maven():
    if not (MAVEN / "sales_pipeline.csv").exists() or not MAPPING.exists():
        pytest.skip(f"Maven CRM data not found at {MAVEN}")
    csv = pytest.importorskip("connectors.csv")
    data = csv.CsvConnector(str(MAVEN), str(MAPPING)).load()
    return _histories(data.opportunities, data.changes, data.activities), data.pipelines, data.owners


STATIC_ONLY = frozenset(
    {
        "stage",
        "stage_time",
        "age",
        "stage_moves",
        "pushes",
        "close_date",
        "calendar",
        "amount_changes",
        "activity",
        "forecast_category",
    }
)
"""Everything that changes while a deal is open: what is left are the deal's static attributes
(product, account fields, list price) and its agent's and team's past win rates."""


def test_maven_static_attributes_invent_no_signal(maven):
    histories, pipelines, owners = maven
    result = train(
        histories, pipelines, owners, FiscalCalendar(), ScoringConfig(disabled_features=STATIC_ONLY)
    )
    metrics = result.report.targets["won"].metrics
    assert abs(metrics[MODEL].brier - metrics["base_rate"].brier) <= 0.003
    assert 0.45 <= metrics[MODEL].roc_auc <= 0.55


def _q4(maven) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, list[str]]:
    """Train on what was known on 2017-10-01; score the deals open then; did they win by 2017-12-31?"""
    histories, pipelines, owners = maven
    start, end = date(2017, 10, 1), date(2017, 12, 31)
    result = train(histories, pipelines, owners, FiscalCalendar(), ScoringConfig(), as_of=start)
    stages = {s.id: s for p in pipelines for s in p.stages}
    open_deals = [
        h for h in histories if (s := snapshot_of(h, start, stages)) is not None and not s.deal.is_closed
    ]
    scores = {s.opportunity_id: s for s in result.model.score(open_deals, start)}
    y = np.array([h.deal.is_won and h.deal.closed_at.date() <= end for h in open_deals], dtype=float)
    p = np.array([scores[h.deal.id].p_in_quarter for h in open_deals])
    age = np.array([(start - h.changes[0].changed_at.date()).days for h in open_deals])
    return y, p, age, list(scores.values()), result.report.notes


def test_maven_quarter_model_uses_deal_age(maven):
    y, p, age, scores, notes = _q4(maven)
    assert roc_auc(y, p) >= 0.75
    stale = age > 138  # older than any deal that ever closed (README)
    assert stale.sum() > 400 and y[stale].sum() == 0
    assert p[stale].mean() < 0.5 * p[~stale].mean()
    assert any(r.feature == "days_in_stage" and r.points < 0 for s in scores for r in s.reasons)
    # Open deals without an account (so without the account's fields) never won: the report flags it.
    assert any(n.startswith("attr:sector is empty on") for n in notes)
