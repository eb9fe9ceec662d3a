"""A trained win model: turns open deals into calibrated probabilities with reasons.

One `TargetModel` per target (won eventually, won within the quarter). Each is either the fitted
estimator (binned trees or logistic tables, then calibration, then shrinkage toward the stage's
historical rate where the stage has few training deals) or, when the estimator did not beat it on the
test split, one of the baselines.

Reasons are faithful to the model: for every reason group (days in stage, close-date pushes, activity,
...) the deal is scored again with that group's values replaced by a typical open deal's values in the
same stage (the per-stage median, or the most common category), and the reason's points are the
difference in the final probability. Only the trees that split on the group are re-evaluated, and
only for deals whose values differ from the typical ones, so reasons for 100,000 deals take a few
batched predictions rather than a loop per deal.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from operator import itemgetter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, NamedTuple

import numpy as np

from cockpit.models import DealHistory, DealScore, Owner
from cockpit.models.columns import HistoryColumns, ReasonColumns, ScoreColumns
from cockpit.models.trusted import gc_paused
from cockpit.scoring import counterfactual
from cockpit.scoring.baselines import CRM, STAGE_RATE, StageRates, crm_probability
from cockpit.scoring.estimators import Calibrator, Encoder, LinearModel, TreeModel
from cockpit.scoring.features import (
    CONTEXT_GROUPS,
    CallEvents,
    FeatureContext,
    FeatureFrame,
    Flat,
    WinEvents,
    build_frame,
    day_of,
    flatten,
    flatten_columns,
    team_key,
)
from cockpit.scoring.reasons import describe

MODEL = "model"
OWNER_GROUPS = ("owner", "team", "call_habit")
"""Reason groups whose text names the deal's owner or team."""
P_MIN, P_MAX = 0.001, 0.999
"""Scores stay inside [0.1%, 99.9%]: the model never claims certainty about an open deal."""


class StageTerms(NamedTuple):
    """Per row: training deals of the row's stage, its historical rate, and whether it is too thin."""

    deals: np.ndarray
    rate: np.ndarray
    thin: np.ndarray

    def take(self, rows: np.ndarray) -> StageTerms:
        return StageTerms(self.deals[rows], self.rate[rows], self.thin[rows])


@dataclass
class TargetModel:
    """How one target is scored: the estimator (or a baseline), calibration and shrinkage."""

    target: str
    chosen: str
    """"model", or the baseline used instead ("crm_stage_probability", "stage_win_rate")."""
    estimator: TreeModel | LinearModel | None
    calibrator: Calibrator
    rates: StageRates
    """The target's historical rate per stage (shrinkage target and fallback)."""
    model_deals: np.ndarray
    """Training deals of the estimator per stage code."""
    shrinkage: float
    min_stage: int

    def insufficient(self, stage: np.ndarray) -> np.ndarray:
        """Rows whose stage had too few training deals for the estimator (or is unknown)."""
        known = stage >= 0
        n = np.where(known, self.model_deals[np.where(known, stage, 0)], 0)
        return n < self.min_stage

    def stage_terms(self, stage: np.ndarray) -> StageTerms:
        """What `from_raw` takes from the rows' stages."""
        known = stage >= 0
        n = np.where(known, self.model_deals[np.where(known, stage, 0)], 0).astype(np.float64)
        return StageTerms(n, self.rates.predict(stage), self.insufficient(stage))

    def from_raw(
        self, raw: np.ndarray, stage: np.ndarray, shift: np.ndarray | None, terms: StageTerms | None = None
    ) -> np.ndarray:
        """Final probability from the estimator's log-odds: calibrate (with the rows' context shift,
        `Calibrator.shift_of`), shrink, fall back where thin (`terms`: `stage_terms(stage)`, when the
        caller has them)."""
        p = self.calibrator.apply(raw, shift)
        n, base, thin = terms if terms is not None else self.stage_terms(stage)
        k = self.shrinkage
        p = (n * p + k * base) / np.maximum(n + k, 1e-12)
        p = np.where(thin, base, p)
        return np.clip(p, P_MIN, P_MAX)

    def predict(self, frame: FeatureFrame, X: np.ndarray, ctx: FeatureContext) -> np.ndarray:
        """Probabilities for the frame's rows (X is the encoded matrix)."""
        if self.chosen == CRM:
            return crm_probability(frame, ctx.stages, self.target)
        if self.chosen == STAGE_RATE or self.estimator is None:
            return np.clip(self.rates.predict(frame.stage), P_MIN, P_MAX)
        est = self.estimator
        return self.from_raw(est.raw(est.bin(X)), frame.stage, self.calibrator.shift_of(X))


