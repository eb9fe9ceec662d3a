"""Small hand-built CRM data for store, service and CLI tests (the demo generator has its own tests)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from cockpit.models import (
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Stage,
    StageChange,
    SyncBatch,
)

UTC = timezone.utc

PIPELINE = Pipeline(
    id="nb",
    name="New business",
    stages=(
        Stage(id="qualify", name="Qualify", order=0, probability=Decimal("0.1")),
        Stage(id="proposal", name="Proposal", order=1, probability=Decimal("0.4"), category=ForecastCategory.BEST_CASE),
        Stage(id="negotiate", name="Negotiate", order=2, probability=Decimal("0.8"), category=ForecastCategory.COMMIT),
        Stage(id="won", name="Won", order=3, probability=Decimal(1), category=ForecastCategory.CLOSED,
              is_closed=True, is_won=True),
        Stage(id="lost", name="Lost", order=4, probability=Decimal(0), category=ForecastCategory.OMITTED,
              is_closed=True),
    ),
)

OWNERS = [
    Owner(id="vp", name="Zhang Wei 张伟", team=None),
    Owner(id="m1", name="Li Na 李娜", manager_id="vp", team="Key accounts"),
    Owner(id="r1", name="Wang Lei 王磊", manager_id="m1", team="Key accounts"),
    Owner(id="r2", name="Alice Smith", manager_id="m1", team="Key accounts"),
]

OPEN_STAGES = ["qualify", "proposal", "negotiate"]


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def deal_with_history(
    deal_id: str,
    steps: list[tuple[date, str, Decimal | None, date | None]],
    *,
    owner: str = "r1",
    account: str = "上海云图科技",
    currency: str = "CNY",
) -> tuple[Opportunity, list[StageChange]]:
    """A deal whose history is `steps` = [(day, stage, amount, close_date), ...] (oldest first)."""
    changes = [
        StageChange(opportunity_id=deal_id, changed_at=at(d) + timedelta(minutes=i), stage_id=s, amount=a, close_date=c)
        for i, (d, s, a, c) in enumerate(steps)
    ]
    last = changes[-1]
    amount = next((a for _, _, a, _ in reversed(steps) if a is not None), Decimal(1000))
    close = next((c for _, _, _, c in reversed(steps) if c is not None), None)
    closed = last.stage_id in {"won", "lost"}
    opp = Opportunity(
        id=deal_id,
        name=f"Deal {deal_id}",
        account=account,
        owner_id=owner,
        pipeline_id="nb",
        stage_id=last.stage_id,
        amount=amount,
        currency=currency,
        close_date=close,
        created_at=changes[0].changed_at,
        modified_at=last.changed_at,
        is_closed=closed,
        is_won=last.stage_id == "won",
        closed_at=last.changed_at if closed else None,
        lead_source="marketing",
    )
    return opp, changes


def small_batch() -> SyncBatch:
    """Four deals with known histories around 2026-Q3/Q4."""
    d = date
    deals = [
        deal_with_history("a", [(d(2026, 7, 1), "qualify", Decimal(100000), d(2026, 9, 30)),
                                (d(2026, 8, 1), "proposal", None, None),
                                (d(2026, 9, 20), "proposal", None, d(2026, 11, 15)),
                                (d(2026, 10, 5), "negotiate", Decimal(120000), None)]),
        deal_with_history("b", [(d(2026, 6, 1), "qualify", Decimal(50000), d(2026, 8, 31)),
                                (d(2026, 8, 20), "won", None, d(2026, 8, 20))], owner="r2", currency="USD",
                          account="Acme Corp"),
        deal_with_history("c", [(d(2026, 9, 1), "proposal", Decimal(80000), d(2026, 12, 10)),
                                (d(2026, 10, 1), "qualify", None, None)], owner="r2"),
        deal_with_history("d", [(d(2026, 10, 2), "qualify", Decimal(30000), d(2026, 12, 20)),
                                (d(2026, 11, 2), "lost", None, d(2026, 11, 2))]),
    ]
    return SyncBatch(
        pipelines=[PIPELINE],
        owners=OWNERS,
        opportunities=[o for o, _ in deals],
        changes=[c for _, cs in deals for c in cs],
        cursor="1",
    )


def random_history(
    deal_id: str, start: date, moves: list[tuple[int, int, int, int]], *, reopen: bool = False
) -> tuple[Opportunity, list[StageChange]]:
    """A history built from hypothesis-drawn moves: (days after previous, stage index, amount k, close offset).

    The history ends at the first won or lost stage, unless `reopen`: then the deal may be reopened
    and closed again (its close dates are kept from falling before `start`).
    """
    stages = OPEN_STAGES + ["won", "lost"]
    steps = []
    day = start
    for gap, stage_index, amount_k, close_offset in moves:
        day = day + timedelta(days=gap)
        stage = stages[stage_index % len(stages)]
        if stage in {"won", "lost"}:
            steps.append((day, stage, Decimal(amount_k * 1000), day))
            if not reopen:
                break
            continue
        close = day + timedelta(days=close_offset)
        steps.append((day, stage, Decimal(amount_k * 1000), max(start, close) if reopen else close))
    return deal_with_history(deal_id, steps)


def demo_forecast_config():
    """The forecast config the app gives the demo CRM: its reporting currency and fixed rates."""
    from connectors._demo_fx import DEMO_REPORTING_CURRENCY, demo_fx_table

    from cockpit.forecast.config import ForecastConfig

    return ForecastConfig.model_validate({"reporting_currency": DEMO_REPORTING_CURRENCY, "fx_rates": demo_fx_table()})


def waterfall_summary(w):
    """A waterfall's totals and every movement, to compare two ways of computing it."""
    return (
        w.start_total,
        w.end_total,
        {b: (t.amount, [(m.opportunity_id, m.amount) for m in t.movements]) for b, t in w.buckets.items()},
        [(m.opportunity_id, m.before, m.after) for m in w.category_moves],
        [m.opportunity_id for m in w.stage_forward],
        [m.opportunity_id for m in w.stage_backward],
    )
