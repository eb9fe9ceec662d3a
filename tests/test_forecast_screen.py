"""The Forecast screen (home) under Pilot: totals, team drill-down, quarter switching; first-run sync."""

from __future__ import annotations

import json
import threading
from datetime import date
from decimal import Decimal

import pytest
from rich.text import Text
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.models import ForecastCategory
from cockpit.screens.forecast import ForecastScreen, keep_start_view, start_paint_cache
from cockpit.screens.painted import PaintRead, rows_from_json, text_from_json, text_to_json
from cockpit.service import CockpitService
from cockpit.store import Store
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


# --------------------------------------------------------------------------------------------------
# The start view painted from the last start
# --------------------------------------------------------------------------------------------------


def summary_of(app) -> str:
    return str(app.screen.query_one("#forecast-summary").render())


def hold_views(monkeypatch) -> threading.Event:
    """Make `forecast_view` wait until the returned event is set: what a start shows before it is done."""
    release = threading.Event()
    real = CockpitService.forecast_view

    def held(self, *args, **kwargs):
        assert release.wait(10), "the test never released the view"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CockpitService, "forecast_view", held)
    return release


async def start_and_wait(app, pilot, until) -> None:
    for _ in range(100):
        await pilot.pause(0.02)
        if until():
            return


@pytest.mark.parametrize("read", ["before the first render", "after it"])
async def test_a_start_on_an_unchanged_store_paints_the_last_view_before_loading_it(service, monkeypatch, read):
    if read == "after it":  # the mount finds the read unfinished: the load posts the paint
        monkeypatch.setattr(PaintRead, "ready", lambda self: None)
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        first = summary_of(app)
    painted = service.paint_path("forecast")
    assert painted.exists() and painted.stat().st_mode & 0o777 == 0o600

    release = hold_views(monkeypatch)
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await start_and_wait(app, pilot, lambda: "Best case" in summary_of(app))
        screen = app.screen
        owners = screen.query_one("#forecast-owners", DealTable)
        assert screen.view is None  # still loading: what shows is the painted view
        assert summary_of(app) == first
        assert owners.current_key == "m1" and owners.current_row is None and owners.rows == []
        await pilot.press("enter")  # nothing behind the painted rows yet: no drill-down, no error
        release.set()
        await settle(app, pilot)
        assert screen.view is not None and screen.scope == "vp"
        assert summary_of(app) == first and owners.current_row.owner_id == "m1"


async def test_a_store_written_since_is_not_painted_from_the_last_view(service, monkeypatch):
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
    assert service.paint_path("forecast").exists()
    with Store.open(service.store_path) as store:  # any commit, here a sync run that found nothing
        store.finish_sync(store.begin_sync("test", None), "ok")

    release = hold_views(monkeypatch)
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await start_and_wait(app, pilot, lambda: False)  # 2 s: time enough to paint
        assert "Loading the forecast" in summary_of(app)
        release.set()
        await settle(app, pilot)
        assert "Best case" in summary_of(app)


def test_the_view_stamp_changes_with_writes_settings_and_the_day_not_with_reads(service):
    stamp = service.view_stamp("forecast", "FY2026-Q4")
    service.forecast_view()
    service.changes_view()
    assert service.view_stamp("forecast", "FY2026-Q4") == stamp
    assert service.view_stamp("forecast", "FY2026-Q3") != stamp
    other_day = CockpitService(service.settings, service.data_dir, today=date(2026, 10, 11))
    assert other_day.view_stamp("forecast", "FY2026-Q4") != stamp
    other_settings = CockpitService(Settings.model_validate({"scope": "m1"}), service.data_dir,
                                    today=date(2026, 10, 10))
    assert other_settings.view_stamp("forecast", "FY2026-Q4") != stamp
    with Store.open(service.store_path) as store:
        store.finish_sync(store.begin_sync("test", None), "ok")
    assert service.view_stamp("forecast", "FY2026-Q4") != stamp
    with Store.open(service.store_path) as other:  # another cockpit keeps the store open ...
        other.is_empty()
        stamp = service.view_stamp("forecast", "FY2026-Q4")
        with Store.open(service.store_path) as store:
            store.finish_sync(store.begin_sync("test", None), "ok")
        # ... so the commit is still in the write-ahead log, not in the file
        assert service.view_stamp("forecast", "FY2026-Q4") != stamp


@pytest.mark.parametrize(
    "damage",
    [
        "not json",
        '{"format": 1, "stamp": "STAMP", "payload": []}',
        '{"format": 1, "stamp": "STAMP", "payload": {"summary": {"plain": "x", "spans": [[0, 1, "bold nonsense("]]}}}',
        '{"format": 1, "stamp": "STAMP", "payload": {"summary": {"plain": "x", "spans": [[0, 9, "bold"]]}}}',
    ],
)
async def test_a_damaged_paint_is_ignored(service, damage):
    stamp = service.view_stamp("forecast", service.current_quarter().label)
    service.paint_path("forecast").write_text(damage.replace("STAMP", stamp), encoding="utf-8")
    app = build_app(service, service.settings)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(app, pilot)
        assert app.screen.view is not None and "Best case" in summary_of(app)
    assert json.loads(service.paint_path("forecast").read_text(encoding="utf-8"))["stamp"] == stamp


def test_painted_texts_round_trip_and_refuse_what_rich_cannot_render():
    text = Text("FY2026-Q4 · 王磊 ", style="dim")
    text.append("1.2M", style="bold red")
    again = text_from_json(json.loads(json.dumps(text_to_json(text))))
    assert again.plain == text.plain and [(s.start, s.end, str(s.style)) for s in again.spans] == [
        (s.start, s.end, str(s.style)) for s in text.spans]
    with pytest.raises(ValueError):
        text_from_json({"plain": "x", "spans": [[0, 1, "not-a-colour-xyz"]]})
    with pytest.raises(ValueError):
        rows_from_json([["m1", ["a", "b"]]], 3)


def test_keeping_the_start_view_repaints_only_a_stale_one(service):
    keep_start_view(service)
    path = service.paint_path("forecast")
    kept = path.stat().st_mtime_ns
    keep_start_view(service)  # current: left alone (what `cockpit` does as it quits, after reviews)
    assert path.stat().st_mtime_ns == kept
    with Store.open(service.store_path) as store:
        store.finish_sync(store.begin_sync("test", None), "ok")
    cache = start_paint_cache(service)
    cost = cache.cost()
    assert cost is not None and cost > 0  # how long the kept view took to compute
    keep_start_view(service, at_most=cost / 2)  # as the app quits: a view that slow is left for the next start
    assert path.stat().st_mtime_ns == kept and cache.load(cache.stamp()) is None
    keep_start_view(service, at_most=cost * 100)
    assert path.stat().st_mtime_ns != kept and cache.load(cache.stamp()) is not None
