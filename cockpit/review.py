"""The review walk: stages in order, deals in a stage, the manager's calls — pure state, no Textual.

The Review screen renders a `ReviewWalk` and turns keys into its methods; every call changes the
draft (a `Draft` of `SubmissionLine`s), which the service saves after each change so a dropped SSH
session loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import StrEnum

from cockpit.models import DealScore, ForecastCategory, Pipeline, Stage
from cockpit.models.submission import Draft, DraftPosition, SubmissionLine

OPEN_CALLS = (ForecastCategory.COMMIT, ForecastCategory.BEST_CASE, ForecastCategory.PIPELINE, ForecastCategory.OMITTED)
"""The calls a manager can make on an open deal."""

MODEL_COMMIT_AT = 0.70
"""In-quarter probability at or above which the model would call a deal commit."""
MODEL_BEST_CASE_AT = 0.40
"""... best case (below: pipeline)."""


def model_call(p_in_quarter: float | None) -> ForecastCategory | None:
    """The category the model's in-quarter probability suggests (None when the deal is not scored)."""
    if p_in_quarter is None:
        return None
    if p_in_quarter >= MODEL_COMMIT_AT:
        return ForecastCategory.COMMIT
    if p_in_quarter >= MODEL_BEST_CASE_AT:
        return ForecastCategory.BEST_CASE
    return ForecastCategory.PIPELINE


class ExceptionFilter(StrEnum):
    """Which deals the walk shows."""

    ALL = "all"
    FLAGGED = "flagged"
    DIFFERS = "differs"
    """The call (or the rep's category) differs from the model's."""
    CHANGED = "changed"
    """Changed since last week (stage, amount, close date or category)."""

    @property
    def label(self) -> str:
        return {
            "all": "all deals",
            "flagged": "flagged deals",
            "differs": "call ≠ model",
            "changed": "changed since last week",
        }[self.value]

    def next(self) -> ExceptionFilter:
        members = list(ExceptionFilter)
        return members[(members.index(self) + 1) % len(members)]


class SortOrder(StrEnum):
    AMOUNT = "amount"
    RISK = "risk"


@dataclass
class ReviewDeal:
    """One open deal of the quarter with everything the deal card shows."""

    id: str
    name: str
    account: str
    owner_id: str
    owner_name: str
    pipeline_id: str
    stage_id: str
    stage_name: str
    amount: Decimal
    """In the deal's currency."""
    currency: str
    value: Decimal
    """In the reporting currency."""
    fx_rate: Decimal
    close_date: date | None
    close_date_pushes: int
    rep_category: ForecastCategory
    crm_probability: float
    days_in_stage: int
    stage_median_days: float | None
    next_step: str | None = None
    next_step_date: date | None = None
    last_activity: date | None = None
    score: DealScore | None = None
    flags: tuple[str, ...] = ()
    """Risk and hygiene messages."""
    changed: tuple[str, ...] = ()
    """What changed since last week, in words."""
    timeline: tuple[tuple[date, str], ...] = ()
    """(day, stage name) of every stage entered."""

    @property
    def risk(self) -> float:
        """Sort key for "by risk": most money at stake first (value × (1 − model probability)), flags break ties."""
        p = self.score.p_in_quarter if self.score else self.crm_probability
        return float(self.value) * (1.0 - p) + len(self.flags)

    @property
    def model_category(self) -> ForecastCategory | None:
        return model_call(self.score.p_in_quarter if self.score else None)


@dataclass(frozen=True)
class StageProgress:
    stage: Stage
    deals: int
    reviewed: int
    value: Decimal


