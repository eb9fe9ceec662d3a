"""The one HTTP layer of the SaaS connectors, and the record helpers they share.

`HttpClient` wraps the only `httpx.AsyncClient` the connectors make (`make_async_client`): it joins
paths onto a base URL, bounds concurrency with a semaphore, retries transient failures with
exponential backoff and jitter (honouring `Retry-After` on 429/503, capped), refreshes a token once
on 401, turns every failure into a `ConnectorError` that says what to do, counts requests and bytes,
and never lets a secret reach a log line or an error message (`redact`, `RedactingFilter`).

The second half holds small pieces every SaaS connector needs around the wire: resume cursors,
progress reporting, custom-field values as deal attributes, a stage catalogue that tolerates stages
the CRM has since removed, and turning a deal plus its raw history into domain models.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import httpx
from pydantic import SecretStr, ValidationError

from cockpit.models import (
    Attribute,
    ForecastCategory,
    Opportunity,
    Pipeline,
    Stage,
    StageChange,
    SyncBatch,
    SyncProgress,
    complete_history,
)
from cockpit.models.trusted import construct_trusted
from connectors import ConnectorError, ProgressCallback
from connectors._redact import protect_logger, redact, register_secret

log = logging.getLogger(__name__)

for _name in (__name__, "httpx", "httpcore"):
    protect_logger(logging.getLogger(_name))


def connector_error(title: str, message: str) -> ConnectorError:
    """A ConnectorError whose text has been through `redact`."""
    return ConnectorError(redact(title), redact(message))


# --------------------------------------------------------------------------------------------------
# Policy objects
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (429, 5xx, timeouts, dropped connections) are retried."""

    attempts: int = 5
    """Tries in total, the first one included."""
    backoff: float = 0.5
    """Delay before the first retry, in seconds; doubled on each further retry."""
    max_backoff: float = 30.0
    """Longest computed delay between two tries."""
    max_retry_after: float = 120.0
    """Longest server-requested wait (Retry-After) honoured; a longer request stops the sync."""
    jitter: float = 0.25
    """Random extra delay, as a fraction of the computed delay."""

    def delay(self, attempt: int) -> float:
        """Backoff before try number `attempt + 1` (attempt counts from 1)."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (1 + random.uniform(0, self.jitter))


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each phase of a request."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 30.0
    pool: float = 60.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class Retry:
    """An error hook's verdict: retry this response (after `delay` seconds, or the usual backoff)."""

    reason: str
    delay: float | None = None


ErrorHook = Callable[[httpx.Response, Any], "ConnectorError | Retry | None"]
"""Looks at a non-2xx response (and its parsed JSON body, or None) before the generic handling."""


class Auth(Protocol):
    """Supplies request headers and, where the API has one, refreshes an expired token."""

    async def headers(self, http: HttpClient) -> dict[str, str]:
        """Headers to send with an authenticated request (may fetch a token first)."""
        ...

    async def refresh(self, http: HttpClient, used: Mapping[str, str]) -> bool:
        """Renew the credentials after a 401 on a request sent with `used`; False if they cannot be."""
        ...


class HeaderAuth:
    """A fixed secret sent in one header (API tokens, private-app tokens); cannot be refreshed."""

    def __init__(self, header: str, secret: SecretStr, prefix: str = "") -> None:
        self._header = header
        self._secret = secret
        self._prefix = prefix
        register_secret(secret)

    async def headers(self, http: HttpClient) -> dict[str, str]:
        return {self._header: f"{self._prefix}{self._secret.get_secret_value()}"}

    async def refresh(self, http: HttpClient, used: Mapping[str, str]) -> bool:
        return False

    def __repr__(self) -> str:
        return f"HeaderAuth({self._header!r}, '**********')"


class RateLimiter:
    """At most `rate` requests in any window of `per` seconds (a sliding window, shared by tasks)."""

    def __init__(self, rate: int, per: float) -> None:
        if rate < 1 or per <= 0:
            raise ValueError(f"rate limiter needs rate >= 1 and per > 0, got rate={rate}, per={per}")
        self.rate = rate
        self.per = per
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more request fits in the window, then count it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._sent and now - self._sent[0] >= self.per:
                    self._sent.popleft()
                if len(self._sent) < self.rate:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self.per - (now - self._sent[0]) + 0.001)

    def pause(self, seconds: float) -> None:
        """Treat the window as full for `seconds` (after the server said the budget is spent)."""
        until = time.monotonic() + seconds - self.per
        self._sent = deque([until] * self.rate)


