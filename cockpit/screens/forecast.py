"""Forecast (home): the quarter at a glance for a scope — totals, the model's range, quota, the team,
the funnel's volume and velocity, and pipeline by lead source."""

from __future__ import annotations

import threading
import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Static

from cockpit.format import compact, percent
from cockpit.messages import FirstFrame
from cockpit.models import ForecastCategory, Quarter
from cockpit.screens.base import CockpitScreen
from cockpit.screens.painted import (
    PaintCache,
    PaintRead,
    rows_from_json,
    rows_to_json,
    text_from_json,
    text_to_json,
)
from cockpit.service import CockpitService, ForecastView
from cockpit.widgets.deal_table import Column, DealTable, PaintedRow

PAINT_WAIT = 0.5
"""Seconds the start view's load waits for its painted texts to reach the screen, at most."""

OWNER_COLUMNS = (
    Column("name", "Owner", 14, flex=True),
    Column("closed", "Closed", 7, numeric=True),
    Column("commit", "Commit", 7, numeric=True),
    Column("best", "Best", 7, numeric=True, priority=2),
    Column("quota", "Quota", 7, numeric=True, priority=1),
    Column("att", "Att", 4, numeric=True),
    Column("cov", "Cov", 5, numeric=True, priority=3),
)

FUNNEL_COLUMNS = (
    Column("stage", "Stage", 13, flex=True),
    Column("deals", "Deals", 5, numeric=True),
    Column("value", "Value", 7, numeric=True),
    Column("days", "Days", 4, numeric=True),
    Column("then", "LastQ", 5, numeric=True, priority=1),
    Column("trend", "Trend", 7),
)


def owner_cell(row, key: str) -> str:  # noqa: ANN001 - rollup.OwnerRow
    t = row.totals
    match key:
        case "name":
            return f"{row.name} (own deals)" if row.own_deals_only else row.name
        case "closed":
            return compact(t.closed)
        case "commit":
            return compact(t.commit)
        case "best":
            return compact(t.best_case)
        case "quota":
            return compact(row.quota) if row.quota is not None else "–"
        case "att":
            return percent(float(row.attainment)) if row.attainment is not None else "–"
        case "cov":
            return f"{row.coverage:.1f}×" if row.coverage is not None else "–"
    raise KeyError(key)


def owner_key(row) -> str:  # noqa: ANN001 - rollup.OwnerRow
    return row.owner_id + ("*" if row.own_deals_only else "")


def funnel_key(row) -> str:  # noqa: ANN001 - views.FunnelRow
    return f"{row.pipeline}/{row.stage}"


def funnel_cell(row, key: str) -> str:  # noqa: ANN001 - views.FunnelRow
    match key:
        case "stage":
            return row.stage
        case "deals":
            return str(row.deals)
        case "value":
            return compact(row.value)
        case "days":
            return f"{row.median_days:.0f}" if row.median_days is not None else "–"
        case "then":
            return f"{row.last_quarter_median_days:.0f}" if row.last_quarter_median_days is not None else "–"
        case "trend":
            return row.trend
    raise KeyError(key)


def summary_text(view: ForecastView, week: str) -> Text:
    """The four lines at the top: totals, the model's range, quota, submissions."""
    r = view.rollup
    t = r.totals
    cur = r.currency
    out = Text()
    out.append(f"{r.quarter.label}", style="bold")
    out.append(f" · {view.scope_name} · as of {r.as_of} · {week} · {cur}\n")
    for n, category in enumerate(ForecastCategory):
        if n:
            out.append(" · ")
        out.append(f"{category.label} ", style="dim")
        out.append(compact(t.of(category)), style="bold" if category in (ForecastCategory.CLOSED, ForecastCategory.COMMIT) else "")
    out.append("\n")
    if r.range is not None:
        out.append("Model P50 ", style="dim")
        out.append(compact(r.range.p50), style="bold")
        out.append(f" (P10 {compact(r.range.p10)} – P90 {compact(r.range.p90)}) · expected {compact(r.range.expected)}"
                   f" incl. {compact(r.range.run_rate_expected)} not yet created")
    else:
        out.append("Model: not scored yet — press T to train it", style="dim")
    out.append(f" · stage-weighted {compact(t.stage_weighted_forecast)}\n")
    quota = compact(r.quota) if r.quota is not None else "none"
    att = percent(float(r.attainment)) if r.attainment is not None else "–"
    cov = f"{r.coverage:.1f}×" if r.coverage is not None else "–"
    out.append(f"Quota {quota} · attainment {att} · coverage {cov}")
    if view.last_submission is not None:
        sub = view.last_submission
        delta = view.submission_delta
        moved = f" ({'+' if delta >= 0 else '−'}{compact(abs(delta))} vs previous)" if delta is not None else ""
        out.append(f" · submitted {compact(sub.manager_number)} on {sub.created_at.date()}{moved}")
    else:
        out.append(" · no submission yet")
    return out


