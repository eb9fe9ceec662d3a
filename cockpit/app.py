"""CockpitApp: wiring only — screens, global bindings, keymap, and the one worker-error route."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState

from cockpit.config import Settings
from cockpit.screens.changes import ChangesScreen
from cockpit.screens.forecast import ForecastScreen
from cockpit.screens.help import HelpScreen
from cockpit.screens.history import HistoryScreen
from cockpit.screens.pipeline import PipelineScreen
from cockpit.screens.review import ReviewScreen
from cockpit.screens.sync import SyncScreen
from cockpit.service import CockpitService


class CockpitApp(App[None]):
    """The Deal Cockpit terminal app."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "Deal Cockpit"
    BINDINGS = [
        Binding("1", "switch_mode('forecast')", "Forecast", show=False, id="app-forecast",
                tooltip="The quarter at a glance"),
        Binding("2", "switch_mode('review')", "Review", show=False, id="app-review",
                tooltip="Walk the stages and make the calls"),
        Binding("3", "switch_mode('deals')", "Deals", show=False, id="app-deals", tooltip="The quarter's open deals"),
        Binding("4", "switch_mode('changes')", "Changes", show=False, id="app-changes",
                tooltip="What moved since the last submission"),
        Binding("5", "switch_mode('history')", "History", show=False, id="app-history",
                tooltip="Past submissions and their accuracy"),
        Binding("q", "quit", "Quit", id="app-quit", tooltip="Leave the cockpit"),
        Binding("question_mark", "help", "Help", id="app-help", tooltip="Every key of this screen"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `1`…`5` | Forecast, review, deals, changes, history. |
    | `?` | Keys of this screen. `ctrl+p` finds any command. |
    | `q` | Quit. |
    """

    DEFAULT_MODE = "forecast"

    def __init__(self, service: CockpitService, settings: Settings) -> None:
        super().__init__()
        self.service = service
        self.settings = settings
        self.store_ready = threading.Event()
        """Set once the store holds data (after the first-run sync); screen loaders wait on it."""
        self.add_mode("forecast", lambda: ForecastScreen(service))
        self.add_mode("deals", lambda: PipelineScreen(service))
        self.add_mode("review", lambda: ReviewScreen(service))
        self.add_mode("changes", lambda: ChangesScreen(service))
        self.add_mode("history", lambda: HistoryScreen(service))

    def on_mount(self) -> None:
        if self.settings.ui.keymap:
            self.set_keymap(self.settings.ui.keymap)
        if self.settings.ui.theme:
            self.theme = self.settings.ui.theme
        self.prepare_store()

    @work(thread=True, exclusive=True, group="first-run", exit_on_error=False)
    def prepare_store(self) -> None:
        """On an empty store, sync the configured connector (the demo by default) with progress."""
        try:
            if not self.service.store_is_empty():
                return
            connector = self.service.make_connector()
            dialog = SyncScreen(connector.name)
            self.call_from_thread(self.push_screen, dialog)

            def report(p) -> None:  # noqa: ANN001 - SyncProgress
                self.call_from_thread(dialog.progress, p.records, p.total, p.message)

            asyncio.run(self.service.sync(connector, progress=report))
            self.call_from_thread(dialog.dismiss)
        finally:
            self.store_ready.set()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The key for the section on screen is disabled (the footer greys it)."""
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return None
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    @on(Worker.StateChanged)
    def forward_worker_failure(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.report_worker_error(event.worker)

    def report_worker_error(self, worker: Worker) -> None:
        """Every failed worker ends here: a titled notification; the last good data stays on screen."""
        error = worker.error
        title = getattr(error, "title", None) or "Something went wrong"
        message = getattr(error, "message", None) or str(error)
        self.log.error(f"worker {worker.name} failed: {error!r}")
        self.notify(message, title=title, severity="error", timeout=10)
        for screen in self.screen_stack:
            for widget in screen.query(".-loads"):
                widget.loading = False


def build_app(service: CockpitService, settings: Settings) -> CockpitApp:
    """The one factory the CLI and the tests use."""
    return CockpitApp(service, settings)
