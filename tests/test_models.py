"""Domain models: validation messages name the field and value; calendar arithmetic holds everywhere."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cockpit.models import (
    FiscalCalendar,
    ForecastCategory,
    Money,
    Opportunity,
    OrgTree,
    Owner,
    Pipeline,
    Quarter,
    Stage,
    StageChange,
    complete_history,
)

UTC = timezone.utc


def opp(**kw):
    base = dict(id="o1", owner_id="r1", pipeline_id="nb", stage_id="qualify", amount=Decimal("10.00"))
    base.update(kw)
    return Opportunity(**base)


def test_negative_amount_names_field_and_value():
    with pytest.raises(ValidationError) as err:
        opp(amount=Decimal("-5"))
    text = str(err.value)
    assert "amount" in text and "-5" in text


def test_currency_must_be_iso_code():
    with pytest.raises(ValidationError) as err:
        opp(currency="rmb")
    assert "currency" in str(err.value) and "rmb" in str(err.value)


def test_naive_datetime_is_rejected():
    with pytest.raises(ValidationError, match="no time zone"):
        opp(created_at=datetime(2026, 1, 1, 9, 0))


def test_close_before_creation_is_rejected_for_closed_deals():
    with pytest.raises(ValidationError, match="before creation"):
        opp(created_at=datetime(2026, 3, 1, tzinfo=UTC), close_date=date(2026, 2, 1), is_closed=True,
            closed_at=datetime(2026, 3, 2, tzinfo=UTC), stage_id="lost")


def test_won_requires_closed():
    with pytest.raises(ValidationError, match="is_won"):
        opp(is_won=True)


def test_models_are_frozen():
    deal = opp()
    with pytest.raises(ValidationError):
        deal.amount = Decimal(1)  # type: ignore[misc]


def test_money_is_decimal():
    assert str(Money(amount=Decimal("1234.5"), currency="CNY")) == "1,234.50 CNY"


def test_forecast_category_aliases():
    assert ForecastCategory.parse("Best Case") is ForecastCategory.BEST_CASE
    assert ForecastCategory.parse("Forecast") is ForecastCategory.COMMIT
    with pytest.raises(ValueError, match="unknown forecast category 'Maybe'"):
        ForecastCategory.parse("Maybe")


def test_pipeline_rejects_duplicate_stage_ids():
    s = Stage(id="a", name="A", order=0, probability=Decimal("0.1"))
    with pytest.raises(ValidationError, match="duplicate stage ids"):
        Pipeline(id="p", name="P", stages=(s, s))


def test_org_tree_subtree_and_cycle():
    owners = [Owner(id="vp", name="VP"), Owner(id="m", name="M", manager_id="vp"),
              Owner(id="r", name="王磊", manager_id="m")]
    tree = OrgTree(owners)
    assert tree.subtree("vp") == ["vp", "m", "r"]
    assert tree.chain("r") == ["r", "m", "vp"]
    assert tree.find("王").id == "r"
    with pytest.raises(ValueError, match="loops"):
        OrgTree([Owner(id="a", name="A", manager_id="b"), Owner(id="b", name="B", manager_id="a")])


def test_complete_history_fills_forward_and_backward():
    deal = opp(amount=Decimal(500), close_date=date(2026, 5, 1), created_at=datetime(2026, 1, 1, tzinfo=UTC))
    rows = complete_history(deal, [
        StageChange(opportunity_id="o1", changed_at=datetime(2026, 2, 1, tzinfo=UTC), stage_id="proposal"),
        StageChange(opportunity_id="o1", changed_at=datetime(2026, 1, 1, tzinfo=UTC), stage_id="qualify",
                    amount=Decimal(300)),
    ])
    assert [r.stage_id for r in rows] == ["qualify", "proposal"]
    assert [r.amount for r in rows] == [Decimal(300), Decimal(300)]
    assert rows[0].close_date == date(2026, 5, 1)
    assert complete_history(deal, [])[0].changed_at == deal.created_at


def test_complete_history_never_leaks_a_closed_deals_outcome_backward():
    won = opp(stage_id="won", is_closed=True, is_won=True, amount=Decimal(900), close_date=date(2026, 6, 30),
              created_at=datetime(2026, 1, 1, tzinfo=UTC), closed_at=datetime(2026, 6, 30, tzinfo=UTC),
              forecast_category=ForecastCategory.CLOSED)
    rows = complete_history(won, [
        StageChange(opportunity_id="o1", changed_at=datetime(2026, 1, 1, tzinfo=UTC), stage_id="qualify"),
        StageChange(opportunity_id="o1", changed_at=datetime(2026, 6, 30, tzinfo=UTC), stage_id="won"),
    ])
    assert [(r.close_date, r.forecast_category) for r in rows] == [
        (None, None), (date(2026, 6, 30), ForecastCategory.CLOSED)]


# -- calendar ---------------------------------------------------------------------------------

days = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))
months = st.integers(1, 12)


@given(day=days, start=months)
def test_every_day_is_in_exactly_its_quarter(day, start):
    cal = FiscalCalendar(start_month=start)
    q = cal.quarter_of(day)
    assert q.start <= day < q.end
    assert q.contains(day)
    assert 1 <= q.week_of(day) <= q.weeks <= 14
    assert q.next().start == q.end
    assert q.previous().end == q.start
    assert q.start.day == 1 and (q.start.month - start) % 3 == 0


@given(day=days, start=months)
def test_fiscal_year_has_four_quarters_and_is_named_after_its_end(day, start):
    cal = FiscalCalendar(start_month=start)
    q = cal.quarter_of(day)
    first = cal.quarter(q.fiscal_year, 1)
    last = cal.quarter(q.fiscal_year, 4)
    assert first.start == cal.year_start(q.fiscal_year)
    assert last.last_day.year == q.fiscal_year
    assert sum(cal.quarter(q.fiscal_year, n).days for n in range(1, 5)) in (365, 366)


@given(day=days, start=months)
def test_labels_round_trip(day, start):
    cal = FiscalCalendar(start_month=start)
    q = cal.quarter_of(day)
    assert cal.parse_quarter(q.label) == q
    if q.calendar_label:
        assert cal.parse_quarter(q.calendar_label) == q


def test_fiscal_year_starting_in_february():
    cal = FiscalCalendar(start_month=2)
    q = cal.quarter_of(date(2026, 11, 23))
    assert q.label == "FY2027-Q4"
    assert (q.start, q.end) == (date(2026, 11, 1), date(2027, 2, 1))
    assert q.week_of(date(2026, 11, 23)) == 4
    with pytest.raises(ValueError, match="does not line up"):
        cal.parse_quarter("2026Q4")


def test_leap_year_quarter_lengths():
    cal = FiscalCalendar()
    assert cal.quarter(2028, 1).days == 91  # 2028 is a leap year
    assert cal.quarter(2027, 1).days == 90
    assert FiscalCalendar(start_month=12).quarter(2028, 1).days == 91  # Dec 2027 – Feb 2028


def test_relative_and_bad_quarters():
    cal = FiscalCalendar()
    today = date(2026, 11, 23)
    assert cal.parse_quarter("current", today).label == "FY2026-Q4"
    assert cal.parse_quarter("next", today).label == "FY2027-Q1"
    assert cal.parse_quarter("previous", today).label == "FY2026-Q3"
    assert cal.parse_quarter("2026q4", today).label == "FY2026-Q4"
    with pytest.raises(ValueError, match="cannot read quarter 'Q5'"):
        cal.parse_quarter("Q5")


def test_quarter_ordering():
    cal = FiscalCalendar(start_month=4)
    qs = [cal.quarter_of(date(2026, m, 1)) for m in (12, 1, 6)]
    assert sorted(qs)[0].start < sorted(qs)[1].start < sorted(qs)[2].start
    assert isinstance(qs[0], Quarter)
    assert cal.quarter_of(date(2026, 4, 1)).week_start(2) == date(2026, 4, 8)
    assert timedelta(days=0) == cal.quarter_of(date(2026, 4, 1)).start - date(2026, 4, 1)


def test_trusted_construction_equals_validation():
    """What the store, the connectors and the scorer build without validation is the validated model."""
    from cockpit.models import DealScore, Reason
    from cockpit.models.trusted import construct_trusted

    values = {
        "opportunity_id": "x", "as_of": date(2026, 1, 5), "p_won": 0.5, "p_in_quarter": 0.25,
        "reasons": (Reason(feature="deal_age", text="deal open 3 days", points=-1.5),), "model_version": "v",
    }
    fast, slow = construct_trusted(DealScore, dict(values)), DealScore.model_validate(dict(values))
    assert fast == slow and hash(fast) == hash(slow)
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
