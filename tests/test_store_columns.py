"""`Store.history_columns` reads what `Store.histories` reads, straight into columns."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cockpit.models import Activity, ForecastCategory, StageChange, SyncBatch
from cockpit.models.columns import HistoryColumns, ReasonColumns, ScoreColumns
from cockpit.store import Store
from cockpit.store.store import _ORDINAL, _seconds, from_us, to_us
from connectors.demo import DemoConnector
from tests.factories import OWNERS, PIPELINE, at, deal_with_history

UTC = timezone.utc
US_RANGE = (to_us(datetime(1, 1, 1, tzinfo=UTC)), to_us(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)))


def assert_same_columns(store: Store, closed: bool | None) -> HistoryColumns:
    got = store.history_columns(closed=closed)
    want = HistoryColumns.of(list(store.histories(closed=closed)))
    assert got.attributes() == want.attributes()
    assert len(got.attribute_sets) <= len(want.attribute_sets)  # the store's are shared
    for field in dataclasses.fields(HistoryColumns):
        if field.name in ("attribute_set", "attribute_sets"):
            continue
        mine, theirs = getattr(got, field.name), getattr(want, field.name)
        if isinstance(theirs, np.ndarray):
            assert mine.dtype == theirs.dtype, field.name
            np.testing.assert_array_equal(mine, theirs, err_msg=field.name)  # NaN equals NaN here
        else:
            assert mine == theirs, field.name
    return got


def sync(store: Store, batches) -> None:
    run = store.begin_sync("test", None)
    for batch in batches:
        store.apply_batch(run, batch)
    store.finish_sync(run, "ok")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    with Store.open(tmp_path_factory.mktemp("demo") / "cockpit.db") as store:
        sync(store, DemoConnector(seed=7, size=1500, as_of=date(2026, 3, 15), batch_size=500).generate())
        yield store


@pytest.mark.parametrize("closed", [None, True, False])
def test_store_columns_of_the_demo_equal_the_columns_of_its_histories(demo_store, closed):
    got = assert_same_columns(demo_store, closed)
    assert len(got) > 50 and len(got.change_at) > len(got) and len(got.activity_day) > 0
    assert got.attribute_sets and any(got.attribute_sets)


def _edge_batch() -> SyncBatch:
    """Deals the demo lacks: CJK ids and names, no creation time, no categories, no close dates,
    times before 1970 and past 2255 (beyond 2**53 µs), shared and distinct attributes."""
    d = date
    deals = []
    for deal_id, owner, steps in [
        ("机会-001", "r1", [(d(2026, 7, 1), "qualify", Decimal("1234.5"), d(2026, 9, 30)),
                           (d(2026, 8, 1), "proposal", Decimal("0.1"), None),
                           (d(2026, 10, 5), "negotiate", Decimal("120000.33"), d(2026, 12, 31))]),
        ("a", "r2", [(d(2026, 6, 1), "qualify", Decimal(50000), d(2026, 8, 31)),
                     (d(2026, 8, 20), "won", None, d(2026, 8, 20))]),
        ("b-lost", "r1", [(d(1969, 12, 31), "qualify", Decimal("7E+3"), None),
                          (d(1970, 1, 2), "lost", None, d(1970, 1, 2))]),
        ("c-far", "r2", [(d(2300, 1, 1), "qualify", Decimal("9.99"), d(2400, 2, 29))]),
        ("d-old", "r1", [(d(1600, 3, 1), "proposal", Decimal(1), d(1, 1, 1))]),
    ]:
        opp, changes = deal_with_history(deal_id, steps, owner=owner)
        deals.append((opp, changes))
    # the first deal: categories, attributes, CJK name; the next: no creation time, no category
    first, first_changes = deals[0]
    deals[0] = (
        first.model_copy(update={"name": "上海云图 扩容", "forecast_category": ForecastCategory.COMMIT,
                                 "attributes": {"region": "华东", "employees": 120.0, "flag": True}}),
        [c.model_copy(update={"forecast_category": ForecastCategory.BEST_CASE if i else None})
         for i, c in enumerate(first_changes)],
    )
    deals[1] = (deals[1][0].model_copy(update={"created_at": None, "attributes": {"region": "华东",
                                                                                  "employees": 120.0,
                                                                                  "flag": True}}),
                deals[1][1])
    deals[3] = (deals[3][0].model_copy(update={"attributes": {"region": "West"}, "close_date": None}), deals[3][1])
    activities = [
        Activity(opportunity_id="机会-001", on=d(2026, 7, 3)),
        Activity(opportunity_id="机会-001", on=d(2026, 7, 2), kind="call"),
        Activity(opportunity_id="机会-001", on=d(2026, 9, 1)),
        Activity(opportunity_id="c-far", on=d(2300, 1, 2)),
        Activity(opportunity_id="b-lost", on=d(1969, 12, 31)),
    ]
    return SyncBatch(
        pipelines=[PIPELINE], owners=OWNERS, opportunities=[o for o, _ in deals],
        changes=[c for _, cs in deals for c in cs], activities=activities, cursor="1",
    )


@pytest.fixture
def edge_store(tmp_path):
    with Store.open(tmp_path / "cockpit.db") as store:
        sync(store, [_edge_batch()])
        # a deal without any history row (the store itself always writes one: only SQL makes this)
        store.conn.execute("DELETE FROM stage_change WHERE opportunity_id = 'c-far'")
        yield store


@pytest.mark.parametrize("closed", [None, True, False])
def test_store_columns_of_unusual_deals_equal_the_columns_of_their_histories(edge_store, closed):
    got = assert_same_columns(edge_store, closed)
    assert got.deal_ids == sorted(got.deal_ids)


def test_store_columns_keep_every_deal_its_own_rows_in_order(edge_store):
    got = edge_store.history_columns()
    by_id = dict(zip(got.deal_ids, range(len(got))))
    assert got.deal_ids == ["a", "b-lost", "c-far", "d-old", "机会-001"]
    assert got.change_counts.tolist() == [2, 2, 0, 1, 3]
    assert got.activity_counts.tolist() == [0, 1, 1, 0, 3]
    start = int(got.change_counts[: by_id["机会-001"]].sum())
    rows = slice(start, start + 3)
    assert got.change_stage[rows] == ["qualify", "proposal", "negotiate"]
    assert got.change_amount[rows].tolist() == [1234.5, 0.1, 120000.33]
    assert got.change_close[rows].tolist()[0] == date(2026, 9, 30).toordinal()
    assert got.change_at[rows].tolist()[0] == at(date(2026, 7, 1)).timestamp()
    assert got.activity_day[-3:].tolist() == [date(2026, 7, 2).toordinal(), date(2026, 7, 3).toordinal(),
                                              date(2026, 9, 1).toordinal()]
    assert np.isnan(got.created_at[by_id["a"]]) and np.isnan(got.closed_at[by_id["c-far"]])
    assert got.category[by_id["a"]] == -1 and np.isnan(got.close_date[by_id["c-far"]])
    assert got.attribute_set[by_id["a"]] == got.attribute_set[by_id["机会-001"]]  # parsed once, shared


def test_store_columns_of_a_chunk_boundary_and_of_an_empty_store(edge_store, tmp_path):
    want = edge_store.history_columns()
    for chunk in (1, 2, 3):
        got = edge_store.history_columns(chunk=chunk)
        assert got.deal_ids == want.deal_ids and got.change_stage == want.change_stage
        np.testing.assert_array_equal(got.change_counts, want.change_counts)
        np.testing.assert_array_equal(got.activity_day, want.activity_day)
    with Store.open(tmp_path / "empty.db") as empty:
        got = assert_same_columns(empty, None)
    assert len(got) == 0 and got.change_at.dtype == np.float64


def test_store_columns_read_inside_a_callers_transaction(edge_store):
    with edge_store.transaction():
        assert len(edge_store.history_columns()) == 5
    assert not edge_store.conn.in_transaction


@given(st.integers(*US_RANGE) | st.integers(-(10**12), 10**16))
def test_stored_microseconds_become_the_seconds_of_timestamp(us):
    assert _seconds((us, None))[0] == from_us(us).timestamp()
    assert np.isnan(_seconds((us, None))[1])


@given(st.lists(st.integers(-(2**53) - 5, 2**53 + 5) | st.sampled_from([2**53, -(2**53), 2**53 - 1, 0]),
                max_size=20))
def test_seconds_around_the_float_exact_limit_are_timestamps(micros):
    got = _seconds(micros)
    assert got.tolist() == [from_us(us).timestamp() for us in micros]


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_sql_day_ordinal_is_python_ordinal(day):
    import sqlite3

    conn = sqlite3.connect(":memory:")
    got = conn.execute(f"SELECT {_ORDINAL.format('?')}, CAST({_ORDINAL.format('?1')} AS INTEGER)",
                       (day.isoformat(),)).fetchone()
    assert got == (float(day.toordinal()), day.toordinal())


def test_history_columns_builds_no_model_objects(edge_store, monkeypatch):
    import cockpit.store.store as store_module

    def refuse(*args, **kwargs):
        raise AssertionError("a model object was built")

    monkeypatch.setattr(store_module, "_build", refuse)
    monkeypatch.setattr(StageChange, "__init__", refuse)
    assert len(edge_store.history_columns()) == 5


def test_time_reads_back_in_the_far_past_and_future():
    for moment in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                   datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC), datetime(2255, 6, 5, tzinfo=UTC) + timedelta(
                       microseconds=1)):
        assert _seconds([to_us(moment)])[0] == moment.timestamp()


def test_score_columns_are_stored_as_their_scores_would_be(tmp_path):
    reasons = ReasonColumns(
        start=np.array([0, 2, 2, 3]),
        index=np.array([0, 1, 0]),
        feature=["deal_age", "owner_win_rate"],
        text=["deal open 41 days", "王伟's win rate 58% \"here\""],
        points=[-12.0, 4.5],
    )
    columns = ScoreColumns(
        date(2026, 11, 23), "m1", ["a", "b", "张"], np.array([0.5, 0.25, 0.9]), np.array([0.25, 0.0, 0.8]), reasons
    )
    stored = []
    for name, write in (("objects", lambda s: s.write_scores(columns.to_scores())),
                        ("columns", lambda s: s.write_score_columns(columns))):
        with Store.open(tmp_path / f"{name}.db") as store:
            assert write(store) == 3
            stored.append((store.scores(), store.conn.execute("SELECT * FROM score ORDER BY 1").fetchall()))
    assert stored[0] == stored[1]
    assert stored[1][0]["张"].reasons[0].text == "deal open 41 days"
