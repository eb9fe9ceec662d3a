"""Forecast settings: reporting currency, dated FX rates, quotas, stage → category overrides, risk thresholds.

This is the `[forecast]` table of the app's config.toml:

```toml
[forecast]
reporting_currency = "CNY"
category_overrides = { "nb-negotiation" = "commit" }

[[forecast.fx_rates]]
currency = "USD"
valid_from = 2026-01-01
rate = "7.10"            # 1 USD = 7.10 CNY from that day on

[[forecast.quotas]]
owner_id = "mgr-1"
quarter = "FY2026-Q3"
amount = "2500000"

[forecast.risk]
stale_days = 21
```
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cockpit.models import ForecastCategory, Opportunity, OrgTree, Stage

CENT = Decimal("0.01")
"""Converted amounts are rounded to the cent (half-even), so sums of converted amounts are exact."""
MONEY = Context(prec=28, rounding=ROUND_HALF_EVEN)
"""The arithmetic of conversions: the default precision, half-even rounding, whatever the thread's
context says. Its bound methods (`MONEY.quantize(x, CENT)`) also cost half of
`x.quantize(CENT, rounding=...)`, which matters once per deal in a 100,000-deal roll-up."""

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class FxError(ValueError):
    """An amount cannot be converted: no rate for that currency on that day."""

    title = "Missing exchange rate"


class FxRate(BaseModel):
    """One dated rate: from `valid_from` on, 1 unit of `currency` is worth `rate` reporting-currency units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: Currency
    valid_from: date
    """First day the rate applies; it applies until the next rate of the same currency."""
    rate: Decimal = Field(gt=0)


class Quota(BaseModel):
    """An owner's quota for one quarter (a manager's quota covers their whole team)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner_id: str = Field(min_length=1)
    quarter: str = Field(min_length=1)
    """Fiscal quarter label, e.g. FY2026-Q3."""
    amount: Decimal = Field(ge=0)
    """In the reporting currency."""


class RiskThresholds(BaseModel):
    """When a deal gets a risk or hygiene flag (see `cockpit.forecast.flags`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stale_days: int = Field(default=21, ge=1)
    """No logged activity for this many days (or none at all) makes a deal stale."""
    max_pushes: int = Field(default=2, ge=1)
    """A deal whose close date moved later this many times (or more) is flagged."""
    stuck_ratio: float = Field(default=3.0, gt=0)
    """Days in the current stage at or above this multiple of the stage's median is "stuck"."""
    min_stage_samples: int = Field(default=5, ge=1)
    """A stage's median time is trusted only when this many deals have left the stage."""
    amount_outlier_ratio: float = Field(default=3.0, gt=1)
    """Amount at or above this multiple of the owner's median deal is flagged."""
    min_owner_deals: int = Field(default=5, ge=1)
    """The owner's median deal needs at least this many deals to compare against."""
    backward_days: int = Field(default=30, ge=1)
    """A move to an earlier stage within this many days is flagged."""


class ForecastConfig(BaseModel):
    """Everything the forecast engine reads from config; defaults work without any config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reporting_currency: Currency = "CNY"
    fx_rates: tuple[FxRate, ...] = ()
    """Dated rates into the reporting currency. The rate used on a day is the latest one on or before it."""
    quotas: tuple[Quota, ...] = ()
    category_overrides: dict[str, ForecastCategory] = Field(default_factory=dict)
    """Stage id → default category, replacing the stage's own default (the rep's call still wins)."""
    risk: RiskThresholds = RiskThresholds()
    run_rate_quarters: int = Field(default=4, ge=1, le=12)
    """How many past quarters the run-rate of not-yet-created deals is learned from."""

    @model_validator(mode="after")
    def _unique_keys(self) -> ForecastConfig:
        seen: set[tuple[str, date]] = set()
        for fx in self.fx_rates:
            key = (fx.currency, fx.valid_from)
            if key in seen:
                raise ValueError(f"fx_rates: two rates for {fx.currency} from {fx.valid_from}")
            seen.add(key)
        quota_keys: set[tuple[str, str]] = set()
        for quota in self.quotas:
            key2 = (quota.owner_id, quota.quarter)
            if key2 in quota_keys:
                raise ValueError(f"quotas: two quotas for owner {quota.owner_id!r} in {quota.quarter}")
            quota_keys.add(key2)
        return self

    def fx(self, on: date) -> Fx:
        """A converter using the rates in effect on `on`."""
        return Fx(self.reporting_currency, self.fx_rates, on)

    def quota(self, owner_id: str, quarter: str) -> Decimal | None:
        """The owner's quota for the quarter label, or None if config has none."""
        quotas, index = self.quota_index
        if quotas is not self.quotas:  # a model_copy carried another config's index over
            del self.__dict__["quota_index"]
            quotas, index = self.quota_index
        return index.get((owner_id, quarter))

    @cached_property
    def quota_index(self) -> tuple[tuple[Quota, ...], dict[tuple[str, str], Decimal]]:
        """(the quotas it indexes, (owner id, quarter) → amount). A roll-up asks for every owner of
        the org: a scan per ask cost 0.5 s with 1,000 owners' quotas for eight quarters."""
        return self.quotas, {(q.owner_id, q.quarter): q.amount for q in self.quotas}

    def scope_quota(self, tree: OrgTree, owner_id: str, quarter: str) -> Decimal | None:
        """The quota of an owner's whole team: their own quota if set, else the sum of their direct
        reports' team quotas (recursively). None when nobody in the team has one.

        A manager's quota normally covers the team; the team's quotas add up only where it is not set,
        so nobody is counted twice.
        """
        own = self.quota(owner_id, quarter)
        if own is not None:
            return own
        found = [
            q
            for q in (self.scope_quota(tree, c, quarter) for c in tree.direct_reports(owner_id))
            if q is not None
        ]
        return sum(found, Decimal(0)) if found else None

    def category(self, deal: Opportunity, stage: Stage) -> ForecastCategory:
        """The forecast category of a deal: won → closed; else the rep's call, else the stage default.

        An open deal the rep marked "closed" counts as commit (it is not booked yet).
        """
        if deal.is_closed:
            return ForecastCategory.CLOSED if deal.is_won else ForecastCategory.OMITTED
        call = deal.forecast_category or self.category_overrides.get(stage.id, stage.category)
        return ForecastCategory.COMMIT if call is ForecastCategory.CLOSED else call


