"""What changed between two dates: a waterfall from the quarter's open pipeline then to now.

The total is the quarter's **open pipeline** in scope (every open deal in the quarter's pipeline,
all categories including omitted; see `cockpit.forecast.deals`). Every deal moves it through exactly
one path, so `start + Σ buckets = end` holds to the cent:

| bucket      | sign | deals                                                                      |
|-------------|------|----------------------------------------------------------------------------|
| new         |  +   | did not exist at the start; in the pipeline at the end (or won by then)    |
| pulled_in   |  +   | existed but outside the quarter's pipeline (later/no close date); now in   |
| other_in    |  +   | closed at the start and reopened                                           |
| amount_up   |  +   | in the pipeline at the start and still in it (or won): value went up       |
| amount_down |  −   | … value went down                                                          |
| won         |  −   | won by the end, at the value it was won for                                |
| lost        |  −   | closed lost, at its value at the start                                     |
| pushed_out  |  −   | still open, close date moved out of the quarter (or cleared)               |
| other_out   |  −   | gone from the CRM or from the scope                                        |

A deal that enters and is won inside the window shows in both `new` (or `pulled_in`) and `won`, so
every win of the window is listed. Deals that enter and are lost inside it never were in the
quarter's pipeline on either date and are not shown. Category moves and stage moves do not change
the total: they are listed with each deal's value (and `category_net` shows how they moved money
between category totals, summing to zero). All values use the FX rates of the end date, so
exchange-rate moves never show up as deal changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import compress
from operator import attrgetter, itemgetter

from cockpit.forecast.config import ForecastConfig
from cockpit.forecast.deals import ForecastDeal, booking_date, forecast_deals, in_pipeline
from cockpit.forecast.rollup import Rollup
from cockpit.models import DealSnapshot, ForecastCategory, Opportunity, Quarter, Stage
from cockpit.models.trusted import gc_paused

ZERO = Decimal(0)


class Bucket(StrEnum):
    """A step of the waterfall, in display order."""

    NEW = "new"
    PULLED_IN = "pulled_in"
    OTHER_IN = "other_in"
    AMOUNT_UP = "amount_up"
    AMOUNT_DOWN = "amount_down"
    WON = "won"
    LOST = "lost"
    PUSHED_OUT = "pushed_out"
    OTHER_OUT = "other_out"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").capitalize()


@dataclass(frozen=True, slots=True)
class Movement:
    """One deal's contribution to one bucket (signed: + raises the pipeline, − lowers it)."""

    opportunity_id: str
    name: str
    owner_id: str
    amount: Decimal
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CategoryMove:
    """A deal whose category changed while it stayed in the quarter's pipeline (moves no money)."""

    opportunity_id: str
    name: str
    owner_id: str
    before: ForecastCategory
    after: ForecastCategory
    value: Decimal
    """Its value at the end."""


@dataclass(frozen=True, slots=True)
class StageMove:
    """A deal open on both dates whose stage changed (moves no money)."""

    opportunity_id: str
    name: str
    owner_id: str
    before: str
    after: str
    value: Decimal
    forward: bool


@dataclass
class BucketTotal:
    bucket: Bucket
    amount: Decimal = ZERO
    movements: list[Movement] = field(default_factory=list)

    def add(self, movement: Movement) -> None:
        self.amount += movement.amount
        self.movements.append(movement)


@dataclass
class Waterfall:
    """The quarter's open pipeline at `start` and at `end`, and every step between."""

    quarter: Quarter
    start: date
    end: date
    currency: str
    start_total: Decimal
    end_total: Decimal
    buckets: dict[Bucket, BucketTotal]
    category_moves: list[CategoryMove]
    stage_forward: list[StageMove]
    stage_backward: list[StageMove]

    @property
    def category_net(self) -> dict[ForecastCategory, Decimal]:
        """Net money each category gained (+) or lost (−) through category moves; sums to zero."""
        net = {c: ZERO for c in ForecastCategory}
        for move in self.category_moves:
            net[move.before] -= move.value
            net[move.after] += move.value
        return net

    @property
    def balances(self) -> bool:
        """start + Σ buckets == end, exactly."""
        return self.start_total + sum((b.amount for b in self.buckets.values()), ZERO) == self.end_total

    def steps(self) -> list[tuple[str, Decimal]]:
        """(label, amount) from the start total through each bucket to the end total."""
        rows = [(f"Open pipeline {self.start}", self.start_total)]
        rows += [(b.bucket.label, b.amount) for b in self.buckets.values()]
        rows.append((f"Open pipeline {self.end}", self.end_total))
        return rows


