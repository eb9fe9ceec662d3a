"""Headless commands behind `cockpit ...`. Each returns an exit code; errors are one clear sentence."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any, TextIO

from cockpit.config import ConfigError, Settings, config_path, load_settings, write_template

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("cockpit")


def fail(title: str, message: str, code: int = EXIT_FAILURE) -> int:
    print(f"cockpit: {title}: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line. Known error classes become messages and exit codes."""
    from connectors import ConnectorError

    from cockpit.forecast.config import FxError
    from cockpit.store import StoreError

    try:
        settings = load_settings(args.config)
        _setup_logging(args, settings)
        command = args.command or "tui"
        handler = COMMANDS.get(command)
        if handler is None:
            from cockpit.cli_forecast import COMMANDS as MORE

            handler = MORE[command]
        return handler(args, settings)
    except ConfigError as exc:
        return fail(exc.title, exc.message, EXIT_USAGE)
    except StoreError as exc:
        return fail(exc.title, exc.message, EXIT_FAILURE)
    except ConnectorError as exc:
        return fail(exc.title, exc.message, EXIT_FAILURE)
    except UsageProblem as exc:
        return fail("bad usage", str(exc), EXIT_USAGE)
    except FxError as exc:
        return fail("missing exchange rate", str(exc), EXIT_USAGE)


class UsageProblem(Exception):
    """A command-line value that cannot be used."""


def _setup_logging(args: argparse.Namespace, settings: Settings) -> None:
    """Log to a file under the platform log dir; nothing goes to the terminal while the TUI runs."""
    import platformdirs

    log_dir = platformdirs.user_log_path("cockpit")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_dir / "cockpit.log", encoding="utf-8")
        os.chmod(log_dir / "cockpit.log", 0o600)
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from connectors._redact import RedactingFilter

    handler.addFilter(RedactingFilter())  # tokens and secrets never reach the log file
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(args, "log_level", "INFO"))


def _service(args: argparse.Namespace, settings: Settings):  # noqa: ANN202
    from cockpit.service import CockpitService

    today = _parse_date(args.as_of, "--as-of") if getattr(args, "as_of", None) else None
    return CockpitService(settings, getattr(args, "data_dir", None), today=today)


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageProblem(f"{option} {text!r} is not a date (expected YYYY-MM-DD)") from None


# -- progress ---------------------------------------------------------------------------------


