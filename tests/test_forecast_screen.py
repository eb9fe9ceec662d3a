"""The Forecast screen (home) under Pilot: totals, team drill-down, quarter switching; first-run sync."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.models import ForecastCategory
from cockpit.screens.forecast import ForecastScreen
from cockpit.service import CockpitService
from cockpit.store import Store
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
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    return service


async def test_home_shows_the_quarter_and_drills_down(service):
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, ForecastScreen)
        view = screen.view
        assert view.scope == "vp" and view.rollup.quarter.label == "FY2026-Q4"
        totals = view.rollup.totals
        # a (negotiate → commit), c and d (qualify → pipeline), in USD at the demo's CNY rate 0.14
        assert totals.of(ForecastCategory.COMMIT) == Decimal("16800.00")
        assert totals.of(ForecastCategory.PIPELINE) == Decimal("15400.00")
        summary = str(screen.query_one("#forecast-summary").render())
        assert "FY2026-Q4" in summary and "week 2/14" in summary
        assert [r.owner_id for r in view.rollup.rows] == ["m1"]
        await pilot.press("enter")  # into Li Na's team
        await settle(app, pilot)
        assert screen.view.scope == "m1"
        assert {r.owner_id for r in screen.view.rollup.rows} == {"r1", "r2"}
        await pilot.press("backspace")
        await settle(app, pilot)
        assert screen.view.scope == "vp"
        await pilot.press("left_square_bracket")
        await settle(app, pilot)
        assert screen.view.rollup.quarter.label == "FY2026-Q3"
        assert screen.view.rollup.totals.closed == 50000  # deal b, won in August, USD


async def test_first_run_syncs_the_demo_with_progress(isolated_dirs):
    settings = Settings.model_validate({"demo": {"size": 300}})
    service = CockpitService(settings, today=date(2026, 11, 23))
    assert service.store_is_empty()
    app = build_app(service, settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await settle(app, pilot)
        assert not service.store_is_empty()
        assert isinstance(app.screen, ForecastScreen)
        assert app.screen.view is not None and app.screen.view.rollup.totals.deals > 0
