"""The Pipedrive connector against the loopback fake company (tests/fakes/pipedrive.py)."""

from __future__ import annotations

import logging
import random
from decimal import Decimal

import pytest
from pydantic import SecretStr

from connectors import ConnectorError
from connectors._http import RetryPolicy, Timeouts
from connectors.pipedrive import PipedriveConnector, lost_stage, won_stage
from tests.fakes import LOST, WON, Dataset, Deal, Fault, Mirror, history_tuples, same_state, sync, sync_until_error
from tests.fakes.pipedrive import PipedriveFake, pipeline_of, stage_of, user_id

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.005, max_retry_after=3.0)
DEALS = "/api/v2/deals"


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(24, seed=3)


@pytest.fixture
def fake(dataset: Dataset):
    with PipedriveFake(dataset) as server:
        yield server


def make(fake: PipedriveFake, **options) -> PipedriveConnector:
    defaults = dict(api_token=SecretStr(fake.token), base_url=fake.url, page_size=8, flow_page_size=4,
                    requests_per_2s=10_000, retry=FAST, timeouts=Timeouts(read=2.0))
    defaults.update(options)
    return PipedriveConnector(**defaults)


def domain_stage(deal: Deal, stage: int) -> str:
    pipeline = str(pipeline_of(deal))
    if stage == WON:
        return won_stage(pipeline)
    if stage == LOST:
        return lost_stage(pipeline)
    return str(stage_of(deal, stage))


def expected_history(deal: Deal) -> list[tuple]:
    return [(s.at, domain_stage(deal, s.stage), s.amount, s.close_date, None) for s in deal.steps]


def assert_matches_server(mirror: Mirror, dataset: Dataset) -> None:
    live = {str(d.key + 1): d for d in dataset.live}
    assert set(mirror.deals) == set(live)
    for ident, deal in live.items():
        assert history_tuples(mirror.history[ident]) == expected_history(deal), ident
        opp = mirror.deals[ident]
        assert opp.stage_id == domain_stage(deal, deal.last.stage) and opp.amount == deal.last.amount
        assert (opp.is_closed, opp.is_won) == (deal.is_closed, deal.is_won)
    assert {c.stage_id for rows in mirror.history.values() for c in rows} <= mirror.stage_ids()


async def test_full_sync_brings_every_deal_with_its_history(fake, dataset):
    mirror, batches = await sync(make(fake))
    assert batches[0].opportunities == [] and {p.id for p in batches[0].pipelines} == {"1", "2"}
    assert_matches_server(mirror, dataset)
    sales = mirror.pipelines["1"]
    assert [s.id for s in sales.stages] == ["1", "2", "3", "4", "5", "1:won", "1:lost"]
    assert sales.stage("2").probability == Decimal("0.2") and sales.stage("1:won").is_won
    deal = dataset.deals[10]
    opp = mirror.deals["11"]
    assert opp.account == deal.account and opp.owner_id == str(user_id(deal.owner))
    assert opp.attributes == {"Region": deal.region, "Seats": float(deal.seats)}
    assert opp.probability == Decimal("0.35") and mirror.deals["12"].probability is None
    closed = next(d for d in dataset.live if d.is_closed)
    assert mirror.deals[str(closed.key + 1)].closed_at == next(s.at for s in closed.steps if s.stage >= WON)
    flows = [r for r in fake.requests if r.path.startswith("/v1/deals/")]
    assert all(r.path.endswith("/flow") and r.arg("items") == "dealChange" for r in flows)
    assert any(r.arg("start") != "0" for r in flows)  # flow pages followed
    assert all(r.header("x-api-token") == fake.token and r.arg("api_token") is None for r in fake.requests)


def mutate(dataset: Dataset) -> tuple[set[str], set[str]]:
    advanced = [dataset.deals[i] for i in (3, 17, 22)]
    for deal in advanced:
        dataset.advance(deal)
    dataset.touch(dataset.deals[8])
    dataset.delete(dataset.deals[20])
    return {str(d.key + 1) for d in advanced} | {"9"}, {"21"}


