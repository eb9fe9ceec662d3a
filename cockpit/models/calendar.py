"""Fiscal calendar: fiscal years that start in any month, their quarters and weeks of quarter.

A fiscal year is named after the calendar year in which it ends (FY2027 starting in February 2026
ends in January 2027). With a January start the fiscal year equals the calendar year.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import cached_property
from functools import total_ordering

from pydantic import BaseModel, ConfigDict, Field

_FISCAL = re.compile(r"^\s*FY\s*(\d{4})\s*[-_ ]?\s*Q([1-4])\s*$", re.IGNORECASE)
_CALENDAR = re.compile(r"^\s*(\d{4})\s*[-_ ]?\s*Q([1-4])\s*$", re.IGNORECASE)


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


class FiscalCalendar(BaseModel):
    """A fiscal year that starts on the first day of `start_month`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_month: int = Field(default=1, ge=1, le=12)
    """Month (1-12) in which the fiscal year starts."""

    def fiscal_year_of(self, day: date) -> int:
        """The fiscal year containing `day` (named after the calendar year it ends in)."""
        if self.start_month == 1:
            return day.year
        return day.year + 1 if day.month >= self.start_month else day.year

    def year_start(self, fiscal_year: int) -> date:
        if self.start_month == 1:
            return date(fiscal_year, 1, 1)
        return date(fiscal_year - 1, self.start_month, 1)

    def quarter_of(self, day: date) -> Quarter:
        fy = self.fiscal_year_of(day)
        start = self.year_start(fy)
        months = (day.year - start.year) * 12 + (day.month - start.month)
        return Quarter(fiscal_year=fy, number=months // 3 + 1, calendar=self)

    def quarter(self, fiscal_year: int, number: int) -> Quarter:
        return Quarter(fiscal_year=fiscal_year, number=number, calendar=self)

    def parse_quarter(self, text: str, today: date | None = None) -> Quarter:
        """Read `FY2027-Q1`, a calendar alias `2026Q4`, or `current`/`next`/`previous`.

        A calendar alias is accepted only when a fiscal quarter covers exactly those three months.
        """
        raw = text.strip()
        low = raw.lower()
        if low in {"current", "this", "now", "next", "previous", "prev", "last"}:
            base = self.quarter_of(today or date.today())
            if low == "next":
                return base.next()
            if low in {"previous", "prev", "last"}:
                return base.previous()
            return base
        match = _FISCAL.match(raw)
        if match:
            return self.quarter(int(match.group(1)), int(match.group(2)))
        match = _CALENDAR.match(raw)
        if match:
            year, q = int(match.group(1)), int(match.group(2))
            first = date(year, 3 * (q - 1) + 1, 1)
            quarter = self.quarter_of(first)
            if quarter.start != first:
                raise ValueError(
                    f"calendar quarter {raw!r} does not line up with a fiscal year starting in "
                    f"month {self.start_month}; use a fiscal label such as {quarter.label!r}"
                )
            return quarter
        raise ValueError(f"cannot read quarter {raw!r} (expected e.g. FY2027-Q1, 2026Q4 or 'current')")


@total_ordering
class Quarter(BaseModel):
    """One fiscal quarter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fiscal_year: int = Field(ge=1900, le=2999)
    number: int = Field(ge=1, le=4)
    calendar: FiscalCalendar = FiscalCalendar()

    @property
    def label(self) -> str:
        return f"FY{self.fiscal_year}-Q{self.number}"

    @property
    def calendar_label(self) -> str | None:
        """`2026Q4` when this quarter is a calendar quarter, else None."""
        if (self.start.month - 1) % 3:
            return None
        return f"{self.start.year}Q{(self.start.month - 1) // 3 + 1}"

    @cached_property
    def start(self) -> date:
        """First day of the quarter (cached: a roll-up asks tens of thousands of times; so new
        quarters are built, never `model_copy`'d, which would carry the cache over)."""
        first = self.calendar.year_start(self.fiscal_year)
        y, m = _add_months(first.year, first.month, 3 * (self.number - 1))
        return date(y, m, 1)

    @cached_property
    def end(self) -> date:
        """First day after the quarter (exclusive end)."""
        s = self.start
        y, m = _add_months(s.year, s.month, 3)
        return date(y, m, 1)

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def weeks(self) -> int:
        """Number of (partial) weeks: 13 or 14."""
        return (self.days + 6) // 7

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end

    def week_of(self, day: date) -> int:
        """Week of quarter, 1-based: days 0-6 are week 1. ValueError outside the quarter."""
        if not self.contains(day):
            raise ValueError(f"{day} is not in {self.label} ({self.start} to {self.last_day})")
        return (day - self.start).days // 7 + 1

    def week_start(self, week: int) -> date:
        if not 1 <= week <= self.weeks:
            raise ValueError(f"{self.label} has weeks 1..{self.weeks}, not {week}")
        return self.start + timedelta(days=7 * (week - 1))

    def next(self) -> Quarter:
        if self.number == 4:
            return Quarter(fiscal_year=self.fiscal_year + 1, number=1, calendar=self.calendar)
        return Quarter(fiscal_year=self.fiscal_year, number=self.number + 1, calendar=self.calendar)

    def previous(self) -> Quarter:
        if self.number == 1:
            return Quarter(fiscal_year=self.fiscal_year - 1, number=4, calendar=self.calendar)
        return Quarter(fiscal_year=self.fiscal_year, number=self.number - 1, calendar=self.calendar)

    def _key(self) -> tuple[int, int]:
        return (self.fiscal_year, self.number)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Quarter):
            return NotImplemented
        return self.start < other.start

    def __str__(self) -> str:
        return self.label
