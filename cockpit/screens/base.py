"""What every cockpit screen shares: failed workers go to the app's one error route, and new
scores reload the screen (now if it is on show, else when it is shown again)."""

from __future__ import annotations

from textual import events, on
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from cockpit.messages import ScoresUpdated


class CockpitScreen(Screen[None]):
    """Base screen. Worker state changes don't bubble, so each screen hands failures to the app."""

    scores_seen = 0
    """The app's `scores_version` this screen last loaded."""

    @on(Worker.StateChanged)
    def forward_worker_failure(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.app.report_worker_error(event.worker)  # type: ignore[attr-defined]
            self.load_failed(getattr(event.worker.error, "title", None) or "something went wrong")

    def load_failed(self, title: str) -> None:
        """A worker of this screen failed (the app has notified); screens replace a "Loading…" line here."""

    @on(ScoresUpdated)
    @on(events.ScreenResume)
    def catch_up_on_scores(self) -> None:
        version = getattr(self.app, "scores_version", 0)
        if version != self.scores_seen:
            self.scores_seen = version
            self.scores_changed()

    def scores_changed(self) -> None:
        """Show the new scores; by default the screen reloads (`action_refresh`)."""
        refresh = getattr(self, "action_refresh", None)
        if refresh is not None:
            refresh()
