"""The review call under Pilot: walk two stages, make calls of each kind, quit mid-way, reopen, resume."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.models import ForecastCategory
from cockpit.screens.modals import PromptModal
from cockpit.screens.review import ReviewScreen
from cockpit.service import CockpitService, os_user
from cockpit.store import Store
from cockpit.store.submissions import load_draft
from tests.factories import small_batch


@pytest.fixture
def service(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    return service


async def settle(app, pilot) -> None:
    try:
        await app.workers.wait_for_complete()
    except WorkerFailed:
        pass
    await pilot.pause()


async def open_review(app, pilot) -> ReviewScreen:
    await settle(app, pilot)
    await pilot.press("2")
    await settle(app, pilot)
    assert isinstance(app.screen, ReviewScreen)
    return app.screen


def saved_draft(service):
    with service.store() as store:
        return load_draft(store.conn, "FY2026-Q4", "vp", os_user())


async def test_walk_call_quit_and_resume(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_review(app, pilot)
        walk = screen.walk
        assert walk.progress() == "Qualify 1/2 · 0/3 deals reviewed"
        assert walk.deal_id == "c"  # the bigger qualify deal first
        await pilot.press("c")  # commit
        await pilot.press("a")
        assert isinstance(app.screen, PromptModal)
        await pilot.press("ctrl+a", "ctrl+k", *"-5", "enter")
        assert isinstance(app.screen, PromptModal)  # a negative amount is refused, the dialog stays
        await pilot.press("ctrl+a", "ctrl+k", *"75,000", "enter")
        await pilot.press("n", *"CFO signs Friday", "enter")
        await pilot.press("s")  # reviewed, next deal
        assert walk.deal_id == "d"
        await pilot.press("o", "d")
        await pilot.press("ctrl+a", "ctrl+k", *"2027-01-20", "enter")
        await pilot.press("s")  # reviewed, on into the next stage
        assert walk.stage_id == "negotiate" and walk.deal_id == "a"
        await pilot.press("b")
        await settle(app, pilot)
        assert "Negotiate 2/2 · 2/3 deals reviewed" in walk.progress()
        await pilot.press("q")
    draft = saved_draft(service)
    lines = {line.opportunity_id: line for line in draft.lines}
    assert (lines["c"].category, lines["c"].amount_override, lines["c"].note, lines["c"].reviewed) == (
        ForecastCategory.COMMIT, Decimal(75000), "CFO signs Friday", True)
    assert (lines["d"].category, lines["d"].close_date_override) == (ForecastCategory.OMITTED, date(2027, 1, 20))
    assert lines["a"].category is ForecastCategory.BEST_CASE and not lines["a"].reviewed
    assert draft.position.stage_id == "negotiate" and draft.position.opportunity_id == "a"

    again = build_app(service, service.settings)
    async with again.run_test(size=(80, 24)) as pilot:
        screen = await open_review(again, pilot)
        walk = screen.walk
        assert (walk.stage_id, walk.deal_id) == ("negotiate", "a")
        assert walk.call_of(walk.deals["a"]) is ForecastCategory.BEST_CASE
        assert walk.progress() == "Negotiate 2/2 · 2/3 deals reviewed"
        await pilot.press("shift+tab")
        assert walk.stage_id == "qualify"
        await pilot.press("e")  # flagged deals only: none of these is flagged → the walk stays put
        await settle(app, pilot)


async def test_review_at_80x24_drops_the_stage_list(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_review(app, pilot)
        assert screen.has_class("-narrow")
        assert not screen.query_one("#review-stages").display or screen.query_one("#review-stages").size.width == 0
