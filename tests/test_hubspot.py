"""The HubSpot connector against the loopback fake portal (tests/fakes/hubspot.py)."""

from __future__ import annotations

import logging
import random
from decimal import Decimal

import pytest
from pydantic import SecretStr

from cockpit.models import ForecastCategory
from connectors import ConnectorError
from connectors._http import RetryPolicy, Timeouts
from connectors.hubspot import UNASSIGNED, HubSpotConnector
from tests.fakes import Dataset, Deal, Fault, Mirror, history_tuples, same_state, sync, sync_until_error
from tests.fakes.hubspot import DEFAULT_STAGES, RENEWAL_PIPELINE, HubSpotFake, deal_id, owner_id, stage_id

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.005, max_retry_after=1.0)
SEARCH = "/crm/v3/objects/deals/search"
BATCH_READ = "/crm/v3/objects/deals/batch/read"


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(40, seed=5)


@pytest.fixture
def fake(dataset: Dataset):
    with HubSpotFake(dataset, search_cap=20) as server:
        yield server


def make(fake: HubSpotFake, **options) -> HubSpotConnector:
    defaults = dict(access_token=SecretStr(fake.token), base_url=fake.url, page_size=8, history_batch=5,
                    search_window=20, search_per_second=1000, retry=FAST, timeouts=Timeouts(read=2.0))
    defaults.update(options)
    return HubSpotConnector(**defaults)


def expected_history(deal: Deal) -> list[tuple]:
    return [(s.at, stage_id(deal, s.stage), s.amount, s.close_date, ForecastCategory(s.category)) for s in deal.steps]


def assert_matches_server(mirror: Mirror, dataset: Dataset) -> None:
    live = {deal_id(d.key): d for d in dataset.live}
    assert set(mirror.deals) == set(live)
    for ident, deal in live.items():
        assert history_tuples(mirror.history[ident]) == expected_history(deal), ident
        opp = mirror.deals[ident]
        assert opp.stage_id == stage_id(deal, deal.last.stage) and opp.amount == deal.last.amount
        assert (opp.is_closed, opp.is_won) == (deal.is_closed, deal.is_won)
    assert {c.stage_id for rows in mirror.history.values() for c in rows} <= mirror.stage_ids()


async def test_full_sync_brings_every_deal_with_its_history(fake, dataset):
    mirror, batches = await sync(make(fake))
    assert batches[0].opportunities == [] and {p.id for p in batches[0].pipelines} == {"default", RENEWAL_PIPELINE}
    assert_matches_server(mirror, dataset)
    default = mirror.pipelines["default"]
    assert [s.id for s in default.stages][-2:] == ["closedwon", "closedlost"]
    won = default.stage("closedwon")
    assert won.is_won and won.probability == Decimal("1.0") and won.category is ForecastCategory.CLOSED
    assert default.stage(DEFAULT_STAGES[2]).probability == Decimal("0.4")
    assert mirror.owners[owner_id(3)].team == "Sales East" and mirror.owners[owner_id(3)].name == "Dana Seller"
    assert mirror.deals[deal_id(0)].owner_id == UNASSIGNED and UNASSIGNED in mirror.owners
    assert mirror.deals[deal_id(3)].currency == "USD"  # no deal currency: the company's
    assert mirror.deals[deal_id(2)].currency == dataset.deals[2].currency
    assert mirror.deals[deal_id(2)].attributes == {"region": dataset.deals[2].region,
                                                   "seats": float(dataset.deals[2].seats)}
    searches = [r.json() for r in fake.requests if r.path == SEARCH]
    assert max(int(s["after"]) for s in searches) + 8 <= 20  # never paged past the cap
    assert any(s["filterGroups"] for s in searches)  # later windows start at the last modification seen


async def test_a_crowd_of_deals_modified_at_one_instant_is_walked_by_id(dataset):
    instant = dataset.deals[10].modified
    for deal in dataset.deals[:30]:
        if deal.last.at <= instant:
            deal.modified = instant
    crowd = sum(1 for d in dataset.deals if d.modified == instant)
    assert crowd > 20
    with HubSpotFake(dataset, search_cap=20) as fake:
        mirror, _ = await sync(make(fake))
        assert_matches_server(mirror, dataset)
        assert any(r.json()["sorts"][0]["propertyName"] == "hs_object_id" for r in fake.requests if r.path == SEARCH)


