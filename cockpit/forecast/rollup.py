"""The quarter at a glance for one scope: totals per category, per pipeline, per owner, quota and the model.

Categories are disjoint: `closed` is what was won in the quarter, `commit`/`best_case`/`pipeline`/
`omitted` split the open deals in the quarter's pipeline (see `cockpit.forecast.deals` for which
deals count). The usual forecast lines are cumulative and derived: commit forecast = closed + commit,
best-case forecast = closed + commit + best case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from cockpit.forecast.config import ForecastConfig
from cockpit.forecast.deals import ForecastDeal, forecast_deals, stage_index
from cockpit.forecast.distribution import ForecastRange, forecast_range
from cockpit.forecast.runrate import RunRate
from cockpit.models import DealSnapshot, ForecastCategory, OrgTree, Pipeline, Quarter

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class CategoryTotals:
    """Money per category (reporting currency) plus the CRM's and the model's weighted views."""

    closed: Decimal = ZERO
    commit: Decimal = ZERO
    best_case: Decimal = ZERO
    pipeline: Decimal = ZERO
    omitted: Decimal = ZERO
    weighted: Decimal = ZERO
    """Stage-weighted open pipeline in the quarter: Σ CRM probability × value."""
    model_open: Decimal | None = None
    """Σ model in-quarter probability × value over every open deal in scope (None: no scores)."""
    deals: int = 0
    """Deals counted: won in the quarter plus open in its pipeline."""

    def of(self, category: ForecastCategory) -> Decimal:
        return {
            ForecastCategory.CLOSED: self.closed,
            ForecastCategory.COMMIT: self.commit,
            ForecastCategory.BEST_CASE: self.best_case,
            ForecastCategory.PIPELINE: self.pipeline,
            ForecastCategory.OMITTED: self.omitted,
        }[category]

    @property
    def commit_forecast(self) -> Decimal:
        """Closed won + commit: the default manager's number."""
        return self.closed + self.commit

    @property
    def best_case_forecast(self) -> Decimal:
        return self.closed + self.commit + self.best_case

    @property
    def open_pipeline(self) -> Decimal:
        """Open deals in the quarter except omitted ones."""
        return self.commit + self.best_case + self.pipeline

    @property
    def stage_weighted_forecast(self) -> Decimal:
        """Closed won + stage-weighted open pipeline (the CRM's naive forecast)."""
        return self.closed + self.weighted

    @property
    def model_expected(self) -> Decimal | None:
        """Closed won + the model's expectation over open deals (without the run-rate)."""
        return None if self.model_open is None else self.closed + self.model_open


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """One line of the drill-down: an owner's whole subtree (or a manager's own deals)."""

    owner_id: str
    name: str
    members: tuple[str, ...]
    """Owner ids whose deals the row sums."""
    totals: CategoryTotals
    quota: Decimal | None
    own_deals_only: bool = False
    """True for the manager's own deals line (not their team's)."""

    @property
    def attainment(self) -> Decimal | None:
        return attainment(self.totals, self.quota)

    @property
    def coverage(self) -> Decimal | None:
        return coverage(self.totals, self.quota)


@dataclass(frozen=True)
class Rollup:
    """The forecast of one quarter for one scope on one date."""

    quarter: Quarter
    as_of: date
    currency: str
    scope: str | None
    """Owner id at the top of the scope; None means everyone."""
    members: tuple[str, ...]
    totals: CategoryTotals
    by_pipeline: dict[str, CategoryTotals]
    rows: list[OwnerRow]
    quota: Decimal | None
    deals: list[ForecastDeal] = field(repr=False)
    """Every deal counted: won in the quarter and open (in its pipeline or not)."""
    range: ForecastRange | None = None
    """The model's range incl. the run-rate (None when no probabilities were given)."""
    unscored: int = 0
    """Open deals in scope without a model probability."""

    @property
    def attainment(self) -> Decimal | None:
        """Closed won ÷ quota."""
        return attainment(self.totals, self.quota)

    @property
    def coverage(self) -> Decimal | None:
        """Open pipeline ÷ remaining quota (quota − closed won); None when nothing remains."""
        return coverage(self.totals, self.quota)

    @property
    def weighted_pipeline(self) -> Decimal:
        return self.totals.weighted

    @property
    def model_expectation(self) -> Decimal | None:
        """The model's expected bookings incl. the run-rate (None without probabilities)."""
        return self.range.expected if self.range is not None else None

    @property
    def quarter_deals(self) -> list[ForecastDeal]:
        """Deals in the quarter's categories: won in it, or open in its pipeline."""
        return [d for d in self.deals if d.won or d.in_quarter]


def attainment(totals: CategoryTotals, quota: Decimal | None) -> Decimal | None:
    if not quota:
        return None
    return totals.closed / quota


def coverage(totals: CategoryTotals, quota: Decimal | None) -> Decimal | None:
    if quota is None:
        return None
    remaining = quota - totals.closed
    if remaining <= 0:
        return None
    return totals.open_pipeline / remaining


