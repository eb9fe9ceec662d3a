"""Forecast engine: config and FX, which deals count, the roll-up, the range, the run-rate."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_UP, Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cockpit.forecast.config import ForecastConfig, FxError, FxRate, Quota
from cockpit.forecast.deals import forecast_deals, stage_index
from cockpit.forecast.distribution import GRID, forecast_range
from cockpit.forecast.rollup import rollup
from cockpit.forecast.runrate import DealOutcome, RunRate, learn_run_rate, same_point
from cockpit.models import (
    DealSnapshot,
    FiscalCalendar,
    ForecastCategory,
    Opportunity,
    OrgTree,
    Owner,
)
from tests.factories import PIPELINE

UTC = UTC
CAL = FiscalCalendar()
Q3 = CAL.quarter(2026, 3)
AS_OF = date(2026, 8, 10)
STAGES = stage_index([PIPELINE])
OWNERS = [
    Owner(id="vp", name="VP"),
    Owner(id="m1", name="Manager One", manager_id="vp"),
    Owner(id="m2", name="Manager Two", manager_id="vp"),
    Owner(id="r1", name="Rep One", manager_id="m1"),
    Owner(id="r2", name="Rep Two", manager_id="m1"),
    Owner(id="r3", name="Rep Three", manager_id="m2"),
]
TREE = OrgTree(OWNERS)
CONFIG = ForecastConfig(
    reporting_currency="CNY",
    fx_rates=(
        FxRate(currency="USD", valid_from=date(2026, 1, 1), rate=Decimal("7.00")),
        FxRate(currency="USD", valid_from=date(2026, 8, 1), rate=Decimal("7.20")),
    ),
    quotas=(
        Quota(owner_id="m1", quarter="FY2026-Q3", amount=Decimal("500000")),
        Quota(owner_id="r3", quarter="FY2026-Q3", amount=Decimal("100000")),
        Quota(owner_id="m2", quarter="FY2026-Q3", amount=Decimal("150000")),
    ),
)


def snap(
    deal_id: str,
    stage: str,
    amount: str,
    close: date | None,
    *,
    owner: str = "r1",
    currency: str = "CNY",
    category: ForecastCategory | None = None,
    probability: str | None = None,
    as_of: date = AS_OF,
    entered: date = date(2026, 7, 1),
) -> DealSnapshot:
    closed = stage in {"won", "lost"}
    deal = Opportunity(
        id=deal_id,
        name=f"Deal {deal_id}",
        owner_id=owner,
        pipeline_id="nb",
        stage_id=stage,
        amount=Decimal(amount),
        currency=currency,
        close_date=close,
        created_at=datetime(2026, 6, 1, tzinfo=UTC),
        forecast_category=category,
        is_closed=closed,
        is_won=stage == "won",
        closed_at=datetime.combine(close or entered, datetime.min.time(), UTC) if closed else None,
        probability=Decimal(probability) if probability else None,
    )
    return DealSnapshot(
        as_of=as_of, deal=deal, stage_entered_at=datetime.combine(entered, datetime.min.time(), UTC)
    )


def pipeline_snaps() -> list[DealSnapshot]:
    return [
        snap("won-in", "won", "40000", date(2026, 7, 20)),
        snap("won-before", "won", "99999", date(2026, 6, 20)),
        snap("lost", "lost", "50000", date(2026, 7, 25)),
        snap("commit", "negotiate", "100000", date(2026, 9, 1)),
        snap("best", "proposal", "1000", date(2026, 9, 15), currency="USD"),
        snap(
            "called-up", "qualify", "30000", date(2026, 8, 30), category=ForecastCategory.COMMIT, owner="r2"
        ),
        snap("omit", "proposal", "20000", date(2026, 9, 2), category=ForecastCategory.OMITTED, owner="r2"),
        snap("past-due", "qualify", "10000", date(2026, 6, 15), owner="r3"),
        snap("next-q", "negotiate", "70000", date(2026, 10, 5), owner="r3"),
        snap("no-date", "qualify", "5000", None, owner="r3"),
        snap("m1-own", "proposal", "8000", date(2026, 9, 30), owner="m1"),
    ]


# --------------------------------------------------------------------------- config and FX


def test_fx_uses_latest_rate_on_or_before_the_day():
    assert CONFIG.fx(date(2026, 7, 31))(Decimal("10"), "USD") == Decimal("70.00")
    assert CONFIG.fx(date(2026, 8, 1))(Decimal("10"), "USD") == Decimal("72.00")
    assert CONFIG.fx(date(2026, 8, 1))(Decimal("10.005"), "CNY") == Decimal("10.00")  # half-even to the cent


def test_fx_errors_say_which_rate_is_missing():
    with pytest.raises(FxError, match="no EUR → CNY rate in config"):
        CONFIG.fx(AS_OF)(Decimal(1), "EUR")
    with pytest.raises(FxError, match="on or before 2025-12-31"):
        CONFIG.fx(date(2025, 12, 31))(Decimal(1), "USD")


def test_config_rejects_duplicates_and_bad_values():
    with pytest.raises(ValidationError, match="two rates for USD"):
        ForecastConfig(fx_rates=(FxRate(currency="USD", valid_from=date(2026, 1, 1), rate=Decimal(7)),) * 2)
    with pytest.raises(ValidationError, match="two quotas for owner 'a'"):
        ForecastConfig(quotas=(Quota(owner_id="a", quarter="FY2026-Q1", amount=Decimal(1)),) * 2)
    with pytest.raises(ValidationError):
        FxRate(currency="usd", valid_from=date(2026, 1, 1), rate=Decimal(7))
    with pytest.raises(ValidationError):
        FxRate(currency="USD", valid_from=date(2026, 1, 1), rate=Decimal(0))


def test_category_rules():
    cfg = CONFIG.model_copy(update={"category_overrides": {"qualify": ForecastCategory.BEST_CASE}})
    stage = STAGES["qualify"]
    plain = snap("x", "qualify", "1", date(2026, 9, 1)).deal
    assert CONFIG.category(plain, stage) is ForecastCategory.PIPELINE
    assert cfg.category(plain, stage) is ForecastCategory.BEST_CASE
    called = plain.model_copy(update={"forecast_category": ForecastCategory.OMITTED})
    assert cfg.category(called, stage) is ForecastCategory.OMITTED
    open_but_closed = plain.model_copy(update={"forecast_category": ForecastCategory.CLOSED})
    assert CONFIG.category(open_but_closed, stage) is ForecastCategory.COMMIT


# --------------------------------------------------------------------------- which deals count


def test_forecast_deals_membership():
    deals = {d.opportunity_id: d for d in forecast_deals(pipeline_snaps(), Q3, AS_OF, STAGES, CONFIG)}
    assert "won-before" not in deals and "lost" not in deals
    assert deals["won-in"].won and not deals["won-in"].in_quarter
    assert deals["commit"].in_quarter and not deals["commit"].past_due
    assert deals["past-due"].in_quarter and deals["past-due"].past_due  # last quarter's date, still open
    late = forecast_deals([snap("late", "qualify", "1", date(2026, 8, 1))], Q3, AS_OF, STAGES, CONFIG)[0]
    assert late.in_quarter and late.past_due
    assert not deals["next-q"].in_quarter and not deals["no-date"].in_quarter
    assert deals["best"].value == Decimal("7200.00")


def test_past_due_deals_count_only_in_the_current_quarter():
    q4 = Q3.next()
    deals = {d.opportunity_id: d for d in forecast_deals(pipeline_snaps(), q4, AS_OF, STAGES, CONFIG)}
    assert not deals["past-due"].in_quarter
    assert deals["next-q"].in_quarter


# --------------------------------------------------------------------------- roll-up


def test_rollup_totals_per_category():
    r = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG)
    t = r.totals
    assert t.closed == Decimal("40000")
    assert t.commit == Decimal("100000") + Decimal("30000")
    assert t.best_case == Decimal("7200.00") + Decimal("8000")
    assert t.pipeline == Decimal("10000")
    assert t.omitted == Decimal("20000")
    assert t.commit_forecast == Decimal("170000")
    assert t.open_pipeline == Decimal("155200.00")
    assert t.deals == 7
    expected_weighted = (
        Decimal("100000") * Decimal("0.8")
        + Decimal("7200") * Decimal("0.4")
        + Decimal("30000") * Decimal("0.1")
        + Decimal("20000") * Decimal("0.4")
        + Decimal("10000") * Decimal("0.1")
        + Decimal("8000") * Decimal("0.4")
    )
    assert t.weighted == expected_weighted
    assert t.model_open is None and r.range is None


def test_rollup_weighted_uses_the_deals_own_probability():
    snaps = [snap("a", "qualify", "1000", date(2026, 9, 1), probability="0.55")]
    r = rollup(snaps, Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG)
    assert r.totals.weighted == Decimal("550.00")


def test_rollup_pipelines_and_owner_rows_add_up():
    r = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="vp")
    assert list(r.by_pipeline) == ["nb"] and r.by_pipeline["nb"] == r.totals
    assert [row.owner_id for row in r.rows] == ["m1", "m2"]
    for category in ForecastCategory:
        assert sum((row.totals.of(category) for row in r.rows), Decimal(0)) == r.totals.of(category)
    m1 = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="m1")
    assert [(row.owner_id, row.own_deals_only) for row in m1.rows] == [
        ("m1", True),
        ("r1", False),
        ("r2", False),
    ]
    assert m1.totals.best_case == Decimal("15200.00")
    rep = rollup(
        pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="r3"
    )
    assert [row.owner_id for row in rep.rows] == ["r3"]
    assert rep.totals.pipeline == Decimal("10000")


def test_rollup_quota_attainment_coverage():
    m1 = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="m1")
    assert m1.quota == Decimal("500000")
    assert m1.attainment == Decimal("40000") / Decimal("500000")
    assert m1.coverage == m1.totals.open_pipeline / Decimal("460000")
    vp = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="vp")
    assert vp.quota == Decimal("650000")  # no VP quota: the managers' quotas add up (m2's own, not r3's)
    everyone = rollup(pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG)
    assert everyone.quota == Decimal("650000")
    none = rollup(
        pipeline_snaps(),
        Q3,
        as_of=AS_OF,
        pipelines=[PIPELINE],
        tree=TREE,
        config=ForecastConfig(fx_rates=CONFIG.fx_rates),
    )
    assert none.quota is None and none.attainment is None and none.coverage is None


def test_quota_lookup_follows_the_configs_own_quotas():
    """Quotas are looked up in an index; a copy with other quotas does not answer from the old one."""
    assert CONFIG.quota("m1", Q3.label) == Decimal("500000")
    assert CONFIG.quota("m1", "FY2030-Q1") is None and CONFIG.quota("nobody", Q3.label) is None
    other = CONFIG.model_copy(update={"quotas": (Quota(owner_id="r1", quarter=Q3.label, amount=Decimal(7)),)})
    assert other.quota("m1", Q3.label) is None and other.quota("r1", Q3.label) == Decimal(7)
    assert CONFIG.quota("m1", Q3.label) == Decimal("500000")
    assert other.model_dump()["quotas"] == ({"owner_id": "r1", "quarter": Q3.label, "amount": Decimal(7)},)


def test_rollup_unknown_scope_is_a_clear_error():
    with pytest.raises(KeyError, match="scope 'nobody' is not a known owner"):
        rollup(
            pipeline_snaps(), Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, scope="nobody"
        )


def test_rollup_model_view_covers_every_open_deal_and_the_run_rate():
    probs = {s.deal.id: 0.5 for s in pipeline_snaps() if not s.deal.is_closed}
    del probs["no-date"]
    rr = RunRate(expected=Decimal("1000"), variance=100.0)
    r = rollup(
        pipeline_snaps(),
        Q3,
        as_of=AS_OF,
        pipelines=[PIPELINE],
        tree=TREE,
        config=CONFIG,
        probabilities=probs,
        run_rate=rr,
    )
    open_values = [
        Decimal("100000"),
        Decimal("7200"),
        Decimal("30000"),
        Decimal("20000"),
        Decimal("10000"),
        Decimal("70000"),
        Decimal("8000"),
    ]
    assert r.totals.model_open == sum(open_values, Decimal(0)) / 2
    assert r.unscored == 1
    assert r.range is not None
    assert r.range.expected == Decimal("40000") + sum(open_values, Decimal(0)) / 2 + Decimal("1000")
    assert r.model_expectation == r.range.expected
    assert r.range.p10 <= r.range.p50 <= r.range.p90


deal_rows = st.lists(
    st.tuples(
        st.sampled_from(["qualify", "proposal", "negotiate", "won", "lost"]),
        st.decimals(min_value=Decimal("0"), max_value=Decimal("9999999.999"), places=3),
        st.integers(min_value=-30, max_value=150),  # close date from the quarter's start (deals were created a month before)
        st.sampled_from(["r1", "r2", "r3", "m1", "nobody"]),
        st.sampled_from(["CNY", "USD"]),
        st.sampled_from([None, *ForecastCategory]),
        st.sampled_from([None, "0.25", "0.5", "0.50", "0.333"]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
    ),
    max_size=40,
)


def reference_totals(deals) -> tuple:
    """Category sums added deal by deal, and the model's float sum per (owner, pipeline) cell in
    deal order, the cells then added in the order they first appear: how the roll-up used to sum."""
    closed, weighted, count = Decimal(0), Decimal(0), 0
    sums = dict.fromkeys(ForecastCategory, Decimal(0))
    cells: dict[tuple[str, str], list[float]] = {}
    for d in deals:
        cell = cells.setdefault((d.owner_id, d.pipeline_id), [])
        if d.won:
            closed += d.value
            count += 1
            continue
        if d.p_in_quarter is not None:
            cell.append(d.p_in_quarter * float(d.value))
        if d.in_quarter:
            sums[d.category] += d.value
            weighted += d.value * d.stage_probability
            count += 1
    model = 0.0
    for terms in cells.values():
        cell_sum = 0.0
        for term in terms:
            cell_sum += term
        model += cell_sum
    scored = any(cells.values())
    model_open = Decimal(repr(model)).quantize(Decimal("0.01")) if scored else None
    return closed, sums, weighted.quantize(Decimal("0.01")), model_open, count


@settings(max_examples=150, deadline=None)
@given(deal_rows)
def test_rollup_sums_exactly_what_adding_deal_by_deal_gives(rows):
    """The roll-up's grouped sums are the deal-by-deal sums to the cent (and its float model sum to the bit)."""
    snaps, probs = [], {}
    for n, (stage, amount, offset, owner, currency, category, probability, p) in enumerate(rows):
        close = Q3.start + timedelta(days=offset)
        snaps.append(
            snap(f"d{n}", stage, str(amount), close, owner=owner, currency=currency, category=category,
                 probability=probability)
        )
        if p is not None:
            probs[f"d{n}"] = p
    r = rollup(snaps, Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG, probabilities=probs)
    closed, sums, weighted, model_open, count = reference_totals(r.deals)
    t = r.totals
    assert (t.closed, t.weighted, t.model_open, t.deals) == (closed, weighted, model_open, count)
    for category in ForecastCategory:
        if category is not ForecastCategory.CLOSED:
            assert t.of(category) == sums[category]
            assert str(t.of(category)) == str(sums[category])  # the same exponent too
    open_scored = [d for d in r.deals if not d.deal.is_closed and d.p_in_quarter is not None]
    assert r.unscored == sum(1 for d in r.deals if not d.deal.is_closed) - len(open_scored)
    assert r.range is not None and r.range.deals == len(open_scored)
    assert r.range == forecast_range(
        t.closed, [d.value for d in open_scored], [d.p_in_quarter for d in open_scored]  # type: ignore[misc]
    )
    for row in r.rows:
        members = set(row.members)
        assert row.totals == rollup(
            [s for s in snaps if s.deal.owner_id in members], Q3, as_of=AS_OF, pipelines=[PIPELINE],
            tree=TREE, config=CONFIG, probabilities=probs,
        ).totals