def mutate(fake: HubSpotFake, dataset: Dataset) -> tuple[set[str], set[str]]:
    advanced = [dataset.deals[i] for i in (3, 17, 33)]
    for deal in advanced:
        dataset.advance(deal)
    dataset.touch(dataset.deals[8])
    fake.delete(dataset.deals[20])
    return {deal_id(d.key) for d in advanced} | {deal_id(8)}, {deal_id(20)}


async def test_incremental_sync_fetches_only_what_changed(fake, dataset):
    connector = make(fake)
    mirror, _ = await sync(connector)
    changed, deleted = mutate(fake, dataset)
    fake.clear()
    mirror, batches = await sync(connector, mirror.cursor, mirror)
    assert {o.id for b in batches for o in b.opportunities} == changed
    assert {i for b in batches for i in b.deleted_ids} == deleted
    assert fake.count(SEARCH) == 1 and fake.count(BATCH_READ) == 1
    read = next(r.json() for r in fake.requests if r.path == BATCH_READ)
    assert {i["id"] for i in read["inputs"]} == changed
    assert_matches_server(mirror, dataset)
    fresh, _ = await sync(connector)
    assert same_state(mirror, fresh)


async def test_incremental_sync_with_nothing_changed_reads_no_deals(fake):
    connector = make(fake)
    mirror, _ = await sync(connector)
    fake.clear()
    _, batches = await sync(connector, mirror.cursor, mirror)
    assert [len(b.opportunities) for b in batches] == [0]
    assert fake.count(SEARCH) == 1 and fake.count(BATCH_READ) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_interrupted_sync_resumes_to_the_same_state(fake, seed):
    connector = make(fake)
    whole, _ = await sync(connector)
    calls = fake.count(SEARCH) + fake.count(BATCH_READ)
    fake.clear()
    stop_at = random.Random(seed).randrange(1, calls - 1)
    fake.inject(Fault("status", match="/crm/v3/objects/deals/", method="POST", after=stop_at, times=None,
                      status=502))
    mirror = Mirror()
    error = await sync_until_error(connector, None, mirror)
    assert isinstance(error, ConnectorError)
    fake.clear()
    assert await sync_until_error(connector, mirror.cursor, mirror) is None
    assert same_state(mirror, whole)


async def test_search_limit_is_respected_and_429_waited_out(dataset):
    with HubSpotFake(dataset, search_cap=20, search_per_second=4) as fake:
        mirror, _ = await sync(make(fake, search_per_second=4))
        assert fake.rate_limited == 0
        assert_matches_server(mirror, dataset)
        patient = RetryPolicy(attempts=6, backoff=0.25, max_backoff=1.0)
        mirror, _ = await sync(make(fake, search_per_second=1000, retry=patient))
        assert fake.rate_limited > 0
        assert_matches_server(mirror, dataset)


async def test_daily_limit_stops_the_sync(fake):
    body = {"status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT",
            "correlationId": "x", "policyName": "DAILY", "category": "RATE_LIMITS"}
    fake.inject(Fault("status", match=SEARCH, status=429, body=body, times=None))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake))
    assert caught.value.title == "API quota exhausted" and fake.count(SEARCH) == 1


async def test_bad_token_is_reported_without_the_token(fake, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, access_token=SecretStr("pat-na1-99999999-dead-beef-0000-123456789abc")))
    assert caught.value.title == "HubSpot rejected the credentials"
    assert "99999999-dead-beef" not in caplog.text + str(caught.value)
    assert fake.count() == 1  # a private-app token cannot be refreshed: no retry


async def test_missing_scopes(dataset):
    with HubSpotFake(dataset, missing_scopes=["/crm/v3/properties"]) as fake:
        mirror, _ = await sync(make(fake))
        assert all(not d.attributes for d in mirror.deals.values())  # sync goes on without attributes
    with HubSpotFake(dataset, missing_scopes=["/crm/v3/owners"]) as fake:
        with pytest.raises(ConnectorError) as caught:
            await sync(make(fake))
    assert caught.value.title == "No permission in HubSpot" and "crm.objects.owners.read" in caught.value.message


