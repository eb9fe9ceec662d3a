"""Exports of submissions and hygiene lists: TOML (round-trips) and CSV, written atomically."""

from cockpit.export.atomic import ExportError, write_atomic
from cockpit.export.csvfile import (
    HYGIENE_COLUMNS,
    SUBMISSION_COLUMNS,
    hygiene_to_csv,
    submission_to_csv,
    write_hygiene_csv,
    write_submission_csv,
)
from cockpit.export.tomlfile import (
    FORMAT,
    FORMAT_VERSION,
    read_submission_toml,
    submission_from_toml,
    submission_to_toml,
    write_submission_toml,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HYGIENE_COLUMNS",
    "SUBMISSION_COLUMNS",
    "ExportError",
    "hygiene_to_csv",
    "read_submission_toml",
    "submission_from_toml",
    "submission_to_csv",
    "submission_to_toml",
    "write_atomic",
    "write_hygiene_csv",
    "write_submission_csv",
    "write_submission_toml",
]
