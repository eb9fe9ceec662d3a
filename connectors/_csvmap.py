"""The CSV import's mapping file and the value parsers it configures.

A mapping (TOML, read with `tomllib`, validated with pydantic) tells the CSV connector how one CRM's
export differs from the default schema: other file and column names, date and number formats, a
default currency, stage names and order, value aliases, joined tables and amount rules. Every part is
optional; an empty mapping means "the export follows the default schema" (see docs/csv-import.md).

This module also holds what the connector reports problems with: `RowError` (one bad value, with
file, line, column, value and what was expected) and `CsvImportError`.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cockpit.models import ForecastCategory
from connectors import ConnectorError

__all__ = [
    "BadValue",
    "CsvImportError",
    "CsvMapping",
    "FileSection",
    "Parsers",
    "RowError",
    "load_mapping",
]

MAX_LISTED = 20
"""How many errors a CsvImportError message lists before "and N more"."""


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class RowError:
    """One problem in the input: where it is, the value found and what was expected.

    `line` is the 1-based physical line (the header is line 1); 0 means the whole file (or, for the
    mapping file, a key named by `column`).
    """

    file: str
    line: int
    column: str
    value: str
    expected: str

    def __str__(self) -> str:
        if self.line > 0:
            where = f"{self.file} line {self.line}" + (f", column {self.column}" if self.column else "")
        else:
            where = self.file + (f", key {self.column}" if self.column else "")
        if self.value or (self.line > 1 and self.column):
            shown = self.value if len(self.value) <= 60 else self.value[:57] + "..."
            return f"{where}: {shown!r} \u2014 expected {self.expected}"
        return f"{where}: expected {self.expected}"


class CsvImportError(ConnectorError):
    """The import found problems; nothing was imported. `errors` lists every one of them."""

    def __init__(self, errors: list[RowError], title: str = "CSV import failed") -> None:
        self.errors = list(errors)
        super().__init__(title, _summary(self.errors))


def _summary(errors: list[RowError]) -> str:
    count = len(errors)
    head = f"{count} problem{'s' if count != 1 else ''} found, nothing was imported:"
    lines = [f"- {error}" for error in errors[:MAX_LISTED]]
    if count > MAX_LISTED:
        lines.append(f"... and {count - MAX_LISTED} more")
    return "\n".join([head, *lines])


class BadValue(ValueError):
    """A cell that does not parse; `expected` says what would have."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# --------------------------------------------------------------------------- mapping model

