"""Simple, honest in-quarter probabilities learned from history: baselines for the forecast and the backtest.

The scoring layer's model is the cockpit's real second opinion; these baselines exist so the
forecast engine can be run and judged without it, and so a backtest has something to beat. Each is
a `probabilities_at(as_of, snapshots) -> {opportunity id: probability}` callable.

- `CrmProbabilities`: the CRM's own probability (the deal's, else its stage's default).
- `StageRates`: the share of deals won among those that reached each stage, over deals closed
  before the as-of date (what open-source CRMs show). Neither knows about time, so neither is an
  in-quarter probability: both overstate a quarter.
- `InQuarterRates`: the chance that a deal is won **and booked by the end of the quarter**, learned
  at the same point of earlier quarters (see the class).

All of them use only what was known on the as-of date: outcomes of quarters that had ended by then.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np

from cockpit.forecast.config import Fx
from cockpit.forecast.runrate import same_point
from cockpit.models import DealHistory, DealSnapshot, FiscalCalendar, Opportunity, Quarter, Stage, end_of_day

AGE_EDGES = (7, 14, 21, 30, 45, 60, 75, 90, 105, 120, 135, 150, 180, 240, 365)
"""Deal-age buckets, days."""
STAGE_DAY_EDGES = (7, 14, 28, 42, 63, 91, 126)
"""Days-in-stage buckets."""
IDLE_EDGES = (8, 15, 29, 57)
"""Days-since-last-activity buckets (the last one also holds deals without any activity)."""
L2 = 2.0
"""Ridge penalty of the logistic regression (per coefficient, in log-likelihood units)."""

Segment = Callable[[Opportunity], str]
"""A label splitting deals into groups that convert differently (team, region, source...)."""


def _bucket(value: float, edges: Sequence[int]) -> int:
    return bisect.bisect_right(edges, value)


@dataclass(frozen=True, slots=True)
class Situation:
    """What the CRM shows about an open deal on a date, as far as `InQuarterRates` cares."""

    stage_id: str
    segment: str
    size: int
    """Bucket of the deal's value: ⌊log₂ value⌋ in the reporting currency."""
    close: str
    """none, past (before the date), in (by quarter end), near (≤ 45 days after it), far."""
    idle: int
    """Bucket of days since the last activity (`len(IDLE_EDGES)`: longer, or never)."""
    age: int
    """Bucket of days since creation."""
    in_stage: int
    """Bucket of days in the current stage."""
    pushes: int
    """Close-date pushes so far, capped at 2."""


def situation(
    *,
    stage_id: str,
    segment: str,
    value: float,
    close_date: date | None,
    last_activity: date | None,
    created: datetime,
    entered: datetime,
    pushes: int,
    on: date,
    quarter_end: date,
) -> Situation:
    """The situation of a deal at the end of `on`, seen against the end of its quarter."""
    cutoff = end_of_day(on)
    if close_date is None:
        close = "none"
    elif close_date < on:
        close = "past"
    elif close_date <= quarter_end:
        close = "in"
    elif close_date <= quarter_end + timedelta(days=45):
        close = "near"
    else:
        close = "far"
    idle = len(IDLE_EDGES) if last_activity is None else _bucket((on - last_activity).days, IDLE_EDGES)
    return Situation(
        stage_id=stage_id,
        segment=segment,
        size=int(math.log2(value)) if value >= 1 else 0,
        close=close,
        idle=idle,
        age=_bucket((cutoff - created).days, AGE_EDGES),
        in_stage=_bucket((cutoff - entered).days, STAGE_DAY_EDGES),
        pushes=min(pushes, 2),
    )