def sources_text(view: ForecastView) -> Text:
    out = Text("Pipeline by source: ", style="dim")
    parts = [f"{s.source} {s.share * 100:.0f}% ({compact(s.value)})" for s in view.sources]
    out.append(" · ".join(parts) if parts else "none")
    return out


def week_label(view: ForecastView) -> str:
    quarter, as_of = view.rollup.quarter, view.rollup.as_of
    if quarter.contains(as_of):
        return f"week {quarter.week_of(as_of)}/{quarter.weeks}"
    return "closed quarter" if as_of >= quarter.end else "future quarter"


def paint_of(view: ForecastView) -> dict[str, object]:
    """The texts the screen shows for `view`, to paint them at the next start (see `painted`)."""
    return {
        "summary": text_to_json(summary_text(view, week_label(view))),
        "sources": text_to_json(sources_text(view)),
        "owners": rows_to_json(view.rollup.rows, owner_key, lambda r: [owner_cell(r, c.key) for c in OWNER_COLUMNS]),
        "funnel": rows_to_json(view.funnel, funnel_key, lambda r: [funnel_cell(r, c.key) for c in FUNNEL_COLUMNS]),
    }


def start_paint_cache(service: CockpitService) -> PaintCache:
    """Where the start view (this quarter, the default scope) is kept as painted."""
    label = service.current_quarter().label
    return PaintCache(service.paint_path("forecast"), lambda: service.view_stamp("forecast", label))


def keep_start_view(service: CockpitService, *, at_most: float | None = None) -> None:
    """Keep the paint of the start view unless the one kept is still current: the next start of the
    app then shows it with its first frame. For after a sync, and after the app (whose reviews
    write to the store) has quit; there `at_most` skips a view that took longer than that many
    seconds last time, rather than keep the user from their prompt (a 100,000-deal store: ~3 s)."""
    cache = start_paint_cache(service)
    stamp = cache.stamp()
    if stamp is None or cache.load(stamp) is not None:
        return
    if at_most is not None:
        cost = cache.cost()
        if cost is None or cost > at_most:  # unknown, or too slow to wait for
            return
    load_forecast_view(service)


def load_forecast_view(
    service: CockpitService, quarter: Quarter | None = None, scope: str | None = None, *, keep: bool = True
) -> ForecastView:
    """The view of `quarter` and `scope`; with `keep` (it is the start view) its paint is kept too."""
    cache = start_paint_cache(service) if keep else None
    stamp = cache.stamp() if cache is not None else None
    started = time.perf_counter()
    view = service.forecast_view(quarter, scope)
    if cache is not None and stamp is not None and cache.stamp() == stamp:  # nothing written meanwhile
        cache.save(stamp, paint_of(view), time.perf_counter() - started)
    return view


def parse_paint(payload: dict[str, object]) -> ForecastScreen.Painted:
    """The message that shows a painted start view; ValueError if `payload` is not one."""
    return ForecastScreen.Painted(
        text_from_json(payload.get("summary")),
        text_from_json(payload.get("sources")),
        rows_from_json(payload.get("owners"), len(OWNER_COLUMNS)),
        rows_from_json(payload.get("funnel"), len(FUNNEL_COLUMNS)),
    )


