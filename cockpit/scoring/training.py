"""Training: time-based validation, gradient boosting (or a regularised logistic model on small data),
cross-fitted calibration, shrinkage toward the stage's historical rate, and an honest comparison with
the two baselines.

With C the test cut-off and C2 < C (both by close date; quarter starts for the quarter target, whose
labels settle a quarter at a time):

1. Evaluation. The deals whose label was known before C are split into two folds (a deal's weekly
   examples stay together). Fold A's model boosts while the log loss on fold B's labels from the
   later slice [C2, C) improves, which fixes the number of rounds (a later slice, as the model will
   be used on later deals); fold B's model gets the same number. Each fold's model scores the other
   fold, and those out-of-fold scores calibrate the model fitted on every label known before C. It
   is tested on the labels that became known from C on: the report's numbers.
2. Per target, if the model's test Brier score is not better than the best baseline's, the cockpit
   scores that target with the baseline, and the report says so.
3. Final model: fitted on every label known (so it has seen the latest quarter, which matters on data
   whose patterns shift, such as stale deals piling up), with the evaluation's number of rounds, and
   calibrated on the evaluation's out-of-sample scores of every label: out-of-fold before C, the
   evaluation model's own scores after it.

Calibrating on out-of-sample scores of all labels, rather than on the latest slice only, keeps a model
without signal at the base rate: a recent slice whose win rate happens to differ would otherwise
become the forecast.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import numpy as np

from cockpit.models import DealHistory, FiscalCalendar, Owner, Pipeline
from cockpit.scoring.baselines import (
    BASELINES,
    CRM,
    STAGE_RATE,
    crm_probability,
    example_rates,
    reached_rates,
)
from cockpit.scoring.config import ScoringConfig
from cockpit.scoring.errors import TrainingError
from cockpit.scoring.estimators import (
    Calibrator,
    Encoder,
    LinearModel,
    TreeModel,
    fit_calibrator,
    fit_linear,
    fit_trees,
)
from cockpit.scoring.examples import TARGETS, ExampleSet, Prepared, context_for, examples_from, prepare
from cockpit.scoring.features import FeatureContext
from cockpit.scoring.files import FORMAT_VERSION, data_fingerprint
from cockpit.scoring.metrics import Metrics, evaluate, roc_auc
from cockpit.scoring.model import (
    MODEL,
    ReasonSettings,
    ScoringModel,
    TargetModel,
    predict_targets,
    stage_references,
)
from cockpit.scoring.report import LABELS, TargetReport, TrainReport

Progress = Callable[[str, float], None]

NEXT_STEP_NOTE = (
    "Next step missing/overdue is not a model feature: the CRM keeps only the current next step, so it "
    "cannot be known as of a past date without leaking the outcome; the forecast's risk flags use it."
)


@dataclass
class TrainResult:
    """The trained model and the report of how it did."""

    model: ScoringModel
    report: TrainReport


@dataclass
class _Tuning:
    """What the evaluation found for one target, reused by the final model."""

    rounds: int = 100
    """Boosting rounds (early stopping on a later slice)."""
    c: float = 0.1
    """Logistic regularisation strength."""


@dataclass
class _Phase:
    """Both targets fitted on one set of labels."""

    encoder: Encoder
    X: np.ndarray
    targets: dict[str, TargetModel]
    tuning: dict[str, _Tuning] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Target -> out-of-sample log-odds of every labelled example (NaN where there is none)."""


