"""CockpitApp: wiring only — screens, global bindings, keymap, and the one worker-error route."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from cockpit.config import Settings
from cockpit.messages import FirstFrame, ScoresUpdated
from cockpit.screens.forecast import ForecastScreen
from cockpit.service import CockpitService

if TYPE_CHECKING:
    from cockpit.screens.progress import ProgressScreen


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
        Binding("T", "train", "Retrain", show=False, id="app-train",
                tooltip="Retrain the win model on every closed deal, then rescore the open ones"),
        Binding("q", "quit", "Quit", id="app-quit", tooltip="Leave the cockpit"),
        Binding("question_mark", "help", "Help", id="app-help", tooltip="Every key of this screen"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `1`…`5` | Forecast, review, deals, changes, history. |
    | `T` | Retrain the win model (in the background, with progress). |
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
        self.first_frame = threading.Event()
        """Set once the first screen has been drawn: work that would delay it can wait on it."""
        self.scores_version = 0
        """Bumped whenever the open deals were scored again; screens reload when theirs is older."""
        # The start screen is imported with the app; the others when first shown (~40 ms of start-up).
        self.add_mode("forecast", lambda: ForecastScreen(service))
        self.add_mode("deals", partial(_screen, "pipeline", "PipelineScreen", service))
        self.add_mode("review", partial(_screen, "review", "ReviewScreen", service))
        self.add_mode("changes", partial(_screen, "changes", "ChangesScreen", service))
        self.add_mode("history", partial(_screen, "history", "HistoryScreen", service))

    def on_mount(self) -> None:
        if self.settings.ui.keymap:
            self.set_keymap(self.settings.ui.keymap)
        if self.settings.ui.theme:
            self.theme = self.settings.ui.theme
        self.prepare_store()

    def on_ready(self) -> None:
        # Ready comes after the first layout; the screen's next refresh is the first frame written
        self.screen.call_after_refresh(self._drawn)

    def _drawn(self) -> None:
        self.first_frame.set()
        self.screen.post_message(FirstFrame())

    @work(thread=True, exclusive=True, group="first-run", exit_on_error=False)
    def prepare_store(self) -> None:
        """On an empty store, sync the configured connector (the demo by default) with progress, then
        train the win model; the screens show the deals as soon as the sync is done."""
        dialog: ProgressScreen | None = None
        try:
            if not self.service.store_is_empty():
                return
            from cockpit.screens.progress import ProgressScreen

            connector = self.service.make_connector()
            dialog = ProgressScreen(f"First run: loading deals from the {connector.name} connector")
            self.call_from_thread(self.push_screen, dialog)

            def report(p) -> None:  # noqa: ANN001 - SyncProgress
                self.call_from_thread(dialog.progress, p.records, p.total, p.message)

            asyncio.run(self.service.sync(connector, progress=report))
        except BaseException:
            if dialog is not None:  # the failure is notified; what was synced stays on screen
                self.call_from_thread(dialog.action_dismiss)
            raise
        finally:
            self.store_ready.set()
        self.call_from_thread(dialog.retitle, "First run: training the win model on the closed deals")
        self._run_model(self.service.refresh_model, dialog)

    def action_train(self) -> None:
        from cockpit.screens.progress import ProgressScreen

        dialog = ProgressScreen("Retraining the win model on every closed deal")
        self.push_screen(dialog)
        self.train_model(dialog)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def train_model(self, dialog: ProgressScreen) -> None:
        self.store_ready.wait()
        self._run_model(self.service.train, dialog)

    def _run_model(self, job, dialog: ProgressScreen) -> None:  # noqa: ANN001 - service.train or refresh_model
        """Run a training/scoring job from a worker thread; progress to the dialog, scores to the screens."""
        def report(message: str, fraction: float) -> None:
            self.call_from_thread(dialog.progress, round(fraction * 100), 100, message)

        try:
            run = job(progress=report)
        finally:
            self.call_from_thread(dialog.action_dismiss)
        how = run.report.why if run.report is not None else f"model {run.version}"
        self.call_from_thread(self.notify, how, title=f"Scored {run.scored:,} open deals", timeout=8)
        self.call_from_thread(self.scores_updated, run.version)

    def scores_updated(self, version: str) -> None:
        """New scores in the store: the screen on show reloads now, the others when next shown."""
        self.scores_version += 1
        self.screen.post_message(ScoresUpdated(version))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers every binding of the screen (and the app), named "<screen>: <what>"."""
        yield from super().get_system_commands(screen)
        seen = set()
        for active in screen.active_bindings.values():
            binding, node = active.binding, active.node
            if not active.enabled or (id(node), binding.action) in seen or not binding.description:
                continue
            seen.add((id(node), binding.action))
            place = "Cockpit" if node is self else type(screen).__name__.removesuffix("Screen")
            key = binding.key_display or self.get_key_display(binding)
            yield SystemCommand(
                f"{place}: {binding.description}",
                f"{binding.tooltip or binding.description} ({key})",
                partial(node.run_action, binding.action),
            )

    def get_loading_widget(self) -> Widget:
        """A still "Loading…" line: Textual's animated indicator repaints the whole panel ~10 times a
        second, 6–12 KB per 100 ms on the wire (bench/bench_tui.py), which an SSH session feels."""
        return Static("Loading…", classes="loading-text")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The key for the section on screen is disabled (the footer greys it)."""
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return None
        return True

    def action_help(self) -> None:
        from cockpit.screens.help import HelpScreen

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
        self.notify(message, title=title, severity="error", timeout=10, markup=False)
        for screen in self.screen_stack:
            for widget in screen.query(".-loads"):
                widget.loading = False


def _screen(module: str, name: str, service: CockpitService) -> Screen:
    """Screen `name` of `cockpit.screens.<module>`, imported on first use."""
    return getattr(importlib.import_module(f"cockpit.screens.{module}"), name)(service)


def build_app(service: CockpitService, settings: Settings) -> CockpitApp:
    """The one factory the CLI and the tests use."""
    return CockpitApp(service, settings)