def default_since(end: date, last_submission_at: datetime | None = None) -> date:
    """The start of "what changed": the day of the last submission, else 7 days before `end`."""
    if last_submission_at is not None and last_submission_at.date() < end:
        return last_submission_at.date()
    return end - timedelta(days=7)


def changes(
    before: Iterable[DealSnapshot],
    after: Iterable[DealSnapshot],
    quarter: Quarter,
    *,
    start: date,
    end: date,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    owner_ids: Collection[str] | None = None,
) -> Waterfall:
    """The waterfall of `quarter`'s open pipeline from `start` (snapshots `before`) to `end` (`after`)."""
    if end < start:
        raise ValueError(f"changes: end {end} is before start {start}")
    fx = config.fx(end)
    old = forecast_deals(before, quarter, start, stages, config, owner_ids=owner_ids, fx=fx, every_deal=True)
    new = forecast_deals(after, quarter, end, stages, config, owner_ids=owner_ids, fx=fx, every_deal=True)
    return waterfall(
        old, new, quarter, start=start, end=end, stages=stages, currency=config.reporting_currency
    )


def changes_since(
    rollup: Rollup,
    before: Iterable[DealSnapshot],
    *,
    start: date,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    moved: Collection[str] | None = None,
) -> Waterfall:
    """The waterfall from `start` to the roll-up's as-of date, for the roll-up's scope and quarter.

    Gives the same result as `changes` but reuses the roll-up's assessment of the deals: a deal whose
    CRM fields did not move between the two dates and that sat in the quarter's pipeline on both is
    only added to both totals, one that sat outside it on both is left out, and only the others are
    assessed again as they stood on `start`.

    `moved`: when the caller knows which deals may have changed since `start` (the store does: the
    deals with a history row in between, `Store.changed_between`), every other deal of the roll-up is
    taken as it is in the roll-up, and `before` need only hold the snapshots of the `moved` deals
    that existed on `start`. Without it, each deal of `before` is compared with the roll-up's.
    """
    if rollup.as_of < start:
        raise ValueError(f"changes: end {rollup.as_of} is before start {start}")
    with gc_paused():
        return _changes_since(rollup, before, start, stages, config, moved)