def train(
    histories: Iterable[DealHistory],
    pipelines: Sequence[Pipeline],
    owners: Sequence[Owner],
    calendar: FiscalCalendar,
    config: ScoringConfig | None = None,
    progress: Progress | None = None,
    cutoff: date | None = None,
    *,
    as_of: date | None = None,
) -> TrainResult:
    """Train the win model on the deals' histories as known at the end of `as_of` (default: all data).

    `cutoff` fixes the test split (labels known from that day on are tested); by default it is where
    the last `test_fraction` of closed deals closed. Raises TrainingError when there is too little
    history. `progress(message, fraction)` is called as the work advances (from a worker thread in
    the TUI: it must not touch widgets directly).
    """
    started = time.perf_counter()
    config = config or ScoringConfig()
    say = progress or (lambda message, fraction: None)
    say("Reading deal histories", 0.0)
    prep = prepare(histories, pipelines, owners, calendar, config, as_of)
    plan = _plan(prep, config, cutoff)
    say("Building point-in-time examples", 0.05)
    examples = examples_from(prep, plan.context, config)
    say("Fitting the evaluation model", 0.2)
    evaluation = _evaluate(prep, examples, config, plan.kind, plan.bounds)
    say("Testing against the baselines", 0.55)
    reports = _test(prep, examples, evaluation, {t: c for t, (c, _) in plan.bounds.items()})
    evaluation.X = evaluation.X[:0]  # free the evaluation matrix before the final fit
    say("Fitting the final model", 0.65)
    final = _final(prep, examples, config, plan.kind, evaluation)
    for target, rep in reports.items():
        final.targets[target].chosen = rep.chosen
    say("Writing the report", 0.95)
    reasons_target = _reasons_target(config, reports)
    report = _report(plan, examples, final, reports, config, reasons_target)
    report.seconds = time.perf_counter() - started
    model = ScoringModel(
        context=plan.context,
        encoder=final.encoder,
        targets=final.targets,
        references=_references(examples, final, len(prep.stages.ids)),
        owner_names={o.id: o.name for o in owners},
        metadata=_metadata(plan, report, config, reasons_target),
        reasons=ReasonSettings(reasons_target, config.max_reasons, config.min_reasons),
    )
    say("Done", 1.0)
    return TrainResult(model=model, report=report)


@dataclass
class _Plan:
    """What a training run works on: the data, the split and the kind of model."""

    prep: Prepared
    context: FeatureContext
    test_day: float
    cal_day: float
    bounds: dict[str, tuple[float, float]]
    kind: str


def _plan(prep: Prepared, config: ScoringConfig, cutoff: date | None) -> _Plan:
    _check_history(prep, config)
    test_day, cal_day = _cutoffs(prep, config, cutoff)
    out = prep.outcomes
    base_deals = int((out.closed & (out.close_day < cal_day)).sum())
    return _Plan(
        prep=prep,
        context=context_for(prep, config, median_before=int(cal_day)),
        test_day=test_day,
        cal_day=cal_day,
        bounds=_target_bounds(prep, test_day, cal_day),
        kind="gradient_boosting" if base_deals >= config.min_deals_for_boosting else "logistic",
    )


def _references(examples: ExampleSet, final: _Phase, n_stages: int) -> np.ndarray:
    """Typical open deal per stage, from every labelled example (encoded like the final model's X)."""
    settled = np.zeros(len(examples), dtype=bool)
    for target in TARGETS:
        settled |= ~np.isnan(examples.labels[target])
    return stage_references(final.X[settled], examples.frame.stage[settled], final.encoder, n_stages)


def _report(
    plan: _Plan,
    examples: ExampleSet,
    final: _Phase,
    reports: dict[str, TargetReport],
    config: ScoringConfig,
    reasons_target: str,
) -> TrainReport:
    prep = plan.prep
    closed, close = prep.outcomes.closed, prep.outcomes.close_day
    notes = _notes(prep, examples, final, config, plan.kind)
    notes.append(
        "Reasons explain " + ("P(won)." if reasons_target == "won" else "P(won by the end of the quarter).")
    )
    return TrainReport(
        model_kind=plan.kind,
        trained_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        knowledge_day=date.fromordinal(prep.knowledge_day).isoformat(),
        cutoff=date.fromordinal(int(plan.test_day)).isoformat(),
        tuning_cutoff=date.fromordinal(int(plan.cal_day)).isoformat(),
        closed_deals=int(closed.sum()),
        train_deals=int((closed & (close < plan.test_day)).sum()),
        test_deals=int((closed & (close >= plan.test_day)).sum()),
        examples={
            t: {
                "train": int(examples.known_before(t, plan.bounds[t][0]).sum()),
                "test": int(examples.known_between(t, plan.bounds[t][0], math.inf).sum()),
            }
            for t in TARGETS
        },
        targets=reports,
        features=[s.name for s in plan.context.specs],
        stage_notes=_stage_notes(prep, final.targets["won"], config),
        notes=notes,
    )


