"""Formatting of money, dates and counts for display. No Textual here, so the CLI can use it too."""

from __future__ import annotations

from decimal import Decimal

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