def _changes_since(
    rollup: Rollup,
    before: Iterable[DealSnapshot],
    start: date,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    moved: Collection[str] | None,
) -> Waterfall:
    quarter, deals = rollup.quarter, rollup.deals
    if moved is None:
        candidates: Iterable[ForecastDeal] = deals
    else:  # only these can differ from start; every other deal stood then as it stands now
        changed = moved if isinstance(moved, (set, frozenset, dict)) else set(moved)
        candidates = compress(deals, map(changed.__contains__, map(_deal_id, deals)))
    differ = {d.deal.id: d for d in candidates}  # end assessments that may differ from the start's
    again: list[DealSnapshot] = []  # deals to assess as they stood on start
    for snap in before:
        # Whether a deal moved is one C-level comparison of its terms (itemgetter tuples) with the
        # roll-up's, instead of eight attribute pairs compared in Python. Lookups go by id alone:
        # hashing the terms would hash every amount, and a Decimal's first hash costs more than the
        # comparison.
        fields = snap.deal.__dict__
        key = fields["id"]
        now = differ.get(key)
        if now is None:  # not in the roll-up (deleted since, or out of scope), or known not to have moved
            if moved is None or key in changed:
                again.append(snap)
        elif _terms(fields) == _terms(now.deal.__dict__):
            del differ[key]  # the same terms: the same value, category and membership on both dates
        else:
            again.append(snap)
    old = forecast_deals(
        again, quarter, start, stages, config,
        owner_ids=None if rollup.scope is None else rollup.members, fx=config.fx(rollup.as_of), every_deal=True,
    )
    new = list(differ.values())
    current = quarter.contains(start)
    if current != quarter.contains(rollup.as_of):
        # Past-due deals count only while the quarter is current: with the same terms, a deal past
        # due on one date is in the pipeline on that date only.
        for deal in deals:
            if deal.deal.id in differ or deal.deal.is_closed:
                continue
            close = deal.deal.close_date
            then = in_pipeline(close, quarter, current)
            if then != deal.in_quarter:
                old.append(deal._replace(in_quarter=then, past_due=close is not None and close < start,
                                         p_in_quarter=None))
                new.append(deal)
    result = waterfall(old, new, quarter, start=start, end=rollup.as_of, stages=stages, currency=rollup.currency)
    # Every other deal was in the pipeline on both dates with the same value, or on neither.
    both = rollup.totals.open_total - result.end_total
    result.start_total += both
    result.end_total += both
    return result


_deal_id = attrgetter("deal.id")
_terms = itemgetter(
    "stage_id", "amount", "close_date", "forecast_category", "currency", "owner_id", "probability", "is_closed"
)
"""Every field the forecast reads from an Opportunity's `__dict__` (where pydantic keeps them): with
the same terms a deal gets the same value, category and membership."""


def waterfall(
    before: Iterable[ForecastDeal],
    after: Iterable[ForecastDeal],
    quarter: Quarter,
    *,
    start: date,
    end: date,
    stages: Mapping[str, Stage],
    currency: str,
) -> Waterfall:
    """The waterfall between two assessments of the same scope made with `every_deal=True` and the
    same FX converter (see `changes`)."""
    with gc_paused():
        return _waterfall(before, list(after), quarter, start, end, stages, currency)


def _waterfall(
    before: Iterable[ForecastDeal],
    after: list[ForecastDeal],
    quarter: Quarter,
    start: date,
    end: date,
    stages: Mapping[str, Stage],
    currency: str,
) -> Waterfall:
    old = {d.deal.id: d for d in before}
    start_total = sum((d.value for d in old.values() if d.in_quarter), ZERO)
    end_total = sum((d.value for d in after if d.in_quarter), ZERO)
    moves = _Moves({b: BucketTotal(b) for b in Bucket}, [], [], [])
    pop = old.pop
    for b in after:
        a = pop(b.deal.id, None)
        if (  # the common case, inlined: in the pipeline on both dates and nothing moved
            a is not None
            and a.in_quarter
            and b.in_quarter
            and a.value == b.value
            and a.category is b.category
            and a.deal.stage_id == b.deal.stage_id
        ):
            continue
        moves.add(a, b, stages)
    for a in old.values():  # gone by the end (deleted, or out of scope)
        moves.add(a, None, stages)
    for total in moves.buckets.values():
        total.movements.sort(key=lambda m: m.opportunity_id)
    for found in (moves.category_moves, moves.forward, moves.backward):
        found.sort(key=lambda m: m.opportunity_id)
    return Waterfall(
        quarter=quarter,
        start=start,
        end=end,
        currency=currency,
        start_total=start_total,
        end_total=end_total,
        buckets=moves.buckets,
        category_moves=moves.category_moves,
        stage_forward=moves.forward,
        stage_backward=moves.backward,
    )


