"""Deals with their histories as columns: what the win model reads, without an object per row.

A `DealHistory` per deal is the right shape for a screen or a test, and the wrong one for scoring
100,000 deals: reading half a million `StageChange` objects back from the store, and then every field
of each, costs more than the model itself. The store reads the same facts straight into columns
(`Store.history_columns`), and `HistoryColumns.of` puts `DealHistory` objects in the same shape, so
the model has one input and both sources are checked against each other in the tests.

Times are UTC seconds since the epoch and dates are day ordinals (`date.toordinal`), as floats with
NaN for a missing value; forecast categories are their index in `ForecastCategory` (-1 for none).
Deals come in the order given; each deal's history rows and activity days follow in the order of the
deals, oldest first within a deal (as `DealHistory` keeps them).

Importing this module imports numpy, so `cockpit.models` does not re-export it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import chain, repeat
from operator import attrgetter
from typing import Any

import numpy as np

from cockpit.models.pipeline import ForecastCategory
from cockpit.models.score import DealScore, Reason
from cockpit.models.snapshot import DealHistory
from cockpit.models.trusted import construct_trusted, gc_paused

CATEGORY_CODE: dict[object, int] = {c: i for i, c in enumerate(ForecastCategory)}
"""Forecast category (the enum member or its value) -> code; absent: -1."""
CATEGORY_CODE.update({c.value: i for i, c in enumerate(ForecastCategory)})


@dataclass
class HistoryColumns:
    """Deals (one entry each) with their history rows and activity days (one entry each, grouped by deal)."""

    deal_ids: list[str]
    owner_ids: list[str]
    created_at: np.ndarray
    """Seconds; NaN where the CRM gave no creation time."""
    is_closed: np.ndarray
    closed_at: np.ndarray
    """Seconds; NaN for an open deal or a missing time."""
    is_won: np.ndarray
    lead_source: list[str | None]
    type: list[str | None]
    currency: list[str]
    attribute_set: np.ndarray
    """Each deal's CRM attributes, as a code into `attribute_sets`."""
    attribute_sets: list[Mapping[str, Any]]
    """Distinct attribute sets: many deals share one (an account's region and industry), and the
    model reads each set once. Read them, do not change them."""
    stage_id: list[str]
    """The deal's current record (the one history row of a deal without any)."""
    amount: np.ndarray
    close_date: np.ndarray
    category: np.ndarray
    change_counts: np.ndarray
    """History rows per deal."""
    change_at: np.ndarray
    change_stage: list[str]
    change_amount: np.ndarray
    change_close: np.ndarray
    change_category: np.ndarray
    activity_counts: np.ndarray
    activity_day: np.ndarray
    """Day ordinals (int64)."""

    def __len__(self) -> int:
        return len(self.deal_ids)

    def attributes(self) -> list[Mapping[str, Any]]:
        """Each deal's attributes."""
        sets = self.attribute_sets
        return [sets[i] for i in self.attribute_set.tolist()]

    @classmethod
    def of(cls, histories: Sequence[DealHistory]) -> HistoryColumns:
        """The columns of `histories`. Each deal is read once for all its fields, while it is in the
        CPU cache: reading one field at a time over 100,000s of objects costs a cache miss per object
        and field. Values are converted with `map` over a C callable where none is missing. The
        garbage collector is paused meanwhile: the columns are a million acyclic tuples and values,
        and each collection they set off would scan every history again."""
        with gc_paused():
            deals, changes, activities = _columns(_HISTORY_PARTS, histories, 3)
            (
                ids, owners, created, closed, closed_at, won, source, kind, currency, attributes,
                stage, amount, close, category,
            ) = _columns(_DEAL_FIELDS, deals, 14)
            rows: list = list(chain.from_iterable(changes))
            row_fields = _columns(_CHANGE_FIELDS, rows, 5)
        is_closed = np.fromiter(closed, dtype=bool, count=len(deals))
        return cls(
            deal_ids=list(ids),
            owner_ids=list(owners),
            created_at=seconds(created),
            is_closed=is_closed,
            closed_at=np.where(is_closed, seconds(closed_at), math.nan),
            is_won=np.fromiter(won, dtype=bool, count=len(deals)),
            lead_source=list(source),
            type=list(kind),
            currency=list(currency),
            **attribute_codes(attributes),
            stage_id=list(stage),
            amount=floats(amount),
            close_date=ordinals(close),
            category=category_codes(category),
            change_counts=np.fromiter(map(len, changes), dtype=np.int64, count=len(deals)),
            change_at=seconds(row_fields[0]),
            change_stage=list(row_fields[1]),
            change_amount=floats(row_fields[2]),
            change_close=ordinals(row_fields[3]),
            change_category=category_codes(row_fields[4]),
            activity_counts=np.fromiter(map(len, activities), dtype=np.int64, count=len(deals)),
            activity_day=np.fromiter(
                map(date.toordinal, chain.from_iterable(activities)),
                dtype=np.int64,
                count=sum(map(len, activities)),
            ),
        )


