"""Help: every key of the screen underneath, generated from its bindings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Label


def key_rows(screen: Screen) -> list[tuple[str, str, str]]:
    """(key, description, tooltip) for every active binding of `screen` and the app, in order."""
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for binding in [*screen.BINDINGS, *screen.app.BINDINGS]:
        if not isinstance(binding, Binding):
            continue
        keys = screen.app.get_key_display(binding)
        if binding.action in seen:
            continue
        seen.add(binding.action)
        rows.append((keys, binding.description or binding.action, binding.tooltip or ""))
    return rows


class HelpScreen(ModalScreen[None]):
    """A table of the keys; escape or q closes it."""

    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close", id="help-close", tooltip="Back to the screen"),
    ]

    def __init__(self, under: Screen) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        yield Label(f"Keys — {type(self.under).__name__.removesuffix('Screen')}", id="help-title")
        table: DataTable[str] = DataTable(id="help-table", cursor_type="row")
        table.add_columns("Key", "Does", "Detail")
        table.add_rows(key_rows(self.under))
        table.add_row("ctrl+p", "Commands", "Every action, searchable")
        yield table

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss()
