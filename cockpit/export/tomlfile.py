"""A submission as TOML: metadata, totals, the model's range, one `[[lines]]` table per deal.

Money is written as strings ("1234.50"), never floats; dates and times are TOML dates and
date-times; keys keep one order and lines are sorted by opportunity id, so two weeks' files diff
line by line. Absent optional values are left out (TOML has no null). `submission_from_toml` reads
the file back into the same `Submission` (see docs/export-formats.md).
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from cockpit.export.atomic import ExportError, write_atomic
from cockpit.models.submission import Submission

FORMAT = "deal-cockpit/submission"
FORMAT_VERSION = 1

_SUBMISSION_KEYS = (
    "id",
    "quarter",
    "scope",
    "author",
    "created_at",
    "currency",
    "manager_number",
    "reason",
    "model_version",
    "data_fingerprint",
)
_TOTAL_KEYS = ("closed", "commit", "best_case", "pipeline", "omitted")
_MODEL_KEYS = ("expected", "p10", "p50", "p90")
_LINE_KEYS = (
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
    "close_date",
    "amount_override",
    "close_date_override",
    "note",
    "reviewed",
)
_MONEY = {"manager_number", "amount", "fx_rate", "amount_override", *_TOTAL_KEYS, *_MODEL_KEYS}


def _plain(key: str, value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if hasattr(value, "value") and key == "category":
        return value.value
    return value


def _table(model: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value = getattr(model, key)
        if value is not None:
            out[key] = _plain(key, value)
    return out


def submission_to_toml(submission: Submission) -> str:
    """The TOML text of a submission."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "submission": _table(submission, _SUBMISSION_KEYS),
        "totals": _table(submission.totals, _TOTAL_KEYS),
    }
    if submission.model is not None:
        doc["model"] = _table(submission.model, _MODEL_KEYS)
    doc["lines"] = [_table(line, _LINE_KEYS) for line in submission.lines]
    return tomli_w.dumps(doc, multiline_strings=False)


def submission_from_toml(text: str, source: str = "<toml>") -> Submission:
    """Read a submission from TOML text; ExportError names the source, the field and the problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExportError("Not valid TOML", f"{source}: {exc}") from None
    if doc.get("format") != FORMAT:
        raise ExportError(
            "Not a submission", f"{source}: format is {doc.get('format')!r}, expected {FORMAT!r}"
        )
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(
            "Unsupported version",
            f"{source}: format_version is {version!r}; this cockpit reads version {FORMAT_VERSION}",
        )
    _check_no_floats(doc, source)
    data = dict(doc.get("submission", {}))
    data["totals"] = doc.get("totals", {})
    if "model" in doc:
        data["model"] = doc["model"]
    lines = doc.get("lines", [])
    if not isinstance(lines, list):
        raise ExportError("Bad submission file", f"{source}: 'lines' must be an array of tables ([[lines]])")
    data["lines"] = lines
    try:
        return Submission.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(first["loc"], lines)
        raise ExportError("Bad submission file", f"{source}: {where}: {first['msg']}") from None


def _where(loc: tuple[Any, ...], lines: list[Any]) -> str:
    """A readable field path: `lines[3] (deal 006A1).amount`."""
    if len(loc) >= 2 and loc[0] == "lines" and isinstance(loc[1], int) and loc[1] < len(lines):
        deal = lines[loc[1]].get("opportunity_id", "?") if isinstance(lines[loc[1]], dict) else "?"
        rest = ".".join(str(p) for p in loc[2:])
        return f"lines[{loc[1]}] (deal {deal})" + (f".{rest}" if rest else "")
    return ".".join(str(p) for p in loc) or "(top level)"


def _check_no_floats(doc: dict[str, Any], source: str) -> None:
    tables: list[tuple[str, Any]] = [
        ("submission", doc.get("submission", {})),
        ("totals", doc.get("totals", {})),
        ("model", doc.get("model", {})),
    ]
    tables += [(f"lines[{i}]", line) for i, line in enumerate(doc.get("lines", []) or [])]
    for name, table in tables:
        if not isinstance(table, dict):
            raise ExportError("Bad submission file", f"{source}: [{name}] must be a table")
        for key, value in table.items():
            if key in _MONEY and isinstance(value, float):
                raise ExportError(
                    "Money as a float",
                    f'{source}: {name}.{key} = {value!r}; write money as a string (e.g. "{value:.2f}") '
                    "so no cent is lost",
                )


def read_submission_toml(path: Path | str) -> Submission:
    """Read a submission TOML file."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ExportError("Cannot read", f"{file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ExportError("Not UTF-8", f"{file}: byte {exc.start} is not UTF-8") from None
    return submission_from_toml(text, str(file))


def write_submission_toml(submission: Submission, path: Path | str, *, force: bool = False) -> Path:
    """Write the submission's TOML atomically; refuses to replace a file unless `force`."""
    return write_atomic(path, submission_to_toml(submission).encode("utf-8"), force=force)
