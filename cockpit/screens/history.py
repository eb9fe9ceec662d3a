"""History: past submissions of this scope with their accuracy once the quarter closed, and the
backtest curve (forecast error by week of quarter) as a terminal chart."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Static

from cockpit.format import compact
from cockpit.screens.base import CockpitScreen
from cockpit.service import CockpitService, HistoryView, SubmissionAccuracy
from cockpit.widgets.bars import Bar, BarChart
from cockpit.widgets.deal_table import Column, DealTable

COLUMNS = (
    Column("when", "Submitted", 10),
    Column("quarter", "Quarter", 10),
    Column("author", "By", 8, priority=2),
    Column("number", "Number", 8, numeric=True),
    Column("calls", "Calls", 8, numeric=True, priority=1),
    Column("p50", "Model", 8, numeric=True, priority=3),
    Column("actual", "Actual", 8, numeric=True),
    Column("error", "Error", 7, numeric=True),
)


def history_cell(row: SubmissionAccuracy, key: str) -> str:
    sub = row.submission
    match key:
        case "when":
            return str(sub.created_at.date())
        case "quarter":
            return sub.quarter
        case "author":
            return sub.author
        case "number":
            return compact(sub.manager_number)
        case "calls":
            return compact(sub.call_sum)
        case "p50":
            return compact(sub.model.p50) if sub.model else "–"
        case "actual":
            return compact(row.actual) if row.actual is not None else "open"
        case "error":
            return f"{row.error:+.0f}%" if row.error is not None else "–"
    raise KeyError(key)


def backtest_bars(report: dict) -> list[Bar]:  # type: ignore[type-arg]
    """Mean absolute error of the model's P50 by week of quarter, with the stage-weighted one for contrast
    and the miss the model's own ranges expect from chance ("luck"; reports stored before it lack it)."""
    bars = []
    for week in report.get("weeks", []):
        model = week.get("model_error")
        stage = week.get("stage_weighted_error")
        luck = week.get("expected_error")
        if model is None:
            continue
        context = [f"stage-weighted {stage:.0f}%"] if stage is not None else []
        context += [f"luck {luck:.0f}%"] if luck is not None else []
        text = f"{model:.0f}%" + (f" ({', '.join(context)})" if context else "")
        bars.append(Bar(f"week {week['week']:>2}", float(model), text))
    return bars


class HistoryScreen(CockpitScreen):
    """Past submissions and how right they were."""

    AUTO_FOCUS = "#history-table"
    BINDINGS = [Binding("r", "refresh", "Refresh", id="history-refresh", tooltip="Reload from the store")]

    class ViewLoaded(Message):
        def __init__(self, view: HistoryView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, service: CockpitService) -> None:
        super().__init__()
        self.service = service
        self.view: HistoryView | None = None

    def compose(self) -> ComposeResult:
        yield Static("Loading submissions…", id="history-title")
        yield DealTable(COLUMNS, history_cell, lambda r: str(r.submission.id), id="history-table", classes="-loads")
        yield Static("", id="history-curve-title", classes="panel-title")
        yield BarChart(id="history-curve")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DealTable).loading = True
        self.load_view()

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def load_view(self) -> None:
        self.app.store_ready.wait()  # type: ignore[attr-defined]
        self.post_message(self.ViewLoaded(self.service.history_view()))

    @on(ViewLoaded)
    def show_view(self, event: ViewLoaded) -> None:
        self.view = view = event.view
        table = self.query_one(DealTable)
        table.loading = False
        table.set_rows(view.rows)
        judged = [r.error for r in view.rows if r.error is not None]
        summary = (f" · mean error {sum(abs(e) for e in judged) / len(judged):.0f}% over {len(judged)} closed"
                   if judged else "")
        self.query_one("#history-title", Static).update(
            f"[b]Submissions[/b] · {view.scope_name} · {len(view.rows)} in all{summary}"
            if view.rows else f"[b]Submissions[/b] · {view.scope_name} · none yet (commit from the review: 2, then C)"
        )
        title = self.query_one("#history-curve-title", Static)
        if view.backtest is None:
            title.update("Backtest: none yet — run `cockpit backtest` to see the forecast error by week of quarter")
            self.query_one(BarChart).set_bars([])
            return
        report = view.backtest["report"]
        inside = report.get("inside_range")
        title.update(f"Backtest of {view.backtest['created_at'][:10]}: the model's P50 error by week of quarter"
                     + (f" · actual inside P10–P90 in {inside * 100:.0f}% of quarter-weeks" if inside is not None else ""))
        self.query_one(BarChart).set_bars(backtest_bars(report))

    def action_refresh(self) -> None:
        self.load_view()
