"""CSV exports: a submission (one row per deal) and the hygiene list (one row per deal to fix).

UTF-8 with a header row of stable column names, comma-separated, RFC 4180 quoting, `\\r\\n` line
ends. Money is plain decimal text ("1234.50"). Free-text cells (deal name, note, flag details) that
start with `=`, `+`, `-`, `@`, tab or carriage return get a leading `'` so a spreadsheet never runs
them as formulas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from cockpit.export.atomic import write_atomic
from cockpit.forecast.flags import DealFlags
from cockpit.models.submission import Submission

SUBMISSION_COLUMNS = (
    "submission_id",
    "quarter",
    "scope",
    "opportunity_id",
    "name",
    "owner_id",
    "pipeline_id",
    "stage_id",
    "category",
    "won",
    "amount",
    "currency",
    "fx_rate",
    "value",
    "reporting_currency",
    "close_date",
    "amount_override",
    "close_date_override",
    "note",
    "reviewed",
)
"""Header of a submission CSV; `value` is the effective amount in the reporting currency."""

HYGIENE_COLUMNS = (
    "opportunity_id",
    "name",
    "owner_id",
    "stage_id",
    "amount",
    "currency",
    "close_date",
    "issues",
    "details",
)
"""Header of a hygiene CSV; `issues` are flag kinds joined by `;`, `details` their messages joined by `; `."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def _write(rows: Iterable[Iterable[Any]], header: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def submission_to_csv(submission: Submission) -> str:
    """CSV text: one row per deal line, in opportunity-id order."""
    rows = (
        (
            submission.id,
            submission.quarter,
            submission.scope,
            line.opportunity_id,
            _text(line.name),
            line.owner_id,
            line.pipeline_id,
            line.stage_id,
            line.category,
            line.won,
            line.amount,
            line.currency,
            line.fx_rate,
            line.value,
            submission.currency,
            line.close_date,
            line.amount_override,
            line.close_date_override,
            _text(line.note),
            line.reviewed,
        )
        for line in submission.lines
    )
    return _write(rows, SUBMISSION_COLUMNS)


def hygiene_to_csv(rows: Iterable[DealFlags]) -> str:
    """CSV text of a hygiene list (see `cockpit.forecast.flags.hygiene_list`)."""
    out = (
        (
            r.opportunity_id,
            _text(r.name),
            r.owner_id,
            r.stage_id,
            r.amount,
            r.currency,
            r.close_date,
            ";".join(f.kind.value for f in r.hygiene),
            _text("; ".join(f.message for f in r.hygiene)),
        )
        for r in rows
    )
    return _write(out, HYGIENE_COLUMNS)


def write_submission_csv(submission: Submission, path: Path | str, *, force: bool = False) -> Path:
    return write_atomic(path, submission_to_csv(submission).encode("utf-8"), force=force)


def write_hygiene_csv(rows: Iterable[DealFlags], path: Path | str, *, force: bool = False) -> Path:
    return write_atomic(path, hygiene_to_csv(rows).encode("utf-8"), force=force)
