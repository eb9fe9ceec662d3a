"""HubSpot CRM v3 with a private-app token: deals, their stage history, pipelines and owners.

A sync pages through the deal search sorted by `hs_lastmodifieddate`. One search can page through
at most 10,000 results, so the scan runs in windows: when a window is nearly used up, a new search
starts at the last modification time seen (deals already sent at that instant are skipped). If more
than a window's worth of deals share one instant, those are walked by `hs_object_id` instead.
History comes from batch reads with `propertiesWithHistory` (stage, amount, close date, forecast
category). Search calls go through a limiter (HubSpot allows about 4-5 per second) and 429s are
retried after `Retry-After`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
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
    parse_category,
    protect_logger,
    stage_change,
    to_decimal,
)

log = protect_logger(logging.getLogger(__name__))

SERVICE = "HubSpot"
UNASSIGNED = "hubspot:unassigned"
"""Owner id given to deals without an owner (the cockpit needs one)."""
DEAL_PROPERTIES = (
    "dealname", "amount", "dealstage", "pipeline", "closedate", "hs_forecast_category",
    "hs_manual_forecast_category", "hs_deal_stage_probability", "hubspot_owner_id", "createdate",
    "hs_lastmodifieddate", "hs_next_step", "notes_last_updated", "dealtype", "hs_is_closed", "hs_is_closed_won",
    "deal_currency_code", "hs_analytics_source",
)
HISTORY_PROPERTIES = ("dealstage", "amount", "closedate", "hs_manual_forecast_category")
NUMERIC_TYPES = {"number"}
CATEGORICAL_TYPES = {"enumeration", "bool", "string"}
SKIPPED_FIELD_TYPES = {"textarea", "html", "file", "phonenumber"}
MODIFIED = "hs_lastmodifieddate"


def _datetime(value: Any) -> datetime | None:
    """HubSpot timestamps: ISO strings with Z (or epoch milliseconds) as aware UTC datetimes."""
    if value in (None, ""):
        return None
    text = str(value)
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _date(value: Any) -> date | None:
    moment = _datetime(value)
    return moment.date() if moment else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


_category = parse_category


def _error_hook(response: httpx.Response, body: Any) -> ConnectorError | Retry | None:
    """HubSpot's answers: the daily limit stops, the short limits are retried, missing scopes explained."""
    data = body if isinstance(body, Mapping) else {}
    path = response.request.url.path
    if response.status_code == 429:
        if str(data.get("policyName", "")).upper() == "DAILY":
            return connector_error(
                "API quota exhausted",
                f"HubSpot refused {path}: the portal's daily API limit is used up. Retry after midnight in the "
                "portal's time zone, or ask a HubSpot admin about the API limit increase add-on. The sync "
                "resumes where it stopped.",
            )
        return Retry(f"rate limited ({data.get('policyName') or 'secondly'} limit)")
    if response.status_code == 403 and data.get("category") == "MISSING_SCOPES":
        return connector_error(
            "No permission in HubSpot",
            f"HubSpot refused {path}: the private app lacks a scope. Give it crm.objects.deals.read, "
            "crm.objects.owners.read and crm.schemas.deals.read (Settings → Integrations → Private apps), "
            "then update the token if HubSpot issues a new one.",
        )
    return None


@dataclass
class _Scan:
    """Where the deal scan stands: the resume point after the records handed out so far."""

    ts: int | None = None
    """Latest hs_lastmodifieddate handed out (epoch ms)."""
    ids: set[str] = field(default_factory=set)
    """Deals handed out whose modification time is exactly `ts`."""
    tie: str | None = None
    """In a tie walk at `ts`: the last hs_object_id handed out."""

    def cursor(self) -> str | None:
        if self.ts is None:
            return None
        return encode_cursor({"ts": self.ts, "ids": sorted(self.ids)[:200] if len(self.ids) <= 200 else [],
                              "tie": self.tie})

    def take(self, record: Mapping[str, Any]) -> bool:
        """Record a deal read from the search; False if it was already handed out at this instant."""
        ident = str(record.get("id"))
        moment = _datetime((record.get("properties") or {}).get(MODIFIED))
        stamp = _ms(moment) if moment else 0
        if self.ts is not None and stamp < self.ts:
            return True  # an older change seen again: harmless, the store replaces
        if stamp == self.ts:
            if ident in self.ids:
                return False
            self.ids.add(ident)
        else:
            self.ts, self.ids, self.tie = stamp, {ident}, None
        return True


