"""The command line end to end: exit codes, outputs, and one clear sentence for bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import date

import pytest

from cockpit.__main__ import main
from cockpit.config import Settings
from cockpit.service import CockpitService
from cockpit.store import Store
from tests.factories import small_batch


@pytest.fixture
def seeded(isolated_dirs):
    service = CockpitService(Settings(), today=date(2026, 10, 10))
    with Store.open(service.store_path) as store:
        run = store.begin_sync("test", None)
        store.apply_batch(run, small_batch())
        store.finish_sync(run, "ok")
    return service


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_is_fast_and_light():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "cockpit", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cockpit ")
    modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "cockpit" in modules
    assert not modules & {"textual", "pydantic", "sklearn", "httpx", "sqlite3"}


def test_deals_json(seeded, capsys):
    code, out, _ = run_cli(capsys, "deals", "--as-of", "2026-10-10", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["quarter"] == "FY2026-Q4"
    assert [d["id"] for d in data["deals"]] == ["a", "c", "d"]
    a = data["deals"][0]
    assert (a["stage"], a["amount"], a["currency"], a["owner"]) == ("Negotiate", "120000", "CNY", "Wang Lei 王磊")


def test_deals_as_of_past_date_and_filters(seeded, capsys):
    code, out, _ = run_cli(capsys, "deals", "--as-of", "2026-08-25", "--quarter", "2026Q3", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["id"], r["stage"], r["amount"]) for r in rows] == [("a", "Proposal", "100000")]
    code, out, _ = run_cli(capsys, "deals", "--as-of", "2026-10-10", "--owner", "Alice", "--json")
    assert [d["id"] for d in json.loads(out)["deals"]] == ["c"]
    code, out, _ = run_cli(capsys, "deals", "--as-of", "2026-10-10", "--owner", "Li Na", "--stage", "qualify",
                           "--json")
    assert [d["id"] for d in json.loads(out)["deals"]] == ["c", "d"]


def test_deals_table_renders_cjk(seeded, capsys):
    code, out, _ = run_cli(capsys, "deals", "--as-of", "2026-10-10")
    assert code == 0
    assert "王磊" in out and "FY2026-Q4" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("deals", "--quarter", "Q9"), "cannot read quarter"),
        (("deals", "--stage", "Nowhere"), "no stage called 'Nowhere'"),
        (("deals", "--owner", "Nobody"), "no owner matches 'Nobody'"),
        (("deals", "--as-of", "yesterday"), "--as-of 'yesterday' is not a date"),
        (("sync", "--connector", "sap"), "no connector called 'sap'"),
        (("sync", "--connector", "csv"), "--source"),
        (("sync", "--demo-size", "3"), "out of range"),
    ],
)
def test_bad_usage_is_one_sentence(seeded, capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code in (1, 2)
    assert needle in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_empty_store_says_sync_first(isolated_dirs, capsys):
    code, _, err = run_cli(capsys, "deals")
    assert code == 1 and "cockpit sync" in err


def test_bad_config_exits_2(isolated_dirs, capsys):
    cfg = isolated_dirs / "config" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[calendar]\nfiscal_start_month = 13\n")
    code, _, err = run_cli(capsys, "deals")
    assert code == 2 and "calendar.fiscal_start_month = 13" in err
    cfg.write_text("connector = \n")
    code, _, err = run_cli(capsys, "deals")
    assert code == 2 and "not valid TOML" in err and "line 1" in err
    cfg.write_text("colour = 'red'\n")
    code, _, err = run_cli(capsys, "deals")
    assert code == 2 and "colour" in err


def test_corrupt_store_is_one_sentence(isolated_dirs, capsys):
    data = isolated_dirs / "data"
    data.mkdir()
    (data / "cockpit.db").write_bytes(b"garbage" * 1000)
    code, _, err = run_cli(capsys, "deals")
    assert code == 1 and "not a SQLite database" in err


def test_config_init_and_path(isolated_dirs, capsys):
    code, out, _ = run_cli(capsys, "config", "path")
    assert out.strip() == str(isolated_dirs / "config" / "config.toml")
    code, out, _ = run_cli(capsys, "config", "init")
    assert code == 0
    path = isolated_dirs / "config" / "config.toml"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    code, _, err = run_cli(capsys, "config", "init")
    assert code == 2 and "--force" in err
    code, out, _ = run_cli(capsys, "config", "show")
    assert json.loads(out)["connector"] == "demo"


def test_serve_answers_on_loopback(seeded, tmp_path):
    """`cockpit serve` serves the TUI's page to a browser on 127.0.0.1."""
    pytest.importorskip("textual_serve")
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cockpit", "serve", "--port", str(port), "--as-of", "2026-10-10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    body = page.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "cockpit serve never answered"
                time.sleep(0.2)
        assert "textual" in body.lower() and "Deal Cockpit" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