DEFAULT_DATE_FORMATS = [
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%Y.%m.%d",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y年%m月%d日",
    "%Y年%m月%d日 %H:%M",
    "%Y年%m月%d日 %H:%M:%S",
]
"""Tried in order after ISO 8601 (which is always tried first). Day-first and month-first formats
such as %d/%m/%Y are ambiguous, so a mapping has to ask for them."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadOptions(_Section):
    """`[csv]`: how the files are read."""

    encoding: str = "auto"
    """"auto" (UTF-8, UTF-8 with BOM, UTF-16 with BOM, else GB18030) or a Python codec name."""
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    """Field separator: "," (default), ";" or "\\t"."""

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(
                    f"'auto' or a codec name such as utf-8, gb18030, cp1252 (not {value!r})"
                ) from None
        return value


class Formats(_Section):
    """`[formats]`: how dates and numbers are written."""

    dates: list[str] = Field(default_factory=lambda: list(DEFAULT_DATE_FORMATS), min_length=1)
    """strptime formats tried in order (after ISO 8601) for every date and date-time column."""
    timezone: str = "UTC"
    """IANA zone of date-times written without an offset ("Asia/Shanghai"); stored as UTC."""
    decimal: Literal[".", ","] = "."
    thousands: Literal[",", ".", " ", "'", ""] = ","

    @field_validator("dates")
    @classmethod
    def _valid_formats(cls, value: list[str]) -> list[str]:
        for fmt in value:
            if "%" not in fmt:
                raise ValueError(f"strptime formats such as '%d/%m/%Y' ({fmt!r} has no % directive)")
            try:
                datetime(2026, 3, 31, 9, 30).strftime(fmt)
            except ValueError as exc:
                raise ValueError(f"valid strptime formats ({fmt!r}: {exc})") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _separators_differ(self) -> Formats:
        if self.decimal == self.thousands:
            raise ValueError(f"different decimal and thousands separators (both are {self.decimal!r})")
        return self


def _zone(name: str) -> tzinfo:
    if name.upper() in {"UTC", "Z", "GMT"}:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"an IANA time zone such as 'UTC' or 'Asia/Shanghai' (not {name!r})") from None


class Defaults(_Section):
    """`[defaults]`: values for columns an export does not have (or leaves blank)."""

    currency: str | None = None
    """ISO 4217 code used when there is no currency column or the cell is blank."""
    pipeline: str | None = None
    """Pipeline of deals without one (default: the only pipeline of pipelines.csv, else "Sales")."""

    @field_validator("currency")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None and value.strip().upper() not in ISO_CURRENCIES:
            raise ValueError(f"an ISO 4217 currency code such as USD, EUR or CNY (not {value!r})")
        return value.strip().upper() if value else value


Aliases = dict[str, dict[str, str]]
"""Per column: value found in the file -> value to use ("GTXPro" -> "GTX Pro")."""


class OpportunityColumns(_Section):
    """Header of each schema column in the opportunities file. "" means "this export has none"."""

    id: str = "id"
    name: str = "name"
    account: str = "account"
    owner: str = "owner"
    pipeline: str = "pipeline"
    stage: str = "stage"
    amount: str = "amount"
    currency: str = "currency"
    close_date: str = "close_date"
    created: str = "created"
    modified: str = "modified"
    forecast_category: str = "forecast_category"
    next_step: str = "next_step"
    next_step_date: str = "next_step_date"
    last_activity: str = "last_activity"
    lead_source: str = "lead_source"
    type: str = "type"
    won: str = "won"
    closed: str = "closed"
    closed_at: str = "closed_at"
    probability: str = "probability"


class HistoryColumns(_Section):
    """Header of each schema column in the stage history file."""

    opportunity_id: str = "opportunity_id"
    changed_at: str = "changed_at"
    stage: str = "stage"
    amount: str = "amount"
    close_date: str = "close_date"
    forecast_category: str = "forecast_category"


class OwnerColumns(_Section):
    """Header of each schema column in the owners file (id and name may share a column)."""

    id: str = "id"
    name: str = "name"
    manager: str = "manager"
    team: str = "team"
    email: str = "email"


class PipelineColumns(_Section):
    """Header of each schema column in the pipelines file."""

    pipeline: str = "pipeline"
    stage: str = "stage"
    order: str = "order"
    probability: str = "probability"
    category: str = "category"
    is_closed: str = "is_closed"
    is_won: str = "is_won"


class ActivityColumns(_Section):
    """Header of each schema column in the activities file."""

    opportunity_id: str = "opportunity_id"
    date: str = "date"
    kind: str = "kind"


class OpportunitiesFile(_Section):
    """`[opportunities]`: the one file every import needs."""

    file: str = Field(default="opportunities.csv", min_length=1)
    columns: OpportunityColumns = OpportunityColumns()
    aliases: Aliases = Field(default_factory=dict)
    keep: Literal["all", "none"] | list[str] = "all"
    """Columns outside the schema kept as deal attributes: "all" (default), "none" or a list."""
    drop: list[str] = Field(default_factory=list)
    """Columns never kept as attributes (with keep = "all")."""


class HistoryFile(_Section):
    """`[stage_history]`: optional; "" as file turns it off."""

    file: str = "stage_history.csv"
    columns: HistoryColumns = HistoryColumns()
    aliases: Aliases = Field(default_factory=dict)


class OwnersFile(_Section):
    """`[owners]`: optional; without it owners come from the opportunities' owner column."""

    file: str = "owners.csv"
    columns: OwnerColumns = OwnerColumns()
    aliases: Aliases = Field(default_factory=dict)


class PipelinesFile(_Section):
    """`[pipelines]`: optional; without it pipelines and stages are inferred."""

    file: str = "pipelines.csv"
    columns: PipelineColumns = PipelineColumns()
    aliases: Aliases = Field(default_factory=dict)


