"""The layers stay apart: checked in a fresh interpreter by what each import pulls into sys.modules."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import cockpit.app", {"sklearn", "scipy"}),
        # what a start of the TUI imports before its first paint (the log file's redaction included)
        ("import cockpit.app, cockpit.cli, connectors._redact", {"sklearn", "scipy", "httpx", "numpy"}),
        ("import cockpit.models, cockpit.models.submission", {"textual", "sklearn", "httpx", "sqlite3"}),
        ("import connectors, connectors.demo, connectors.csv", {"textual", "sklearn", "sqlite3"}),
        ("import cockpit.store", {"textual", "sklearn", "httpx"}),
        ("import cockpit.service", {"textual", "sklearn"}),
        ("import cockpit.forecast.rollup, cockpit.forecast.changes, cockpit.export", {"textual", "sklearn", "httpx"}),
    ],
)
def test_layer_imports(statement, forbidden):
    assert not loaded_after(statement) & forbidden
