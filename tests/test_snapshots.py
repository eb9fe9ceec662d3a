"""Snapshot tests: every screen at 80x24 (the SSH default) and at 120x40, in the states a manager sees.

The app runs on a small seeded demo store with a fixed "today", so every run draws the same screen.
Scores come from the stored model scores; none are stored here, so screens show their "not scored"
state (the model's numbers depend on scikit-learn's build, the layout must not).
Update after reviewing the report: `pytest tests/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import date

import pytest
from textual.widgets import Input
from textual.worker import WorkerFailed

from cockpit.app import build_app
from cockpit.config import Settings
from cockpit.service import CockpitService

TODAY = date(2026, 11, 20)
SMALL, LARGE = (80, 24), (120, 40)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap-store")
    service = CockpitService(Settings.model_validate({"demo": {"size": 400}}), path, today=TODAY)
    asyncio.run(service.sync(service.make_connector()))
    return path


@pytest.fixture
def app(demo_store, tmp_path):
    data = tmp_path / "store"
    shutil.copytree(demo_store, data)
    settings = Settings.model_validate({"demo": {"size": 400}})
    return build_app(CockpitService(settings, data, today=TODAY), settings)


async def settle(pilot) -> None:
    try:
        await pilot.app.workers.wait_for_complete()
    except WorkerFailed:
        pass  # the app reports it; the error snapshot shows how
    # a view that arrives repaints on the next refreshes (bars size themselves to the width they get)
    for _ in range(3):
        await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    for inp in pilot.app.screen.query(Input):
        inp.cursor_blink = False
    await pilot.pause()


def go(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
@pytest.mark.parametrize(
    "keys",
    [
        pytest.param((), id="forecast"),
        pytest.param(("right_square_bracket",), id="forecast-next-quarter"),
        pytest.param(("2",), id="review"),
        pytest.param(("2", "c", "s", "b"), id="review-calls"),
        pytest.param(("2", "e"), id="review-exceptions"),
        pytest.param(("3",), id="deals"),
        pytest.param(("3", "enter"), id="deal"),
        pytest.param(("4",), id="changes"),
        pytest.param(("4", "down", "enter"), id="changes-expanded"),
        pytest.param(("5",), id="history"),
        pytest.param(("question_mark",), id="help"),
    ],
)
def test_screens(snap_compare, app, keys, size):
    assert snap_compare(app, terminal_size=size, run_before=go(*keys))


def test_commit_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=LARGE, run_before=go("2", "c", "C"))


def test_note_prompt(snap_compare, app):
    assert snap_compare(app, terminal_size=SMALL, run_before=go("2", "n", *"CFO signs Friday"))


def test_command_palette(snap_compare, app):
    assert snap_compare(app, terminal_size=SMALL, run_before=go("ctrl+p", *"review"))


@pytest.fixture
def no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")  # read when the app is built, so before `app`


def test_forecast_without_colour(no_color, snap_compare, app):
    assert snap_compare(app, terminal_size=SMALL, run_before=go())


def test_error_keeps_the_screen_and_says_what_to_do(snap_compare, app):
    """A failed load leaves the screen as it was, with one titled notification saying what to do."""
    from cockpit.forecast.config import FxError

    def broken(*args, **kwargs):
        raise FxError("no exchange rate for CNY on 2026-11-20; add one to [forecast] fx_rates")

    app.service.forecast_view = broken
    assert snap_compare(app, terminal_size=SMALL, run_before=go())


@pytest.mark.parametrize("keys", [(), ("2",)], ids=["forecast", "review"])
def test_wide_terminal(snap_compare, app, keys):
    """200x60: the panels spread out, nothing stretches to absurd widths."""
    assert snap_compare(app, terminal_size=(200, 60), run_before=go(*keys))