class ForecastScreen(CockpitScreen):
    """The quarter at a glance."""

    AUTO_FOCUS = "#forecast-owners"
    BINDINGS = [
        Binding("left_square_bracket", "quarter(-1)", "◀ Quarter", id="forecast-previous-quarter",
                tooltip="The previous quarter"),
        Binding("right_square_bracket", "quarter(1)", "Quarter ▶", id="forecast-next-quarter",
                tooltip="The next quarter"),
        Binding("backspace,u", "scope_up", "Up a level", id="forecast-scope-up", tooltip="The manager's whole team"),
        Binding("r", "refresh", "Refresh", id="forecast-refresh", tooltip="Reload from the store"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `[` / `]` | Previous / next quarter. |
    | `enter` | Drill down into the owner's team. `backspace` goes up a level. |
    | `tab` | Between the team table and the funnel. |
    """

    class ViewLoaded(Message):
        def __init__(self, view: ForecastView) -> None:
            super().__init__()
            self.view = view

    class Painted(Message):
        """The start view as painted last time, while the view itself loads."""

        def __init__(self, summary: Text, sources: Text, owners: list[PaintedRow], funnel: list[PaintedRow]) -> None:
            super().__init__()
            self.summary, self.sources, self.owners, self.funnel = summary, sources, owners, funnel

    def __init__(self, service: CockpitService) -> None:
        super().__init__()
        self.service = service
        self.quarter: Quarter = service.current_quarter()
        self.scope: str | None = None
        self.view: ForecastView | None = None
        self._painted = threading.Event()
        """Set once the painted start view is on screen (`_painted_shown`: once it is on its way)."""
        self._painted_shown = False
        self._home: tuple[Quarter, str | None] = (self.quarter, None)
        """The start view's quarter and scope (the default scope's id once known): its paint is kept."""
        self._start: PaintRead[ForecastScreen.Painted] | None = PaintRead(
            lambda: start_paint_cache(service), parse_paint
        )
        """The start view as painted last time, read while the app starts (None once loaded)."""

    def compose(self) -> ComposeResult:
        yield Static("Loading the forecast…", id="forecast-summary")
        with Horizontal(id="forecast-tables"):
            with Vertical(id="forecast-team"):
                yield Static("Team", classes="panel-title")
                yield DealTable(OWNER_COLUMNS, owner_cell, owner_key,
                                id="forecast-owners", classes="-loads")
            with Vertical(id="forecast-funnel-box"):
                yield Static("Funnel: open deals, median days in stage now and last quarter", classes="panel-title")
                yield DealTable(FUNNEL_COLUMNS, funnel_cell, funnel_key, id="forecast-funnel")
        yield Static("", id="forecast-sources")
        # The footer comes with the second frame (`add_footer`): composing its keys costs the first
        # paint ~0.1 s, and the quarter's numbers matter more than the key hints at start.

    def on_mount(self) -> None:
        if self.app.first_frame.is_set():  # type: ignore[attr-defined] # not the app's start screen
            self.post_message(FirstFrame())
        painted = self._start.ready() if self._start is not None else None
        if painted is not None:  # read already: on screen with the first render
            self.show_painted(painted)
        else:
            self.query_one("#forecast-owners", DealTable).loading = True
        self.load_view()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")

    @work(thread=True, exclusive=True, group="forecast", exit_on_error=False)
    def load_view(self) -> None:
        start, self._start = self._start, None
        if start is not None:
            painted = None if self._painted_shown else start.wait(PAINT_WAIT)
            if painted is not None:
                self.post_message(painted)
            if painted is not None or self._painted_shown:
                # let the main thread put it on screen before the load takes the interpreter's time
                self.app.first_frame.wait(PAINT_WAIT)  # type: ignore[attr-defined]
                self._painted.wait(PAINT_WAIT)
        self.app.store_ready.wait()  # type: ignore[attr-defined]
        quarter, scope = self.quarter, self.scope
        # the start view's paint is kept before it is shown: the next start has it even if this one ends now
        view = load_forecast_view(self.service, quarter, scope, keep=(quarter, scope) == self._home)
        self.post_message(self.ViewLoaded(view))

    @on(FirstFrame)
    async def add_footer(self) -> None:
        if not self.query(Footer):
            await self.mount(Footer())
            self.refresh_bindings()  # a footer shows keys when told the bindings changed

    @on(Painted)
    def show_painted(self, event: Painted) -> None:
        if self.view is not None:  # the view itself came first
            return
        owners = self.query_one("#forecast-owners", DealTable)
        owners.loading = False
        owners.paint(event.owners)
        self.query_one("#forecast-funnel", DealTable).paint(event.funnel)
        self.query_one("#forecast-summary", Static).update(event.summary)
        self.query_one("#forecast-sources", Static).update(event.sources)
        self._painted_shown = True
        self.call_after_refresh(self._painted.set)

    @on(ViewLoaded)
    def show_view(self, event: ViewLoaded) -> None:
        view = self.view = event.view
        if self._home[1] is None and view.rollup.quarter == self._home[0]:
            self._home = (self._home[0], view.scope)  # the default scope, by its id
        self.scope = view.scope
        owners = self.query_one("#forecast-owners", DealTable)
        owners.loading = False
        owners.set_rows(view.rollup.rows)
        self.query_one("#forecast-funnel", DealTable).set_rows(view.funnel)
        self.query_one("#forecast-summary", Static).update(summary_text(view, week_label(view)))
        self.query_one("#forecast-sources", Static).update(sources_text(view))

    @on(DealTable.RowChosen, "#forecast-owners")
    def drill_down(self, event: DealTable.RowChosen) -> None:
        if self.view is None:
            return
        owner = event.key.rstrip("*")
        if event.key.endswith("*") or not self.view.tree.is_manager(owner):
            self.notify(f"{self.view.tree.owners[owner].name} has no team below; the Deals view (2) lists their deals",
                        title="No team")
            return
        self.scope = owner
        self.load_view()

    def action_scope_up(self) -> None:
        if self.view is None or self.scope not in self.view.tree.owners:
            return
        manager = self.view.tree.owners[self.scope].manager_id
        if manager is None:
            return
        self.scope = manager
        self.load_view()

    def action_quarter(self, delta: int) -> None:
        self.quarter = self.quarter.next() if delta > 0 else self.quarter.previous()
        self.query_one("#forecast-summary", Static).update(f"Loading {self.quarter.label}…")
        self.load_view()

    def load_failed(self, title: str) -> None:
        if self.view is None:
            self.query_one("#forecast-summary", Static).update(
                f"Could not load the forecast: {title}. Fix it and press r to try again.")

    def action_refresh(self) -> None:
        self.load_view()