def predict_targets(
    targets: dict[str, TargetModel], frame: FeatureFrame, X: np.ndarray, ctx: FeatureContext
) -> dict[str, np.ndarray]:
    """Both probabilities; P(won this quarter) never exceeds P(won)."""
    p_won = targets["won"].predict(frame, X, ctx)
    p_q = np.minimum(targets["in_quarter"].predict(frame, X, ctx), p_won)
    return {"won": p_won, "in_quarter": p_q}


@dataclass
class ReasonSettings:
    """Which probability reasons explain, and how many each score gets."""

    target: str = "won"
    max_reasons: int = 5
    min_reasons: int = 3


class ScoringModel:
    """A trained model: `score` open deals as of a date, with both probabilities and reasons."""

    def __init__(
        self,
        context: FeatureContext,
        encoder: Encoder,
        targets: dict[str, TargetModel],
        references: np.ndarray,
        owner_names: dict[str, str],
        metadata: dict[str, Any],
        reasons: ReasonSettings,
    ) -> None:
        self.context = context
        self.encoder = encoder
        self.targets = targets
        self.references = references
        """Typical open deal per stage code (last row: all stages), encoded like X."""
        self.owner_names = owner_names
        self.metadata = metadata
        self.reason_settings = reasons

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    @property
    def fingerprint(self) -> str:
        return str(self.metadata.get("fingerprint", ""))

    # -- scoring ----------------------------------------------------------------------------------

    def score(
        self,
        histories_open: Iterable[DealHistory],
        as_of: date,
        *,
        closed: Iterable[DealHistory] | None = None,
        owners: Sequence[Owner] | None = None,
        reasons: bool = True,
    ) -> list[DealScore]:
        """`score_columns` of `DealHistory` objects, as `DealScore` objects."""
        with gc_paused():  # hundreds of thousands of new objects: avoid repeated full collections
            deals = HistoryColumns.of(list(histories_open))
            return self.score_columns(deals, as_of, closed=closed, owners=owners, reasons=reasons).to_scores()

    def score_columns(
        self,
        deals: HistoryColumns,
        as_of: date,
        *,
        closed: Iterable[DealHistory] | None = None,
        owners: Sequence[Owner] | None = None,
        reasons: bool = True,
    ) -> ScoreColumns:
        """Score the deals that were open at the end of `as_of` (others are skipped).

        `closed` (deals closed so far) refreshes the owners' and teams' past win rates; without it
        the outcomes known at training are used. `owners` refreshes names and teams.
        """
        with gc_paused():
            names = {**self.owner_names, **{o.id: o.name for o in owners or ()}}
            return self._score(deals, as_of, self._context(closed, owners), reasons, names)

    def _score(
        self, deals: HistoryColumns, as_of: date, ctx: FeatureContext, reasons: bool, names: dict[str, str]
    ) -> ScoreColumns:
        flat = flatten_columns(deals, ctx.stages, ctx.attributes)
        ctx = _with_recent_calls(ctx, flat, as_of.toordinal())
        n = len(deals)
        frame = build_frame(
            flat, np.arange(n, dtype=np.int64), np.full(n, as_of.toordinal(), dtype=np.int64), ctx
        )
        frame = frame.subset(frame.is_open)
        X = self.encoder.transform(frame)
        owners = (flat.owner[frame.deal], flat.owners)
        p_won, p_q, why = self._predict(frame, X, ctx, owners, names, with_reasons=reasons)
        rows = frame.deal.tolist()
        ids = flat.deal_ids
        return ScoreColumns(
            as_of, self.version, [ids[i] for i in rows], p_won, p_q, why or ReasonColumns.none(len(rows))
        )

    def predict_frame(self, frame: FeatureFrame, ctx: FeatureContext | None = None) -> dict[str, np.ndarray]:
        """Both probabilities for a feature frame built with this model's context."""
        ctx = ctx or self.context
        return predict_targets(self.targets, frame, self.encoder.transform(frame), ctx)

    def _context(
        self, closed: Iterable[DealHistory] | None, owners: Sequence[Owner] | None
    ) -> FeatureContext:
        ctx = self.context
        owner_team = dict(ctx.owner_team)
        if owners is not None:
            owner_team.update({o.id: team_key(o) for o in owners})
        events, calls = ctx.win_events, ctx.call_events
        if closed is not None:
            rows = []
            since = []  # closed after the calls were taken: their later calls are not in them yet
            for h in closed:
                deal = h.deal
                if deal.is_closed and deal.closed_at is not None:
                    day = day_of(deal.closed_at)
                    rows.append((day, deal.owner_id, owner_team.get(deal.owner_id), deal.is_won))
                    if day > calls.through_day:
                        since.append(h)
            events = WinEvents.build(rows)
            if since:  # the open deals' later calls are added when they are scored (`_with_recent_calls`)
                latest = max(day_of(h.deal.closed_at) for h in since)  # type: ignore[arg-type]
                recent = flatten(since, ctx.stages, {})
                calls = calls.merged(
                    CallEvents.from_flat(recent, ctx.stages, latest, calls.through_day), complete=False
                )
        if owners is None and closed is None:
            return ctx
        return replace(ctx, owner_team=owner_team, win_events=events, call_events=calls)

    def _predict(
        self,
        frame: FeatureFrame,
        X: np.ndarray,
        ctx: FeatureContext,
        owners: tuple[np.ndarray, list[str]],
        names: dict[str, str],
        with_reasons: bool,
    ) -> tuple[np.ndarray, np.ndarray, ReasonColumns | None]:
        settings = self.reason_settings
        explained = self.targets[settings.target]
        explains = with_reasons and explained.chosen == MODEL and explained.estimator is not None
        p: dict[str, np.ndarray] = {}
        points = None
        # The other target's trees run beside the explained one's: tree prediction and most numpy
        # work release the GIL, so the two targets share the cores.
        with ThreadPoolExecutor(max_workers=1) as pool:
            others = {
                name: pool.submit(tm.predict, frame, X, ctx)
                for name, tm in self.targets.items()
                if not (explains and tm is explained)
            }
            if explains:
                p[settings.target], points = self._explain(explained, frame, X)
            p.update({name: future.result() for name, future in others.items()})
        p_won = p["won"]
        p_q = np.minimum(p["in_quarter"], p_won)
        if not with_reasons:
            return p_won, p_q, None
        final = p_won if settings.target == "won" else p_q
        return p_won, p_q, self._reasons(explained, frame, X, ctx, owners, names, final, points)

    # -- reasons ----------------------------------------------------------------------------------

    def reason_groups(self) -> list[tuple[str, np.ndarray]]:
        """Reason groups of the enabled features: (group, column indices)."""
        groups: dict[str, list[int]] = {}
        for j, spec in enumerate(self.encoder.specs):
            if spec.group not in CONTEXT_GROUPS:
                groups.setdefault(spec.group, []).append(j)
        return [(g, np.array(cols, dtype=np.int64)) for g, cols in groups.items()]

    def _explain(self, tm: TargetModel, frame: FeatureFrame, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and each group's points (G x n): p(deal) - p(deal with the group made typical)."""
        est = tm.estimator
        assert est is not None
        named = self.reason_groups()
        groups = [cols for _, cols in named]
        B = est.bin(X)
        stage = frame.stage
        typical = np.where(stage >= 0, stage, len(self.references) - 1)
        refs = est.bin(self.references)
        explained = counterfactual.explain(est, B, groups, refs, typical)
        total, per_group = explained.total, explained.per_group
        calibrator = tm.calibrator
        shift = calibrator.shift_of(X)
        shifted = set(calibrator.shift.used_columns) if calibrator.shift is not None else set()
        terms = tm.stage_terms(stage)
        p = tm.from_raw(total, stage, shift, terms)
        R = refs[typical]
        usable = ~terms.thin
        points = np.zeros((len(groups), len(B)))

        def group_points(g: int) -> None:
            cols = groups[g]
            rows = np.flatnonzero(usable & (B[:, cols] != R[:, cols]).any(axis=1))
            if not len(rows):
                return
            raw = total[rows] - per_group[g, rows] + explained.changed(g, rows)
            row_shift = shift[rows] if shift is not None else None
            if shifted.intersection(cols.tolist()):  # the shift sees the typical values too (size)
                X_typical = X[rows]
                X_typical[:, cols] = self.references[typical[rows]][:, cols]
                row_shift = calibrator.shift_of(X_typical)
            points[g, rows] = (p[rows] - tm.from_raw(raw, stage[rows], row_shift, terms.take(rows))) * 100.0

        # Groups are independent, and their trees and numpy work release the GIL: two at a time.
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(group_points, range(len(groups))))
        return p, points

    def _reasons(
        self,
        tm: TargetModel,
        frame: FeatureFrame,
        X: np.ndarray,
        ctx: FeatureContext,
        owners: tuple[np.ndarray, list[str]],
        names: dict[str, str],
        p: np.ndarray,
        points: np.ndarray | None,
    ) -> ReasonColumns:
        """The strongest reasons per deal: up to `max_reasons`, at least `min_reasons`, and beyond
        that only those worth half a point or more."""
        if points is None:
            return self._baseline_reasons(tm, frame, ctx, p)
        settings = self.reason_settings
        named = self.reason_groups()
        n = len(frame.day)
        ranks = min(settings.max_reasons, len(named))
        if ranks == 0:
            return ReasonColumns.none(n)
        order = np.argsort(-np.abs(points.T), axis=1, kind="stable")[:, :ranks].T
        top = np.take_along_axis(points, order, axis=0)
        keep = (np.abs(top) >= 0.5) | (np.arange(ranks) < settings.min_reasons)[:, None]
        keep = np.cumprod(keep, axis=0).astype(bool)
        insufficient = tm.insufficient(frame.stage)
        keep[:, insufficient] = False
        # Every kept (deal, rank) as one integer key of (group, text, points in tenths), deal by deal
        # in rank order; equal keys are one distinct reason (many deals share "close date never pushed").
        deal, rank = np.nonzero(keep.T)
        group = order[rank, deal]
        tenths = np.rint(top[rank, deal] * 10.0).astype(np.int64)
        codes, texts = _group_texts(self, named, group, deal, frame, X, ctx, owners, names)
        width = max((len(t) for t in texts), default=0) + 1
        key = (tenths - tenths.min(initial=0)) * (width * len(named)) + codes[group, deal] * len(named) + group
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        features = [self.encoder.specs[cols[0]].name for _, cols in named]
        text_at = np.cumsum([0, *map(len, texts)])  # every group's texts in one list
        reasons = ReasonColumns(
            start=np.concatenate(([0], np.cumsum(keep.sum(axis=0) + insufficient))).astype(np.int64),
            index=np.empty(len(deal) + int(insufficient.sum()), dtype=np.int64),
            feature=_pick(features, group[first]),
            text=_pick(list(chain.from_iterable(texts)), text_at[group[first]] + codes[group[first], deal[first]]),
            points=(tenths[first] / 10.0).tolist(),
        )
        thin = reasons.start[:-1][insufficient]
        shown = np.ones(len(reasons.index), dtype=bool)
        shown[thin] = False
        reasons.index[shown] = np.ravel(inverse)
        reasons.index[thin] = self._thin_reasons(tm, frame.stage[insufficient], ctx, reasons)
        return reasons

    def _thin_reasons(
        self, tm: TargetModel, stage: np.ndarray, ctx: FeatureContext, reasons: ReasonColumns
    ) -> np.ndarray:
        """ "Insufficient history" reasons of rows in `stage` (scored with their stage's historical
        rate), added to `reasons`' distinct ones: their indices there."""
        stages, inverse = np.unique(stage, return_inverse=True)
        at = len(reasons.text)
        for s in stages.tolist():
            name = ctx.stages.names[s] if s >= 0 else "an unknown stage"
            n = int(tm.model_deals[s]) if s >= 0 else 0
            rate = float(tm.rates.predict(np.array([s]))[0])
            reasons.feature.append("stage")
            reasons.text.append(
                f"insufficient history in {name} ({_deals(n)}): scored with its historical rate {rate:.0%}"
            )
            reasons.points.append(0.0)
        return at + np.ravel(inverse)

    def _baseline_reasons(
        self, tm: TargetModel, frame: FeatureFrame, ctx: FeatureContext, p: np.ndarray
    ) -> ReasonColumns:
        """A baseline depends on the stage alone: one reason, the stage against the overall rate."""
        stages = ctx.stages
        overall = tm.rates.overall
        keys = (
            np.stack([frame.stage.astype(np.float64), np.round(p, 4)], axis=1) if len(p) else np.zeros((0, 2))
        )
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        reasons = ReasonColumns(np.arange(len(p) + 1, dtype=np.int64), np.ravel(inverse).astype(np.int64), [], [], [])
        for s, value in uniq.tolist():
            name = stages.names[int(s)] if s >= 0 else "an unknown stage"
            if tm.chosen == CRM:
                text = f"CRM probability of {name}: {value:.0%} (the model did not beat it)"
            else:
                text = f"deals in {name} were won {value:.0%} of the time (the model did not beat this)"
            reasons.feature.append("stage")
            reasons.text.append(text)
            reasons.points.append(round((value - overall) * 100, 1))
        return reasons


