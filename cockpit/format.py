"""Formatting of money, dates and counts for display. No Textual here, so the CLI can use it too."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

_SUFFIXES = ((Decimal(1_000_000_000), "B"), (Decimal(1_000_000), "M"), (Decimal(1_000), "k"))


def compact(amount: Decimal | float | int) -> str:
    """1234567 → "1.23M"; 12345 → "12.3k"; 950 → "950"."""
    value = Decimal(str(amount))
    sign = "-" if value < 0 else ""
    value = abs(value)
    for size, suffix in _SUFFIXES:
        if value >= size:
            scaled = value / size
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"{sign}{scaled:.{digits}f}{suffix}"
    return f"{sign}{value:.0f}"


def money(amount: Decimal | float | int, currency: str) -> str:
    """Full amount with thousands separators: "CNY 1,234,567"."""
    return f"{currency} {Decimal(str(amount)):,.0f}"


def percent(p: float | None) -> str:
    return "–" if p is None else f"{p * 100:.0f}%"


def json_ready(value: Any) -> Any:
    """JSON-ready data from dataclasses, pydantic models and containers: money as strings (never
    floats), dates in ISO form, enums by value. Used by every `--json` output and stored report."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(json_ready(k)): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_ready(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value