class ActivitiesFile(_Section):
    """`[activities]`: optional logged touches per deal."""

    file: str = "activities.csv"
    columns: ActivityColumns = ActivityColumns()
    aliases: Aliases = Field(default_factory=dict)


FileSection = OpportunitiesFile | HistoryFile | OwnersFile | PipelinesFile | ActivitiesFile
"""Any section that names one CSV file with its columns and aliases."""


class AmountRules(_Section):
    """`[amount]`: where a deal's amount comes from when the amount cell cannot be used."""

    fallback: str | None = None
    """A column of the opportunities file or of a join (attribute name) holding a replacement amount."""
    fallback_when: Literal["blank", "blank_or_zero", "blank_or_zero_unless_won"] = "blank"
    """When the fallback replaces the amount cell."""
    blank: Literal["error", "zero"] = "error"
    """A blank amount with no fallback value: an error (default) or 0."""


class StageRules(_Section):
    """`[stages]`: names and shape of inferred stages (used when there is no pipelines file)."""

    aliases: dict[str, str] = Field(default_factory=dict)
    """Stage name in the files -> stage name to use ("Closed Won" -> "Won"); applies to every file."""
    order: list[str] = Field(default_factory=list)
    """Funnel order of inferred stages; stages not listed follow in the order the histories show."""
    won: list[str] = Field(default_factory=list)
    """Names of won stages (besides the recognised Won, Closed Won, 赢单, ...)."""
    lost: list[str] = Field(default_factory=list)
    """Names of lost stages (besides the recognised Lost, Closed Lost, 输单, ...)."""
    probabilities: dict[str, Decimal] = Field(default_factory=dict)
    """Default win probability (0..1) per inferred stage."""
    categories: dict[str, ForecastCategory] = Field(default_factory=dict)
    """Default forecast category per inferred stage."""

    @field_validator("probabilities")
    @classmethod
    def _unit_interval(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, prob in value.items():
            if not 0 <= prob <= 1:
                raise ValueError(f"probabilities between 0 and 1 ({name!r} has {prob})")
        return value

    @field_validator("categories", mode="before")
    @classmethod
    def _parse_categories(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ForecastCategory.parse(v) if isinstance(v, str) else v for k, v in value.items()}
        return value


class HistoryRules(_Section):
    """`[history]`: how a history is synthesized for deals without stage history rows."""

    initial_stage: str | None = None
    """Stage a deal is taken to start in (default: the first open stage of its pipeline)."""
    stage_entered: dict[str, str] = Field(default_factory=dict)
    """Stage name -> column of the opportunities file with the date the deal entered that stage."""
    amount_before_close: Literal["amount", "fallback"] = "amount"
    """Amount of synthesized rows before the close: the deal's amount, or the amount fallback."""
    close_date_before_close: Literal["deal", "none"] = "deal"
    """Close date of synthesized rows before the close: the deal's, or none (known only at close)."""


class Join(_Section):
    """`[[joins]]`: a lookup table whose columns become deal attributes."""

    file: str = Field(min_length=1)
    on: str = Field(min_length=1)
    """Column of the opportunities file holding the key (after its aliases)."""
    key: str | None = None
    """Key column of the joined file (default: same name as `on`)."""
    columns: list[str] | None = None
    """Columns to add (default: all but the key)."""
    prefix: str = ""
    """Prepended to the added attribute names."""
    aliases: Aliases = Field(default_factory=dict)
    missing: Literal["error", "ignore"] = "error"
    """A key not found in the joined file: an error (default) or no attributes."""


class CsvMapping(_Section):
    """A whole mapping file. Every section is optional."""

    csv: ReadOptions = ReadOptions()
    formats: Formats = Formats()
    defaults: Defaults = Defaults()
    opportunities: OpportunitiesFile = OpportunitiesFile()
    stage_history: HistoryFile = HistoryFile()
    owners: OwnersFile = OwnersFile()
    pipelines: PipelinesFile = PipelinesFile()
    activities: ActivitiesFile = ActivitiesFile()
    amount: AmountRules = AmountRules()
    stages: StageRules = StageRules()
    history: HistoryRules = HistoryRules()
    joins: list[Join] = Field(default_factory=list)


_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def load_mapping(path: Path | str | None) -> tuple[CsvMapping, str, bytes]:
    """Read and validate a mapping file: (mapping, file name for messages, raw bytes).

    None gives the default mapping. Problems raise CsvImportError naming the file and each key.
    """
    if path is None:
        return CsvMapping(), "", b""
    file = Path(path)
    name = file.name
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise CsvImportError(
            [RowError(name, 0, "", "", f"a readable mapping file ({exc.strerror or exc})")],
            title="Bad CSV mapping",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise CsvImportError(
            [RowError(name, 0, "", "", f"UTF-8 text (byte offset {exc.start} is not)")],
            title="Bad CSV mapping",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        line = int(match.group(1)) if match else 0
        text = _TOML_LINE.sub("", str(exc)).strip()
        raise CsvImportError(
            [RowError(name, line, "", "", f"valid TOML ({text})")], title="Bad CSV mapping"
        ) from None
    try:
        return CsvMapping.model_validate(data), name, raw
    except ValidationError as exc:
        raise CsvImportError(mapping_errors(name, exc), title="Bad CSV mapping") from None


def mapping_errors(name: str, exc: ValidationError) -> list[RowError]:
    """One RowError per bad key, naming the dotted key and what it should be.

    Alternatives of a union (keep = "all" | [...]) are merged into one "expected a or b".
    """
    merged: dict[str, tuple[str, list[str]]] = {}
    for err in exc.errors():
        loc = tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))
        key = ".".join(str(part) for part in loc)
        value = err.get("input")
        shown = str(value) if isinstance(value, str | int | float | bool) else ""
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            expected = "a known key" + (f" (one of: {', '.join(known)})" if known else "")
            shown = ""
        else:
            expected = err["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        previous = merged.setdefault(key, (shown, []))
        if expected not in previous[1]:
            previous[1].append(expected)
    return [RowError(name, 0, key, shown, " or ".join(expected)) for key, (shown, expected) in merged.items()]


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a location of the mapping (for "unknown key" messages)."""
    target: Any = CsvMapping
    for part in loc:
        target = _unwrap(target)
        if isinstance(part, int) or target is None:
            continue
        if isinstance(target, type) and issubclass(target, BaseModel):
            field = target.model_fields.get(str(part))
            target = field.annotation if field else None
        else:
            target = get_args(target)[-1] if get_args(target) else None
    target = _unwrap(target)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """list[X] / X | None -> X for walking the mapping model."""
    origin = get_origin(annotation)
    if origin in (list, Union, UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else None
    return annotation


# --------------------------------------------------------------------------- value parsers

ISO_CURRENCIES = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR
    FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR
    SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN
    UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG""".split()
)
"""ISO 4217 codes of currencies in use (no precious metals or test codes)."""

CURRENCY_WORDS = {
    "RMB": "CNY",
    "人民币": "CNY",
    "元": "CNY",
    "美元": "USD",
    "欧元": "EUR",
    "港币": "HKD",
    "港元": "HKD",
    "日元": "JPY",
    "英镑": "GBP",
}
"""Non-ISO spellings of currencies that Chinese CRM exports use."""

_SYMBOLS: dict[str, str | None] = {
    "US$": "USD",
    "HK$": "HKD",
    "NT$": "TWD",
    "NZ$": "NZD",
    "R$": "BRL",
    "A$": "AUD",
    "C$": "CAD",
    "S$": "SGD",
    "€": "EUR",
    "£": "GBP",
    "₹": "INR",
    "₩": "KRW",
    "₽": "RUB",
    "₺": "TRY",
    "₫": "VND",
    "฿": "THB",
    "₱": "PHP",
    "zł": "PLN",
    "元": "CNY",
    "$": None,
    "¥": None,
    "￥": None,
}
"""Currency signs stripped from amounts, with the currency they imply (None: several use it)."""
_SYMBOL_ORDER = sorted(_SYMBOLS, key=len, reverse=True)

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "x", "是", "真", "✓", "won", "closed"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "否", "假", "lost", "open"})
_SPACES = "\u00a0\u202f\u2009"
_MINUS = "-\u2212"
_MAX_MAGNITUDE = Decimal(10) ** 15
_FIRST_YEAR, _LAST_YEAR = 1900, 2999
"""Dates outside these years are export artefacts ("0001-01-01" for "no date"), not CRM data."""
_PLAIN = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,10})?")
"""Digits with an optional '.' fraction: the common case, parsed without further checks."""