def _with_recent_calls(ctx: FeatureContext, flat: Flat, as_of: int) -> FeatureContext:
    """`ctx` with the forecast calls in `flat` made after its calls were taken, up to `as_of`."""
    calls = ctx.call_events
    if as_of <= calls.through_day:
        return ctx
    recent = CallEvents.from_flat(flat, ctx.stages, as_of, after_day=calls.through_day)
    return replace(ctx, call_events=calls.merged(recent)) if len(recent.day) else ctx


def _pick(values: list[str], at: np.ndarray) -> list[str]:
    """`[values[i] for i in at]`, looked up in C."""
    return list(itemgetter(*at.tolist())(values)) if len(at) > 1 else [values[i] for i in at.tolist()]


def _deals(n: int) -> str:
    return f"{n} deal" + ("" if n == 1 else "s")


def _group_texts(
    model: ScoringModel,
    named: list[tuple[str, np.ndarray]],
    group: np.ndarray,
    deal: np.ndarray,
    frame: FeatureFrame,
    X: np.ndarray,
    ctx: FeatureContext,
    owners: tuple[np.ndarray, list[str]],
    names: dict[str, str],
) -> tuple[np.ndarray, list[list[str]]]:
    """The text of each reason shown: (codes, texts), where deal d's reason of group g reads
    `texts[g][codes[g, d]]` for each (g, d) in zip(`group`, `deal`). `deal` is sorted, and holds a
    deal at most once per group. `owners`: each deal's owner code, and the owner ids behind them.

    Each distinct combination of a group's values is described once: most deals share them.
    """
    n = len(frame.day)
    owner_code, owner_ids = owners[0].astype(np.float64), owners[1]
    codes = np.zeros((len(named), n), dtype=np.int64)
    texts: list[list[str]] = []
    for g, (name, cols) in enumerate(named):
        rows = deal[group == g]
        if not len(rows):
            texts.append([])
            continue
        keys = X[np.ix_(rows, cols)]
        if name == "stage_time":
            keys = np.column_stack([keys, frame.stage[rows]])
        elif name in OWNER_GROUPS:
            keys = np.column_stack([keys, owner_code[rows]])
        first, inverse = _distinct_rows(keys)
        texts.append(
            [_describe_row(model, ctx, name, cols, values, owner_ids, names) for values in keys[first].tolist()]
        )
        codes[g, rows] = inverse
    return codes, texts