def _metadata(plan: _Plan, report: TrainReport, config: ScoringConfig, reasons_target: str) -> dict[str, Any]:
    """What the model file records about its training."""
    fingerprint = data_fingerprint(plan.prep.histories)
    stamp = datetime.fromisoformat(report.trained_at)
    return {
        "format_version": FORMAT_VERSION,
        "version": f"{plan.kind}-{stamp:%Y%m%d%H%M%S}-{fingerprint[:8]}",
        "trained_at": report.trained_at,
        "knowledge_day": report.knowledge_day,
        "training_window": _window(plan.prep),
        "model_kind": plan.kind,
        "features": report.features,
        "disabled_features": sorted(config.disabled_features),
        "chosen": {t: r.chosen for t, r in report.targets.items()},
        "reasons_target": reasons_target,
        "fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "report": report.to_dict(),
        "sklearn_version": _sklearn_version(),
    }


# --------------------------------------------------------------------------------------------------


def _check_history(prep: Prepared, config: ScoringConfig) -> None:
    out = prep.outcomes
    closed = out.closed & ~np.isnan(out.first_day)
    n = int(closed.sum())
    if n < config.min_closed_deals:
        raise TrainingError(
            "Not enough history",
            f"only {n} closed deal{'s' if n != 1 else ''} with a dated history; the win model needs at least "
            f"{config.min_closed_deals} (set [scoring] min_closed_deals to change this)",
        )
    won = int((out.won & closed).sum())
    if won == 0 or won == n:
        what = "lost" if won == 0 else "won"
        raise TrainingError(
            "Not enough history",
            f"all {n} closed deals were {what}; the win model needs both won and lost deals to learn from",
        )


def _cutoffs(prep: Prepared, config: ScoringConfig, cutoff: date | None) -> tuple[float, float]:
    """Test cut-off C and calibration cut-off C2 (day ordinals)."""
    out = prep.outcomes
    close = np.sort(out.close_day[out.closed & ~np.isnan(out.first_day)])
    if cutoff is not None:
        test_day = float(cutoff.toordinal())
        before = close[close < test_day]
        if len(before) < config.min_closed_deals:
            raise TrainingError(
                "Cut-off too early",
                f"only {len(before)} deals closed before {cutoff.isoformat()}; at least "
                f"{config.min_closed_deals} are needed to train (choose a later cut-off)",
            )
        share = config.tuning_fraction / (1 - config.test_fraction)
        cal_day = float(before[min(len(before) - 1, int(len(before) * (1 - share)))])
        return test_day, cal_day
    n = len(close)
    test_day = float(close[min(n - 1, int(n * (1 - config.test_fraction)))])
    cal_day = float(close[min(n - 1, int(n * (1 - config.test_fraction - config.tuning_fraction)))])
    return test_day, min(cal_day, test_day)


def _target_bounds(prep: Prepared, test_day: float, cal_day: float) -> dict[str, tuple[float, float]]:
    """Per target (test cut-off, calibration cut-off). The quarter target's labels settle a quarter
    at a time, so its cut-offs move back to quarter starts (the quarter containing C is tested)."""
    calendar = prep.calendar
    q_test = calendar.quarter_of(date.fromordinal(int(test_day)))
    q_cal = calendar.quarter_of(date.fromordinal(int(cal_day)))
    if q_cal.start >= q_test.start:
        q_cal = q_test.previous()
    return {
        "won": (test_day, cal_day),
        "in_quarter": (float(q_test.start.toordinal()), float(q_cal.start.toordinal())),
    }


