"""The cockpit in a real terminal: tmux at 80x24, keys sent, the screen captured and read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import date

import pytest

from cockpit.config import Settings
from cockpit.service import CockpitService
from cockpit.store import Store
from tests.factories import small_batch

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")




@pytest.fixture
def tmux_session(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    session = f"cockpit-test-{os.getpid()}"
    socket = str(isolated_dirs / "tmux.sock")
    env = {k: v for k, v in os.environ.items() if k.startswith(("COCKPIT_", "XDG_", "PATH", "HOME"))}
    command = " ".join([sys.executable, "-m", "cockpit", "--as-of", "2026-10-10"])
    subprocess.run(
        ["tmux", "-S", socket, "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
         "env", *[f"{k}={v}" for k, v in env.items()], "TERM=xterm-256color", "sh", "-c", command],
        check=True,
    )
    try:
        yield session, socket
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)


def test_cockpit_runs_in_a_real_80x24_terminal(tmux_session):
    session, socket = tmux_session

    def cap() -> str:
        return subprocess.run(["tmux", "-S", socket, "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    def send(*keys: str) -> None:
        subprocess.run(["tmux", "-S", socket, "send-keys", "-t", session, *keys], check=True)

    deadline = time.monotonic() + 30
    while "Quota" not in cap():
        assert time.monotonic() < deadline, cap()
        time.sleep(0.1)
    send("3")
    while "open pipeline" not in (screen := cap()):
        assert time.monotonic() < deadline, screen
        time.sleep(0.1)
    lines = screen.splitlines()
    assert "FY2026-Q4" in lines[0] and "3 deals" in lines[0]
    assert all(len(line) <= 80 for line in lines)
    body = "\n".join(lines)
    assert "王磊" in body and "Alice Smith" in body
    send("/")
    deadline = time.monotonic() + 10
    while "enter to apply" not in cap():
        assert time.monotonic() < deadline, "the filter box never opened"
        time.sleep(0.05)
    send("-l", "alice")
    send("Enter")
    deadline = time.monotonic() + 10
    while "1 of 3" not in (screen := cap()):
        assert time.monotonic() < deadline, screen
        time.sleep(0.1)
    assert "Alice Smith" in screen and "王磊" not in screen
    send("q")
    deadline = time.monotonic() + 10
    while "open pipeline" in cap():
        assert time.monotonic() < deadline, "q did not quit"
        time.sleep(0.1)
