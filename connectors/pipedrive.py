"""Pipedrive with an API token: v2 deals, stages and pipelines; v1 deal flow for the history.

A sync pages through `GET /api/v2/deals` sorted by update time (cursor paging) and, for each deal
of a page, reads its change log `GET /v1/deals/{id}/flow` (dealChange items) concurrently, within
the burst limit (a shared limiter plus 429 handling with `x-ratelimit-reset`). Pipedrive keeps won
and lost as a deal status, not a stage, so each pipeline gets two closed stages of the cockpit's
own ("<pipeline>:won", "<pipeline>:lost"); a won deal sits in the first.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr

from cockpit.models import ForecastCategory, Opportunity, Owner, Pipeline, Stage, StageChange, SyncBatch
from connectors import ConnectorError, ProgressCallback
from connectors._http import (
    HeaderAuth,
    adds_nothing,
    HttpClient,
    HttpStats,
    ProgressMeter,
    RateLimiter,
    Retry,
    RetryPolicy,
    StageCatalog,
    Timeouts,
    as_attribute,
    connector_error,
    decode_cursor,
    encode_cursor,
    finish_deal,
    make_opportunity,
    protect_logger,
    stage_change,
    to_decimal,
)

log = protect_logger(logging.getLogger(__name__))

SERVICE = "Pipedrive"
TRACKED = ("stage_id", "status", "value", "expected_close_date", "pipeline_id")
"""dealChange fields that shape the history."""
NUMERIC_FIELD_TYPES = {"double", "int", "monetary"}
CATEGORICAL_FIELD_TYPES = {"enum", "set", "varchar", "varchar_options", "status"}
_CUSTOM_KEY = re.compile(r"^[0-9a-f]{40}$")


def won_stage(pipeline_id: str) -> str:
    """The cockpit's won stage of a Pipedrive pipeline."""
    return f"{pipeline_id}:won"


def lost_stage(pipeline_id: str) -> str:
    """The cockpit's lost stage of a Pipedrive pipeline."""
    return f"{pipeline_id}:lost"


def _datetime(value: Any) -> datetime | None:
    """v2 RFC 3339 ("2024-06-10T14:03:12Z") or v1 ("2024-06-10 14:03:12", UTC) as aware datetimes."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _date(value: Any) -> date | None:
    return date.fromisoformat(str(value)[:10]) if value else None


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error_hook(response: httpx.Response, body: Any) -> ConnectorError | Retry | None:
    """Pipedrive's answers: daily budget spent stops, the burst limit waits for its reset."""
    path = response.request.url.path
    headers = response.headers
    if response.status_code == 429:
        if headers.get("x-daily-ratelimit-token-remaining") == "0" or headers.get("x-daily-requests-left") == "0":
            return connector_error(
                "API quota exhausted",
                f"Pipedrive refused {path}: the company's daily API token budget is used up. It resets at "
                "midnight UTC; run the sync again after that, or ask the Pipedrive admin about a larger plan. "
                "The sync resumes where it stopped.",
            )
        reset = to_decimal(headers.get("x-ratelimit-reset"))
        if headers.get("Retry-After") is None and reset is not None:
            return Retry("burst rate limit", delay=float(reset) + 0.05)
        return Retry("burst rate limit")
    if response.status_code == 410:
        return connector_error("Pipedrive endpoint removed",
                               f"Pipedrive answered {path} with 410 Gone: this API endpoint was retired. Update the "
                               "cockpit.")
    if response.status_code == 402:
        return connector_error("Pipedrive plan limit",
                               f"Pipedrive answered {path} with 402 Payment Required: the company's plan does not "
                               "include this API feature.")
    return None


