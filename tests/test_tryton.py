"""The Tryton connector against a real trytond server on 127.0.0.1.

`.ci/run` starts the server with `.ci/tryton-server.sh start` and exports TRYTON_URL, TRYTON_DB,
TRYTON_USER and TRYTON_PASSWORD; without them this module starts (and stops) one itself with the
same script, or skips when trytond is not installed in this interpreter's environment.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from cockpit.models import SyncBatch, SyncProgress
from cockpit.store import Store
from connectors import ConnectorError
from connectors._http import RetryPolicy
from connectors.tryton import TrytonConnector, _Cursor, _error_parts
from tests.tryton_seed import Rpc, connect

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "tryton-server.sh"
HISTORY_FIELDS = ["state", "amount", "end_date"]


@dataclass(frozen=True)
class Server:
    url: str
    db: str
    user: str
    password: str


def _from_env() -> Server | None:
    values = [os.environ.get(k) for k in ("TRYTON_URL", "TRYTON_DB", "TRYTON_USER", "TRYTON_PASSWORD")]
    return Server(*values) if all(values) else None  # type: ignore[arg-type]


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The server .ci/run started, or one started here for this test session."""
    ready = _from_env()
    if ready is not None:
        yield ready
        return
    if importlib.util.find_spec("trytond") is None:
        pytest.skip("trytond not installed; .ci/run installs it")
    env = {**os.environ, "TRYTON_PYTHON": sys.executable}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, env=env, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(f"{SCRIPT.name} start failed:\n{started.stderr[-3000:]}")
    env_file = Path(started.stdout.strip().splitlines()[-1])
    values = _read_env_file(env_file)
    try:
        yield Server(
            values["TRYTON_URL"], values["TRYTON_DB"], values["TRYTON_USER"], values["TRYTON_PASSWORD"]
        )
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(env_file)], capture_output=True, env=env, timeout=60)


@pytest.fixture(scope="session")
def admin(server: Server) -> Iterator[Rpc]:
    """A direct JSON-RPC client (tests/tryton_seed.py), independent of the connector."""
    with connect(server.url, server.db, server.user, server.password) as rpc:
        yield rpc


def make(server: Server, page_size: int = 6, **kwargs) -> TrytonConnector:
    return TrytonConnector(server.url, server.db, server.user, server.password, page_size=page_size, **kwargs)


async def collect(connector: TrytonConnector, cursor: str | None = None, progress=None) -> list[SyncBatch]:
    return [batch async for batch in connector.batches(cursor, progress)]


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc)


def expected_history(admin: Rpc, record_id: int) -> list[tuple[datetime, str, Decimal | None, date | None]]:
    """What the server holds: one row per revision that changed state, amount or end date."""
    out: list[tuple[datetime, str, Decimal | None, date | None]] = []
    for at, row in admin.history(record_id, HISTORY_FIELDS):
        current = (row["state"], row["amount"], row["end_date"])
        if out and out[-1][1:] == current:
            continue
        out.append((utc(at), *current))
    return out


# --------------------------------------------------------------------------------------------------
# Full sync and history
# --------------------------------------------------------------------------------------------------


async def test_full_sync_returns_every_opportunity_as_the_server_holds_it(server, admin):
    seen: list[SyncProgress] = []
    batches = await collect(make(server), progress=seen.append)
    rows = admin.model(
        "sale.opportunity",
        "search_read",
        [],
        0,
        None,
        [["id", "ASC"]],
        [
            "state",
            "amount",
            "currency.code",
            "party.rec_name",
            "employee.rec_name",
            "end_date",
            "description",
            "conversion_probability",
        ],
    )
    opps = {o.id: o for b in batches for o in b.opportunities}
    assert sorted(opps) == sorted(str(r["id"]) for r in rows)
    assert len(rows) >= 20 and len(batches) >= 4  # several pages of 6, then the final batch

    (pipeline,) = batches[0].pipelines
    assert [s.id for s in pipeline.stages] == ["lead", "opportunity", "converted", "won", "lost", "cancelled"]
    flags = {s.id: (s.is_closed, s.is_won) for s in pipeline.stages}
    assert flags == {
        "lead": (False, False),
        "opportunity": (False, False),
        "converted": (True, True),
        "won": (True, True),
        "lost": (True, False),
        "cancelled": (True, False),
    }
    assert all(not b.pipelines for b in batches[1:])

    owners = {o.id: o for b in batches for o in b.owners}
    for row in rows:
        opp = opps[str(row["id"])]
        assert opp.stage_id == row["state"]
        assert opp.amount == (row["amount"] or Decimal(0))
        assert opp.currency == row["currency."]["code"]
        assert opp.account == ((row.get("party.") or {}).get("rec_name") or "")
        assert opp.close_date == row["end_date"]
        assert opp.is_closed == (row["state"] not in ("lead", "opportunity"))
        assert opp.is_won == (row["state"] in ("converted", "won"))
        if row.get("employee."):
            assert owners[opp.owner_id].name == row["employee."]["rec_name"]
        else:
            assert opp.owner_id.startswith("user-") and opp.owner_id in owners
    assert {o.currency for o in opps.values()} == {"USD", "EUR"}
    alice = next(o for o in owners.values() if o.name == "Alice Seller")
    assert owners[alice.manager_id].name == "Maria Manager"
    assert any(o.probability == Decimal("0.8") for o in opps.values())  # the rep's 0.8, not the stage's 0.5
    assert seen[-1].records == len(rows) and seen[-1].pages == len(batches) - 1


