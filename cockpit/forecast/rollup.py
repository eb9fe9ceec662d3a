"""The quarter at a glance for one scope: totals per category, per pipeline, per owner, quota and the model.

Categories are disjoint: `closed` is what was won in the quarter, `commit`/`best_case`/`pipeline`/
`omitted` split the open deals in the quarter's pipeline (see `cockpit.forecast.deals` for which
deals count). The usual forecast lines are cumulative and derived: commit forecast = closed + commit,
best-case forecast = closed + commit + best case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import NamedTuple, cast

import numpy as np

from cockpit.forecast.config import CENT, ForecastConfig
from cockpit.forecast.deals import ForecastDeal, forecast_deals, stage_index
from cockpit.forecast.distribution import ForecastRange, forecast_range
from cockpit.forecast.runrate import RunRate
from cockpit.models import DealSnapshot, ForecastCategory, OrgTree, Pipeline, Quarter
from cockpit.models.trusted import gc_paused

ZERO = Decimal(0)
CLOSED = ForecastCategory.CLOSED


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
    def open_total(self) -> Decimal:
        """Every open deal in the quarter's pipeline, omitted ones included (what "what changed" tracks)."""
        return self.open_pipeline + self.omitted

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
    """Every deal in scope as assessed on as_of (closed ones too, for `changes_since`); see quarter_deals."""
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


class _Sums:
    """Category sums of one cell (an owner's deals in one pipeline); cells merge into every view."""

    __slots__ = ("sums", "weighted", "model", "scored", "count")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(ForecastCategory, ZERO)
        self.weighted = ZERO
        self.model = 0.0
        self.scored = False
        self.count = 0

    def merge(self, other: _Sums) -> _Sums:
        for category, value in other.sums.items():
            self.sums[category] += value
        self.weighted += other.weighted
        self.model += other.model
        self.scored = self.scored or other.scored
        self.count += other.count
        return self

    def totals(self) -> CategoryTotals:
        sums = self.sums
        return CategoryTotals(
            closed=sums[ForecastCategory.CLOSED],
            commit=sums[ForecastCategory.COMMIT],
            best_case=sums[ForecastCategory.BEST_CASE],
            pipeline=sums[ForecastCategory.PIPELINE],
            omitted=sums[ForecastCategory.OMITTED],
            weighted=self.weighted.quantize(CENT),
            model_open=Decimal(repr(self.model)).quantize(CENT) if self.scored else None,
            deals=self.count,
        )


class _Cells(NamedTuple):
    """The deals of a roll-up summed by cell, and the open scored deals' values for the range."""

    sums: dict[tuple[str, str] | None, _Sums]
    """Per cell key, in the order the cells first appear among the deals."""
    values: np.ndarray
    """Open deals with a model probability: value (float), in deal order."""
    probabilities: np.ndarray
    """Their model probabilities, in the same order."""
    unscored: int
    """Open deals without a model probability."""


def _sum_cells(deals: Iterable[ForecastDeal], by_cell: bool = True) -> _Cells:
    """Sum `deals` per cell, an (owner, pipeline) pair (`by_cell=False`: one cell for all): won in
    the quarter → closed, open in its pipeline → its category and the stage-weighted sum, open
    and scored → the model's expectation.

    One pass files each value in a list per (cell, category, CRM probability); each list is then
    added by `sum` and multiplied by its probability once. Decimal sums are exact, so the totals
    are those of adding deal by deal, at a fraction of the cost. The model's float sum runs per
    cell in deal order (`np.bincount` adds in input order), as the deal-by-deal sum did, so it is
    the same to the last bit.
    """
    index: dict[tuple[str, str] | None, int] = {}
    money: defaultdict[tuple[int, ForecastCategory, Decimal | None], list[Decimal]] = defaultdict(list)
    scored_cells: list[int] = []
    scored_values: list[float] = []
    scored_p: list[float] = []
    unscored = 0
    for deal, value, category, won, member, _, stage_p, p in deals:
        key = (deal.owner_id, deal.pipeline_id) if by_cell else None
        cell = index.get(key)
        if cell is None:
            cell = index[key] = len(index)
        if won:
            money[cell, CLOSED, None].append(value)
            continue
        if p is not None:
            scored_cells.append(cell)
            scored_values.append(float(value))
            scored_p.append(p)
        elif not deal.is_closed:
            unscored += 1
        if member:
            money[cell, category, stage_p].append(value)
    sums = [_Sums() for _ in index]
    for (cell, category, stage_p), values in money.items():
        total, cell_sums = sum(values, ZERO), sums[cell]
        cell_sums.sums[category] += total
        cell_sums.count += len(values)
        if stage_p is not None:
            cell_sums.weighted += stage_p * total
    v = np.array(scored_values, dtype=float)
    p_arr = np.array(scored_p, dtype=float)
    if scored_cells:
        model = np.bincount(scored_cells, weights=p_arr * v, minlength=len(sums))
        for cell in set(scored_cells):
            sums[cell].model = float(model[cell])
            sums[cell].scored = True
    return _Cells(dict(zip(index, sums)), v, p_arr, unscored)


