"""Small modal dialogs: a validated text prompt and a yes/no confirmation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class PromptModal(ModalScreen[Any]):
    """Ask for one value. `parse` turns the text into the result or raises ValueError with the reason;
    the reason is shown under the input and the dialog stays open. Escape cancels (result None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt-cancel", tooltip="Close without changing anything")]

    def __init__(self, title: str, *, value: str = "", placeholder: str = "",
                 parse: Callable[[str], Any] | None = None, help: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.parse = parse or (lambda text: text)
        self.help = help

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Label(self.title_text, id="prompt-title")
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt-input")
            yield Static(self.help, id="prompt-error")

    @on(Input.Submitted)
    def accept(self, event: Input.Submitted) -> None:
        try:
            result = self.parse(event.value)
        except ValueError as exc:
            self.query_one("#prompt-error", Static).update(f"[b]{exc}[/b]")
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmModal(ModalScreen[bool]):
    """A yes/no question: y or enter confirms, n or escape declines."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm-yes", tooltip="Confirm"),
        Binding("n,escape", "answer(False)", "No", id="confirm-no", tooltip="Go back"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt"):
            yield Label(self.question, id="prompt-title")
            yield Static(self.detail)
            yield Static("[b]y[/b] yes   [b]n[/b] no", id="prompt-error")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
