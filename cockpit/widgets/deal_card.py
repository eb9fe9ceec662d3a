"""The deal card: one deal's facts, the model's view and the manager's call, as rich text."""

from __future__ import annotations

from datetime import date

from rich.text import Text
from textual.widgets import Static

from cockpit.format import compact, money, percent
from cockpit.review import ReviewDeal, ReviewWalk


def card_text(deal: ReviewDeal | None, walk: ReviewWalk, today: date) -> Text:
    """Everything the manager needs to make the call, most important first."""
    if deal is None:
        return Text("No deal to review here.\n\nPress e to change the filter, < > to change stage.", style="dim")
    out = Text()
    out.append(f"{deal.account or deal.name}\n", style="bold")
    out.append(f"{deal.name}\n", style="dim")
    out.append(f"{deal.owner_name} · {deal.stage_name}\n")
    line = walk.line(deal.id)
    amount = money(deal.amount, deal.currency)
    if line and line.amount_override is not None:
        out.append(f"{amount} → {money(line.amount_override, deal.currency)} (override)\n", style="bold")
    else:
        out.append(f"{amount}\n", style="bold")
    close = deal.close_date.isoformat() if deal.close_date else "no close date"
    moved = f", pushed {deal.close_date_pushes}×" if deal.close_date_pushes else ""
    out.append(f"Close {close}{moved}")
    if line and line.close_date_override is not None:
        out.append(f" → {line.close_date_override} (override)", style="bold")
    out.append("\n")
    median = f" (median {deal.stage_median_days:.0f})" if deal.stage_median_days is not None else ""
    out.append(f"{deal.days_in_stage} days in stage{median}\n")

    out.append("\nWin chance\n", style="bold underline")
    out.append(f"CRM stage   {percent(deal.crm_probability)}\n")
    if deal.score is not None:
        out.append(f"Model       {percent(deal.score.p_won)} eventually · {percent(deal.score.p_in_quarter)} this quarter\n")
        for reason in deal.score.reasons[:5]:
            style = "green" if reason.points >= 0 else "red"
            out.append(f"  {'+' if reason.points >= 0 else '−'}{abs(reason.points):.0f} ", style=style)
            out.append(f"{reason.text}\n")
    else:
        out.append("Model       not scored yet (T trains it)\n", style="dim")

    call = walk.call_of(deal)
    model = deal.model_category
    out.append("\nCall ", style="bold")
    out.append(f"{call.label}", style="bold reverse")
    out.append(f"  rep: {deal.rep_category.label}")
    if model is not None:
        out.append(f" · model: {model.label}")
    if walk.is_reviewed(deal.id):
        out.append("  ✓ reviewed", style="bold")
    out.append("\n")
    if line and line.note:
        out.append(f"Note: {line.note}\n", style="italic")

    if deal.flags:
        out.append("\nFlags\n", style="bold underline")
        for flag in deal.flags:
            out.append(f"⚑ {flag}\n", style="yellow")
    if deal.changed:
        out.append("\nSince last week\n", style="bold underline")
        for change in deal.changed:
            out.append(f"• {change}\n")
    out.append("\nNext step\n", style="bold underline")
    if deal.next_step:
        due = ""
        if deal.next_step_date:
            late = (today - deal.next_step_date).days
            due = f" (due {deal.next_step_date}{', ' + str(late) + ' days late' if late > 0 else ''})"
        out.append(f"{deal.next_step}{due}\n")
    else:
        out.append("none\n", style="yellow")
    if deal.last_activity:
        out.append(f"Last activity {deal.last_activity} ({(today - deal.last_activity).days} days ago)\n", style="dim")
    if deal.timeline:
        out.append("\nStages\n", style="bold underline")
        for day, stage in deal.timeline[-6:]:
            out.append(f"{day}  {stage}\n", style="dim")
    out.append(f"\nValue {compact(deal.value)} {walk.currency}", style="dim")
    return out


class DealCard(Static):
    """Shows `card_text` for the walk's current deal."""

    DEFAULT_CSS = """
    DealCard { padding: 0 1; height: auto; }
    """
