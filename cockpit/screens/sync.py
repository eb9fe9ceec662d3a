"""First run: the store is empty, so the cockpit loads the demo CRM (or the configured connector) with progress."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar


class SyncScreen(ModalScreen[None]):
    """A progress dialog over the home screen while the first sync runs."""

    def __init__(self, connector: str) -> None:
        super().__init__()
        self.connector = connector

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Label(f"First run: loading deals from the {self.connector} connector", id="prompt-title")
            yield ProgressBar(id="sync-progress", show_eta=False)
            yield Label("", id="sync-message")

    def progress(self, records: int, total: int | None, message: str) -> None:
        self.query_one(ProgressBar).update(total=total, progress=records)
        self.query_one("#sync-message", Label).update(message)
