"""The run-rate learns only from quarters the CRM already recorded at their same point (go-live imports)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from cockpit.forecast.config import ForecastConfig
from cockpit.forecast.runrate import DealOutcome, learn_run_rate
from cockpit.models import FiscalCalendar

CAL = FiscalCalendar()
Q3 = CAL.quarter(2026, 3)
CONFIG = ForecastConfig(reporting_currency="CNY", run_rate_quarters=2)
GO_LIVE = date(2026, 2, 16)
"""The CRM's first day: the pipeline the organisation already had is imported (created) on it."""


def outcome(deal_id: str, created: date, won: date | None, amount: str) -> DealOutcome:
    won_at = datetime.combine(won, datetime.min.time(), UTC) + timedelta(hours=15) if won else None
    created_at = datetime.combine(created, datetime.min.time(), UTC) + timedelta(hours=9)
    return DealOutcome(deal_id, "r1", "nb", created_at, won_at, won, Decimal(amount), "CNY")


def crm() -> list[DealOutcome]:
    return [
        # imported at go-live (they existed long before), won in Q1 and Q2
        outcome("imp-1", GO_LIVE, date(2026, 3, 10), "50000"),
        outcome("imp-2", GO_LIVE, date(2026, 3, 20), "70000"),
        outcome("imp-3", GO_LIVE, date(2026, 4, 20), "60000"),
        outcome("imp-4", GO_LIVE, None, "90000"),
        # new deals created after go-live
        outcome("new-1", date(2026, 3, 25), date(2026, 3, 30), "1000"),
        outcome("new-2", date(2026, 4, 15), date(2026, 5, 20), "2000"),
        outcome("new-3", date(2026, 5, 4), date(2026, 6, 1), "3000"),
    ]


def test_a_quarter_whose_same_point_precedes_the_crm_is_not_learned_from():
    # Seen from 2026-07-10, Q1's same point (2026-01-10) predates go-live: every imported deal
    # would count as created after it. Only Q2 (same point 2026-04-10) is learned from.
    rr = learn_run_rate(crm(), Q3, date(2026, 7, 10), CONFIG)
    assert rr.quarters == ("FY2026-Q2",)
    assert rr.samples == (Decimal("5000"),)  # new-2 + new-3; imp-3 was created before 2026-04-10
    assert rr.expected == Decimal("5000.00")


def test_a_quarter_whose_same_point_follows_go_live_counts_even_if_go_live_was_inside_it():
    # Seen from 2026-09-20 (day 81), Q1's same point is 2026-03-23: after go-live, so the imported
    # deals are old by then and only new-1 counts for Q1.
    rr = learn_run_rate(crm(), Q3, date(2026, 9, 20), CONFIG)
    assert rr.quarters == ("FY2026-Q2", "FY2026-Q1")
    assert rr.samples == (Decimal("0"), Decimal("1000"))


def test_the_first_record_is_what_was_known_on_the_as_of_date():
    # Deals created after the as-of date cannot move the CRM's first record; nothing known: no run-rate.
    later = [outcome("x", date(2026, 7, 20), date(2026, 8, 1), "500")]
    assert learn_run_rate(later, Q3, date(2026, 7, 10), CONFIG).quarters == ()
    assert learn_run_rate(later + crm(), Q3, date(2026, 7, 10), CONFIG).quarters == ("FY2026-Q2",)


def test_the_store_names_the_first_record_when_outcomes_hold_only_won_deals():
    # The app learns from won deals only; the CRM's first record (a lost deal created on go-live)
    # comes from the store. Without it the first won deal (2026-03-25) would stand for go-live.
    won_only = [o for o in crm() if o.won_at is not None and o.opportunity_id.startswith("new")]
    assert learn_run_rate(won_only, Q3, date(2026, 7, 10), CONFIG).quarters == ("FY2026-Q2",)
    seen_from = date(2026, 9, 20)  # Q1's same point 2026-03-23 predates the first won deal
    assert learn_run_rate(won_only, Q3, seen_from, CONFIG).quarters == ("FY2026-Q2",)
    go_live = datetime.combine(GO_LIVE, datetime.min.time(), UTC)
    rr = learn_run_rate(won_only, Q3, seen_from, CONFIG, first_record=go_live)
    assert rr.quarters == ("FY2026-Q2", "FY2026-Q1")
    later = datetime.combine(seen_from + timedelta(days=1), datetime.min.time(), UTC)  # not known yet
    assert learn_run_rate(won_only, Q3, seen_from, CONFIG, first_record=later).quarters == ("FY2026-Q2",)


def test_store_first_record_is_the_earliest_first_history_row(tmp_path):
    from cockpit.store import Store
    from tests.factories import small_batch

    with Store.open(tmp_path / "s.sqlite") as store:
        assert store.first_record() is None
        run = store.begin_sync("test", None)
        batch = small_batch()
        store.apply_batch(run, batch)
        store.finish_sync(run, "ok")
        assert store.first_record() == min(c.changed_at for c in batch.changes)
