"""Plain-language descriptions of a deal's feature values, one per reason group.

The points come from the model (see `ScoringModel.score`); this module only says what the deal's
value *is*, in units a sales leader reads: "41 days in Proposal, 3.4× the median", "close date pushed
3 times (45 days in all)", "Direct team wins 41% of closed deals", "call +1.2 categories vs Li Na's
habit (+0.4 vs stage defaults)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from cockpit.models import ForecastCategory

Value = float | str | None


def _n(x: Value) -> float:
    return math.nan if x is None or isinstance(x, str) else float(x)


def _plural(count: float, word: str) -> str:
    return f"{count:.0f} {word}" + ("" if round(count) == 1 else "s")


def _stage_time(v: Mapping[str, Value], stage: str) -> str:
    days, ratio = _n(v.get("days_in_stage")), _n(v.get("days_in_stage_ratio"))
    if math.isnan(days):
        return (
            f"{stage}: time in stage unknown"
            if math.isnan(ratio)
            else f"{ratio:.1f}× the median time in {stage}"
        )
    text = f"{_plural(days, 'day')} in {stage}"
    return f"{text}, {ratio:.1f}× the median" if not math.isnan(ratio) else text


def _age(v: Mapping[str, Value]) -> str:
    age = _n(v.get("deal_age"))
    return "deal age unknown" if math.isnan(age) else f"deal open {_plural(age, 'day')}"


def _moves(v: Mapping[str, Value]) -> str:
    changes, back = _n(v.get("stage_changes")), _n(v.get("backward_moves"))
    if not math.isnan(back) and back > 0:
        return f"moved back {_plural(back, 'time')}"
    if math.isnan(changes):
        return "never moved back a stage"
    return "never changed stage" if changes == 0 else f"{_plural(changes, 'stage change')}, none backward"


def _pushes(v: Mapping[str, Value]) -> str:
    pushes, days = _n(v.get("close_pushes")), _n(v.get("close_push_days"))
    if math.isnan(pushes):
        return "close date pushed by " + _plural(days, "day")
    if pushes == 0:
        return "close date never pushed"
    text = f"close date pushed {_plural(pushes, 'time')}"
    return f"{text} ({_plural(days, 'day')} in all)" if not math.isnan(days) else text


def _close(v: Mapping[str, Value]) -> str:
    to_close, in_quarter = _n(v.get("days_to_close")), _n(v.get("close_in_quarter"))
    if math.isnan(to_close):
        past = _n(v.get("close_date_past"))
        if not math.isnan(past):
            return "close date already passed" if past else "close date still ahead"
        if not math.isnan(in_quarter):
            return "close date this quarter" if in_quarter else "close date after this quarter"
        return "no close date"
    if to_close < 0:
        return f"close date {_plural(-to_close, 'day')} overdue"
    when = "today" if to_close == 0 else f"in {_plural(to_close, 'day')}"
    if math.isnan(in_quarter):
        return f"close date {when}"
    return f"close date {when}, " + ("this quarter" if in_quarter else "after this quarter")


def _amount(v: Mapping[str, Value]) -> str:
    amount, currency = _n(v.get("amount")), v.get("currency")
    if math.isnan(amount):
        return f"amount in {currency}" if currency else "no amount"
    return f"amount {amount:,.0f}" + (f" {currency}" if currency else "")


def _amount_changes(v: Mapping[str, Value]) -> str:
    changes, pct = _n(v.get("amount_changes")), _n(v.get("amount_change_pct"))
    if not math.isnan(changes) and changes == 0:
        return "amount never changed"
    if math.isnan(pct):
        return f"amount changed {_plural(changes, 'time')}"
    text = f"amount {pct:+.0%} since first entered"
    return f"{text} ({_plural(changes, 'change')})" if not math.isnan(changes) else text


def _activity(v: Mapping[str, Value], window: int) -> str:
    since, recent = _n(v.get("days_since_activity")), _n(v.get("activities_30d"))
    parts = []
    if not math.isnan(since):
        parts.append(
            "activity or CRM update today"
            if since == 0
            else f"last activity or CRM update {_plural(since, 'day')} ago"
        )
    if not math.isnan(recent):
        count = "no activity" if recent == 0 else "1 activity" if recent == 1 else f"{recent:.0f} activities"
        parts.append(f"{count} in {window} days")
    return ", ".join(parts) or "no activity logged"


def _category(v: Mapping[str, Value]) -> str:
    cat = v.get("forecast_category")
    if not isinstance(cat, str):
        return "no forecast category"
    try:
        return f"rep's call: {ForecastCategory(cat).label}"
    except ValueError:
        return f"rep's call: {cat}"


def _call_habit(v: Mapping[str, Value], owner: str) -> str:
    """The deal's call against its owner's habit, in categories (omitted < pipeline < best case <
    commit; +1: one category more confident than the stage's default)."""
    habit, delta = _n(v.get("owner_call_habit")), _n(v.get("call_vs_habit"))
    if math.isnan(habit):
        return "rep's call against the stage's default"
    lean = "at stage defaults" if abs(habit) < 0.05 else f"{habit:+.1f} vs stage defaults"
    usual = f"{owner}'s habit ({lean})"
    if math.isnan(delta):
        return usual[0].upper() + usual[1:]
    if abs(delta) < 0.05:
        return f"call in line with {usual}"
    return f"call {delta:+.1f} categories vs {usual}"


def _category_value(label: str, value: Value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"no {label}"
    if isinstance(value, float):
        shown = f"{value:,.0f}" if abs(value) >= 1000 or value == int(value) else f"{value:,.3g}"
        return f"{label} {shown}"
    return f"{label}: {value}"


def describe(
    group: str,
    values: Mapping[str, Value],
    *,
    stage: str = "this stage",
    owner: str = "the owner",
    team: str = "the team",
    activity_window: int = 30,
) -> str:
    """What the deal's values of reason `group` are, in plain units (without the points)."""
    if group == "stage_time":
        return _stage_time(values, stage)
    if group == "age":
        return _age(values)
    if group == "stage_moves":
        return _moves(values)
    if group == "pushes":
        return _pushes(values)
    if group == "close_date":
        return _close(values)
    if group == "amount":
        return _amount(values)
    if group == "amount_changes":
        return _amount_changes(values)
    if group == "activity":
        return _activity(values, activity_window)
    if group == "owner":
        rate = _n(values.get("owner_win_rate"))
        closed = values.get("owner_closed_deals")
        if closed is None or math.isnan(closed):  # switched off in config
            return f"{owner} wins {rate:.0%} of closed deals"
        if closed < 1:
            return f"{owner} has no closed deals yet"
        return f"{owner}'s win rate {rate:.0%} (from {closed:,.0f} closed deal{'' if closed == 1 else 's'})"
    if group == "team":
        rate = _n(values.get("team_win_rate"))
        return f"{team} wins {rate:.0%} of closed deals"
    if group == "forecast_category":
        return _category(values)
    if group == "call_habit":
        return _call_habit(values, owner)
    if group == "lead_source":
        return _category_value("lead source", values.get("lead_source"))
    if group == "type":
        return _category_value("deal type", values.get("type"))
    if group.startswith("attr:"):
        return _category_value(group[5:], values.get(group))
    return f"{group}: " + ", ".join(f"{k}={v}" for k, v in values.items())
