"""Point-in-time features of deals: one vectorised code path for training examples and for scoring.

A feature of a deal "as of D" uses only what was known at the end of D (UTC): history rows with
`changed_at < end_of_day(D)` (the same rule as `cockpit.models.snapshot_of`), activities dated on or
before D, other deals that closed strictly before D (owner and team win rates), and the owner's
forecast calls on or before D (their habit). The deal's static fields (lead source, type, currency,
kept CRM attributes) are the CRM's current record.

Deliberately left out of the model:
- `next_step` / `next_step_date`: the CRM keeps only the current next step, so for a closed deal it is
  the state after closing. Using it in training would teach the model from the final state (a leak),
  and using it only when scoring would feed the model a feature it never saw. The forecast's risk
  flags use it instead.
- `Opportunity.last_activity`: also a current value; the activity log (dated) is used instead.
- `Opportunity.probability`: the rep's current override, not point in time.

Each feature belongs to a reason group: reasons are computed per group (for example "pushes" holds the
push count and the days pushed), and an admin can switch off a feature or a whole group by name.
"""

from __future__ import annotations

import math
from itertools import repeat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

import numpy as np

from cockpit.models import DealHistory, FiscalCalendar, ForecastCategory, Owner, Pipeline
from cockpit.models.columns import HistoryColumns

Kind = Literal["num", "cat"]

_EPOCH = date(1970, 1, 1).toordinal()
_SHIFT = 20
"""Day ordinals fit in 20 bits (dates up to the year 2870): composite keys are (deal << 20) + day."""
_UNDATED = 1
"""Day ordinal (0001-01-01) given to the single synthetic row of a deal without any date."""


@dataclass(frozen=True)
class FeatureSpec:
    """One model feature: its name, kind, reason group and what it means."""

    name: str
    kind: Kind
    group: str
    doc: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("pipeline", "cat", "stage", "pipeline of the stage the deal was in"),
    FeatureSpec("stage", "cat", "stage", "stage the deal was in"),
    FeatureSpec("stage_order", "num", "stage", "position of that stage in its funnel"),
    FeatureSpec("stage_probability", "num", "stage", "the CRM's default probability of that stage"),
    FeatureSpec("days_in_stage", "num", "stage_time", "days since the deal entered its stage"),
    FeatureSpec("days_in_stage_ratio", "num", "stage_time", "days in stage / the stage's historical median"),
    FeatureSpec("deal_age", "num", "age", "days since the deal was created"),
    FeatureSpec("stage_changes", "num", "stage_moves", "number of stage changes so far"),
    FeatureSpec("backward_moves", "num", "stage_moves", "stage changes to an earlier stage"),
    FeatureSpec("stage_velocity", "num", "stage_moves", "forward stage changes per 30 days of deal age"),
    FeatureSpec("close_pushes", "num", "pushes", "times the close date moved later"),
    FeatureSpec("close_push_days", "num", "pushes", "total days the close date moved later"),
    FeatureSpec("amount", "num", "amount", "deal amount (in its currency)"),
    FeatureSpec("currency", "cat", "amount", "deal currency"),
    FeatureSpec("amount_changes", "num", "amount_changes", "times the amount changed"),
    FeatureSpec("amount_change_pct", "num", "amount_changes", "amount now vs first amount, -1..+inf"),
    FeatureSpec("days_to_close", "num", "close_date", "days from the as-of date to the close date"),
    FeatureSpec("close_date_past", "num", "close_date", "1 if the close date had already passed"),
    FeatureSpec("close_in_quarter", "num", "close_date", "1 if the close date fell in the as-of quarter"),
    FeatureSpec("days_left_in_quarter", "num", "calendar", "days from the as-of date to the quarter end"),
    FeatureSpec("days_since_activity", "num", "activity", "days since the last activity or history change"),
    FeatureSpec("activities_30d", "num", "activity", "activities in the last `activity_window_days`"),
    FeatureSpec("owner_win_rate", "num", "owner", "owner's win rate on deals closed before the date"),
    FeatureSpec("team_win_rate", "num", "team", "team's win rate on deals closed before the date"),
    FeatureSpec("owner_closed_deals", "num", "owner", "owner's deals closed before the date (experience)"),
    FeatureSpec("forecast_category", "cat", "forecast_category", "the rep's forecast category then"),
    FeatureSpec(
        "owner_call_habit",
        "num",
        "call_habit",
        "owner's calls vs their stages' default categories so far, on average (+1: one category higher)",
    ),
    FeatureSpec(
        "call_vs_habit", "num", "call_habit", "this deal's call vs its stage's default, less the owner habit"
    ),
    FeatureSpec("lead_source", "cat", "lead_source", "lead source"),
    FeatureSpec("type", "cat", "type", "deal type"),
)
"""The built-in features; kept CRM attributes add one `attr:<field>` feature each (own group)."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
GROUP_NAMES: tuple[str, ...] = tuple(dict.fromkeys(f.group for f in FEATURES))
CONTEXT_GROUPS = frozenset({"stage", "calendar"})
"""Groups that describe where the deal is, not how it differs from its peers: never a reason."""

_CATEGORIES = [c.value for c in ForecastCategory]
CATEGORY_RANK: dict[ForecastCategory, int] = {
    ForecastCategory.OMITTED: 0,
    ForecastCategory.PIPELINE: 1,
    ForecastCategory.BEST_CASE: 2,
    ForecastCategory.COMMIT: 3,
    ForecastCategory.CLOSED: 3,  # on an open deal the forecast counts "closed" as commit
}
"""How confident a call is, from omitted (0) to commit (3)."""
_RANK_OF_CODE = np.array([CATEGORY_RANK[c] for c in ForecastCategory], dtype=np.float64)
CALL_HABIT_PRIOR = 20.0
"""Pseudo-calls at the stage default that pull an owner's call habit toward 0 (few calls, little habit)."""