@dataclass
class _Scan:
    """The resume point: the latest update time handed out and the deals handed out at that second."""

    ts: datetime | None = None
    ids: set[str] = field(default_factory=set)

    def cursor(self) -> str | None:
        if self.ts is None:
            return None
        return encode_cursor({"ts": _rfc3339(self.ts), "ids": sorted(self.ids)[:200] if len(self.ids) <= 200 else []})

    def take(self, row: Mapping[str, Any], since: _Scan) -> bool:
        """Record a deal; False if the previous run already handed it out."""
        ident = str(row.get("id"))
        moment = _datetime(row.get("update_time")) or datetime.min.replace(tzinfo=timezone.utc)
        if since.ts is not None and (moment < since.ts or (moment == since.ts and ident in since.ids)):
            return False
        if self.ts is None or moment > self.ts:
            self.ts, self.ids = moment, {ident}
        elif moment == self.ts:
            self.ids.add(ident)
        return True


class PipedriveConnector:
    """Reads a Pipedrive company's deals into SyncBatches. See the module docstring and docs/connectors.md."""

    name = "pipedrive"
    SECRET_NAMES = {"api_token": "COCKPIT_PIPEDRIVE_API_TOKEN"}
    """Secret → the environment variable (or keyring entry) that holds it."""

    def __init__(
        self,
        *,
        api_token: SecretStr | str,
        company_domain: str | None = None,
        base_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        page_size: int = 500,
        flow_page_size: int = 500,
        max_concurrency: int = 4,
        requests_per_2s: int = 20,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`company_domain` ("acme" for acme.pipedrive.com) or `base_url` (default
        https://api.pipedrive.com); `page_size` (≤ 500) deals per page and batch;
        `requests_per_2s` is the plan's burst limit (20 on the smallest plans)."""
        if not 1 <= page_size <= 500:
            raise ValueError(f"page_size must be between 1 and 500 (Pipedrive's largest page), got {page_size}")
        token = api_token if isinstance(api_token, SecretStr) else SecretStr(api_token)
        self._auth = HeaderAuth("x-api-token", token)
        if base_url is None:
            base_url = f"https://{company_domain}.pipedrive.com" if company_domain else "https://api.pipedrive.com"
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.flow_page_size = flow_page_size
        self.max_concurrency = max_concurrency
        self.requests_per_2s = requests_per_2s
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._client = client
        self.last_stats: HttpStats | None = None
        """Requests, retries and bytes of the last run."""

    def __repr__(self) -> str:
        return f"PipedriveConnector(base_url={self.base_url!r}, api_token='**********')"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> PipedriveConnector:
        """Build from `[connector.pipedrive]` settings (company_domain or base_url, page_size,
        requests_per_2s, max_concurrency) and the secret COCKPIT_PIPEDRIVE_API_TOKEN."""
        env = cls.SECRET_NAMES["api_token"]
        token = secrets.get(env)
        if not token:
            raise connector_error("Pipedrive settings incomplete",
                                  f"the environment variable {env} (your personal API token) is not set.")
        options: dict[str, Any] = {k: settings[k] for k in ("company_domain", "base_url") if settings.get(k)}
        options |= {k: int(settings[k]) for k in ("page_size", "requests_per_2s", "max_concurrency")
                    if settings.get(k)}
        return cls(api_token=SecretStr(str(token)), **options)

    # ---- public API ------------------------------------------------------------------------------

    async def batches(self, cursor: str | None, progress: ProgressCallback | None = None) -> AsyncIterator[SyncBatch]:
        """Full sync (cursor None) or deals updated since `cursor`; see the module docstring."""
        since = self._read_cursor(cursor)
        scan = _Scan(since.ts, set(since.ids))
        meter = ProgressMeter(progress, SERVICE, "deals")
        http = self._http()
        limiter = RateLimiter(self.requests_per_2s, 2.1)  # 0.1 s margin: Pipedrive counts on arrival
        try:
            catalog = StageCatalog(await self._pipelines(http, limiter))
            owners = await self._owners(http, limiter)
            fields = await self._custom_fields(http, limiter)
            meter.report(f"{SERVICE}: {len(catalog.pipelines)} pipelines, {len(owners)} users")
            yield SyncBatch(pipelines=list(catalog.pipelines.values()), owners=owners, cursor=cursor)
            organizations: dict[int, str] = {}
            pending: deque[tuple[list[Opportunity], list[str], asyncio.Task[dict[str, list[StageChange]]],
                                 str | None]] = deque()
            try:
                async for rows in self._deal_pages(http, limiter, since):
                    meter.add(records=len(rows), pages=1)
                    rows = [r for r in rows if scan.take(r, since)]
                    await self._organizations(http, limiter, rows, organizations)
                    deleted = [str(r["id"]) for r in rows if r.get("status") == "deleted" or r.get("is_deleted")]
                    deals = [d for d in (self._deal(r, catalog, fields, organizations) for r in rows
                                         if str(r["id"]) not in deleted) if d is not None]
                    raw_stages = {str(r["id"]): str(r.get("stage_id") or "") for r in rows}
                    task = asyncio.create_task(self._histories(http, limiter, deals, raw_stages))
                    pending.append((deals, deleted, task, scan.cursor() or cursor))
                    while len(pending) > 1:
                        batch = await self._finish(pending.popleft(), catalog)
                        if not adds_nothing(batch, cursor):
                            cursor = batch.cursor
                            yield batch
                while pending:
                    batch = await self._finish(pending.popleft(), catalog)
                    if not adds_nothing(batch, cursor):
                        cursor = batch.cursor
                        yield batch
            finally:
                for *_, task, _ in pending:
                    task.cancel()
            meter.report(f"{SERVICE}: done, {meter.records:,} deals in {meter.pages:,} pages ({meter.rate:,.0f}/s), "
                         f"{http.stats.requests:,} requests")
        finally:
            self.last_stats = http.stats
            await http.aclose()

    async def check(self) -> list[str]:
        """Verify the token and report what can be read. Writes nothing."""
        http = self._http()
        limiter = RateLimiter(self.requests_per_2s, 2.1)  # 0.1 s margin: Pipedrive counts on arrival
        try:
            me = await http.get_json("/v1/users/me", limiter=limiter)
            data = (me or {}).get("data") or {}
            lines = [f"Signed in to {httpx.URL(self.base_url).host} as {data.get('name', '?')} "
                     f"({data.get('company_name') or data.get('company_domain') or 'company'})"]
            pipelines = await self._pipelines(http, limiter)
            stages = sum(len(p.stages) - 2 for p in pipelines)
            lines.append(f"Pipelines: {len(pipelines)} ({stages} stages)")
            owners = await self._owners(http, limiter)
            lines.append(f"Users: {len(owners)} readable")
            body = await http.get_json("/api/v2/deals", params={"limit": 1}, limiter=limiter)
            sample = (body or {}).get("data") or []
            lines.append("Deals: readable" if sample else "Deals: none readable (empty company or no access)")
            if sample:
                await self._flow(http, limiter, str(sample[0]["id"]))
                lines.append("Deal change history (flow): readable")
            fields = await self._custom_fields(http, limiter)
            lines.append(f"Custom deal fields kept as attributes: {len(fields)}")
            return lines
        finally:
            await http.aclose()

    # ---- plumbing --------------------------------------------------------------------------------

    def _http(self) -> HttpClient:
        return HttpClient(service=SERVICE, base_url=self.base_url, auth=self._auth, client=self._client,
                          timeouts=self.timeouts, max_concurrency=self.max_concurrency, retry=self.retry,
                          error_hook=_error_hook)

    def _read_cursor(self, cursor: str | None) -> _Scan:
        if cursor is None:
            return _Scan()
        values = decode_cursor(cursor, SERVICE, ("ts", "ids"))
        moment = _datetime(values["ts"]) if isinstance(values["ts"], str) else None
        if moment is None or not isinstance(values["ids"], list):
            raise connector_error("Pipedrive: unknown sync cursor",
                                  "the stored cursor is damaged; run a full sync.")
        return _Scan(moment, {str(i) for i in values["ids"]})

    async def _v2_all(self, http: HttpClient, limiter: RateLimiter, path: str,
                      params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Every row of a v2 list (cursor paging)."""
        rows: list[Mapping[str, Any]] = []
        async for page in self._v2_pages(http, limiter, path, params):
            rows.extend(page)
        return rows

    async def _v2_pages(self, http: HttpClient, limiter: RateLimiter, path: str,
                        params: Mapping[str, Any]) -> AsyncIterator[list[Mapping[str, Any]]]:
        cursor: str | None = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            body = await http.get_json(path, params=query, limiter=limiter)
            if not isinstance(body, Mapping) or not isinstance(body.get("data"), list | None):
                raise connector_error("Pipedrive sent an unexpected answer", f"{path} answered without a data list.")
            yield [r for r in body.get("data") or [] if isinstance(r, Mapping)]
            cursor = (body.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return

    async def _v1_all(self, http: HttpClient, limiter: RateLimiter, path: str,
                      params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Every item of a v1 list (start/limit paging)."""
        rows: list[Mapping[str, Any]] = []
        start = 0
        while True:
            body = await http.get_json(path, params={**params, "start": start}, limiter=limiter)
            rows.extend(r for r in (body or {}).get("data") or [] if isinstance(r, Mapping))
            pagination = ((body or {}).get("additional_data") or {}).get("pagination") or {}
            if not pagination.get("more_items_in_collection"):
                return rows
            start = int(pagination.get("next_start") or start + int(params.get("limit", 100)))

    # ---- metadata --------------------------------------------------------------------------------

    async def _pipelines(self, http: HttpClient, limiter: RateLimiter) -> list[Pipeline]:
        raw_pipelines = await self._v2_all(http, limiter, "/api/v2/pipelines", {"limit": 500})
        raw_stages = await self._v2_all(http, limiter, "/api/v2/stages", {"limit": 500})
        pipelines = []
        for raw in sorted(raw_pipelines, key=lambda p: (p.get("order_nr") or 0, p["id"])):
            if raw.get("is_deleted"):
                continue
            pid = str(raw["id"])
            own = sorted((s for s in raw_stages if str(s.get("pipeline_id")) == pid and not s.get("is_deleted")),
                         key=lambda s: (s.get("order_nr") or 0, s["id"]))
            stages = [Stage(id=str(s["id"]), name=str(s.get("name") or s["id"]), order=i,
                            probability=min(Decimal(1), max(Decimal(0), (to_decimal(s.get("deal_probability"))
                                                                         or Decimal(0)) / 100)))
                      for i, s in enumerate(own)]
            stages.append(Stage(id=won_stage(pid), name="Won", order=len(stages), probability=Decimal(1),
                                category=ForecastCategory.CLOSED, is_closed=True, is_won=True))
            stages.append(Stage(id=lost_stage(pid), name="Lost", order=len(stages), probability=Decimal(0),
                                category=ForecastCategory.OMITTED, is_closed=True))
            pipelines.append(Pipeline(id=pid, name=str(raw.get("name") or pid), stages=tuple(stages)))
        if not pipelines:
            raise connector_error("No pipelines in Pipedrive", "GET /api/v2/pipelines returned no pipeline.")
        return pipelines

    async def _owners(self, http: HttpClient, limiter: RateLimiter) -> list[Owner]:
        body = await http.get_json("/v1/users", limiter=limiter)
        return [Owner(id=str(u["id"]), name=str(u.get("name") or u.get("email") or u["id"]),
                      email=u.get("email") or None)
                for u in (body or {}).get("data") or [] if isinstance(u, Mapping) and not u.get("is_deleted")]

    async def _custom_fields(self, http: HttpClient, limiter: RateLimiter) -> dict[str, Mapping[str, Any]]:
        """Custom deal fields kept as attributes, by key (their name, type and options)."""
        try:
            rows = await self._v1_all(http, limiter, "/v1/dealFields", {"limit": 500})
        except ConnectorError as exc:
            log.warning("Pipedrive: deal fields not readable (%s); custom fields keep their keys", exc.message)
            return {}
        return {
            str(r["key"]): r for r in rows
            if _CUSTOM_KEY.match(str(r.get("key", "")))
            and str(r.get("field_type")) in NUMERIC_FIELD_TYPES | CATEGORICAL_FIELD_TYPES
        }

    async def _organizations(self, http: HttpClient, limiter: RateLimiter, rows: Sequence[Mapping[str, Any]],
                             known: dict[int, str]) -> None:
        """Fill `known` with the names of the organizations of `rows` not seen yet."""
        wanted = sorted({int(r["org_id"]) for r in rows if isinstance(r.get("org_id"), int)} - set(known))
        for i in range(0, len(wanted), 100):
            chunk = wanted[i : i + 100]
            found = await self._v2_all(http, limiter, "/api/v2/organizations",
                                       {"ids": ",".join(map(str, chunk)), "limit": 100})
            for org in found:
                known[int(org["id"])] = str(org.get("name") or "")
            for ident in chunk:
                known.setdefault(ident, "")

    # ---- deals -----------------------------------------------------------------------------------

    async def _deal_pages(self, http: HttpClient, limiter: RateLimiter,
                          since: _Scan) -> AsyncIterator[list[Mapping[str, Any]]]:
        params: dict[str, Any] = {"sort_by": "update_time", "sort_direction": "asc", "limit": self.page_size}
        if since.ts is not None:
            # one second earlier: correct whether the API compares with > or >=; seen deals are skipped
            params["updated_since"] = _rfc3339(since.ts - timedelta(seconds=1))
            params["status"] = "open,won,lost,deleted"
        async for page in self._v2_pages(http, limiter, "/api/v2/deals", params):
            yield page

    def _deal(self, row: Mapping[str, Any], catalog: StageCatalog, fields: Mapping[str, Mapping[str, Any]],
              organizations: Mapping[int, str]) -> Opportunity | None:
        pipeline_id = str(row.get("pipeline_id") or "")
        status = str(row.get("status") or "open")
        stage_id = str(row.get("stage_id") or "")
        if status == "won":
            stage_id = won_stage(pipeline_id)
        elif status == "lost":
            stage_id = lost_stage(pipeline_id)
        if stage_id:
            catalog.ensure(stage_id, pipeline_id)
        probability = to_decimal(row.get("probability"))
        closed_at = _datetime(row.get("won_time") or row.get("lost_time") or row.get("close_time"))
        org = row.get("org_id")
        return make_opportunity(SERVICE, {
            "id": str(row["id"]),
            "name": row.get("title") or "",
            "account": organizations.get(org, "") if isinstance(org, int) else "",
            "owner_id": str(row.get("owner_id") or ""),
            "pipeline_id": pipeline_id,
            "stage_id": stage_id,
            "amount": to_decimal(row.get("value")) or Decimal(0),
            "currency": row.get("currency") or "USD",
            "close_date": _date(row.get("expected_close_date")),
            "created_at": _datetime(row.get("add_time")),
            "modified_at": _datetime(row.get("update_time")),
            "type": row.get("origin") or None,
            "is_closed": status in ("won", "lost"),
            "is_won": status == "won",
            "closed_at": closed_at if status in ("won", "lost") else None,
            "probability": probability / 100 if probability is not None and 0 <= probability <= 100 else None,
            "attributes": _attributes(row.get("custom_fields") or {}, fields),
        })

    async def _flow(self, http: HttpClient, limiter: RateLimiter, deal_id: str) -> list[Mapping[str, Any]]:
        return await self._v1_all(http, limiter, f"/v1/deals/{deal_id}/flow",
                                  {"items": "dealChange", "limit": self.flow_page_size})

    async def _histories(self, http: HttpClient, limiter: RateLimiter, deals: Sequence[Opportunity],
                         raw_stages: Mapping[str, str]) -> dict[str, list[StageChange]]:
        """Each deal's history from its flow; `raw_stages` is Pipedrive's stage id of each deal."""
        flows = await asyncio.gather(*(self._flow(http, limiter, d.id) for d in deals))
        return {deal.id: _history(deal, items, raw_stages.get(deal.id) or None) for deal, items in zip(deals, flows)}

    async def _finish(self, work: tuple[list[Opportunity], list[str], asyncio.Task[dict[str, list[StageChange]]],
                                        str | None], catalog: StageCatalog) -> SyncBatch:
        deals, deleted, task, cursor = work
        histories = await task
        done: list[Opportunity] = []
        changes: list[StageChange] = []
        for deal in deals:
            deal, rows = finish_deal(deal, histories.get(deal.id, []))
            for row in rows:
                catalog.ensure(row.stage_id, deal.pipeline_id)
            done.append(deal)
            changes.extend(rows)
        return SyncBatch(pipelines=catalog.take_changed(), opportunities=done, changes=changes,
                         deleted_ids=deleted, cursor=cursor)


def _attributes(values: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]]) -> dict[str, float | str]:
    """Custom field values as attributes, named by the field's name; option ids become their labels."""
    out: dict[str, float | str] = {}
    for key, raw in values.items():
        definition = fields.get(key)
        if definition is None:
            continue
        options = {o.get("id"): str(o.get("label")) for o in definition.get("options") or [] if isinstance(o, Mapping)}
        value: Any = raw
        if isinstance(raw, Mapping):
            value = raw.get("value")
        if options and isinstance(value, int) and not isinstance(value, bool):
            value = options.get(value, str(value))
        elif options and isinstance(value, list):
            value = [options.get(v, str(v)) for v in value]
        attribute = as_attribute(value)
        if attribute is not None:
            out[str(definition.get("name") or key)] = attribute
    return out


def _history(deal: Opportunity, items: Sequence[Mapping[str, Any]], stage_id: str | None) -> list[StageChange]:
    """Rebuild the deal's history from its dealChange items (newest first, as the flow lists them).

    The state at creation comes from the oldest change of each field (its old value) or, for a
    field that never changed, the deal's current value (`stage_id` is Pipedrive's stage of the
    deal, which a won or lost deal keeps); each later instant with changes gives a row.
    """
    changes = []
    for item in items:
        data = item.get("data") or {}
        key = data.get("field_key")
        moment = _datetime(data.get("log_time") or item.get("timestamp"))
        if item.get("object") == "dealChange" and key in TRACKED and moment is not None:
            changes.append((moment, int(data.get("id") or 0), str(key), data.get("old_value"), data.get("new_value")))
    changes.sort(key=lambda c: (c[0], c[1]))
    state: dict[str, Any] = {
        "stage_id": stage_id,
        "status": "won" if deal.is_won else "lost" if deal.is_closed else "open",
        "value": deal.amount,
        "expected_close_date": deal.close_date.isoformat() if deal.close_date else None,
        "pipeline_id": deal.pipeline_id,
    }
    for key in TRACKED:
        first = next((c for c in changes if c[2] == key), None)
        if first is not None:
            state[key] = first[3]
    start = deal.created_at or (changes[0][0] if changes else None)
    if start is None:
        return []
    rows = [_row(deal, start, state)]
    index = 0
    while index < len(changes):
        moment = changes[index][0]
        while index < len(changes) and changes[index][0] == moment:
            state[changes[index][2]] = changes[index][4]
            index += 1
        if moment <= start:
            rows[0] = _row(deal, start, state)
        else:
            rows.append(_row(deal, moment, state))
    return [r for r in rows if r is not None]


def _row(deal: Opportunity, moment: datetime, state: Mapping[str, Any]) -> StageChange | None:
    pipeline = str(state.get("pipeline_id") or deal.pipeline_id)
    status = str(state.get("status") or "open")
    if status == "won":
        stage = won_stage(pipeline)
    elif status == "lost":
        stage = lost_stage(pipeline)
    else:
        stage = str(state.get("stage_id") or "") or None
    if stage is None:
        return None
    amount = to_decimal(state.get("value"))
    return stage_change(deal.id, moment, stage, amount if amount is not None and amount >= 0 else None,
                        _date(state.get("expected_close_date")), None)
