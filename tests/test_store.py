"""The store: migrations, bad files, atomic batches, sync runs, and the as-of reconstruction."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cockpit.models import DealHistory, SyncBatch, complete_history, snapshot_of
from cockpit.store import Store, StoreError
from cockpit.store.schema import APPLICATION_ID, SCHEMA_VERSION
from tests.factories import OWNERS, PIPELINE, random_history, small_batch


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "cockpit.db") as s:
        yield s


def load(store: Store, batch: SyncBatch) -> int:
    run = store.begin_sync("test", None)
    store.apply_batch(run, batch)
    store.finish_sync(run, "ok")
    return run


def test_new_store_is_wal_and_versioned(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.is_empty()


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        Store.open(path)


def test_corrupt_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "cockpit.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store.open(path)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "cockpit.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_directory_as_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="directory"):
        Store.open(tmp_path)


def test_batch_round_trip(store):
    batch = small_batch()
    load(store, batch)
    assert store.counts()["opportunity"] == 4
    assert [p.id for p in store.pipelines()] == ["nb"]
    assert {o.id for o in store.owners()} == {o.id for o in OWNERS}
    got = {h.deal.id: h for h in store.histories()}
    for opp in batch.opportunities:
        assert got[opp.id].deal == opp
        expected = complete_history(opp, [c for c in batch.changes if c.opportunity_id == opp.id])
        assert list(got[opp.id].changes) == expected


def test_failed_batch_leaves_store_as_before(store):
    load(store, small_batch())
    before = store.conn.execute("SELECT * FROM stage_change ORDER BY opportunity_id, seq").fetchall()
    bad = small_batch()
    # a deal in a stage the store doesn't know: the whole batch must be refused
    broken = bad.opportunities[0].model_copy(update={"stage_id": "nowhere", "amount": Decimal(1)})
    run = store.begin_sync("test", None)
    with pytest.raises(StoreError, match="nowhere"):
        store.apply_batch(run, SyncBatch(opportunities=[bad.opportunities[1], broken], changes=[]))
    after = store.conn.execute("SELECT * FROM stage_change ORDER BY opportunity_id, seq").fetchall()
    assert before == after
    assert store.opportunity("a").amount == Decimal(120000)


def test_interrupted_batch_rolls_back(store, monkeypatch):
    load(store, small_batch())
    before = store.counts()
    original = store.conn

    class Exploding:
        """A connection that fails on the history insert, as a crash mid-batch would."""

        def __getattr__(self, name):
            return getattr(original, name)

        def executemany(self, sql, rows):
            if "INSERT INTO stage_change" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return original.executemany(sql, rows)

    store.conn = Exploding()  # type: ignore[assignment]
    batch = small_batch()
    changed = [o.model_copy(update={"name": "renamed"}) for o in batch.opportunities]
    with pytest.raises(sqlite3.OperationalError):
        store.apply_batch(1, batch.model_copy(update={"opportunities": changed}))
    store.conn = original
    assert store.counts() == before
    assert store.opportunity("a").name == "Deal a"


def test_sync_runs_record_cursor_and_status(store):
    run = load(store, small_batch())
    [last] = store.sync_runs(1)
    assert (last.id, last.status, last.opportunities, last.cursor) == (run, "ok", 4, "1")
    assert store.resume_cursor("test", None) == "1"


def test_snapshot_reconstructs_past_states(store):
    load(store, small_batch())
    on = {s.deal.id: s for s in store.snapshot(date(2026, 8, 25))}
    assert set(on) == {"a"}  # b was won on 8-20; c created 9-1; d 10-2
    a = on["a"]
    assert a.deal.stage_id == "proposal"
    assert a.deal.amount == Decimal(100000)
    assert a.deal.close_date == date(2026, 9, 30)
    assert a.stage_entered_at.date() == date(2026, 8, 1)
    later = {s.deal.id: s for s in store.snapshot(date(2026, 10, 10))}
    assert set(later) == {"a", "c", "d"}
    assert later["a"].close_date_pushes == 1
    assert later["c"].deal.stage_id == "qualify"  # moved backward
    closed = {s.deal.id: s for s in store.snapshot(date(2026, 11, 30), open_only=False)}
    assert closed["d"].deal.is_closed and not closed["d"].deal.is_won
    assert closed["b"].deal.is_won


moves = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 6), st.integers(1, 500), st.integers(-20, 120)),
    min_size=1, max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deals=st.lists(moves, min_size=1, max_size=8), probe=st.integers(0, 10_000), shift=st.integers(-1, 1),
       lookback=st.integers(0, 10_000), reopen=st.booleans())
def test_snapshot_equals_brute_force_replay(tmp_path_factory, deals, probe, shift, lookback, reopen):
    """The SQL reconstruction equals replaying each history in Python, on any date: every deal, the
    open ones, and the open ones plus those closed since a day. Dates are drawn around the days
    something happened, where an off-by-one in the reconstruction would show."""
    path = tmp_path_factory.mktemp("asof") / "cockpit.db"
    start = date(2025, 1, 1)
    built = [random_history(f"x{i}", start + timedelta(days=3 * i), m, reopen=reopen) for i, m in enumerate(deals)]
    batch = SyncBatch(pipelines=[PIPELINE], owners=OWNERS, opportunities=[o for o, _ in built],
                      changes=[c for _, cs in built for c in cs])
    stages = {s.id: s for s in PIPELINE.stages}
    days = sorted({c.changed_at.date() for _, cs in built for c in cs})
    as_of = days[probe % len(days)] + timedelta(days=shift)
    since = days[lookback % len(days)]
    with Store.open(path) as store:
        load(store, batch)
        got = {s.deal.id: s for s in store.snapshot(as_of, open_only=False)}
        open_ids = {s.deal.id for s in store.snapshot(as_of)}
        recent_ids = {s.deal.id for s in store.snapshot(as_of, closed_from=since)}
    expected_open, expected_recent = set(), set()
    for opp, changes in built:
        ref = snapshot_of(DealHistory(deal=opp, changes=tuple(complete_history(opp, changes))), as_of, stages)
        if ref is None:
            assert opp.id not in got
            continue
        mine = got[opp.id]
        assert mine.deal.model_dump() == ref.deal.model_dump()
        assert (mine.stage_entered_at, mine.stage_changes, mine.close_date_pushes) == (
            ref.stage_entered_at, ref.stage_changes, ref.close_date_pushes)
        if not ref.deal.is_closed:
            expected_open.add(opp.id)
        if not ref.deal.is_closed or ref.stage_entered_at.date() >= since:
            expected_recent.add(opp.id)
    assert open_ids == expected_open
    assert recent_ids == expected_recent


def test_a_stage_that_stops_being_closed_brings_its_deals_back_into_the_pipeline(store):
    load(store, small_batch())
    assert "b" not in {s.deal.id for s in store.snapshot(date(2026, 8, 25))}  # won on 8-20
    reopened = PIPELINE.model_copy(update={"stages": tuple(
        s.model_copy(update={"is_closed": False, "is_won": False}) if s.id == "won" else s for s in PIPELINE.stages
    )})
    load(store, SyncBatch(pipelines=[reopened], owners=OWNERS))
    assert "b" in {s.deal.id for s in store.snapshot(date(2026, 8, 25))}


def test_migration_from_version_2_fills_the_lifespans_of_existing_deals(tmp_path):
    """A version-2 store (no first_at / closed_since yet) answers as-of queries right after migrating."""
    path = tmp_path / "cockpit.db"
    with Store.open(path) as store:
        load(store, small_batch())
        expected = [s.deal.id for s in store.snapshot(date(2026, 10, 10))]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE opportunity DROP COLUMN first_at")
    conn.execute("ALTER TABLE opportunity DROP COLUMN closed_since")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with Store.open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [s.deal.id for s in store.snapshot(date(2026, 10, 10))] == expected == ["a", "c", "d"]
        assert store.conn.execute("SELECT count(*) FROM opportunity WHERE first_at IS NULL").fetchone()[0] == 0


def test_migration_from_version_1_keeps_data(tmp_path):
    """A store made by schema 1 opens under the current cockpit with its data intact."""
    from cockpit.store.schema import MIGRATIONS
    from cockpit.store.store import _split_sql

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _split_sql(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO owner (id, name) VALUES ('x', 'Old Owner')")
    conn.close()
    with Store.open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [o.name for o in store.owners()] == ["Old Owner"]
        store.record_backtest("*", {"weeks": []})
        assert store.latest_backtest("*")["report"] == {"weeks": []}


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)))
def test_stored_times_read_back_to_the_microsecond(moment):
    from cockpit.store.store import from_us, to_us

    assert from_us(to_us(moment)) == moment
    assert from_us(to_us(moment)).tzinfo is not None