def _evaluate(
    prep: Prepared, ex: ExampleSet, config: ScoringConfig, kind: str, bounds: dict[str, tuple[float, float]]
) -> _Phase:
    """The evaluation phase: fit each target on the labels known before its cut-off C.

    Deals are split into two folds. Fold A's model is boosted while the log loss on fold B's labels
    from the later slice [C2, C) improves (that fixes the number of rounds, or the logistic strength);
    fold B's model gets the same setting. Each fold's model scores the other fold: those out-of-fold
    scores calibrate the model fitted on all labels before C, and no deal's weekly copies are scored
    by a model that saw them.
    """
    fit_rows = {t: ex.known_before(t, bounds[t][0]) for t in TARGETS}
    encoder = Encoder.fit(ex.frame, fit_rows["won"] | fit_rows["in_quarter"], config)
    phase = _Phase(encoder, encoder.transform(ex.frame), {})
    fold = _folds(ex, config)

    def one(t: str) -> tuple[_Tuning, np.ndarray, TargetModel]:
        fit = fit_rows[t]
        y = ex.labels[t]
        later = ex.known_between(t, bounds[t][1], bounds[t][0])
        setting, scores = _cross_fit(phase.X, y, ex.frame.deal, fit, fold, later, kind, encoder, config)
        estimator = (
            _fit(kind, phase.X[fit], y[fit], ex.frame.deal[fit], setting, encoder, config)
            if _both_classes(y[fit])
            else None
        )
        if estimator is not None:
            test = ~np.isnan(y) & ~fit
            scores[test] = estimator.raw(estimator.bin(phase.X[test]))
        calibrator = _calibrate(scores, y, fit, phase.X, encoder)
        return setting, scores, _target_model(prep, ex, t, fit, bounds[t][0], estimator, calibrator, config)

    for t, (setting, scores, model) in zip(TARGETS, _each_target(one), strict=True):
        phase.tuning[t], phase.scores[t], phase.targets[t] = setting, scores, model
    return phase


_T = TypeVar("_T")


def _each_target(work: Callable[[str], _T]) -> list[_T]:
    """`work` for every target, the targets side by side: a fit's Python parts hold the GIL while
    its trees' OpenMP threads wait, and the other target's fit fills those gaps on a 2-core machine.
    Each fit is the same as alone (scikit-learn's fits share no state)."""
    with ThreadPoolExecutor(max_workers=len(TARGETS)) as pool:
        return list(pool.map(work, TARGETS))


def _final(prep: Prepared, ex: ExampleSet, config: ScoringConfig, kind: str, evaluation: _Phase) -> _Phase:
    """The model that ships: every label known, the evaluation's setting, and calibration on the
    evaluation's out-of-sample scores of every label (out-of-fold before C, the evaluation model's
    own scores after it)."""
    fit_rows = {t: ~np.isnan(ex.labels[t]) for t in TARGETS}
    encoder = Encoder.fit(ex.frame, fit_rows["won"] | fit_rows["in_quarter"], config)
    phase = _Phase(encoder, encoder.transform(ex.frame), {}, dict(evaluation.tuning))

    def one(t: str) -> TargetModel:
        fit = fit_rows[t]
        y = ex.labels[t]
        setting = evaluation.tuning.get(t, _Tuning())
        estimator = (
            _fit(kind, phase.X[fit], y[fit], ex.frame.deal[fit], setting, encoder, config)
            if _both_classes(y[fit])
            else None
        )
        calibrator = _calibrate(evaluation.scores.get(t, np.full(len(ex), np.nan)), y, fit, phase.X, encoder)
        return _target_model(prep, ex, t, fit, math.inf, estimator, calibrator, config)

    phase.targets.update(zip(TARGETS, _each_target(one), strict=True))
    return phase


def _folds(ex: ExampleSet, config: ScoringConfig) -> np.ndarray:
    """Fold (0 or 1) of each example, drawn per deal so a deal's weekly examples stay together."""
    n_deals = int(ex.frame.deal.max()) + 1 if len(ex) else 0
    return np.random.default_rng(config.random_state).integers(0, 2, n_deals)[ex.frame.deal]


