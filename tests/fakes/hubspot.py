"""A fake HubSpot portal on loopback (CRM v3): deal search, list, batch read with history, pipelines, owners.

Shapes follow crm-apis.md §2.9 (checked with hubspot-api-client in tests/test_hubspot.py): every
property value is a string or null, timestamps are ISO with a Z, `propertiesWithHistory` lists
versions newest first, pipeline stage metadata are strings. Search honours one filter group (EQ,
NEQ, GT, GTE, LT, LTE, IN, NOT_IN, HAS_PROPERTY), one sort, `limit` ≤ 200, numeric `after`, and
answers 400 past `search_cap` results (10,000 in HubSpot). A per-second search limit answers 429.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from tests.fakes import OWNERS, STAGE_PROBABILITY, Dataset, Deal, FakeServer, Request, Response, iso_z

DEFAULT_STAGES = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
                  "contractsent", "closedwon", "closedlost")
RENEWAL_STAGES = ("1001", "1002", "1003", "1004", "1005", "1006", "1007")
STAGE_LABELS = ("Appointment Scheduled", "Qualified To Buy", "Presentation Scheduled", "Decision Maker Bought-In",
                "Contract Sent", "Closed Won", "Closed Lost")
RENEWAL_PIPELINE = "7654321"
FORECAST = {"pipeline": "PIPELINE", "best_case": "BEST_CASE", "commit": "COMMIT", "closed": "CLOSED",
            "omitted": "OMIT"}
DATETIME_PROPERTIES = {"createdate", "hs_lastmodifieddate", "closedate", "notes_last_updated"}
CUSTOM_PROPERTIES = {
    "region": ("enumeration", "select"),
    "seats": ("number", "number"),
    "internal_notes": ("string", "textarea"),
}
HISTORY_PROPERTIES = ("dealstage", "amount", "closedate", "hs_manual_forecast_category")


def deal_id(key: int) -> str:
    return str(500 + key)


def owner_id(key: int) -> str:
    return f"4162977{key}"


def pipeline_of(deal: Deal) -> str:
    return RENEWAL_PIPELINE if deal.key % 5 == 4 else "default"


def stage_id(deal: Deal, stage: int) -> str:
    return (RENEWAL_STAGES if pipeline_of(deal) == RENEWAL_PIPELINE else DEFAULT_STAGES)[stage]


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _amount(value: Decimal) -> str:
    return format(value.normalize(), "f")


class HubSpotFake(FakeServer):
    """A HubSpot portal holding `dataset`, reached with the private-app token `token`.

    Switches: `search_cap` (results one search can page through), `search_per_second` (429
    SECONDLY above it), `missing_scopes` (path prefixes answering 403 MISSING_SCOPES),
    `company_currency`.
    """

    service = "hubspot"

    def __init__(
        self,
        dataset: Dataset,
        *,
        token: str = "pat-na1-11111111-2222-3333-4444-555555555555",
        search_cap: int = 10_000,
        search_per_second: int | None = None,
        company_currency: str = "USD",
        missing_scopes: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.data = dataset
        self.token = token
        self.search_cap = search_cap
        self.search_per_second = search_per_second
        self.company_currency = company_currency
        self.missing_scopes = tuple(missing_scopes)
        self.archived_at: dict[int, datetime] = {}
        self._searches: deque[float] = deque()
        self.rate_limited = 0
        """Searches answered 429 so far."""
        self._state = threading.Lock()

    def delete(self, deal: Deal) -> None:
        """Archive a deal (HubSpot's delete)."""
        self.data.delete(deal)
        self.archived_at[deal.key] = deal.modified

    # ---- framework hooks -------------------------------------------------------------------------

    def common_headers(self) -> dict[str, str]:
        return {"X-HubSpot-RateLimit-Max": "150", "X-HubSpot-RateLimit-Remaining": "149",
                "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}

    def error_response(self, status: int) -> Response:
        categories = {400: "VALIDATION_ERROR", 401: "INVALID_AUTHENTICATION", 403: "MISSING_SCOPES",
                      404: "OBJECT_NOT_FOUND", 429: "RATE_LIMITS"}
        if status == 429:
            return Response(429, {"status": "error", "message": "You have reached your secondly limit.",
                                  "errorType": "RATE_LIMIT", "correlationId": "de61843f-b3ab-4bc1-8c54-358e37eb0621",
                                  "policyName": "SECONDLY", "category": "RATE_LIMITS"})
        if status == 401:
            return Response(401, {"status": "error", "message": "Authentication credentials not found. This API "
                                  "supports OAuth 2.0 authentication and you can find more details at "
                                  "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                                  "correlationId": "a3c2c7d5-7f2c-4c0b-9c3f-2a0b1c2d3e4f",
                                  "category": "INVALID_AUTHENTICATION"})
        return Response(status, {"status": "error", "message": f"HTTP {status} from the fake",
                                 "correlationId": "0b6b9d5a-0000-4000-8000-000000000000",
                                 "category": categories.get(status, "INTERNAL_ERROR")})

    def route(self, request: Request) -> Response:
        if request.header("authorization") != f"Bearer {self.token}":
            return self.error_response(401)
        if any(request.path.startswith(prefix) for prefix in self.missing_scopes):
            return Response(403, {"status": "error", "message": "This app hasn't been granted all required scopes to "
                                  "make this call. Read more about required scopes here: "
                                  "https://developers.hubspot.com/scopes.", "correlationId": "c0ffee00-0000-4000",
                                  "category": "MISSING_SCOPES", "errors": [{"message": "One or more of the following "
                                  "scopes are required.", "context": {"requiredGranularScopes":
                                                                      ["crm.objects.deals.read"]}}]})
        path = request.path.rstrip("/")
        with self.data.lock:
            if path == "/crm/v3/objects/deals/search" and request.method == "POST":
                return self._search(request.json() or {})
            if path == "/crm/v3/objects/deals/batch/read" and request.method == "POST":
                return self._batch_read(request.json() or {})
            if path == "/crm/v3/objects/deals":
                return self._list(request)
            if path.startswith("/crm/v3/objects/deals/"):
                return self._get_one(request, path.rsplit("/", 1)[-1])
            if path == "/crm/v3/pipelines/deals":
                return Response(200, {"results": self.pipelines()})
            if path == "/crm/v3/owners":
                return self._owners(request)
            if path == "/crm/v3/properties/deals":
                return Response(200, {"results": self.property_definitions()})
            if path == "/account-info/v3/details":
                return Response(200, {"portalId": 12345678, "accountType": "STANDARD", "timeZone": "Europe/Berlin",
                                      "companyCurrency": self.company_currency, "additionalCurrencies": ["EUR"],
                                      "utcOffset": "+01:00", "utcOffsetMilliseconds": 3600000,
                                      "uiDomain": "app.hubspot.com", "dataHostingLocation": "na1"})
        return self.error_response(404)

    # ---- deals -----------------------------------------------------------------------------------

    def properties_of(self, deal: Deal) -> dict[str, str | None]:
        last = deal.last
        closed = deal.is_closed
        return {
            "dealname": deal.name,
            "amount": _amount(last.amount),
            "dealstage": stage_id(deal, last.stage),
            "pipeline": pipeline_of(deal),
            "closedate": f"{last.close_date.isoformat()}T00:00:00Z",
            "hs_forecast_category": FORECAST[last.category],
            "hs_manual_forecast_category": FORECAST[last.category],
            "hs_deal_stage_probability": str(STAGE_PROBABILITY[last.stage] / 100),
            "hubspot_owner_id": None if deal.key % 11 == 0 else owner_id(deal.owner),
            "createdate": iso_z(deal.created),
            "hs_lastmodifieddate": iso_z(deal.modified),
            "hs_next_step": deal.next_step,
            "notes_last_updated": iso_z(last.at, millis=False) if deal.key % 2 else None,
            "dealtype": "newbusiness" if deal.key % 2 else "existingbusiness",
            "hs_is_closed": "true" if closed else "false",
            "hs_is_closed_won": "true" if deal.is_won else "false",
            "deal_currency_code": None if deal.key % 4 == 3 else deal.currency,
            "hs_analytics_source": ("ORGANIC_SEARCH", "DIRECT_TRAFFIC", "OFFLINE")[deal.key % 3],
            "hs_object_id": deal_id(deal.key),
            "region": deal.region,
            "seats": str(deal.seats),
            "internal_notes": "free text, not a feature",
        }

    def history_of(self, deal: Deal, name: str) -> list[dict[str, Any]]:
        """Versions of one property, newest first (only when the value changed)."""
        versions: list[dict[str, Any]] = []
        previous = None
        for index, step in enumerate(deal.steps):
            value = {
                "dealstage": stage_id(deal, step.stage),
                "amount": _amount(step.amount),
                "closedate": f"{step.close_date.isoformat()}T00:00:00Z",
                "hs_manual_forecast_category": FORECAST[step.category],
            }.get(name)
            if value is None or value == previous:
                continue
            previous = value
            entry: dict[str, Any] = {"value": value, "timestamp": iso_z(step.at), "sourceType": "CRM_UI" if index else
                                     "API", "sourceId": "userId:9586504" if index else "sample-private-app"}
            if index:
                entry["updatedByUserId"] = 9586504
            else:
                entry["sourceLabel"] = "sample-private-app"
            versions.append(entry)
        return list(reversed(versions))

    def record(self, deal: Deal, properties: Iterable[str], history: Iterable[str] = ()) -> dict[str, Any]:
        values = self.properties_of(deal)
        wanted = set(properties) | {"hs_object_id", "createdate", "hs_lastmodifieddate"}
        out: dict[str, Any] = {
            "id": deal_id(deal.key),
            "properties": {k: values[k] for k in sorted(wanted) if k in values},
            "createdAt": iso_z(deal.created),
            "updatedAt": iso_z(deal.modified),
            "archived": deal.deleted,
        }
        history = [h for h in history if h in values]
        if history:
            out["propertiesWithHistory"] = {h: self.history_of(deal, h) for h in history}
        if deal.deleted:
            out["archivedAt"] = iso_z(self.archived_at.get(deal.key, deal.modified))
        return out

    def _deal(self, ident: str) -> Deal | None:
        if not ident.isdigit():
            return None
        key = int(ident) - 500
        return self.data.deals[key] if 0 <= key < len(self.data.deals) else None

    def _search(self, body: dict[str, Any]) -> Response:
        if self.search_per_second is not None:
            now = time.monotonic()
            with self._state:
                while self._searches and now - self._searches[0] >= 1.0:
                    self._searches.popleft()
                if len(self._searches) >= self.search_per_second:
                    self.rate_limited += 1
                    return self.error_response(429)
                self._searches.append(now)
        limit = int(body.get("limit", 10))
        after = int(body.get("after") or 0)
        if limit > 200:
            return self._validation("limit must be at most 200")
        if after >= self.search_cap:
            return self._validation(f"paging past {self.search_cap} results is not supported")
        groups = body.get("filterGroups") or []
        deals = [d for d in self.data.deals if not d.deleted]
        if groups:
            deals = [d for d in deals if any(self._matches(d, g.get("filters") or []) for g in groups)]
        sorts = body.get("sorts") or []
        if sorts:
            name = sorts[0].get("propertyName", "hs_object_id")
            desc = str(sorts[0].get("direction", "ASCENDING")).upper() == "DESCENDING"
            deals.sort(key=lambda d: (_sortable(name, self.properties_of(d).get(name)), (d.key * 7919) % 1009),
                       reverse=desc)
        else:
            deals.sort(key=lambda d: d.key)
        page = deals[after : after + limit]
        result: dict[str, Any] = {"total": len(deals),
                                  "results": [self.record(d, body.get("properties") or []) for d in page]}
        if after + limit < len(deals):
            result["paging"] = {"next": {"after": str(after + limit), "link": f"?after={after + limit}"}}
        return Response(200, result)

    def _matches(self, deal: Deal, filters: list[dict[str, Any]]) -> bool:
        values = self.properties_of(deal)
        for f in filters:
            name = f.get("propertyName", "")
            op = str(f.get("operator", "EQ")).upper()
            have = values.get(name)
            if op == "HAS_PROPERTY":
                ok = have is not None
            elif op == "NOT_HAS_PROPERTY":
                ok = have is None
            elif op in ("IN", "NOT_IN"):
                ok = (have in (f.get("values") or [])) == (op == "IN")
            else:
                left, right = _sortable(name, have), _sortable(name, f.get("value"))
                if have is None:
                    ok = op == "NEQ"
                else:
                    ok = {"EQ": left == right, "NEQ": left != right, "GT": left > right, "GTE": left >= right,
                          "LT": left < right, "LTE": left <= right}[op]
            if not ok:
                return False
        return True

    def _validation(self, message: str) -> Response:
        return Response(400, {"status": "error", "message": message, "correlationId": "0b6b9d5a-0000-4000-8000",
                              "category": "VALIDATION_ERROR"})

    def _list(self, request: Request) -> Response:
        archived = request.arg("archived", "false") == "true"
        limit = min(int(request.arg("limit", "10") or 10), 100)
        after = int(request.arg("after", "0") or 0)
        props = [p for v in request.query.get("properties", []) for p in v.split(",") if p]
        history = [p for v in request.query.get("propertiesWithHistory", []) for p in v.split(",") if p]
        if history:
            limit = min(limit, 50)
        deals = [d for d in self.data.deals if d.deleted == archived and int(deal_id(d.key)) > after]
        page = deals[:limit]
        body: dict[str, Any] = {"results": [self.record(d, props, history) for d in page]}
        if len(deals) > limit:
            nxt = deal_id(page[-1].key)
            body["paging"] = {"next": {"after": nxt, "link": f"{self.url}/crm/v3/objects/deals?after={nxt}"}}
        return Response(200, body)

    def _get_one(self, request: Request, ident: str) -> Response:
        deal = self._deal(ident)
        if deal is None or deal.deleted:
            return self.error_response(404)
        props = [p for v in request.query.get("properties", []) for p in v.split(",") if p]
        history = [p for v in request.query.get("propertiesWithHistory", []) for p in v.split(",") if p]
        return Response(200, self.record(deal, props, history))

    def _batch_read(self, body: dict[str, Any]) -> Response:
        inputs = body.get("inputs") or []
        if len(inputs) > 100:
            return self._validation("at most 100 inputs per batch")
        results, errors = [], []
        for item in inputs:
            deal = self._deal(str(item.get("id")))
            if deal is None or deal.deleted:
                errors.append({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "Could not get some "
                               "DEAL objects, they may be deleted or not exist.", "context": {"ids": [item.get("id")]}})
                continue
            results.append(self.record(deal, body.get("properties") or [], body.get("propertiesWithHistory") or []))
        now = iso_z(datetime.now(timezone.utc))
        payload: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}
        if errors:
            payload["numErrors"] = len(errors)
            payload["errors"] = errors
        return Response(207 if errors else 200, payload)

    # ---- metadata --------------------------------------------------------------------------------

    def pipelines(self) -> list[dict[str, Any]]:
        out = []
        for pid, label, ids in (("default", "Sales Pipeline", DEFAULT_STAGES),
                                (RENEWAL_PIPELINE, "Renewals", RENEWAL_STAGES)):
            stages = []
            for index, sid in enumerate(ids):
                probability = STAGE_PROBABILITY[index] / 100
                stages.append({
                    "id": sid, "label": STAGE_LABELS[index], "displayOrder": index,
                    "metadata": {"isClosed": "true" if index >= 5 else "false", "probability": str(probability)},
                    "archived": False, "createdAt": "2023-01-10T12:00:00Z", "updatedAt": "2023-01-10T12:00:00Z",
                    "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
                })
            out.append({"id": pid, "label": label, "displayOrder": len(out), "archived": False,
                        "createdAt": "2023-01-10T12:00:00Z", "updatedAt": "2024-01-15T09:30:00Z", "stages": stages})
        return out

    def _owners(self, request: Request) -> Response:
        limit = int(request.arg("limit", "100") or 100)
        after = request.arg("after")
        owners = [o for o in OWNERS if after is None or int(owner_id(o.key)) > int(after)]
        page = owners[:limit]
        body: dict[str, Any] = {"results": [{
            "id": owner_id(o.key), "email": o.email, "type": "PERSON", "firstName": o.first, "lastName": o.last,
            "userId": 9586500 + o.key, "userIdIncludingInactive": 9586500 + o.key,
            "createdAt": "2023-02-01T10:00:00.000Z", "updatedAt": "2024-01-03T10:00:00.000Z", "archived": False,
            "teams": [{"id": str(368389 + o.key % 3), "name": o.team, "primary": True}],
        } for o in page]}
        if len(owners) > limit:
            nxt = owner_id(page[-1].key)
            body["paging"] = {"next": {"after": nxt, "link": f"{self.url}/crm/v3/owners/?after={nxt}"}}
        return Response(200, body)

    def property_definitions(self) -> list[dict[str, Any]]:
        standard = ["dealname", "amount", "dealstage", "pipeline", "closedate", "hs_forecast_category",
                    "hs_manual_forecast_category", "hs_deal_stage_probability", "hubspot_owner_id", "createdate",
                    "hs_lastmodifieddate", "hs_next_step", "notes_last_updated", "dealtype", "hs_is_closed",
                    "hs_is_closed_won", "deal_currency_code", "hs_analytics_source", "hs_object_id"]
        out = []
        for name in standard:
            kind = "datetime" if name in DATETIME_PROPERTIES else "number" if name in ("amount", "hs_object_id") \
                else "string"
            out.append(_definition(name, kind, "text", True))
        for name, (kind, field_type) in CUSTOM_PROPERTIES.items():
            out.append(_definition(name, kind, field_type, False))
        return out


def _definition(name: str, kind: str, field_type: str, hubspot: bool) -> dict[str, Any]:
    options = [{"label": r, "value": r, "displayOrder": i, "hidden": False} for i, r in
               enumerate(("EMEA", "NA", "APAC"))] if kind == "enumeration" else []
    return {"name": name, "label": name.replace("_", " ").title(), "type": kind, "fieldType": field_type,
            "description": "", "groupName": "dealinformation", "options": options, "displayOrder": -1,
            "calculated": False, "externalOptions": False, "hasUniqueValue": False, "hidden": False,
            "hubspotDefined": hubspot, "modificationMetadata": {"archivable": True, "readOnlyDefinition": hubspot,
                                                                "readOnlyValue": False},
            "formField": True, "createdAt": "2023-01-10T12:00:00Z", "updatedAt": "2023-01-10T12:00:00Z",
            "archived": False}


def _sortable(name: str, value: Any) -> Any:
    """A property value in comparable form: datetimes and numbers as numbers, the rest as text."""
    if value is None:
        return (0, 0)
    text = str(value)
    if name in DATETIME_PROPERTIES:
        if text.isdigit():
            return (1, int(text))
        return (1, _ms(datetime.fromisoformat(text.replace("Z", "+00:00"))))
    try:
        return (1, Decimal(text))
    except ArithmeticError:
        return (2, text)
