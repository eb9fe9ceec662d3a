"""Import a CRM's export from CSV files.

A directory (`source`) holds opportunities.csv and, optionally, stage_history.csv, owners.csv,
pipelines.csv and activities.csv. A mapping file (TOML, see `connectors._csvmap` and
docs/csv-import.md) adapts other exports: file and column names, formats, stage names, joined
lookup tables, amount rules.

Every file is read and validated before anything is yielded. A problem in any file imports nothing:
`CsvImportError` lists every problem with file, line, column, value and what was expected. With
`skip_bad_rows=True`, bad rows are left out instead and reported in `CsvImport.skipped` (problems
with a whole file, such as a missing column or an undecodable file, still stop the import).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import hashlib
import io
import re
import string
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cockpit.models import (
    Activity,
    Attribute,
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Stage,
    StageChange,
    SyncBatch,
    SyncProgress,
    complete_history,
)
from connectors import ProgressCallback
from connectors._csvmap import (
    BadValue,
    CsvImportError,
    CsvMapping,
    FileSection,
    Join,
    Parsers,
    RowError,
    load_mapping,
)

__all__ = ["BATCH_SIZE", "CsvConnector", "CsvImport", "CsvImportError", "RowError"]

BATCH_SIZE = 2000
"""Opportunities per SyncBatch (each with its complete history and activities)."""

DEFAULT_PIPELINE = "Sales"
"""Pipeline of deals when neither the data nor the mapping names one."""

WON_NAMES = frozenset({"won", "closed won", "closedwon", "win", "赢单", "成交", "已成交", "赢得"})
LOST_NAMES = frozenset(
    {"lost", "closed lost", "closedlost", "loss", "输单", "丢单", "已丢单", "失败", "丢失"}
)
"""Stage names recognised as won / lost when pipelines are inferred (compared normalised)."""

T = TypeVar("T")


# =========================================================================== results


@dataclass
class CsvImport:
    """Everything one import produced, validated and ready for the store."""

    pipelines: list[Pipeline]
    owners: list[Owner]
    opportunities: list[Opportunity]
    changes: list[StageChange]
    """Complete histories (see `complete_history`), grouped by opportunity in `opportunities` order."""
    activities: list[Activity]
    skipped: list[RowError] = field(default_factory=list)
    """Rows left out with skip_bad_rows=True, one entry per problem."""
    warnings: list[str] = field(default_factory=list)
    """Things the user should know (encoding used, inferred pipelines, owners added, ...)."""
    fingerprint: str = ""
    """Digest of the mapping and every file read: the same files give the same fingerprint."""


# =========================================================================== reading files


_SEPARATORS = re.compile(r"[\s_\-]+")


@lru_cache(maxsize=8192)
def _norm(text: str) -> str:
    """Key for forgiving name matching: case, spaces, '_' and '-' do not matter."""
    return _SEPARATORS.sub(" ", text.strip().casefold()).strip()


@dataclass(slots=True)
class _Row:
    line: int
    """Physical line (1-based) on which the record starts."""
    cells: list[str]


class _Table:
    """One CSV file in memory: header and data rows with their line numbers."""

    def __init__(self, name: str, header: list[str], rows: list[_Row]) -> None:
        self.name = name
        self.header = header
        self.rows = rows
        self._exact = {h: i for i, h in enumerate(header) if h}
        by_norm: dict[str, list[int]] = defaultdict(list)
        for i, h in enumerate(header):
            if h:
                by_norm[_norm(h)].append(i)
        self._norm = {k: v[0] for k, v in by_norm.items() if len(v) == 1}

    def find(self, header: str) -> int | None:
        """Column index by header name (exact, else ignoring case, spaces, '_' and '-')."""
        index = self._exact.get(header.strip())
        return index if index is not None else self._norm.get(_norm(header))

    def header_text(self) -> str:
        names = [h for h in self.header if h]
        shown = ", ".join(names[:15])
        return shown + (f", ... ({len(names)} columns)" if len(names) > 15 else "")


class _Problems:
    """Collects errors (whole-file and per-row) and warnings for one import."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.fatal: list[RowError] = []
        self.rows: list[RowError] = []
        self.bad: set[tuple[str, int]] = set()
        self.warnings: list[str] = []
        self.rank: dict[str, int] = {}

    def file(self, error: RowError) -> None:
        """A problem that stops the import even with skip_bad_rows."""
        self.fatal.append(error)

    def row(self, error: RowError) -> None:
        """A problem with one row: the row is bad (skipped with skip_bad_rows)."""
        self.rows.append(error)
        self.bad.add((error.file, error.line))

    def is_bad(self, file: str, line: int) -> bool:
        return (file, line) in self.bad

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def sorted(self, errors: list[RowError]) -> list[RowError]:
        return sorted(errors, key=lambda e: (self.rank.get(e.file, -1), e.line, e.column))

    def check(self, stop_on_rows: bool = True) -> None:
        """Raise CsvImportError if anything stops the import at this point."""
        if self.fatal or (stop_on_rows and self.rows and not self.skip):
            raise CsvImportError(self.sorted(self.fatal) + self.sorted(self.rows))


_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with a byte-order mark (removed)"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16 (little endian)"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16 (big endian)"),
)


def _decode(data: bytes, name: str, encoding: str, problems: _Problems) -> str | None:
    """Text of a file: the mapping's encoding, else a BOM's, else UTF-8, else GB18030 (warned)."""
    if encoding != "auto":
        try:
            return data.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            problems.file(
                RowError(
                    name,
                    0,
                    "",
                    "",
                    f"{encoding} text (byte 0x{data[exc.start]:02x} at "
                    f"byte offset {exc.start} is not valid {encoding})",
                )
            )
            return None
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec).removeprefix("\ufeff")
            except UnicodeDecodeError as exc:
                problems.file(
                    RowError(
                        name,
                        0,
                        "",
                        "",
                        f"{label} text as its byte-order mark says (byte offset {exc.start} is not)",
                    )
                )
                return None
            problems.warn(f"{name}: read as {label}")
            return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as utf8:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError as gb:
            problems.file(
                RowError(
                    name,
                    0,
                    "",
                    "",
                    f"UTF-8 or GB18030 text, but neither decodes it (byte 0x{data[utf8.start]:02x} at "
                    f"byte offset {utf8.start} is not UTF-8, byte offset {gb.start} is not GB18030); "
                    "set [csv] encoding in the mapping",
                )
            )
            return None
        problems.warn(f"{name}: not UTF-8 (byte offset {utf8.start}), read as GB18030 (GBK)")
        return text


def _read_table(
    path: Path, name: str, mapping: CsvMapping, problems: _Problems, digest: Any
) -> _Table | None:
    """Read one CSV file; file-level problems are recorded and give None."""
    problems.rank.setdefault(name, len(problems.rank))
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.file(RowError(name, 0, "", "", f"a readable file ({exc.strerror or exc})"))
        return None
    digest.update(name.encode() + b"\0" + data + b"\0")
    text = _decode(data, name, mapping.csv.encoding, problems)
    if text is None:
        return None
    if not text.strip():
        problems.file(RowError(name, 0, "", "", "a header line and data rows (the file is empty)"))
        return None
    header, rows = _records(text, name, mapping.csv.delimiter, problems)
    if header is None:
        return None
    table = _Table(name, header, rows)
    _check_header(table, problems)
    _fit_widths(table, problems)
    return table


