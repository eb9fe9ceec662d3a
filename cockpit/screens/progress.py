"""A progress dialog for long work in a worker: the first-run sync, training the win model."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar


class ProgressScreen(ModalScreen[None]):
    """A titled progress bar over the current screen; `escape` hides it while the work goes on."""

    BINDINGS = [Binding("escape", "dismiss", "Hide", id="progress-hide", tooltip="Hide; the work continues")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Label(self.title_text, id="prompt-title")
            yield ProgressBar(id="progress-bar", show_eta=False)
            yield Label("", id="progress-message")
            yield Label("escape hides this; the work continues", id="prompt-error")

    def retitle(self, title: str) -> None:
        self.title_text = title
        if self.is_mounted:
            self.query_one("#prompt-title", Label).update(title)
            self.query_one(ProgressBar).update(total=None, progress=0)

    def progress(self, done: float, total: float | None, message: str) -> None:
        if self.is_mounted:
            self.query_one(ProgressBar).update(total=total, progress=done)
            self.query_one("#progress-message", Label).update(message)

    def action_dismiss(self) -> None:  # type: ignore[override]
        if self.is_attached and self.app.screen is self:
            self.dismiss()