class Parsers:
    """Cell parsers configured by `[formats]`. They raise BadValue (never anything else) on bad text.

    Dates and date-times are cached by text, so repeated values (the usual case) cost a dict lookup.
    """

    def __init__(self, formats: Formats | None = None) -> None:
        formats = formats or Formats()
        self.date_formats = list(formats.dates)
        self.zone = _zone(formats.timezone)
        self.decimal = formats.decimal
        self.thousands = formats.thousands
        self._core = re.compile(_number_pattern(formats.decimal, formats.thousands))
        self._local: dict[str, datetime] = {}
        self._utc: dict[str, datetime] = {}
        example = datetime(2026, 3, 31, 9, 30)
        shown = ["2026-03-31"] + [example.strftime(f) for f in self.date_formats[:3]]
        self.date_expected = "a date like " + " or ".join(dict.fromkeys(shown))
        sample = "1" + (self.thousands or "") + "234" + self.decimal + "56"
        self.number_expected = f"a number like {sample}"

    # dates -----------------------------------------------------------------------------------

    def _parse_local(self, text: str) -> datetime:
        """The date-time as written (naive unless the text has an offset)."""
        value = self._local.get(text)
        if value is not None:
            return value
        value = self._try_formats(text)
        if not _FIRST_YEAR <= value.year <= _LAST_YEAR:
            raise BadValue(f"{self.date_expected}, in the years {_FIRST_YEAR} to {_LAST_YEAR}")
        if len(self._local) < 200_000:
            self._local[text] = value
        return value

    def _try_formats(self, text: str) -> datetime:
        if not text:
            raise BadValue(self.date_expected)
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
        for fmt in self.date_formats:
            try:
                return datetime.strptime(text, fmt)
            except ValueError:
                continue
        raise BadValue(self.date_expected)

    def date(self, text: str) -> date:
        """A calendar date as written (a time part, if any, is ignored)."""
        return self._parse_local(text.strip()).date()

    def datetime(self, text: str) -> datetime:
        """An aware UTC date-time; text without an offset is read in the mapping's time zone."""
        text = text.strip()
        value = self._utc.get(text)
        if value is not None:
            return value
        local = self._parse_local(text)
        if local.tzinfo is None or local.utcoffset() is None:
            local = local.replace(tzinfo=self.zone)
        value = local.astimezone(UTC)
        if len(self._utc) < 200_000:
            self._utc[text] = value
        return value

    def midnight(self, day: date) -> datetime:
        """Start of `day` in the mapping's time zone, as UTC."""
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)

    # numbers ---------------------------------------------------------------------------------

    def number(self, text: str) -> tuple[Decimal, str | None]:
        """A signed number and the currency its sign or code implies (None if none or ambiguous).

        Accepts thousands separators, the decimal separator of the mapping, a leading sign or
        parentheses for negatives, currency signs ($, €, ¥, US$, ...) and ISO codes (USD 1,200).
        """
        s = _strip_spaces(text)
        if _PLAIN.fullmatch(s) and (self.decimal == "." or "." not in s):
            return Decimal(s), None
        if not s:
            raise BadValue(self.number_expected)
        negative = False
        if s[0] == "(" and s[-1] == ")":
            negative, s = True, s[1:-1].strip()
        s, sign1 = _take_sign(s)
        s, currency = _take_currency(s)
        s, sign2 = _take_sign(s)
        signs = [sign for sign in (sign1, sign2) if sign]
        if len(signs) > 1 or (negative and signs):
            raise BadValue(self.number_expected)
        negative = negative or signs == ["-"]
        if not self._core.fullmatch(s):
            raise BadValue(self.number_expected)
        value = self._to_decimal(s)
        return (-value if negative and value else value), currency

    def _to_decimal(self, s: str) -> Decimal:
        if self.thousands:
            for sep in self.thousands + _SPACES if self.thousands == " " else self.thousands:
                s = s.replace(sep, "")
        if self.decimal != ".":
            s = s.replace(self.decimal, ".")
        try:
            value = Decimal(s)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
            raise BadValue(self.number_expected) from None
        if abs(value) >= _MAX_MAGNITUDE:
            raise BadValue(f"{self.number_expected} (below 10^15)")
        if "e" in s or "E" in s:
            value = Decimal(format(value, "f"))
        return value

    def amount(self, text: str) -> tuple[Decimal, str | None]:
        """A non-negative amount and the currency its sign implies."""
        value, currency = self.number(text)
        if value < 0:
            raise BadValue("a non-negative amount")
        return value, currency

    def integer(self, text: str) -> int:
        """A whole number >= 0 (stage order)."""
        value, currency = self.number(text)
        if currency or value < 0 or value != value.to_integral_value():
            raise BadValue("a whole number >= 0")
        return int(value)

    def probability(self, text: str) -> Decimal:
        """0..1; "40%" and numbers above 1 are read as percent."""
        s = _strip_spaces(text)
        percent = s.endswith("%")
        try:
            value, currency = self.number(s[:-1] if percent else s)
        except BadValue:
            raise BadValue("a probability such as 40% or 0.4") from None
        if currency is not None:
            raise BadValue("a probability such as 40% or 0.4")
        if percent or value > 1:
            value = value / 100
        if not 0 <= value <= 1:
            raise BadValue("a probability between 0 and 100 %")
        return value

    @staticmethod
    def boolean(text: str) -> bool:
        """true/false, yes/no, 1/0, 是/否, won/lost, ..."""
        low = text.strip().casefold()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        raise BadValue("true or false (also yes/no, 1/0, 是/否)")

    @staticmethod
    def currency(text: str) -> str:
        """An ISO 4217 code (lower case and RMB/人民币/美元... accepted)."""
        s = text.strip()
        code = CURRENCY_WORDS.get(s, s.upper())
        if code not in ISO_CURRENCIES:
            raise BadValue("an ISO 4217 currency code such as USD, EUR or CNY")
        return code

    @staticmethod
    def category(text: str) -> ForecastCategory:
        """A forecast category in any of the spellings CRMs use."""
        try:
            return ForecastCategory.parse(text)
        except ValueError:
            raise BadValue("a forecast category: closed, commit, best case, pipeline or omitted") from None


