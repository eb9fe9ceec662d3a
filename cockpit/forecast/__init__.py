"""The forecast engine: pure logic over domain models, usable headless (no Textual, no SQL).

Modules (import what you need; this package imports nothing eagerly):

- `config`: ForecastConfig, the `[forecast]` table (reporting currency, dated FX rates, quotas,
  stage → category overrides, risk thresholds).
- `deals`: which deals count for a quarter, their category and value (`forecast_deals`).
- `rollup`: the quarter for a scope: totals per category, per pipeline, per owner; quota,
  attainment, coverage, weighted pipeline and the model's range (`rollup`).
- `distribution`: expected bookings and P10/P50/P90 (`forecast_range`).
- `runrate`: bookings still to come from deals not created yet (`learn_run_rate`).
- `changes`: what changed between two dates, a waterfall that balances to the cent
  (`changes`, `changes_since`).
- `flags`: risk and hygiene flags per open deal (`flag_deals`, `hygiene_list`, `stage_medians`).
- `submissions`: building a submission from a roll-up, its data fingerprint, and rolling the
  latest submissions up the manager tree (`make_submission`, `rollup_submissions`).
- `baseline`: in-quarter probabilities learned from history (`InQuarterRates`), and the CRM and
  stage-rate baselines.
- `backtest`: past quarters week by week against what closed (`backtest`).
"""
