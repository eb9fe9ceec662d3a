"""Deal: the whole story of one deal — every change with its date, the win chance over time, the reasons."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Sparkline, Static

from cockpit.format import money, percent
from cockpit.screens.base import CockpitScreen
from cockpit.service import CockpitService, DealStory


def story_text(story: DealStory) -> Text:
    """The deal's header facts and its dated events."""
    deal = story.deal
    out = Text()
    out.append(f"{deal.account or deal.name}\n", style="bold")
    out.append(f"{deal.name} · {story.owner_name} · {story.stage_name} · {money(deal.amount, deal.currency)}"
               f" · close {deal.close_date or '–'}\n")
    if deal.next_step:
        out.append(f"Next step: {deal.next_step} ({deal.next_step_date or 'no date'})\n", style="dim")
    if story.score is not None:
        out.append(f"\nModel: {percent(story.score.p_won)} eventually, {percent(story.score.p_in_quarter)} this quarter\n",
                   style="bold")
        for reason in story.score.reasons:
            out.append(f"  {'+' if reason.points >= 0 else '−'}{abs(reason.points):.0f} pts  ",
                       style="green" if reason.points >= 0 else "red")
            out.append(f"{reason.text}\n")
    out.append("\nHistory\n", style="bold underline")
    for day, what in story.events:
        out.append(f"{day}  ", style="dim")
        out.append(f"{what}\n", style="dim" if what == "activity logged" else "")
    return out


class DealScreen(CockpitScreen):
    """One deal, pushed over the screen it was opened from; escape goes back."""

    BINDINGS = [Binding("escape,q", "back", "Back", id="deal-back", tooltip="Back to the list")]

    class StoryLoaded(Message):
        def __init__(self, story: DealStory) -> None:
            super().__init__()
            self.story = story

    def __init__(self, service: CockpitService, deal_id: str) -> None:
        super().__init__()
        self.service = service
        self.deal_id = deal_id

    def compose(self) -> ComposeResult:
        yield Static("", id="deal-chance-label")
        yield Sparkline([], id="deal-chance")
        with VerticalScroll(id="deal-story-scroll", classes="-loads"):
            yield Static("Loading…", id="deal-story")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#deal-story-scroll").loading = True
        self.load_story()

    @work(thread=True, exclusive=True, group="deal", exit_on_error=False)
    def load_story(self) -> None:
        self.post_message(self.StoryLoaded(self.service.deal_story(self.deal_id)))

    @on(StoryLoaded)
    def show_story(self, event: StoryLoaded) -> None:
        story = event.story
        self.query_one("#deal-story-scroll").loading = False
        self.query_one("#deal-story", Static).update(story_text(story))
        model = [p for _, _, p in story.weekly if p is not None]
        crm = [c for _, c, _ in story.weekly]
        series = model if model else crm
        source = "model" if model else "CRM stage probability"
        if series:
            first, last = series[0], series[-1]
            label = (f"Win chance by week ({source}): {percent(first)} → {percent(last)}, "
                     f"{len(series)} weeks since {story.weekly[0][0]}")
        else:
            label = "No history to chart"
        self.query_one("#deal-chance-label", Static).update(label)
        self.query_one(Sparkline).data = series

    def action_back(self) -> None:
        self.dismiss()