def test_conversion_rounds_half_even_whatever_the_context():
    """Values are cent-rounded half-even even when the caller's decimal context rounds otherwise."""
    snaps = [snap("a", "qualify", "0.125", date(2026, 9, 1)), snap("b", "qualify", "0.0025", date(2026, 9, 1), currency="USD")]
    with localcontext() as ctx:
        ctx.rounding = ROUND_UP
        deals = forecast_deals(snaps, Q3, AS_OF, STAGES, CONFIG)
    assert [d.value for d in deals] == [Decimal("0.12"), Decimal("0.02")]  # 0.0025 × 7.20 = 0.018


def test_rollup_missing_fx_rate_is_reported():
    snaps = [snap("e", "qualify", "10", date(2026, 9, 1), currency="EUR")]
    with pytest.raises(FxError, match="EUR"):
        rollup(snaps, Q3, as_of=AS_OF, pipelines=[PIPELINE], tree=TREE, config=CONFIG)


# --------------------------------------------------------------------------- range


def outcomes(values: list[int], probs: list[float]) -> list[tuple[float, float]]:
    """Every (total, probability) of the deals won, by brute force."""
    out = []
    for picks in itertools.product([0, 1], repeat=len(values)):
        weight = 1.0
        for pick, p in zip(picks, probs):
            weight *= p if pick else 1 - p
        out.append((float(sum(v * k for v, k in zip(values, picks))), weight))
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=500_000), st.sampled_from([0.05, 0.3, 0.5, 0.77, 0.99])),
        min_size=1,
        max_size=9,
    )
)
def test_range_quantiles_are_exact_up_to_the_grid(deals):
    """Each quantile x satisfies P(X < x − tol) ≤ q ≤ P(X ≤ x + tol), tol = one grid step per deal."""
    values = [v for v, _ in deals]
    probs = [p for _, p in deals]
    got = forecast_range(Decimal(0), [Decimal(v) for v in values], probs)
    everything = outcomes(values, probs)
    tolerance = sum(values) * len(values) / GRID + 0.01
    for x, q in ((float(got.p10), 0.1), (float(got.p50), 0.5), (float(got.p90), 0.9)):
        below = sum(w for total, w in everything if total < x - tolerance)
        upto = sum(w for total, w in everything if total <= x + tolerance)
        assert below <= q + 1e-9 and upto >= q - 1e-9, (x, q, below, upto)


