"""The open pipeline of a quarter: totals in a header, one row per deal, sort and filter by key."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.reactive import var
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from cockpit.format import compact, money
from cockpit.models import ForecastCategory
from cockpit.screens.base import CockpitScreen
from cockpit.service import CockpitService, DealFilter, DealRow
from cockpit.widgets.deal_table import Column, DealTable


COLUMNS: tuple[Column, ...] = (
    Column("owner", "Owner", 13),
    Column("account", "Account", 18, flex=True),
    Column("stage", "Stage", 11),
    Column("amount", "Amount", 13, numeric=True),
    Column("close", "Close", 6),
    Column("category", "Category", 9, priority=2),
    Column("days", "Days", 4, numeric=True, priority=1),
)


def cell(row: DealRow, key: str) -> str:
    deal = row.deal
    match key:
        case "owner":
            return row.owner_name
        case "account":
            return deal.account or deal.name
        case "stage":
            return row.stage_name
        case "amount":
            return money(deal.amount, deal.currency)
        case "close":
            return deal.close_date.strftime("%b %d") if deal.close_date else "–"
        case "category":
            return row.category.label
        case "days":
            return str(row.days_in_stage)
    raise KeyError(key)


def sort_key(row: DealRow, key: str) -> tuple:
    deal = row.deal
    match key:
        case "amount":
            return (row.amount,)
        case "days":
            return (row.days_in_stage,)
        case "close":
            return (deal.close_date.isoformat() if deal.close_date else "9999",)
        case "category":
            return (list(type(row.category)).index(row.category),)
    return (cell(row, key).casefold(),)


class PipelineScreen(CockpitScreen):
    """The quarter's open deals."""

    AUTO_FOCUS = "#deal-table"

    BINDINGS = [
        Binding("left_square_bracket", "sort(False)", "Sort ↑", id="pipeline-sort-asc", tooltip="Sort ascending by the current column"),
        Binding("right_square_bracket", "sort(True)", "Sort ↓", id="pipeline-sort-desc", tooltip="Sort descending by the current column"),
        Binding("slash", "filter", "Filter", id="pipeline-filter", tooltip="Filter by owner, stage, account or category"),
        Binding("escape", "clear_filter", "Clear", show=False, id="pipeline-clear-filter"),
        Binding("r", "refresh", "Refresh", id="pipeline-refresh", tooltip="Reload the deals from the store"),
        Binding("enter", "open", "Open", show=False, id="pipeline-open", tooltip="The deal's whole story"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `[` / `]` | Sort ascending / descending by the current column. |
    | `/` | Filter rows by text (owner, stage, account, category). |
    | `escape` | Clear the filter. |
    | `r` | Reload from the store. |
    """

    rows: var[list[DealRow]] = var(list, init=False)
    """Every deal of the quarter as loaded."""
    filter_text: var[str] = var("", init=False)
    """Case-insensitive text a row must contain to be shown."""

    class DealsLoaded(Message):
        """The deals of the quarter were read from the store."""

        def __init__(self, rows: list[DealRow], title: str) -> None:
            super().__init__()
            self.rows = rows
            self.title = title

    def __init__(self, service: CockpitService) -> None:
        super().__init__()
        self.service = service
        self.sort_column = "amount"
        self.sort_reverse = True

    def compose(self) -> ComposeResult:
        yield Static("Loading deals…", id="pipeline-header")
        yield Input(placeholder="filter: owner, stage, account, category — enter to apply, escape to clear", id="filter")
        yield DealTable(COLUMNS, cell, lambda row: row.deal.id, id="deal-table", classes="-loads")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DealTable)
        table.loading = True
        table.focus()
        self.load_deals()

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_deals(self) -> None:
        """Read the quarter's deals (once the first-run sync, if any, is done)."""
        self.app.store_ready.wait()  # type: ignore[attr-defined]
        if get_current_worker().is_cancelled:
            return
        quarter = self.service.current_quarter()
        rows = self.service.deals(DealFilter(quarter=quarter))
        self.post_message(self.DealsLoaded(rows, quarter.label))

    @on(DealsLoaded)
    def show_deals(self, event: DealsLoaded) -> None:
        self.quarter_label = event.title
        self.rows = event.rows
        self.query_one(DealTable).loading = False

    def watch_rows(self) -> None:
        self._render_rows()

    def watch_filter_text(self) -> None:
        self._render_rows()

    def visible_rows(self) -> list[DealRow]:
        text = self.filter_text.casefold()
        rows = self.rows
        if text:
            rows = [
                r for r in rows
                if text in " ".join((r.owner_name, r.stage_name, r.deal.account, r.deal.name, r.category.label)).casefold()
            ]
        return sorted(rows, key=lambda r: (sort_key(r, self.sort_column), r.deal.id), reverse=self.sort_reverse)

    def _render_rows(self) -> None:
        rows = self.visible_rows()
        self.query_one(DealTable).set_rows(rows)
        self._render_header(rows)

    def _render_header(self, rows: list[DealRow]) -> None:
        by_category: dict[ForecastCategory, Decimal] = defaultdict(Decimal)
        for row in rows:
            by_category[row.category] += row.amount
        currency = self.service.forecast_config.reporting_currency
        total = sum(by_category.values(), Decimal(0))
        cats = " · ".join(f"{c.label} {compact(by_category[c])}" for c in ForecastCategory if c in by_category)
        shown = f"{len(rows)} of {len(self.rows)}" if self.filter_text else f"{len(rows)}"
        flt = f"  filter: “{self.filter_text}”" if self.filter_text else ""
        self.query_one("#pipeline-header", Static).update(
            f"[b]{getattr(self, 'quarter_label', '')}[/b] open pipeline · {shown} deals · "
            f"{currency} {compact(total)}{flt}\n{cats}"
        )

    @on(DealTable.RowChosen, "#deal-table")
    def open_deal(self, event: DealTable.RowChosen) -> None:
        from cockpit.screens.deal import DealScreen

        self.app.push_screen(DealScreen(self.service, event.key))

    def action_sort(self, descending: bool) -> None:
        self.sort_column = self.query_one(DealTable).current_column.key
        self.sort_reverse = descending
        self._render_rows()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.filter_text
        box.focus()

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.display = False
        self.query_one(DealTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = False
        self.filter_text = ""
        self.query_one(DealTable).focus()

    def action_open(self) -> None:
        self.query_one(DealTable).action_choose()

    def action_refresh(self) -> None:
        self.query_one(DealTable).loading = True
        self.load_deals()
