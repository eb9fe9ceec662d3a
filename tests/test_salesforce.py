"""The Salesforce connector against the loopback fake org (tests/fakes/salesforce.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from cockpit.models import ForecastCategory
from connectors import ConnectorError
from connectors._http import RetryPolicy, Timeouts
from connectors.salesforce import (
    SalesforceClientCredentials,
    SalesforceConnector,
    SalesforceJwt,
    SalesforcePassword,
    parse_auth,
)
from tests.fakes import Dataset, Deal, Fault, Mirror, history_tuples, same_state, sync, sync_until_error
from tests.fakes.salesforce import API_VERSION, STAGES, SalesforceFake, opportunity_id, user_id

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.005, max_retry_after=1.0)
QUERY = f"/services/data/{API_VERSION}/query"


@pytest.fixture(scope="module")
def keys() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(40, seed=11)


@pytest.fixture
def fake(dataset: Dataset, keys: tuple[str, bytes]):
    with SalesforceFake(dataset, public_key_pem=keys[1]) as server:
        yield server


def make(fake: SalesforceFake, keys: tuple[str, bytes], **options) -> SalesforceConnector:
    defaults = dict(login_url=fake.url, page_size=8, history_chunk=5, lookback=timedelta(0), retry=FAST,
                    timeouts=Timeouts(read=2.0))
    defaults.update(options)
    auth = defaults.pop("auth", None) or SalesforceJwt(consumer_key=fake.consumer_key, username=fake.username,
                                                        private_key=SecretStr(keys[0]))
    return SalesforceConnector(auth=auth, **defaults)


def expected_history(deal: Deal) -> list[tuple]:
    return [(s.at, STAGES[s.stage], s.amount, s.close_date, ForecastCategory(s.category)) for s in deal.steps]


def assert_matches_server(mirror: Mirror, dataset: Dataset) -> None:
    live = {opportunity_id(d.key): d for d in dataset.live}
    assert set(mirror.deals) == set(live)
    for ident, deal in live.items():
        assert history_tuples(mirror.history[ident]) == expected_history(deal), ident
        opp = mirror.deals[ident]
        assert opp.stage_id == STAGES[deal.last.stage]
        assert opp.amount == deal.last.amount and isinstance(opp.amount, Decimal)
        assert (opp.is_closed, opp.is_won) == (deal.is_closed, deal.is_won)
    assert {c.stage_id for rows in mirror.history.values() for c in rows} <= mirror.stage_ids()


async def test_full_sync_brings_every_deal_with_its_history(fake, dataset, keys):
    mirror, batches = await sync(make(fake, keys))
    first = batches[0]
    assert first.opportunities == [] and len(first.pipelines) == 1 and first.cursor is None
    assert_matches_server(mirror, dataset)
    stages = mirror.pipelines["salesforce"].stages
    assert [s.id for s in stages if s.is_closed] == ["Closed Won", "Closed Lost"]
    assert max(s.order for s in stages if not s.is_closed) < min(s.order for s in stages if s.is_closed)
    assert "Perception Analysis" in {s.id for s in stages}  # inactive stages still hold history
    proposal = next(s for s in stages if s.id == "Proposal/Price Quote")
    assert proposal.probability == Decimal("0.6") and proposal.category is ForecastCategory.BEST_CASE
    owners = mirror.owners
    assert owners[user_id(3)].manager_id == user_id(1) and owners[user_id(3)].team == "Sales East"
    assert user_id(99) not in owners  # partner users are not sales owners
    deal = dataset.deals[4]
    opp = mirror.deals[opportunity_id(4)]
    assert opp.currency == deal.currency and opp.account == deal.account
    assert opp.attributes == {"Region__c": deal.region, "Seats__c": float(deal.seats)}
    closed = next(d for d in dataset.live if d.is_closed and len(d.steps) > 1)
    first_closed = next(s for s in closed.steps if s.stage == closed.last.stage)
    assert mirror.deals[opportunity_id(closed.key)].closed_at == first_closed.at
    assert all(b.cursor for b in batches[1:])
    assert len(batches) == 1 + 5  # 40 deals in pages of 8


async def test_single_currency_org_takes_the_org_currency(dataset, keys):
    with SalesforceFake(dataset, public_key_pem=keys[1], multi_currency=False, default_currency="EUR") as fake:
        mirror, _ = await sync(make(fake, keys))
        assert {d.currency for d in mirror.deals.values()} == {"EUR"}
        queries = [r.arg("q") or "" for r in fake.requests]
        assert not any("CurrencyIsoCode" in q for q in queries if "FROM Opportunity " in q)
        assert any("FROM Organization" in q for q in queries)


def mutate(fake: SalesforceFake, dataset: Dataset) -> tuple[set[str], set[str]]:
    advanced = [dataset.deals[i] for i in (3, 17, 32)]
    for deal in advanced:
        dataset.advance(deal)
    dataset.touch(dataset.deals[8])
    dataset.delete(dataset.deals[20])
    changed = {opportunity_id(d.key) for d in advanced} | {opportunity_id(8)}
    return changed, {opportunity_id(20)}


async def test_incremental_sync_fetches_only_what_changed(fake, dataset, keys):
    connector = make(fake, keys)
    mirror, _ = await sync(connector)
    changed, deleted = mutate(fake, dataset)
    fake.clear()
    mirror, batches = await sync(connector, mirror.cursor, mirror)
    assert {o.id for b in batches for o in b.opportunities} == changed
    assert {i for b in batches for i in b.deleted_ids} == deleted
    history_queries = [r.arg("q") for r in fake.requests if "FROM OpportunityHistory" in (r.arg("q") or "")]
    assert len(history_queries) == 1 and all(i in history_queries[0] for i in changed)
    statements = [r for r in fake.requests if not r.path.startswith(f"{QUERY}/")]  # pages of a query excluded
    assert len(statements) == 6  # token, describe, stages, users, opportunities, history
    assert_matches_server(mirror, dataset)
    fresh, _ = await sync(connector)
    assert same_state(mirror, fresh)


async def test_incremental_sync_with_nothing_changed_reads_no_deals(fake, dataset, keys):
    connector = make(fake, keys)
    mirror, _ = await sync(connector)
    fake.clear()
    again, batches = await sync(connector, mirror.cursor, mirror)
    assert [len(b.opportunities) for b in batches] == [0]
    assert batches[-1].cursor == mirror.cursor
    assert fake.count() == 5 and not any("OpportunityHistory" in (r.arg("q") or "") for r in fake.requests)


async def test_lookback_rereads_recent_deals_only(fake, dataset, keys):
    connector = make(fake, keys, lookback=timedelta(minutes=5))
    mirror, _ = await sync(connector)
    newest = max(dataset.live, key=lambda d: (d.modified, d.key))
    ties = {opportunity_id(d.key) for d in dataset.live if newest.modified - d.modified <= timedelta(minutes=5)}
    _, batches = await sync(connector, mirror.cursor, mirror)
    assert {o.id for b in batches for o in b.opportunities} == ties


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_interrupted_sync_resumes_to_the_same_state(fake, dataset, keys, seed):
    connector = make(fake, keys)
    whole, _ = await sync(connector)
    total_queries = fake.count(QUERY)
    fake.clear()
    stop_at = random.Random(seed).randrange(1, total_queries - 1)
    fake.inject(Fault("status", match=QUERY, after=stop_at, times=None, status=500))
    mirror = Mirror()
    error = await sync_until_error(connector, None, mirror)
    assert isinstance(error, ConnectorError) and "not answering properly" in error.title
    fake.clear()
    error = await sync_until_error(connector, mirror.cursor, mirror)
    assert error is None
    assert same_state(mirror, whole)


async def test_expired_session_is_renewed_once(fake, dataset, keys):
    fake.inject(Fault("action", match=QUERY, after=3, action=fake.expire_tokens))
    mirror, _ = await sync(make(fake, keys))
    assert fake.tokens_issued == 2
    assert_matches_server(mirror, dataset)


async def test_session_rejected_after_renewal_fails_clearly(fake, keys):
    fake.inject(Fault("status", match="/sobjects/", status=401, times=None))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, keys))
    assert caught.value.title == "Salesforce rejected the credentials"
    assert fake.tokens_issued == 2


async def test_request_limit_exceeded_stops_without_retrying(fake, keys):
    fake.api_limit = 4
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, keys))
    assert caught.value.title == "API quota exhausted"
    assert "daily API limit" in caught.value.message and "resumes" in caught.value.message
    refused = [(r.path, r.arg("q")) for r in fake.requests if r.path.startswith("/services/data/")][4:]
    assert 1 <= len(refused) <= 2 and len(set(refused)) == len(refused)  # none retried (2: the next page in flight)


async def test_concurrent_request_limit_is_retried(fake, dataset, keys):
    body = [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    fake.inject(Fault("status", match=QUERY, after=2, status=403, body=body))
    mirror, _ = await sync(make(fake, keys))
    assert_matches_server(mirror, dataset)


async def test_missing_read_access_is_explained(dataset, keys):
    with SalesforceFake(dataset, public_key_pem=keys[1], denied_objects={"OpportunityHistory"}) as fake:
        with pytest.raises(ConnectorError) as caught:
            await sync(make(fake, keys))
    assert caught.value.title == "No permission in Salesforce"
    assert "OpportunityHistory" in caught.value.message


async def test_insufficient_access_is_not_retried(fake, keys):
    fake.inject(Fault("status", match="/sobjects/Opportunity/describe", status=403, times=None))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, keys))
    assert "INSUFFICIENT_ACCESS" in caught.value.message
    assert fake.count("/describe") == 1


async def test_429_and_503_wait_for_retry_after(fake, dataset, keys):
    fake.inject(Fault("status", match=QUERY, after=1, status=503, headers={"Retry-After": "0.2"}))
    fake.inject(Fault("status", match=QUERY, after=4, status=429, headers={"Retry-After": "0.2"}))
    started = time.monotonic()
    mirror, _ = await sync(make(fake, keys))
    assert time.monotonic() - started >= 0.4
    assert_matches_server(mirror, dataset)


async def test_slow_answer_is_retried_then_reported(fake, dataset, keys):
    fake.inject(Fault("delay", match=QUERY, after=2, delay=0.5))
    connector = make(fake, keys, timeouts=Timeouts(read=0.2))
    mirror, _ = await sync(connector)
    assert_matches_server(mirror, dataset)
    fake.inject(Fault("delay", match="/queryAll", delay=0.5, times=None))
    with pytest.raises(ConnectorError) as caught:
        await sync(connector)
    assert caught.value.title == "Salesforce timed out"
    assert "/queryAll" in caught.value.message and "SELECT" not in caught.value.message


async def test_truncated_json_names_the_path_and_status(fake, keys):
    fake.inject(Fault("truncate", match="/queryAll"))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, keys))
    message = caught.value.message
    assert f"/services/data/{API_VERSION}/queryAll" in message and "HTTP 200" in message
    assert "SELECT" not in message and "q=" not in message


async def test_other_sign_in_flows(fake, dataset):
    flows = [
        SalesforceClientCredentials(domain="acme", client_id=fake.client_id, client_secret=SecretStr(fake.client_secret)),
        SalesforcePassword(client_id=fake.client_id, client_secret=SecretStr(fake.client_secret),
                           username=fake.username, password=SecretStr(fake.password),
                           security_token=SecretStr(fake.security_token)),
    ]
    for auth in flows:
        mirror, _ = await sync(make(fake, None, auth=auth))
        assert len(mirror.deals) == len(dataset.live)


async def test_failed_sign_in_is_explained_without_the_secret(fake):
    auth = SalesforceClientCredentials(domain="acme", client_id=fake.client_id,
                                       client_secret=SecretStr("wrong-secret-value-xyz"))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, None, auth=auth))
    assert caught.value.title == "Salesforce sign-in failed"
    assert "wrong-secret-value-xyz" not in str(caught.value)


async def test_unusable_private_key_is_explained(fake):
    auth = SalesforceJwt(consumer_key="k", username="u", private_key=SecretStr("not a key at all, secret123"))
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, None, auth=auth))
    assert caught.value.title == "Salesforce private key unusable"
    assert "secret123" not in str(caught.value)


async def test_secrets_never_reach_logs_or_errors(fake, keys, caplog):
    caplog.set_level(logging.DEBUG)
    fake.inject(Fault("action", match=QUERY, after=2, action=fake.expire_tokens))
    fake.inject(Fault("status", match=QUERY, after=4, status=503))
    fake.api_limit = 12
    connector = make(fake, keys)
    with pytest.raises(ConnectorError) as caught:
        await sync(connector)
    password_auth = SalesforcePassword(client_id=fake.client_id, client_secret=SecretStr(fake.client_secret),
                                       username=fake.username, password=SecretStr("wrong-password-1"))
    with pytest.raises(ConnectorError) as login_error:
        await sync(make(fake, None, auth=password_auth))
    text = caplog.text + str(caught.value) + str(login_error.value) + repr(connector) + repr(connector.auth)
    secrets = [*fake.sessions, fake.client_secret, "wrong-password-1", *keys[0].splitlines()[1:-1]]
    assert len(fake.sessions) >= 2
    for secret in secrets:
        assert secret not in text
    assert "retry" in caplog.text  # the log did record what happened


async def test_check_reports_what_can_be_read_and_writes_nothing(fake, dataset, keys):
    lines = await make(fake, keys).check()
    assert any(f"Opportunity: {len(dataset.live)} records readable" == line for line in lines)
    assert any("OpportunityHistory" in line for line in lines)
    assert any("API requests left today" in line for line in lines)
    assert {r.method for r in fake.requests if r.path != "/services/oauth2/token"} == {"GET"}


async def test_progress_reports_records_pages_and_rate(fake, dataset, keys):
    seen = []
    await sync(make(fake, keys), progress=seen.append)
    counted = [p for p in seen if p.pages]
    assert counted[-1].records == len(dataset.deals) and counted[-1].total == len(dataset.deals)
    assert [p.pages for p in counted] == sorted(p.pages for p in counted)
    assert all("/s" in p.message for p in counted)


def test_from_settings_reads_secrets_by_their_variable_names(keys):
    connector = SalesforceConnector.from_settings(
        {"auth": "jwt", "consumer_key": "ck", "username": "u@example.com", "instance_url": "https://acme.my.salesforce.com",
         "page_size": "500"},
        {"COCKPIT_SALESFORCE_PRIVATE_KEY": keys[0]},
    )
    assert connector.page_size == 500 and connector.auth.kind == "jwt"
    assert "PRIVATE" not in repr(connector) + repr(connector.auth)
    with pytest.raises(ConnectorError) as caught:
        SalesforceConnector.from_settings({"auth": "client_credentials", "domain": "acme", "client_id": "x"}, {})
    assert "COCKPIT_SALESFORCE_CLIENT_SECRET" in caught.value.message
    cc = SalesforceConnector.from_settings({"auth": "client_credentials", "domain": "acme", "client_id": "x"},
                                           {"COCKPIT_SALESFORCE_CLIENT_SECRET": "s3cr3t"})
    assert cc.login_url == "https://acme.my.salesforce.com"
    with pytest.raises(ConnectorError, match="client_id"):
        parse_auth({"kind": "client_credentials", "domain": "acme", "client_secret": "s3cr3t"})


async def test_damaged_cursor_asks_for_a_full_sync(fake, keys):
    with pytest.raises(ConnectorError) as caught:
        await sync(make(fake, keys), "not-a-cursor")
    assert "full sync" in caught.value.message


# ---- cross-check of the fake with the official client library (crm-apis.md §6) ----------------------


def _simple_salesforce():
    return pytest.importorskip("simple_salesforce")


def _loopback_session(fake: SalesforceFake, hosts: tuple[str, ...]):
    import requests
    from requests.adapters import HTTPAdapter

    class ToLoopback(HTTPAdapter):
        def send(self, request, **kwargs):
            for host in hosts:
                request.url = request.url.replace(host, fake.url, 1)
            return super().send(request, **kwargs)

    session = requests.Session()
    for host in hosts:
        session.mount(host, ToLoopback())
    return session


def test_simple_salesforce_reads_the_fake(fake, dataset, keys):
    sf_module = _simple_salesforce()
    from simple_salesforce.exceptions import (
        SalesforceExpiredSession,
        SalesforceMalformedRequest,
        SalesforceRefusedRequest,
    )
    from simple_salesforce.login import SalesforceLogin

    session = _loopback_session(fake, ("https://login.salesforce.com", "https://acme.my.salesforce.com"))
    token, instance = SalesforceLogin(username=fake.username, consumer_key=fake.consumer_key, privatekey=keys[0],
                                      domain="login", session=session)
    assert token in fake.tokens and instance == fake.url.removeprefix("http://")
    sf = sf_module.Salesforce(instance_url="https://acme.my.salesforce.com", session_id=token, version="60.0",
                              session=session)
    fake.page_size = 25
    result = sf.query_all("SELECT Id, Amount, StageName, Account.Name FROM Opportunity ORDER BY Id")
    assert result["totalSize"] == len(dataset.live)
    assert [r["Id"] for r in result["records"]] == sorted(opportunity_id(d.key) for d in dataset.live)
    assert result["records"][0]["Account"]["Name"] == dataset.deals[0].account
    history = sf.query_all(f"SELECT OpportunityId, StageName FROM OpportunityHistory WHERE OpportunityId IN "
                           f"('{opportunity_id(5)}')")
    assert [r["StageName"] for r in history["records"]] == [STAGES[s.stage] for s in dataset.deals[5].steps]
    assert sf.api_usage["api-usage"].total == fake.api_limit
    describe = sf.Opportunity.describe()
    assert "CurrencyIsoCode" in {f["name"] for f in describe["fields"]}
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Id, Foo FROM Opportunity")
    assert bad.value.content[0]["errorCode"] == "INVALID_FIELD"
    fake.api_limit = fake.api_used
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Opportunity")
    assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    fake.expire_tokens()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Opportunity")


async def test_stopping_early_leaves_nothing_running(fake, keys):
    batches = make(fake, keys).batches(None)
    await anext(batches)
    await anext(batches)
    await batches.aclose()
    seen = fake.count()
    await asyncio.sleep(0.1)
    assert fake.count() == seen  # no history task still fetching in the background