async def test_history_is_what_the_server_holds(server, admin):
    batches = await collect(make(server, page_size=7))
    changes: dict[str, list] = {}
    for batch in batches:
        for change in batch.changes:
            changes.setdefault(change.opportunity_id, []).append(change)
    opps = {o.id: o for b in batches for o in b.opportunities}
    with ThreadPoolExecutor(4) as pool:  # the direct reads: one per revision, so a few at a time
        server_side = dict(zip(opps, pool.map(lambda i: expected_history(admin, int(i)), opps), strict=True))
    states_seen: set[str] = set()
    for opp_id, opp in opps.items():
        expected = server_side[opp_id]
        got = changes[opp_id]
        assert [(c.changed_at, c.stage_id) for c in got] == [(e[0], e[1]) for e in expected], opp_id
        for change, (_, _, amount, end_date) in zip(got, expected, strict=True):
            if amount is not None:
                assert change.amount == amount, opp_id
            if end_date is not None:
                assert change.close_date == end_date, opp_id
        assert got[-1].stage_id == opp.stage_id
        if opp.is_closed:
            entered = (
                next(c.changed_at for c in reversed(got) if c.stage_id != opp.stage_id)
                if len({c.stage_id for c in got}) > 1
                else got[0].changed_at
            )
            assert opp.closed_at is not None and opp.closed_at >= entered
        states_seen.update(c.stage_id for c in got)
    assert states_seen >= {"lead", "opportunity", "converted", "won", "lost", "cancelled"}
    # the deal that went opportunity -> lead -> opportunity keeps the backward move
    moves = {opp_id: [c.stage_id for c in rows] for opp_id, rows in changes.items()}
    assert ["lead", "opportunity", "lead", "opportunity"] in moves.values()


# --------------------------------------------------------------------------------------------------
# Incremental sync, deletions, interruption
# --------------------------------------------------------------------------------------------------


async def test_incremental_sync_fetches_only_what_changed(server, admin):
    connector = make(server)
    first = await collect(connector)
    cursor = first[-1].cursor
    nothing = await collect(connector, cursor)
    assert [o.id for b in nothing for o in b.opportunities] == []
    assert nothing[-1].cursor == cursor and nothing[-1].pipelines  # every run records its cursor

    (target,) = admin.model(
        "sale.opportunity", "search", [["state", "=", "opportunity"]], 0, 1, [["id", "ASC"]]
    )
    before = admin.model("sale.opportunity", "read", [target], ["amount"])[0]["amount"]
    admin.model("sale.opportunity", "write", [target], {"amount": before + Decimal("1234.50")})
    admin.model("sale.opportunity", "lead", [target])

    again = await collect(connector, cursor)
    assert [o.id for b in again for o in b.opportunities] == [str(target)]
    opp = again[0].opportunities[0]
    assert opp.stage_id == "lead" and opp.amount == before + Decimal("1234.50")
    history = [c for b in again for c in b.changes]
    assert [(c.changed_at, c.stage_id, c.amount) for c in history][-2:] == [
        (e[0], e[1], e[2]) for e in expected_history(admin, target)
    ][-2:]
    assert _Cursor.decode(again[-1].cursor).id == target
    assert [o.id for b in await collect(connector, again[-1].cursor) for o in b.opportunities] == []
    admin.model("sale.opportunity", "opportunity", [target])  # leave it as the other tests expect


