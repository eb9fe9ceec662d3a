"""Review: walk the pipeline stage by stage, deal by deal, and make the call.

Stages on the left with counts and progress, the stage's deals in the middle, the deal card on the
right. Every call is saved to the draft at once (a dropped SSH session loses nothing); reopening
resumes where the walk stopped.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Static

from cockpit.format import compact, money, percent
from cockpit.models import ForecastCategory
from cockpit.models.submission import Draft
from cockpit.review import ReviewDeal, ReviewWalk
from cockpit.screens.base import CockpitScreen
from cockpit.screens.modals import PromptModal
from cockpit.service import CockpitService
from cockpit.widgets.deal_card import DealCard, card_text
from cockpit.widgets.deal_table import Column, DealTable

COLUMNS = (
    Column("done", "✓", 1),
    Column("owner", "Owner", 11, priority=1),
    Column("account", "Account", 14, flex=True),
    Column("amount", "Amount", 12, numeric=True),
    Column("close", "Close", 6, priority=2),
    Column("call", "Call", 9),
    Column("model", "Mdl", 4, numeric=True),
)


class ReviewScreen(CockpitScreen):
    """The stage walk."""

    AUTO_FOCUS = "#review-deals"
    BINDINGS = [
        Binding("c", "call('commit')", "Commit", id="review-call-commit", tooltip="Call the deal commit"),
        Binding("b", "call('best_case')", "Best", id="review-call-best-case", tooltip="Call the deal best case"),
        Binding("p", "call('pipeline')", "Pipe", id="review-call-pipeline", tooltip="Call the deal pipeline"),
        Binding("o", "call('omitted')", "Omit", id="review-call-omit", tooltip="Leave the deal out of the forecast"),
        Binding("s", "mark(True)", "Done↓", id="review-mark", tooltip="Mark reviewed and move to the next deal"),
        Binding("u", "mark(False)", "Unmark", show=False, id="review-unmark", tooltip="Mark not reviewed"),
        Binding("a", "override_amount", "Amount", id="review-amount", tooltip="Override the amount"),
        Binding("d", "override_close", "Date", id="review-close-date", tooltip="Override the close date"),
        Binding("n", "note", "Note", id="review-note", tooltip="Add a note to the deal"),
        Binding("greater_than_sign,tab", "stage(1)", "Stage→", id="review-next-stage", tooltip="Next stage"),
        Binding("less_than_sign,shift+tab", "stage(-1)", "←Stage", show=False, id="review-previous-stage",
                tooltip="Previous stage"),
        Binding("e", "exceptions", "Filter", id="review-filter",
                tooltip="Walk all deals / flagged / call ≠ model / changed since last week"),
        Binding("x", "sort", "Sort", show=False, id="review-sort", tooltip="Sort deals by amount or by risk"),
        Binding("P", "next_pipeline", "Pipeline", show=False, id="review-pipeline",
                tooltip="Switch to the next pipeline"),
        Binding("C", "commit", "Commit…", id="review-commit", tooltip="Review the totals and commit the forecast"),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `c` `b` `p` `o` | Call the deal commit / best case / pipeline / omitted. |
    | `s` | Mark reviewed and move on (`u` unmarks). |
    | `a` `d` `n` | Override the amount, the close date; add a note. |
    | `>`/`tab`, `<`/`shift+tab` | Next / previous stage. |
    | `e` | Walk only exceptions (flagged, call ≠ model, changed). |
    | `x` | Sort by amount or by risk. `P` next pipeline. |
    | `C` | Commit. |
    """

    class WalkLoaded(Message):
        """The review's deals and draft were read."""

        def __init__(self, walk: ReviewWalk) -> None:
            super().__init__()
            self.walk = walk

    def __init__(self, service: CockpitService) -> None:
        super().__init__()
        self.service = service
        self.walk: ReviewWalk | None = None

    def compose(self) -> ComposeResult:
        yield Static("Loading the review…", id="review-header")
        with Horizontal(id="review-body"):
            yield Static("", id="review-stages")
            yield DealTable(COLUMNS, self._cell, lambda d: d.id, row_class=self._row_class,
                            id="review-deals", classes="-loads")
            with VerticalScroll(id="review-card-scroll"):
                yield DealCard("", id="review-card")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DealTable).loading = True
        self.load_walk()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")
        self.set_class(self.size.width >= 160, "-wide")

    # -- loading and saving -------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="review-load", exit_on_error=False)
    def load_walk(self) -> None:
        self.app.store_ready.wait()  # type: ignore[attr-defined]
        self.post_message(self.WalkLoaded(self.service.review_walk()))

    @on(WalkLoaded)
    def show_walk(self, event: WalkLoaded) -> None:
        self.walk = event.walk
        self.query_one(DealTable).loading = False
        self.render_stage()

    def scores_changed(self) -> None:
        if self.walk is not None:
            self.read_scores(list(self.walk.deals))

    @work(thread=True, exclusive=True, group="review-scores", exit_on_error=False)
    def read_scores(self, ids: list[str]) -> None:
        scores = self.service.scores(ids)
        self.app.call_from_thread(self.show_scores, scores)

    def show_scores(self, scores: dict) -> None:  # type: ignore[type-arg]
        if self.walk is None:
            return
        self.walk.update_scores(scores)
        self.query_one(DealTable).refresh()
        self.render_card()
        self.render_header()

    @work(thread=True, exclusive=True, group="review-draft", exit_on_error=False)
    def save_draft(self, draft: Draft) -> None:
        """Write the draft; the newest call wins (an older pending save is dropped)."""
        self.service.save_draft(draft)

    def _changed(self) -> None:
        """After any call: repaint what shows it and save the draft."""
        assert self.walk is not None
        if self.walk.deal_id:
            self.query_one(DealTable).refresh_row(self.walk.deal_id)
        self.render_card()
        self.render_header()
        self.save_draft(self.walk.draft())

    # -- rendering ----------------------------------------------------------------------------

    def _cell(self, deal: ReviewDeal, key: str) -> str:
        walk = self.walk
        assert walk is not None
        line = walk.line(deal.id)
        match key:
            case "done":
                return "✓" if walk.is_reviewed(deal.id) else ("⚑" if deal.flags else " ")
            case "owner":
                return deal.owner_name
            case "account":
                return deal.account or deal.name
            case "amount":
                amount = line.amount_override if line and line.amount_override is not None else deal.amount
                return f"{deal.currency} {compact(amount)}" + ("*" if line and line.amount_override is not None else "")
            case "close":
                close = line.close_date_override if line and line.close_date_override else deal.close_date
                return close.strftime("%b %d") if close else "–"
            case "call":
                return walk.call_of(deal).label
            case "model":
                return percent(deal.score.p_in_quarter) if deal.score else "–"
        raise KeyError(key)

    def _row_class(self, deal: ReviewDeal) -> str | None:
        if self.walk and self.walk.is_reviewed(deal.id):
            return "muted"
        return "flagged" if deal.flags else None

    def render_stage(self) -> None:
        """Rows of the current stage, cursor on the walk's deal, then the rest."""
        walk = self.walk
        if walk is None:
            return
        table = self.query_one(DealTable)
        table.set_rows(walk.visible_deals(), keep_cursor=False)
        if walk.deal_id:
            table.move_to(walk.deal_id)
        self.render_stages()
        self.render_header()
        self.render_card()

    def render_stages(self) -> None:
        walk = self.walk
        assert walk is not None
        out = Text()
        out.append(f"{walk.pipeline.name}\n", style="bold")
        for progress in walk.stages():
            current = progress.stage.id == walk.stage_id
            marker = "▸" if current else " "
            done = "✓" if progress.deals and progress.reviewed == progress.deals else " "
            out.append(f"{marker}{progress.stage.name[:12]:<12} {progress.reviewed:>2}/{progress.deals:<3}{done}\n",
                       style="bold reverse" if current else "")
            out.append(f"  {compact(progress.value)}\n", style="dim")
        self.query_one("#review-stages", Static).update(out)

    def render_header(self) -> None:
        walk = self.walk
        assert walk is not None
        text = (f"[b]{walk.quarter}[/b] review · {walk.progress()} · showing {walk.filter.label}"
                f" · by {walk.sort.value}")
        self.query_one("#review-header", Static).update(text)

    def render_card(self) -> None:
        walk = self.walk
        assert walk is not None
        self.query_one(DealCard).update(card_text(walk.current, walk, self.service.today()))

    # -- keys ---------------------------------------------------------------------------------

    @on(DealTable.RowHighlighted, "#review-deals")
    def follow_cursor(self, event: DealTable.RowHighlighted) -> None:
        if self.walk is not None and event.key is not None and event.key != self.walk.deal_id:
            self.walk.go_to_deal(event.key)
            self.render_card()

    @on(DealTable.RowChosen, "#review-deals")
    def open_deal(self, event: DealTable.RowChosen) -> None:
        from cockpit.screens.deal import DealScreen

        self.app.push_screen(DealScreen(self.service, event.key))

    def _deal_id(self) -> str | None:
        return self.walk.deal_id if self.walk is not None else None

    def action_call(self, category: str) -> None:
        if (deal_id := self._deal_id()) is not None:
            self.walk.call(deal_id, ForecastCategory(category))  # type: ignore[union-attr]
            self._changed()

    def action_mark(self, reviewed: bool) -> None:
        walk = self.walk
        if walk is None or (deal_id := walk.deal_id) is None:
            return
        walk.mark_reviewed(deal_id, reviewed)
        self._changed()
        if reviewed:
            stage = walk.stage_id
            if walk.step_deal(1) and walk.stage_id != stage:
                self.render_stage()
            elif walk.deal_id:
                self.query_one(DealTable).move_to(walk.deal_id)
            self.render_stages()

    def action_stage(self, delta: int) -> None:
        if self.walk is not None and self.walk.step_stage(delta):
            self.render_stage()
            self.save_draft(self.walk.draft())

    def action_exceptions(self) -> None:
        if self.walk is not None:
            self.walk.cycle_filter()
            self.render_stage()

    def action_sort(self) -> None:
        if self.walk is not None:
            self.walk.toggle_sort()
            self.render_stage()

    def action_next_pipeline(self) -> None:
        walk = self.walk
        if walk is None:
            return
        ids = [p.id for p in walk.pipelines]
        walk.set_pipeline(ids[(ids.index(walk.pipeline_id) + 1) % len(ids)])
        self.render_stage()

    def action_override_amount(self) -> None:
        walk = self.walk
        deal = walk.current if walk else None
        if deal is None:
            return

        def parse(text: str) -> Decimal | None | str:
            text = text.strip().replace(",", "")
            if not text:
                return "clear"
            try:
                value = Decimal(text)
            except InvalidOperation:
                raise ValueError(f"{text!r} is not an amount; type digits, e.g. 250000") from None
            if value < 0:
                raise ValueError("an amount cannot be negative")
            return value

        def done(result: Decimal | str | None) -> None:
            if result is None:
                return
            walk.override_amount(deal.id, None if result == "clear" else result)  # type: ignore[arg-type]
            self._changed()

        self.app.push_screen(
            PromptModal(f"Amount for {deal.account or deal.name} ({deal.currency})", value=str(deal.amount),
                        parse=parse, help=f"CRM: {money(deal.amount, deal.currency)} · empty clears the override"),
            done,
        )

    def action_override_close(self) -> None:
        walk = self.walk
        deal = walk.current if walk else None
        if deal is None:
            return

        def parse(text: str) -> date | str:
            text = text.strip()
            if not text:
                return "clear"
            try:
                return date.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a date; type YYYY-MM-DD, e.g. 2026-12-15") from None

        def done(result: date | str | None) -> None:
            if result is None:
                return
            walk.override_close_date(deal.id, None if result == "clear" else result)  # type: ignore[arg-type]
            self._changed()

        current = deal.close_date.isoformat() if deal.close_date else ""
        self.app.push_screen(
            PromptModal(f"Close date for {deal.account or deal.name}", value=current, parse=parse,
                        help=f"CRM: {current or 'none'} · empty clears the override"),
            done,
        )

    def action_note(self) -> None:
        walk = self.walk
        deal = walk.current if walk else None
        if deal is None:
            return
        line = walk.line(deal.id)

        def done(result: str | None) -> None:
            if result is not None:
                walk.note(deal.id, result)
                self._changed()

        self.app.push_screen(
            PromptModal(f"Note on {deal.account or deal.name}", value=line.note if line else "",
                        placeholder="what you heard in the call"),
            done,
        )

    def action_commit(self) -> None:
        from cockpit.screens.commit import CommitScreen

        if self.walk is not None:
            self.app.push_screen(CommitScreen(self.service, self.walk))