def day_of(moment: datetime) -> int:
    """UTC calendar day (ordinal) of an aware datetime: `moment < end_of_day(D)` iff day_of(moment) <= D."""
    return int(moment.timestamp() // 86400) + _EPOCH


# --------------------------------------------------------------------------------------------------
# Context: what features need beyond the deal itself
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTable:
    """Stages of all pipelines as arrays indexed by a stage code."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    pipeline_ids: tuple[str, ...]
    pipeline_code: np.ndarray
    order: np.ndarray
    probability: np.ndarray
    is_closed: np.ndarray
    is_won: np.ndarray
    category_rank: np.ndarray
    """Rank of each stage's default forecast category (see `CATEGORY_RANK`), NaN for closed stages."""

    @classmethod
    def of(cls, pipelines: Sequence[Pipeline]) -> StageTable:
        """Number the stages of `pipelines` in order."""
        stages = [(p, s) for p in pipelines for s in p.stages]
        pipe_ids = tuple(dict.fromkeys(p.id for p in pipelines))
        return cls(
            ids=tuple(s.id for _, s in stages),
            names=tuple(s.name for _, s in stages),
            pipeline_ids=pipe_ids,
            pipeline_code=np.array([pipe_ids.index(p.id) for p, _ in stages], dtype=np.int64),
            order=np.array([s.order for _, s in stages], dtype=np.float64),
            probability=np.array([float(s.probability) for _, s in stages], dtype=np.float64),
            is_closed=np.array([s.is_closed for _, s in stages], dtype=bool),
            is_won=np.array([s.is_won for _, s in stages], dtype=bool),
            category_rank=np.array(
                [math.nan if s.is_closed else CATEGORY_RANK[s.category] for _, s in stages], dtype=np.float64
            ),
        )

    def code_map(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}


@dataclass(frozen=True)
class WinEvents:
    """Closed deals as (day, owner, team, won), searchable by owner or team and date.

    Win rates count deals closed strictly before the as-of day, so an example never sees its own
    outcome or anything later.
    """

    owner_ids: tuple[str, ...]
    team_ids: tuple[str, ...]
    day: np.ndarray
    owner: np.ndarray
    team: np.ndarray
    won: np.ndarray

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, str | None, bool]]) -> WinEvents:
        """From (close day, owner id, team key or None, won) rows."""
        owners: dict[str, int] = {}
        teams: dict[str, int] = {}
        day, own, team, won = [], [], [], []
        for d, owner_id, team_key, w in rows:
            day.append(d)
            own.append(owners.setdefault(owner_id, len(owners)))
            team.append(teams.setdefault(team_key, len(teams)) if team_key is not None else -1)
            won.append(1 if w else 0)
        return cls(
            tuple(owners),
            tuple(teams),
            np.array(day, dtype=np.int64),
            np.array(own, dtype=np.int64),
            np.array(team, dtype=np.int64),
            np.array(won, dtype=np.int64),
        )

    def counts(
        self, who: np.ndarray, days: np.ndarray, by: Literal["owner", "team"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Deals of `who` (owner or team codes, -1 unknown) closed before `days`, and how many were won."""
        who, days, back = _distinct_asks(who, days)
        codes = self.owner if by == "owner" else self.team
        keep = codes >= 0
        keys = (codes[keep] << _SHIFT) + self.day[keep]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        cum_won = np.concatenate(([0], np.cumsum(self.won[keep][order])))
        known = who >= 0
        safe = np.where(known, who, 0)
        start = np.searchsorted(keys, safe << _SHIFT, side="left")
        stop = np.searchsorted(keys, (safe << _SHIFT) + days, side="left")
        n = np.where(known, stop - start, 0).astype(np.float64)
        wins = np.where(known, cum_won[stop] - cum_won[start], 0).astype(np.float64)
        return (n, wins) if back is None else (n[back], wins[back])

    def rates(
        self, who: np.ndarray, days: np.ndarray, by: Literal["owner", "team"], prior: float
    ) -> np.ndarray:
        """Smoothed win rate of `who` (owner or team codes, -1 unknown) on deals closed before `days`."""
        n, wins = self.counts(who, days, by)
        base_rate = self._global_rate(days)
        if prior > 0:
            return (wins + prior * base_rate) / (n + prior)
        return np.where(n > 0, wins / np.maximum(n, 1.0), base_rate)

    def _global_rate(self, days: np.ndarray) -> np.ndarray:
        order = np.argsort(self.day, kind="stable")
        sorted_days = self.day[order]
        cum_won = np.concatenate(([0], np.cumsum(self.won[order])))
        k = np.searchsorted(sorted_days, days, side="left")
        return (cum_won[k] + 1.0) / (k + 2.0)


def _distinct_asks(who: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Owner (or team) codes and days to look up, and how to spread the answers back: when every
    ask is about one day (scoring: 100,000 deals of a few hundred owners, as of today), each owner
    is looked up once and `answers[back]` gives every ask's; otherwise (training) back is None."""
    if len(days) < 2 or days.min() != days.max():
        return who, days, None
    distinct, back = np.unique(who, return_inverse=True)
    return distinct, np.full(len(distinct), days[0]), np.ravel(back)


@dataclass(frozen=True)
class CallEvents:
    """Forecast calls per owner and day: how many, and their summed lift over the stage default.

    A call is a history row of an open stage with a forecast category; its lift is the category's rank
    minus the rank of the stage's default category (+1: the rep called it one step more confident than
    the stage says). Complete for every day up to `through_day`; later days hold what was added since.
    """

    owner_ids: tuple[str, ...]
    owner: np.ndarray
    day: np.ndarray
    calls: np.ndarray
    lift: np.ndarray
    through_day: int

    @classmethod
    def empty(cls) -> CallEvents:
        z = np.zeros(0, dtype=np.int64)
        return cls((), z, z, z, np.zeros(0), 0)

    @classmethod
    def from_flat(cls, flat: Flat, stages: StageTable, through_day: int, after_day: int = 0) -> CallEvents:
        """The calls in `flat`'s history rows dated in (`after_day`, `through_day`]."""
        stage, code, day = flat.row_stage, flat.row_category, flat.row_day.astype(np.int64)
        safe_stage = np.where(stage >= 0, stage, 0)
        default = np.where(stage >= 0, stages.category_rank[safe_stage], np.nan)
        rank = np.where(code >= 0, _RANK_OF_CODE[np.where(code >= 0, code, 0)], np.nan)
        keep = ~np.isnan(default) & ~np.isnan(rank) & (day > max(after_day, _UNDATED)) & (day <= through_day)
        row_deal = flat.row_key >> _SHIFT
        owner = flat.owner[row_deal[keep]]
        ones = np.ones(len(owner), dtype=np.int64)
        return cls._grouped(tuple(flat.owners), owner, day[keep], ones, (rank - default)[keep], through_day)

    @classmethod
    def _grouped(
        cls,
        owner_ids: tuple[str, ...],
        owner: np.ndarray,
        day: np.ndarray,
        calls: np.ndarray,
        lift: np.ndarray,
        through_day: int,
    ) -> CallEvents:
        """Entries summed into one per (owner, day), sorted by owner then day."""
        key = (owner.astype(np.int64) << _SHIFT) + day
        uniq, inverse = np.unique(key, return_inverse=True)
        count = np.bincount(inverse, weights=calls, minlength=len(uniq)).astype(np.int64)
        total = np.bincount(inverse, weights=lift, minlength=len(uniq))
        return cls(owner_ids, uniq >> _SHIFT, uniq & ((1 << _SHIFT) - 1), count, total, through_day)

    def merged(self, other: CallEvents, *, complete: bool = True) -> CallEvents:
        """These calls and `other`'s (owners matched by id). `complete`: `other` holds every deal's
        calls after `through_day`, so the result is complete through the later day; otherwise (some
        deals' calls only) it stays complete through this set's day."""
        ids = list(self.owner_ids)
        code_of = {o: i for i, o in enumerate(ids)}
        for o in other.owner_ids:
            if o not in code_of:
                code_of[o] = len(ids)
                ids.append(o)
        remap = np.array([code_of[o] for o in other.owner_ids], dtype=np.int64)
        return self._grouped(
            tuple(ids),
            np.concatenate((self.owner, remap[other.owner] if len(other.owner) else other.owner)),
            np.concatenate((self.day, other.day)),
            np.concatenate((self.calls, other.calls)),
            np.concatenate((self.lift, other.lift)),
            max(self.through_day, other.through_day) if complete else self.through_day,
        )

    def check(self) -> None:
        """Raise ValueError unless the arrays hold one entry per (owner, day), sorted, owners known."""
        if len({len(self.owner), len(self.day), len(self.calls), len(self.lift)}) != 1:
            raise ValueError("forecast calls have mismatched lengths")
        if len(self.owner) and (self.owner.min() < 0 or self.owner.max() >= len(self.owner_ids)):
            raise ValueError("forecast calls point at an unknown owner")
        keys = (self.owner << _SHIFT) + self.day
        if np.any(np.diff(keys) <= 0) or np.any(self.day < 0) or np.any(self.day >= 1 << _SHIFT):
            raise ValueError("forecast calls are not sorted by owner and day")

    def codes(self, owner_ids: Sequence[str]) -> np.ndarray:
        """Owner codes of `owner_ids` (-1: no calls known)."""
        code_of = {o: i for i, o in enumerate(self.owner_ids)}
        return np.fromiter((code_of.get(o, -1) for o in owner_ids), dtype=np.int64, count=len(owner_ids))

    def habit(self, who: np.ndarray, days: np.ndarray, prior: float = CALL_HABIT_PRIOR) -> np.ndarray:
        """Average lift of owners `who` (codes, -1 unknown) over their calls on or before each day,
        shrunk toward 0 by `prior` pseudo-calls."""
        who, days, back = _distinct_asks(who, np.asarray(days, dtype=np.int64))
        keys = (self.owner << _SHIFT) + self.day
        cum_calls = np.concatenate(([0], np.cumsum(self.calls))).astype(np.float64)
        cum_lift = np.concatenate(([0.0], np.cumsum(self.lift)))
        known = who >= 0
        safe = np.where(known, who, 0)
        start = np.searchsorted(keys, safe << _SHIFT, side="left")
        stop = np.searchsorted(keys, (safe << _SHIFT) + np.asarray(days, dtype=np.int64), side="right")
        n = np.where(known, cum_calls[stop] - cum_calls[start], 0.0)
        total = np.where(known, cum_lift[stop] - cum_lift[start], 0.0)
        habit = total / (n + prior) if prior > 0 else np.where(n > 0, total / np.maximum(n, 1.0), 0.0)
        return habit if back is None else habit[back]


@dataclass(frozen=True)
class FeatureContext:
    """What features need beyond the deal: stages, teams, medians, past outcomes, the calendar."""

    stages: StageTable
    calendar: FiscalCalendar
    owner_team: Mapping[str, str | None]
    """Owner id -> team key (the owner's team, else their manager)."""
    win_events: WinEvents
    stage_median_days: np.ndarray
    """Median days a deal spends in each stage (by stage code), NaN where unknown."""
    call_events: CallEvents = field(default_factory=CallEvents.empty)
    """The owners' forecast calls (their habit); scoring adds the calls made since they were taken."""
    attributes: Mapping[str, Kind] = field(default_factory=dict)
    """Kept CRM attributes that become features, with their kind."""
    disabled: frozenset[str] = frozenset()
    win_rate_prior: float = 10.0
    activity_window_days: int = 30

    @property
    def specs(self) -> tuple[FeatureSpec, ...]:
        """Enabled features in matrix column order."""
        attrs = tuple(
            FeatureSpec(f"attr:{k}", kind, f"attr:{k}", f"CRM field {k!r}")
            for k, kind in sorted(self.attributes.items())
        )
        return tuple(
            s for s in FEATURES + attrs if s.name not in self.disabled and s.group not in self.disabled
        )


def team_key(owner: Owner) -> str | None:
    """The team a deal's owner belongs to: the team label, else the manager."""
    if owner.team:
        return f"team:{owner.team}"
    if owner.manager_id:
        return f"manager:{owner.manager_id}"
    return None


def attribute_kinds(
    histories: Iterable[DealHistory], disabled: frozenset[str] = frozenset()
) -> dict[str, Kind]:
    """Kept CRM attributes and whether each is numeric (all values numbers) or categorical."""
    kinds: dict[str, Kind] = {}
    for h in histories:
        for key, value in h.deal.attributes.items():
            is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kinds.get(key) == "cat":
                continue
            kinds[key] = "num" if is_num else "cat"
    return {k: v for k, v in kinds.items() if f"attr:{k}" not in disabled}


# --------------------------------------------------------------------------------------------------
# Flattening histories into row arrays
# --------------------------------------------------------------------------------------------------


@dataclass
class Flat:
    """All history rows of a list of deals, with running counts per row (row i = state after change i)."""

    n_deals: int
    row_start: np.ndarray
    row_key: np.ndarray
    row_day: np.ndarray
    row_stage: np.ndarray
    row_entered: np.ndarray
    row_changes: np.ndarray
    row_back: np.ndarray
    row_pushes: np.ndarray
    row_push_days: np.ndarray
    row_amount: np.ndarray
    row_amount_changes: np.ndarray
    row_first_amount: np.ndarray
    row_close: np.ndarray
    row_category: np.ndarray
    first_day: np.ndarray
    act_start: np.ndarray
    act_key: np.ndarray
    act_day: np.ndarray
    owner_ids: list[str]
    owner: np.ndarray
    """Each deal's owner as a code into `owners` (its distinct owner ids, in order of appearance)."""
    owners: list[str]
    deal_ids: list[str]
    deal_closed_day: np.ndarray
    """Day the CRM record says the deal closed (NaN if open): used when the history lacks the close row."""
    deal_won: np.ndarray
    statics: dict[str, tuple[np.ndarray, list[str]]]
    attr_num: dict[str, np.ndarray]
    attr_cat: dict[str, tuple[np.ndarray, list[str]]]


_UNDATED_SECONDS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
"""When the one history row given to a deal without any happened: day 1, before any as-of day."""


def _segment_cumsum(values: np.ndarray, start: np.ndarray, row_deal: np.ndarray) -> np.ndarray:
    """Running sum of `values` within each deal's rows (rows are grouped by deal)."""
    total = np.cumsum(values, dtype=np.float64)
    before = np.concatenate(([0.0], total))[start[:-1]]
    return total - before[row_deal]


def _shift(values: np.ndarray, fill: float) -> np.ndarray:
    """The previous row's value (`fill` for the first row)."""
    return (
        np.concatenate(([fill], values[:-1])).astype(np.float64) if len(values) else values.astype(np.float64)
    )


class _Codes(dict):
    """Stage id -> code; an id not seen before gets the next free code (so changes still show)."""

    def __missing__(self, key: str) -> int:
        code = self[key] = len(self)
        return code


def _day(seconds: np.ndarray) -> np.ndarray:
    """UTC day ordinals (floats, NaN stays NaN) of times in seconds since the epoch."""
    return np.floor(seconds / 86400.0) + _EPOCH


def _index(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Codes (in order of first appearance) and the distinct values behind them."""
    vocab = list(dict.fromkeys(values))
    code_of = {v: i for i, v in enumerate(vocab)}
    return np.fromiter(map(code_of.__getitem__, values), dtype=np.int64, count=len(values)), vocab


def _first_appearance(codes: np.ndarray, vocab: list[str]) -> tuple[np.ndarray, list[str]]:
    """`codes` into `vocab` recoded (with the vocabulary) in order of first appearance, as `_encode`
    codes the values they stand for."""
    present = codes[codes >= 0]
    seen, first = np.unique(present, return_index=True)
    order = seen[np.argsort(first)]
    recode = np.full(len(vocab) + 1, -1, dtype=np.int64)  # the last entry: -1 stays -1
    recode[order] = np.arange(len(order))
    return recode[codes], [vocab[i] for i in order.tolist()]


def _encode(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Codes (in order of first appearance, -1 for missing/blank) and the strings behind them."""
    vocab = {v: i for i, v in enumerate(v for v in dict.fromkeys(values) if v)}
    codes = np.fromiter(map(vocab.get, values, repeat(-1)), dtype=np.int64, count=len(values))
    return codes, list(vocab)


def _with_undated_rows(cols: HistoryColumns, undated: np.ndarray, row_start: np.ndarray, stage_codes: _Codes):
    """The history rows, with the current record as the one row (at day 1) of each deal that has none:
    (seconds, stage codes, amounts, close days, category codes)."""
    sid = np.fromiter(map(stage_codes.__getitem__, cols.change_stage), dtype=np.int64, count=len(cols.change_stage))
    rows = (cols.change_at, sid, cols.change_amount, cols.change_close, cols.change_category)
    if not undated.any():
        return rows
    where = row_start[:-1][undated]
    dated = np.ones(int(row_start[-1]), dtype=bool)
    dated[where] = False
    current_sid = np.fromiter(
        map(stage_codes.__getitem__, [cols.stage_id[i] for i in np.flatnonzero(undated).tolist()]),
        dtype=np.int64,
        count=len(where),
    )
    current = (
        np.full(len(where), _UNDATED_SECONDS), current_sid, cols.amount[undated], cols.close_date[undated],
        cols.category[undated],
    )
    out = []
    for row_values, deal_values in zip(rows, current, strict=True):
        merged = np.empty(len(dated), dtype=row_values.dtype)
        merged[dated] = row_values
        merged[where] = deal_values
        out.append(merged)
    return tuple(out)


def flatten(histories: Sequence[DealHistory], stages: StageTable, attributes: Mapping[str, Kind]) -> Flat:
    """`flatten_columns` of `DealHistory` objects."""
    return flatten_columns(HistoryColumns.of(histories), stages, attributes)


def flatten_columns(cols: HistoryColumns, stages: StageTable, attributes: Mapping[str, Kind]) -> Flat:
    """Row arrays of the deals in `cols` (stage codes from `stages`, attribute columns for `attributes`).

    Row i holds the deal's state right after its i-th history row, with running counts (stage changes,
    backward moves, close-date pushes, amount changes) and the day the current stage was entered,
    following the rules of `cockpit.models.snapshot_of`. Everything but the stage-id lookup is numpy.
    """
    nan = math.nan
    n = len(cols)
    undated = cols.change_counts == 0
    counts = np.maximum(cols.change_counts, 1)
    row_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    m = int(row_start[-1])
    row_deal = np.repeat(np.arange(n, dtype=np.int64), counts)
    ids = _Codes(stages.code_map())
    n_known = len(ids)
    ts, sid, amount, close, category = _with_undated_rows(cols, undated, row_start, ids)
    if m > 1 and np.any((np.diff(ts) < 0) & (row_deal[1:] == row_deal[:-1])):
        order = np.lexsort((ts, row_deal))  # a history not oldest-first: sort it (stable)
        ts, sid, close, amount, category = ts[order], sid[order], close[order], amount[order], category[order]
    day = _day(ts).astype(np.int64)
    stage = np.where(sid < n_known, sid, -1)

    first_row = np.zeros(m, dtype=bool)
    first_row[row_start[:-1][counts > 0]] = True
    same = ~first_row
    changed = same & (sid != _shift(sid, -1))
    stage_order = np.where(stage >= 0, stages.order[np.where(stage >= 0, stage, 0)], nan)
    backward = changed & (stage_order < _shift(stage_order, nan))
    spell = np.where(first_row | changed, np.arange(m), 0)
    entered = day[np.maximum.accumulate(spell)].astype(np.float64) if m else day.astype(np.float64)
    prev_close = _shift(close, nan)
    pushed = same & (close > prev_close)
    prev_amount = _shift(amount, nan)
    amount_changed = same & (amount != prev_amount) & ~(np.isnan(amount) & np.isnan(prev_amount))

    first_day = np.fmin(day[row_start[:-1]].astype(np.float64), _day(cols.created_at)) if n else np.zeros(0)
    first_day = np.where(undated, nan, first_day)
    entered = np.where(undated[row_deal], nan, entered)
    act_counts = cols.activity_counts
    act_start = np.concatenate(([0], np.cumsum(act_counts))).astype(np.int64)
    statics = {
        "lead_source": _encode(cols.lead_source),
        "type": _encode(cols.type),
        "currency": _encode(cols.currency),
    }
    attr_num: dict[str, np.ndarray] = {}
    attr_cat: dict[str, tuple[np.ndarray, list[str]]] = {}
    by_set = [tuple(map(a.get, attributes)) for a in cols.attribute_sets]  # each distinct set once
    by_key = list(zip(*by_set)) if by_set else [()] * len(attributes)
    for (k, kind), values in zip(attributes.items(), by_key, strict=True):
        if kind == "num":
            attr_num[k] = np.array(
                [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else nan for v in values],
                dtype=np.float64,
            )[cols.attribute_set]
        else:
            codes, vocab = _encode([None if v is None else str(v) for v in values])
            attr_cat[k] = _first_appearance(codes[cols.attribute_set], vocab)

    owner, owners = _index(cols.owner_ids)
    act_key = (np.repeat(np.arange(n, dtype=np.int64), act_counts) << _SHIFT) + cols.activity_day
    # Activities of one deal may come unsorted; sort within each deal (keys embed the deal index).
    act_key.sort()
    return Flat(
        n_deals=n,
        row_start=row_start,
        row_key=(row_deal << _SHIFT) + day,
        row_day=day.astype(np.float64),
        row_stage=stage,
        row_entered=entered,
        row_changes=_segment_cumsum(changed, row_start, row_deal),
        row_back=_segment_cumsum(backward, row_start, row_deal),
        row_pushes=_segment_cumsum(pushed, row_start, row_deal),
        row_push_days=_segment_cumsum(np.where(pushed, close - prev_close, 0.0), row_start, row_deal),
        row_amount=amount,
        row_amount_changes=_segment_cumsum(amount_changed, row_start, row_deal),
        row_first_amount=amount[row_start[:-1]][row_deal] if n else amount,
        row_close=close,
        row_category=category,
        first_day=first_day,
        act_start=act_start,
        act_key=act_key,
        act_day=act_key & ((1 << _SHIFT) - 1),
        owner_ids=list(cols.owner_ids),
        owner=owner,
        owners=owners,
        deal_ids=list(cols.deal_ids),
        deal_closed_day=_day(cols.closed_at),
        deal_won=cols.is_won,
        statics=statics,
        attr_num=attr_num,
        attr_cat=attr_cat,
    )


# --------------------------------------------------------------------------------------------------
# Feature frames
# --------------------------------------------------------------------------------------------------


@dataclass
class FeatureFrame:
    """Features of (deal, as-of day) pairs: a float matrix whose categorical columns hold codes.

    `categories[name]` lists the strings behind the codes of a categorical column (NaN = missing).
    Rows are the requested (deal, day) pairs where the deal existed on that day.
    """

    specs: tuple[FeatureSpec, ...]
    values: np.ndarray
    categories: dict[str, list[str]]
    deal: np.ndarray
    """Index into the histories the frame was built from."""
    day: np.ndarray
    """As-of day ordinal of each row."""
    stage: np.ndarray
    """Stage code of each row (-1 for a stage no pipeline knows)."""
    is_open: np.ndarray
    """True where the deal was open (not in a closed stage) at the end of the as-of day."""
    quarter_end: np.ndarray
    """Exclusive end (day ordinal) of the fiscal quarter of each as-of day."""
    close_day: np.ndarray
    """Expected close date (day ordinal, NaN if none) as of each row's day."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def subset(self, mask: np.ndarray) -> FeatureFrame:
        """The rows where `mask` is true (or at the given indices)."""
        return FeatureFrame(
            self.specs,
            self.values[mask],
            self.categories,
            self.deal[mask],
            self.day[mask],
            self.stage[mask],
            self.is_open[mask],
            self.quarter_end[mask],
            self.close_day[mask],
        )

    def row_dict(self, i: int) -> dict[str, float | str | None]:
        """Row `i` as {feature: number, or category string / None when missing}."""
        out: dict[str, float | str | None] = {}
        for j, spec in enumerate(self.specs):
            v = float(self.values[i, j])
            if spec.kind == "cat":
                out[spec.name] = None if math.isnan(v) else self.categories[spec.name][int(v)]
            else:
                out[spec.name] = v
        return out


def quarter_ends(days: np.ndarray, calendar: FiscalCalendar) -> np.ndarray:
    """Exclusive end of the fiscal quarter of each day ordinal."""
    uniq, inverse = np.unique(days.astype(np.int64), return_inverse=True)
    ends = np.array(
        [calendar.quarter_of(date.fromordinal(int(d))).end.toordinal() for d in uniq], dtype=np.int64
    )
    return ends[inverse] if len(uniq) else np.zeros(0, dtype=np.int64)


def build_frame(flat: Flat, deal_index: np.ndarray, days: np.ndarray, ctx: FeatureContext) -> FeatureFrame:
    """Features of deal `deal_index[k]` of `flat` as of day ordinal `days[k]`, for every k.

    Pairs where the deal did not exist yet (no history row on or before the day) are dropped; the
    rest keep their order. This is the one implementation behind training examples, scoring and
    `features_at`. `flat` must come from `flatten(..., ctx.stages, ctx.attributes)`.
    """
    deal_index = np.asarray(deal_index, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    if len(days) and int(days.max()) >= 1 << _SHIFT:
        raise ValueError("as-of dates after the year 2870 are not supported")
    pos = np.searchsorted(flat.row_key, (deal_index << _SHIFT) + days, side="right") - 1
    exists = pos >= flat.row_start[deal_index]
    deal_index, days, pos = deal_index[exists], days[exists], pos[exists]
    stage = flat.row_stage[pos]
    known = stage >= 0
    st = ctx.stages
    safe = np.where(known, stage, 0)
    qend = quarter_ends(days, ctx.calendar)

    cols = _stage_columns(ctx, stage, known, safe)
    cols.update(_history_columns(flat, ctx, deal_index, days, pos, stage, known, safe, qend))
    categories = _static_columns(flat, ctx, deal_index, days, cols)
    undated = np.isnan(flat.first_day[deal_index])
    if undated.any():
        for name in ("days_in_stage", "days_in_stage_ratio", "deal_age", "days_since_activity"):
            cols[name] = np.where(undated, np.nan, cols[name])
    specs = ctx.specs
    values = np.empty((len(days), len(specs)), dtype=np.float64)
    for j, spec in enumerate(specs):
        values[:, j] = cols[spec.name]
    is_open = ~np.where(known, st.is_closed[safe], False)
    return FeatureFrame(
        specs, values, categories, deal_index, days, stage, is_open, qend, flat.row_close[pos]
    )


def _stage_columns(
    ctx: FeatureContext, stage: np.ndarray, known: np.ndarray, safe: np.ndarray
) -> dict[str, np.ndarray]:
    st = ctx.stages
    return {
        "pipeline": np.where(known, st.pipeline_code[safe], np.nan),
        "stage": np.where(known, stage, np.nan),
        "stage_order": np.where(known, st.order[safe], np.nan),
        "stage_probability": np.where(known, st.probability[safe], np.nan),
    }


def _history_columns(
    flat: Flat,
    ctx: FeatureContext,
    deal_index: np.ndarray,
    days: np.ndarray,
    pos: np.ndarray,
    stage: np.ndarray,
    known: np.ndarray,
    safe: np.ndarray,
    qend: np.ndarray,
) -> dict[str, np.ndarray]:
    """Features from the deal's history rows up to the day (`pos`: its last row on or before it)."""
    nan = np.nan
    d = days.astype(np.float64)
    cols: dict[str, np.ndarray] = {}
    days_in = d - flat.row_entered[pos]
    cols["days_in_stage"] = days_in
    median = np.where(known, ctx.stage_median_days[safe] if len(ctx.stage_median_days) else nan, nan)
    cols["days_in_stage_ratio"] = days_in / np.where(median > 0, median, nan)
    cols["deal_age"] = d - flat.first_day[deal_index]
    cols["stage_changes"] = flat.row_changes[pos]
    cols["backward_moves"] = flat.row_back[pos]
    forward = flat.row_changes[pos] - flat.row_back[pos]
    cols["stage_velocity"] = 30.0 * forward / np.maximum(cols["deal_age"], 1.0)
    cols["close_pushes"] = flat.row_pushes[pos]
    cols["close_push_days"] = flat.row_push_days[pos]
    amount = flat.row_amount[pos]
    cols["amount"] = amount
    cols["amount_changes"] = flat.row_amount_changes[pos]
    first_amount = flat.row_first_amount[pos]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["amount_change_pct"] = np.where(first_amount > 0, amount / first_amount - 1.0, nan)
    close = flat.row_close[pos]
    cols["days_to_close"] = close - d
    cols["close_date_past"] = np.where(np.isnan(close), nan, (close < d).astype(np.float64))
    cols["close_in_quarter"] = np.where(np.isnan(close), nan, (close < qend).astype(np.float64))
    cols["days_left_in_quarter"] = (qend - days).astype(np.float64)
    cols.update(_activity(flat, deal_index, days, pos, ctx.activity_window_days))
    cols["forecast_category"] = _codes(flat.row_category[pos])
    return cols


def _static_columns(
    flat: Flat, ctx: FeatureContext, deal_index: np.ndarray, days: np.ndarray, cols: dict[str, np.ndarray]
) -> dict[str, list[str]]:
    """Add the deal's static fields and its owner's and team's past win rates to `cols`; return the
    strings behind every categorical column's codes."""
    owner, team = _owner_team_codes(flat, ctx)
    ev = ctx.win_events
    cols["owner_win_rate"] = ev.rates(owner[deal_index], days, "owner", ctx.win_rate_prior)
    cols["owner_closed_deals"] = ev.counts(owner[deal_index], days, "owner")[0]
    cols["team_win_rate"] = ev.rates(team[deal_index], days, "team", ctx.win_rate_prior)
    habit = ctx.call_events.habit(ctx.call_events.codes(flat.owners)[flat.owner[deal_index]], days)
    cols["owner_call_habit"] = habit
    stage, call = cols["stage"], cols["forecast_category"]
    known = ~np.isnan(stage) & ~np.isnan(call)
    default = ctx.stages.category_rank[np.where(known, stage, 0).astype(np.int64)]
    lift = np.where(known, _RANK_OF_CODE[np.where(known, call, 0).astype(np.int64)] - default, np.nan)
    cols["call_vs_habit"] = lift - habit
    for name in ("lead_source", "type", "currency"):
        cols[name] = _codes(flat.statics[name][0][deal_index])
    categories: dict[str, list[str]] = {
        "pipeline": list(ctx.stages.pipeline_ids),
        "stage": list(ctx.stages.ids),
        "forecast_category": list(_CATEGORIES),
        **{name: flat.statics[name][1] for name in ("lead_source", "type", "currency")},
    }
    for k, values in flat.attr_num.items():
        cols[f"attr:{k}"] = values[deal_index]
    for k, (codes, vocab) in flat.attr_cat.items():
        cols[f"attr:{k}"] = _codes(codes[deal_index])
        categories[f"attr:{k}"] = vocab
    return categories


def _owner_team_codes(flat: Flat, ctx: FeatureContext) -> tuple[np.ndarray, np.ndarray]:
    """Owner and team codes (into the context's win events, -1 unknown) of each deal of `flat`."""
    owner_code = {o: i for i, o in enumerate(ctx.win_events.owner_ids)}
    team_code = {t: i for i, t in enumerate(ctx.win_events.team_ids)}
    owner = np.array([owner_code.get(o, -1) for o in flat.owners], dtype=np.int64)
    teams = [ctx.owner_team.get(o) for o in flat.owners]
    team = np.array([team_code.get(t, -1) if t is not None else -1 for t in teams], dtype=np.int64)
    return owner[flat.owner], team[flat.owner]


def _codes(codes: np.ndarray) -> np.ndarray:
    return np.where(codes >= 0, codes.astype(np.float64), np.nan)


def _activity(
    flat: Flat, deal_index: np.ndarray, days: np.ndarray, pos: np.ndarray, window: int
) -> dict[str, np.ndarray]:
    """Days since the last touch (activity or history change) and activities within the window."""
    key = (deal_index << _SHIFT) + days
    last = np.searchsorted(flat.act_key, key, side="right") - 1
    has = last >= flat.act_start[deal_index]
    act_day = flat.act_day if len(flat.act_day) else np.zeros(1, dtype=np.int64)
    last_act = np.where(has, act_day[np.maximum(last, 0)].astype(np.float64), np.nan)
    last_touch = np.fmax(last_act, np.where(flat.row_day[pos] > _UNDATED, flat.row_day[pos], np.nan))
    lo = np.searchsorted(flat.act_key, key - window, side="right")
    count = np.maximum(last + 1 - lo, 0).astype(np.float64)
    return {"days_since_activity": days - last_touch, "activities_30d": count}


# --------------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------------


def stage_medians(flat: Flat, stages: StageTable, before_day: int | None = None) -> np.ndarray:
    """Median days of completed spells in each open stage that ended before `before_day`, by stage code."""
    n = len(flat.row_day)
    if n < 2:
        return np.full(len(stages.ids), np.nan)
    same_deal = (flat.row_key[1:] >> _SHIFT) == (flat.row_key[:-1] >> _SHIFT)
    ended = same_deal & (flat.row_changes[1:] > flat.row_changes[:-1])
    end_day = flat.row_day[1:]
    if before_day is not None:
        ended &= end_day < before_day
    stage = flat.row_stage[:-1]
    ended &= stage >= 0
    length = (end_day - flat.row_entered[:-1])[ended]
    stage = stage[ended]
    out = np.full(len(stages.ids), np.nan)
    for code in np.unique(stage):
        if not stages.is_closed[code]:
            out[code] = float(np.median(length[stage == code]))
    return out


def make_context(
    pipelines: Sequence[Pipeline],
    owners: Sequence[Owner],
    calendar: FiscalCalendar,
    *,
    closed: Iterable[tuple[int, str, bool]] = (),
    medians: np.ndarray | None = None,
    calls: CallEvents | None = None,
    attributes: Mapping[str, Kind] | None = None,
    disabled: frozenset[str] = frozenset(),
    win_rate_prior: float = 10.0,
    activity_window_days: int = 30,
) -> FeatureContext:
    """A feature context. `closed` lists (close day, owner id, won) of the deals known to have closed;
    `calls` holds the owners' forecast calls (none: every owner's habit is 0)."""
    stages = StageTable.of(pipelines)
    owner_team = {o.id: team_key(o) for o in owners}
    events = WinEvents.build((day, owner_id, owner_team.get(owner_id), won) for day, owner_id, won in closed)
    return FeatureContext(
        stages=stages,
        calendar=calendar,
        owner_team=owner_team,
        win_events=events,
        stage_median_days=medians if medians is not None else np.full(len(stages.ids), np.nan),
        call_events=calls if calls is not None else CallEvents.empty(),
        attributes=dict(attributes or {}),
        disabled=disabled,
        win_rate_prior=win_rate_prior,
        activity_window_days=activity_window_days,
    )


def features_at(history: DealHistory, as_of: date, context: FeatureContext) -> dict[str, float | str | None]:
    """The deal's features as they stood at the end of `as_of` (the same code path as training).

    Raises ValueError if the deal had no history on or before `as_of`.
    """
    flat = flatten([history], context.stages, context.attributes)
    frame = build_frame(flat, np.array([0]), np.array([as_of.toordinal()]), context)
    if not len(frame.day):
        raise ValueError(f"deal {history.deal.id!r} has no history on or before {as_of.isoformat()}")
    return frame.row_dict(0)
