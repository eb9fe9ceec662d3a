"""Command line: `cockpit` opens the TUI; subcommands run headless.

Exit codes: 0 ok, 1 failure (sync, I/O), 2 bad usage or configuration. Heavy modules are imported
after argument parsing so `cockpit --version` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from cockpit import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the command line: exit code 2."""


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Global options, accepted before or after the subcommand (the later one wins)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--data-dir", metavar="DIR", default=default,
                        help="store directory (default: $COCKPIT_DATA_DIR or the platform data dir)")
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="config file (default: $COCKPIT_CONFIG or the platform config dir)")
    parser.add_argument("--as-of", metavar="DATE", default=default, help="treat DATE (YYYY-MM-DD) as today")
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="no progress output")
    parser.add_argument("--log-level", default="INFO" if top else argparse.SUPPRESS,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cockpit",
        description="Review the quarter's deals and commit the forecast. Without a command, opens the cockpit.",
    )
    parser.add_argument("--version", action="version", version=f"cockpit {__version__}")
    _add_common(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tui = sub.add_parser("tui", parents=[common], help="open the cockpit (the default)")
    tui.add_argument("--no-mouse", action="store_true", help="turn mouse tracking off (default over SSH)")
    tui.add_argument("--mouse", action="store_true", help="turn mouse tracking on even over SSH")

    serve = sub.add_parser("serve", parents=[common], help="serve the cockpit to a browser (textual-serve)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")

    sync = sub.add_parser("sync", parents=[common], help="pull deals from a CRM or export into the store")
    sync.add_argument("--connector", help="demo, csv, ... (default: from config, else demo)")
    sync.add_argument("--source", help="source of the connector (e.g. the CSV export directory)")
    sync.add_argument("--mapping", help="CSV column mapping (TOML)")
    sync.add_argument("--skip-bad-rows", action="store_true", help="CSV: skip bad rows and report each")
    sync.add_argument("--full", action="store_true", help="ignore the resume cursor; fetch everything")
    sync.add_argument("--demo-size", type=int, metavar="N", help="demo: number of opportunities (up to 1,000,000)")
    sync.add_argument("--demo-seed", type=int, metavar="N", help="demo: seed")
    sync.add_argument("--check", action="store_true", help="verify credentials and show what can be read; write nothing")
    sync.add_argument("--json", action="store_true", help="print the summary as JSON")

    deals = sub.add_parser("deals", parents=[common], help="list open deals")
    deals.add_argument("--quarter", help="FY2027-Q1, 2026Q4, current, next, previous (default: current)")
    deals.add_argument("--stage", help="stage name or id")
    deals.add_argument("--owner", help="owner (or manager: their whole team) by name or id")
    deals.add_argument("--pipeline", help="pipeline id")
    fmt = deals.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")

    config = sub.add_parser("config", parents=[common], help="show or create the config file")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_sub.add_parser("path", parents=[common], help="print the config file's path")
    init = config_sub.add_parser("init", parents=[common], help="write a commented config template")
    init.add_argument("--connector", default="demo")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    config_sub.add_parser("show", parents=[common], help="print the settings in effect")

    _add_forecast_commands(sub, common)
    return parser


def _add_forecast_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The win model's and the forecast engine's commands (handlers in cockpit.cli_forecast)."""
    train = sub.add_parser("train", parents=[common], help="train the win model on the closed deals' histories")
    train.add_argument("--json", action="store_true", help="print the report as JSON")

    score = sub.add_parser("score", parents=[common], help="score open deals with the model; show both chances and reasons")
    score.add_argument("--quarter", help="quarter of the deals (default: current)")
    score.add_argument("--owner", help="owner or manager (their team) by name or id")
    score.add_argument("--limit", type=int, help="only the N largest deals")
    score.add_argument("--json", action="store_true", help="JSON output")

    def scoped(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quarter", help="FY2027-Q1, 2026Q4, current, next, previous (default: current)")
        parser.add_argument("--scope", help="owner or manager by name or id; 'all' for everyone (default: config)")

    forecast = sub.add_parser("forecast", parents=[common], help="the quarter's roll-up and the model's range")
    scoped(forecast)
    forecast.add_argument("--json", action="store_true", help="JSON output")

    changes = sub.add_parser("changes", parents=[common], help="what moved the quarter's pipeline (a waterfall)")
    scoped(changes)
    changes.add_argument("--since", metavar="DATE", help="start date (default: last submission, else 7 days ago)")
    changes.add_argument("--deals", action="store_true", help="list the deals of every bucket")
    changes.add_argument("--json", action="store_true", help="JSON output")

    flags = sub.add_parser("flags", parents=[common], help="risk flags of open deals; --hygiene for data to fix")
    flags.add_argument("--quarter", help="only deals closing by the end of this quarter (default: every open deal)")
    flags.add_argument("--scope", help="owner or manager by name or id; 'all' for everyone")
    flags.add_argument("--hygiene", action="store_true", help="only deals whose data needs fixing before the call")
    fmt = flags.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--out", metavar="PATH", help="write the CSV to PATH (atomically)")
    flags.add_argument("--force", action="store_true", help="replace an existing --out file")

    backtest = sub.add_parser("backtest", parents=[common], help="forecast accuracy over past quarters, week by week")
    backtest.add_argument("--quarters", type=int, default=4, help="how many past quarters (default: 4)")
    backtest.add_argument("--scope", help="owner or manager by name or id; 'all' for everyone")
    backtest.add_argument("--method", choices=["model", "rates"], default="model",
                          help="model: retrain before each quarter (default); rates: in-quarter rates (fast)")
    backtest.add_argument("--json", action="store_true", help="JSON output")

    subs = sub.add_parser("submissions", parents=[common], help="list committed forecasts")
    subs.add_argument("--quarter", help="only this quarter")
    subs.add_argument("--scope", help="only this scope (owner or manager; 'all' for everyone)")
    subs.add_argument("--json", action="store_true", help="JSON output")

    export = sub.add_parser("export", parents=[common], help="export a submission as TOML or CSV")
    export.add_argument("--quarter", required=True, help="the submission's quarter")
    export.add_argument("--format", required=True, choices=["toml", "csv"])
    export.add_argument("--submission", type=int, metavar="ID", help="submission id (default: the scope's latest)")
    export.add_argument("--scope", help="scope of the latest submission (default: config)")
    export.add_argument("--out", metavar="PATH", help="file to write (default: the export dir)")
    export.add_argument("--force", action="store_true", help="replace an existing file")


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP threads (scikit-learn's boosting) spin while idle by default: on a shared server a
    # cockpit that trained once would keep burning CPU. Passive waiting costs nothing measurable.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # pydantic looks for plugins in every installed distribution's entry points on first use
    # (~40 ms of start-up here); the cockpit uses none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser()
    args = parser.parse_args(argv)
    from cockpit.cli import run

    try:
        code = run(args)
    except KeyboardInterrupt:
        print("cockpit: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # `cockpit flags | head`: the reader left; stop quietly like any Unix filter.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    return code


if __name__ == "__main__":
    sys.exit(main())