async def test_deleted_opportunity_is_reported_once(server, admin):
    doomed = admin.create("sale.opportunity", {"description": "Short-lived"})
    connector = make(server)
    cursor = (await collect(connector))[-1].cursor
    admin.model("sale.opportunity", "cancel", [doomed])
    admin.model("sale.opportunity", "delete", [doomed])
    after = await collect(connector, cursor)
    assert [d for b in after for d in b.deleted_ids] == [str(doomed)]
    assert [o.id for b in after for o in b.opportunities] == []
    later = await collect(connector, after[-1].cursor)
    assert [d for b in later for d in b.deleted_ids] == []


async def test_sync_interrupted_at_a_random_page_resumes_to_the_same_store(server, admin, tmp_path):
    connector = make(server, page_size=3)
    with Store.open(tmp_path / "whole.db") as whole:
        run = whole.begin_sync("tryton", None)
        for batch in await collect(connector):
            whole.apply_batch(run, batch)
        whole.finish_sync(run, "ok")
        expected = list(whole.histories())

    pages = len(expected) // 3
    stop_after = random.Random(time.time_ns()).randint(1, pages - 1)
    with Store.open(tmp_path / "resumed.db") as store:
        run = store.begin_sync("tryton", None)
        written = 0
        with pytest.raises(KeyboardInterrupt):
            async with aclosing(connector.batches(None)) as stream:
                async for batch in stream:
                    store.apply_batch(run, batch)
                    written += 1
                    if written == stop_after:
                        raise KeyboardInterrupt  # the user pressed Ctrl-C after `stop_after` pages
        store.finish_sync(run, "interrupted")
        partial = list(store.histories())
        assert 0 < len(partial) < len(expected), stop_after
        assert all(h.changes for h in partial)  # every deal written came with its whole history

        run = store.begin_sync("tryton", None)
        resumed = await collect(connector, store.resume_cursor("tryton", None))
        assert sum(len(b.opportunities) for b in resumed) == len(expected) - len(partial), stop_after
        for batch in resumed:
            store.apply_batch(run, batch)
        store.finish_sync(run, "ok")
        assert list(store.histories()) == expected, stop_after


# --------------------------------------------------------------------------------------------------
# check() and errors
# --------------------------------------------------------------------------------------------------


async def test_check_reports_what_it_can_read_and_writes_nothing(server, admin):
    def newest() -> datetime:
        return admin.model(
            "sale.opportunity", "search_read", [], 0, 1, [["last_modified_at", "DESC"]], ["last_modified_at"]
        )[0]["last_modified_at"]

    before = newest()
    lines = await make(server).check()
    total = admin.model("sale.opportunity", "search_count", [])
    open_ = admin.model("sale.opportunity", "search_count", [["state", "in", ["lead", "opportunity"]]])
    text = "\n".join(lines)
    assert f"database {server.db!r}" in text and "Read access to sale.opportunity" in text
    assert f"{total} opportunities readable, {open_} open" in text
    assert "stage history readable" in text
    assert newest() == before


def new_user(admin: Rpc) -> tuple[str, str]:
    """A fresh user without any group (failed sign-ins are throttled per login: admin is never locked)."""
    login, password = f"viewer{time.time_ns()}", "Viewer-pass-2026!x"
    admin.create("res.user", {"login": login, "name": "Viewer", "password": password})
    return login, password


async def test_wrong_password_is_a_clear_error_without_the_password(server, admin, caplog):
    login, password = new_user(admin)
    wrong = "not-the-password-7f3a9c"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as caught:
        await collect(TrytonConnector(server.url, server.db, login, wrong))
    text = f"{caught.value.title} {caught.value.message} {caught.value} {caplog.text}"
    assert caught.value.title == "Tryton rejected the sign-in"
    assert "COCKPIT_TRYTON_PASSWORD" in text and server.db in text and login in text
    assert wrong not in text and password not in text and "Traceback" not in text


