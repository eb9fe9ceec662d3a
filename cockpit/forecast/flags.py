"""Risk flags per open deal, and the hygiene list of deals whose data needs fixing before the call.

Risk flags say a deal is less likely to close than its stage suggests; hygiene flags say its data is
wrong or missing (a past close date, no next step, no close date, a zero amount). Thresholds come
from `ForecastConfig.risk`. Stage medians are learned from history: how long deals stayed in each
stage, over stage spells that ended on or before the as-of date.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum

from cockpit.forecast.config import ForecastConfig, Fx
from cockpit.models import DealHistory, DealSnapshot, Stage, end_of_day


class FlagKind(StrEnum):
    STALE = "stale"
    CLOSE_DATE_PAST = "close_date_past"
    NO_CLOSE_DATE = "no_close_date"
    PUSHED = "pushed"
    STUCK = "stuck"
    NEXT_STEP_MISSING = "next_step_missing"
    NEXT_STEP_OVERDUE = "next_step_overdue"
    AMOUNT_OUTLIER = "amount_outlier"
    BACKWARD_MOVE = "backward_move"
    ZERO_AMOUNT = "zero_amount"

    @property
    def hygiene(self) -> bool:
        """The deal's data needs fixing (as opposed to a risk to the deal itself)."""
        return self in HYGIENE


HYGIENE = frozenset(
    {
        FlagKind.CLOSE_DATE_PAST,
        FlagKind.NO_CLOSE_DATE,
        FlagKind.NEXT_STEP_MISSING,
        FlagKind.NEXT_STEP_OVERDUE,
        FlagKind.ZERO_AMOUNT,
    }
)


@dataclass(frozen=True, slots=True)
class Flag:
    kind: FlagKind
    message: str
    """What a sales leader reads: "no activity for 45 days (limit 21)"."""


@dataclass(frozen=True, slots=True)
class DealFlags:
    """The flags of one open deal."""

    opportunity_id: str
    name: str
    owner_id: str
    stage_id: str
    amount: Decimal
    currency: str
    close_date: date | None
    flags: tuple[Flag, ...]

    @property
    def risks(self) -> tuple[Flag, ...]:
        return tuple(f for f in self.flags if not f.kind.hygiene)

    @property
    def hygiene(self) -> tuple[Flag, ...]:
        return tuple(f for f in self.flags if f.kind.hygiene)


@dataclass(frozen=True, slots=True)
class StageMedian:
    days: float
    samples: int


def stage_medians(histories: Iterable[DealHistory], as_of: date) -> dict[str, StageMedian]:
    """Median days deals spent in each stage, over stays that ended by the end of `as_of`."""
    cutoff = end_of_day(as_of)
    spells: dict[str, list[float]] = {}
    for history in histories:
        rows = history.changes
        entered = rows[0].changed_at if rows else None
        for prev, row in zip(rows, rows[1:]):
            if row.changed_at >= cutoff:
                break
            if row.stage_id != prev.stage_id:
                days = (row.changed_at - entered).total_seconds() / 86400.0  # type: ignore[operator]
                spells.setdefault(prev.stage_id, []).append(days)
                entered = row.changed_at
    return {stage: StageMedian(statistics.median(days), len(days)) for stage, days in spells.items()}


def flag_deals(
    snapshots: Iterable[DealSnapshot],
    as_of: date,
    *,
    stages: Mapping[str, Stage],
    config: ForecastConfig,
    medians: Mapping[str, StageMedian] | None = None,
    histories: Mapping[str, DealHistory] | None = None,
) -> list[DealFlags]:
    """Flags of every open deal in `snapshots` on `as_of` (closed deals are skipped).

    `histories` (by opportunity id) give point-in-time activity dates and backward moves; without
    them the deal's own last_activity is used and backward moves are not checked.
    """
    snaps = list(snapshots)
    fx = config.fx(as_of)
    typical = _typical_amounts(snaps, fx, config.risk.min_owner_deals)
    risk = config.risk
    out = []
    for snap in snaps:
        deal = snap.deal
        if deal.is_closed:
            continue
        history = histories.get(deal.id) if histories is not None else None
        found = [
            *_date_flags(snap, as_of, config, history),
            *_stage_flags(snap, as_of, config, stages, medians or {}, history),
        ]
        base = typical.get(deal.owner_id)
        value = fx(deal.amount, deal.currency)
        if base is not None and base > 0 and value >= base * Decimal(str(risk.amount_outlier_ratio)):
            ratio = value / base
            found.append(
                Flag(
                    FlagKind.AMOUNT_OUTLIER,
                    f"{ratio:.1f}× the owner's median deal ({base:,.0f} {fx.reporting})",
                )
            )
        if deal.amount == 0:
            found.append(Flag(FlagKind.ZERO_AMOUNT, "amount is zero"))
        out.append(
            DealFlags(
                opportunity_id=deal.id,
                name=deal.name,
                owner_id=deal.owner_id,
                stage_id=deal.stage_id,
                amount=deal.amount,
                currency=deal.currency,
                close_date=deal.close_date,
                flags=tuple(found),
            )
        )
    return out