class Fx:
    """Converts amounts into the reporting currency at the rates in effect on one day."""

    def __init__(self, reporting: str, rates: Iterable[FxRate], on: date) -> None:
        self.reporting = reporting
        self.on = on
        by_currency: dict[str, list[FxRate]] = {}
        for fx in rates:
            by_currency.setdefault(fx.currency, []).append(fx)
        self._rates: dict[str, Decimal] = {reporting: Decimal(1)}
        self._known = set(by_currency) | {reporting}
        for currency, items in by_currency.items():
            if currency == reporting:
                continue
            items.sort(key=lambda r: r.valid_from)
            index = bisect.bisect_right([r.valid_from for r in items], on) - 1
            if index >= 0:
                self._rates[currency] = items[index].rate

    @property
    def rates(self) -> dict[str, Decimal]:
        """Currency → rate for every currency that has one on this day (the reporting currency is 1)."""
        return dict(self._rates)

    def rate(self, currency: str) -> Decimal:
        """Reporting-currency units per unit of `currency` on this converter's day."""
        try:
            return self._rates[currency]
        except KeyError:
            if currency in self._known:
                raise FxError(
                    f"no {currency} → {self.reporting} rate on or before {self.on}; "
                    f"add an earlier [[forecast.fx_rates]] entry for {currency}"
                ) from None
            raise FxError(
                f"no {currency} → {self.reporting} rate in config; add a [[forecast.fx_rates]] entry "
                f'(currency = "{currency}", valid_from = ..., rate = ...)'
            ) from None

    def __call__(self, amount: Decimal, currency: str) -> Decimal:
        """`amount` of `currency` in the reporting currency, rounded half-even to the cent."""
        rate = self._rates.get(currency)
        if rate is None:
            rate = self.rate(currency)  # raises the explanatory FxError
        return MONEY.quantize(MONEY.multiply(amount, rate), CENT)
