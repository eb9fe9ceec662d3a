"""What the Forecast screen shows beyond the roll-up: the funnel and the pipeline by lead source.

Pure functions over domain values; the service gathers the inputs, the screens render the outputs.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from cockpit.models import DealSnapshot, Pipeline


@dataclass(frozen=True)
class FunnelRow:
    """One open stage: volume now, velocity now and at the same point of last quarter."""

    pipeline: str
    stage: str
    deals: int
    value: Decimal
    median_days: float | None
    """Median days the open deals have been in this stage."""
    last_quarter_median_days: float | None
    """The same at the same point of last quarter."""
    last_quarter_deals: int

    @property
    def trend(self) -> str:
        """"slower" / "faster" / "steady" / "–": velocity against last quarter (±15 % is steady)."""
        if self.median_days is None or not self.last_quarter_median_days:
            return "–"
        ratio = self.median_days / self.last_quarter_median_days
        if ratio > 1.15:
            return "slower"
        if ratio < 1 / 1.15:
            return "faster"
        return "steady"


@dataclass(frozen=True)
class SourceRow:
    source: str
    deals: int
    value: Decimal
    share: float


def funnel(
    pipelines: Iterable[Pipeline],
    now: Iterable[DealSnapshot],
    then: Iterable[DealSnapshot],
    value: Mapping[str, Decimal],
) -> list[FunnelRow]:
    """Open deals per stage, in funnel order, with median days in stage now and at the same point last quarter."""
    def days(snaps: Iterable[DealSnapshot]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for snap in snaps:
            if not snap.deal.is_closed:
                out.setdefault(snap.deal.stage_id, []).append((snap.as_of - snap.stage_entered_at.date()).days)
        return out

    now = list(now)
    now_days, then_days = days(now), days(then)
    sums: dict[str, Decimal] = {}
    for snap in now:
        if not snap.deal.is_closed:
            sums[snap.deal.stage_id] = sums.get(snap.deal.stage_id, Decimal(0)) + value.get(snap.deal.id, Decimal(0))
    rows = []
    for pipeline in pipelines:
        for stage in pipeline.open_stages:
            current = now_days.get(stage.id, [])
            before = then_days.get(stage.id, [])
            if not current and not before:
                continue
            rows.append(
                FunnelRow(
                    pipeline=pipeline.name,
                    stage=stage.name,
                    deals=len(current),
                    value=sums.get(stage.id, Decimal(0)),
                    median_days=statistics.median(current) if current else None,
                    last_quarter_median_days=statistics.median(before) if before else None,
                    last_quarter_deals=len(before),
                )
            )
    return rows


def by_lead_source(deals: Iterable[tuple[Decimal, str]]) -> list[SourceRow]:
    """Open pipeline value per lead source from (value, source) pairs, largest first."""
    totals: dict[str, tuple[int, Decimal]] = {}
    for value, source in deals:
        count, amount = totals.get(source, (0, Decimal(0)))
        totals[source] = (count + 1, amount + value)
    grand = sum((v for _, v in totals.values()), Decimal(0)) or Decimal(1)
    rows = [SourceRow(source, count, amount, float(amount / grand)) for source, (count, amount) in totals.items()]
    return sorted(rows, key=lambda r: (-r.value, r.source))