def _both_classes(y: np.ndarray) -> bool:
    return bool(len(y)) and 0 < float(np.sum(y)) < len(y)


def _cross_fit(
    X: np.ndarray,
    y: np.ndarray,
    deals: np.ndarray,
    fit: np.ndarray,
    fold: np.ndarray,
    later: np.ndarray,
    kind: str,
    encoder: Encoder,
    config: ScoringConfig,
) -> tuple[_Tuning, np.ndarray]:
    """Tune on fold A (stopping on fold B's later labels), then score each fold with the other's model."""
    scores = np.full(len(y), np.nan)
    a, b = fit & (fold == 0), fit & (fold == 1)
    if not (_both_classes(y[a]) and _both_classes(y[b])):
        return _Tuning(rounds=min(100, config.max_iter)), scores
    val = b & later
    is_cat = encoder.is_categorical
    if kind == "gradient_boosting":
        model_a = fit_trees(X[a], y[a], X[val], y[val], is_cat, config, examples_per_deal=_per_deal(deals[a]))
        setting = _Tuning(rounds=max(1, model_a.n_trees))
    else:
        model_a = fit_linear(X[a], y[a], X[val], y[val], is_cat, config)
        setting = _Tuning(c=model_a.c)
    model_b = _fit(kind, X[b], y[b], deals[b], setting, encoder, config)
    scores[b] = model_a.raw(model_a.bin(X[b]))
    scores[a] = model_b.raw(model_b.bin(X[a]))
    return setting, scores


def _fit(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    deals: np.ndarray,
    setting: _Tuning,
    encoder: Encoder,
    config: ScoringConfig,
) -> TreeModel | LinearModel:
    """The estimator with a fixed setting, on all the given rows."""
    empty = X[:0]
    is_cat = encoder.is_categorical
    if kind == "gradient_boosting":
        return fit_trees(
            X, y, empty, y[:0], is_cat, config, rounds=setting.rounds, examples_per_deal=_per_deal(deals)
        )
    return fit_linear(X, y, empty, y[:0], is_cat, config, c=setting.c)


def _calibrate(scores: np.ndarray, y: np.ndarray, rows: np.ndarray, X: np.ndarray, encoder: Encoder) -> Calibrator:
    """Calibration on the out-of-sample scores of `rows` (identity where there are none)."""
    known = rows & ~np.isnan(scores)
    if not _both_classes(y[known]):
        return Calibrator()
    return fit_calibrator(scores[known], y[known], X[known], encoder.specs)


def _target_model(
    prep: Prepared,
    ex: ExampleSet,
    t: str,
    fit: np.ndarray,
    before: float,
    estimator: TreeModel | LinearModel | None,
    calibrator: Calibrator,
    config: ScoringConfig,
) -> TargetModel:
    out = prep.outcomes
    if t == "won":
        rates = reached_rates(prep, out.closed & (out.close_day < before), config.shrinkage_deals)
    else:
        rates = example_rates(ex, t, fit, prep.stages, config.shrinkage_deals)
    return TargetModel(
        target=t,
        chosen=MODEL if estimator is not None else STAGE_RATE,
        estimator=estimator,
        calibrator=calibrator,
        rates=rates,
        model_deals=_deals_per_stage(ex, fit, len(prep.stages.ids)),
        shrinkage=config.shrinkage_deals,
        min_stage=config.min_stage_examples,
    )


def _per_deal(deals: np.ndarray) -> float:
    return len(deals) / max(1, len(np.unique(deals)))


def _deals_per_stage(ex: ExampleSet, rows: np.ndarray, n_stages: int) -> np.ndarray:
    stage = ex.frame.stage[rows]
    deal = ex.frame.deal[rows]
    keep = stage >= 0
    pairs = np.unique((deal[keep] << 16) + stage[keep])
    return np.bincount(pairs & 0xFFFF, minlength=n_stages).astype(np.int64)


