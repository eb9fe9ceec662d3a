"""Settings: one TOML file, read with tomllib, validated by pydantic; platformdirs paths.

Lookup order for the file: `--config`, then `$COCKPIT_CONFIG`, then
`platformdirs.user_config_path("cockpit")/config.toml`. A missing file means defaults.
Secrets never live here: connectors read them from environment variables or the keyring.
"""

from __future__ import annotations

import os
import stat
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

APP_NAME = "cockpit"
STORE_FILE = "cockpit.db"


class ConfigError(Exception):
    """The configuration cannot be used: says which file, where, and what is wrong."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 7
    """Seed of the generated organisation: same seed and as-of date give the same data."""
    size: int = Field(default=5000, ge=10, le=5_000_000)
    """Number of opportunities over three years."""


class CsvSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Path | None = None
    """Directory holding opportunities.csv (and optional stage_history.csv, owners.csv, pipelines.csv)."""
    mapping: Path | None = None
    """Column mapping (TOML) for exports with other header names or date formats."""
    skip_bad_rows: bool = False


class CalendarSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fiscal_start_month: int = Field(default=1, ge=1, le=12)
    """Month (1-12) in which the fiscal year starts."""


class UiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mouse: bool | None = None
    """Mouse tracking; None: on locally, off over SSH (every mouse move costs bytes on the wire)."""
    theme: str | None = None
    keymap: dict[str, str] = Field(default_factory=dict)
    """Binding id → key(s), e.g. {"review-commit" = "c"}."""


class Settings(BaseModel):
    """Everything the cockpit reads from config.toml. Unknown keys are errors (typos show up)."""

    model_config = ConfigDict(extra="forbid")

    connector: str = "demo"
    """Connector `cockpit sync` uses when none is given."""
    data_dir: Path | None = None
    """Where the store lives; a shared path lets several users of one server open it together."""
    as_of: date | None = None
    """Pin "today" (for demos and reproducible reviews); default: the real date."""
    scope: str | None = None
    """Whose team the cockpit opens on (owner id or name); default: the top of the org tree."""
    export_dir: Path | None = None
    """Where exports go by default (default: ~/cockpit-exports)."""
    demo: DemoSettings = DemoSettings()
    csv: CsvSettings = CsvSettings()
    calendar: CalendarSettings = CalendarSettings()
    ui: UiSettings = UiSettings()
    forecast: dict[str, Any] = Field(default_factory=dict)
    """[forecast] table: quotas, FX rates, risk thresholds (see docs)."""
    scoring: dict[str, Any] = Field(default_factory=dict)
    """[scoring] table: features switched off, thresholds."""
    connectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """[connectors.<name>] tables: non-secret settings of each CRM connector."""

    source_path: Path | None = Field(default=None, exclude=True)
    """The file these settings came from (None: defaults)."""


def config_path(explicit: Path | str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("COCKPIT_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def data_dir(settings: Settings, explicit: Path | str | None = None) -> Path:
    """`--data-dir`, then `$COCKPIT_DATA_DIR`, then the config's data_dir, then the platform's data dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("COCKPIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if settings.data_dir:
        return settings.data_dir.expanduser()
    import platformdirs

    return platformdirs.user_data_path(APP_NAME)


def load_settings(path: Path | str | None = None) -> Settings:
    """Read and validate the config file; a missing file gives defaults."""
    file = config_path(path)
    if not file.exists():
        if path:
            raise ConfigError("Config not found", f"{file} does not exist (create one with `cockpit config init`)")
        return Settings()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError("Config unreadable", f"{file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError("Config is not UTF-8", f"{file}: byte {exc.start} cannot be read as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("Config is not valid TOML", f"{file}: {exc}") from None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("Config has errors", f"{file}: {describe_validation(exc)}") from None
    return settings.model_copy(update={"source_path": file})


def describe_validation(exc: ValidationError) -> str:
    """One line per problem: `calendar.fiscal_start_month = 13: Input should be less than or equal to 12`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        parts.append(f"{where}{shown}: {err['msg']}")
    return "; ".join(parts)


def check_private(file: Path) -> None:
    """Refuse a config file holding secrets that others can read."""
    mode = file.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ConfigError(
            "Config file is readable by others",
            f"{file} holds a secret and has mode {stat.filemode(mode)}; run `chmod 600 {file}` "
            "or move the secret to an environment variable",
        )


TEMPLATE = """\
# Deal Cockpit configuration. Every key is optional; delete what you don't need.
# Secrets (API tokens, client secrets) do not belong here: set them as environment variables.

# Connector `cockpit sync` uses by default: demo, csv, salesforce, hubspot, pipedrive, tryton
connector = "{connector}"

# Where the store lives. A shared path lets several users of one server open it together.
# data_dir = "/srv/cockpit"

[calendar]
# Month (1-12) in which the fiscal year starts.
fiscal_start_month = 1

[demo]
seed = 7
size = 5000

[csv]
# source = "/path/to/export"          # folder with opportunities.csv
# mapping = "/path/to/mapping.toml"   # see docs/csv-import.md
skip_bad_rows = false

[ui]
# mouse = false                       # default: on locally, off over SSH

[forecast]
# Currency every total is reported in; other currencies convert at the dated rates below.
# reporting_currency = "CNY"
#
# [[forecast.fx_rates]]
# currency = "USD"
# valid_from = 2026-01-01
# rate = "7.10"                      # 1 USD = 7.10 CNY from that day on
#
# [[forecast.quotas]]
# owner_id = "u-m1"
# quarter = "FY2026-Q4"
# amount = "2500000"
#
# [forecast.risk]
# stale_days = 21
# max_pushes = 2
# stuck_ratio = 3.0
"""


def write_template(file: Path, connector: str = "demo", *, force: bool = False) -> Path:
    """Write a commented config template atomically (never over an existing file without force)."""
    if file.exists() and not force:
        raise ConfigError("Config exists", f"{file} already exists; pass --force to replace it")
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(TEMPLATE.format(connector=connector))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, file)
    return file
