"""Changes: what moved the quarter's open pipeline since the last submission (or a chosen date).

A waterfall drawn as horizontal bars that balances to the cent; each bucket opens to its deals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Static

from cockpit.format import compact
from cockpit.screens.base import CockpitScreen
from cockpit.screens.modals import PromptModal
from cockpit.service import ChangesView, CockpitService
from cockpit.widgets.bars import Bar, BarChart
from cockpit.widgets.deal_table import Column, DealTable


@dataclass(frozen=True)
class ChangeRow:
    """A line of the bucket list: a bucket, or (indented) one of its deals."""

    key: str
    label: str
    owner: str
    amount: Decimal
    detail: str
    bucket: str | None = None
    """Set on bucket rows (they open and close)."""


COLUMNS = (
    Column("label", "What", 22, flex=True),
    Column("owner", "Owner", 12, priority=1),
    Column("amount", "Amount", 9, numeric=True),
    Column("detail", "Detail", 22, priority=2),
)


def change_cell(row: ChangeRow, key: str) -> str:
    match key:
        case "label":
            return row.label
        case "owner":
            return row.owner
        case "amount":
            return ("+" if row.amount > 0 else "") + compact(row.amount)
        case "detail":
            return row.detail
    raise KeyError(key)


def waterfall_bars(view: ChangesView) -> list[Bar]:
    """Start total, each non-empty bucket as a step from where the last one ended, end total."""
    w = view.waterfall
    bars = [Bar(f"Pipeline {w.start:%b %d}", float(w.start_total), compact(w.start_total))]
    level = float(w.start_total)
    for total in w.buckets.values():
        if not total.movements:
            continue
        amount = float(total.amount)
        bars.append(Bar(f"{total.bucket.label} ({len(total.movements)})", amount,
                        ("+" if amount > 0 else "") + compact(total.amount), start=level,
                        style="green" if amount > 0 else "red"))
        level += amount
    bars.append(Bar(f"Pipeline {w.end:%b %d}", float(w.end_total), compact(w.end_total)))
    return bars


def change_rows(view: ChangesView, open_buckets: set[str]) -> list[ChangeRow]:
    """Bucket rows, each followed by its deals when open; then stage and category moves (no money)."""
    w = view.waterfall
    names = view.owner_names
    rows = []
    for total in w.buckets.values():
        if not total.movements:
            continue
        mark = "▾" if total.bucket.value in open_buckets else "▸"
        rows.append(ChangeRow(f"b:{total.bucket.value}", f"{mark} {total.bucket.label} ({len(total.movements)})",
                              "", total.amount, "", bucket=total.bucket.value))
        if total.bucket.value in open_buckets:
            for m in sorted(total.movements, key=lambda m: (-abs(m.amount), m.opportunity_id)):
                rows.append(ChangeRow(f"{total.bucket.value}:{m.opportunity_id}", f"   {m.name}",
                                      names.get(m.owner_id, m.owner_id), m.amount, m.detail))
    moves = [("stage_forward", "Stage forward", w.stage_forward), ("stage_backward", "Stage backward", w.stage_backward)]
    for key, label, items in moves:
        if not items:
            continue
        mark = "▾" if key in open_buckets else "▸"
        rows.append(ChangeRow(f"b:{key}", f"{mark} {label} ({len(items)})", "", Decimal(0), "moves no money",
                              bucket=key))
        if key in open_buckets:
            for move in items:
                rows.append(ChangeRow(f"{key}:{move.opportunity_id}", f"   {move.name}",
                                      names.get(move.owner_id, move.owner_id), move.value,
                                      f"{move.before} → {move.after}"))
    if w.category_moves:
        key = "category"
        mark = "▾" if key in open_buckets else "▸"
        rows.append(ChangeRow(f"b:{key}", f"{mark} Category moves ({len(w.category_moves)})", "", Decimal(0),
                              "moves no money", bucket=key))
        if key in open_buckets:
            for move in w.category_moves:
                rows.append(ChangeRow(f"{key}:{move.opportunity_id}", f"   {move.name}",
                                      names.get(move.owner_id, move.owner_id), move.value,
                                      f"{move.before.label} → {move.after.label}"))
    return rows


class ChangesScreen(CockpitScreen):
    """The waterfall since the last submission or a chosen date."""

    AUTO_FOCUS = "#changes-table"
    BINDINGS = [
        Binding("space,enter", "toggle", "Open/close", id="changes-toggle", tooltip="Show or hide the bucket's deals"),
        Binding("s", "since", "Since…", id="changes-since", tooltip="Compare with another date"),
        Binding("r", "refresh", "Refresh", id="changes-refresh", tooltip="Reload from the store"),
    ]

    class ViewLoaded(Message):
        def __init__(self, view: ChangesView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, service: CockpitService) -> None:
        super().__init__()
        self.service = service
        self.since: date | None = None
        self.view: ChangesView | None = None
        self.open_buckets: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static("Loading what changed…", id="changes-title")
        yield BarChart(zoom=True, id="changes-bars")
        yield DealTable(COLUMNS, change_cell, lambda r: r.key, id="changes-table", classes="-loads")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DealTable).loading = True
        self.load_view()

    @work(thread=True, exclusive=True, group="changes", exit_on_error=False)
    def load_view(self) -> None:
        self.app.store_ready.wait()  # type: ignore[attr-defined]
        self.post_message(self.ViewLoaded(self.service.changes_view(since=self.since)))

    @on(ViewLoaded)
    def show_view(self, event: ViewLoaded) -> None:
        self.view = view = event.view
        w = view.waterfall
        balance = "balances" if w.balances else "DOES NOT BALANCE"
        self.query_one("#changes-title", Static).update(
            f"[b]{w.quarter.label}[/b] open pipeline · {view.scope_name} · {w.start} → {w.end} · "
            f"{compact(w.start_total)} → {compact(w.end_total)} {w.currency} ({balance}; bars start above zero)"
        )
        self.query_one(BarChart).set_bars(waterfall_bars(view))
        table = self.query_one(DealTable)
        table.loading = False
        table.set_rows(change_rows(view, self.open_buckets))

    def action_toggle(self) -> None:
        table = self.query_one(DealTable)
        row = table.current_row
        if self.view is None or row is None:
            return
        bucket = row.bucket or row.key.split(":", 1)[0]
        self.open_buckets ^= {bucket}
        table.set_rows(change_rows(self.view, self.open_buckets), keep_cursor=False)
        table.move_to(f"b:{bucket}")

    @on(DealTable.RowChosen, "#changes-table")
    def choose(self, event: DealTable.RowChosen) -> None:
        if event.key.startswith("b:"):
            self.action_toggle()
            return
        from cockpit.screens.deal import DealScreen

        self.app.push_screen(DealScreen(self.service, event.key.split(":", 1)[1]))

    def action_since(self) -> None:
        def parse(text: str) -> date:
            try:
                day = date.fromisoformat(text.strip())
            except ValueError:
                raise ValueError(f"{text!r} is not a date; type YYYY-MM-DD") from None
            if day >= self.service.today():
                raise ValueError(f"{day} is not before today ({self.service.today()})")
            return day

        def done(day: date | None) -> None:
            if day is not None:
                self.since = day
                self.load_view()

        current = self.view.waterfall.start.isoformat() if self.view else ""
        self.app.push_screen(PromptModal("Show changes since", value=current, parse=parse,
                                         help="default: the last submission, else a week ago"), done)

    def action_refresh(self) -> None:
        self.load_view()