_HISTORY_PARTS = attrgetter("deal", "changes", "activities")
_DEAL_FIELDS = attrgetter(
    "id", "owner_id", "created_at", "is_closed", "closed_at", "is_won", "lead_source", "type", "currency",
    "attributes", "stage_id", "amount", "close_date", "forecast_category",
)
_CHANGE_FIELDS = attrgetter("changed_at", "stage_id", "amount", "close_date", "forecast_category")


def _columns(getter: attrgetter, objects: Sequence[object], width: int) -> list[tuple]:
    """`width` fields of every object as columns, reading each object once."""
    return list(zip(*map(getter, objects))) if objects else [()] * width


def attribute_codes(attributes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`attribute_set` and `attribute_sets` of the deals' attribute mappings: one set per distinct
    object (objects of a store read are shared by the deals with equal attributes)."""
    distinct: dict[int, Mapping[str, Any]] = {}
    for a in attributes:
        distinct.setdefault(id(a), a)
    code_of = {key: i for i, key in enumerate(distinct)}
    codes = np.fromiter(map(code_of.__getitem__, map(id, attributes)), dtype=np.int64, count=len(attributes))
    return {"attribute_set": codes, "attribute_sets": list(distinct.values())}


def seconds(moments: Sequence[datetime | None]) -> np.ndarray:
    """Moments as UTC seconds since the epoch, NaN for a missing one."""
    if None in moments:
        return np.array([math.nan if t is None else t.timestamp() for t in moments], dtype=np.float64)
    return np.fromiter(map(datetime.timestamp, moments), dtype=np.float64, count=len(moments))


def ordinals(days: Sequence[date | None]) -> np.ndarray:
    """Day ordinals as floats, NaN for a missing date."""
    if None in days:
        return np.array([math.nan if d is None else d.toordinal() for d in days], dtype=np.float64)
    return np.fromiter(map(date.toordinal, days), dtype=np.float64, count=len(days))


def floats(values: Sequence[object]) -> np.ndarray:
    """Numbers (Decimal, int, float, or their text) as floats, NaN for a missing one."""
    try:
        return np.fromiter(map(float, values), dtype=np.float64, count=len(values))  # type: ignore[arg-type]
    except TypeError:  # a None among them
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]


def category_codes(values: Sequence[object]) -> np.ndarray:
    """Forecast categories (members or values) as codes, -1 for none."""
    return np.fromiter(map(CATEGORY_CODE.get, values, repeat(-1)), dtype=np.int64, count=len(values))


@dataclass
class ReasonColumns:
    """The reasons of many scores: score k's are the distinct reasons `index[start[k]:start[k + 1]]`.

    Most reasons recur across deals ("close date never pushed: +3 pts"), so each distinct one is kept
    once, as a feature, a text and its points.
    """

    start: np.ndarray
    index: np.ndarray
    feature: list[str]
    text: list[str]
    points: list[float]

    @classmethod
    def none(cls, n: int) -> ReasonColumns:
        """No reasons for `n` scores."""
        return cls(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), [], [], [])

    def __len__(self) -> int:
        return len(self.start) - 1

    def objects(self) -> list[tuple[Reason, ...]]:
        """Each score's reasons as `Reason` objects (equal reasons are one object)."""
        made = [
            construct_trusted(Reason, {"feature": f, "text": t, "points": p})
            for f, t, p in zip(self.feature, self.text, self.points, strict=True)
        ]
        flat = [made[i] for i in self.index.tolist()]
        bounds = self.start.tolist()
        return [tuple(flat[a:b]) for a, b in zip(bounds, bounds[1:])]

    def json(self) -> list[str]:
        """Each score's reasons as the JSON list `json.dumps([r.model_dump() for r in reasons],
        ensure_ascii=False)` writes, each distinct reason encoded once."""
        texts = {t: json.dumps(t, ensure_ascii=False) for t in set(self.text)}
        features = {f: json.dumps(f, ensure_ascii=False) for f in set(self.feature)}
        encoded = [
            f'{{"feature": {features[f]}, "text": {texts[t]}, "points": {float(p)!r}}}'
            for f, t, p in zip(self.feature, self.text, self.points, strict=True)
        ]
        flat = [encoded[i] for i in self.index.tolist()]
        bounds = self.start.tolist()
        return ["[" + ", ".join(flat[a:b]) + "]" for a, b in zip(bounds, bounds[1:])]


@dataclass
class ScoreColumns:
    """The scores of many deals as of one day, by one model, as columns (`DealScore`s without an
    object per score and per reason: the store writes them as they are)."""

    as_of: date
    model_version: str
    deal_ids: list[str]
    p_won: np.ndarray
    p_in_quarter: np.ndarray
    reasons: ReasonColumns

    def __len__(self) -> int:
        return len(self.deal_ids)

    def to_scores(self) -> list[DealScore]:
        """The scores as `DealScore` objects."""
        as_of, version = self.as_of, self.model_version
        return [
            construct_trusted(
                DealScore,
                {
                    "opportunity_id": deal,
                    "as_of": as_of,
                    "p_won": won,
                    "p_in_quarter": quarter,
                    "reasons": reasons,
                    "model_version": version,
                },
            )
            for deal, won, quarter, reasons in zip(
                self.deal_ids, self.p_won.tolist(), self.p_in_quarter.tolist(), self.reasons.objects(), strict=True
            )
        ]