def totals_of(deals: Iterable[ForecastDeal]) -> CategoryTotals:
    """Sum deals into category totals."""
    sums = {c: ZERO for c in ForecastCategory}
    weighted = ZERO
    model = 0.0
    scored = False
    count = 0
    for deal in deals:
        if deal.won:
            sums[ForecastCategory.CLOSED] += deal.value
            count += 1
            continue
        if deal.p_in_quarter is not None:
            model += deal.p_in_quarter * float(deal.value)
            scored = True
        if not deal.in_quarter:
            continue
        sums[deal.category] += deal.value
        weighted += deal.value * deal.stage_probability
        count += 1
    return CategoryTotals(
        closed=sums[ForecastCategory.CLOSED],
        commit=sums[ForecastCategory.COMMIT],
        best_case=sums[ForecastCategory.BEST_CASE],
        pipeline=sums[ForecastCategory.PIPELINE],
        omitted=sums[ForecastCategory.OMITTED],
        weighted=weighted.quantize(Decimal("0.01")),
        model_open=Decimal(repr(model)).quantize(Decimal("0.01")) if scored else None,
        deals=count,
    )


def rollup(
    snapshots: Iterable[DealSnapshot],
    quarter: Quarter,
    *,
    as_of: date,
    pipelines: Sequence[Pipeline],
    tree: OrgTree,
    config: ForecastConfig,
    scope: str | None = None,
    probabilities: Mapping[str, float] | None = None,
    run_rate: RunRate | None = None,
) -> Rollup:
    """Roll up the deals of `scope` (an owner and everyone below them; None: everyone) for `quarter`.

    `snapshots` are the deals as they stood on `as_of` (any scope; others are ignored).
    `probabilities` are the model's in-quarter win probabilities by opportunity id; with them the
    roll-up also carries the model's range (plus `run_rate`, the bookings expected from deals not
    created yet, see `learn_run_rate`).
    """
    members = _members(tree, scope)
    deals = forecast_deals(
        snapshots,
        quarter,
        as_of,
        stage_index(pipelines),
        config,
        owner_ids=None if scope is None else members,
        probabilities=probabilities,
    )
    totals = totals_of(deals)
    grouped: dict[str, list[ForecastDeal]] = {}
    for deal in deals:
        grouped.setdefault(deal.pipeline_id, []).append(deal)
    by_pipeline = {p.id: totals_of(grouped[p.id]) for p in pipelines if p.id in grouped}
    rows = _owner_rows(deals, tree, scope, quarter, config)
    open_scored = [d for d in deals if not d.won and d.p_in_quarter is not None]
    unscored = sum(1 for d in deals if not d.won and d.p_in_quarter is None)
    fc_range = None
    if probabilities is not None:
        fc_range = forecast_range(
            totals.closed,
            [d.value for d in open_scored],
            [d.p_in_quarter for d in open_scored],  # type: ignore[misc]
            run_rate,
        )
    return Rollup(
        quarter=quarter,
        as_of=as_of,
        currency=config.reporting_currency,
        scope=scope,
        members=tuple(members),
        totals=totals,
        by_pipeline=by_pipeline,
        rows=rows,
        quota=config.scope_quota(scope, members, quarter.label) if scope else _all_quota(tree, config, quarter),
        deals=deals,
        range=fc_range,
        unscored=unscored,
    )


def _members(tree: OrgTree, scope: str | None) -> list[str]:
    if scope is None:
        return list(tree.owners)
    try:
        return tree.subtree(scope)
    except KeyError:
        raise KeyError(f"scope {scope!r} is not a known owner; give an owner id or name from the org tree") from None


def _all_quota(tree: OrgTree, config: ForecastConfig, quarter: Quarter) -> Decimal | None:
    found = [config.scope_quota(root, tree.subtree(root), quarter.label) for root in tree.roots]
    known = [q for q in found if q is not None]
    return sum(known, ZERO) if known else None


def _owner_rows(
    deals: list[ForecastDeal], tree: OrgTree, scope: str | None, quarter: Quarter, config: ForecastConfig
) -> list[OwnerRow]:
    """Drill-down rows: the scope owner's own deals (if a manager), then each direct report's subtree."""
    by_owner: dict[str, list[ForecastDeal]] = {}
    for deal in deals:
        by_owner.setdefault(deal.owner_id, []).append(deal)
    rows = []
    if scope is not None:
        if not tree.is_manager(scope):
            own = by_owner.get(scope, [])
            return [_row(tree, scope, (scope,), own, config.quota(scope, quarter.label), own_only=False)]
        own = by_owner.get(scope, [])
        if own:
            rows.append(_row(tree, scope, (scope,), own, config.quota(scope, quarter.label), own_only=True))
    for child in tree.direct_reports(scope):
        members = tuple(tree.subtree(child))
        sub = [d for m in members for d in by_owner.get(m, [])]
        rows.append(_row(tree, child, members, sub, config.scope_quota(child, members, quarter.label)))
    if scope is None:
        unknown = sorted(o for o in by_owner if o not in tree.owners)
        for owner in unknown:
            rows.append(_row(tree, owner, (owner,), by_owner[owner], config.quota(owner, quarter.label)))
    return rows


def _row(
    tree: OrgTree,
    owner_id: str,
    members: tuple[str, ...],
    deals: list[ForecastDeal],
    quota: Decimal | None,
    own_only: bool = False,
) -> OwnerRow:
    owner = tree.owners.get(owner_id)
    return OwnerRow(
        owner_id=owner_id,
        name=owner.name if owner else owner_id,
        members=members,
        totals=totals_of(deals),
        quota=quota,
        own_deals_only=own_only,
    )
