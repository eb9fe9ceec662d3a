"""The shared HTTP layer (connectors/_http.py) against a small loopback server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import SecretStr

from cockpit.models import ForecastCategory, Opportunity, Pipeline, Stage, StageChange
from connectors import ConnectorError
from connectors._http import (
    HeaderAuth,
    HttpClient,
    ProgressMeter,
    RateLimiter,
    Retry,
    RetryPolicy,
    StageCatalog,
    Timeouts,
    as_attribute,
    decode_cursor,
    encode_cursor,
    finish_deal,
    make_opportunity,
    stage_change,
    to_decimal,
)
from connectors._redact import RedactingFilter, redact, register_secret
from tests.fakes import FakeServer, Fault, Request, Response

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.005, max_retry_after=1.0)
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


class EchoServer(FakeServer):
    """Answers {"path": ..., "n": <request number>}; counts requests in flight."""

    service = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.token = "tok-1"
        self._gate = threading.Lock()

    def route(self, request: Request) -> Response:
        if request.path == "/auth" and request.header("authorization") != f"Bearer {self.token}":
            return Response(401, {"message": "expired"})
        with self._gate:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        if request.path == "/slow":
            time.sleep(0.05)
        with self._gate:
            self.in_flight -= 1
        return Response(200, {"path": request.path, "n": len(self.requests)})


@pytest.fixture
def server():
    with EchoServer() as fake:
        yield fake


def client(server: EchoServer, **options) -> HttpClient:
    defaults = dict(service="Echo", base_url=server.url, retry=FAST, timeouts=Timeouts(read=1.0))
    defaults.update(options)
    return HttpClient(**defaults)


async def test_json_answer_and_stats(server):
    async with client(server) as http:
        body = await http.get_json("/a", params={"x": "1"})
        assert body["path"] == "/a"
        assert http.stats.requests == 1 and http.stats.bytes_received > 0 and http.stats.bytes_sent > 0


async def test_5xx_is_retried_a_bounded_number_of_times(server):
    server.inject(Fault("status", match="/a", status=502, times=2))
    async with client(server) as http:
        assert (await http.get_json("/a"))["path"] == "/a"
        assert http.stats.retries == 2
    server.inject(Fault("status", match="/b", status=500, times=None))
    async with client(server) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/b")
    assert server.count("/b") == 3 and "after 3 tries" in caught.value.message


async def test_retry_after_is_honoured_and_capped(server):
    server.inject(Fault("status", match="/a", status=429, headers={"Retry-After": "0.3"}))
    async with client(server) as http:
        started = time.monotonic()
        await http.get_json("/a")
        assert time.monotonic() - started >= 0.3
    server.inject(Fault("status", match="/b", status=503, headers={"Retry-After": "3600"}))
    async with client(server) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/b")
    assert "3,600 s" in caught.value.message and server.count("/b") == 1


async def test_http_date_retry_after(server):
    # An HTTP date has whole seconds: two seconds ahead is at least one second of wait after rounding.
    when = (datetime.now(timezone.utc) + timedelta(seconds=2)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    server.inject(Fault("status", match="/a", status=503, headers={"Retry-After": when}))
    patient = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.005, max_retry_after=5.0)
    async with client(server, retry=patient) as http:
        started = time.monotonic()
        await http.get_json("/a")
        assert time.monotonic() - started >= 0.9


async def test_4xx_is_not_retried_and_names_the_path_only(server):
    server.inject(Fault("status", match="/a", status=404, body={"message": "no such thing"}))
    async with client(server) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/a", params={"api_token": "sekrit-token-123"})
    assert server.count("/a") == 1
    assert "GET /a" in caught.value.message and "no such thing" in caught.value.message
    assert "sekrit" not in str(caught.value)


async def test_error_hook_decides_first(server):
    def hook(response, body):
        if response.status_code == 403:
            return ConnectorError("Quota", "stop here")
        if response.status_code == 409:
            return Retry("busy", delay=0.01)
        return None

    server.inject(Fault("status", match="/a", status=409))
    server.inject(Fault("status", match="/b", status=403))
    async with client(server, error_hook=hook) as http:
        await http.get_json("/a")
        with pytest.raises(ConnectorError, match="Quota"):
            await http.get_json("/b")
    assert server.count("/a") == 2 and server.count("/b") == 1


async def test_timeouts_are_retried_then_explained(server):
    server.inject(Fault("delay", match="/a", delay=0.4))
    async with client(server, timeouts=Timeouts(read=0.1)) as http:
        assert (await http.get_json("/a"))["path"] == "/a"
    server.inject(Fault("delay", match="/b", delay=0.4, times=None))
    async with client(server, timeouts=Timeouts(read=0.1)) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/b", params={"q": "SELECT secret"})
    assert caught.value.title == "Echo timed out"
    assert "answer within 0.1 s" in caught.value.message and "/b" in caught.value.message
    assert "SELECT" not in caught.value.message and "read timeout" in caught.value.message


async def test_unreachable_host_is_explained():
    http = HttpClient(service="Echo", base_url="http://127.0.0.1:9", retry=FAST)
    async with http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/a")
    assert caught.value.title == "Cannot reach Echo"


async def test_truncated_json_names_path_and_status(server):
    server.inject(Fault("truncate", match="/a"))
    async with client(server) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/a", params={"token": "abc"})
    assert "GET /a with HTTP 200" in caught.value.message and "not valid JSON" in caught.value.message
    assert "token" not in caught.value.message


class RenewingAuth:
    def __init__(self, server: EchoServer, fresh: str) -> None:
        self.server = server
        self.current = "tok-old"
        self.fresh = fresh
        self.renewals = 0

    async def headers(self, http):
        return {"Authorization": f"Bearer {self.current}"}

    async def refresh(self, http, used):
        self.renewals += 1
        self.current = self.fresh
        return True


async def test_401_refreshes_once(server):
    auth = RenewingAuth(server, fresh="tok-1")
    async with client(server, auth=auth) as http:
        assert (await http.get_json("/auth"))["path"] == "/auth"
    assert auth.renewals == 1 and server.count("/auth") == 2
    stubborn = RenewingAuth(server, fresh="tok-still-wrong")
    async with client(server, auth=stubborn) as http:
        with pytest.raises(ConnectorError) as caught:
            await http.get_json("/auth")
    assert stubborn.renewals == 1 and "HTTP 401" in caught.value.message


async def test_concurrency_is_bounded(server):
    async with client(server, max_concurrency=2) as http:
        await asyncio.gather(*(http.get_json("/slow") for _ in range(8)))
    assert server.peak <= 2


async def test_rate_limiter_spreads_requests():
    limiter = RateLimiter(3, 0.2)
    started = time.monotonic()
    stamps = []
    for _ in range(7):
        await limiter.acquire()
        stamps.append(time.monotonic() - started)
    assert stamps[2] < 0.1 and stamps[3] >= 0.2 and stamps[6] >= 0.4
    with pytest.raises(ValueError):
        RateLimiter(0, 1)


def test_redaction_covers_headers_parameters_and_known_secrets():
    register_secret(SecretStr("my-very-own-secret-value"))
    text = (
        "Authorization: Bearer abc.def-123456 url=/v1/users?api_token=0123456789abcdef&limit=5 "
        '{"access_token": "00DXX0000000001!AQ4AQFakeToken", "client_secret": "cs-1234567"} '
        "x-api-token: deadbeefcafe pat-na1-11111111-2222-3333 my-very-own-secret-value "
        "assertion=eyJhbGciOi.eyJpc3MiOiJ4.c2lnbmF0dXJl password=hunter2hunter2"
    )
    out = redact(text)
    for secret in ("abc.def-123456", "0123456789abcdef", "AQ4AQFakeToken", "cs-1234567", "deadbeefcafe",
                   "pat-na1-11111111", "my-very-own-secret-value", "eyJhbGciOi", "hunter2hunter2"):
        assert secret not in out
    assert "limit=5" in out and "Authorization: Bearer ***" in out
    assert redact("basic information about the deal") == "basic information about the deal"


def test_redacting_filter_rewrites_messages_arguments_and_tracebacks(caplog):
    logger = logging.getLogger("tests.redaction")
    logger.addFilter(RedactingFilter())
    caplog.set_level(logging.DEBUG, logger="tests.redaction")
    try:
        raise ValueError("token=abcdef123456 leaked")
    except ValueError:
        logger.exception("call with %s", "Authorization: Bearer zzzzzzzz99")
    assert "abcdef123456" not in caplog.text and "zzzzzzzz99" not in caplog.text
    assert "call with" in caplog.text


def test_header_auth_repr_hides_the_secret():
    auth = HeaderAuth("x-api-token", SecretStr("the-token-value"))
    assert "the-token-value" not in repr(auth)


def test_cursor_round_trip_and_damage():
    cursor = encode_cursor({"ts": 5, "ids": ["a"]})
    assert decode_cursor(cursor, "Echo", ("ts", "ids")) == {"ts": 5, "ids": ["a"]}
    with pytest.raises(ConnectorError, match="full sync"):
        decode_cursor("%%%", "Echo", ("ts",))
    with pytest.raises(ConnectorError, match="ts, ids"):
        decode_cursor(encode_cursor({"other": 1}), "Echo", ("ts", "ids"))


def test_values_and_attributes():
    assert to_decimal(50000.1) == Decimal("50000.1") and to_decimal("12") == Decimal(12)
    assert to_decimal("") is None and to_decimal("abc") is None and to_decimal("NaN") is None
    assert as_attribute(3) == 3.0 and as_attribute(True) == "true" and as_attribute("EMEA") == "EMEA"
    assert as_attribute(["b", "a"]) == "a;b" and as_attribute(None) is None and as_attribute({}) is None


def test_progress_meter_reports_records_pages_and_rate():
    seen = []
    meter = ProgressMeter(seen.append, "Echo", "deals")
    meter.add(records=10, pages=1, total=30)
    meter.add(records=10, pages=1)
    assert (seen[-1].records, seen[-1].pages, seen[-1].total) == (20, 2, 30)
    assert seen[-1].message.startswith("Echo: 20 of 30 deals, 2 pages,") and seen[-1].message.endswith("/s")


def pipeline() -> Pipeline:
    return Pipeline(id="p", name="P", stages=(
        Stage(id="a", name="A", order=0, probability=Decimal("0.1")),
        Stage(id="won", name="Won", order=1, probability=Decimal(1), is_closed=True, is_won=True),
    ))


def test_stage_catalog_keeps_removed_stages_before_the_closed_ones():
    catalog = StageCatalog([pipeline()])
    catalog.ensure("a", "p")
    assert catalog.take_changed() == []
    catalog.ensure("gone", "p")
    changed = catalog.take_changed()
    assert [s.id for s in changed[0].stages] == ["a", "gone", "won"] and changed[0].stage("gone").order == 1
    catalog.ensure("elsewhere", "new-pipeline")
    assert catalog.take_changed()[0].id == "new-pipeline"


def deal(**changes) -> Opportunity:
    fields = dict(id="d1", owner_id="o", pipeline_id="p", stage_id="won", amount=Decimal(10), is_closed=True,
                  is_won=True, created_at=T0, modified_at=T0 + timedelta(days=9), close_date=date(2024, 6, 1))
    fields.update(changes)
    made = make_opportunity("Echo", fields)
    assert made is not None
    return made


def test_finish_deal_dates_the_close_from_the_history():
    rows = [StageChange(opportunity_id="d1", changed_at=T0, stage_id="a", amount=Decimal(5)),
            StageChange(opportunity_id="d1", changed_at=T0 + timedelta(days=3), stage_id="won"),
            StageChange(opportunity_id="d1", changed_at=T0 + timedelta(days=5), stage_id="won", amount=Decimal(10))]
    opp, history = finish_deal(deal(), rows)
    assert opp.closed_at == T0 + timedelta(days=3)
    assert [r.amount for r in history] == [Decimal(5), Decimal(5), Decimal(10)]


def test_finish_deal_adds_the_current_stage_when_history_lags():
    rows = [StageChange(opportunity_id="d1", changed_at=T0, stage_id="a")]
    opp, history = finish_deal(deal(), rows)
    assert [r.stage_id for r in history] == ["a", "won"] and history[-1].changed_at == T0 + timedelta(days=9)
    assert opp.closed_at == T0 + timedelta(days=9)


def test_make_opportunity_skips_records_the_model_rejects(caplog):
    caplog.set_level(logging.WARNING)
    assert make_opportunity("Echo", dict(id="bad", owner_id="o", pipeline_id="p", stage_id="a",
                                         amount=Decimal(-5))) is None
    assert "skipped deal bad" in caplog.text and "amount" in caplog.text


def test_fast_stage_change_equals_a_validated_one():
    values = dict(opportunity_id="d1", changed_at=T0, stage_id="a", amount=Decimal("5.5"),
                  close_date=date(2024, 6, 1), forecast_category=ForecastCategory.COMMIT)
    fast = stage_change(**values)
    checked = StageChange(**values)
    assert fast == checked and fast.model_dump() == checked.model_dump() and hash(fast) == hash(checked)
    assert fast.model_copy(update={"amount": Decimal(1)}).amount == Decimal(1)
    with pytest.raises(Exception):
        fast.stage_id = "b"  # frozen like any StageChange