def _merged(parts: Iterable[_Sums]) -> CategoryTotals:
    out = _Sums()
    for part in parts:
        out.merge(part)
    return out.totals()


def totals_of(deals: Iterable[ForecastDeal]) -> CategoryTotals:
    """Sum deals into category totals (won in the quarter → closed; open in its pipeline → their category)."""
    return _merged(_sum_cells(deals, by_cell=False).sums.values())


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
    with gc_paused():
        return _rollup(snapshots, quarter, as_of, pipelines, tree, config, scope, probabilities, run_rate)


def _rollup(
    snapshots: Iterable[DealSnapshot],
    quarter: Quarter,
    as_of: date,
    pipelines: Sequence[Pipeline],
    tree: OrgTree,
    config: ForecastConfig,
    scope: str | None,
    probabilities: Mapping[str, float] | None,
    run_rate: RunRate | None,
) -> Rollup:
    members = _members(tree, scope)
    deals = forecast_deals(
        snapshots,
        quarter,
        as_of,
        stage_index(pipelines),
        config,
        owner_ids=None if scope is None else members,
        probabilities=probabilities,
        every_deal=True,
    )
    summed = _sum_cells(deals)
    cells = cast(dict[tuple[str, str], _Sums], summed.sums)
    totals = _merged(cells.values())
    by_pipeline = {
        p.id: _merged(c for (_, pid), c in cells.items() if pid == p.id)
        for p in pipelines
        if any(pid == p.id for _, pid in cells)
    }
    by_owner: dict[str, list[_Sums]] = {}
    for (owner, _), cell in cells.items():
        by_owner.setdefault(owner, []).append(cell)
    rows = _owner_rows(by_owner, tree, scope, quarter, config)
    fc_range = None
    if probabilities is not None:
        fc_range = forecast_range(totals.closed, summed.values, summed.probabilities, run_rate)
    return Rollup(
        quarter=quarter,
        as_of=as_of,
        currency=config.reporting_currency,
        scope=scope,
        members=tuple(members),
        totals=totals,
        by_pipeline=by_pipeline,
        rows=rows,
        quota=config.scope_quota(tree, scope, quarter.label) if scope else _all_quota(tree, config, quarter),
        deals=deals,
        range=fc_range,
        unscored=summed.unscored,
    )


def _members(tree: OrgTree, scope: str | None) -> list[str]:
    if scope is None:
        return list(tree.owners)
    try:
        return tree.subtree(scope)
    except KeyError:
        raise KeyError(
            f"scope {scope!r} is not a known owner; give an owner id or name from the org tree"
        ) from None


def _all_quota(tree: OrgTree, config: ForecastConfig, quarter: Quarter) -> Decimal | None:
    found = [config.scope_quota(tree, root, quarter.label) for root in tree.roots]
    known = [q for q in found if q is not None]
    return sum(known, ZERO) if known else None


def _owner_rows(
    by_owner: dict[str, list[_Sums]],
    tree: OrgTree,
    scope: str | None,
    quarter: Quarter,
    config: ForecastConfig,
) -> list[OwnerRow]:
    """Drill-down rows: the scope owner's own deals (if a manager), then each direct report's subtree."""
    rows = []
    if scope is not None:
        own = by_owner.get(scope, [])
        if not tree.is_manager(scope):
            return [_row(tree, scope, (scope,), own, config.quota(scope, quarter.label))]
        if own:
            rows.append(_row(tree, scope, (scope,), own, config.quota(scope, quarter.label), own_only=True))
    for child in tree.direct_reports(scope):
        members = tuple(tree.subtree(child))
        parts = [cell for m in members for cell in by_owner.get(m, [])]
        rows.append(_row(tree, child, members, parts, config.scope_quota(tree, child, quarter.label)))
    if scope is None:
        for owner in sorted(o for o in by_owner if o not in tree.owners):
            rows.append(_row(tree, owner, (owner,), by_owner[owner], config.quota(owner, quarter.label)))
    return rows


def _row(
    tree: OrgTree,
    owner_id: str,
    members: tuple[str, ...],
    parts: list[_Sums],
    quota: Decimal | None,
    own_only: bool = False,
) -> OwnerRow:
    owner = tree.owners.get(owner_id)
    return OwnerRow(
        owner_id=owner_id,
        name=owner.name if owner else owner_id,
        members=members,
        totals=_merged(parts),
        quota=quota,
        own_deals_only=own_only,
    )