def _distinct_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of one row per distinct row of `keys` (NaN equals NaN), and each row's distinct index.

    Columns are coded separately and combined into one integer per row (much faster than
    `np.unique(axis=0)`, which sorts rows as records).
    """
    combined = np.zeros(len(keys), dtype=np.int64)
    for j in range(keys.shape[1]):
        col = keys[:, j]
        missing = np.isnan(col)
        _, codes = np.unique(np.where(missing, np.inf, col), return_inverse=True)
        radix = int(codes.max(initial=0)) + 2
        if len(combined) and int(combined.max()) > 2**62 // radix:  # re-code before it could overflow
            combined = np.ravel(np.unique(combined, return_inverse=True)[1]).astype(np.int64)
        combined = combined * radix + np.ravel(codes) + 1
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    return first, np.ravel(inverse)


def _describe_row(
    model: ScoringModel,
    ctx: FeatureContext,
    group: str,
    cols: np.ndarray,
    values: list[float],
    owners: list[str],
    names: dict[str, str],
) -> str:
    specs = model.encoder.specs
    shown: dict[str, float | str | None] = {}
    for j, v in zip(cols.tolist(), values, strict=False):
        spec = specs[j]
        shown[spec.name] = model.encoder.category(spec.name, v) if spec.kind == "cat" else v
    stage_name, owner_name, team_name = "this stage", "the owner", "the team"
    if group == "stage_time":
        stage = int(values[-1])
        stage_name = ctx.stages.names[stage] if stage >= 0 else stage_name
    elif group in OWNER_GROUPS:
        owner_id = owners[int(values[-1])]
        owner_name = names.get(owner_id, owner_name)
        team_name = _team_label(ctx.owner_team.get(owner_id), names)
    return describe(
        group,
        shown,
        stage=stage_name,
        owner=owner_name,
        team=team_name,
        activity_window=ctx.activity_window_days,
    )


def _team_label(team: str | None, names: dict[str, str]) -> str:
    if team is None:
        return "the team"
    kind, _, value = team.partition(":")
    if kind == "team":
        return f"the {value} team"
    return f"{names.get(value, value)}'s team"


def stage_references(X: np.ndarray, stage: np.ndarray, encoder: Encoder, n_stages: int) -> np.ndarray:
    """Typical open deal per stage (median of numbers, most common category), plus an all-stage row."""
    is_cat = encoder.is_categorical
    p = X.shape[1]
    out = np.full((n_stages + 1, p), math.nan)
    overall = _typical(X, is_cat)
    out[n_stages] = overall
    for s in np.unique(stage[stage >= 0]):
        rows = X[stage == s]
        out[s] = _typical(rows, is_cat) if len(rows) >= 20 else overall
    for s in range(n_stages):
        if np.all(np.isnan(out[s])):
            out[s] = overall
    return out


def _typical(X: np.ndarray, is_cat: np.ndarray) -> np.ndarray:
    out = np.full(X.shape[1], math.nan)
    for j in range(X.shape[1]):
        col = X[:, j]
        col = col[~np.isnan(col)]
        if not len(col):
            continue
        if is_cat[j]:
            values, counts = np.unique(col, return_counts=True)
            out[j] = values[np.argmax(counts)]
        else:
            out[j] = float(np.median(col))
    return out
