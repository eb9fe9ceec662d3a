"""What every cockpit screen shares: its failed workers go to the app's one error route."""

from __future__ import annotations

from textual import on
from textual.screen import Screen
from textual.worker import Worker, WorkerState


class CockpitScreen(Screen[None]):
    """Base screen. Worker state changes don't bubble, so each screen hands failures to the app."""

    @on(Worker.StateChanged)
    def forward_worker_failure(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.app.report_worker_error(event.worker)  # type: ignore[attr-defined]