@dataclass
class _Moves:
    """What the waterfall collects while it walks the deals."""

    buckets: dict[Bucket, BucketTotal]
    category_moves: list[CategoryMove]
    forward: list[StageMove]
    backward: list[StageMove]

    def add(self, a: ForecastDeal | None, b: ForecastDeal | None, stages: Mapping[str, Stage]) -> None:
        """File one deal seen as `a` at the start and `b` at the end (either may be None)."""
        if a is not None and a.in_quarter:
            _from_pipeline(a, b, self.buckets, stages)
            if b is not None and b.in_quarter and a.category != b.category:
                d = b.deal
                self.category_moves.append(
                    CategoryMove(d.id, d.name, d.owner_id, a.category, b.category, b.value)
                )
        elif b is not None and (b.in_quarter or (b.won and not (a is not None and a.deal.is_won))):
            _into_pipeline(a, b, self.buckets, stages)
        if a is not None and b is not None and (a.in_quarter or b.in_quarter):
            move = _stage_move(a, b, stages)
            if move is not None:
                (self.forward if move.forward else self.backward).append(move)


def _from_pipeline(
    a: ForecastDeal, b: ForecastDeal | None, buckets: dict[Bucket, BucketTotal], stages: Mapping[str, Stage]
) -> None:
    """A deal in the pipeline at the start: where did it go?"""
    d = a.deal
    if b is None:
        buckets[Bucket.OTHER_OUT].add(
            Movement(d.id, d.name, d.owner_id, -a.value, "no longer in the CRM or scope")
        )
        return
    if b.in_quarter or b.deal.is_won:
        delta = b.value - a.value
        if delta:
            bucket = Bucket.AMOUNT_UP if delta > 0 else Bucket.AMOUNT_DOWN
            detail = f"{a.deal.amount} → {b.deal.amount} {b.deal.currency}"
            buckets[bucket].add(Movement(d.id, d.name, d.owner_id, delta, detail))
        if b.deal.is_won:
            buckets[Bucket.WON].add(Movement(d.id, d.name, d.owner_id, -b.value, _booked(b.deal)))
        return
    if b.deal.is_closed:
        buckets[Bucket.LOST].add(
            Movement(d.id, d.name, d.owner_id, -a.value, f"lost from {_stage_name(a.deal.stage_id, stages)}")
        )
        return
    detail = f"close date {d.close_date} → {b.deal.close_date or 'none'}"
    buckets[Bucket.PUSHED_OUT].add(Movement(d.id, d.name, d.owner_id, -a.value, detail))


def _into_pipeline(
    a: ForecastDeal | None, b: ForecastDeal, buckets: dict[Bucket, BucketTotal], stages: Mapping[str, Stage]
) -> None:
    """A deal not in the pipeline at the start that is in it at the end, or won in the quarter by then."""
    d = b.deal
    if a is None:
        buckets[Bucket.NEW].add(Movement(d.id, d.name, d.owner_id, b.value, f"created, now in {_stage_name(d.stage_id, stages)}"))
    elif a.deal.is_closed:
        buckets[Bucket.OTHER_IN].add(Movement(d.id, d.name, d.owner_id, b.value, "reopened"))
    else:
        detail = f"close date {a.deal.close_date or 'none'} → {d.close_date}"
        buckets[Bucket.PULLED_IN].add(Movement(d.id, d.name, d.owner_id, b.value, detail))
    if not b.in_quarter:
        buckets[Bucket.WON].add(Movement(d.id, d.name, d.owner_id, -b.value, _booked(d)))


def _stage_name(stage_id: str, stages: Mapping[str, Stage]) -> str:
    stage = stages.get(stage_id)
    return stage.name if stage is not None else stage_id


def _booked(deal: Opportunity) -> str:
    return f"booked {booking_date(deal)}"


def _stage_move(a: ForecastDeal, b: ForecastDeal, stages: Mapping[str, Stage]) -> StageMove | None:
    """The stage change of a deal open on both dates, if any (wins and losses are buckets, not moves)."""
    if a.deal.stage_id == b.deal.stage_id or a.deal.is_closed or b.deal.is_closed:
        return None
    before, after = stages[a.deal.stage_id], stages[b.deal.stage_id]
    d = b.deal
    return StageMove(
        d.id, d.name, d.owner_id, before.id, after.id, b.value, forward=after.order > before.order
    )
