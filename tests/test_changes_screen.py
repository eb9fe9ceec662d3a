"""The Changes screen under Pilot: the waterfall balances, buckets open to their deals."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.screens.changes import ChangesScreen
from cockpit.screens.deal import DealScreen
from cockpit.service import CockpitService
from cockpit.store import Store
from cockpit.widgets.bars import Bar, render_bars
from cockpit.widgets.deal_table import DealTable
from tests.factories import small_batch


async def settle(app, pilot) -> None:
    for _ in range(2):
        try:
            await app.workers.wait_for_complete()
        except WorkerFailed:
            pass
        await pilot.pause()


@pytest.fixture
def service(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 11, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    return service


async def test_waterfall_since_a_chosen_date(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 34)) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, ChangesScreen)
        await pilot.press("s", "ctrl+a", "ctrl+k", *"2026-09-25", "enter")
        await settle(app, pilot)
        w = screen.view.waterfall
        assert (w.start, w.end, w.balances) == (date(2026, 9, 25), date(2026, 11, 10), True)
        labels = [r.label for r in screen.query_one(DealTable).rows]
        # a: 100k → 120k CNY and Proposal → Negotiate; c: Proposal → Qualify; both change category;
        # d came and went inside the window (not shown)
        assert labels == ["▸ Amount up (1)", "▸ Stage forward (1)", "▸ Stage backward (1)", "▸ Category moves (2)"]
        assert w.buckets["amount_up"].amount == Decimal("2800.00")  # 20,000 CNY at 0.14
        table = screen.query_one(DealTable)
        table.move_to("b:stage_backward")
        await pilot.press("space")
        assert [r.key for r in table.rows][2:4] == ["b:stage_backward", "stage_backward:c"]
        table.move_to("stage_backward:c")
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, DealScreen) and app.screen.deal_id == "c"


def test_bars_are_drawn_without_colour_and_on_one_scale():
    text = render_bars([Bar("start", 100, "100"), Bar("down", -40, "-40", start=100), Bar("end", 60, "60")], 40)
    lines = text.plain.splitlines()
    assert lines[0].count("█") > lines[2].count("█") > 0
    assert "▒" in lines[1]
