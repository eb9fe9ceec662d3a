"""Benchmark of the win model: training, scoring with reasons, and model-file loading.

Run on demand (prints figures; it is not a test):

    python bench/bench_scoring.py                  # 50,000 closed demo deals, 100,000 open deals
    python bench/bench_scoring.py --closed 5000 --open 10000

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
from datetime import date, timedelta
from pathlib import Path

from cockpit.models import DealHistory, FiscalCalendar, histories_of
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--closed", type=int, default=50_000, help="closed demo deals to train on")
    parser.add_argument("--open", type=int, default=100_000, help="open deals to score")
    args = parser.parse_args()

    from cockpit.scoring import ScoringConfig, load_model, save_model, train

    t = time.perf_counter()
    histories, pipelines, owners, calendar = demo_histories(args.closed)
    closed = sum(h.deal.is_closed for h in histories)
    print(f"demo: {len(histories):,} deals, {closed:,} closed ({time.perf_counter() - t:.1f} s to generate)")

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

    deals = open_deals(histories, args.open)
    model = result.model
    model.score(deals[:100], AS_OF)  # first call imports scikit-learn's tree predictor
    t = time.perf_counter()
    scores = model.score(deals, AS_OF)
    score_s = time.perf_counter() - t
    reasons = sum(len(s.reasons) for s in scores)
    print(f"score: {score_s:.2f} s for {len(scores):,} open deals with {reasons:,} reasons   target <= 2 s")
    t = time.perf_counter()
    model.score(deals, AS_OF, reasons=False)
    print(f"       {time.perf_counter() - t:.2f} s without reasons")

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
