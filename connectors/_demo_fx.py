"""The demo CRM's money: its reporting currency and exchange rates.

Apart from the generator (`connectors.demo`) because the Forecast home reads them at every start,
and importing the generator would cost that first paint ~35 ms.
"""

from __future__ import annotations

from decimal import Decimal

DEMO_REPORTING_CURRENCY = "USD"
"""Currency of `demo_quotas` and the base of `demo_fx_rates`."""

CNY_TO_USD = Decimal("0.14")


def demo_fx_rates() -> dict[str, Decimal]:
    """Value of one unit of each demo currency in USD (the demo's reporting currency)."""
    return {"USD": Decimal("1"), "CNY": CNY_TO_USD}


def demo_fx_table() -> list[dict[str, str]]:
    """The `[forecast].fx_rates` rows the demo runs on: each other currency's rate to the reporting
    currency, valid all along."""
    return [
        {"currency": currency, "valid_from": "2000-01-01", "rate": str(rate)}
        for currency, rate in sorted(demo_fx_rates().items())
        if currency != DEMO_REPORTING_CURRENCY
    ]