def _records(
    text: str, name: str, delimiter: str, problems: _Problems
) -> tuple[list[str] | None, list[_Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                continue
            rows.append(_Row(start, cells))
    except csv.Error as exc:
        reason = str(exc)
        if "unexpected end of data" in reason:
            reason = "a quoted field opened here is never closed"
        problems.file(RowError(name, end + 1, "", "", f"well-formed CSV ({reason})"))
        return None, []
    return header, rows


def _check_header(table: _Table, problems: _Problems) -> None:
    counts = Counter(h for h in table.header if h)
    for name, count in counts.items():
        if count > 1:
            problems.file(
                RowError(
                    table.name, 1, name, "", f"each column name once in the header (it appears {count} times)"
                )
            )


def _fit_widths(table: _Table, problems: _Problems) -> None:
    """Pad short rows (spreadsheets drop trailing blanks); report rows longer than the header."""
    width = len(table.header)
    for row in table.rows:
        count = len(row.cells)
        if count < width:
            row.cells.extend([""] * (width - count))
        elif count > width:
            extra = row.cells[width:]
            if any(cell.strip() for cell in extra):
                problems.row(
                    RowError(
                        table.name,
                        row.line,
                        "",
                        ",".join(extra),
                        f"at most {width} cells, like the header (found {count})",
                    )
                )
            del row.cells[width:]


# =========================================================================== columns

_REQUIRED, _UNLESS_NONE, _OPTIONAL = "required", 'required unless mapped to ""', "optional"

_OPPORTUNITY_PRESENCE = {
    "id": _REQUIRED,
    "name": _UNLESS_NONE,
    "account": _UNLESS_NONE,
    "owner": _REQUIRED,
    "stage": _REQUIRED,
    "amount": _REQUIRED,
    "currency": _REQUIRED,
    "close_date": _UNLESS_NONE,
    "created": _UNLESS_NONE,
}
_HISTORY_PRESENCE = {"opportunity_id": _REQUIRED, "changed_at": _REQUIRED, "stage": _REQUIRED}
_OWNER_PRESENCE = {"id": _REQUIRED, "name": _REQUIRED, "manager": _UNLESS_NONE}
_PIPELINE_PRESENCE = {
    "pipeline": _UNLESS_NONE,
    "stage": _REQUIRED,
    "order": _REQUIRED,
    "probability": _REQUIRED,
    "is_closed": _REQUIRED,
    "is_won": _REQUIRED,
}
_ACTIVITY_PRESENCE = {"opportunity_id": _REQUIRED, "date": _REQUIRED}


@dataclass(frozen=True)
class _Col:
    """Where a schema field is read from: one column, or a template over several ("{a} {b}")."""

    label: str
    index: int | None = None
    parts: tuple[tuple[str, int | None], ...] = ()

    def raw(self, cells: list[str]) -> str:
        if self.index is not None:
            return cells[self.index].strip()
        text = "".join(lit + (cells[i].strip() if i is not None else "") for lit, i in self.parts)
        return " ".join(text.split())


class _Reader:
    """Reads schema fields of one file's rows; each bad cell becomes a RowError."""

    def __init__(self, table: _Table, cols: dict[str, _Col], problems: _Problems) -> None:
        self.table = table
        self.cols = cols
        self.problems = problems
        self._items = [(name, col.index, col) for name, col in cols.items()]
        self._row: _Row | None = None
        self._texts: dict[str, str] = {}

    def texts(self, row: _Row) -> dict[str, str]:
        """Every mapped field's text in `row` (computed once per row)."""
        if row is not self._row:
            cells = row.cells
            self._texts = {
                name: cells[i].strip() if i is not None else col.raw(cells) for name, i, col in self._items
            }
            self._row = row
        return self._texts

    def text(self, row: _Row, name: str) -> str:
        return self.texts(row).get(name, "")

    def required(self, row: _Row, name: str, what: str) -> str:
        value = self.text(row, name)
        if not value and name in self.cols:
            self.error(row, name, "", what)
        return value

    def parse(self, row: _Row, name: str, parser: Callable[[str], T]) -> T | None:
        """The parsed cell; None when blank, absent or bad (bad cells are recorded)."""
        text = self.texts(row).get(name)
        if not text:
            return None
        try:
            return parser(text)
        except BadValue as exc:
            self.problems.row(RowError(self.table.name, row.line, self.cols[name].label, text, exc.expected))
            return None

    def error(self, row: _Row, name: str, value: str, expected: str) -> None:
        col = self.cols.get(name)
        self.problems.row(RowError(self.table.name, row.line, col.label if col else name, value, expected))


# =========================================================================== parsed rows


@dataclass(slots=True)
class _Deal:
    """One opportunities row: parsed values, then what it resolves to."""

    line: int
    cells: list[str]
    id: str
    name: str
    account: str
    owner: str
    pipeline: str
    stage: str
    amount: Decimal | None
    amount_blank: bool
    currency: str | None
    close_date: date | None
    created: datetime | None
    modified: datetime | None
    category: ForecastCategory | None
    next_step: str | None
    next_step_date: date | None
    last_activity: date | None
    lead_source: str | None
    type: str | None
    won: bool | None
    closed: bool | None
    closed_at: datetime | None
    probability: Decimal | None
    entered: list[tuple[str, datetime, str]]
    """(stage name, when, column) from [history] stage_entered."""
    joined: list[_Row | None]
    owner_id: str = ""
    pipeline_obj: Pipeline | None = None
    stage_obj: Stage | None = None
    final_amount: Decimal | None = None
    closed_at_given: bool = False
    """True when the closed_at column gave the time of the close (else it is derived)."""


@dataclass(slots=True)
class _Change:
    line: int
    opportunity_id: str
    changed_at: datetime | None
    stage: str
    amount: Decimal | None
    close_date: date | None
    category: ForecastCategory | None
    stage_id: str = ""


@dataclass(slots=True)
class _OwnerRow:
    line: int
    id: str
    name: str
    manager: str
    team: str | None
    email: str | None


@dataclass(slots=True)
class _StageRow:
    line: int
    pipeline: str
    name: str
    order: int | None
    probability: Decimal | None
    category: ForecastCategory | None
    is_closed: bool | None
    is_won: bool | None


@dataclass(slots=True)
class _Touch:
    line: int
    opportunity_id: str
    on: date | None
    kind: str


@dataclass
class _JoinTable:
    spec: Join
    index: int
    table: _Table
    on: int
    lookup: dict[str, _Row]


@dataclass(frozen=True)
class _AttrSource:
    """One kept attribute: a column of the opportunities file (join None) or of a joined file."""

    name: str
    join: int | None
    index: int


# =========================================================================== the import


class _Importer:
    """One run of the import: read, validate, resolve, build. Use `run()` once."""

    def __init__(
        self,
        source: Path,
        mapping: CsvMapping,
        mapping_name: str,
        mapping_raw: bytes,
        skip: bool,
        as_of: date | None,
    ) -> None:
        self.source = source
        self.m = mapping
        self.mapping_name = mapping_name or "mapping"
        self.skip = skip
        self.as_of = as_of
        self.parsers = Parsers(mapping.formats)
        self.problems = _Problems(skip)
        self.problems.rank[self.mapping_name] = -1
        self.digest = hashlib.sha256(mapping_raw + b"\0")
        self.stage_aliases = {_norm(k): v.strip() for k, v in mapping.stages.aliases.items()}
        self.fallback_cache: dict[tuple[str, int], Decimal | None] = {}
        self.joins: list[_JoinTable] = []
        self.entered: list[tuple[str, int, str]] = []
        """[history] stage_entered as (stage name, column index, header)."""
        self.fallback: tuple[int | None, int] | None = None
        """[amount] fallback as (join position or None for the opportunities file, column index)."""
        self.attributes: list[_AttrSource] = []
        self.owner_lines: dict[str, int] = {}
        self.owner_managers: dict[str, str] = {}
        self.stage_index: dict[str, dict[str, Stage]] = {}

    # -- orchestration -----------------------------------------------------------------------

    def run(self) -> CsvImport:
        if not self.source.is_dir():
            raise CsvImportError(
                [RowError(str(self.source), 0, "", "", "a directory holding the export's CSV files")]
            )
        tables = self._read_all()
        self.problems.check(stop_on_rows=False)
        deals = self._parse_deals(*tables["opportunities"])
        self.problems.check(stop_on_rows=False)  # an empty opportunities file: nothing to check against
        owner_rows = self._parse_owners(*tables["owners"]) if tables["owners"] else None
        stage_rows = self._parse_stages(*tables["pipelines"]) if tables["pipelines"] else None
        changes = self._parse_changes(*tables["stage_history"]) if tables["stage_history"] else []
        touches = self._parse_touches(*tables["activities"]) if tables["activities"] else []
        opp_table, opp_cols = tables["opportunities"]
        self._check_duplicate_ids(deals, opp_table.name, opp_cols["id"].label)
        by_id = {d.id: d for d in deals if d.id}
        history = self._group_changes(changes, by_id, tables["stage_history"])
        activity = self._group_touches(touches, by_id, tables["activities"])
        owners = self._resolve_owners(owner_rows, deals, tables)
        pipelines = self._resolve_pipelines(stage_rows, deals, history, tables)
        self._resolve_deals(deals, pipelines, tables["opportunities"])
        self._resolve_changes(history, by_id, tables["stage_history"])
        self.problems.check()
        return self._build(deals, owners, pipelines, history, activity, tables)

    def _read_all(self) -> dict[str, Any]:
        """Every file with its resolved columns: name -> (table, cols) or None."""
        m = self.m
        opp_presence = dict(_OPPORTUNITY_PRESENCE)
        if m.defaults.currency:
            opp_presence["currency"] = _OPTIONAL
        specs: list[tuple[str, FileSection, dict[str, str], bool]] = [
            ("opportunities", m.opportunities, opp_presence, True),
            ("stage_history", m.stage_history, _HISTORY_PRESENCE, False),
            ("owners", m.owners, _OWNER_PRESENCE, False),
            ("pipelines", m.pipelines, _PIPELINE_PRESENCE, False),
            ("activities", m.activities, _ACTIVITY_PRESENCE, False),
        ]
        out: dict[str, Any] = {}
        for key, section, presence, required in specs:
            table = self._open(key, section.file, required, "file" in section.model_fields_set)
            if table is None:
                out[key] = None
                continue
            self._apply_aliases(table, section.aliases, key)
            cols = self._columns(table, key, section.columns, presence)
            out[key] = (table, cols)
        self.joins = self._open_joins()
        if out["opportunities"]:
            self._resolve_opportunity_extras(out["opportunities"])
        return out

    def _open(self, key: str, file_name: str, required: bool, explicit: bool) -> _Table | None:
        if not file_name.strip():
            return None
        path = self.source / file_name
        if not path.exists():
            if explicit:
                self._mapping_error(f"{key}.file", file_name, f"a file that exists in {self.source}")
            elif required:
                self.problems.file(
                    RowError(
                        file_name,
                        0,
                        "",
                        "",
                        f"a file {file_name} in {self.source} (there is "
                        "none; a mapping can name another file)",
                    )
                )
            return None
        return _read_table(path, file_name, self.m, self.problems, self.digest)

    def _mapping_error(self, key: str, value: str, expected: str) -> None:
        self.problems.file(RowError(self.mapping_name, 0, key, value, expected))

    def _apply_aliases(self, table: _Table, aliases: dict[str, dict[str, str]], key: str) -> None:
        """Replace values column by column ("GTXPro" -> "GTX Pro") before anything reads them."""
        for header, mapping in aliases.items():
            index = table.find(header)
            if index is None:
                self._mapping_error(
                    f"{key}.aliases.{header}",
                    header,
                    f"a column of {table.name} (its header has: {table.header_text()})",
                )
                continue
            for row in table.rows:
                replacement = mapping.get(row.cells[index].strip())
                if replacement is not None:
                    row.cells[index] = replacement

    def _columns(
        self, table: _Table, key: str, model: BaseModel, presence: dict[str, str]
    ) -> dict[str, _Col]:
        """Resolve each schema field of a file to a column (or template); report missing ones."""
        out: dict[str, _Col] = {}
        for name in type(model).model_fields:
            header: str = getattr(model, name)
            explicit = name in model.model_fields_set
            need = presence.get(name, _OPTIONAL)
            if not header.strip():
                if need == _REQUIRED:
                    self._mapping_error(
                        f"{key}.columns.{name}", header, f"a column name ({name} cannot be absent)"
                    )
                continue
            if "{" in header:
                col = self._template(table, key, name, header)
                if col is not None:
                    out[name] = col
                continue
            index = table.find(header)
            if index is not None:
                out[name] = _Col(table.header[index], index)
            elif need != _OPTIONAL or explicit:
                self._missing_column(table, header, name)
        return out

    def _template(self, table: _Table, key: str, name: str, text: str) -> _Col | None:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            self._mapping_error(
                f"{key}.columns.{name}", text, f"a template like '{{product}} {{account}}' ({exc})"
            )
            return None
        parts: list[tuple[str, int | None]] = []
        for literal, column, _spec, _conv in parsed:
            index = None
            if column is not None:
                index = table.find(column)
                if index is None:
                    self._missing_column(table, column, name)
                    return None
            parts.append((literal, index))
        return _Col(text, None, tuple(parts))

    def _missing_column(self, table: _Table, header: str, name: str) -> None:
        mapped = f" (for {name})" if _norm(header) != _norm(name) else ""
        self.problems.file(
            RowError(
                table.name,
                1,
                header,
                "",
                f"a column '{header}'{mapped}; the header has: {table.header_text()}",
            )
        )

    # -- joins, attributes, fallback, stage_entered -----------------------------------------------

    def _open_joins(self) -> list[_JoinTable]:
        joins = []
        for i, spec in enumerate(self.m.joins):
            table = self._open(f"joins.{i}", spec.file, True, True)
            if table is None:
                continue
            self._apply_aliases(table, spec.aliases, f"joins.{i}")
            key = spec.key or spec.on
            index = table.find(key)
            if index is None:
                self._mapping_error(
                    f"joins.{i}.key", key, f"a column of {table.name} (its header has: {table.header_text()})"
                )
                continue
            joins.append(_JoinTable(spec, i, table, -1, self._lookup(table, index)))
        return joins

    def _lookup(self, table: _Table, index: int) -> dict[str, _Row]:
        lookup: dict[str, _Row] = {}
        for row in table.rows:
            key = row.cells[index].strip()
            if not key:
                continue
            if key in lookup:
                self.problems.row(
                    RowError(
                        table.name,
                        row.line,
                        table.header[index],
                        key,
                        f"a unique key (also on line {lookup[key].line})",
                    )
                )
                continue
            lookup[key] = row
        return lookup

    def _resolve_opportunity_extras(self, opp: tuple[_Table, dict[str, _Col]]) -> None:
        """Join keys, stage_entered columns, amount fallback and kept attributes (need the header)."""
        table, cols = opp
        for join in self.joins:
            on = table.find(join.spec.on)
            if on is None:
                self._mapping_error(
                    f"joins.{join.index}.on",
                    join.spec.on,
                    f"a column of {table.name} (its header has: {table.header_text()})",
                )
            join.on = -1 if on is None else on
        for stage, header in self.m.history.stage_entered.items():
            index = table.find(header)
            if index is None:
                self._mapping_error(
                    f"history.stage_entered.{stage}",
                    header,
                    f"a column of {table.name} (its header has: {table.header_text()})",
                )
                continue
            self.entered.append((self._stage_name(stage), index, table.header[index]))
        self.fallback = self._fallback_source(table)
        self.attributes = self._attribute_sources(table, cols)

    def _fallback_source(self, table: _Table) -> tuple[int | None, int] | None:
        name = self.m.amount.fallback
        if not name:
            return None
        index = table.find(name)
        if index is not None:
            return None, index
        for pos, join in enumerate(self.joins):
            prefix = join.spec.prefix
            if name.startswith(prefix):
                index = join.table.find(name[len(prefix) :])
                if index is not None:
                    return pos, index
        self._mapping_error("amount.fallback", name, "a column of the opportunities file or of a joined file")
        return None

    def _attribute_sources(self, table: _Table, cols: dict[str, _Col]) -> list[_AttrSource]:
        """Columns kept as deal attributes: unused opportunity columns, then joined columns."""
        used = {c.index for c in cols.values() if c.index is not None}
        used |= {index for _s, index, _h in self.entered}
        if self.fallback and self.fallback[0] is None:
            used.add(self.fallback[1])
        keep = self.m.opportunities.keep
        sources: list[_AttrSource] = []
        if keep == "all":
            drop = {_norm(d) for d in self.m.opportunities.drop}
            for missing in (d for d in self.m.opportunities.drop if table.find(d) is None):
                self._mapping_error("opportunities.drop", missing, f"a column of {table.name}")
            sources += [
                _AttrSource(h, None, i)
                for i, h in enumerate(table.header)
                if h and i not in used and _norm(h) not in drop
            ]
        elif isinstance(keep, list):
            for name in keep:
                index = table.find(name)
                if index is None:
                    self._mapping_error(
                        "opportunities.keep",
                        name,
                        f"a column of {table.name} (its header has: {table.header_text()})",
                    )
                else:
                    sources.append(_AttrSource(table.header[index], None, index))
        for pos, join in enumerate(self.joins):
            sources += self._join_sources(pos, join)
        seen: set[str] = set()
        for src in sources:
            if src.name in seen:
                self._mapping_error("joins", src.name, "attribute names that differ (use a join's prefix)")
            seen.add(src.name)
        return sources

    def _join_sources(self, pos: int, join: _JoinTable) -> list[_AttrSource]:
        key_index = join.table.find(join.spec.key or join.spec.on)
        if join.spec.columns is None:
            return [
                _AttrSource(join.spec.prefix + h, pos, i)
                for i, h in enumerate(join.table.header)
                if h and i != key_index
            ]
        out = []
        for name in join.spec.columns:
            index = join.table.find(name)
            if index is None:
                self._mapping_error(
                    f"joins.{join.index}.columns",
                    name,
                    f"a column of {join.table.name} (its header has: {join.table.header_text()})",
                )
            else:
                out.append(_AttrSource(join.spec.prefix + join.table.header[index], pos, index))
        return out

    # -- parsing rows ------------------------------------------------------------------------

    def _stage_name(self, raw: str) -> str:
        """A stage name after [stages] aliases."""
        text = raw.strip()
        return self.stage_aliases.get(_norm(text), text) if self.stage_aliases else text

    def _parse_deals(self, table: _Table, cols: dict[str, _Col]) -> list[_Deal]:
        if not table.rows:
            self.problems.file(
                RowError(table.name, 0, "", "", "at least one opportunity (the file has only a header)")
            )
            return []
        r = _Reader(table, cols, self.problems)
        p = self.parsers
        deals = []
        for row in table.rows:
            amount = r.parse(row, "amount", p.amount)
            deal = _Deal(
                line=row.line,
                cells=row.cells,
                id=r.required(row, "id", "an opportunity id"),
                name=r.text(row, "name"),
                account=r.text(row, "account"),
                owner=r.required(row, "owner", "an owner id or name"),
                pipeline=r.text(row, "pipeline"),
                stage=self._stage_name(r.required(row, "stage", "a stage name")),
                amount=amount[0] if amount else None,
                amount_blank=not r.text(row, "amount"),
                currency=r.parse(row, "currency", p.currency) or self.m.defaults.currency,
                close_date=r.parse(row, "close_date", p.date),
                created=r.parse(row, "created", p.datetime),
                modified=r.parse(row, "modified", p.datetime),
                category=r.parse(row, "forecast_category", p.category),
                next_step=r.text(row, "next_step") or None,
                next_step_date=r.parse(row, "next_step_date", p.date),
                last_activity=r.parse(row, "last_activity", p.date),
                lead_source=r.text(row, "lead_source") or None,
                type=r.text(row, "type") or None,
                won=r.parse(row, "won", p.boolean),
                closed=r.parse(row, "closed", p.boolean),
                closed_at=r.parse(row, "closed_at", p.datetime),
                probability=r.parse(row, "probability", p.probability),
                entered=self._entered(table, row),
                joined=self._joined(table, row),
            )
            self._check_currency(r, row, deal, amount[1] if amount else None)
            deals.append(deal)
        return deals

    def _check_currency(self, r: _Reader, row: _Row, deal: _Deal, hint: str | None) -> None:
        if deal.currency is None and not r.text(row, "currency"):
            r.error(row, "currency", "", "a currency code (the mapping has no [defaults] currency)")
        elif hint is not None and deal.currency is not None and hint != deal.currency:
            r.error(row, "amount", r.text(row, "amount"), f"an amount in {deal.currency}, the row's currency")

    def _entered(self, table: _Table, row: _Row) -> list[tuple[str, datetime, str]]:
        out = []
        for stage, index, header in self.entered:
            text = row.cells[index].strip()
            if not text:
                continue
            try:
                out.append((stage, self.parsers.datetime(text), header))
            except BadValue as exc:
                self.problems.row(RowError(table.name, row.line, header, text, exc.expected))
        return out

    def _joined(self, table: _Table, row: _Row) -> list[_Row | None]:
        out: list[_Row | None] = []
        for join in self.joins:
            key = row.cells[join.on].strip() if join.on >= 0 else ""
            match = join.lookup.get(key) if key else None
            if key and match is None and join.spec.missing == "error":
                known = ", ".join(list(join.lookup)[:8])
                self.problems.row(
                    RowError(
                        table.name,
                        row.line,
                        table.header[join.on],
                        key,
                        f"a key listed in {join.table.name} (such as {known}); "
                        f"add an alias for it in the mapping",
                    )
                )
            out.append(match)
        return out

    def _parse_owners(self, table: _Table, cols: dict[str, _Col]) -> list[_OwnerRow]:
        r = _Reader(table, cols, self.problems)
        return [
            _OwnerRow(
                row.line,
                r.required(row, "id", "an owner id"),
                r.required(row, "name", "an owner name"),
                r.text(row, "manager"),
                r.text(row, "team") or None,
                r.text(row, "email") or None,
            )
            for row in table.rows
        ]

    def _parse_stages(self, table: _Table, cols: dict[str, _Col]) -> list[_StageRow]:
        r = _Reader(table, cols, self.problems)
        p = self.parsers
        out = []
        for row in table.rows:
            stage = _StageRow(
                row.line,
                r.text(row, "pipeline"),
                self._stage_name(r.required(row, "stage", "a stage name")),
                r.parse(row, "order", p.integer),
                r.parse(row, "probability", p.probability),
                r.parse(row, "category", p.category),
                r.parse(row, "is_closed", p.boolean),
                r.parse(row, "is_won", p.boolean),
            )
            for name in ("order", "probability", "is_closed", "is_won"):
                if not r.text(row, name):
                    r.error(
                        row,
                        name,
                        "",
                        {"order": "a whole number >= 0", "probability": "a probability such as 40%"}.get(
                            name, "true or false"
                        ),
                    )
            if stage.is_won and stage.is_closed is False:
                r.error(
                    row, "is_won", r.text(row, "is_won"), "false, or is_closed true (a won stage is closed)"
                )
            out.append(stage)
        return out

    def _parse_changes(self, table: _Table, cols: dict[str, _Col]) -> list[_Change]:
        r = _Reader(table, cols, self.problems)
        p = self.parsers
        out = []
        for row in table.rows:
            amount = r.parse(row, "amount", p.amount)
            changed_at = r.parse(row, "changed_at", p.datetime)
            if not r.text(row, "changed_at"):
                r.error(row, "changed_at", "", p.date_expected)
            out.append(
                _Change(
                    row.line,
                    r.required(row, "opportunity_id", "an opportunity id"),
                    changed_at,
                    self._stage_name(r.required(row, "stage", "a stage name")),
                    amount[0] if amount else None,
                    r.parse(row, "close_date", p.date),
                    r.parse(row, "forecast_category", p.category),
                )
            )
        return out

    def _parse_touches(self, table: _Table, cols: dict[str, _Col]) -> list[_Touch]:
        r = _Reader(table, cols, self.problems)
        out = []
        for row in table.rows:
            on = r.parse(row, "date", self.parsers.date)
            if not r.text(row, "date"):
                r.error(row, "date", "", self.parsers.date_expected)
            out.append(
                _Touch(
                    row.line,
                    r.required(row, "opportunity_id", "an opportunity id"),
                    on,
                    r.text(row, "kind") or "activity",
                )
            )
        return out

    # -- cross-row checks --------------------------------------------------------------------

    def _check_duplicate_ids(self, deals: list[_Deal], file: str, label: str) -> None:
        lines: dict[str, list[int]] = defaultdict(list)
        for deal in deals:
            if deal.id:
                lines[deal.id].append(deal.line)
        for opp_id, found in lines.items():
            if len(found) < 2:
                continue
            for line in found:
                others = ", ".join(str(x) for x in found if x != line)
                self.problems.row(RowError(file, line, label, opp_id, f"a unique id (also on line {others})"))

    def _group_changes(
        self, changes: list[_Change], by_id: dict[str, _Deal], table: Any
    ) -> dict[str, list[_Change]]:
        grouped: dict[str, list[_Change]] = defaultdict(list)
        for change in changes:
            if not change.opportunity_id:
                continue
            deal = by_id.get(change.opportunity_id)
            if deal is None:
                self._unknown_deal(table, change.line, "opportunity_id", change.opportunity_id)
                continue
            grouped[change.opportunity_id].append(change)
        return grouped

    def _group_touches(
        self, touches: list[_Touch], by_id: dict[str, _Deal], table: Any
    ) -> dict[str, list[_Touch]]:
        grouped: dict[str, list[_Touch]] = defaultdict(list)
        for touch in touches:
            if not touch.opportunity_id:
                continue
            if touch.opportunity_id not in by_id:
                self._unknown_deal(table, touch.line, "opportunity_id", touch.opportunity_id)
                continue
            grouped[touch.opportunity_id].append(touch)
        return grouped

    def _unknown_deal(self, table: tuple[_Table, dict[str, _Col]], line: int, name: str, value: str) -> None:
        tbl, cols = table
        label = cols[name].label if name in cols else name
        self.problems.row(
            RowError(tbl.name, line, label, value, f"the id of an opportunity in {self.m.opportunities.file}")
        )

    # -- owners ------------------------------------------------------------------------------

    def _resolve_owners(
        self, rows: list[_OwnerRow] | None, deals: list[_Deal], tables: dict[str, Any]
    ) -> list[Owner]:
        if rows is None:
            return self._owners_from_deals(deals)
        table, cols = tables["owners"]
        owners = self._owner_rows(rows, table.name, cols)
        names = self._name_index(owners.values())
        managers = self._managers(owners, names, table.name, cols)
        self._check_cycles(owners, managers, table.name, cols)
        bad = {i: line for i, line in self.owner_lines.items() if self.problems.is_bad(table.name, line)}
        lookup = _OwnerLookup(owners, names, table.name)
        opp_table, opp_cols = tables["opportunities"]
        for deal in deals:
            if not deal.owner:
                continue
            found = lookup.find(deal.owner)
            if found is not None:
                deal.owner_id = found
            if found is None or (found in bad and self.skip):
                why = (
                    f"an owner that imports ({table.name} line {bad[found]} was skipped)"
                    if found is not None
                    else lookup.why_not(deal.owner)
                )
                self.problems.row(
                    RowError(opp_table.name, deal.line, opp_cols["owner"].label, deal.owner, why)
                )
        if self.skip:
            owners = {i: o for i, o in owners.items() if i not in bad}
        return [
            o.model_copy(update={"manager_id": managers.get(i) if managers.get(i) in owners else None})
            for i, o in owners.items()
        ]

    def _owners_from_deals(self, deals: list[_Deal]) -> list[Owner]:
        owners: dict[str, Owner] = {}
        for deal in deals:
            if deal.owner:
                deal.owner_id = deal.owner
                if deal.owner not in owners:
                    owners[deal.owner] = Owner(id=deal.owner, name=deal.owner)
        return list(owners.values())

    def _owner_rows(self, rows: list[_OwnerRow], file: str, cols: dict[str, _Col]) -> dict[str, Owner]:
        lines: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            if row.id:
                lines[row.id].append(row.line)
        owners: dict[str, Owner] = {}
        for row in rows:
            if not row.id or not row.name:
                continue
            if len(lines[row.id]) > 1:
                others = ", ".join(str(x) for x in lines[row.id] if x != row.line)
                self.problems.row(
                    RowError(file, row.line, cols["id"].label, row.id, f"a unique id (also on line {others})")
                )
                continue
            owners[row.id] = Owner(id=row.id, name=row.name, team=row.team, email=row.email)
            self.owner_lines[row.id] = row.line
        self.owner_managers = {row.id: row.manager for row in rows if row.id in owners}
        return owners

    @staticmethod
    def _name_index(owners: Any) -> dict[str, list[str]]:
        names: dict[str, list[str]] = defaultdict(list)
        for owner in owners:
            names[owner.name.casefold()].append(owner.id)
        return names

    def _managers(
        self, owners: dict[str, Owner], names: dict[str, list[str]], file: str, cols: dict[str, _Col]
    ) -> dict[str, str]:
        """owner id -> manager id; managers not listed become owners (warned)."""
        lookup = _OwnerLookup(owners, names, file)
        out: dict[str, str] = {}
        added: dict[str, list[str]] = {}
        for owner_id, raw in self.owner_managers.items():
            if not raw:
                continue
            if raw in added:
                added[raw].append(owner_id)
                out[owner_id] = raw
                continue
            found = lookup.find(raw)
            if found is not None:
                out[owner_id] = found
            elif lookup.ambiguous(raw):
                self.problems.row(
                    RowError(
                        file, self.owner_lines[owner_id], cols["manager"].label, raw, lookup.why_not(raw)
                    )
                )
            else:
                added[raw] = [owner_id]
                out[owner_id] = raw
        for manager, reports in added.items():
            teams = {owners[r].team for r in reports}
            owners[manager] = Owner(id=manager, name=manager, team=teams.pop() if len(teams) == 1 else None)
        if added:
            self.problems.warn(
                f"{file}: {len(added)} manager(s) not listed as owners were added as owners: "
                + ", ".join(sorted(added))
            )
        return out

    def _check_cycles(
        self, owners: dict[str, Owner], managers: dict[str, str], file: str, cols: dict[str, _Col]
    ) -> None:
        reported: set[str] = set()
        for start in owners:
            chain = [start]
            node = managers.get(start)
            while node is not None and node not in chain:
                chain.append(node)
                node = managers.get(node)
            if node is None or node in reported:
                continue
            loop = chain[chain.index(node) :]
            text = " \u2192 ".join([*loop, node])
            for member in loop:
                reported.add(member)
                line = self.owner_lines.get(member, 0)
                self.problems.row(
                    RowError(
                        file,
                        line,
                        cols["manager"].label,
                        self.owner_managers.get(member, ""),
                        f"a manager chain that ends (it loops: {text})",
                    )
                )

    # -- pipelines ---------------------------------------------------------------------------

    def _default_pipeline(self, given: dict[str, Pipeline] | None) -> str:
        if self.m.defaults.pipeline:
            return self.m.defaults.pipeline
        if given is not None and len(given) == 1:
            return next(iter(given))
        return DEFAULT_PIPELINE

    def _resolve_pipelines(
        self,
        rows: list[_StageRow] | None,
        deals: list[_Deal],
        history: dict[str, list[_Change]],
        tables: dict[str, Any],
    ) -> dict[str, Pipeline]:
        if rows is not None:
            pipelines = self._pipelines_from_rows(rows, tables["pipelines"])
            default = self._default_pipeline(pipelines)
            for deal in deals:
                deal.pipeline = deal.pipeline or default
            return pipelines
        default = self._default_pipeline(None)
        for deal in deals:
            deal.pipeline = deal.pipeline or default
        pipelines = _Inference(self.m, self.stage_aliases).run(deals, history, self._stage_name)
        for pipeline in pipelines.values():
            stages = " \u2192 ".join(s.name for s in pipeline.open_stages)
            closed = ", ".join(s.name for s in pipeline.stages if s.is_closed)
            self.problems.warn(
                f"no pipelines file: inferred pipeline {pipeline.name!r} with stages "
                f"{stages}" + (f" and closed stages {closed}" if closed else "")
            )
        return pipelines

    def _pipelines_from_rows(
        self, rows: list[_StageRow], table: tuple[_Table, dict[str, _Col]]
    ) -> dict[str, Pipeline]:
        tbl, cols = table
        default = self.m.defaults.pipeline or DEFAULT_PIPELINE
        groups: dict[str, list[_StageRow]] = defaultdict(list)
        first: dict[tuple[str, str], int] = {}
        for row in rows:
            pipeline = row.pipeline or default
            key = (_norm(pipeline), _norm(row.name))
            if row.name and key in first:
                label = cols["stage"].label
                self.problems.row(
                    RowError(
                        tbl.name,
                        row.line,
                        label,
                        row.name,
                        f"each stage once per pipeline (also on line {first[key]})",
                    )
                )
                continue
            first[key] = row.line
            if row.name and not (self.skip and self.problems.is_bad(tbl.name, row.line)):
                groups[pipeline].append(row)
        return {name: self._pipeline(name, group) for name, group in groups.items()}

    @staticmethod
    def _pipeline(name: str, rows: list[_StageRow]) -> Pipeline:
        ordered = sorted(rows, key=lambda r: (bool(r.is_closed), not r.is_won, r.order or 0))
        stages = tuple(
            Stage(
                id=f"{name}/{r.name}",
                name=r.name,
                order=i,
                probability=r.probability or Decimal(0),
                category=r.category or _default_category(bool(r.is_closed or r.is_won), bool(r.is_won)),
                is_closed=bool(r.is_closed or r.is_won),
                is_won=bool(r.is_won),
            )
            for i, r in enumerate(ordered)
        )
        return Pipeline(id=name, name=name, stages=stages)

    # -- deals -------------------------------------------------------------------------------

    def _resolve_deals(
        self, deals: list[_Deal], pipelines: dict[str, Pipeline], table: tuple[_Table, dict[str, _Col]]
    ) -> None:
        tbl, cols = table
        r = _Reader(tbl, cols, self.problems)
        by_norm = {_norm(name): p for name, p in pipelines.items()}
        self.stage_index = {p.id: _stage_index(p) for p in pipelines.values()}
        for deal in deals:
            row = _Row(deal.line, deal.cells)
            pipeline = by_norm.get(_norm(deal.pipeline))
            if pipeline is None:
                r.error(
                    row,
                    "pipeline",
                    deal.pipeline,
                    f"a pipeline listed in {self.m.pipelines.file} (one of: {', '.join(pipelines)})",
                )
                continue
            deal.pipeline_obj = pipeline
            stage = self.stage_index[pipeline.id].get(_norm(deal.stage)) if deal.stage else None
            if stage is None:
                if deal.stage:
                    names = ", ".join(s.name for s in pipeline.stages)
                    r.error(
                        row, "stage", deal.stage, f"a stage of pipeline {pipeline.name!r} (one of: {names})"
                    )
                continue
            deal.stage_obj = stage
            self._check_flags(r, row, deal, stage)
            deal.final_amount = self._amount(r, row, deal, stage.is_won)
            self._check_dates(r, row, deal, stage)

    def _check_flags(self, r: _Reader, row: _Row, deal: _Deal, stage: Stage) -> None:
        if deal.closed is not None and deal.closed != stage.is_closed:
            state = "closed" if stage.is_closed else "open"
            r.error(
                row,
                "closed",
                r.text(row, "closed"),
                f"{str(stage.is_closed).lower()}: stage {stage.name!r} is {state}",
            )
        if deal.won is not None and deal.won != stage.is_won and (stage.is_closed or deal.won):
            r.error(
                row,
                "won",
                r.text(row, "won"),
                f"{str(stage.is_won).lower()}: stage {stage.name!r} is "
                f"{'won' if stage.is_won else 'not a won stage'}",
            )

    def _amount(self, r: _Reader, row: _Row, deal: _Deal, is_won: bool) -> Decimal | None:
        """The deal's amount after the [amount] rules; None (with an error) when there is none."""
        rule = self.m.amount
        if deal.amount is None and not deal.amount_blank:
            return None  # a bad amount cell, already reported
        zero_rule = rule.fallback_when == "blank_or_zero" or (
            rule.fallback_when == "blank_or_zero_unless_won" and not is_won
        )
        if self.fallback and (deal.amount is None or (deal.amount == 0 and zero_rule)):
            value = self._fallback_value(deal)
            if value is not None:
                return value
        if deal.amount is not None:
            return deal.amount
        if rule.blank == "zero":
            return Decimal(0)
        if self._join_failed(deal):
            return None  # the missing key is reported; a second error for its consequence would be noise
        hint = (
            f"the cell is blank and {rule.fallback!r} has no value"
            if rule.fallback
            else 'set [amount] fallback or blank = "zero" in a mapping for exports with blank amounts'
        )
        r.error(row, "amount", "", f"an amount ({hint})")
        return None

    def _join_failed(self, deal: _Deal) -> bool:
        """True when the fallback comes from a join whose key this deal has but the joined file lacks."""
        if self.fallback is None or self.fallback[0] is None:
            return False
        join = self.joins[self.fallback[0]]
        return deal.joined[self.fallback[0]] is None and bool(deal.cells[join.on].strip())

    def _fallback_value(self, deal: _Deal) -> Decimal | None:
        """The [amount] fallback for a deal (from its row or a joined row); bad values are reported once."""
        if self.fallback is None:
            return None
        join_pos, index = self.fallback
        if join_pos is None:
            file, src = self.m.opportunities.file, _Row(deal.line, deal.cells)
            header = ""
        else:
            join = self.joins[join_pos]
            joined = deal.joined[join_pos]
            if joined is None:
                return None
            file, src, header = join.table.name, joined, join.table.header[index]
        key = (file, src.line)
        if key in self.fallback_cache:
            return self.fallback_cache[key]
        text = src.cells[index].strip()
        value = None
        if text:
            try:
                value = self.parsers.amount(text)[0]
            except BadValue as exc:
                self.problems.row(
                    RowError(file, src.line, header or self.m.amount.fallback or "", text, exc.expected)
                )
        self.fallback_cache[key] = value
        return value

    def _check_dates(self, r: _Reader, row: _Row, deal: _Deal, stage: Stage) -> None:
        created = deal.created
        if created is not None and deal.close_date is not None and deal.close_date < created.date():
            r.error(
                row,
                "close_date",
                r.text(row, "close_date"),
                f"a close date on or after the creation date {created.date().isoformat()}",
            )
        for stage_name, when, header in deal.entered:
            if created is not None and when < created:
                self.problems.row(
                    RowError(
                        r.table.name,
                        row.line,
                        header,
                        when.isoformat(),
                        f"a date on or after the creation date {created.date().isoformat()}",
                    )
                )
            if _norm(stage_name) not in self.stage_index[deal.pipeline_obj.id]:  # type: ignore[union-attr]
                self.problems.row(
                    RowError(
                        r.table.name,
                        row.line,
                        header,
                        when.date().isoformat(),
                        f"a date for a stage of pipeline {deal.pipeline!r} (it has no stage {stage_name!r})",
                    )
                )
        if not stage.is_closed:
            deal.closed_at = None
            return
        deal.closed_at_given = deal.closed_at is not None
        if deal.closed_at is None and deal.close_date is not None:
            deal.closed_at = self.parsers.midnight(deal.close_date)
        if deal.closed_at is None:
            r.error(row, "close_date", "", f"a close date: the deal is in closed stage {stage.name!r}")
            return
        if deal.close_date is None:
            deal.close_date = deal.closed_at.astimezone(self.parsers.zone).date()
        latest = max(
            [t for t in (created, *(w for _s, w, _h in deal.entered)) if t is not None],
            default=deal.closed_at,
        )
        if deal.closed_at < latest and r.text(row, "closed_at"):
            r.error(
                row, "closed_at", r.text(row, "closed_at"), "a time after the deal's creation and stage dates"
            )
        deal.closed_at = max(deal.closed_at, latest)

    def _resolve_changes(
        self, history: dict[str, list[_Change]], by_id: dict[str, _Deal], table: Any
    ) -> None:
        if not history:
            return
        tbl, cols = table
        r = _Reader(tbl, cols, self.problems)
        for opp_id, changes in history.items():
            deal = by_id[opp_id]
            if deal.pipeline_obj is None:
                continue
            index = self.stage_index[deal.pipeline_obj.id]
            for change in changes:
                stage = index.get(_norm(change.stage)) if change.stage else None
                if stage is None:
                    if change.stage:
                        names = ", ".join(s.name for s in deal.pipeline_obj.stages)
                        r.error(
                            _Row(change.line, []),
                            "stage",
                            change.stage,
                            f"a stage of pipeline {deal.pipeline_obj.name!r} (one of: {names})",
                        )
                    continue
                change.stage_id = stage.id

    # -- building ----------------------------------------------------------------------------

    def _build(
        self,
        deals: list[_Deal],
        owners: list[Owner],
        pipelines: dict[str, Pipeline],
        history: dict[str, list[_Change]],
        activity: dict[str, list[_Touch]],
        tables: dict[str, Any],
    ) -> CsvImport:
        opp_file = tables["opportunities"][0].name
        hist_file = tables["stage_history"][0].name if tables["stage_history"] else ""
        act_file = tables["activities"][0].name if tables["activities"] else ""
        good = [d for d in deals if not self.problems.is_bad(opp_file, d.line)]
        good_ids = {d.id for d in good}
        skipped_deals = {d.id: d.line for d in deals if d.id not in good_ids}
        self._skip_dependents(history, skipped_deals, hist_file, tables["stage_history"])
        self._skip_dependents(activity, skipped_deals, act_file, tables["activities"])
        attributes = _AttributeTyper(self.attributes, self.joins, self.parsers).values(good)
        builder = _HistoryBuilder(self, pipelines)
        opportunities: list[Opportunity] = []
        changes: list[StageChange] = []
        touches: list[Activity] = []
        for deal, attrs in zip(good, attributes, strict=True):
            rows = [c for c in history.get(deal.id, []) if not self.problems.is_bad(hist_file, c.line)]
            acts = [
                Activity(opportunity_id=deal.id, on=t.on, kind=t.kind)
                for t in activity.get(deal.id, [])
                if t.on is not None and not self.problems.is_bad(act_file, t.line)
            ]
            try:
                built = builder.build(deal, attrs, rows, acts)
            except ValidationError as exc:  # a combination the checks above do not catch: report, never crash
                problem = exc.errors()[0]
                self.problems.row(
                    RowError(
                        opp_file,
                        deal.line,
                        ".".join(map(str, problem["loc"])),
                        "",
                        f"values an opportunity can have ({problem['msg']})",
                    )
                )
                continue
            if built is None:
                continue
            opportunity, deal_changes, deal_acts = built
            opportunities.append(opportunity)
            changes.extend(deal_changes)
            touches.extend(sorted(deal_acts, key=lambda a: a.on))
        self.problems.check()
        builder.warn(self.problems)
        self._warn_blanks(opportunities)
        return CsvImport(
            pipelines=list(pipelines.values()),
            owners=owners,
            opportunities=opportunities,
            changes=changes,
            activities=touches,
            skipped=self.problems.sorted(self.problems.rows) if self.skip else [],
            warnings=self.problems.warnings,
            fingerprint=self._fingerprint(),
        )

    def _fingerprint(self) -> str:
        """Digest of the mapping, every file read and the options that change the result."""
        digest = self.digest.copy()
        digest.update(f"as_of={self.as_of};skip={self.skip}".encode())
        return "csv:" + digest.hexdigest()[:24]

    def _skip_dependents(
        self, grouped: dict[str, list[Any]], skipped: dict[str, int], file: str, table: Any
    ) -> None:
        """With skip_bad_rows: rows of other files that belong to a skipped opportunity are skipped too."""
        if not self.skip or not table:
            return
        _table, cols = table
        label = cols["opportunity_id"].label
        for opp_id, line in skipped.items():
            for item in grouped.get(opp_id, []):
                if not self.problems.is_bad(file, item.line):
                    self.problems.row(
                        RowError(
                            file,
                            item.line,
                            label,
                            opp_id,
                            f"an opportunity that imports "
                            f"({self.m.opportunities.file} line {line} was skipped)",
                        )
                    )

    def _warn_blanks(self, opportunities: list[Opportunity]) -> None:
        undated = sum(1 for o in opportunities if o.created_at is None and not o.is_closed)
        if undated:
            self.problems.warn(f"{undated} open deal(s) have no creation date (and so no stage history)")
        no_account = sum(1 for o in opportunities if not o.account)
        if no_account:
            self.problems.warn(f"{no_account} deal(s) have no account")


class _OwnerLookup:
    """Finds an owner id by id, then by unique name (ignoring case)."""

    def __init__(self, owners: dict[str, Owner], names: dict[str, list[str]], file: str) -> None:
        self.owners = owners
        self.names = names
        self.file = file

    def find(self, text: str) -> str | None:
        if text in self.owners:
            return text
        ids = self.names.get(text.casefold(), [])
        return ids[0] if len(ids) == 1 else None

    def why_not(self, text: str) -> str:
        ids = self.names.get(text.casefold(), [])
        if len(ids) > 1:
            return f"a unique owner name or an id ({text!r} is the name of {', '.join(ids)})"
        return f"an owner id or name listed in {self.file}"

    def ambiguous(self, text: str) -> bool:
        return len(self.names.get(text.casefold(), [])) > 1


def _change(
    opportunity_id: str,
    changed_at: datetime,
    stage_id: str,
    amount: Decimal | None = None,
    close_date: date | None = None,
    category: ForecastCategory | None = None,
) -> StageChange:
    """A history row (values already parsed and checked by this module)."""
    return StageChange(
        opportunity_id=opportunity_id,
        changed_at=changed_at,
        stage_id=stage_id,
        amount=amount,
        close_date=close_date,
        forecast_category=category,
    )


def _last_stage_since(changes: list[StageChange]) -> datetime:
    """When a (sorted, non-empty) history entered the stage it ends in."""
    first = len(changes) - 1
    while first > 0 and changes[first - 1].stage_id == changes[-1].stage_id:
        first -= 1
    return changes[first].changed_at


def _default_category(is_closed: bool, is_won: bool) -> ForecastCategory:
    if is_won:
        return ForecastCategory.CLOSED
    return ForecastCategory.OMITTED if is_closed else ForecastCategory.PIPELINE


def _stage_index(pipeline: Pipeline) -> dict[str, Stage]:
    """normalised stage name or id -> stage."""
    index = {_norm(s.id): s for s in pipeline.stages}
    index.update({_norm(s.name): s for s in pipeline.stages})
    return index


# =========================================================================== inferred pipelines


class _Inference:
    """Pipelines and stages inferred from the data when there is no pipelines file.

    Open stages are ordered by [stages] order, then by their average position in the deals'
    histories (or stage_entered dates), then by first appearance. Won and lost stages are
    recognised by name ([stages] won/lost, or Won, Closed Won, 赢单, Lost, 输单, ...) or by the
    deals' won/closed columns, and come after the open stages.
    """

    def __init__(self, mapping: CsvMapping, aliases: dict[str, str]) -> None:
        self.m = mapping
        self.won = WON_NAMES | {_norm(s) for s in mapping.stages.won}
        self.lost = LOST_NAMES | {_norm(s) for s in mapping.stages.lost}

    def run(
        self, deals: list[_Deal], history: dict[str, list[_Change]], stage_name: Callable[[str], str]
    ) -> dict[str, Pipeline]:
        seen: dict[str, dict[str, str]] = defaultdict(dict)
        ranks: dict[tuple[str, str], list[float]] = defaultdict(list)
        flags: dict[tuple[str, str], list[tuple[bool | None, bool | None]]] = defaultdict(list)
        for deal in deals:
            names = seen[deal.pipeline]
            sequence = self._sequence(deal, history.get(deal.id, []))
            for name in [*sequence, deal.stage]:
                if name:
                    names.setdefault(_norm(name), name)
            distinct = list(dict.fromkeys(_norm(n) for n in sequence if n))
            for pos, key in enumerate(distinct):
                if len(distinct) > 1:
                    ranks[(deal.pipeline, key)].append(pos / (len(distinct) - 1))
            if deal.stage:
                flags[(deal.pipeline, _norm(deal.stage))].append((deal.closed, deal.won))
        if len(seen) == 1:
            self._declared(next(iter(seen.values())), stage_name)
        return {p: self._pipeline(p, names, ranks, flags) for p, names in seen.items() if names}

    @staticmethod
    def _sequence(deal: _Deal, changes: list[_Change]) -> list[str]:
        if changes:
            timed = [c for c in changes if c.changed_at is not None]
            return [c.stage for c in sorted(timed, key=lambda c: c.changed_at)]  # type: ignore[arg-type, return-value]
        entered = [s for s, _w, _h in sorted(deal.entered, key=lambda e: e[1])]
        return [*entered, deal.stage] if entered else []

    def _declared(self, names: dict[str, str], stage_name: Callable[[str], str]) -> None:
        """Stages the mapping names exist even if no deal is in them (single pipeline only)."""
        s, h = self.m.stages, self.m.history
        declared = [
            *s.order,
            *s.won,
            *s.lost,
            *h.stage_entered,
            *([h.initial_stage] if h.initial_stage else []),
        ]
        for raw in declared:
            name = stage_name(raw)
            names.setdefault(_norm(name), name)

    def _pipeline(
        self,
        pipeline: str,
        names: dict[str, str],
        ranks: dict[tuple[str, str], list[float]],
        flags: dict[tuple[str, str], list[tuple[bool | None, bool | None]]],
    ) -> Pipeline:
        order = {_norm(n): i for i, n in enumerate(self.m.stages.order)}
        first = {key: i for i, key in enumerate(names)}
        kinds = {key: self._kind(key, flags.get((pipeline, key), [])) for key in names}

        def rank(key: str) -> tuple[float, float, int]:
            found = ranks.get((pipeline, key))
            mean = sum(found) / len(found) if found else 2.0
            return (order.get(key, len(order)), mean, first[key])

        open_keys = sorted((k for k in names if kinds[k] == "open"), key=rank)
        won_keys = sorted((k for k in names if kinds[k] == "won"), key=rank)
        lost_keys = sorted((k for k in names if kinds[k] == "lost"), key=rank)
        probs = {_norm(k): v for k, v in self.m.stages.probabilities.items()}
        cats = {_norm(k): v for k, v in self.m.stages.categories.items()}
        stages = []
        for i, key in enumerate(open_keys + won_keys + lost_keys):
            kind = kinds[key]
            default = (
                Decimal(1)
                if kind == "won"
                else Decimal(0)
                if kind == "lost"
                else (Decimal(i + 1) / Decimal(len(open_keys) + 1)).quantize(Decimal("0.01"))
            )
            stages.append(
                Stage(
                    id=f"{pipeline}/{names[key]}",
                    name=names[key],
                    order=i,
                    probability=probs.get(key, default),
                    category=cats.get(key, _default_category(kind != "open", kind == "won")),
                    is_closed=kind != "open",
                    is_won=kind == "won",
                )
            )
        return Pipeline(id=pipeline, name=pipeline, stages=tuple(stages))

    def _kind(self, key: str, flags: list[tuple[bool | None, bool | None]]) -> str:
        if key in self.won:
            return "won"
        if key in self.lost:
            return "lost"
        said = [(closed, won) for closed, won in flags if closed is not None or won is not None]
        if said and all(closed or won for closed, won in said):
            return "won" if all(won for _c, won in said) else "lost"
        return "open"


# =========================================================================== attributes


class _AttributeTyper:
    """Kept columns as typed attributes: float when every non-blank value is a number, else str."""

    def __init__(self, sources: list[_AttrSource], joins: list[_JoinTable], parsers: Parsers) -> None:
        self.sources = sources
        self.joins = joins
        self.parsers = parsers

    def _cells(self, deal: _Deal, src: _AttrSource) -> str:
        if src.join is None:
            return deal.cells[src.index].strip()
        row = deal.joined[src.join]
        return row.cells[src.index].strip() if row is not None else ""

    def values(self, deals: list[_Deal]) -> list[dict[str, Attribute]]:
        out: list[dict[str, Attribute]] = [{} for _ in deals]
        for src in self.sources:
            texts = [self._cells(d, src) for d in deals]
            convert = self._converter({t for t in texts if t})
            for attrs, text in zip(out, texts, strict=True):
                if text:
                    attrs[src.name] = convert[text]
        return out

    def _converter(self, distinct: set[str]) -> dict[str, Attribute]:
        numbers: dict[str, Attribute] = {}
        for text in distinct:
            try:
                numbers[text] = float(self.parsers.number(text)[0])
            except BadValue:
                return {t: t for t in distinct}
        return numbers


# =========================================================================== histories


class _HistoryBuilder:
    """Turns validated deals into Opportunity models with complete histories (and applies as_of)."""

    def __init__(self, importer: _Importer, pipelines: dict[str, Pipeline]) -> None:
        self.imp = importer
        self.m = importer.m
        self.parsers = importer.parsers
        self.pipelines = pipelines
        self.appended = 0
        self.left_out = 0
        self.reopened = 0
        self.end = None
        if importer.as_of is not None:
            self.end = self.parsers.midnight(importer.as_of + timedelta(days=1))

    def build(
        self, deal: _Deal, attrs: dict[str, Attribute], rows: list[_Change], acts: list[Activity]
    ) -> tuple[Opportunity, list[StageChange], list[Activity]] | None:
        stage = deal.stage_obj
        # Only rows without errors are built, and for those every reference has resolved.
        assert stage is not None and deal.pipeline_obj is not None
        assert deal.final_amount is not None and deal.currency is not None
        last_activity = deal.last_activity or max((a.on for a in acts), default=None)
        probability = (
            deal.probability
            if deal.probability is not None and deal.probability != stage.probability
            else None
        )
        opp = Opportunity(
            id=deal.id,
            name=deal.name,
            account=deal.account,
            owner_id=deal.owner_id,
            pipeline_id=deal.pipeline_obj.id,
            stage_id=stage.id,
            amount=deal.final_amount,
            currency=deal.currency,
            close_date=deal.close_date,
            created_at=deal.created,
            modified_at=deal.modified,
            forecast_category=deal.category,
            next_step=deal.next_step,
            next_step_date=deal.next_step_date,
            last_activity=last_activity,
            lead_source=deal.lead_source,
            type=deal.type,
            is_closed=stage.is_closed,
            is_won=stage.is_won,
            closed_at=deal.closed_at,
            probability=probability,
            attributes=attrs,
        )
        if rows:
            changes = complete_history(opp, self._given(deal, opp, rows))
            if opp.is_closed and not deal.closed_at_given and _last_stage_since(changes) != opp.closed_at:
                opp = opp.model_copy(update={"closed_at": _last_stage_since(changes)})
        else:
            changes = self._synthesized(deal, opp)
        if self.end is None:
            return opp, changes, acts
        return self._cut(opp, changes, acts)

    def _given(self, deal: _Deal, opp: Opportunity, rows: list[_Change]) -> list[StageChange]:
        changes = [
            _change(opp.id, r.changed_at, r.stage_id, r.amount, r.close_date, r.category)  # type: ignore[arg-type]
            for r in sorted(rows, key=lambda r: r.changed_at)  # type: ignore[arg-type, return-value]
        ]
        last = changes[-1]
        if last.stage_id != opp.stage_id:
            when = opp.closed_at or opp.modified_at or last.changed_at
            changes.append(_change(opp.id, max(when, last.changed_at), opp.stage_id))
            self.appended += 1
        return changes

    def _synthesized(self, deal: _Deal, opp: Opportunity) -> list[StageChange]:
        """History from the row alone: creation, stage_entered dates, and the close."""
        index = self.imp.stage_index[opp.pipeline_id]
        events: list[tuple[datetime, int, str]] = []
        for name, when, _h in deal.entered:
            stage = index[_norm(name)]
            if not stage.is_closed:
                events.append((when, stage.order, stage.id))
        start = opp.created_at
        if start is not None and not any(when <= start for when, _o, _s in events):
            events.append((start, -1, self._initial(deal, opp, bool(events)).id))
        events.sort()
        before = self._amount_before_close(deal, opp)
        changes = [_change(opp.id, when, sid, before) for when, _o, sid in events]
        if not opp.is_closed:
            if changes and changes[-1].stage_id != opp.stage_id:
                when = max(opp.modified_at or changes[-1].changed_at, changes[-1].changed_at)
                changes.append(_change(opp.id, when, opp.stage_id))
            return complete_history(opp, changes)
        assert opp.closed_at is not None
        close = _change(
            opp.id, opp.closed_at, opp.stage_id, opp.amount, opp.close_date, opp.forecast_category
        )
        if not changes:
            return [close]
        # Rows before the close describe the open deal: its closing category (and, with
        # close_date_before_close = "none", its close date) was not known yet.
        blank_date = self.m.history.close_date_before_close == "none"
        while_open = opp.model_copy(
            update={
                "forecast_category": None,
                "is_closed": False,
                "is_won": False,
                "closed_at": None,
                **({"close_date": None} if blank_date else {}),
            }
        )
        return [*complete_history(while_open, changes), close]

    def _initial(self, deal: _Deal, opp: Opportunity, has_events: bool) -> Stage:
        pipeline = self.pipelines[opp.pipeline_id]
        if not opp.is_closed and not has_events:
            return pipeline.stage(opp.stage_id)
        name = self.m.history.initial_stage
        if name:
            found = self.imp.stage_index[opp.pipeline_id].get(_norm(self.imp._stage_name(name)))
            if found is not None and not found.is_closed:
                return found
        opens = pipeline.open_stages
        return opens[0] if opens else pipeline.stage(opp.stage_id)

    def _amount_before_close(self, deal: _Deal, opp: Opportunity) -> Decimal | None:
        if self.m.history.amount_before_close == "fallback":
            return self.imp._fallback_value(deal)
        return None

    def _cut(
        self, opp: Opportunity, changes: list[StageChange], acts: list[Activity]
    ) -> tuple[Opportunity, list[StageChange], list[Activity]] | None:
        """The deal as it stood at the end of `as_of`; None if it did not exist yet."""
        end = self.end
        assert end is not None and self.imp.as_of is not None
        if (opp.created_at is not None and opp.created_at >= end) or (
            changes and changes[0].changed_at >= end
        ):
            self.left_out += 1
            return None
        kept = [c for c in changes if c.changed_at < end]
        acts = [a for a in acts if a.on <= self.imp.as_of]
        update: dict[str, Any] = {}
        if len(kept) < len(changes):
            update.update(self._state_at(opp, kept))
            self.reopened += int(opp.is_closed and not update.get("is_closed", True))
        if opp.modified_at is not None and opp.modified_at >= end:
            update["modified_at"] = kept[-1].changed_at if kept else None
        if opp.last_activity is not None and opp.last_activity > self.imp.as_of:
            update["last_activity"] = max((a.on for a in acts), default=None)
        return (opp.model_copy(update=update) if update else opp), kept, acts

    def _state_at(self, opp: Opportunity, kept: list[StageChange]) -> dict[str, Any]:
        last = kept[-1]
        stage = self.pipelines[opp.pipeline_id].stage(last.stage_id)
        closed_at = _last_stage_since(kept) if stage.is_closed else None
        return {
            "stage_id": last.stage_id,
            "amount": last.amount,
            "close_date": last.close_date,
            "forecast_category": last.forecast_category,
            "is_closed": stage.is_closed,
            "is_won": stage.is_won,
            "closed_at": closed_at,
        }

    def warn(self, problems: _Problems) -> None:
        if self.appended:
            problems.warn(
                f"{self.appended} deal(s) had a stage history that did not end in their current "
                "stage; a row for the current stage was added"
            )
        if self.end is not None and self.imp.as_of is not None:
            problems.warn(
                f"as of {self.imp.as_of.isoformat()}: {self.left_out} deal(s) created later were left "
                f"out, {self.reopened} deal(s) closed later are shown open"
            )


# =========================================================================== connector


class CsvConnector:
    """Imports a CRM export (a directory of CSV files) as a full sync.

    Args:
        source: the directory holding the files.
        mapping: a TOML mapping file for exports that differ from the default schema.
        skip_bad_rows: leave bad rows out (reported in `CsvImport.skipped`) instead of failing.
        as_of: import the CRM as it stood at the end of this day: later deals are left out,
            later history rows, closes and activities are cut (deals closed later are open).
    """

    name = "csv"

    def __init__(
        self,
        source: Path | str,
        mapping: Path | str | None = None,
        skip_bad_rows: bool = False,
        as_of: date | None = None,
    ) -> None:
        self.source = Path(source)
        self.mapping = Path(mapping) if mapping is not None else None
        self.skip_bad_rows = skip_bad_rows
        self.as_of = as_of

    def load(self) -> CsvImport:
        """Read and validate every file; raise CsvImportError listing every problem."""
        mapping, name, raw = load_mapping(self.mapping)
        return _Importer(self.source, mapping, name, raw, self.skip_bad_rows, self.as_of).run()

    async def batches(
        self, cursor: str | None, progress: ProgressCallback | None = None
    ) -> AsyncIterator[SyncBatch]:
        """Validate everything first (in a thread), then yield pipelines + owners, then deals in chunks.

        A CSV import is always a full import: `cursor` is ignored. Each batch's cursor is the
        files' fingerprint; batches before the last carry it with a ":partial" suffix.
        """
        del cursor
        imported = await asyncio.to_thread(self.load)
        report = progress or (lambda _p: None)
        for text in imported.warnings:
            report(SyncProgress(message=text))
        if imported.skipped:
            report(SyncProgress(message=f"{len(imported.skipped)} problem(s) in skipped rows"))
        chunks = list(_chunks(imported))
        total = len(imported.opportunities)
        done = 0
        partial = imported.fingerprint + ":partial"
        yield SyncBatch(
            pipelines=imported.pipelines,
            owners=imported.owners,
            cursor=partial if chunks else imported.fingerprint,
        )
        for page, batch in enumerate(chunks, start=1):
            done += len(batch.opportunities)
            last = page == len(chunks)
            yield batch.model_copy(update={"cursor": imported.fingerprint if last else partial})
            report(
                SyncProgress(
                    records=done, total=total, pages=page, message=f"imported {done} of {total} deals"
                )
            )


def _chunks(imported: CsvImport) -> Iterator[SyncBatch]:
    changes: dict[str, list[StageChange]] = defaultdict(list)
    for change in imported.changes:
        changes[change.opportunity_id].append(change)
    acts: dict[str, list[Activity]] = defaultdict(list)
    for act in imported.activities:
        acts[act.opportunity_id].append(act)
    opps = imported.opportunities
    for start in range(0, len(opps), BATCH_SIZE):
        chunk = opps[start : start + BATCH_SIZE]
        yield SyncBatch(
            opportunities=chunk,
            changes=[c for o in chunk for c in changes.get(o.id, [])],
            activities=[a for o in chunk for a in acts.get(o.id, [])],
        )
