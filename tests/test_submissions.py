"""Submissions: the model's rules, append-only storage, drafts, building them from a roll-up, rolling up."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from cockpit.forecast.config import ForecastConfig, FxRate
from cockpit.forecast.rollup import rollup
from cockpit.forecast.submissions import (
    data_fingerprint,
    lines_from_rollup,
    make_submission,
    rollup_submissions,
)
from cockpit.models import DealSnapshot, FiscalCalendar, ForecastCategory, Opportunity, OrgTree, Owner
from cockpit.models.submission import (
    CategoryAmounts,
    Draft,
    DraftPosition,
    ModelRange,
    Submission,
    SubmissionLine,
)
from cockpit.store.submissions import (
    SUBMISSION_DDL,
    SubmissionStoreError,
    append_submission,
    delete_draft,
    get_submission,
    latest_submissions,
    list_submissions,
    load_draft,
    save_draft,
)
from tests.factories import PIPELINE

UTC = UTC
NOW = datetime(2026, 8, 10, 9, 30, 15, 123456, tzinfo=UTC)


def line(deal_id: str, category: ForecastCategory, amount: str, **extra) -> SubmissionLine:
    return SubmissionLine(
        opportunity_id=deal_id,
        name=f"Deal {deal_id}",
        owner_id=extra.pop("owner_id", "r1"),
        pipeline_id="nb",
        stage_id=extra.pop("stage_id", "proposal"),
        amount=Decimal(amount),
        currency=extra.pop("currency", "CNY"),
        category=category,
        won=category is ForecastCategory.CLOSED,
        **extra,
    )


def submission(
    scope: str = "m1",
    number: str | None = None,
    reason: str = "",
    quarter: str = "FY2026-Q3",
    created_at: datetime = NOW,
    **extra,
) -> Submission:
    lines = (
        line(
            "b",
            ForecastCategory.COMMIT,
            "1000",
            currency="USD",
            fx_rate=Decimal("7.2"),
            note="signing Friday",
            amount_override=Decimal("900"),
            close_date_override=date(2026, 9, 5),
            reviewed=True,
        ),
        line("a", ForecastCategory.CLOSED, "5000", stage_id="won"),
        line("c", ForecastCategory.BEST_CASE, "3000.50"),
    )
    totals = CategoryAmounts(closed=Decimal("5000"), commit=Decimal("6480.00"), best_case=Decimal("3000.50"))
    return Submission(
        quarter=quarter,
        scope=scope,
        author="alice",
        created_at=created_at,
        currency="CNY",
        totals=totals,
        manager_number=Decimal(number) if number else totals.commit_forecast,
        reason=reason,
        model=ModelRange(
            expected=Decimal("12000"), p10=Decimal("9000"), p50=Decimal("11800"), p90=Decimal("15000")
        ),
        model_version="gbm-2026-08-01",
        data_fingerprint="abc123",
        lines=lines,
        **extra,
    )


# --------------------------------------------------------------------------- the model


def test_lines_are_sorted_and_valued_in_reporting_currency():
    sub = submission()
    assert [x.opportunity_id for x in sub.lines] == ["a", "b", "c"]
    assert sub.lines[1].value == Decimal("6480.00")  # the override, converted
    assert sub.lines[1].effective_close_date == date(2026, 9, 5)
    assert sub.call_sum == Decimal("11480.00") and not sub.differs


def test_a_different_number_needs_a_reason():
    with pytest.raises(ValidationError, match="differs from closed \\+ commit \\(11480.00\\); give a reason"):
        submission(number="12000")
    ok = submission(number="12000", reason="Globex renewal lands early")
    assert ok.differs


def test_totals_must_match_the_lines():
    good = submission()
    with pytest.raises(ValidationError, match="totals.best_case is 1 but the lines add up to 3000.50"):
        Submission.model_validate(
            {**good.model_dump(), "totals": {**good.totals.model_dump(), "best_case": "1"}}
        )


def test_line_rules():
    with pytest.raises(ValidationError, match="an open deal cannot be called 'closed'"):
        SubmissionLine(
            opportunity_id="x",
            owner_id="r",
            pipeline_id="p",
            stage_id="s",
            amount=Decimal(1),
            currency="CNY",
            category=ForecastCategory.CLOSED,
        )
    with pytest.raises(ValidationError, match="deal 'a' has two lines"):
        Draft(
            quarter="Q",
            scope="m1",
            author="alice",
            updated_at=NOW,
            currency="CNY",
            lines=(line("a", ForecastCategory.COMMIT, "1"), line("a", ForecastCategory.PIPELINE, "1")),
        )
    with pytest.raises(ValidationError):
        line("n", ForecastCategory.COMMIT, "-1")
    with pytest.raises(ValidationError, match="p10 <= p50 <= p90"):
        ModelRange(expected=Decimal(1), p10=Decimal(3), p50=Decimal(2), p90=Decimal(4))


def test_submissions_are_frozen():
    sub = submission()
    with pytest.raises(ValidationError):
        sub.manager_number = Decimal(1)  # type: ignore[misc]


# --------------------------------------------------------------------------- the store


@pytest.fixture
def conn():
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.executescript(SUBMISSION_DDL)
    yield connection
    connection.close()


def test_append_get_and_list(conn):
    first = append_submission(conn, submission())
    second = append_submission(conn, submission(scope="m2", created_at=NOW + timedelta(hours=1)))
    third = append_submission(conn, submission(quarter="FY2026-Q4"))
    assert (first, second, third) == (1, 2, 3)
    got = get_submission(conn, first)
    assert got.id == first and got.model_copy(update={"id": None}) == submission()
    assert [s.id for s in list_submissions(conn)] == [1, 2, 3]
    assert [s.id for s in list_submissions(conn, quarter="FY2026-Q3")] == [1, 2]
    assert [s.id for s in list_submissions(conn, quarter="FY2026-Q3", scope="m2")] == [2]
    with pytest.raises(SubmissionStoreError, match="no submission with id 99"):
        get_submission(conn, 99)
    with pytest.raises(SubmissionStoreError, match="already in the store"):
        append_submission(conn, got)


def test_submissions_are_append_only(conn):
    sub_id = append_submission(conn, submission())
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE submission SET author = 'mallory' WHERE id = ?", (sub_id,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM submission")
    assert get_submission(conn, sub_id).author == "alice"


def test_latest_submission_per_scope_supersedes_without_editing(conn):
    append_submission(conn, submission(scope="m1", number="100", reason="old"))
    newer = append_submission(conn, submission(scope="m1", number="200", reason="new"))
    m2 = append_submission(conn, submission(scope="m2"))
    append_submission(conn, submission(scope="m1", quarter="FY2026-Q4"))
    latest = latest_submissions(conn, "FY2026-Q3", ["m1", "m2", "m3"])
    assert {k: v.id for k, v in latest.items()} == {"m1": newer, "m2": m2}
    assert len(list_submissions(conn, quarter="FY2026-Q3", scope="m1")) == 2  # the first is kept


def test_append_joins_an_open_transaction_and_rolls_back_with_it(conn):
    conn.execute("BEGIN")
    append_submission(conn, submission())
    conn.execute("ROLLBACK")
    assert list_submissions(conn) == []


def test_works_on_a_default_python_connection(tmp_path):
    path = tmp_path / "s.db"
    connection = sqlite3.connect(path)
    connection.executescript(SUBMISSION_DDL)
    sub_id = append_submission(connection, submission())
    connection.close()
    again = sqlite3.connect(path)
    assert get_submission(again, sub_id).scope == "m1"
    again.close()


def test_damaged_payload_is_reported(conn):
    conn.execute(
        "INSERT INTO submission (quarter, scope, author, created_at, payload) "
        "VALUES ('Q', 's', 'a', 't', '{}')"
    )
    with pytest.raises(SubmissionStoreError, match="submission 1 in the store is damaged"):
        list_submissions(conn)


def test_drafts_save_resume_and_delete(conn):
    draft = Draft(
        quarter="FY2026-Q3",
        scope="m1",
        author="alice",
        updated_at=NOW,
        currency="CNY",
        lines=(
            line("b", ForecastCategory.COMMIT, "1", reviewed=True),
            line("a", ForecastCategory.PIPELINE, "2"),
        ),
        position=DraftPosition(pipeline_id="nb", stage_id="proposal", opportunity_id="b"),
    )
    assert load_draft(conn, "FY2026-Q3", "m1", "alice") is None
    save_draft(conn, draft)
    assert load_draft(conn, "FY2026-Q3", "m1", "alice") == draft
    moved = draft.model_copy(
        update={"position": DraftPosition(opportunity_id="a"), "updated_at": NOW + timedelta(1)}
    )
    save_draft(conn, moved)
    assert load_draft(conn, "FY2026-Q3", "m1", "alice") == moved
    assert load_draft(conn, "FY2026-Q3", "m1", "bob") is None
    assert moved.reviewed == 1
    assert delete_draft(conn, "FY2026-Q3", "m1", "alice") is True
    assert delete_draft(conn, "FY2026-Q3", "m1", "alice") is False
    assert load_draft(conn, "FY2026-Q3", "m1", "alice") is None


# --------------------------------------------------------------------------- from a roll-up, and up the tree

OWNERS = [
    Owner(id="vp", name="VP"),
    Owner(id="m1", name="M One", manager_id="vp"),
    Owner(id="m2", name="M Two", manager_id="vp"),
    Owner(id="m3", name="M Three", manager_id="vp"),
    Owner(id="r1", name="R One", manager_id="m1"),
    Owner(id="r3", name="R Three", manager_id="m3"),
    Owner(id="r4", name="R Four", manager_id="m3"),
]
TREE = OrgTree(OWNERS)


def deal_snap(deal_id: str, stage: str, amount: str, close: date, currency: str = "CNY") -> DealSnapshot:
    won = stage == "won"
    deal = Opportunity(
        id=deal_id,
        name=deal_id,
        owner_id="r1",
        pipeline_id="nb",
        stage_id=stage,
        amount=Decimal(amount),
        currency=currency,
        close_date=close,
        is_closed=won,
        is_won=won,
        closed_at=datetime(2026, 7, 20, tzinfo=UTC) if won else None,
    )
    return DealSnapshot(as_of=date(2026, 8, 10), deal=deal, stage_entered_at=datetime(2026, 7, 1, tzinfo=UTC))


def test_make_submission_from_a_rollup():
    config = ForecastConfig(
        fx_rates=(FxRate(currency="USD", valid_from=date(2026, 1, 1), rate=Decimal("7.1")),)
    )
    cal_q3 = FiscalCalendar().quarter(2026, 3)
    snaps = [
        deal_snap("w", "won", "500", date(2026, 7, 20)),
        deal_snap("n", "negotiate", "100", date(2026, 9, 1), currency="USD"),
        deal_snap("p", "qualify", "300", date(2026, 9, 9)),
        deal_snap("later", "qualify", "300", date(2026, 12, 9)),
    ]
    r = rollup(
        snaps,
        cal_q3,
        as_of=date(2026, 8, 10),
        pipelines=[PIPELINE],
        tree=TREE,
        config=config,
        scope="m1",
        probabilities={"n": 0.5, "p": 0.1, "later": 0.01},
    )
    lines = lines_from_rollup(r, config)
    assert [(x.opportunity_id, x.category, x.fx_rate) for x in lines] == [
        ("n", ForecastCategory.COMMIT, Decimal("7.1")),
        ("p", ForecastCategory.PIPELINE, Decimal(1)),
        ("w", ForecastCategory.CLOSED, Decimal(1)),
    ]
    called = [
        x.model_copy(update={"category": ForecastCategory.COMMIT}) if x.opportunity_id == "p" else x
        for x in lines
    ]
    sub = make_submission(r, called, author="alice", created_at=NOW, model_version="baseline")
    assert sub.totals == CategoryAmounts(closed=Decimal(500), commit=Decimal("1010.00"))
    assert sub.manager_number == Decimal("1510.00") and sub.scope == "m1"
    assert sub.model is not None and sub.model.expected == r.range.expected  # type: ignore[union-attr]
    assert sub.data_fingerprint == data_fingerprint(r.quarter_deals)
    assert len(sub.data_fingerprint) == 32
    moved = [
        s.model_copy(update={"deal": s.deal.model_copy(update={"amount": Decimal(301)})})
        if s.deal.id == "p"
        else s
        for s in snaps
    ]
    r2 = rollup(
        moved, cal_q3, as_of=date(2026, 8, 10), pipelines=[PIPELINE], tree=TREE, config=config, scope="m1"
    )
    assert data_fingerprint(r2.quarter_deals) != sub.data_fingerprint


def test_rollup_of_submissions_keeps_every_original_number():
    subs = {
        "m1": submission(scope="m1", number="1000", reason="r"),
        "r3": submission(scope="r3", number="300", reason="r"),
        "vp": submission(scope="vp", number="5000", reason="r"),
    }
    stored = {k: v.model_copy(update={"id": i}) for i, (k, v) in enumerate(subs.items(), start=1)}
    up = rollup_submissions(TREE, "vp", "FY2026-Q3", stored)
    assert [(r.owner_id, r.number, r.own, r.missing) for r in up.rows] == [
        ("m1", Decimal(1000), True, ()),
        ("m3", Decimal(300), False, ("r4",)),  # (children come in name order: M One, M Three, M Two)
        ("m2", Decimal(0), False, ("m2",)),
    ]
    assert up.total == Decimal(1300)
    assert up.own_submission is stored["vp"]  # beside the sum, never in it
    assert up.rows[1].submissions[0].id == 2 and up.missing == ["r4", "m2"]
    with pytest.raises(ValueError, match="submissions for FY2026-Q4 given to a roll-up of FY2026-Q3"):
        rollup_submissions(TREE, "vp", "FY2026-Q3", {"m1": submission(quarter="FY2026-Q4")})
    with pytest.raises(KeyError, match="'zz' is not a known owner"):
        rollup_submissions(TREE, "zz", "FY2026-Q3", {})
