"""Sync through the service: every batch is a transaction, interrupted runs resume from their cursor."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from cockpit.config import Settings
from cockpit.service import CockpitService
from connectors.demo import DemoConnector

AS_OF = date(2026, 11, 23)


class Flaky:
    """A connector that dies after `fail_after` batches, as a dropped connection would."""

    name = "demo"

    def __init__(self, inner: DemoConnector, fail_after: int) -> None:
        self.inner = inner
        self.fail_after = fail_after

    async def batches(self, cursor, progress=None):
        n = 0
        async for batch in self.inner.batches(cursor, progress):
            if n == self.fail_after:
                raise ConnectionError("connection reset by peer")
            yield batch
            n += 1


def table(service, sql):
    with service.store() as store:
        return store.conn.execute(sql).fetchall()


@pytest.fixture
def service(isolated_dirs):
    return CockpitService(Settings(), today=AS_OF)


def test_demo_sync_fills_the_store_and_records_the_run(service):
    summary = asyncio.run(service.sync(DemoConnector(size=600, as_of=AS_OF, batch_size=200)))
    assert (summary.opportunities, summary.batches) == (600, 4)
    with service.store() as store:
        assert store.counts()["opportunity"] == 600
        [run] = store.sync_runs()
        assert (run.status, run.batches, run.cursor) == ("ok", 4, "600")
        assert store.latest_change_day() <= AS_OF


def test_interrupted_sync_keeps_whole_batches_and_resumes(service):
    full = CockpitService(Settings(), service.data_dir.parent / "full", today=AS_OF)
    asyncio.run(full.sync(DemoConnector(size=600, as_of=AS_OF, batch_size=200)))
    with pytest.raises(ConnectionError):
        asyncio.run(service.sync(Flaky(DemoConnector(size=600, as_of=AS_OF, batch_size=200), fail_after=2)))
    with service.store() as store:
        [run] = store.sync_runs()
        assert run.status == "failed" and "connection reset" in run.error
        assert store.counts()["opportunity"] == 200  # the org batch and one deal batch: whole batches only
        assert run.cursor == "200"
    summary = asyncio.run(service.sync(DemoConnector(size=600, as_of=AS_OF, batch_size=200)))
    assert summary.resumed_from == "200" and summary.opportunities == 400
    query = "SELECT opportunity_id, seq, changed_at, stage_id, amount, close_date FROM stage_change ORDER BY 1, 2"
    assert table(service, query) == table(full, query)
    assert table(service, "SELECT * FROM opportunity ORDER BY id") != []
    # a finished demo sync starts over next time (the demo is regenerated for the new day)
    again = asyncio.run(service.sync(DemoConnector(size=600, as_of=AS_OF, batch_size=200)))
    assert again.resumed_from is None and again.opportunities == 600
