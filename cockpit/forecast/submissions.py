"""Making submissions from a roll-up, fingerprinting the data, and rolling submissions up the manager tree.

Roll-up rule (what a VP sees): for each direct report of the scope owner, that person's latest
submission for the quarter if they made one, which covers their whole team; if they made none, the
same rule one level down (their reports' latest submissions, summed), and so on. Nothing is ever
recomputed or edited: each row carries the original submissions (id, author, time, number), and the
sum is the sum of those numbers. Teams where nobody submitted are listed as missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from cockpit.forecast.config import ForecastConfig
from cockpit.forecast.deals import ForecastDeal
from cockpit.forecast.rollup import Rollup
from cockpit.models import ForecastCategory, OrgTree
from cockpit.models.submission import (
    ALL_SCOPE,
    ModelRange,
    Submission,
    SubmissionLine,
    line_totals,
)


def data_fingerprint(deals: Iterable[ForecastDeal]) -> str:
    """SHA-256 (hex, first 16 bytes) of the deals' ids, stages, amounts, currencies, close dates, categories.

    Two submissions with the same fingerprint were made on the same deal data.
    """
    digest = hashlib.sha256()
    for deal in sorted(deals, key=lambda d: d.opportunity_id):
        fields = (
            deal.opportunity_id,
            deal.stage_id,
            str(deal.amount),
            deal.currency,
            deal.close_date.isoformat() if deal.close_date else "",
            deal.category.value,
            "won" if deal.won else "open",
        )
        digest.update("\x1f".join(fields).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:32]


def lines_from_rollup(rollup: Rollup, config: ForecastConfig) -> list[SubmissionLine]:
    """One line per deal in the quarter (won in it or open in its pipeline), called as the CRM has it,
    in opportunity-id order."""
    fx = config.fx(rollup.as_of)
    deals = sorted(rollup.quarter_deals, key=lambda d: d.opportunity_id)
    return [
        SubmissionLine(
            opportunity_id=d.opportunity_id,
            name=d.name,
            owner_id=d.owner_id,
            pipeline_id=d.pipeline_id,
            stage_id=d.stage_id,
            amount=d.amount,
            currency=d.currency,
            fx_rate=fx.rate(d.currency),
            close_date=d.close_date,
            won=d.won,
            category=ForecastCategory.CLOSED if d.won else d.category,
        )
        for d in deals
    ]


def make_submission(
    rollup: Rollup,
    lines: Sequence[SubmissionLine],
    *,
    author: str,
    manager_number: Decimal | None = None,
    reason: str = "",
    model_version: str = "",
    created_at: datetime | None = None,
) -> Submission:
    """A submission of `rollup`'s quarter and scope with the given calls (totals come from the lines).

    Without a `manager_number` the number is closed + commit from the calls.
    """
    totals = line_totals(list(lines))
    model = None
    if rollup.range is not None:
        r = rollup.range
        model = ModelRange(expected=r.expected, p10=r.p10, p50=r.p50, p90=r.p90)
    return Submission(
        quarter=rollup.quarter.label,
        scope=rollup.scope or ALL_SCOPE,
        author=author,
        created_at=created_at or datetime.now(UTC),
        currency=rollup.currency,
        totals=totals,
        manager_number=totals.commit_forecast if manager_number is None else manager_number,
        reason=reason,
        model=model,
        model_version=model_version,
        data_fingerprint=data_fingerprint(rollup.quarter_deals),
        lines=tuple(lines),
    )


@dataclass(frozen=True)
class SubmissionRow:
    """One direct report's team in a submission roll-up."""

    owner_id: str
    name: str
    submissions: tuple[Submission, ...]
    """The original submissions this row sums (one if the owner submitted for the whole team)."""
    missing: tuple[str, ...]
    """Owners below whom nobody submitted (their deals are not in the number)."""

    @property
    def number(self) -> Decimal:
        return sum((s.manager_number for s in self.submissions), Decimal(0))

    @property
    def own(self) -> bool:
        """The owner submitted for their whole team themselves."""
        return len(self.submissions) == 1 and self.submissions[0].scope == self.owner_id


@dataclass(frozen=True)
class SubmissionRollup:
    quarter: str
    scope: str
    own_submission: Submission | None
    """The scope owner's own latest submission, shown beside (never added to) the sum."""
    rows: list[SubmissionRow]

    @property
    def total(self) -> Decimal:
        """Sum of the rows' numbers (each an original manager's number)."""
        return sum((row.number for row in self.rows), Decimal(0))

    @property
    def missing(self) -> list[str]:
        return [owner for row in self.rows for owner in row.missing]


def rollup_submissions(
    tree: OrgTree, scope: str, quarter: str, latest: Mapping[str, Submission]
) -> SubmissionRollup:
    """Roll the latest submissions (by scope owner id) of `quarter` up to `scope`'s direct reports."""
    if scope not in tree.owners:
        raise KeyError(f"scope {scope!r} is not a known owner")
    wrong = sorted({s.quarter for s in latest.values()} - {quarter})
    if wrong:
        raise ValueError(f"submissions for {', '.join(wrong)} given to a roll-up of {quarter}")
    rows = []
    for child in tree.direct_reports(scope):
        found, missing = _collect(tree, child, latest)
        rows.append(SubmissionRow(child, tree.owners[child].name, tuple(found), tuple(missing)))
    return SubmissionRollup(quarter=quarter, scope=scope, own_submission=latest.get(scope), rows=rows)


def _collect(
    tree: OrgTree, owner: str, latest: Mapping[str, Submission]
) -> tuple[list[Submission], list[str]]:
    if owner in latest:
        return [latest[owner]], []
    reports = tree.direct_reports(owner)
    if not reports:
        return [], [owner]
    found: list[Submission] = []
    missing: list[str] = []
    for child in reports:
        sub, gone = _collect(tree, child, latest)
        found += sub
        missing += gone
    return found, missing
