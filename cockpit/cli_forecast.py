"""Headless commands of the win model and the forecast engine: train, score, forecast, changes,
flags, backtest, submissions, export. Each returns an exit code; errors are one clear sentence."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cockpit.cli import EXIT_OK, StepProgress, UsageProblem, _parse_date, _service, fail, keep_start_view
from cockpit.config import Settings
from cockpit.format import compact, json_ready


def _dump(data: Any) -> None:
    json.dump(json_ready(data), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def _require_store(service: Any) -> None:
    if service.store_is_empty():
        raise UsageProblem(f"no deals in {service.store_path}; run `cockpit sync` first")


def _quarter(service: Any, text: str | None) -> Any:
    try:
        return service.parse_quarter(text)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _scope(service: Any, text: str | None) -> str:
    try:
        return service.resolve_scope(text)
    except KeyError as exc:
        raise UsageProblem(exc.args[0]) from None


# -- the win model ----------------------------------------------------------------------------------


def _with_progress(args: argparse.Namespace, job: Any) -> Any:
    """Run `job(progress)` with a progress line on stderr; a ScoringError becomes its exit code."""
    from cockpit.scoring import ScoringError

    bar = StepProgress(quiet=args.quiet or args.json)
    try:
        return job(progress=bar)
    except ScoringError as exc:
        return fail(exc.title, exc.message)
    finally:
        bar.close()


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(args, settings)
    _require_store(service)
    run = _with_progress(args, service.train)
    if isinstance(run, int):
        return run
    report = run.report
    if args.json:
        _dump({"version": run.version, "model_file": str(service.model_path), "scored_open_deals": run.scored,
               "seconds": round(run.seconds, 2), "report": report.to_dict()})
    else:
        print(report.to_text())
        print(f"\nsaved {service.model_path} ({run.version}); scored {run.scored:,} open deals in {run.seconds:.1f}s")
    keep_start_view(service)
    return EXIT_OK


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.scoring import ScoringError
    from cockpit.service import DealFilter

    service = _service(args, settings)
    _require_store(service)
    if args.limit is not None and args.limit < 1:
        raise UsageProblem(f"--limit {args.limit} must be 1 or more")
    quarter = _quarter(service, args.quarter)
    try:
        run = service.score()
    except ScoringError as exc:
        return fail(exc.title, exc.message)
    try:
        rows = service.deals(DealFilter(quarter=quarter, owner=args.owner))
    except KeyError as exc:
        raise UsageProblem(exc.args[0]) from None
    with service.store(create=False) as store:
        scores = store.scores([r.deal.id for r in rows])
        stages = store.stages()
    rows.sort(key=lambda r: (-r.amount, r.deal.id))
    if args.limit:
        rows = rows[: args.limit]
    records = []
    for row in rows:
        score = scores.get(row.deal.id)
        deal = row.deal
        records.append({
            "id": deal.id, "name": deal.name, "account": deal.account, "owner": row.owner_name,
            "stage": row.stage_name, "amount": deal.amount, "currency": deal.currency,
            "close_date": deal.close_date, "crm_probability": stages[deal.stage_id].probability if deal.probability is None else deal.probability,
            "p_won": round(score.p_won, 4) if score else None,
            "p_in_quarter": round(score.p_in_quarter, 4) if score else None,
            "reasons": [{"text": r.text, "points": round(r.points, 1)} for r in score.reasons] if score else [],
        })
    if args.json:
        _dump({"quarter": quarter.label, "as_of": service.today(), "model_version": run.version, "deals": records})
    else:
        _print_scores(quarter.label, run.version, service.today(), records)
    keep_start_view(service)  # the scores were written again
    return EXIT_OK


def _print_scores(quarter: str, version: str, today: object, records: list[dict[str, Any]]) -> None:
    print(f"{quarter} · {len(records)} open deals · model {version} · as of {today}")
    for r in records:
        p = "–" if r["p_won"] is None else f"{r['p_won']:.0%}"
        q = "–" if r["p_in_quarter"] is None else f"{r['p_in_quarter']:.0%}"
        print(f"\n{r['account'] or r['name']} · {r['owner']} · {r['stage']} · {r['currency']} {r['amount']:,.0f} "
              f"· close {r['close_date'] or '–'}")
        print(f"  CRM {float(r['crm_probability']):.0%} · model: win {p}, this quarter {q}")
        for reason in r["reasons"]:
            print(f"  {reason['points']:+5.1f} pts  {reason['text']}")


# -- the forecast -----------------------------------------------------------------------------------


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(args, settings)
    _require_store(service)
    view = service.forecast_view(_quarter(service, args.quarter), _scope(service, args.scope))
    roll = view.rollup
    t = roll.totals
    rng = roll.range
    data = {
        "quarter": roll.quarter.label, "as_of": roll.as_of, "scope": view.scope, "scope_name": view.scope_name,
        "currency": roll.currency,
        "totals": {"closed": t.closed, "commit": t.commit, "best_case": t.best_case, "pipeline": t.pipeline,
                   "omitted": t.omitted, "deals": t.deals},
        "commit_forecast": t.commit_forecast, "best_case_forecast": t.best_case_forecast,
        "stage_weighted_forecast": t.stage_weighted_forecast,
        "model": None if rng is None else {
            "expected": rng.expected, "p10": rng.p10, "p50": rng.p50, "p90": rng.p90,
            "from_open_deals": rng.open_expected, "from_deals_not_yet_created": rng.run_rate_expected,
        },
        "unscored_open_deals": roll.unscored,
        "quota": roll.quota, "attainment": roll.attainment, "coverage": roll.coverage,
        "by_pipeline": {pid: {"closed": c.closed, "commit": c.commit, "best_case": c.best_case,
                              "pipeline": c.pipeline, "omitted": c.omitted} for pid, c in roll.by_pipeline.items()},
        "owners": [{"owner_id": r.owner_id, "name": r.name, "own_deals_only": r.own_deals_only,
                    "closed": r.totals.closed, "commit": r.totals.commit, "best_case": r.totals.best_case,
                    "pipeline": r.totals.pipeline, "quota": r.quota, "attainment": r.attainment}
                   for r in roll.rows],
        "last_submission": None if view.last_submission is None else {
            "id": view.last_submission.id, "created_at": view.last_submission.created_at,
            "number": view.last_submission.manager_number, "author": view.last_submission.author},
    }
    if args.json:
        _dump(data)
        return EXIT_OK
    cur = roll.currency
    print(f"{roll.quarter.label} · {view.scope_name} · as of {roll.as_of} · {cur}")
    print(f"  closed won   {compact(t.closed):>10}")
    print(f"  commit       {compact(t.commit):>10}   closed + commit    {compact(t.commit_forecast):>10}")
    print(f"  best case    {compact(t.best_case):>10}   + best case        {compact(t.best_case_forecast):>10}")
    print(f"  pipeline     {compact(t.pipeline):>10}   stage-weighted     {compact(t.stage_weighted_forecast):>10}")
    print(f"  omitted      {compact(t.omitted):>10}")
    if rng is not None:
        print(f"  model        P50 {compact(rng.p50)} (P10 {compact(rng.p10)} – P90 {compact(rng.p90)}), "
              f"of which {compact(rng.run_rate_expected)} from deals not created yet")
    else:
        print("  model        no scores yet: run `cockpit train`")
    if roll.quota:
        att = f"{roll.attainment:.0%}" if roll.attainment is not None else "–"
        cov = f"{roll.coverage:.1f}×" if roll.coverage is not None else "–"
        print(f"  quota        {compact(roll.quota):>10}   attainment {att}   coverage {cov}")
    if view.last_submission is not None:
        sub = view.last_submission
        print(f"  submitted    {compact(sub.manager_number):>10}   by {sub.author} on {sub.created_at:%Y-%m-%d}")
    print()
    print(f"  {'owner':<24}{'closed':>10}{'commit':>10}{'best':>10}{'pipeline':>10}{'attain':>8}")
    for row in roll.rows:
        name = row.name + (" (own deals)" if row.own_deals_only else "")
        att = f"{row.attainment:.0%}" if row.attainment is not None else "–"
        print(f"  {_fit(name, 24)}{compact(row.totals.closed):>10}{compact(row.totals.commit):>10}"
              f"{compact(row.totals.best_case):>10}{compact(row.totals.pipeline):>10}{att:>8}")
    return EXIT_OK


def _fit(text: str, width: int) -> str:
    """Pad or cut to `width` terminal cells (CJK characters take two)."""
    from rich.cells import cell_len, set_cell_size

    return set_cell_size(text, width) if cell_len(text) != width else text


def cmd_changes(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(args, settings)
    _require_store(service)
    since = _parse_date(args.since, "--since") if args.since else None
    if since is not None and since > service.today():
        raise UsageProblem(f"--since {since} is after today ({service.today()}); give a day on or before it")
    view = service.changes_view(_quarter(service, args.quarter), _scope(service, args.scope), since)
    fall = view.waterfall
    names = view.owner_names
    if args.json:
        _dump({
            "quarter": fall.quarter.label, "start": fall.start, "end": fall.end, "currency": fall.currency,
            "scope": view.scope, "start_total": fall.start_total, "end_total": fall.end_total,
            "balances": fall.balances,
            "buckets": [{"bucket": b.bucket.value, "amount": b.amount,
                         "deals": [{"id": m.opportunity_id, "name": m.name, "owner": names.get(m.owner_id, m.owner_id),
                                    "amount": m.amount, "detail": m.detail} for m in b.movements]}
                        for b in fall.buckets.values()],
            "category_moves": fall.category_moves,
            "stage_forward": fall.stage_forward,
            "stage_backward": fall.stage_backward,
        })
        return EXIT_OK
    print(f"{fall.quarter.label} · {view.scope_name} · open pipeline {fall.start} → {fall.end} · {fall.currency}")
    for label, amount in fall.steps():
        print(f"  {_fit(label, 28)}{amount:>16,.0f}")
    for bucket in fall.buckets.values():
        if not bucket.movements or not args.deals:
            continue
        print(f"\n{bucket.bucket.label} ({len(bucket.movements)} deals, {bucket.amount:+,.0f})")
        for m in sorted(bucket.movements, key=lambda m: -abs(m.amount)):
            print(f"  {m.amount:>+14,.0f}  {_fit(m.name, 30)} {names.get(m.owner_id, m.owner_id)}  {m.detail}")
    print(f"\n{len(fall.category_moves)} category moves, {len(fall.stage_forward)} stage moves forward, "
          f"{len(fall.stage_backward)} backward" + ("" if args.deals else " (--deals lists every deal)"))
    return EXIT_OK


def cmd_flags(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.export import ExportError, hygiene_to_csv, write_hygiene_csv
    from cockpit.forecast.flags import hygiene_list

    service = _service(args, settings)
    _require_store(service)
    quarter = _quarter(service, args.quarter) if args.quarter else None
    flagged = [f for f in service.flags(quarter, _scope(service, args.scope)) if f.flags]
    if args.hygiene:
        flagged = hygiene_list(flagged)
    if args.out:
        try:
            path = write_hygiene_csv(flagged, Path(args.out), force=args.force)
        except ExportError as exc:
            return fail(exc.title, exc.message)
        print(f"wrote {len(flagged)} deals to {path}")
        return EXIT_OK
    if args.csv:
        sys.stdout.write(hygiene_to_csv(flagged))
        return EXIT_OK
    if args.json:
        _dump([{"id": f.opportunity_id, "name": f.name, "owner_id": f.owner_id, "stage_id": f.stage_id,
                "amount": f.amount, "currency": f.currency, "close_date": f.close_date,
                "flags": [{"kind": x.kind.value, "message": x.message} for x in f.flags]} for f in flagged])
        return EXIT_OK
    with service.store(create=False) as store:
        owners = {o.id: o.name for o in store.owners()}
    print(f"{len(flagged)} deals {'need their data fixed' if args.hygiene else 'flagged'}")
    for f in flagged:
        print(f"\n{f.name} · {owners.get(f.owner_id, f.owner_id)} · {f.currency} {f.amount:,.0f} · close {f.close_date or '–'}")
        for flag in f.flags:
            print(f"  {flag.kind.value:<18} {flag.message}")
    return EXIT_OK


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(args, settings)
    _require_store(service)
    if not 1 <= args.quarters <= 20:
        raise UsageProblem(f"--quarters {args.quarters} is out of range (1 to 20)")
    scope = _scope(service, args.scope)
    run = _with_progress(args, lambda progress: service.backtest(args.quarters, scope, method=args.method,
                                                                  progress=progress))
    if isinstance(run, int):
        return run
    report = run.report
    if args.json:
        _dump({"scope": run.scope, "method": run.method, "seconds": round(run.seconds, 1), **report.to_dict()})
        return EXIT_OK
    print(f"Backtest of {', '.join(run.method)} for {run.scope} ({run.seconds:.0f}s)")
    for label, how in run.method.items():
        print(f"  {label}: probabilities from {how}")
    print("\nMean absolute error % by week of quarter (forecast vs what closed)")
    print(f"  {'week':>4}{'model P50':>11}{'bias':>7}{'luck':>6}{'stage-wtd':>11}{'commit':>8}{'submitted':>11}"
          f"{'in P10-P90':>12}")
    for w in report.weeks:
        print(f"  {w.week:>4}{_pct(w.model_error):>11}{_pct(w.model_bias, signed=True):>7}{_pct(w.expected_error):>6}"
              f"{_pct(w.stage_weighted_error):>11}{_pct(w.commit_error):>8}{_pct(w.submission_error):>11}"
              f"{w.inside_range:>12.0%}")
    print("  luck: the miss the model's own ranges expect from chance alone")
    print("  (an error near it is the quarter's luck; well above it, the model's)")
    print(f"\nActual inside the model's P10–P90 in {report.inside_range:.0%} of quarter-weeks.")
    for bias in report.owner_bias:
        print(f"  submissions of {bias.owner_id}: bias {bias.bias:+.1f}%, mean abs error {bias.mean_abs_error:.1f}% "
              f"over {bias.submissions}")
    return EXIT_OK


def _pct(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


# -- submissions and export -------------------------------------------------------------------------


def cmd_submissions(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.store.submissions import list_submissions

    service = _service(args, settings)
    quarter = _quarter(service, args.quarter).label if args.quarter else None
    scope = _scope(service, args.scope) if args.scope else None
    with service.store(create=False) as store:
        subs = list_submissions(store.conn, quarter, scope)
    if args.json:
        _dump([{"id": s.id, "quarter": s.quarter, "scope": s.scope, "author": s.author, "created_at": s.created_at,
                "currency": s.currency, "number": s.manager_number, "reason": s.reason,
                "model_p50": s.model.p50 if s.model else None, "deals": len(s.lines)} for s in subs])
        return EXIT_OK
    if not subs:
        print("no submissions yet: commit a forecast in the cockpit (Review, then C)")
        return EXIT_OK
    for s in subs:
        print(f"{s.id:>5}  {s.quarter}  {s.scope:<12} {s.created_at:%Y-%m-%d %H:%M}  {s.author:<12} "
              f"{s.currency} {s.manager_number:>14,.0f}  {len(s.lines)} deals")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.export import ExportError
    from cockpit.store.submissions import SubmissionStoreError, get_submission, list_submissions

    service = _service(args, settings)
    quarter = _quarter(service, args.quarter)
    scope = _scope(service, args.scope)
    with service.store(create=False) as store:
        if args.submission is not None:
            try:
                submission = get_submission(store.conn, args.submission)
            except SubmissionStoreError as exc:
                return fail(exc.title, exc.message)
            if submission.quarter != quarter.label:
                raise UsageProblem(f"submission {args.submission} is for {submission.quarter}, not {quarter.label}")
        else:
            found = list_submissions(store.conn, quarter.label, scope)
            if not found:
                return fail("nothing to export", f"no submission for {quarter.label}"
                            + (f" and scope {scope}" if scope else "") + "; commit one in the cockpit first")
            submission = found[-1]
    out = Path(args.out) if args.out else service.default_export_path(submission, args.format)
    try:
        path = service.export(submission, args.format, out, force=args.force)
    except ExportError as exc:
        return fail(exc.title, exc.message)
    except OSError as exc:
        return fail("cannot write the export", f"{out}: {exc.strerror or exc}")
    if not args.quiet:
        print(f"wrote submission {submission.id} ({submission.quarter}, {submission.scope}) to {path}")
    return EXIT_OK


COMMANDS = {
    "train": cmd_train,
    "score": cmd_score,
    "forecast": cmd_forecast,
    "changes": cmd_changes,
    "flags": cmd_flags,
    "backtest": cmd_backtest,
    "submissions": cmd_submissions,
    "export": cmd_export,
}
