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


async def test_commit_submit_and_export(service, isolated_dirs):
    """Calls → Commit: totals, a number that differs needs a reason, confirm, export both files."""
    import csv
    import tomllib

    from cockpit.screens.commit import CommitScreen
    from cockpit.screens.modals import ConfirmModal
    from cockpit.store.submissions import list_submissions

    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_review(app, pilot)
        await pilot.press("c")  # c (qualify, 80k CNY) → commit
        await pilot.press("C")
        await settle(app, pilot)
        commit = app.screen
        assert isinstance(commit, CommitScreen)
        sub = commit.preview.submission
        # commit: a (negotiate, 120k) + c (80k) = 200k CNY → 28,000 USD at 0.14
        assert sub.totals.commit == Decimal("28000.00") and sub.manager_number == Decimal("28000.00")
        await pilot.press(*"30000")
        await settle(app, pilot)
        assert commit.problem and "reason" in commit.problem
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, ConfirmModal)  # refused until there is a reason
        await pilot.press("tab", *"upside on Acme")
        await settle(app, pilot)
        assert commit.problem is None
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await settle(app, pilot)
        assert isinstance(app.screen, PromptModal)  # where to export the TOML
        toml_path = isolated_dirs / "out" / "q4.toml"
        await pilot.press("ctrl+a", "ctrl+k", *str(toml_path), "enter")
        await settle(app, pilot)
        assert isinstance(app.screen, PromptModal)  # then the CSV
        csv_path = isolated_dirs / "out" / "q4.csv"
        await pilot.press("ctrl+a", "ctrl+k", *str(csv_path), "enter")
        await settle(app, pilot)
    with service.store() as store:
        [stored] = list_submissions(store.conn, "FY2026-Q4", "vp")
        assert load_draft(store.conn, "FY2026-Q4", "vp", os_user()) is None  # the draft became the submission
    assert stored.manager_number == Decimal(30000) and stored.reason == "upside on Acme"
    from cockpit.export import read_submission_toml

    assert read_submission_toml(toml_path) == stored  # the file reads back to the stored submission
    doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    assert {line["opportunity_id"]: line["category"] for line in doc["lines"]} == {
        "a": "commit", "c": "commit", "d": "pipeline"}
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert {r["opportunity_id"]: r["category"] for r in rows} == {"a": "commit", "c": "commit", "d": "pipeline"}