@dataclass
class HttpStats:
    """What a client has done so far."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    started: float = field(default_factory=time.monotonic)


def make_async_client(timeouts: Timeouts, max_concurrency: int, base_url: str = "") -> httpx.AsyncClient:
    """The only place an httpx.AsyncClient is built for the connectors."""
    from cockpit import __version__

    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeouts.to_httpx(),
        limits=httpx.Limits(max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency + 2),
        headers={"User-Agent": f"deal-cockpit/{__version__}", "Accept": "application/json"},
        follow_redirects=False,
    )


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


class HttpClient:
    """JSON over HTTP for one CRM, with retries, token refresh, limits and redaction.

    `service` names the CRM in every message ("Salesforce"). Relative URLs are joined onto
    `base_url`, which a connector may move (Salesforce learns its instance URL at login).
    Pass `client` to share an AsyncClient (tests, the caller's proxies); it is then not closed here.
    """

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        auth: Auth | None = None,
        client: httpx.AsyncClient | None = None,
        timeouts: Timeouts | None = None,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        error_hook: ErrorHook | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.error_hook = error_hook
        self.headers = dict(headers or {})
        self.stats = HttpStats()
        self._own_client = client is None
        self._client = client or make_async_client(self.timeouts, max_concurrency)
        self._semaphore = asyncio.Semaphore(max_concurrency)

    async def aclose(self) -> None:
        """Close the AsyncClient if this object made it."""
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def url(self, path_or_url: str) -> str:
        """An absolute URL: `path_or_url` itself, or joined onto the base URL."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    async def get_json(
        self, url: str, *, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
        limiter: RateLimiter | None = None,
    ) -> Any:
        """GET `url` and return its JSON body."""
        return await self.request_json("GET", url, params=params, headers=headers, limiter=limiter)

    async def post_json(
        self, url: str, body: Any, *, headers: Mapping[str, str] | None = None, limiter: RateLimiter | None = None
    ) -> Any:
        """POST `body` as JSON to `url` and return the JSON answer."""
        return await self.request_json("POST", url, json_body=body, headers=headers, limiter=limiter)

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        authenticated: bool = True,
        limiter: RateLimiter | None = None,
    ) -> Any:
        """Send one request, retrying what is transient, and return the parsed JSON body.

        Raises ConnectorError for anything that cannot be retried or still fails after the retries.
        """
        target = self.url(url)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if limiter is not None:
                await limiter.acquire()
            sent_headers: dict[str, str] = {**self.headers, **(headers or {})}
            if authenticated and self.auth is not None:
                sent_headers.update(await self.auth.headers(self))
            async with self._semaphore:
                try:
                    response = await self._client.request(
                        method, target, params=params, json=json_body, data=form, headers=sent_headers,
                        auth=httpx.BasicAuth(*basic_auth) if basic_auth else httpx.USE_CLIENT_DEFAULT,
                    )
                except httpx.TimeoutException as exc:
                    failure = self._timeout_error(method, target, exc)
                except httpx.TransportError as exc:
                    failure = self._transport_error(method, target, exc)
                else:
                    failure = None
            if failure is not None:
                self.stats.requests += 1
                await self._before_retry(attempt, failure, None, reason=f"{method} {httpx.URL(target).path} failed "
                                         f"({failure.title.lower()})")
                continue
            self._count(response)
            if response.is_success:
                return self._parse(response)
            body = _try_json(response)
            verdict = self.error_hook(response, body) if self.error_hook else None
            if isinstance(verdict, ConnectorError):
                raise verdict
            if response.status_code == 401 and not refreshed and authenticated and self.auth is not None:
                if await self.auth.refresh(self, sent_headers):
                    refreshed = True
                    log.info("%s: %s %s answered 401; credentials renewed, retrying once",
                             self.service, method, _path(response))
                    continue
            if isinstance(verdict, Retry) or _is_transient(response.status_code):
                reason = f"HTTP {response.status_code}" + (f" ({verdict.reason})" if isinstance(verdict, Retry) else "")
                wait = verdict.delay if isinstance(verdict, Retry) and verdict.delay is not None else None
                await self._before_retry(attempt, self._exhausted_error(response, reason), response, wait,
                                         reason=f"{method} {_path(response)} answered {reason}")
                continue
            raise self._status_error(response, body)

    # ---- internals -------------------------------------------------------------------------------

    def _count(self, response: httpx.Response) -> None:
        self.stats.requests += 1
        self.stats.bytes_received += response.num_bytes_downloaded
        request = response.request
        self.stats.bytes_sent += len(str(request.url)) + len(request.content or b"")

    async def _before_retry(
        self, attempt: int, failure: ConnectorError, response: httpx.Response | None, wait: float | None = None,
        *, reason: str,
    ) -> None:
        """Sleep before the next try, or raise `failure` when the tries are used up."""
        if attempt >= self.retry.attempts:
            raise failure
        if wait is None and response is not None:
            wait = _retry_after(response)
            if wait is not None and wait > self.retry.max_retry_after:
                raise connector_error(
                    f"{self.service} rate limit",
                    f"{self.service} asked to wait {wait:,.0f} s before the next request ({_path(response)}, "
                    f"HTTP {response.status_code}); that is longer than the {self.retry.max_retry_after:,.0f} s "
                    "this sync waits. Run the sync again later; it resumes where it stopped.",
                )
        delay = wait if wait is not None else self.retry.delay(attempt)
        self.stats.retries += 1
        log.warning("%s: %s; retry %d of %d in %.2f s", self.service, reason, attempt, self.retry.attempts - 1,
                    delay)
        await asyncio.sleep(delay)

    def _parse(self, response: httpx.Response) -> Any:
        content = response.content
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            detail = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise connector_error(
                f"{self.service} sent an unreadable answer",
                f"{self.service} answered {response.request.method} {_path(response)} with HTTP "
                f"{response.status_code} but the body is not valid JSON ({len(content):,} bytes; {detail}); "
                "the answer was probably cut off on the way. Run the sync again (it resumes where it stopped); "
                "if it keeps happening, check any proxy between this machine and "
                f"{response.request.url.host}.",
            ) from None

    def _timeout_error(self, method: str, url: str, exc: httpx.TimeoutException) -> ConnectorError:
        phase = {
            httpx.ConnectTimeout: f"connect within {self.timeouts.connect:g} s",
            httpx.ReadTimeout: f"answer within {self.timeouts.read:g} s",
            httpx.WriteTimeout: f"accept the request within {self.timeouts.write:g} s",
            httpx.PoolTimeout: f"free a connection within {self.timeouts.pool:g} s",
        }.get(type(exc), "answer in time")
        return connector_error(
            f"{self.service} timed out",
            f"{self.service} did not {phase} for {method} {httpx.URL(url).path} (tried {self.retry.attempts} "
            "times). Check the network connection and the CRM's status page, then run the sync again; "
            "it resumes where it stopped. On a slow link, raise the connector's read timeout.",
        )

    def _transport_error(self, method: str, url: str, exc: httpx.TransportError) -> ConnectorError:
        host = httpx.URL(url).host
        return connector_error(
            f"Cannot reach {self.service}",
            f"{method} {httpx.URL(url).path} on {host} failed: {type(exc).__name__} {exc}. Check the address in "
            "the connector settings, the network and any proxy, then run the sync again.",
        )

    def _exhausted_error(self, response: httpx.Response, reason: str) -> ConnectorError:
        return connector_error(
            f"{self.service} is not answering properly",
            f"{self.service} kept failing on {response.request.method} {_path(response)} ({reason}) after "
            f"{self.retry.attempts} tries. It may be overloaded or down: check its status page and run the "
            "sync again later; it resumes where it stopped.",
        )

    def _status_error(self, response: httpx.Response, body: Any) -> ConnectorError:
        status = response.status_code
        where = f"{response.request.method} {_path(response)}"
        detail = _error_detail(body)
        detail = f" ({detail})" if detail else ""
        if status == 401:
            return connector_error(
                f"{self.service} rejected the credentials",
                f"{self.service} answered {where} with HTTP 401{detail}. The token or key is wrong, expired or "
                "revoked: create a new one and update the connector's secret.",
            )
        if status == 403:
            return connector_error(
                f"No permission in {self.service}",
                f"{self.service} answered {where} with HTTP 403{detail}. The user or app the cockpit signs in "
                "as lacks a permission or scope needed to read this; ask a CRM admin to grant read access.",
            )
        if status == 404:
            return connector_error(
                f"{self.service}: not found",
                f"{self.service} answered {where} with HTTP 404{detail}. Check the instance address and API "
                "version in the connector settings.",
            )
        return connector_error(
            f"{self.service} refused a request",
            f"{self.service} answered {where} with HTTP {status}{detail}.",
        )


