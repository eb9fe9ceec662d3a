"""A fake Pipedrive company on loopback: v2 deals, stages, pipelines, organizations; v1 flow, users, fields.

Shapes follow crm-apis.md §3.8 (there is no official Python SDK to cross-check with; the shapes come
from the official Node SDK's models). v2 lists page with an opaque base64 `next_cursor`; v1 lists
with `start`/`limit` and `more_items_in_collection`. The token is accepted in the `x-api-token`
header or the legacy `api_token` query parameter. `/v1/deals` answers 410 Gone (removed endpoint).
Won and lost are deal statuses: the deal keeps the stage it was in.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from tests.fakes import OWNERS, REGIONS, STAGE_PROBABILITY, WON, Dataset, Deal, FakeServer, Request, Response, Step

PIPELINES = ((1, "Sales", (1, 2, 3, 4, 5)), (2, "Renewals", (6, 7, 8, 9, 10)))
STAGE_NAMES = ("Qualified", "Contact Made", "Demo Scheduled", "Proposal Made", "Negotiations Started")
REGION_FIELD = "62964f49dba625be71f3a403652d37c8fa1b93f6"
SEATS_FIELD = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
NOTES_FIELD = "ffeeddccbbaa99887766554433221100ffeeddcc"


def pipeline_of(deal: Deal) -> int:
    return 2 if deal.key % 5 == 4 else 1


def stage_of(deal: Deal, stage: int) -> int:
    """The Pipedrive stage id of an open abstract stage in the deal's pipeline."""
    return PIPELINES[pipeline_of(deal) - 1][2][stage]


def status_of(step: Step) -> str:
    return "won" if step.stage == WON else "lost" if step.stage > WON else "open"


def user_id(key: int) -> int:
    return 123456780 + key