@dataclass
class ReviewWalk:
    """The state of one review call for a quarter and scope."""

    quarter: str
    scope: str
    author: str
    currency: str
    pipelines: Sequence[Pipeline]
    deals: dict[str, ReviewDeal]
    lines: dict[str, SubmissionLine] = field(default_factory=dict)
    """The draft's calls, by deal id (a deal without a line keeps the rep's category)."""
    pipeline_id: str = ""
    stage_id: str = ""
    deal_id: str | None = None
    filter: ExceptionFilter = ExceptionFilter.ALL
    sort: SortOrder = SortOrder.AMOUNT
    manager_number: Decimal | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.pipeline_id:
            self.pipeline_id = self._first_pipeline_with_deals()
        if not self.stage_id:
            self.stage_id = self._first_stage()
        if self.deal_id is None or self.deal_id not in self.deals:
            visible = self.visible_deals()
            self.deal_id = visible[0].id if visible else None

    # -- draft round trip ---------------------------------------------------------------------

    @classmethod
    def resume(cls, draft: Draft | None, **kwargs: object) -> ReviewWalk:
        """A walk from a saved draft (its calls and position), or a fresh one."""
        walk = cls(**kwargs)  # type: ignore[arg-type]
        if draft is None:
            return walk
        walk.lines = {line.opportunity_id: line for line in draft.lines if line.opportunity_id in walk.deals}
        walk.manager_number = draft.manager_number
        walk.reason = draft.reason
        pos = draft.position
        if pos and pos.pipeline_id in {p.id for p in walk.pipelines}:
            walk.pipeline_id = pos.pipeline_id
            if pos.stage_id in {s.id for s in walk.pipeline.stages}:
                walk.stage_id = pos.stage_id
            if pos.opportunity_id in walk.deals:
                walk.deal_id = pos.opportunity_id
        return walk

    def draft(self, now: datetime | None = None) -> Draft:
        return Draft(
            quarter=self.quarter,
            scope=self.scope,
            author=self.author,
            updated_at=now or datetime.now(timezone.utc),
            currency=self.currency,
            lines=tuple(self.lines.values()),
            position=DraftPosition(pipeline_id=self.pipeline_id, stage_id=self.stage_id, opportunity_id=self.deal_id),
            manager_number=self.manager_number,
            reason=self.reason,
        )

    # -- what is shown ------------------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        return next(p for p in self.pipelines if p.id == self.pipeline_id)

    @property
    def stage(self) -> Stage:
        return self.pipeline.stage(self.stage_id)

    @property
    def current(self) -> ReviewDeal | None:
        return self.deals.get(self.deal_id) if self.deal_id else None

    def call_of(self, deal: ReviewDeal) -> ForecastCategory:
        line = self.lines.get(deal.id)
        return line.category if line else deal.rep_category

    def is_reviewed(self, deal_id: str) -> bool:
        line = self.lines.get(deal_id)
        return bool(line and line.reviewed)

    def update_scores(self, scores: dict[str, DealScore]) -> None:
        """New model scores for the walk's deals (the calls made so far stay)."""
        for deal_id, deal in self.deals.items():
            deal.score = scores.get(deal_id)

    def line(self, deal_id: str) -> SubmissionLine | None:
        return self.lines.get(deal_id)

    def matches(self, deal: ReviewDeal) -> bool:
        match self.filter:
            case ExceptionFilter.FLAGGED:
                return bool(deal.flags)
            case ExceptionFilter.DIFFERS:
                model = deal.model_category
                return model is not None and model != self.call_of(deal)
            case ExceptionFilter.CHANGED:
                return bool(deal.changed)
        return True

    def stage_deals(self, stage_id: str | None = None) -> list[ReviewDeal]:
        stage_id = stage_id or self.stage_id
        return [d for d in self.deals.values() if d.pipeline_id == self.pipeline_id and d.stage_id == stage_id]

    def visible_deals(self, stage_id: str | None = None) -> list[ReviewDeal]:
        deals = [d for d in self.stage_deals(stage_id) if self.matches(d)]
        if self.sort is SortOrder.RISK:
            return sorted(deals, key=lambda d: (-d.risk, d.id))
        return sorted(deals, key=lambda d: (-d.value, d.id))

    def stages(self) -> list[StageProgress]:
        out = []
        for stage in self.pipeline.open_stages:
            deals = [d for d in self.stage_deals(stage.id) if self.matches(d)]
            out.append(
                StageProgress(
                    stage, len(deals), sum(1 for d in deals if self.is_reviewed(d.id)),
                    sum((d.value for d in deals), Decimal(0)),
                )
            )
        return out

    def progress(self) -> str:
        """"Proposal 3/6 · 34/57 deals reviewed"."""
        stages = [s for s in self.stages() if s.deals]
        position = next((n for n, s in enumerate(stages, 1) if s.stage.id == self.stage_id), 0)
        total = sum(s.deals for s in stages)
        done = sum(s.reviewed for s in stages)
        return f"{self.stage.name} {position}/{len(stages)} · {done}/{total} deals reviewed"

    # -- moving -------------------------------------------------------------------------------

    def go_to_deal(self, deal_id: str) -> None:
        deal = self.deals[deal_id]
        self.pipeline_id, self.stage_id, self.deal_id = deal.pipeline_id, deal.stage_id, deal.id

    def step_deal(self, delta: int) -> bool:
        """Next/previous deal in the stage; at either end, on into the next/previous stage."""
        visible = self.visible_deals()
        ids = [d.id for d in visible]
        if self.deal_id in ids:
            index = ids.index(self.deal_id) + delta
            if 0 <= index < len(ids):
                self.deal_id = ids[index]
                return True
        elif ids:
            self.deal_id = ids[0] if delta > 0 else ids[-1]
            return True
        return self.step_stage(delta, land_on_last=delta < 0)

    def step_stage(self, delta: int, *, land_on_last: bool = False) -> bool:
        """The next/previous stage that has deals to show. False at the end of the pipeline."""
        order = [s.stage.id for s in self.stages()]
        with_deals = {s.stage.id for s in self.stages() if s.deals}
        index = order.index(self.stage_id) if self.stage_id in order else -1
        index += delta
        while 0 <= index < len(order):
            if order[index] in with_deals:
                self.stage_id = order[index]
                visible = self.visible_deals()
                self.deal_id = (visible[-1] if land_on_last else visible[0]).id
                return True
            index += delta
        return False

    def set_stage(self, stage_id: str) -> None:
        self.stage_id = stage_id
        visible = self.visible_deals()
        self.deal_id = visible[0].id if visible else None

    def set_pipeline(self, pipeline_id: str) -> None:
        self.pipeline_id = pipeline_id
        self.set_stage(self._first_stage())

    def cycle_filter(self) -> None:
        self.filter = self.filter.next()
        self._keep_position()

    def toggle_sort(self) -> None:
        self.sort = SortOrder.RISK if self.sort is SortOrder.AMOUNT else SortOrder.AMOUNT

    # -- calls --------------------------------------------------------------------------------

    def _base_line(self, deal: ReviewDeal) -> SubmissionLine:
        existing = self.lines.get(deal.id)
        if existing is not None:
            return existing
        return SubmissionLine(
            opportunity_id=deal.id,
            name=deal.name,
            owner_id=deal.owner_id,
            pipeline_id=deal.pipeline_id,
            stage_id=deal.stage_id,
            amount=deal.amount,
            currency=deal.currency,
            fx_rate=deal.fx_rate,
            close_date=deal.close_date,
            category=deal.rep_category,
        )

    def _update(self, deal_id: str, **changes: object) -> SubmissionLine:
        deal = self.deals[deal_id]
        line = self._base_line(deal).model_copy(update=changes)
        line = SubmissionLine.model_validate(line.model_dump())
        self.lines[deal_id] = line
        return line

    def call(self, deal_id: str, category: ForecastCategory) -> SubmissionLine:
        if category not in OPEN_CALLS:
            raise ValueError(f"an open deal can be called {', '.join(c.label for c in OPEN_CALLS)}, not {category.label}")
        return self._update(deal_id, category=category)

    def override_amount(self, deal_id: str, amount: Decimal | None) -> SubmissionLine:
        if amount is not None and amount < 0:
            raise ValueError(f"amount override must not be negative (got {amount})")
        return self._update(deal_id, amount_override=amount)

    def override_close_date(self, deal_id: str, day: date | None) -> SubmissionLine:
        return self._update(deal_id, close_date_override=day)

    def note(self, deal_id: str, text: str) -> SubmissionLine:
        return self._update(deal_id, note=text.strip())

    def mark_reviewed(self, deal_id: str, reviewed: bool = True) -> SubmissionLine:
        return self._update(deal_id, reviewed=reviewed)

    # -- helpers ------------------------------------------------------------------------------

    def _first_pipeline_with_deals(self) -> str:
        counts = {p.id: 0 for p in self.pipelines}
        for deal in self.deals.values():
            counts[deal.pipeline_id] = counts.get(deal.pipeline_id, 0) + 1
        with_deals = [p.id for p in self.pipelines if counts.get(p.id)]
        return (with_deals or [p.id for p in self.pipelines] or [""])[0]

    def _first_stage(self) -> str:
        if not self.pipelines:
            return ""
        stages = self.pipeline.open_stages
        for stage in stages:
            if self.visible_deals(stage.id):
                return stage.id
        return stages[0].id if stages else ""

    def _keep_position(self) -> None:
        visible = self.visible_deals()
        if self.deal_id not in {d.id for d in visible}:
            if visible:
                self.deal_id = visible[0].id
            elif not self.step_stage(1) and not self.step_stage(-1):
                self.deal_id = None
