"""The win model in the TUI: trained after the first-run sync, retrained from a key or the palette, in a
thread worker with progress, and the screens pick up the new scores."""

from __future__ import annotations

from datetime import date

from textual.notifications import Notify

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.screens.forecast import ForecastScreen
from cockpit.screens.progress import ProgressScreen
from cockpit.service import CockpitService
from cockpit.store import Store
from tests.factories import small_batch
from tests.test_app import settle


def demo_service(size: int = 600) -> CockpitService:
    settings = Settings.model_validate({"demo": {"size": size}})
    return CockpitService(settings, today=date(2026, 10, 10))


async def test_first_run_syncs_trains_and_shows_scores(isolated_dirs):
    service = demo_service()
    app = build_app(service, service.settings)
    seen = []
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await settle(app, pilot)
        assert not isinstance(app.screen, ProgressScreen)
        assert app.scores_version == 1
        with service.store() as store:
            open_ids = {h.deal.id for h in store.histories(closed=False)}
            assert set(store.scores()) == open_ids
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, ForecastScreen)
        assert screen.view is not None and screen.view.scored
        titles = [m.notification.title for m in seen if isinstance(m, Notify)]
        assert any(t.startswith("Scored ") for t in titles)


async def test_every_binding_is_in_the_palette(isolated_dirs):
    service = demo_service(100)
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Cockpit: Retrain", "Cockpit: Quit", "Forecast: Refresh", "Forecast: ◀ Quarter"} <= titles
        await pilot.press("2")
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Review: Commit", "Review: Note", "Review: Commit…", "Cockpit: Forecast"} <= titles


async def test_retrain_from_the_palette_reports_too_little_history(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    app = build_app(service, service.settings)
    seen = []
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"retrain")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(app, pilot)
        await settle(app, pilot)
        errors = [m.notification for m in seen if isinstance(m, Notify) and m.notification.severity == "error"]
        assert errors and errors[-1].title == "Not enough history"
        assert isinstance(app.screen, ForecastScreen)  # the dialog is gone, the data stays
        assert app.scores_version == 0


async def test_retrain_key_rescores_and_reloads_the_screen(isolated_dirs, monkeypatch):
    reported = []
    shown = ProgressScreen.progress
    monkeypatch.setattr(ProgressScreen, "progress", lambda self, *a: (reported.append(a), shown(self, *a)))
    service = demo_service()
    app = build_app(service, service.settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        with service.store() as store:
            before = store.latest_model_run()["id"]
        reported.clear()
        await pilot.press("T")
        await settle(app, pilot)
        await settle(app, pilot)
        assert app.scores_version == 2
        with service.store() as store:
            assert store.latest_model_run()["id"] == before + 1
        assert isinstance(app.screen, ForecastScreen) and app.screen.scores_seen == 2
        messages = [message for _, _, message in reported]
        assert messages[0] == "Reading deal histories" and "Scoring open deals" in messages
        assert [done for done, _, _ in reported] == sorted(done for done, _, _ in reported)


async def test_a_failed_first_sync_closes_its_dialog_and_says_why(isolated_dirs):
    from connectors import ConnectorError

    service = demo_service()

    async def unreachable(connector, **kwargs):
        with service.store():  # a real sync opens (creates) the store before the first request
            pass
        raise ConnectorError("CRM unreachable", "connection refused by crm.example.com; check the address")

    service.sync = unreachable
    app = build_app(service, service.settings)
    seen = []
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await settle(app, pilot)
        await settle(app, pilot)
        assert isinstance(app.screen, ForecastScreen)
        errors = [m.notification for m in seen if isinstance(m, Notify) and m.notification.severity == "error"]
        assert [e.title for e in errors] == ["CRM unreachable"]