class HubSpotConnector:
    """Reads a HubSpot portal's deals into SyncBatches. See the module docstring and docs/connectors.md."""

    name = "hubspot"
    SECRET_NAMES = {"access_token": "COCKPIT_HUBSPOT_ACCESS_TOKEN"}
    """Secret → the environment variable (or keyring entry) that holds it."""

    def __init__(
        self,
        *,
        access_token: SecretStr | str,
        base_url: str = "https://api.hubapi.com",
        client: httpx.AsyncClient | None = None,
        page_size: int = 100,
        history_batch: int = 50,
        search_per_second: int = 4,
        search_window: int = 10_000,
        max_concurrency: int = 4,
        default_currency: str | None = None,
        custom_properties: Sequence[str] | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`page_size` (≤ 200) deals per search page and batch; `history_batch` (≤ 100, 50 advised)
        deals per history read; `search_window` is HubSpot's cap on one search's results;
        `default_currency` skips the account lookup; `custom_properties` overrides the discovery of
        custom deal properties kept as attributes."""
        if not 1 <= page_size <= 200:
            raise ValueError(f"page_size must be between 1 and 200 (HubSpot's search limit), got {page_size}")
        if not 1 <= history_batch <= 100:
            raise ValueError(f"history_batch must be between 1 and 100, got {history_batch}")
        token = access_token if isinstance(access_token, SecretStr) else SecretStr(access_token)
        self._auth = HeaderAuth("Authorization", token, prefix="Bearer ")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.history_batch = history_batch
        self.search_per_second = search_per_second
        self.search_window = search_window
        self.max_concurrency = max_concurrency
        self.default_currency = default_currency
        self.custom_properties = list(custom_properties) if custom_properties is not None else None
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._client = client
        self.last_stats: HttpStats | None = None
        """Requests, retries and bytes of the last run."""

    def __repr__(self) -> str:
        return f"HubSpotConnector(base_url={self.base_url!r}, access_token='**********')"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> HubSpotConnector:
        """Build from `[connector.hubspot]` settings (base_url, page_size, search_per_second,
        default_currency, custom_properties) and the secret COCKPIT_HUBSPOT_ACCESS_TOKEN."""
        env = cls.SECRET_NAMES["access_token"]
        token = secrets.get(env)
        if not token:
            raise connector_error("HubSpot settings incomplete",
                                  f"the environment variable {env} (the private app's access token) is not set.")
        options: dict[str, Any] = {k: settings[k] for k in ("base_url", "default_currency") if settings.get(k)}
        options |= {k: int(settings[k]) for k in ("page_size", "search_per_second", "max_concurrency")
                    if settings.get(k)}
        if settings.get("custom_properties") is not None:
            options["custom_properties"] = [str(p) for p in settings["custom_properties"]]
        return cls(access_token=SecretStr(str(token)), **options)

    # ---- public API ------------------------------------------------------------------------------

    async def batches(self, cursor: str | None, progress: ProgressCallback | None = None) -> AsyncIterator[SyncBatch]:
        """Full sync (cursor None) or deals modified since `cursor`; see the module docstring."""
        scan = self._read_cursor(cursor)
        since = scan.ts
        meter = ProgressMeter(progress, SERVICE, "deals")
        http = self._http()
        limiter = RateLimiter(self.search_per_second, 1.1)  # 0.1 s margin: HubSpot counts on arrival
        try:
            catalog = StageCatalog(await self._pipelines(http))
            owners = await self._owners(http)
            custom = await self._custom_properties(http)
            currency = self.default_currency or await self._company_currency(http)
            meter.report(f"{SERVICE}: {len(catalog.pipelines)} pipelines, {len(owners)} owners")
            yield SyncBatch(pipelines=list(catalog.pipelines.values()), owners=owners, cursor=cursor)
            catalog.take_changed()
            properties = list(DEAL_PROPERTIES) + sorted(custom)
            pending: deque[tuple[list[Opportunity], asyncio.Task[dict[str, list[StageChange]]], str | None]] = deque()
            try:
                async for records, total in self._scan(http, limiter, scan, properties):
                    meter.add(records=len(records), pages=1, total=total if since is None else None)
                    deals = [d for d in (self._deal(r, catalog, custom, currency) for r in records) if d is not None]
                    pending.append((deals, asyncio.create_task(self._histories(http, deals)), scan.cursor()))
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
                for _, task, _ in pending:
                    task.cancel()
            if since is not None:
                deleted = await self._archived_since(http, since)
                if deleted:
                    yield SyncBatch(deleted_ids=deleted, cursor=scan.cursor() or cursor)
            meter.report(f"{SERVICE}: done, {meter.records:,} deals in {meter.pages:,} pages ({meter.rate:,.0f}/s), "
                         f"{http.stats.requests:,} requests")
        finally:
            self.last_stats = http.stats
            await http.aclose()

    async def check(self) -> list[str]:
        """Verify the token and scopes; report what can be read. Writes nothing."""
        http = self._http()
        try:
            pipelines = await self._pipelines(http)
            stages = sum(len(p.stages) for p in pipelines)
            lines = [f"Signed in to {httpx.URL(self.base_url).host} with the private-app token",
                     f"Deal pipelines: {len(pipelines)} ({stages} stages)"]
            owners = await self._owners(http)
            lines.append(f"Owners: {len(owners) - 1} readable")
            body = await http.post_json("/crm/v3/objects/deals/search",
                                        {"limit": 1, "properties": ["dealname"], "filterGroups": []})
            lines.append(f"Deals: {int((body or {}).get('total') or 0):,} readable")
            custom = await self._custom_properties(http)
            lines.append(f"Custom deal properties kept as attributes: {len(custom)}")
            sample = (body or {}).get("results") or []
            if sample:
                await self._read_histories(http, [str(sample[0]["id"])])
                lines.append("Deal stage history: readable")
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
        if not isinstance(values["ts"], int) or not isinstance(values["ids"], list):
            raise connector_error("HubSpot: unknown sync cursor",
                                  "the stored cursor is damaged; run a full sync.")
        return _Scan(ts=values["ts"], ids={str(i) for i in values["ids"]},
                     tie=str(values["tie"]) if values.get("tie") else None)

    async def _paged(self, http: HttpClient, path: str, params: dict[str, Any]) -> list[Mapping[str, Any]]:
        """All results of a GET list endpoint that pages with `paging.next.after`."""
        out: list[Mapping[str, Any]] = []
        after: str | None = None
        while True:
            body = await http.get_json(path, params={**params, **({"after": after} if after else {})})
            out.extend(r for r in (body or {}).get("results", []) if isinstance(r, Mapping))
            after = (((body or {}).get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return out

    # ---- metadata --------------------------------------------------------------------------------

    async def _pipelines(self, http: HttpClient) -> list[Pipeline]:
        body = await http.get_json("/crm/v3/pipelines/deals")
        pipelines = []
        for raw in (body or {}).get("results", []):
            stages = []
            for row in raw.get("stages") or []:
                meta = row.get("metadata") or {}
                closed = str(meta.get("isClosed", "false")).strip().lower() == "true"
                probability = min(Decimal(1), max(Decimal(0), to_decimal(meta.get("probability")) or Decimal(0)))
                won = closed and probability == 1
                category = ForecastCategory.CLOSED if won else ForecastCategory.OMITTED if closed else \
                    ForecastCategory.PIPELINE
                stages.append((closed, int(row.get("displayOrder") or 0), Stage(
                    id=str(row["id"]), name=str(row.get("label") or row["id"]), order=0, probability=probability,
                    category=category, is_closed=closed, is_won=won)))
            if not stages:
                continue
            stages.sort(key=lambda s: (s[0], s[1]))
            ordered = tuple(s.model_copy(update={"order": i}) for i, (_, _, s) in enumerate(stages))
            pipelines.append(Pipeline(id=str(raw["id"]), name=str(raw.get("label") or raw["id"]), stages=ordered))
        if not pipelines:
            raise connector_error("No deal pipelines in HubSpot",
                                  "GET /crm/v3/pipelines/deals returned no pipeline with stages.")
        return pipelines

    async def _owners(self, http: HttpClient) -> list[Owner]:
        rows = await self._paged(http, "/crm/v3/owners/", {"limit": 100})
        owners = [Owner(id=UNASSIGNED, name="Unassigned")]
        for row in rows:
            name = " ".join(p for p in (row.get("firstName"), row.get("lastName")) if p) or row.get("email") or \
                str(row["id"])
            teams = row.get("teams") or []
            team = next((t.get("name") for t in teams if t.get("primary")), None) or (
                teams[0].get("name") if teams else None)
            owners.append(Owner(id=str(row["id"]), name=name, team=team, email=row.get("email") or None))
        return owners

    async def _custom_properties(self, http: HttpClient) -> dict[str, str]:
        """Custom deal properties worth keeping as attributes → their HubSpot type."""
        if self.custom_properties is not None:
            return {name: "string" for name in self.custom_properties}
        try:
            body = await http.get_json("/crm/v3/properties/deals")
        except ConnectorError as exc:
            log.warning("HubSpot: custom deal properties not readable (%s); deals get no attributes", exc.message)
            return {}
        return {
            str(p["name"]): str(p.get("type"))
            for p in (body or {}).get("results", [])
            if not p.get("hubspotDefined") and not p.get("archived") and str(p.get("type")) in
            NUMERIC_TYPES | CATEGORICAL_TYPES and str(p.get("fieldType")) not in SKIPPED_FIELD_TYPES
        }

    async def _company_currency(self, http: HttpClient) -> str:
        try:
            body = await http.get_json("/account-info/v3/details")
        except ConnectorError as exc:
            log.warning("HubSpot: account currency not readable (%s); assuming USD", exc.message)
            return "USD"
        code = (body or {}).get("companyCurrency")
        return str(code) if code else "USD"

    # ---- deals -----------------------------------------------------------------------------------

    async def _search(self, http: HttpClient, limiter: RateLimiter, filters: list[dict[str, Any]], sort: str,
                      after: int, properties: list[str]) -> Mapping[str, Any]:
        body = {
            "filterGroups": [{"filters": filters}] if filters else [],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": properties,
            "limit": self.page_size,
            "after": str(after),
        }
        result = await http.post_json("/crm/v3/objects/deals/search", body, limiter=limiter)
        if not isinstance(result, Mapping) or not isinstance(result.get("results"), list):
            raise connector_error("HubSpot sent an unexpected answer", "a deal search answer had no 'results' list.")
        return result

    async def _scan(self, http: HttpClient, limiter: RateLimiter, scan: _Scan,
                    properties: list[str]) -> AsyncIterator[tuple[list[Mapping[str, Any]], int]]:
        """Deal pages in modification order, in windows under the search cap; updates `scan` as it goes."""
        while True:
            if scan.tie is not None:
                async for page in self._tie_walk(http, limiter, scan, properties):
                    yield page
                filters = [{"propertyName": MODIFIED, "operator": "GT", "value": str(scan.ts)}]
            elif scan.ts is not None:
                filters = [{"propertyName": MODIFIED, "operator": "GTE", "value": str(scan.ts)}]
            else:
                filters = []
            start = scan.ts
            after = 0
            while True:
                body = await self._search(http, limiter, filters, MODIFIED, after, properties)
                fresh = [r for r in body["results"] if scan.take(r)]
                yield fresh, int(body.get("total") or 0)
                nxt = ((body.get("paging") or {}).get("next") or {}).get("after")
                if not nxt:
                    return
                after = int(nxt)
                if after + self.page_size > self.search_window:
                    break
            if scan.ts == start:  # a whole window at one instant: walk that instant by id
                scan.tie = "0"

    async def _tie_walk(self, http: HttpClient, limiter: RateLimiter, scan: _Scan,
                        properties: list[str]) -> AsyncIterator[tuple[list[Mapping[str, Any]], int]]:
        """Every deal modified exactly at `scan.ts`, by hs_object_id, in windows."""
        assert scan.ts is not None
        while True:
            filters = [{"propertyName": MODIFIED, "operator": "EQ", "value": str(scan.ts)},
                       {"propertyName": "hs_object_id", "operator": "GT", "value": scan.tie or "0"}]
            after = 0
            while True:
                body = await self._search(http, limiter, filters, "hs_object_id", after, properties)
                fresh = []
                for record in body["results"]:
                    if str(record.get("id")) not in scan.ids:
                        fresh.append(record)
                    scan.ids.add(str(record.get("id")))
                    scan.tie = str(record.get("id"))
                yield fresh, int(body.get("total") or 0)
                nxt = ((body.get("paging") or {}).get("next") or {}).get("after")
                if not nxt:
                    scan.tie = None
                    scan.ids = set()
                    return
                after = int(nxt)
                if after + self.page_size > self.search_window:
                    break

    def _deal(self, record: Mapping[str, Any], catalog: StageCatalog, custom: Mapping[str, str],
              currency: str) -> Opportunity | None:
        props = record.get("properties") or {}
        stage_id = str(props.get("dealstage") or "")
        pipeline_id = str(props.get("pipeline") or "default")
        if stage_id:
            catalog.ensure(stage_id, pipeline_id)
        stage = catalog.stage(stage_id) if stage_id in catalog else None
        closed = stage.is_closed if stage else str(props.get("hs_is_closed")).lower() == "true"
        won = stage.is_won if stage else str(props.get("hs_is_closed_won")).lower() == "true"
        probability = to_decimal(props.get("hs_deal_stage_probability"))
        if probability is not None and (stage is None or probability == stage.probability or not 0 <= probability <= 1):
            probability = None
        attributes = {}
        for name, kind in custom.items():
            raw = props.get(name)
            value = to_decimal(raw) if kind in NUMERIC_TYPES else raw
            value = as_attribute(float(value) if isinstance(value, Decimal) else value)
            if value is not None:
                attributes[name] = value
        return make_opportunity(SERVICE, {
            "id": str(record["id"]),
            "name": props.get("dealname") or "",
            "owner_id": str(props.get("hubspot_owner_id") or UNASSIGNED),
            "pipeline_id": pipeline_id,
            "stage_id": stage_id,
            "amount": to_decimal(props.get("amount")) or Decimal(0),
            "currency": props.get("deal_currency_code") or currency,
            "close_date": _date(props.get("closedate")),
            "created_at": _datetime(props.get("createdate") or record.get("createdAt")),
            "modified_at": _datetime(props.get(MODIFIED) or record.get("updatedAt")),
            "forecast_category": _category(props.get("hs_manual_forecast_category") or
                                           props.get("hs_forecast_category")),
            "next_step": props.get("hs_next_step") or None,
            "last_activity": _date(props.get("notes_last_updated")),
            "lead_source": props.get("hs_analytics_source") or None,
            "type": props.get("dealtype") or None,
            "is_closed": closed,
            "is_won": won and closed,
            "probability": probability,
            "attributes": attributes,
        })

    async def _histories(self, http: HttpClient, deals: Sequence[Opportunity]) -> dict[str, list[StageChange]]:
        ids = [d.id for d in deals]
        chunks = [ids[i : i + self.history_batch] for i in range(0, len(ids), self.history_batch)]
        merged: dict[str, list[StageChange]] = {}
        for part in await asyncio.gather(*(self._read_histories(http, chunk) for chunk in chunks)):
            merged.update(part)
        return merged

    async def _read_histories(self, http: HttpClient, ids: Sequence[str]) -> dict[str, list[StageChange]]:
        body = await http.post_json("/crm/v3/objects/deals/batch/read", {
            "inputs": [{"id": i} for i in ids], "properties": ["dealstage"],
            "propertiesWithHistory": list(HISTORY_PROPERTIES),
        })
        out = {}
        for record in (body or {}).get("results", []):
            out[str(record["id"])] = _history(str(record["id"]), record.get("propertiesWithHistory") or {})
        return out

    async def _finish(
        self, work: tuple[list[Opportunity], asyncio.Task[dict[str, list[StageChange]]], str | None],
        catalog: StageCatalog,
    ) -> SyncBatch:
        deals, task, cursor = work
        histories = await task
        done: list[Opportunity] = []
        changes: list[StageChange] = []
        for deal in deals:
            deal, rows = finish_deal(deal, histories.get(deal.id, []))
            for row in rows:
                catalog.ensure(row.stage_id, deal.pipeline_id)
            done.append(deal)
            changes.extend(rows)
        return SyncBatch(pipelines=catalog.take_changed(), opportunities=done, changes=changes, cursor=cursor)

    async def _archived_since(self, http: HttpClient, since_ms: int) -> list[str]:
        rows = await self._paged(http, "/crm/v3/objects/deals", {"archived": "true", "limit": 100})
        out = []
        for row in rows:
            archived = _datetime(row.get("archivedAt") or row.get("updatedAt"))
            if archived is None or _ms(archived) >= since_ms:
                out.append(str(row["id"]))
        return out


def _history(deal_id: str, versions: Mapping[str, Any]) -> list[StageChange]:
    """Merge per-property version lists into rows: the tracked values right after each change."""
    events: list[tuple[datetime, str, Any]] = []
    for name, entries in versions.items():
        for entry in entries or []:
            moment = _datetime(entry.get("timestamp"))
            if moment is not None:
                events.append((moment, name, entry.get("value")))
    events.sort(key=lambda e: e[0])
    state: dict[str, Any] = {}
    rows: list[StageChange] = []
    index = 0
    while index < len(events):
        moment = events[index][0]
        while index < len(events) and events[index][0] == moment:
            state[events[index][1]] = events[index][2]
            index += 1
        if not state.get("dealstage"):
            continue
        amount = to_decimal(state.get("amount"))
        rows.append(stage_change(
            deal_id, moment, str(state["dealstage"]), amount if amount is not None and amount >= 0 else None,
            _date(state.get("closedate")), _category(state.get("hs_manual_forecast_category")),
        ))
    return rows