class StatusLine:
    """One line of progress on stderr, redrawn in place on a terminal; plain lines when piped."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = False

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar(StatusLine):
    """A sync's progress bar with counts and rate."""

    def __init__(self, label: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        super().__init__(quiet=quiet, stream=stream)
        self.label = label
        self.started = time.perf_counter()
        self.last = 0.0

    def __call__(self, progress: Any) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        done = progress.total is not None and progress.records >= progress.total
        if not done and now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        rate = progress.records / max(now - self.started, 1e-6)
        if progress.total:
            frac = min(1.0, progress.records / progress.total)
            bar = "█" * int(frac * 24) + "░" * (24 - int(frac * 24))
            text = f"{self.label} {bar} {progress.records:,}/{progress.total:,} ({rate:,.0f}/s)"
        else:
            text = f"{self.label} {progress.records:,} records ({rate:,.0f}/s)"
        if progress.message:
            text += f" {progress.message}"
        self.show(text)


class StepProgress(StatusLine):
    """Progress of a long computation (training, backtest): `message [####----] 40%`."""

    message = ""

    def __call__(self, message: str, fraction: float) -> None:
        if self.quiet or (not self.tty and message == self.message):
            return
        self.message = message
        filled = int(max(0.0, min(1.0, fraction)) * 20)
        self.show(f"{message} [{'#' * filled}{'-' * (20 - filled)}] {fraction:4.0%}")


# -- commands ---------------------------------------------------------------------------------


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(args, settings)
    overrides: dict[str, Any] = {}
    name = args.connector or settings.connector
    if name == "demo":
        overrides = {"size": args.demo_size, "seed": args.demo_seed}
        if args.demo_size is not None and not 10 <= args.demo_size <= 5_000_000:
            raise UsageProblem(f"--demo-size {args.demo_size} is out of range (10 to 5,000,000)")
    elif name == "csv":
        overrides = {"source": args.source, "mapping": args.mapping}
        if args.skip_bad_rows:
            overrides["skip_bad_rows"] = True
    connector = service.make_connector(name, **overrides)
    if args.check:
        check = getattr(connector, "check", None)
        if check is None:
            print(f"{name}: nothing to check (no credentials involved)")
            return EXIT_OK
        for line in asyncio.run(check()):
            print(line)
        return EXIT_OK
    bar = ProgressBar(f"sync {name}", quiet=args.quiet)
    source = args.source if name == "csv" else None
    try:
        summary = asyncio.run(service.sync(connector, source=source, full=args.full, progress=bar))
    finally:
        bar.close()
    for warning in getattr(connector, "warnings", []) or []:
        print(f"cockpit: warning: {warning}", file=sys.stderr)
    for skipped in getattr(connector, "skipped", []) or []:
        print(f"cockpit: skipped {skipped}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.__dict__))
    elif not args.quiet:
        print(
            f"synced {summary.opportunities:,} opportunities and {summary.changes:,} history rows "
            f"from {summary.connector} in {summary.seconds:.1f}s"
            + (f" (resumed from {summary.resumed_from})" if summary.resumed_from else "")
        )
    code = _refresh_model(service, quiet=args.quiet or args.json)
    keep_start_view(service)
    return code


QUIT_PAINT_SECONDS = 0.5
"""As the app quits, its start view is painted again only if computing it took at most this long."""


def keep_start_view(service: Any, *, at_most: float | None = None) -> None:
    """After the store changed: paint the app's start view now, so the next `cockpit` shows it
    with its first frame instead of computing it (~0.3 s). Only a head start: nothing fails here."""
    try:
        from cockpit.screens.forecast import keep_start_view as keep

        keep(service, at_most=at_most)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the app computes the view itself
        logging.getLogger(__name__).info("start view not kept: %r", exc)


def _refresh_model(service: Any, *, quiet: bool) -> int:
    """After a sync: score the open deals, retraining the model first when the closed deals changed.

    Too little history for a model is a warning, not a failed sync: the deals are in the store.
    """
    from cockpit.scoring import ScoringError

    bar = StepProgress(quiet=quiet)
    try:
        run = service.refresh_model(progress=bar)
    except ScoringError as exc:
        bar.close()
        print(f"cockpit: warning: no win-model scores: {exc.title}: {exc.message}", file=sys.stderr)
        return EXIT_OK
    bar.close()
    if not quiet:
        how = f"retrained the win model ({run.report.why})" if run.retrained else f"win model {run.version}"
        print(f"scored {run.scored:,} open deals: {how}")
    return EXIT_OK


DEAL_COLUMNS = (
    "id", "name", "account", "owner", "pipeline", "stage", "amount", "currency", "amount_reporting", "close_date",
    "category", "days_in_stage", "created", "lead_source",
)


def _deal_record(row: Any) -> dict[str, Any]:
    deal = row.deal
    return {
        "id": deal.id,
        "name": deal.name,
        "account": deal.account,
        "owner": row.owner_name,
        "pipeline": row.pipeline_name,
        "stage": row.stage_name,
        "amount": str(deal.amount),
        "currency": deal.currency,
        "amount_reporting": str(row.amount),
        "close_date": deal.close_date.isoformat() if deal.close_date else None,
        "category": row.category.value,
        "days_in_stage": row.days_in_stage,
        "created": deal.created_at.date().isoformat() if deal.created_at else None,
        "lead_source": deal.lead_source,
    }


def cmd_deals(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.service import DealFilter

    service = _service(args, settings)
    if service.store_is_empty():
        return fail("empty store", f"no deals in {service.store_path}; run `cockpit sync` first")
    try:
        quarter = service.parse_quarter(args.quarter)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    try:
        rows = service.deals(DealFilter(quarter=quarter, stage=args.stage, owner=args.owner, pipeline=args.pipeline))
    except KeyError as exc:
        raise UsageProblem(exc.args[0]) from None
    rows.sort(key=lambda r: (-r.amount, r.deal.id))
    records = [_deal_record(r) for r in rows]
    if args.json:
        json.dump({"quarter": quarter.label, "as_of": service.today().isoformat(), "deals": records},
                  sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=DEAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        _print_table(records, quarter.label)
    return EXIT_OK


def _print_table(records: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Open deals · {title} · {len(records)} deals", expand=False)
    for col, justify in (("owner", "left"), ("account", "left"), ("stage", "left"), ("amount", "right"),
                         ("close_date", "left"), ("category", "left"), ("days_in_stage", "right")):
        table.add_column(col.replace("_", " "), justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for r in records:
        table.add_row(
            r["owner"], r["account"], r["stage"], f"{r['currency']} {float(r['amount']):,.0f}", r["close_date"] or "",
            r["category"].replace("_", " "), str(r["days_in_stage"]),
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    path = config_path(args.config)
    if args.config_command == "path":
        print(path)
    elif args.config_command == "init":
        write_template(path, args.connector, force=args.force)
        print(f"wrote {path}")
    elif args.config_command == "show":
        print(json.dumps(settings.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_tui(args: argparse.Namespace, settings: Settings) -> int:
    from cockpit.app import build_app

    service = _service(args, settings)
    mouse = settings.ui.mouse
    if getattr(args, "no_mouse", False):
        mouse = False
    elif getattr(args, "mouse", False):
        mouse = True
    if mouse is None:
        mouse = not any(os.environ.get(v) for v in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"))
    app = build_app(service, settings)
    app.run(mouse=mouse)
    keep_start_view(service, at_most=QUIT_PAINT_SECONDS)  # the terminal is back; reviews write to the store
    return int(app.return_code or 0)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the TUI to a browser tab, for a manager who shares the tab in the call."""
    import shlex

    try:
        from textual_serve.server import Server
    except ImportError:
        return fail("textual-serve is not installed", "install it with: pip install 'deal-cockpit[serve]'", EXIT_USAGE)
    command = [sys.executable, "-m", "cockpit", "tui", "--no-mouse"]
    for option in ("data_dir", "config", "as_of"):
        value = getattr(args, option, None)
        if value:
            command += [f"--{option.replace('_', '-')}", str(value)]
    print(f"serving the cockpit on http://{args.host}:{args.port} (ctrl+c stops)", file=sys.stderr)
    Server(shlex.join(command), host=args.host, port=args.port, title="Deal Cockpit").serve()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "sync": cmd_sync,
    "deals": cmd_deals,
    "config": cmd_config,
    "tui": cmd_tui,
    "serve": cmd_serve,
}