async def test_incremental_sync_fetches_only_what_changed(fake, dataset):
    connector = make(fake)
    mirror, _ = await sync(connector)
    changed, deleted = mutate(dataset)
    fake.clear()
    mirror, batches = await sync(connector, mirror.cursor, mirror)
    assert {o.id for b in batches for o in b.opportunities} == changed
    assert {i for b in batches for i in b.deleted_ids} == deleted
    assert {r.path.split("/")[3] for r in fake.requests if r.path.endswith("/flow")} == changed
    deal_requests = [r for r in fake.requests if r.path == DEALS]
    assert len(deal_requests) == 1 and deal_requests[0].arg("updated_since")
    assert_matches_server(mirror, dataset)
    fresh, _ = await sync(connector)
    assert same_state(mirror, fresh)


async def test_incremental_sync_with_nothing_changed_reads_no_history(fake):
    connector = make(fake)
    mirror, _ = await sync(connector)
    fake.clear()
    _, batches = await sync(connector, mirror.cursor, mirror)
    assert [len(b.opportunities) for b in batches] == [0]
    assert fake.count("/flow") == 0 and fake.count(DEALS) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_interrupted_sync_resumes_to_the_same_state(fake, seed):
    connector = make(fake)
    whole, _ = await sync(connector)
    match = "/flow" if seed % 2 else DEALS
    stop_at = random.Random(seed).randrange(1, fake.count(match))
    fake.clear()
    fake.inject(Fault("status", match=match, after=stop_at, times=None, status=500))
    mirror = Mirror()
    error = await sync_until_error(connector, None, mirror)
    assert isinstance(error, ConnectorError)
    fake.clear()
    assert await sync_until_error(connector, mirror.cursor, mirror) is None
    assert same_state(mirror, whole)


async def test_burst_limit_respected_and_429_waited_out():
    dataset = Dataset(8, seed=3)
    with PipedriveFake(dataset, burst_per_2s=10) as fake:
        mirror, _ = await sync(make(fake, requests_per_2s=10, flow_page_size=500))
        assert fake.rate_limited == 0
        assert_matches_server(mirror, dataset)
        mirror, _ = await sync(make(fake, requests_per_2s=10_000, flow_page_size=500))
        assert fake.rate_limited > 0
        assert_matches_server(mirror, dataset)


async def test_daily_budget_spent_stops_the_sync(dataset):
    with PipedriveFake(dataset, daily_budget=5) as fake:
        with pytest.raises(ConnectorError) as caught:
            await sync(make(fake))
        assert caught.value.title == "API quota exhausted" and "midnight UTC" in caught.value.message
        assert fake.used == 6


async def test_bad_token_and_secrets_stay_out_of_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, api_token=SecretStr("ffffffffffffffffffffffffffffffffffffffff")))
    assert caught.value.title == "Pipedrive rejected the credentials"
    fake.inject(Fault("status", match="/flow", after=3, status=503, times=None))
    connector = make(fake)
    with pytest.raises(ConnectorError) as failed:
        await sync(connector)
    text = caplog.text + str(caught.value) + str(failed.value) + repr(connector)
    assert "retry" in caplog.text
    assert "ffffffffffffffffffff" not in text and fake.token not in text


async def test_check_reports_what_can_be_read(fake):
    lines = await make(fake).check()
    assert "Pipelines: 2 (10 stages)" in lines and "Deal change history (flow): readable" in lines
    assert any(line.startswith("Signed in to 127.0.0.1 as Vera Boss") for line in lines)


def test_from_settings():
    connector = PipedriveConnector.from_settings({"company_domain": "acme"}, {"COCKPIT_PIPEDRIVE_API_TOKEN": "t0k3n"})
    assert connector.base_url == "https://acme.pipedrive.com" and "t0k3n" not in repr(connector)
    with pytest.raises(ConnectorError) as caught:
        PipedriveConnector.from_settings({}, {})
    assert "COCKPIT_PIPEDRIVE_API_TOKEN" in caught.value.message