def _test(
    prep: Prepared, ex: ExampleSet, phase: _Phase, test_days: dict[str, float]
) -> dict[str, TargetReport]:
    """Metrics of the evaluation model and the baselines on the test split; choose per target."""
    ctx = ex.context
    reports: dict[str, TargetReport] = {}
    for t in TARGETS:
        test_day = test_days[t]
        test = (ex.known[t] >= test_day) & ~np.isnan(ex.labels[t])
        frame = ex.frame.subset(test)
        y = ex.labels[t][test]
        X = phase.X[test]
        tm = phase.targets[t]
        train_y = ex.labels[t][ex.known_before(t, test_day)]
        base = float(train_y.mean()) if len(train_y) else 0.5
        forecasts = {
            MODEL: predict_targets(phase.targets, frame, X, ctx)[t],
            CRM: crm_probability(frame, prep.stages, t),
            STAGE_RATE: np.clip(tm.rates.predict(frame.stage), 0.001, 0.999),
            "base_rate": np.full(len(y), base),
        }
        metrics = {name: evaluate(y, p) for name, p in forecasts.items()}
        chosen, why = _choose(metrics, tm.estimator is not None)
        tm.chosen = chosen
        reports[t] = TargetReport(target=t, metrics=metrics, chosen=chosen, why=why)
    return reports


def _choose(metrics: dict[str, Metrics], fitted: bool) -> tuple[str, str]:
    model = metrics[MODEL]
    best = min(BASELINES, key=lambda b: math.inf if math.isnan(metrics[b].brier) else metrics[b].brier)
    label = LABELS[best]
    if not fitted:
        return STAGE_RATE, (
            "There were too few won and lost training examples to fit a model, so the stage win rate is used."
        )
    if model.examples == 0:
        return STAGE_RATE, (
            "No label became known after the cut-off, so the model could not be tested; the stage win rate "
            "is used."
        )
    b = metrics[best].brier
    if model.brier < b:
        gain = (b - model.brier) / b if b > 0 else 0.0
        return MODEL, (
            f"The model's Brier score {model.brier:.4f} beats the best baseline ({label}, {b:.4f}) "
            f"by {gain:.1%} "
            f"on {model.examples:,} test examples."
        )
    return best, (
        f"The model's Brier score {model.brier:.4f} is not better than the {label}'s {b:.4f} on "
        f"{model.examples:,} test examples, so the cockpit uses the {label} for this probability."
    )


def _reasons_target(config: ScoringConfig, reports: dict[str, TargetReport]) -> str:
    """The configured target, or ("auto") the one where the model gains most over its best baseline."""
    if config.reasons_target != "auto":
        return config.reasons_target

    def gain(t: str) -> float:
        m = reports[t].metrics
        if reports[t].chosen != MODEL:
            return -math.inf
        best = min(m[b].brier for b in BASELINES)
        return (best - m[MODEL].brier) / best if best > 0 else 0.0

    return "in_quarter" if gain("in_quarter") > gain("won") else "won"


def _stage_notes(prep: Prepared, tm: TargetModel, config: ScoringConfig) -> list[str]:
    notes = []
    for pipeline in prep.pipelines:
        for stage in pipeline.open_stages:
            code = prep.stages.ids.index(stage.id)
            n = int(tm.model_deals[code])
            if n < config.min_stage_examples:
                notes.append(
                    f"{pipeline.name} / {stage.name}: insufficient history "
                    f"({n} training deal{'s' if n != 1 else ''}, "
                    f"fewer than {config.min_stage_examples}); scored with the stage's historical rate"
                )
    return notes


def _notes(prep: Prepared, ex: ExampleSet, phase: _Phase, config: ScoringConfig, kind: str) -> list[str]:
    notes = [NEXT_STEP_NOTE]
    if kind == "logistic":
        notes.append(
            f"Fewer than {config.min_deals_for_boosting} training deals: a regularised logistic regression "
            "is used instead of gradient boosting."
        )
    if config.disabled_features:
        notes.append("Switched off by configuration: " + ", ".join(sorted(config.disabled_features)) + ".")
    notes += _leak_warnings(ex, phase)
    notes += _filled_on_close_warnings(prep, phase)
    notes += [_calibration_note(t, tm.calibrator) for t, tm in phase.targets.items() if tm.estimator is not None]
    return notes


