"""Commit: the draft's totals beside last week's, the model's range, the team's submissions; the
manager's number (and a reason if it differs from the calls); confirm; then export TOML and CSV."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import ValidationError
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, Label, Static

from cockpit.config import describe_validation
from cockpit.format import compact
from cockpit.models import ForecastCategory
from cockpit.review import ReviewWalk
from cockpit.screens.base import CockpitScreen
from cockpit.screens.modals import ConfirmModal, PromptModal
from cockpit.service import CockpitService, CommitPreview


def totals_table(preview: CommitPreview) -> Table:
    """Per category: this draft, the last submission, and the difference."""
    sub, prev = preview.submission, preview.previous
    table = Table(box=None, pad_edge=False, expand=False)
    table.add_column("")
    table.add_column("This call", justify="right")
    table.add_column("Last submission" if prev else "Last (none)", justify="right")
    table.add_column("Change", justify="right")
    for category in ForecastCategory:
        now = sub.totals.of(category)
        then = prev.totals.of(category) if prev else None
        delta = "" if then is None else _signed(now - then)
        table.add_row(category.label, compact(now), compact(then) if then is not None else "–", delta)
    then_number = prev.manager_number if prev else None
    table.add_row(Text("Closed + commit", style="bold"), Text(compact(sub.call_sum), style="bold"),
                  compact(prev.call_sum) if prev else "–", _signed(sub.call_sum - prev.call_sum) if prev else "")
    table.add_row(Text("Manager's number", style="bold"), Text(compact(sub.manager_number), style="bold"),
                  compact(then_number) if then_number is not None else "–",
                  _signed(sub.manager_number - then_number) if then_number is not None else "")
    return table


def _signed(value: Decimal) -> str:
    return ("+" if value > 0 else "−" if value < 0 else "±") + compact(abs(value))


def context_text(preview: CommitPreview) -> Text:
    """The model's range and the team's submissions."""
    sub = preview.submission
    out = Text()
    if sub.model is not None:
        m = sub.model
        out.append("Model ", style="bold")
        out.append(f"P50 {compact(m.p50)} · P10 {compact(m.p10)} – P90 {compact(m.p90)} · expected {compact(m.expected)}\n")
        gap = sub.manager_number - m.p50
        out.append(f"Your number is {_signed(gap)} against the model's P50\n", style="dim")
    else:
        out.append("Model: no scores yet (cockpit train)\n", style="dim")
    if preview.team is not None:
        out.append("\nTeam's latest submissions\n", style="bold")
        for row in preview.team.rows:
            number = compact(row.number) if row.submissions else "–"
            when = ", ".join(str(s.created_at.date()) for s in row.submissions) or "none yet"
            out.append(f"  {row.name:<16} {number:>8}  {when}\n")
        out.append(f"  {'Sum':<16} {compact(preview.team.total):>8}\n", style="bold")
        if preview.team.missing:
            out.append(f"  {len(preview.team.missing)} people below you have no submission\n", style="yellow")
    return out


class CommitScreen(CockpitScreen):
    """Pushed from the review; escape goes back to the walk without committing."""

    AUTO_FOCUS = "#commit-number"
    BINDINGS = [
        Binding("ctrl+s", "submit", "Submit", id="commit-submit", tooltip="Append the submission (it is never edited)"),
        Binding("escape", "back", "Back", id="commit-back", tooltip="Back to the review"),
    ]

    class PreviewReady(Message):
        def __init__(self, preview: CommitPreview | None, error: str | None = None) -> None:
            super().__init__()
            self.preview = preview
            self.error = error

    class Submitted(Message):
        def __init__(self, submission) -> None:  # noqa: ANN001 - Submission
            super().__init__()
            self.submission = submission

    def __init__(self, service: CockpitService, walk: ReviewWalk) -> None:
        super().__init__()
        self.service = service
        self.walk = walk
        self.preview: CommitPreview | None = None
        self.problem: str | None = None
        """Why the current number cannot be submitted (shown under the inputs)."""

    def compose(self) -> ComposeResult:
        yield Static(f"Commit {self.walk.quarter} · {self.walk.progress()}", id="commit-title")
        with VerticalScroll(id="commit-body"):
            with Horizontal(id="commit-columns"):
                yield Static("Loading…", id="commit-totals", classes="-loads")
                yield Static("", id="commit-context")
            with Horizontal(classes="commit-field"):
                yield Label("Your number ")
                yield Input(placeholder="closed + commit", id="commit-number")
            with Horizontal(classes="commit-field"):
                yield Label("Reason      ")
                yield Input(placeholder="needed when your number differs from the calls", id="commit-reason")
            yield Static("", id="commit-error")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_preview()

    def _number(self) -> Decimal | None:
        text = self.query_one("#commit-number", Input).value.strip().replace(",", "")
        if not text:
            return None
        try:
            return Decimal(text)
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a number; type digits, e.g. 6500000") from None

    @on(Input.Changed)
    def inputs_changed(self) -> None:
        self.refresh_preview()

    def refresh_preview(self) -> None:
        try:
            number = self._number()
        except ValueError as exc:
            self._show_problem(str(exc))
            return
        self.build_preview(number, self.query_one("#commit-reason", Input).value)

    @work(thread=True, exclusive=True, group="commit-preview", exit_on_error=False)
    def build_preview(self, number: Decimal | None, reason: str) -> None:
        try:
            preview = self.service.commit_preview(self.walk, number, reason)
        except ValidationError as exc:
            self.post_message(self.PreviewReady(None, describe_validation(exc)))
            return
        self.post_message(self.PreviewReady(preview))

    @on(PreviewReady)
    def show_preview(self, event: PreviewReady) -> None:
        if event.preview is None:
            self._show_problem(event.error)
            return
        self.preview = event.preview
        self._show_problem(None)
        self.query_one("#commit-totals", Static).update(totals_table(event.preview))
        self.query_one("#commit-context", Static).update(context_text(event.preview))
        number = self.query_one("#commit-number", Input)
        if not number.value:
            number.placeholder = f"{event.preview.submission.call_sum:.2f} (closed + commit)"
        self.query_one("#commit-title", Static).update(
            f"[b]Commit {self.walk.quarter}[/b] for {event.preview.scope_name} · {self.walk.progress()}"
            f" · {event.preview.submission.currency}"
        )

    def _show_problem(self, problem: str | None) -> None:
        self.problem = problem
        self.query_one("#commit-error", Static).update(f"[b]{problem}[/b]" if problem else "")

    def action_submit(self) -> None:
        if self.preview is None or self.problem:
            self.notify("Fix the number or give a reason first", title="Not ready", severity="warning")
            return
        sub = self.preview.submission

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.submit(self._number(), self.query_one("#commit-reason", Input).value)

        self.app.push_screen(
            ConfirmModal(f"Submit {compact(sub.manager_number)} {sub.currency} for {sub.quarter}?",
                         "A submission is never edited; a later one supersedes it."),
            confirmed,
        )

    @work(thread=True, exclusive=True, group="commit-submit", exit_on_error=False)
    def submit(self, number: Decimal | None, reason: str) -> None:
        self.post_message(self.Submitted(self.service.submit(self.walk, number, reason)))

    @on(Submitted)
    def ask_export(self, event: Submitted) -> None:
        submission = event.submission
        self.notify(f"Submission {submission.id}: {compact(submission.manager_number)} {submission.currency}",
                    title="Submitted")
        self._ask_path(submission, "toml")

    def _ask_path(self, submission, fmt: str) -> None:  # noqa: ANN001 - Submission
        default = self.service.default_export_path(submission, fmt)

        def parse(text: str) -> Path:
            path = Path(text.strip() or default).expanduser()
            if path.is_dir():
                raise ValueError(f"{path} is a folder; give a file name")
            return path

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.export(submission, fmt, path)
            elif fmt == "toml":
                self._ask_path(submission, "csv")

        self.app.push_screen(PromptModal(f"Export {fmt.upper()} to", value=str(default), parse=parse,
                                         help="escape skips this export"), chosen)

    @work(thread=True, exclusive=False, group="commit-export", exit_on_error=False)
    def export(self, submission, fmt: str, path: Path) -> None:  # noqa: ANN001 - Submission
        written = self.service.export(submission, fmt, path)
        self.app.call_from_thread(self.notify, f"{written}", title=f"Exported {fmt.upper()}")
        if fmt == "toml":
            self.app.call_from_thread(self._ask_path, submission, "csv")

    def action_back(self) -> None:
        self.dismiss()
