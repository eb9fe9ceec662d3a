"""The TUI skeleton under Pilot: opens on the quarter's deals, sorts, filters, helps, and reports errors."""

from __future__ import annotations

from datetime import date

import pytest
from textual.notifications import Notify
from textual.widgets import DataTable, Static
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.screens.help import HelpScreen
from cockpit.screens.pipeline import PipelineScreen
from cockpit.service import CockpitService
from cockpit.store import Store
from cockpit.widgets.deal_table import DealTable
from tests.factories import small_batch


@pytest.fixture
def service(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    return service


def row_ids(table: DealTable) -> list[str]:
    return [row.deal.id for row in table.rows]


async def open_deals(app, pilot) -> None:
    await settle(app, pilot)
    await pilot.press("3")
    await settle(app, pilot)


async def settle(app, pilot) -> None:
    """Wait for the workers (a failed one is the app's to report, not the test's) and the repaint."""
    try:
        await app.workers.wait_for_complete()
    except WorkerFailed:
        pass
    for _ in range(3):  # the state change, the app's handler, then its notification
        await pilot.pause()


async def test_opens_on_the_quarters_deals_and_sorts(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_deals(app, pilot)
        assert isinstance(app.screen, PipelineScreen)
        table = app.screen.query_one(DealTable)
        header = str(app.screen.query_one("#pipeline-header", Static).render())
        assert "FY2026-Q4" in header and "3 deals" in header
        assert row_ids(table) == ["a", "c", "d"]  # amount, descending (CNY 120k, 80k, 30k)
        table.cursor_column = 0  # owner
        await pilot.press("left_square_bracket")
        assert row_ids(table) == ["c", "a", "d"]  # Alice, then Wang (ties by id)
        await pilot.press("right_square_bracket")
        assert row_ids(table) == ["d", "a", "c"]


async def test_filter_and_clear(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_deals(app, pilot)
        await pilot.press("slash")
        await pilot.press(*"alice", "enter")
        table = app.screen.query_one(DealTable)
        assert row_ids(table) == ["c"]
        assert "1 of 3" in str(app.screen.query_one("#pipeline-header", Static).render())
        await pilot.press("escape")
        assert table.row_count == 3


async def test_help_lists_the_screens_keys(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_deals(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_table = app.screen.query_one(DataTable)
        described = {str(help_table.get_row_at(i)[1]) for i in range(help_table.row_count)}
        assert {"Sort ↑", "Sort ↓", "Filter", "Quit", "Help"} <= described
        await pilot.press("escape")
        assert isinstance(app.screen, PipelineScreen)
        await pilot.press("q")
    assert app.return_code == 0 or app.return_code is None


async def test_a_failed_load_notifies_and_keeps_the_screen(service, monkeypatch):
    from cockpit.store import StoreError

    def broken(*args, **kwargs):
        raise StoreError("Store is locked", "another cockpit is writing; try again in a moment")

    monkeypatch.setattr(CockpitService, "deals", broken)
    seen: list = []
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await open_deals(app, pilot)
        notes = [m for m in seen if isinstance(m, Notify)]
        assert notes and notes[-1].notification.severity == "error"
        assert notes[-1].notification.title == "Store is locked"
        assert isinstance(app.screen, PipelineScreen)
        assert not app.screen.query_one(DealTable).loading