def _path(response: httpx.Response) -> str:
    """The request path without its query string (which may hold secrets or long queries)."""
    return response.request.url.path


def _is_transient(status: int) -> bool:
    return status == 429 or status == 408 or 500 <= status <= 599


def _try_json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if the response has one."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_detail(body: Any) -> str:
    """A short summary of a CRM error body (Salesforce list, HubSpot/Pipedrive objects)."""
    if isinstance(body, list) and body and isinstance(body[0], Mapping):
        parts = [f"{e.get('errorCode', '')}: {e.get('message', '')}".strip(": ") for e in body[:3]]
        return "; ".join(p for p in parts if p)[:300]
    if isinstance(body, Mapping):
        for key in ("message", "error_description", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                category = body.get("category") or body.get("code") or ""
                return (f"{category}: {value}" if category else value)[:300]
    return ""


# --------------------------------------------------------------------------------------------------
# Helpers shared by the SaaS connectors
# --------------------------------------------------------------------------------------------------


def encode_cursor(values: Mapping[str, Any]) -> str:
    """An opaque resume cursor: compact JSON, base64url so it survives any text column."""
    raw = json.dumps(dict(values), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, service: str, required: Sequence[str]) -> dict[str, Any]:
    """Read a cursor made by `encode_cursor`; a damaged or foreign one is a clear ConnectorError."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, json.JSONDecodeError):
        values = None
    if not isinstance(values, dict) or any(key not in values for key in required):
        raise connector_error(
            f"{service}: unknown sync cursor",
            f"the stored sync cursor {cursor[:40]!r} was not written by the {service} connector (expected "
            f"the fields {', '.join(required)}). Run a full sync to start over.",
        )
    return values


class ProgressMeter:
    """Counts records and pages and reports them, with the rate, to a progress callback."""

    def __init__(self, callback: ProgressCallback | None, service: str, noun: str = "opportunities") -> None:
        self.callback = callback
        self.service = service
        self.noun = noun
        self.records = 0
        self.pages = 0
        self.total: int | None = None
        self.started = time.monotonic()

    @property
    def rate(self) -> float:
        """Records per second since the meter started."""
        return self.records / max(time.monotonic() - self.started, 1e-6)

    def add(self, records: int = 0, pages: int = 0, total: int | None = None) -> None:
        """Count work done and report it."""
        self.records += records
        self.pages += pages
        if total is not None:
            self.total = total
        self.report()

    def report(self, message: str | None = None) -> None:
        """Send the current figures (and `message`, if given) to the callback."""
        if self.callback is None:
            return
        of_total = f" of {self.total:,}" if self.total is not None else ""
        text = message or (
            f"{self.service}: {self.records:,}{of_total} {self.noun}, {self.pages:,} pages, {self.rate:,.0f}/s"
        )
        self.callback(SyncProgress(records=self.records, total=self.total, pages=self.pages, message=text))


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number or numeric string as Decimal (via str, never via binary float); None if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def as_attribute(value: Any) -> Attribute | None:
    """A custom-field value as a deal attribute: numbers as float, the rest as text; None when empty."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, list | tuple):
        items = [str(v) for v in value if v is not None and v != ""]
        return ";".join(sorted(items)) if items else None
    if isinstance(value, Mapping):
        return None
    return str(value)


class StageCatalog:
    """The pipelines of one sync, able to take in stages the CRM no longer lists.

    History can name a stage that was deleted since; the store and the as-of reconstruction need
    every stage a history row names, so such a stage is added to the deal's pipeline as an open
    stage called "<id> (removed)" and the updated pipeline goes out with the next batch.
    """

    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self.pipelines: dict[str, Pipeline] = {p.id: p for p in pipelines}
        self.stage_pipeline: dict[str, str] = {s.id: p.id for p in self.pipelines.values() for s in p.stages}
        self._changed: set[str] = set()

    def __contains__(self, stage_id: str) -> bool:
        return stage_id in self.stage_pipeline

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id (KeyError if unknown)."""
        return self.pipelines[self.stage_pipeline[stage_id]].stage(stage_id)

    def ensure(self, stage_id: str, pipeline_id: str) -> None:
        """Make sure `stage_id` exists, adding it to `pipeline_id` (or a catch-all pipeline) if not."""
        if stage_id in self.stage_pipeline:
            return
        log.info("stage %r is not in the CRM's stage list any more; keeping it as a removed stage", stage_id)
        pipeline = self.pipelines.get(pipeline_id) or Pipeline(
            id=pipeline_id, name=pipeline_id, stages=(Stage(id=stage_id, name=stage_id, order=0, probability=0),)
        )
        open_stages = [s for s in sorted(pipeline.stages, key=lambda s: s.order) if not s.is_closed]
        closed = [s for s in sorted(pipeline.stages, key=lambda s: s.order) if s.is_closed]
        if stage_id not in {s.id for s in pipeline.stages}:
            open_stages.append(Stage(id=stage_id, name=f"{stage_id} (removed)", order=0, probability=Decimal(0)))
        stages = tuple(s.model_copy(update={"order": i}) for i, s in enumerate(open_stages + closed))
        self.pipelines[pipeline_id] = pipeline.model_copy(update={"stages": stages})
        self.stage_pipeline[stage_id] = pipeline_id
        self._changed.add(pipeline_id)

    def take_changed(self) -> list[Pipeline]:
        """Pipelines changed since the last call (to send with the next batch)."""
        changed = [self.pipelines[p] for p in sorted(self._changed)]
        self._changed.clear()
        return changed


def adds_nothing(batch: SyncBatch, last_cursor: str | None) -> bool:
    """True for a batch that carries no records and does not move the cursor (not worth sending)."""
    return not (batch.pipelines or batch.owners or batch.opportunities or batch.changes or batch.deleted_ids
                or batch.activities) and batch.cursor == last_cursor


def make_opportunity(service: str, fields: dict[str, Any]) -> Opportunity | None:
    """Build an Opportunity, or log why the CRM record does not fit the model and return None.

    A closed deal is built with a provisional `closed_at` (its modification time); `finish_deal`
    replaces it with the time the deal entered its closed stage.
    """
    if fields.get("is_closed") and fields.get("closed_at") is None:
        fields["closed_at"] = fields.get("modified_at") or fields.get("created_at") or datetime.now(timezone.utc)
    try:
        return Opportunity(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())
        log.warning("%s: skipped deal %s: %s", service, fields.get("id"), redact(problems))
        return None


def finish_deal(opp: Opportunity, rows: list[StageChange]) -> tuple[Opportunity, list[StageChange]]:
    """Complete a deal's history and make it agree with the deal's current state.

    The history is completed (`complete_history`); when its last row is in another stage than the
    deal (history the CRM did not record), a row at the deal's modification time brings it to the
    current stage. A closed deal's `closed_at` becomes the time it entered its final stage, which is
    how the as-of reconstruction (`snapshot_of`) dates a close.
    """
    history = rows if _complete(opp, rows) else complete_history(opp, rows)
    if history and history[-1].stage_id != opp.stage_id:
        last = history[-1]
        at = max(last.changed_at, opp.modified_at or last.changed_at)
        history.append(
            StageChange(
                opportunity_id=opp.id, changed_at=at, stage_id=opp.stage_id, amount=opp.amount,
                close_date=opp.close_date or last.close_date,
                forecast_category=opp.forecast_category or last.forecast_category,
            )
        )
    if not opp.is_closed or not history:
        return opp, history
    entered = history[-1].changed_at
    for row in reversed(history):
        if row.stage_id != opp.stage_id:
            break
        entered = row.changed_at
    return opp.model_copy(update={"closed_at": entered}), history


def _complete(opp: Opportunity, rows: list[StageChange]) -> bool:
    """True when `complete_history` would return `rows` unchanged (ordered; each field known on every
    row, or unknown on every row and on the deal). Skipping the copy keeps a million-row sync fast."""
    if not rows:
        return False
    previous = rows[0].changed_at
    for row in rows:
        if row.changed_at < previous or row.amount is None:
            return False
        previous = row.changed_at
    for name in ("close_date", "forecast_category"):
        known = [getattr(row, name) is not None for row in rows]
        if not all(known) and (any(known) or getattr(opp, name) is not None):
            return False
    return True


def stage_change(
    opportunity_id: str, changed_at: datetime, stage_id: str, amount: Decimal | None, close_date: date | None,
    forecast_category: ForecastCategory | None,
) -> StageChange:
    """A StageChange from values the connector has already parsed and checked, without re-validation.

    `changed_at` must be timezone-aware, `amount` non-negative or None, `stage_id` non-empty; the
    connectors' parsers guarantee it. This is what pydantic's `model_construct` does, minus its
    per-field bookkeeping, which costs more than the rest of a million-row sync
    (tests/test_http.py checks the result equals a validated StageChange).
    """
    return construct_trusted(StageChange, {
        "opportunity_id": opportunity_id, "changed_at": changed_at, "stage_id": stage_id, "amount": amount,
        "close_date": close_date, "forecast_category": forecast_category,
    })


_CATEGORIES: dict[str, ForecastCategory | None] = {}


def parse_category(value: Any) -> ForecastCategory | None:
    """A CRM's forecast category spelling as ForecastCategory (None when empty or unknown), cached."""
    if not value:
        return None
    text = str(value)
    if text not in _CATEGORIES:
        try:
            _CATEGORIES[text] = ForecastCategory.parse(text)
        except ValueError:
            log.debug("unknown forecast category %r", text)
            _CATEGORIES[text] = None
    return _CATEGORIES[text]