def hygiene_list(flags: Iterable[DealFlags]) -> list[DealFlags]:
    """Deals with at least one hygiene flag, keeping only those flags, by owner then deal id."""
    rows = [
        DealFlags(
            f.opportunity_id, f.name, f.owner_id, f.stage_id, f.amount, f.currency, f.close_date, f.hygiene
        )
        for f in flags
        if f.hygiene
    ]
    return sorted(rows, key=lambda r: (r.owner_id, r.opportunity_id))


def _typical_amounts(snaps: list[DealSnapshot], fx: Fx, minimum: int) -> dict[str, Decimal]:
    """Each owner's median deal value over the given deals, for owners with at least `minimum` deals."""
    by_owner: dict[str, list[Decimal]] = {}
    for snap in snaps:
        by_owner.setdefault(snap.deal.owner_id, []).append(fx(snap.deal.amount, snap.deal.currency))
    return {owner: statistics.median(values) for owner, values in by_owner.items() if len(values) >= minimum}


def _date_flags(
    snap: DealSnapshot, as_of: date, config: ForecastConfig, history: DealHistory | None
) -> list[Flag]:
    deal = snap.deal
    risk = config.risk
    out = []
    last = _last_activity(snap, as_of, history)
    since = last or (deal.created_at.date() if deal.created_at else snap.stage_entered_at.date())
    idle = (as_of - since).days
    if idle >= risk.stale_days:
        what = f"no activity for {idle} days" if last else f"no activity logged in {idle} days since creation"
        out.append(Flag(FlagKind.STALE, f"{what} (limit {risk.stale_days})"))
    if deal.close_date is None:
        out.append(Flag(FlagKind.NO_CLOSE_DATE, "no close date"))
    elif deal.close_date < as_of:
        out.append(
            Flag(
                FlagKind.CLOSE_DATE_PAST,
                f"close date {deal.close_date} is {(as_of - deal.close_date).days} days past",
            )
        )
    if snap.close_date_pushes >= risk.max_pushes:
        out.append(
            Flag(
                FlagKind.PUSHED, f"close date pushed {snap.close_date_pushes} times (limit {risk.max_pushes})"
            )
        )
    if not (deal.next_step or "").strip():
        out.append(Flag(FlagKind.NEXT_STEP_MISSING, "no next step"))
    elif deal.next_step_date is not None and deal.next_step_date < as_of:
        days = (as_of - deal.next_step_date).days
        out.append(
            Flag(FlagKind.NEXT_STEP_OVERDUE, f"next step due {deal.next_step_date}, {days} days overdue")
        )
    return out


def _last_activity(snap: DealSnapshot, as_of: date, history: DealHistory | None) -> date | None:
    if history is not None:
        known = [d for d in history.activities if d <= as_of]
        return known[-1] if known else None
    last = snap.deal.last_activity
    return last if last is not None and last <= as_of else None


def _stage_flags(
    snap: DealSnapshot,
    as_of: date,
    config: ForecastConfig,
    stages: Mapping[str, Stage],
    medians: Mapping[str, StageMedian],
    history: DealHistory | None,
) -> list[Flag]:
    risk = config.risk
    out = []
    median = medians.get(snap.deal.stage_id)
    days = (end_of_day(as_of) - snap.stage_entered_at).total_seconds() / 86400.0
    if median is not None and median.samples >= risk.min_stage_samples and median.days > 0:
        ratio = days / median.days
        if ratio >= risk.stuck_ratio:
            name = stages[snap.deal.stage_id].name
            out.append(
                Flag(
                    FlagKind.STUCK, f"{days:.0f} days in {name}, {ratio:.1f}× the median of {median.days:.0f}"
                )
            )
    if history is not None:
        move = _recent_backward(history, as_of, risk.backward_days, stages)
        if move is not None:
            out.append(Flag(FlagKind.BACKWARD_MOVE, move))
    return out


def _recent_backward(
    history: DealHistory, as_of: date, window: int, stages: Mapping[str, Stage]
) -> str | None:
    """Text of the latest move to an earlier open stage within `window` days before as_of, if any."""
    cutoff = end_of_day(as_of)
    since = cutoff - timedelta(days=window)
    found = None
    for prev, row in zip(history.changes, history.changes[1:]):
        if row.changed_at >= cutoff:
            break
        if row.changed_at < since or row.stage_id == prev.stage_id:
            continue
        before, after = stages[prev.stage_id], stages[row.stage_id]
        if not after.is_closed and not before.is_closed and after.order < before.order:
            found = f"moved back from {before.name} to {after.name} on {row.changed_at.date()}"
    return found