def _number_pattern(decimal: str, thousands: str) -> str:
    dec = re.escape(decimal)
    sep = f"[ {_SPACES}]" if thousands == " " else re.escape(thousands)
    integer = rf"(?:[0-9]{{1,3}}(?:{sep}[0-9]{{3}})+|[0-9]+)" if thousands else r"[0-9]+"
    return rf"(?:{integer}(?:{dec}[0-9]*)?|{dec}[0-9]+)(?:[eE][+-]?[0-9]{{1,3}})?"


def _strip_spaces(text: str) -> str:
    return text.strip().strip(_SPACES).strip()


def _take_sign(s: str) -> tuple[str, str]:
    if s and s[0] in _MINUS:
        return s[1:].strip(), "-"
    if s and s[0] == "+":
        return s[1:].strip(), "+"
    return s, ""


def _take_currency(s: str) -> tuple[str, str | None]:
    """Strip one currency sign or ISO code from either end of `s`."""
    if len(s) > 3:
        head, tail = s[:3].upper(), s[-3:].upper()
        if head in ISO_CURRENCIES and s[:3].isalpha():
            return s[3:].strip(), head
        if tail in ISO_CURRENCIES and s[-3:].isalpha():
            return s[:-3].strip(), tail
    for symbol in _SYMBOL_ORDER:
        if s.startswith(symbol):
            return s[len(symbol) :].strip(), _SYMBOLS[symbol]
        if s.endswith(symbol):
            return s[: -len(symbol)].strip(), _SYMBOLS[symbol]
    return s, None