def v2_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def v1_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: Any) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class PipedriveFake(FakeServer):
    """A Pipedrive company holding `dataset`, reached with `token`.

    Switches: `burst_per_2s` (429 with x-ratelimit headers above it), `daily_budget` (429 with the
    daily token budget at 0 once used up), `max_limit` (largest page).
    """

    service = "pipedrive"

    def __init__(self, dataset: Dataset, *, token: str = "0123456789abcdef0123456789abcdef01234567",
                 burst_per_2s: int | None = None, daily_budget: int | None = None, max_limit: int = 500) -> None:
        super().__init__()
        self.data = dataset
        self.token = token
        self.burst_per_2s = burst_per_2s
        self.daily_budget = daily_budget
        self.max_limit = max_limit
        self.used = 0
        self.rate_limited = 0
        """Requests answered 429 by the burst limit so far."""
        self._window: deque[float] = deque()
        self._state = threading.Lock()

    def common_headers(self) -> dict[str, str]:
        limit = self.burst_per_2s or 80
        return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(max(0, limit - len(self._window))),
                "x-ratelimit-reset": "2"}

    def error_response(self, status: int) -> Response:
        messages = {401: "Unauthorized access", 403: "You do not have permission to access this resource",
                    404: "Resource not found", 410: "Gone", 429: "Request over limit",
                    500: "Internal server error", 503: "Service unavailable"}
        return Response(status, {"success": False, "error": messages.get(status, f"HTTP {status}"),
                                 "errorCode": status, "error_info": "Please check developers.pipedrive.com for more "
                                 "information about Pipedrive API.", "data": None, "additional_data": None})

    def route(self, request: Request) -> Response:
        if request.header("x-api-token") != self.token and request.arg("api_token") != self.token:
            return self.error_response(401)
        limited = self._limit()
        if limited is not None:
            return limited
        path = request.path.rstrip("/")
        with self.data.lock:
            if path == "/api/v2/deals":
                return self._deals(request)
            if path == "/api/v2/stages":
                return self._stages(request)
            if path == "/api/v2/pipelines":
                rows = [{"id": pid, "name": name, "order_nr": pid - 1, "is_deleted": False,
                         "is_deal_probability_enabled": pid == 1, "add_time": "2023-01-10T12:00:00Z",
                         "update_time": "2023-01-10T12:00:00Z"} for pid, name, _ in PIPELINES]
                return self._v2_page(rows, request)
            if path == "/api/v2/organizations":
                return self._organizations(request)
            if path == "/v1/users":
                return Response(200, {"success": True, "data": [self._user(o) for o in OWNERS]})
            if path == "/v1/users/me":
                return Response(200, {"success": True, "data": {**self._user(OWNERS[0]), "company_name": "Acme",
                                                                "company_domain": "acme"}})
            if path == "/v1/dealFields":
                return self._deal_fields(request)
            if path == "/v1/deals":
                return self.error_response(410)
            if path.startswith("/v1/deals/") and path.endswith("/flow"):
                return self._flow(request, path.split("/")[3])
        return self.error_response(404)

    # ---- limits ----------------------------------------------------------------------------------

    def _limit(self) -> Response | None:
        now = time.monotonic()
        with self._state:
            self.used += 1
            if self.daily_budget is not None and self.used > self.daily_budget:
                response = self.error_response(429)
                response.headers.update({"x-daily-ratelimit-token-remaining": "0", "x-ratelimit-reset": "1"})
                return response
            if self.burst_per_2s is None:
                return None
            while self._window and now - self._window[0] >= 2.0:
                self._window.popleft()
            if len(self._window) >= self.burst_per_2s:
                self.rate_limited += 1
                reset = max(0.01, 2.0 - (now - self._window[0]))
                response = self.error_response(429)
                response.headers.update({"x-ratelimit-remaining": "0", "x-ratelimit-reset": f"{reset:.2f}"})
                return response
            self._window.append(now)
        return None

    # ---- pages -----------------------------------------------------------------------------------

    def _v2_page(self, rows: list[dict[str, Any]], request: Request) -> Response:
        limit = int(request.arg("limit", "100") or 100)
        if limit > self.max_limit:
            return Response(400, {"success": False, "error": f"limit must be at most {self.max_limit}",
                                  "data": None, "additional_data": None})
        offset = 0
        cursor = request.arg("cursor")
        if cursor:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["offset"])
            except (ValueError, KeyError):
                return Response(400, {"success": False, "error": "Invalid cursor", "data": None,
                                      "additional_data": None})
        page = rows[offset : offset + limit]
        nxt = None
        if offset + limit < len(rows):
            nxt = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode().rstrip("=")
        return Response(200, {"success": True, "data": page, "additional_data": {"next_cursor": nxt}})

    # ---- deals -----------------------------------------------------------------------------------

    def deal_row(self, deal: Deal) -> dict[str, Any]:
        last = deal.last
        status = "deleted" if deal.deleted else status_of(last)
        closed_at = v2_time(last.at) if deal.is_closed else None
        stage_change = next((s.at for s in reversed(deal.steps[1:]) if s.stage < WON), deal.created)
        return {
            "id": deal.key + 1, "title": deal.name, "creator_user_id": user_id(deal.owner),
            "owner_id": user_id(deal.owner), "person_id": 1000 + deal.key, "org_id": deal.key % 97 + 1,
            "pipeline_id": pipeline_of(deal), "stage_id": stage_of(deal, deal.last_open_stage),
            "value": float(last.amount), "currency": deal.currency, "add_time": v2_time(deal.created),
            "update_time": v2_time(deal.modified), "stage_change_time": v2_time(stage_change),
            "status": status, "probability": 35 if deal.key % 10 == 0 else None,
            "lost_reason": "Price" if status == "lost" else None, "visible_to": 3,
            "close_time": closed_at, "won_time": closed_at if status == "won" else None,
            "lost_time": closed_at if status == "lost" else None,
            "expected_close_date": last.close_date.isoformat(), "label_ids": [], "is_deleted": deal.deleted,
            "is_archived": False, "origin": ("ManuallyCreated", "API", "Import")[deal.key % 3], "origin_id": None,
            "channel": None, "channel_id": None, "acv": None, "arr": None, "mrr": None,
            "custom_fields": {REGION_FIELD: REGIONS.index(deal.region) + 1, SEATS_FIELD: deal.seats,
                              NOTES_FIELD: "free text"},
        }

    def _deals(self, request: Request) -> Response:
        statuses = set((request.arg("status") or "open,won,lost").split(","))
        deals = [d for d in self.data.deals if ("deleted" if d.deleted else status_of(d.last)) in statuses]
        since = request.arg("updated_since")
        if since:
            start = datetime.fromisoformat(since.replace("Z", "+00:00"))
            deals = [d for d in deals if d.modified.replace(microsecond=0) >= start]
        sort_by = request.arg("sort_by", "id")
        key = {"id": lambda d: d.key, "update_time": lambda d: (d.modified.replace(microsecond=0), d.key),
               "add_time": lambda d: (d.created, d.key)}.get(sort_by or "id")
        if key is None:
            return Response(400, {"success": False, "error": f"invalid sort_by {sort_by}", "data": None,
                                  "additional_data": None})
        deals.sort(key=key, reverse=request.arg("sort_direction") == "desc")
        return self._v2_page([self.deal_row(d) for d in deals], request)

    def flow_items(self, deal: Deal) -> list[dict[str, Any]]:
        """dealChange items, newest first."""
        ids = itertools.count(deal.key * 1000 + 1)
        uid = user_id(deal.owner)
        items = [_change(next(ids), deal, uid, deal.created, "add_time", None, v1_time(deal.created))]
        for prev, step in zip(deal.steps, deal.steps[1:]):
            if step.stage != prev.stage and step.stage < WON and prev.stage < WON:
                items.append(_change(next(ids), deal, uid, step.at, "stage_id", str(stage_of(deal, prev.stage)),
                                     str(stage_of(deal, step.stage))))
            if status_of(step) != status_of(prev):
                items.append(_change(next(ids), deal, uid, step.at, "status", status_of(prev), status_of(step)))
            if step.amount != prev.amount:
                items.append(_change(next(ids), deal, uid, step.at, "value", _number(prev.amount),
                                     _number(step.amount)))
            if step.close_date != prev.close_date:
                items.append(_change(next(ids), deal, uid, step.at, "expected_close_date",
                                     prev.close_date.isoformat(), step.close_date.isoformat()))
        items.append(_change(next(ids), deal, uid, deal.created, "label", None, "7"))
        items.sort(key=lambda item: (item["timestamp"], item["data"]["id"]), reverse=True)
        return items

    def _flow(self, request: Request, ident: str) -> Response:
        key = int(ident) - 1 if ident.isdigit() else -1
        if not 0 <= key < len(self.data.deals) or self.data.deals[key].deleted:
            return self.error_response(404)
        deal = self.data.deals[key]
        items = self.flow_items(deal)
        wanted = request.arg("items")
        if wanted:
            items = [i for i in items if i["object"] in wanted.split(",")]
        else:
            items.insert(0, {"object": "activity", "timestamp": v1_time(deal.modified),
                             "data": {"id": 1, "subject": "Call", "done": True}})
        start = int(request.arg("start", "0") or 0)
        limit = min(int(request.arg("limit", "100") or 100), 500)
        page = items[start : start + limit]
        more = start + limit < len(items)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        owner = next(o for o in OWNERS if o.key == deal.owner)
        return Response(200, {"success": True, "data": page, "additional_data": {"pagination": pagination},
                              "related_objects": {"user": {str(user_id(owner.key)): {
                                  "id": user_id(owner.key), "name": owner.name, "email": owner.email, "has_pic": 0,
                                  "pic_hash": None, "active_flag": True}}}})

    # ---- metadata --------------------------------------------------------------------------------

    def _stages(self, request: Request) -> Response:
        rows = []
        wanted = request.arg("pipeline_id")
        for pid, _, stage_ids in PIPELINES:
            if wanted and int(wanted) != pid:
                continue
            for order, sid in enumerate(stage_ids):
                rows.append({"id": sid, "order_nr": order + 1, "name": STAGE_NAMES[order], "is_deleted": False,
                             "deal_probability": STAGE_PROBABILITY[order], "pipeline_id": pid,
                             "is_deal_rot_enabled": False, "days_to_rotten": None,
                             "add_time": "2023-01-10T12:00:00Z", "update_time": "2023-01-10T12:00:00Z"})
        return self._v2_page(rows, request)

    def _organizations(self, request: Request) -> Response:
        ids = [int(i) for i in (request.arg("ids") or "").split(",") if i.strip().isdigit()]
        if len(ids) > 100:
            return Response(400, {"success": False, "error": "at most 100 ids", "data": None,
                                  "additional_data": None})
        rows = [{"id": i, "name": f"Account {i - 1:02d}", "owner_id": user_id(1), "add_time": "2023-01-10T12:00:00Z",
                 "update_time": "2023-01-10T12:00:00Z", "is_deleted": False, "visible_to": 3, "label_ids": []}
                for i in sorted(ids) if 1 <= i <= 97]
        return self._v2_page(rows, request)

    def _user(self, owner: Any) -> dict[str, Any]:
        return {"id": user_id(owner.key), "name": owner.name, "email": owner.email, "active_flag": True,
                "activated": True, "is_deleted": False, "role_id": 1, "timezone_name": "Europe/Berlin",
                "default_currency": "EUR", "created": "2023-01-10 12:00:00", "modified": "2024-01-03 10:00:00",
                "last_login": "2024-06-10 08:00:00"}

    def _deal_fields(self, request: Request) -> Response:
        fields = [
            {"id": 1, "key": "title", "name": "Title", "field_type": "varchar", "edit_flag": False},
            {"id": 2, "key": "value", "name": "Value", "field_type": "monetary", "edit_flag": False},
            {"id": 40, "key": REGION_FIELD, "name": "Region", "field_type": "enum", "edit_flag": True,
             "options": [{"id": i + 1, "label": r} for i, r in enumerate(REGIONS)]},
            {"id": 41, "key": SEATS_FIELD, "name": "Seats", "field_type": "double", "edit_flag": True},
            {"id": 42, "key": NOTES_FIELD, "name": "Notes", "field_type": "text", "edit_flag": True},
        ]
        start = int(request.arg("start", "0") or 0)
        limit = int(request.arg("limit", "100") or 100)
        more = start + limit < len(fields)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return Response(200, {"success": True, "data": fields[start : start + limit],
                              "additional_data": {"pagination": pagination}})


def _change(ident: int, deal: Deal, uid: int, at: datetime, key: str, old: str | None, new: str | None
            ) -> dict[str, Any]:
    formatted: Any = []
    if key == "stage_id":
        formatted = {"old_value_formatted": f"stage {old}", "new_value_formatted": f"stage {new}"}
    return {"object": "dealChange", "timestamp": v1_time(at), "data": {
        "id": ident, "item_id": deal.key + 1, "user_id": uid, "field_key": key, "old_value": old, "new_value": new,
        "is_bulk_update_flag": None, "log_time": v1_time(at), "change_source": "app",
        "change_source_user_agent": None, "additional_data": formatted}}
