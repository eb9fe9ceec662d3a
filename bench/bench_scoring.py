"""Benchmark of the win model: training, scoring with reasons, and model-file loading.

Run on demand (prints figures; it is not a test):

    python bench/bench_scoring.py                  # 50,000 closed demo deals, 100,000 open deals
    python bench/bench_scoring.py --closed 5000 --open 10000
    python bench/bench_scoring.py --model /tmp/m.npz   # train once, then reuse the saved model
    python bench/bench_scoring.py --stages             # and time each stage of one scoring run

The open deals are synced into a new store first. Scoring is timed as the cockpit scores after a
sync: from the open deals' columns (`HistoryColumns`, as `Store.history_columns` reads them) to the
scores' columns with their reasons (`ScoreColumns`, as `Store.write_score_columns` writes them):
`ScoringModel.score_columns`, best of `--repeat` runs, with the CPU time of that run. Reading the
columns and writing the scores are timed apart, and so is the same scoring from `DealHistory`
objects to `DealScore` objects (`ScoringModel.score`, for a script).

Targets (issue 3): train on 50,000 closed demo deals (all weekly examples) <= 60 s on 2 cores; score
100,000 open deals with reasons <= 2 s; load a model file <= 0.3 s.

The demo has about one open deal per eleven closed ones, so the 100,000 open deals are the demo's
open deals repeated with every date shifted by a different number of days (each copy has its own
ages, days in stage and close dates, so reason texts are not simply repeated).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from cockpit.models import Activity, DealHistory, FiscalCalendar, SyncBatch, histories_of
from cockpit.models.columns import HistoryColumns
from cockpit.store import Store
from connectors.demo import DEMO_FISCAL_START_MONTH, DemoConnector

AS_OF = date(2026, 3, 31)
CLOSED_SHARE = 0.916
"""Share of demo deals closed by `AS_OF` (measured), to size the demo for a number of closed deals."""


def demo_histories(closed: int, seed: int = 7) -> tuple[list[DealHistory], list, list, FiscalCalendar]:
    """Demo deals with their histories: about `closed` closed deals plus the open ones."""
    connector = DemoConnector(seed=seed, size=min(1_000_000, round(closed / CLOSED_SHARE)), as_of=AS_OF)
    pipelines, owners, deals, changes, activities = [], [], [], [], []
    for batch in connector.generate():
        pipelines += batch.pipelines
        owners += batch.owners
        deals += batch.opportunities
        changes += batch.changes
        activities += batch.activities
    histories = histories_of(deals, changes, activities)
    return histories, pipelines, owners, FiscalCalendar(start_month=DEMO_FISCAL_START_MONTH)


def shifted(history: DealHistory, days: int, suffix: str) -> DealHistory:
    """A copy of an open deal with every date moved `days` earlier (so it is older as of AS_OF)."""
    delta = timedelta(days=days)
    deal = history.deal.model_copy(
        update={
            "id": f"{history.deal.id}~{suffix}",
            "created_at": history.deal.created_at - delta if history.deal.created_at else None,
            "close_date": history.deal.close_date - delta if history.deal.close_date else None,
        }
    )
    changes = tuple(
        c.model_copy(
            update={
                "opportunity_id": deal.id,
                "changed_at": c.changed_at - delta,
                "close_date": c.close_date - delta if c.close_date else None,
            }
        )
        for c in history.changes
    )
    return DealHistory(deal=deal, changes=changes, activities=tuple(a - delta for a in history.activities))


def open_deals(histories: list[DealHistory], count: int) -> list[DealHistory]:
    rng = random.Random(0)
    base = [h for h in histories if not h.deal.is_closed]
    out = list(base)
    copy = 0
    while len(out) < count:
        copy += 1
        out.extend(shifted(h, rng.randint(1, 60), str(copy)) for h in base[: count - len(out)])
    return out[:count]


def train_and_report(
    histories: list[DealHistory], pipelines: list, owners: list, calendar: FiscalCalendar
) -> Any:
    """Train on the demo and print the timing and the metrics; return the model."""
    from cockpit.scoring import ScoringConfig, train

    t = time.perf_counter()
    result = train(histories, pipelines, owners, calendar, ScoringConfig())
    train_s = time.perf_counter() - t
    report = result.report
    examples = sum(v["train"] + v["test"] for v in report.examples.values())
    won_examples = report.examples["won"]["train"] + report.examples["won"]["test"]
    print(
        f"train: {train_s:.1f} s  ({report.model_kind}, {won_examples:,} "
        f"won-target examples, {examples:,} labelled examples in all)   target <= 60 s"
    )
    for target in report.targets.values():
        m = target.metrics
        print(
            f"  {target.target:<10} Brier model {m['model'].brier:.4f}  "
            f"CRM {m['crm_stage_probability'].brier:.4f}  stage rate {m['stage_win_rate'].brier:.4f}  "
            f"ECE {m['model'].ece:.3f}  AUC {m['model'].roc_auc:.3f}  "
            f"-> {target.chosen}"
        )
    return result.model


def stage_breakdown(model: Any, deals: HistoryColumns) -> dict[str, float]:
    """Seconds per stage of one `model.score_columns(deals, AS_OF)` (the bench wraps the stages in timers)."""
    import cockpit.scoring.model as scoring_model

    seconds: dict[str, float] = {}
    saved = []

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)
        saved.append((owner, name, inner))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrapper)

    timed(scoring_model, "flatten_columns", "history rows (flatten_columns)")
    timed(scoring_model, "build_frame", "features")
    timed(scoring_model.ScoringModel, "_explain", "probability + reasons' points (trees)")
    timed(scoring_model.TargetModel, "predict", OTHER)
    timed(scoring_model, "_group_texts", "reason texts")
    timed(scoring_model.ScoringModel, "_reasons", "reasons")
    try:
        t = time.perf_counter()
        model.score_columns(deals, AS_OF)
        total = time.perf_counter() - t
    finally:
        for owner, name, inner in saved:
            setattr(owner, name, inner)
    seconds["reasons"] -= seconds["reason texts"]
    seconds["ranking the reasons, distinct ones"] = seconds.pop("reasons")
    seconds["the rest (encoding, ...)"] = total - sum(v for k, v in seconds.items() if k != OTHER)
    seconds["total"] = total
    return seconds


OTHER = "other probability (trees, in a thread beside the reasons' trees: not in the total)"


def sync(store: Any, deals: list[DealHistory], pipelines: list, owners: list) -> None:
    """Write `deals` into `store` as a sync would, 10,000 deals a batch."""
    run = store.begin_sync("bench", None)
    for k in range(0, len(deals), 10_000):
        chunk = deals[k : k + 10_000]
        store.apply_batch(
            run,
            SyncBatch(
                pipelines=pipelines if k == 0 else [],
                owners=owners if k == 0 else [],
                opportunities=[h.deal for h in chunk],
                changes=[c for h in chunk for c in h.changes],
                activities=[Activity(opportunity_id=h.deal.id, on=d) for h in chunk for d in h.activities],
            ),
        )
    store.finish_sync(run, "ok")


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, float, Any]:
    """The shortest wall time of `repeat` runs, that run's CPU time, and its result (the machine is
    shared: the best run is the one least disturbed)."""
    best: tuple[float, float, Any] | None = None
    for _ in range(max(1, repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, result)
        del result
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--closed", type=int, default=50_000, help="closed demo deals to train on")
    parser.add_argument("--open", type=int, default=100_000, help="open deals to score")
    parser.add_argument(
        "--model",
        type=Path,
        help="model file: loaded if it exists (training is skipped), else written after training",
    )
    parser.add_argument("--repeat", type=int, default=3, help="scoring runs to take the best of")
    parser.add_argument("--stages", action="store_true", help="also time each stage of one scoring run")
    args = parser.parse_args()

    from cockpit.scoring import load_model, save_model

    t = time.perf_counter()
    histories, pipelines, owners, calendar = demo_histories(args.closed)
    closed = sum(h.deal.is_closed for h in histories)
    print(f"demo: {len(histories):,} deals, {closed:,} closed ({time.perf_counter() - t:.1f} s to generate)")

    if args.model is not None and args.model.exists():
        model = load_model(args.model)
        print(f"train: skipped, model loaded from {args.model}")
    else:
        model = train_and_report(histories, pipelines, owners, calendar)
        if args.model is not None:
            save_model(model, args.model)

    deals = open_deals(histories, args.open)
    model.score(deals[:100], AS_OF)  # first call imports scikit-learn's tree predictor
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "cockpit.db") as store:
        t = time.perf_counter()
        sync(store, deals, pipelines, owners)
        print(f"store: {len(deals):,} open deals synced into a new store in {time.perf_counter() - t:.1f} s")
        read_s, read_cpu, columns = best_of(args.repeat, lambda: store.history_columns(closed=False))
        score_s, cpu_s, scores = best_of(args.repeat, lambda: model.score_columns(columns, AS_OF))
        print(
            f"score: {score_s:.2f} s ({cpu_s:.2f} s CPU) for {len(scores):,} open deals with "
            f"{len(scores.reasons.index):,} reasons ({len(scores.reasons.text):,} distinct), columns to "
            f"columns, best of {args.repeat}   target <= 2 s"
        )
        score_s, cpu_s, _ = best_of(args.repeat, lambda: model.score_columns(columns, AS_OF, reasons=False))
        print(f"       {score_s:.2f} s ({cpu_s:.2f} s CPU) without reasons")
        if args.stages:
            for label, value in stage_breakdown(model, columns).items():
                print(f"       {value:5.2f} s  {label}")
        write_s, write_cpu, _ = best_of(args.repeat, lambda: store.write_score_columns(scores))
        print(f"       read the columns from the store: {read_s:.2f} s ({read_cpu:.2f} s CPU)")
        print(f"       write the scores to the store: {write_s:.2f} s ({write_cpu:.2f} s CPU)")
        objects_s, objects_cpu, _ = best_of(1, lambda: list(store.histories(closed=False)))
        print(f"       read the deals as DealHistory objects instead: {objects_s:.2f} s ({objects_cpu:.2f} s CPU)")
    score_s, cpu_s, _ = best_of(1, lambda: model.score(deals, AS_OF))
    print(f"       score from DealHistory objects to DealScore objects: {score_s:.2f} s ({cpu_s:.2f} s CPU)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"
        save_model(model, path)
        t = time.perf_counter()
        load_model(path)
        warm = time.perf_counter() - t
        code = (
            "import time; t = time.perf_counter(); from cockpit.scoring import load_model; "
            f"load_model({str(path)!r}); print(time.perf_counter() - t)"
        )
        cold = float(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        )
        print(
            f"load:  {warm * 1000:.0f} ms ({path.stat().st_size / 1e6:.1f} MB); "
            f"{cold * 1000:.0f} ms in a fresh "
            f"process including `import cockpit.scoring` (scikit-learn is imported at the first score)   "
            "target <= 0.3 s"
        )


if __name__ == "__main__":
    main()
