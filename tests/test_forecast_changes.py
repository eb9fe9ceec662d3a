"""What changed: the waterfall balances to the cent and puts every deal in the right bucket."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cockpit.forecast.changes import Bucket, changes, changes_since, default_since
from cockpit.forecast.config import ForecastConfig, FxRate
from cockpit.forecast.deals import stage_index
from cockpit.forecast.rollup import rollup
from cockpit.models import (
    DealHistory,
    FiscalCalendar,
    ForecastCategory,
    Opportunity,
    OrgTree,
    Owner,
    StageChange,
    complete_history,
    end_of_day,
    snapshot_of,
)
from tests.factories import PIPELINE, demo_forecast_config
from tests.factories import waterfall_summary as summary

UTC = UTC
CAL = FiscalCalendar()
Q3 = CAL.quarter(2026, 3)
STAGES = stage_index([PIPELINE])
CONFIG = ForecastConfig(
    reporting_currency="CNY",
    fx_rates=(
        FxRate(currency="USD", valid_from=date(2026, 1, 1), rate=Decimal("7.10")),
        FxRate(currency="USD", valid_from=date(2026, 8, 5), rate=Decimal("6.95")),
    ),
)
A, B = date(2026, 8, 1), date(2026, 8, 8)
TREE = OrgTree(
    [
        Owner(id="m1", name="M1"),
        Owner(id="m2", name="M2"),
        Owner(id="r1", name="R1", manager_id="m1"),
        Owner(id="r2", name="R2", manager_id="m2"),
    ]
)
TEAM = {"m1", "r1"}
OPEN = ["qualify", "proposal", "negotiate"]


def history(
    deal_id: str,
    rows: list[tuple[date, str, str, date | None, ForecastCategory | None]],
    *,
    owner: str = "r1",
    currency: str = "CNY",
) -> DealHistory:
    """rows = [(day, stage, amount, close date, category)], oldest first."""
    changes = [
        StageChange(
            opportunity_id=deal_id,
            changed_at=datetime(d.year, d.month, d.day, 9, tzinfo=UTC) + timedelta(minutes=i),
            stage_id=s,
            amount=Decimal(a),
            close_date=c,
            forecast_category=cat,
        )
        for i, (d, s, a, c, cat) in enumerate(rows)
    ]
    last = changes[-1]
    closed = last.stage_id in {"won", "lost"}
    deal = Opportunity(
        id=deal_id,
        name=f"Deal {deal_id}",
        owner_id=owner,
        pipeline_id="nb",
        stage_id=last.stage_id,
        amount=last.amount,
        currency=currency,
        close_date=last.close_date,
        created_at=changes[0].changed_at,
        is_closed=closed,
        is_won=last.stage_id == "won",
        closed_at=last.changed_at if closed else None,
    )
    return DealHistory(deal=deal, changes=tuple(complete_history(deal, changes)))


def waterfall(histories: list[DealHistory], start: date = A, end: date = B, owner_ids=None):
    before = [s for h in histories if (s := snapshot_of(h, start, STAGES)) is not None]
    after = [s for h in histories if (s := snapshot_of(h, end, STAGES)) is not None]
    return changes(before, after, Q3, start=start, end=end, stages=STAGES, config=CONFIG, owner_ids=owner_ids)


def waterfall_since(
    histories: list[DealHistory],
    start: date,
    end: date,
    scope: str | None,
    *,
    told: bool = False,
    every_start: bool = False,
):
    """The same through a roll-up of the end date and `changes_since`. `told`: say which deals have
    history rows in the window (as the store does) and give only those deals' start snapshots
    (`every_start`: give them all; the others must be taken from the roll-up all the same)."""
    before = [s for h in histories if (s := snapshot_of(h, start, STAGES)) is not None]
    after = [s for h in histories if (s := snapshot_of(h, end, STAGES)) is not None]
    r = rollup(after, Q3, as_of=end, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope=scope)
    if not told:
        return changes_since(r, before, start=start, stages=STAGES, config=CONFIG)
    lo, hi = end_of_day(start), end_of_day(end)
    moved = {h.deal.id for h in histories if any(lo <= c.changed_at < hi for c in h.changes)}
    if not every_start:
        before = [s for s in before if s.deal.id in moved]
    return changes_since(r, before, start=start, stages=STAGES, config=CONFIG, moved=moved)


d = date
SEP30, OCT15 = d(2026, 9, 30), d(2026, 10, 15)
SCENARIO = [
    history("steady", [(d(2026, 7, 1), "proposal", "1000", SEP30, None)]),
    history("new", [(d(2026, 8, 4), "qualify", "2000", SEP30, None)]),
    history(
        "new-won",
        [
            (d(2026, 8, 3), "negotiate", "300", SEP30, None),
            (d(2026, 8, 6), "won", "300", d(2026, 8, 6), None),
        ],
    ),
    history(
        "pulled",
        [(d(2026, 7, 1), "proposal", "4000", OCT15, None), (d(2026, 8, 5), "proposal", "4000", SEP30, None)],
    ),
    history(
        "won",
        [
            (d(2026, 7, 1), "negotiate", "5000", SEP30, None),
            (d(2026, 8, 7), "won", "5500", d(2026, 8, 7), None),
        ],
    ),
    history(
        "lost",
        [(d(2026, 7, 1), "qualify", "6000", SEP30, None), (d(2026, 8, 2), "lost", "0", d(2026, 8, 2), None)],
    ),
    history(
        "pushed",
        [(d(2026, 7, 1), "proposal", "7000", SEP30, None), (d(2026, 8, 3), "proposal", "7000", OCT15, None)],
    ),
    history(
        "up",
        [
            (d(2026, 7, 1), "qualify", "800", SEP30, ForecastCategory.PIPELINE),
            (d(2026, 8, 3), "proposal", "900", SEP30, ForecastCategory.COMMIT),
        ],
    ),
    history(
        "down",
        [(d(2026, 7, 1), "negotiate", "100", SEP30, None), (d(2026, 8, 3), "proposal", "60", SEP30, None)],
        currency="USD",
    ),
    history(
        "reopened",
        [(d(2026, 7, 1), "lost", "50", d(2026, 7, 20), None), (d(2026, 8, 3), "qualify", "50", SEP30, None)],
    ),
    history("later", [(d(2026, 7, 1), "qualify", "999", OCT15, None)]),
    history("other-team", [(d(2026, 7, 1), "qualify", "123", SEP30, None)], owner="r9"),
]


def test_waterfall_buckets_and_balance():
    w = waterfall(SCENARIO)
    got = {b: sorted(m.opportunity_id for m in total.movements) for b, total in w.buckets.items()}
    assert got == {
        Bucket.NEW: ["new", "new-won"],
        Bucket.PULLED_IN: ["pulled"],
        Bucket.OTHER_IN: ["reopened"],
        Bucket.AMOUNT_UP: ["up", "won"],
        Bucket.AMOUNT_DOWN: ["down"],
        Bucket.WON: ["new-won", "won"],
        Bucket.LOST: ["lost"],
        Bucket.PUSHED_OUT: ["pushed"],
        Bucket.OTHER_OUT: [],
    }
    amounts = {b: total.amount for b, total in w.buckets.items()}
    # every amount at the end date's rate (6.95 for USD), so the FX move is not a deal change
    assert w.start_total == Decimal("1000") + Decimal("5000") + Decimal("6000") + Decimal("7000") + Decimal(
        "800"
    ) + Decimal("695.00") + Decimal("123")
    assert amounts[Bucket.AMOUNT_DOWN] == Decimal("417.00") - Decimal("695.00")
    assert amounts[Bucket.AMOUNT_UP] == Decimal("100") + Decimal("500")
    assert amounts[Bucket.WON] == -(Decimal("300") + Decimal("5500"))
    assert amounts[Bucket.LOST] == Decimal("-6000")  # at its value before it was lost, not the 0 it closed at
    assert amounts[Bucket.NEW] == Decimal("2300")
    assert w.balances
    assert w.start_total + sum(amounts.values(), Decimal(0)) == w.end_total
    assert [(m.opportunity_id, m.before, m.after) for m in w.category_moves] == [
        ("down", ForecastCategory.COMMIT, ForecastCategory.BEST_CASE),
        ("up", ForecastCategory.PIPELINE, ForecastCategory.COMMIT),
    ]
    assert sum(w.category_net.values(), Decimal(0)) == 0
    assert [m.opportunity_id for m in w.stage_forward] == ["up"]
    assert [m.opportunity_id for m in w.stage_backward] == ["down"]
    assert w.steps()[0][1] == w.start_total and w.steps()[-1][1] == w.end_total


def test_waterfall_scope_and_removed_deals():
    scoped = waterfall(SCENARIO, owner_ids={"r1"})
    assert all(m.opportunity_id != "other-team" for b in scoped.buckets.values() for m in b.movements)
    assert scoped.balances
    before = [s for h in SCENARIO if (s := snapshot_of(h, A, STAGES)) is not None]
    after = [
        s for s in (snapshot_of(h, B, STAGES) for h in SCENARIO) if s is not None and s.deal.id != "steady"
    ]
    w = changes(before, after, Q3, start=A, end=B, stages=STAGES, config=CONFIG)
    assert [m.opportunity_id for m in w.buckets[Bucket.OTHER_OUT].movements] == ["steady"]
    assert w.balances


def test_past_due_deals_join_when_the_quarter_starts():
    late = history("late", [(d(2026, 5, 1), "proposal", "400", d(2026, 6, 1), None)])
    w = waterfall([late], start=d(2026, 6, 28), end=d(2026, 7, 2))
    assert w.start_total == 0 and w.end_total == Decimal("400")
    assert [m.opportunity_id for m in w.buckets[Bucket.PULLED_IN].movements] == ["late"]


def test_default_since():
    assert default_since(B) == d(2026, 8, 1)
    assert default_since(B, datetime(2026, 8, 3, 17, tzinfo=UTC)) == d(2026, 8, 3)
    assert default_since(B, datetime(2026, 8, 8, 17, tzinfo=UTC)) == d(2026, 8, 1)


# --------------------------------------------------------------------------- property: balances to the cent

STAGE_CHOICES = OPEN + ["won", "lost"]
step = st.tuples(
    st.integers(min_value=0, max_value=20),  # days after the previous row
    st.integers(min_value=0, max_value=len(STAGE_CHOICES) - 1),
    st.decimals(min_value=Decimal("0"), max_value=Decimal("99999.99"), places=2),
    st.integers(min_value=-40, max_value=120),  # close date offset from 2026-08-01
    st.sampled_from([None, *ForecastCategory]),
)


@st.composite
def histories(draw):
    out = []
    for n in range(draw(st.integers(min_value=1, max_value=12))):
        start = d(2026, 7, 1) + timedelta(days=draw(st.integers(min_value=0, max_value=45)))
        day = start
        rows = []
        for gap, stage_i, amount, close_offset, cat in draw(st.lists(step, min_size=1, max_size=6)):
            day = day + timedelta(days=gap)
            stage = STAGE_CHOICES[stage_i]
            close = d(2026, 8, 1) + timedelta(days=close_offset) if close_offset > -40 else None
            if stage in {"won", "lost"}:
                close = day
            rows.append((day, stage, str(amount), close, cat))
        out.append(
            history(
                f"h{n}",
                rows,
                owner=draw(st.sampled_from(["r1", "r2"])),
                currency=draw(st.sampled_from(["CNY", "USD"])),
            )
        )
    return out


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=40),
    st.booleans(),
)
def test_waterfall_balances_to_the_cent(hs, start_offset, length, scope):
    start = d(2026, 6, 25) + timedelta(days=start_offset)
    end = start + timedelta(days=length)
    w = waterfall(hs, start, end, owner_ids=TEAM if scope else None)
    total = sum((b.amount for b in w.buckets.values()), Decimal(0))
    assert w.start_total + total == w.end_total
    for bucket in w.buckets.values():
        assert bucket.amount == sum((m.amount for m in bucket.movements), Decimal(0))
        if bucket.bucket in {Bucket.NEW, Bucket.PULLED_IN, Bucket.OTHER_IN, Bucket.AMOUNT_UP}:
            assert all(m.amount >= 0 for m in bucket.movements)
        if bucket.bucket in {
            Bucket.WON,
            Bucket.LOST,
            Bucket.PUSHED_OUT,
            Bucket.OTHER_OUT,
            Bucket.AMOUNT_DOWN,
        }:
            assert all(m.amount <= 0 for m in bucket.movements)
    assert sum(w.category_net.values(), Decimal(0)) == 0
    # exiting buckets hold each deal at most once
    for b in (Bucket.LOST, Bucket.PUSHED_OUT, Bucket.OTHER_OUT, Bucket.WON):
        ids = [m.opportunity_id for m in w.buckets[b].movements]
        assert len(ids) == len(set(ids))
    # the fast paths through a roll-up give exactly the same waterfall
    team = "m1" if scope else None
    assert summary(waterfall_since(hs, start, end, team)) == summary(
        waterfall(hs, start, end, TEAM if scope else None)
    )
    assert summary(waterfall_since(hs, start, end, team, told=True)) == summary(
        waterfall(hs, start, end, TEAM if scope else None)
    )
    assert summary(waterfall_since(hs, start, end, team, told=True, every_start=True)) == summary(
        waterfall(hs, start, end, TEAM if scope else None)
    )


@settings(max_examples=100, deadline=None)
@given(histories(), st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=90), st.booleans())
def test_changes_since_matches_changes_across_the_quarters_edges(hs, start_offset, length, told):
    """Windows that start before the quarter, end after it, or both: past-due deals join the
    pipeline when the quarter starts and leave it when it ends, with the same terms."""
    start = d(2026, 6, 1) + timedelta(days=start_offset)
    end = start + timedelta(days=length)
    assert summary(waterfall_since(hs, start, end, None, told=told)) == summary(waterfall(hs, start, end))


def test_past_due_deals_leave_when_the_quarter_ends():
    hs = [
        history("past-due", [(d(2026, 6, 1), "proposal", "1000", d(2026, 6, 20), None)]),
        history("steady", [(d(2026, 7, 1), "proposal", "500", d(2026, 9, 1), None)]),
    ]
    start, end = Q3.end - timedelta(days=3), Q3.end + timedelta(days=4)
    w = waterfall_since(hs, start, end, None, told=True)
    assert (w.start_total, w.end_total) == (Decimal("1500.00"), Decimal("500.00"))
    assert [m.opportunity_id for m in w.buckets[Bucket.PUSHED_OUT].movements] == ["past-due"]
    assert summary(w) == summary(waterfall(hs, start, end))


# --------------------------------------------------------------------------- the store's moved deals


def test_store_moved_deals_give_the_full_waterfall(tmp_path):
    """`Store.changed_between` names every deal whose snapshot moved in the window, so the Changes
    view's reading (the end date's deals, and only the moved ones on the start date) gives the
    waterfall of both full snapshots: over windows inside, before and across the quarter, in scope."""
    from connectors.demo import DemoConnector
    from cockpit.store import Store

    as_of = date(2026, 11, 23)
    config = demo_forecast_config()
    with Store.open(tmp_path / "store.sqlite") as store:
        run = store.begin_sync("demo", None)
        for batch in DemoConnector(seed=3, size=600, as_of=as_of).generate():
            store.apply_batch(run, batch)
        store.finish_sync(run, "ok")
        pipelines, tree = store.pipelines(), OrgTree(store.owners())
        stages = stage_index(pipelines)
        histories = list(store.histories())
        q4 = CAL.quarter_of(as_of)
        manager = next(o for o in tree.owners if tree.is_manager(o) and o not in tree.roots)
        windows = [(as_of - timedelta(days=7), as_of, q4), (date(2026, 9, 20), as_of, q4),
                   (date(2026, 9, 20), date(2026, 10, 6), q4.previous()), (as_of, as_of, q4)]
        checked = 0
        for start, end, quarter in windows:
            for scope in (None, manager):
                members = None if scope is None else tree.subtree(scope)
                moved = store.changed_between(start, end, owner_ids=members)
                lo, hi = end_of_day(start), end_of_day(end)
                in_scope = [h for h in histories if members is None or h.deal.owner_id in members]
                assert moved == {h.deal.id for h in in_scope if any(lo <= c.changed_at < hi for c in h.changes)}, (start, end, scope)
                after = store.snapshot(end, owner_ids=members, closed_from=start)
                before = store.snapshot(start, open_only=False, ids=[s.deal.id for s in after if s.deal.id in moved])
                r = rollup(after, quarter, as_of=end, pipelines=pipelines, tree=tree, config=config, scope=scope)
                fast = changes_since(r, before, start=start, stages=stages, config=config, moved=moved)
                full = changes(
                    [s for h in in_scope if (s := snapshot_of(h, start, stages)) is not None],
                    [s for h in in_scope if (s := snapshot_of(h, end, stages)) is not None],
                    quarter, start=start, end=end, stages=stages, config=config,
                )
                assert summary(fast) == summary(full) and fast.balances
                checked += len(fast.buckets[Bucket.NEW].movements) + len(fast.stage_forward)
        assert checked > 20  # the windows saw real movement