def test_range_of_many_deals_agrees_with_monte_carlo():
    rng = np.random.default_rng(3)
    values = np.round(rng.lognormal(10, 1.2, 3000), 2)
    probs = rng.uniform(0.02, 0.9, 3000)
    got = forecast_range(Decimal("5000"), [Decimal(str(v)) for v in values], probs)
    sims = (rng.random((4000, values.size)) < probs) @ values + 5000
    for value, q in ((got.p10, 10), (got.p50, 50), (got.p90, 90)):
        assert float(value) == pytest.approx(np.percentile(sims, q), rel=0.01)
    assert float(got.expected) == pytest.approx(5000 + float(values @ probs), abs=0.02)


def test_range_edges():
    sure = forecast_range(Decimal("10"), [Decimal("100"), Decimal("50")], [1.0, 1.0])
    assert (sure.p10, sure.p50, sure.p90, sure.expected) == (Decimal("160.00"),) * 3 + (Decimal("160.00"),)
    nothing = forecast_range(Decimal("10"), [Decimal("100")], [0.0])
    assert (nothing.p10, nothing.p90) == (Decimal("10.00"), Decimal("10.00"))
    empty = forecast_range(Decimal("7"), [], [])
    assert empty.p50 == Decimal("7.00") and empty.deals == 0
    with pytest.raises(ValueError, match="2 values but 1 probabilities"):
        forecast_range(Decimal(0), [Decimal(1), Decimal(2)], [0.5])
    with pytest.raises(ValueError, match="outside 0..1"):
        forecast_range(Decimal(0), [Decimal(1)], [1.5])