async def test_server_errors_retried_and_truncated_answers_reported(fake, dataset):
    fake.inject(Fault("status", match=BATCH_READ, after=1, status=503, times=2))
    mirror, _ = await sync(make(fake))
    assert_matches_server(mirror, dataset)
    fake.inject(Fault("truncate", match=SEARCH, after=1))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake))
    assert SEARCH in caught.value.message and "HTTP 200" in caught.value.message


async def test_secrets_never_reach_logs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.inject(Fault("status", match=SEARCH, after=1, status=500))
    fake.inject(Fault("status", match=BATCH_READ, after=1, status=500, times=None))
    connector = make(fake)
    with pytest.raises(ConnectorError) as caught:
        await sync(connector)
    assert "retry" in caplog.text
    assert fake.token not in caplog.text + str(caught.value) + repr(connector)


async def test_check_reports_what_can_be_read(fake, dataset):
    lines = await make(fake).check()
    assert f"Deals: {len(dataset.live)} readable" in lines and "Deal stage history: readable" in lines
    assert "Owners: 5 readable" in lines


def test_from_settings():
    connector = HubSpotConnector.from_settings({"page_size": 50}, {"COCKPIT_HUBSPOT_ACCESS_TOKEN": "pat-na1-x"})
    assert connector.page_size == 50 and "pat-na1-x" not in repr(connector)
    with pytest.raises(ConnectorError) as caught:
        HubSpotConnector.from_settings({}, {})
    assert "COCKPIT_HUBSPOT_ACCESS_TOKEN" in caught.value.message


# ---- cross-check of the fake with the official client library (crm-apis.md §6) ----------------------


def test_hubspot_api_client_reads_the_fake(fake, dataset):
    hubspot = pytest.importorskip("hubspot")
    from hubspot.crm.deals import ApiException, BatchReadInputSimplePublicObjectId, PublicObjectSearchRequest

    client = hubspot.HubSpot(access_token=fake.token, host=fake.url)
    deals = client.crm.deals
    found = deals.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(
        filter_groups=[{"filters": [{"propertyName": "pipeline", "operator": "EQ", "value": "default"}]}],
        sorts=[{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
        properties=["dealname", "amount", "dealstage"], limit=5, after="0"))
    assert found.total == sum(1 for d in dataset.live if d.key % 5 != 4)
    assert found.paging.next.after == "5" and found.results[0].properties["dealname"].startswith("Deal ")
    read = deals.batch_api.read(batch_read_input_simple_public_object_id=BatchReadInputSimplePublicObjectId(
        inputs=[{"id": deal_id(7)}], properties=["dealstage"], properties_with_history=["dealstage", "amount"]))
    history = read.results[0].properties_with_history["dealstage"]
    visited: list[str] = []
    for step in dataset.deals[7].steps:
        if not visited or visited[-1] != stage_id(dataset.deals[7], step.stage):
            visited.append(stage_id(dataset.deals[7], step.stage))
    assert [h.value for h in reversed(history)] == visited  # newest first on the wire
    assert history[0].timestamp >= history[-1].timestamp
    page = deals.basic_api.get_page(limit=3, properties=["dealstage"], properties_with_history=["dealstage"])
    assert len(page.results) == 3 and page.results[0].properties_with_history["dealstage"]
    pipelines = client.crm.pipelines.pipelines_api.get_all(object_type="deals")
    assert pipelines.results[0].stages[0].metadata == {"isClosed": "false", "probability": "0.1"}
    owners = client.crm.owners.owners_api.get_page(limit=100)
    assert owners.results[3].teams[0].name == "Sales East"
    properties = client.crm.properties.core_api.get_all(object_type="deals")
    assert {p.name for p in properties.results if not p.hubspot_defined} == {"region", "seats", "internal_notes"}
    fake.search_per_second = 0
    with pytest.raises(ApiException) as limited:
        deals.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(limit=1))
    assert limited.value.status == 429
    with pytest.raises(Exception) as unauthorised:
        hubspot.HubSpot(access_token="pat-wrong", host=fake.url).crm.deals.basic_api.get_page(limit=1)
    assert getattr(unauthorised.value, "status", None) == 401