class _Design:
    """Situations as model inputs: one-hot for labels (and stage × close), thermometer (≥ k) for ordered
    buckets, so a bucket never seen in training (an older age) still gets the effect of the last one seen."""

    LABELS = ("segment", "stage_id", "close")
    ORDERED = ("size", "idle", "age", "in_stage", "pushes")

    def __init__(self, situations: Iterable[Situation]) -> None:
        rows = list(situations)
        self.columns: dict[tuple[str, object], int] = {}
        for where in rows:
            for key in self._labels(where):
                self.columns.setdefault(key, len(self.columns) + 1)
        self.steps: list[tuple[str, int, int]] = []
        for name in self.ORDERED:
            for value in sorted({getattr(w, name) for w in rows})[1:]:
                self.steps.append((name, value, len(self.columns) + len(self.steps) + 1))
        self.width = 1 + len(self.columns) + len(self.steps)

    def _labels(self, where: Situation) -> list[tuple[str, object]]:
        keys: list[tuple[str, object]] = [(name, getattr(where, name)) for name in self.LABELS]
        keys.append(("stage_close", (where.stage_id, where.close)))
        return keys

    def matrix(self, situations: Sequence[Situation]) -> np.ndarray:
        x = np.zeros((len(situations), self.width))
        x[:, 0] = 1.0
        for i, where in enumerate(situations):
            for key in self._labels(where):
                col = self.columns.get(key)
                if col is not None:
                    x[i, col] = 1.0
            for name, value, col in self.steps:
                if getattr(where, name) >= value:
                    x[i, col] = 1.0
        return x


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def fit_logistic(x: np.ndarray, wins: np.ndarray, totals: np.ndarray, l2: float = L2) -> np.ndarray:
    """Binomial logistic regression (rows with `wins` of `totals`) by damped Newton steps on the
    ridge-penalised log-likelihood; the intercept (column 0) is barely penalised."""
    w = np.zeros(x.shape[1])
    base = float(wins.sum() / totals.sum()) if totals.sum() else 0.0
    w[0] = math.log(max(base, 1e-6) / max(1.0 - base, 1e-6))
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 1e-6

    def objective(v: np.ndarray) -> float:
        z = x @ v
        return float(wins @ z - totals @ np.logaddexp(0.0, z) - 0.5 * penalty @ (v * v))

    current = objective(w)
    for _ in range(100):
        p = _sigmoid(x @ w)
        grad = x.T @ (wins - totals * p) - penalty * w
        hess = (x * (totals * p * (1.0 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:  # halve the step until the objective improves (Newton can overshoot)
            trial = w + scale * step
            value = objective(trial)
            if value >= current - 1e-12:
                break
            scale /= 2
        w, improvement, current = trial, value - current, value
        if float(np.max(np.abs(scale * step))) < 1e-7 or improvement < 1e-10:
            break
    return w


@dataclass(slots=True)
class _Timeline:
    """One deal's history as parallel lists, for fast point-in-time lookups."""

    deal: Opportunity
    created: datetime
    """First row of its history: before this the deal did not exist."""
    times: list[datetime]
    stage_ids: list[str]
    entered: list[datetime]
    close_dates: list[date | None]
    pushes: list[int]
    closed: list[bool]
    amounts: list[Decimal]
    activities: tuple[date, ...]
    wins: list[tuple[datetime, date]]
    """Every entry into a won stage: (when, booking date). A deal reopened later keeps its past wins."""

    def index(self, cutoff: datetime) -> int:
        """Row in force just before `cutoff`, -1 if the deal did not exist yet."""
        return bisect.bisect_left(self.times, cutoff) - 1

    def last_activity(self, on: date) -> date | None:
        i = bisect.bisect_right(self.activities, on)
        return self.activities[i - 1] if i else None


def _timeline(history: DealHistory, stages: Mapping[str, Stage]) -> _Timeline | None:
    rows = history.changes
    if not rows:
        return None
    entered, pushes = [], []
    start, count = rows[0].changed_at, 0
    for i, row in enumerate(rows):
        if i and row.stage_id != rows[i - 1].stage_id:
            start = row.changed_at
        if i and row.close_date and rows[i - 1].close_date and row.close_date > rows[i - 1].close_date:
            count += 1
        entered.append(start)
        pushes.append(count)
    wins = [
        (row.changed_at, row.close_date or row.changed_at.date())
        for i, row in enumerate(rows)
        if stages[row.stage_id].is_won and (i == 0 or rows[i - 1].stage_id != row.stage_id)
    ]
    return _Timeline(
        deal=history.deal,
        created=rows[0].changed_at,
        times=[r.changed_at for r in rows],
        stage_ids=[r.stage_id for r in rows],
        entered=entered,
        close_dates=[r.close_date for r in rows],
        pushes=pushes,
        closed=[stages[r.stage_id].is_closed for r in rows],
        amounts=[r.amount if r.amount is not None else history.deal.amount for r in rows],
        activities=tuple(sorted(history.activities)),
        wins=wins,
    )


@dataclass
class _Examples:
    """The deals open at one past date, whether each was won and booked by its quarter's end, and how
    many deals (open or closed) had been created by then, per age bucket."""

    situations: list[Situation]
    won: list[bool]
    created: dict[int, int]


class InQuarterRates:
    """P(won and booked by quarter end), learned at the same point of earlier quarters.

    At the as-of date, `d` days into the quarter, it looks at each of the last `quarters` quarters
    `d` days in, takes every deal open then, and records whether it was won and booked by that
    quarter's end. A deal's situation is an optional segment (e.g. the owner's team), its size, its
    stage, where its close date sits against the quarter end, days since the last activity, its age,
    its days in stage and its close-date pushes. A ridge-penalised logistic regression over those
    (labels one-hot, ordered buckets as "at least k" steps) gives each deal its probability; aligning
    on the week of quarter captures the end-of-quarter rush, and deal age carries the signal where
    there is no stage history (stale deals never close).

    Dead pipeline: when far more of the deals created a given time ago are still open than was usual
    at the same point of past quarters, the excess is pipeline nobody closed out; the probabilities
    of that age are scaled by past survival ÷ current survival (see `_zombie_factors`).

    Args:
        histories: Every deal's history (closed and open).
        stages: Stage id → stage.
        calendar: The fiscal calendar (quarters).
        quarters: How many past quarters to learn from.
        first_quarter_start: Learn only from quarters starting on or after this day (where the
            CRM's history is complete); None: any.
        fx: Converts amounts for the size buckets (None: amounts are compared as they are).
        segment: Splits deals into groups (e.g. the owner's team); None: one group.
        l2: Ridge penalty.
    """

    def __init__(
        self,
        histories: Iterable[DealHistory],
        stages: Mapping[str, Stage],
        calendar: FiscalCalendar,
        *,
        quarters: int = 4,
        first_quarter_start: date | None = None,
        fx: Fx | None = None,
        segment: Segment | None = None,
        l2: float = L2,
    ) -> None:
        self.stages = dict(stages)
        self.calendar = calendar
        self.quarters = quarters
        self.first_quarter_start = first_quarter_start
        self.fx = fx
        self.segment = segment
        self.l2 = l2
        lines = [t for t in (_timeline(h, self.stages) for h in histories) if t is not None]
        self._lines = sorted(lines, key=lambda t: t.created)
        self._created = [t.created for t in self._lines]
        self._by_id = {t.deal.id: t for t in self._lines}
        self._examples: dict[tuple[date, date], _Examples] = {}

    # -- situations ------------------------------------------------------------------------------

    def _value(self, amount: Decimal, currency: str) -> float:
        return float(self.fx(amount, currency) if self.fx is not None else amount)

    def _segment(self, deal: Opportunity) -> str:
        return self.segment(deal) if self.segment is not None else ""

    def _row_situation(self, line: _Timeline, i: int, on: date, quarter: Quarter) -> Situation:
        """Situation of a deal from row `i` of its history (the row in force at the end of `on`)."""
        return situation(
            stage_id=line.stage_ids[i],
            segment=self._segment(line.deal),
            value=self._value(line.amounts[i], line.deal.currency),
            close_date=line.close_dates[i],
            last_activity=line.last_activity(on),
            created=line.created,
            entered=line.entered[i],
            pushes=line.pushes[i],
            on=on,
            quarter_end=quarter.last_day,
        )

    def _snapshot_situation(self, snap: DealSnapshot, as_of: date, quarter: Quarter) -> Situation:
        """For a deal whose history was not given: what its snapshot shows."""
        deal = snap.deal
        return situation(
            stage_id=deal.stage_id,
            segment=self._segment(deal),
            value=self._value(deal.amount, deal.currency),
            close_date=deal.close_date,
            last_activity=deal.last_activity if deal.last_activity and deal.last_activity <= as_of else None,
            created=deal.created_at or snap.stage_entered_at,
            entered=snap.stage_entered_at,
            pushes=snap.close_date_pushes,
            on=as_of,
            quarter_end=quarter.last_day,
        )

    # -- learning --------------------------------------------------------------------------------

    def examples(self, on: date, quarter: Quarter) -> _Examples:
        """The deals open at the end of `on` and their outcome by the end of `quarter` (cached)."""
        key = (on, quarter.start)
        cached = self._examples.get(key)
        if cached is not None:
            return cached
        cutoff = end_of_day(on)
        horizon = end_of_day(quarter.last_day)
        first, last = quarter.start, quarter.last_day
        out = _Examples([], [], {})
        for line in self._lines[: bisect.bisect_left(self._created, cutoff)]:
            age = _bucket((cutoff - line.created).days, AGE_EDGES)
            out.created[age] = out.created.get(age, 0) + 1
            i = line.index(cutoff)
            if line.closed[i]:
                continue
            won = any(cutoff <= at < horizon and first <= booked <= last for at, booked in line.wins)
            out.situations.append(self._row_situation(line, i, on, quarter))
            out.won.append(won)
        self._examples[key] = out
        return out

    def training(self, as_of: date) -> list[_Examples]:
        """The examples of the past quarters that had ended by `as_of`, newest first."""
        quarter = self.calendar.quarter_of(as_of)
        out = []
        past = quarter.previous()
        while len(out) < self.quarters and past.last_day <= as_of:
            if self.first_quarter_start is not None and past.start < self.first_quarter_start:
                break
            out.append(self.examples(same_point(quarter, as_of, past), past))
            past = past.previous()
        return out

    def fit(self, as_of: date) -> tuple[_Design, np.ndarray] | None:
        """The design and coefficients learned for `as_of`; None without any example."""
        counts: dict[Situation, list[float]] = {}
        for ex in self.training(as_of):
            for where, won in zip(ex.situations, ex.won):
                cell = counts.setdefault(where, [0.0, 0.0])
                cell[0] += won
                cell[1] += 1.0
        if not counts:
            return None
        keys = list(counts)
        design = _Design(keys)
        wins = np.array([counts[k][0] for k in keys])
        totals = np.array([counts[k][1] for k in keys])
        return design, fit_logistic(design.matrix(keys), wins, totals, self.l2)

    def _zombie_factors(self, as_of: date) -> dict[int, float]:
        """Per age bucket: the share of open deals that are live, judged by how many are still open.

        If the deals created at a given age ago are still open far more often than such cohorts
        were at the same point of past quarters (beyond two standard errors), the excess is dead
        pipeline nobody closed out: the factor is past survival ÷ current survival. Otherwise 1.
        """
        created: dict[int, int] = {}
        still_open: dict[int, int] = {}
        for ex in self.training(as_of):
            for age, n in ex.created.items():
                created[age] = created.get(age, 0) + n
            for where in ex.situations:
                still_open[where.age] = still_open.get(where.age, 0) + 1
        cutoff = end_of_day(as_of)
        now_created: dict[int, int] = {}
        now_open: dict[int, int] = {}
        for line in self._lines[: bisect.bisect_left(self._created, cutoff)]:
            age = _bucket((cutoff - line.created).days, AGE_EDGES)
            now_created[age] = now_created.get(age, 0) + 1
            if not line.closed[line.index(cutoff)]:
                now_open[age] = now_open.get(age, 0) + 1
        factors = {}
        for age, n_now in now_created.items():
            n_past = created.get(age, 0)
            if not n_past or not now_open.get(age):
                continue
            past = still_open.get(age, 0) / n_past
            now = now_open[age] / n_now
            spread = math.sqrt(past * (1 - past) / n_past + past * (1 - past) / n_now)
            if now > past + 2 * spread:
                factors[age] = past / now
        return factors

    # -- predicting ------------------------------------------------------------------------------

    def __call__(self, as_of: date, snapshots: Iterable[DealSnapshot]) -> dict[str, float]:
        quarter = self.calendar.quarter_of(as_of)
        open_snaps = [s for s in snapshots if not s.deal.is_closed]
        fitted = self.fit(as_of)
        if fitted is None:
            return {s.deal.id: 0.0 for s in open_snaps}
        design, w = fitted
        cutoff = end_of_day(as_of)
        targets = []
        for snap in open_snaps:
            line = self._by_id.get(snap.deal.id)
            row = line.index(cutoff) if line is not None else -1
            if line is not None and row >= 0:
                targets.append(self._row_situation(line, row, as_of, quarter))
            else:
                targets.append(self._snapshot_situation(snap, as_of, quarter))
        if not targets:
            return {}
        live = self._zombie_factors(as_of)
        probs = _sigmoid(design.matrix(targets) @ w)
        return {
            snap.deal.id: float(p) * live.get(where.age, 1.0)
            for snap, where, p in zip(open_snaps, targets, probs)
        }


class StageRates:
    """P(won | reached the stage) over deals closed before the as-of date: the CRM-style baseline."""

    def __init__(self, histories: Iterable[DealHistory], stages: Mapping[str, Stage]) -> None:
        self.stages = dict(stages)
        self._closed: list[tuple[datetime, bool, frozenset[str]]] = []
        for history in histories:
            line = _timeline(history, self.stages)
            if line is None or not line.closed[-1]:
                continue
            won = self.stages[line.stage_ids[-1]].is_won
            self._closed.append((line.entered[-1], won, frozenset(line.stage_ids)))
        self._closed.sort(key=lambda c: c[0])

    def rates(self, as_of: date) -> dict[str, float]:
        """Stage id → share won among deals that reached it and closed by the end of `as_of`."""
        cutoff = end_of_day(as_of)
        reached: dict[str, int] = {}
        won: dict[str, int] = {}
        for closed_at, is_won, seen in self._closed:
            if closed_at >= cutoff:
                break
            for stage in seen:
                reached[stage] = reached.get(stage, 0) + 1
                won[stage] = won.get(stage, 0) + is_won
        return {s: won[s] / n for s, n in reached.items()}

    def __call__(self, as_of: date, snapshots: Iterable[DealSnapshot]) -> dict[str, float]:
        rates = self.rates(as_of)
        out = {}
        for snap in snapshots:
            deal = snap.deal
            if not deal.is_closed:
                out[deal.id] = rates.get(deal.stage_id, float(self.stages[deal.stage_id].probability))
        return out


class CrmProbabilities:
    """The CRM's own probability (the deal's, else its stage's default)."""

    def __init__(self, stages: Mapping[str, Stage]) -> None:
        self.stages = dict(stages)

    def __call__(self, as_of: date, snapshots: Iterable[DealSnapshot]) -> dict[str, float]:
        out = {}
        for snap in snapshots:
            deal = snap.deal
            if not deal.is_closed:
                prob = (
                    deal.probability
                    if deal.probability is not None
                    else self.stages[deal.stage_id].probability
                )
                out[deal.id] = float(prob)
        return out