def test_run_rate_widens_and_lifts_the_range():
    values = [Decimal(10_000)] * 20
    probs = [0.5] * 20
    base = forecast_range(Decimal(0), values, probs)
    rr = RunRate(expected=Decimal("50000"), variance=20_000.0**2)
    more = forecast_range(Decimal(0), values, probs, rr)
    assert more.expected == base.expected + Decimal("50000")
    assert more.run_rate_expected == Decimal("50000.00")
    assert more.p90 - more.p10 > base.p90 - base.p10
    assert more.p50 > base.p50 + Decimal("40000")
    assert more.p10 >= Decimal(0)


def test_range_of_100k_deals():
    """At scale the range still adds up (its speed is measured in bench/bench_forecast.py)."""
    rng = random.Random(1)
    values = [Decimal(rng.randrange(1000, 500000)) for _ in range(100_000)]
    probs = [rng.random() for _ in range(100_000)]
    got = forecast_range(Decimal(0), values, probs, RunRate(expected=Decimal(10**6), variance=1e11))
    expected = sum(float(v) * p for v, p in zip(values, probs)) + 10**6
    assert abs(float(got.expected) - expected) < 1.0
    assert got.p10 < got.p50 < got.p90
    assert got.deals == 100_000


# --------------------------------------------------------------------------- run-rate