def _calibration_note(target: str, calibrator: Calibrator) -> str:
    """How the model's scores for `target` became probabilities, in one sentence."""
    what = "P(won)" if target == "won" else "P(won by the end of the quarter)"
    base = {"isotonic": "isotonic regression", "sigmoid": "a sigmoid (Platt)"}.get(calibrator.kind, "no calibration")
    if calibrator.shift is None:
        return f"{what} is calibrated with {base} on out-of-sample scores."
    w = calibrator.shift.weights
    return (
        f"{what} is calibrated with {base}, then shifted by the weeks left in the quarter and the deal's size "
        f"against its currency's median (it predicted held-out labels better; a deal twice the median: "
        f"{w[-1] * math.log(2):+.2f} log-odds)."
    )


def _filled_on_close_warnings(prep: Prepared, phase: _Phase) -> list[str]:
    """Flag kept CRM fields that are empty on many open deals but on no closed deal.

    Such a field is usually filled in when a deal closes; the model only sees today's value, so the
    training examples of closed deals show it filled even on dates when it was still empty, and the
    model learns "empty means it never closes" more strongly than it should.
    """
    out = prep.outcomes
    dated = ~np.isnan(out.first_day)
    closed, open_ = out.closed & dated, ~out.closed & dated
    used = {s.name for s in phase.encoder.specs}
    flat = prep.flat
    columns = {k: np.isnan(v) for k, v in flat.attr_num.items()}
    columns.update({k: codes < 0 for k, (codes, _) in flat.attr_cat.items()})
    notes = []
    for key, missing in sorted(columns.items()):
        n_open = int((missing & open_).sum())
        if (
            f"attr:{key}" in used
            and closed.any()
            and not (missing & closed).any()
            and n_open >= max(20, 0.05 * open_.sum())
        ):
            notes.append(
                f"attr:{key} is empty on {n_open:,} open deals but on no closed deal: it is probably "
                "filled in when a deal closes, which the model cannot see as of a past date; consider "
                "switching it off with [scoring] disabled_features."
            )
    return notes


def _leak_warnings(ex: ExampleSet, phase: _Phase, sample: int = 100_000) -> list[str]:
    """Flag features that alone separate won from lost almost perfectly: usually filled in after closing."""
    rows = np.flatnonzero(~np.isnan(ex.labels["won"]))
    if len(rows) > sample:
        rows = np.random.default_rng(0).choice(rows, sample, replace=False)
    y = ex.labels["won"][rows]
    if not len(y) or y.min() == y.max():
        return []
    out = []
    for j, spec in enumerate(phase.encoder.specs):
        col = phase.X[rows, j]
        known = ~np.isnan(col)
        if known.sum() < 20 or spec.group in ("stage",):
            continue
        auc = roc_auc(y[known], col[known])
        if not math.isnan(auc) and max(auc, 1 - auc) >= 0.98:
            out.append(
                f"{spec.name} alone separates won from lost deals (ROC AUC {max(auc, 1 - auc):.2f}): "
                "check that the CRM does not fill it in when a deal closes (such as a close value of 0 on "
                "lost deals); switch it "
                "off with [scoring] disabled_features if it does."
            )
    return out


def _window(prep: Prepared) -> dict[str, str | None]:
    out = prep.outcomes
    close = out.close_day[out.closed]
    if not len(close):
        return {"first_close": None, "last_close": None}
    return {
        "first_close": date.fromordinal(int(close.min())).isoformat(),
        "last_close": date.fromordinal(int(close.max())).isoformat(),
    }


def _sklearn_version() -> str:
    from cockpit.scoring.estimators import load_sklearn

    load_sklearn()
    import sklearn

    return str(sklearn.__version__)