async def test_user_without_read_access_gets_permission_denied(server, admin):
    login, password = new_user(admin)
    connector = TrytonConnector(server.url, server.db, login, password)
    for attempt in (connector.check(), collect(connector)):
        with pytest.raises(ConnectorError) as caught:
            await attempt
        assert caught.value.title == "No permission in Tryton"
        assert login in caught.value.message and "Sales Opportunity" in caught.value.message


async def test_unknown_database_is_named(server):
    with pytest.raises(ConnectorError) as caught:
        await collect(TrytonConnector(server.url, "no_such_db", server.user, server.password))
    assert caught.value.title == "Tryton database not found"
    assert "'no_such_db'" in caught.value.message


async def test_unreachable_server_names_the_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    connector = TrytonConnector(url, "crm", "admin", "secret-password", retry=RetryPolicy(attempts=1))
    with pytest.raises(ConnectorError) as caught:
        await connector.check()
    assert caught.value.title == "Cannot reach Tryton"
    assert url in caught.value.message and "Traceback" not in caught.value.message


async def test_json_rpc_error_objects_become_connector_errors(server):
    connector = make(server)
    rpc = connector._rpc()
    try:
        await rpc.start()
        with pytest.raises(ConnectorError) as caught:
            await rpc.model("read", [999999], ["state"])
        assert caught.value.title == "Tryton refused a request"
        assert "999999" in caught.value.message
        with pytest.raises(ConnectorError) as caught:
            await rpc.model("read", [1], ["no_such_field"])
        assert caught.value.title == "Tryton reported an error"
        assert "no_such_field" in caught.value.message and "Traceback" not in caught.value.message
    finally:
        await rpc.aclose()


def test_missing_module_and_error_shapes_are_read():
    rpc = make(Server("http://127.0.0.1:9", "crm", "admin", "pw"))._rpc()
    assert (
        rpc._rpc_error("model.sale.opportunity.search", ["'sale.opportunity'", ""]).title
        == "Tryton module not activated"
    )
    assert _error_parts(["UserError", ['You are not allowed to access "Sale Opportunity".', "", None]]) == (
        "UserError",
        'You are not allowed to access "Sale Opportunity".',
    )
    assert _error_parts(["'x'", "Traceback (most recent call last): ..."]) == ("'x'", "")


# --------------------------------------------------------------------------------------------------
# Settings and cursor (no server needed)
# --------------------------------------------------------------------------------------------------


def test_from_settings_takes_the_password_from_the_environment():
    table = {"url": "http://erp:8000", "database": "erp", "username": "cockpit", "page_size": 50}
    connector = TrytonConnector.from_settings(table, {"COCKPIT_TRYTON_PASSWORD": "s3cret-value"})
    assert (connector.url, connector.database, connector.username, connector.page_size) == (
        "http://erp:8000",
        "erp",
        "cockpit",
        50,
    )
    assert "s3cret-value" not in repr(connector)
    with pytest.raises(ConnectorError, match="COCKPIT_TRYTON_PASSWORD"):
        TrytonConnector.from_settings(table, {})
    with pytest.raises(ConnectorError, match="databse"):
        TrytonConnector.from_settings({**table, "databse": "x"}, {"COCKPIT_TRYTON_PASSWORD": "x"})
    with pytest.raises(ConnectorError, match="url"):
        TrytonConnector.from_settings({"database": "erp", "username": "u"}, {"COCKPIT_TRYTON_PASSWORD": "x"})


def test_cursor_round_trips_and_foreign_cursors_are_refused():
    cursor = _Cursor(datetime(2026, 11, 23, 19, 23, 48, 201942, tzinfo=timezone.utc), 7, 20, None)
    assert _Cursor.decode(cursor.encode()) == cursor
    assert _Cursor.decode(None) == _Cursor()
    with pytest.raises(ConnectorError, match="full sync"):
        _Cursor.decode('{"nextRecordsUrl": "/services/data"}')


async def test_expired_session_is_renewed_once(server, admin, caplog):
    caplog.set_level(logging.DEBUG)
    rpc = make(server)._rpc()
    try:
        await rpc.start()
        first = rpc.auth._header
        await rpc.call("common.db.logout")  # the server forgets the session, as when it expires
        assert await rpc.model("search_count", []) == admin.model("sale.opportunity", "search_count", [])
        assert rpc.auth._header not in (None, first)
        for header in (first, rpc.auth._header):
            assert header.split()[1] not in caplog.text and server.password not in caplog.text
    finally:
        await rpc.aclose()