def outcome(
    deal_id: str,
    created: date,
    won: date | None,
    amount: str,
    *,
    owner: str = "r1",
    currency: str = "CNY",
    recorded: date | None = None,
) -> DealOutcome:
    won_at = datetime.combine(recorded or won, datetime.min.time(), UTC) if won else None
    return DealOutcome(
        deal_id,
        owner,
        "nb",
        datetime.combine(created, datetime.min.time(), UTC) + timedelta(hours=9),
        won_at,
        won,
        Decimal(amount),
        currency,
    )


def test_same_point_of_a_past_quarter():
    q2 = CAL.quarter(2026, 2)
    assert same_point(Q3, date(2026, 7, 10), q2) == date(2026, 4, 10)
    assert same_point(Q3, date(2026, 9, 30), q2) == date(2026, 6, 30)  # Q2 has 91 days, Q3 92


def test_run_rate_learns_from_deals_created_after_the_same_point():
    outcomes = [
        # Q2 2026, seen from 2026-04-10: two new deals won (one created before the point: not counted)
        outcome("a", date(2026, 4, 20), date(2026, 5, 1), "1000"),
        outcome("b", date(2026, 5, 2), date(2026, 6, 30), "3000"),
        outcome("c", date(2026, 4, 1), date(2026, 5, 1), "9999"),
        # Q1 2026, seen from 2026-01-10: one new deal won, one won in Q2 (not in Q1)
        outcome("d", date(2026, 2, 1), date(2026, 3, 1), "2000"),
        outcome("e", date(2026, 3, 1), date(2026, 4, 2), "7777"),
        # another owner
        outcome("f", date(2026, 5, 1), date(2026, 5, 5), "500", owner="r3"),
        # lost
        outcome("g", date(2026, 5, 1), None, "800"),
        # the CRM's first record: it was in use at both same points
        outcome("h", date(2025, 11, 3), None, "100"),
    ]
    cfg = CONFIG.model_copy(update={"run_rate_quarters": 2})
    rr = learn_run_rate(outcomes, Q3, date(2026, 7, 10), cfg, owner_ids={"r1", "r2"})
    assert rr.quarters == ("FY2026-Q2", "FY2026-Q1")
    assert rr.samples == (Decimal("4000"), Decimal("2000"))  # e: created before Apr 10, booked outside Q1
    assert rr.expected == Decimal("3000.00")
    spread = ((4000 - 3000) ** 2 + (2000 - 3000) ** 2) / 1
    poisson = ((1000**2 + 3000**2) + 2000**2) / 2
    assert rr.variance == pytest.approx(max(spread, poisson))
    everyone = learn_run_rate(outcomes, Q3, date(2026, 7, 10), cfg)
    assert everyone.samples[0] == Decimal("4500")


def test_run_rate_is_zero_at_quarter_end_and_without_history():
    outcomes = [outcome("a", date(2026, 4, 20), date(2026, 5, 1), "1000")]
    assert learn_run_rate(outcomes, Q3, Q3.last_day, CONFIG).expected == 0
    assert learn_run_rate(outcomes, CAL.quarter(2026, 2), date(2026, 4, 5), CONFIG).expected == 0


def test_run_rate_ignores_wins_recorded_after_as_of():
    late = outcome("a", date(2026, 4, 20), date(2026, 5, 1), "1000", recorded=date(2026, 7, 11))
    first = outcome("z", date(2026, 1, 5), None, "100")  # the CRM was in use before 2026-04-10
    cfg = CONFIG.model_copy(update={"run_rate_quarters": 1})
    assert learn_run_rate([first, late], Q3, date(2026, 7, 10), cfg).expected == 0
    assert learn_run_rate([first, late], Q3, date(2026, 7, 12), cfg).expected == Decimal("1000.00")
