"""Tryton `sale_opportunity` over JSON-RPC (`POST <url>/<database>/rpc/`), trytond 8.x.

One sync run: log in (`common.db.login` → `Authorization: Session …`), fetch the user's context,
check that `sale.opportunity` exists and is readable, then page through the opportunities ordered
by `last_modified_at` (= coalesce(write_date, create_date)) and id, `page_size` per page. Paging is
by key (`last_modified_at`/id greater than the last row seen) with the `limit` argument, so rows
changed or deleted while the sync runs cannot shift a page and be skipped. For each page the stage
history is rebuilt from `history_revisions` plus one `read` per revision with `_datetime` in the
context (the record as it was at that instant); reads run concurrently, a few at a time.

Each page becomes one `SyncBatch` whose cursor is the last row's (last_modified_at, id): resuming
from any batch's cursor fetches exactly the rows after it. An incremental run (a cursor) asks only
for rows modified after the cursor and re-reads their whole history. Deleted opportunities are found
from gaps in the id sequence that have a deletion revision newer than the last run, and reported as
`deleted_ids` in the run's last batch, which also carries the final cursor (every run yields at
least that batch, so every run records a cursor).

Mapping: Tryton's fixed `state` selection is the pipeline `tryton` (lead, opportunity: open;
converted, won: won, as Tryton's own reporting counts converted opportunities as converted; lost,
cancelled: lost). `employee` is the owner (its `supervisor` the manager), or the creating user when
the opportunity has no employee; `party` is the account; `currency.code` the currency; `end_date`
the close date; `conversion_probability` the deal's probability when it differs from the stage's.
Other plain fields (char, selection, numbers, booleans, many2one names) become deal attributes,
except identifiers and fields that only exist once the outcome is known.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from pydantic import SecretStr

from cockpit.models import (
    Attribute,
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Stage,
    StageChange,
    SyncBatch,
)
from connectors import ConnectorError, ProgressCallback
from connectors._http import (
    HttpClient,
    ProgressMeter,
    Retry,
    RetryPolicy,
    Timeouts,
    as_attribute,
    connector_error,
    finish_deal,
    make_opportunity,
    protect_logger,
    register_secret,
)

log = protect_logger(logging.getLogger(__name__))

MODEL = "sale.opportunity"
PIPELINE_ID = "tryton"
PASSWORD_ENV = "COCKPIT_TRYTON_PASSWORD"
SERVICE = "Tryton"

_ORDER = [["last_modified_at", "ASC"], ["id", "ASC"]]
_HISTORY_FIELDS = ["state", "amount", "end_date"]
_CORE_FIELDS = [
    "number",
    "description",
    "state",
    "amount",
    "currency.code",
    "party.rec_name",
    "employee.rec_name",
    "employee.supervisor",
    "create_uid.rec_name",
    "end_date",
    "conversion_probability",
    "create_date",
    "last_modified_at",
]
_NOT_ATTRIBUTES = frozenset(
    {
        # mapped to the domain model
        "id",
        "number",
        "description",
        "state",
        "amount",
        "currency",
        "party",
        "employee",
        "end_date",
        "conversion_probability",
        "create_date",
        "write_date",
        "create_uid",
        "write_uid",
        "last_modified_at",
        # identifiers and bookkeeping: unique per deal, no signal
        "rec_name",
        "xml_id",
        "reference",
        "address",
        "contact",
        "start_date",
        # only set once the outcome is known: would leak it into the win model
        "lost_reason",
        "converted_by",
    }
)
_ATTRIBUTE_TYPES = frozenset({"char", "selection", "integer", "float", "numeric", "boolean", "many2one"})
_SETTINGS_KEYS = frozenset({"url", "database", "username", "page_size"})


@dataclass(frozen=True)
class _StateSpec:
    """How one Tryton state maps onto a pipeline stage."""

    order: int
    probability: Decimal
    category: ForecastCategory
    is_closed: bool = False
    is_won: bool = False


_STATES: dict[str, _StateSpec] = {
    "lead": _StateSpec(0, Decimal("0.1"), ForecastCategory.PIPELINE),
    "opportunity": _StateSpec(1, Decimal("0.5"), ForecastCategory.PIPELINE),
    "converted": _StateSpec(2, Decimal("1"), ForecastCategory.CLOSED, is_closed=True, is_won=True),
    "won": _StateSpec(3, Decimal("1"), ForecastCategory.CLOSED, is_closed=True, is_won=True),
    "lost": _StateSpec(4, Decimal("0"), ForecastCategory.OMITTED, is_closed=True),
    "cancelled": _StateSpec(5, Decimal("0"), ForecastCategory.OMITTED, is_closed=True),
}
"""The states of trytond 8.x; lead's 0.1 is a default, opportunity's 0.5 is Tryton's default
conversion probability."""

_UNKNOWN_STATE = _StateSpec(1, Decimal("0.5"), ForecastCategory.PIPELINE)
"""States added by other modules: open stages between `opportunity` and the closed ones."""


# --------------------------------------------------------------------------------------------------
# Tagged JSON values
# --------------------------------------------------------------------------------------------------


def _decode(value: Any) -> Any:
    """Tryton's tagged JSON (`{"__class__": "Decimal", ...}`) as Python values; datetimes as aware UTC."""
    if isinstance(value, dict):
        tag = value.get("__class__")
        if tag == "Decimal":
            return Decimal(value["decimal"])
        if tag == "date":
            return date(value["year"], value["month"], value["day"])
        if tag == "datetime":
            return datetime(
                value["year"],
                value["month"],
                value["day"],
                value.get("hour", 0),
                value.get("minute", 0),
                value.get("second", 0),
                value.get("microsecond", 0),
                tzinfo=timezone.utc,
            )
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _encode_datetime(value: datetime) -> dict[str, Any]:
    """A UTC datetime as Tryton's tagged JSON (naive, as Tryton keeps them)."""
    value = value.astimezone(timezone.utc)
    return {
        "__class__": "datetime",
        "year": value.year,
        "month": value.month,
        "day": value.day,
        "hour": value.hour,
        "minute": value.minute,
        "second": value.second,
        "microsecond": value.microsecond,
    }


# --------------------------------------------------------------------------------------------------
# Cursor
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cursor:
    """Where a sync stands: the last row synced, the highest id seen, the newest deletion reported."""

    modified: datetime | None = None
    id: int = 0
    max_id: int = 0
    deleted: datetime | None = None

    def encode(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "modified": self.modified.isoformat() if self.modified else None,
                "id": self.id,
                "max_id": self.max_id,
                "deleted": self.deleted.isoformat() if self.deleted else None,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def decode(cls, text: str | None) -> _Cursor:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != 1:
                raise ValueError("not a Tryton cursor")
            return cls(
                modified=_parse_time(raw.get("modified")),
                id=int(raw.get("id") or 0),
                max_id=int(raw.get("max_id") or 0),
                deleted=_parse_time(raw.get("deleted")),
            )
        except (ValueError, TypeError, json.JSONDecodeError):
            raise ConnectorError(
                "Tryton: unknown sync cursor",
                f"the stored sync cursor {text[:60]!r} was not written by the Tryton connector. "
                "Run a full sync (`cockpit sync --full`) to start over.",
            ) from None

    def after(self, modified: datetime, record_id: int) -> _Cursor:
        return _Cursor(modified, record_id, max(self.max_id, record_id), self.deleted)


def _parse_time(text: Any) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(str(text))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------------
# JSON-RPC session
# --------------------------------------------------------------------------------------------------


class _SessionAuth:
    """`Authorization: Session base64(login:user_id:key)`, logging in on first use and again on a 401."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._header: str | None = None
        self._lock = asyncio.Lock()

    async def headers(self, http: HttpClient) -> dict[str, str]:
        async with self._lock:
            if self._header is None:
                self._header = await self._rpc.login()
        return {"Authorization": self._header}

    async def refresh(self, http: HttpClient, used: Mapping[str, str]) -> bool:
        async with self._lock:
            if self._header == used.get("Authorization"):
                log.info("Tryton session expired; signing in again")
                self._header = await self._rpc.login()
        return True

    @property
    def signed_in(self) -> bool:
        return self._header is not None

    def __repr__(self) -> str:
        return "_SessionAuth('**********')"


class _Rpc:
    """JSON-RPC calls to one Tryton database, as one user, with that user's context."""

    def __init__(
        self,
        url: str,
        database: str,
        username: str,
        password: SecretStr,
        client: httpx.AsyncClient | None,
        retry: RetryPolicy,
        timeouts: Timeouts,
        concurrency: int,
    ) -> None:
        self.url = url
        self.database = database
        self.username = username
        self._password = password
        self.path = f"/{database}/rpc/"
        self.auth = _SessionAuth(self)
        self.http = HttpClient(
            service=SERVICE,
            base_url=url,
            auth=self.auth,
            client=client,
            timeouts=timeouts,
            max_concurrency=concurrency,
            retry=retry,
            error_hook=self._error_hook,
        )
        self.context: dict[str, Any] = {}
        self.user_id: int | None = None
        self._ids = 0

    async def aclose(self) -> None:
        if self.auth.signed_in:
            try:
                await self.call("common.db.logout")
            except ConnectorError as exc:
                log.info("Tryton logout failed (the session expires by itself): %s", exc.message)
        await self.http.aclose()

    async def login(self) -> str:
        """Sign in; returns the Authorization header value. Never logs the password or the key."""
        result = await self._post(
            "common.db.login",
            [self.username, {"password": self._password.get_secret_value()}, "en"],
            authenticated=False,
        )
        if not isinstance(result, list) or len(result) < 2:
            raise connector_error(
                "Tryton sign-in failed",
                f"{self.url} answered common.db.login without a session; is it a trytond "
                "server (JSON-RPC at /<database>/rpc/)?",
            )
        self.user_id, key = int(result[0]), str(result[1])
        register_secret(key)
        token = base64.b64encode(f"{self.username}:{self.user_id}:{key}".encode()).decode()
        register_secret(token)
        return f"Session {token}"

    async def start(self) -> None:
        """Sign in and load the user's context (every model call needs it as its last argument)."""
        preferences = await self.call("model.res.user.get_preferences", True, {})
        self.context = preferences if isinstance(preferences, dict) else {}

    async def call(self, method: str, *params: Any) -> Any:
        """One authenticated call; the result with tagged values still encoded."""
        return await self._post(method, list(params), authenticated=True)

    async def model(
        self, method: str, *params: Any, context: Mapping[str, Any] | None = None, model: str = MODEL
    ) -> Any:
        """`model.<model>.<method>(*params, context)` with tagged values decoded."""
        return _decode(
            await self.call(f"model.{model}.{method}", *params, {**self.context, **(context or {})})
        )

    async def server_version(self) -> str:
        """`common.server.version` (no database, no login)."""
        result = await self._request(
            "/rpc/", {"id": 0, "method": "common.server.version", "params": []}, authenticated=False
        )
        return str(result.get("result", "?")) if isinstance(result, dict) else "?"

    async def _post(self, method: str, params: list[Any], *, authenticated: bool) -> Any:
        self._ids += 1
        body = await self._request(
            self.path, {"id": self._ids, "method": method, "params": params}, authenticated=authenticated
        )
        if not isinstance(body, dict):
            raise connector_error(
                "Tryton sent an unexpected answer",
                f"{method} on {self.url}{self.path} did not answer with a JSON-RPC object; check that "
                "the URL points at a trytond server.",
            )
        if "error" in body:
            raise self._rpc_error(method, body["error"])
        return body.get("result")

    async def _request(self, path: str, payload: dict[str, Any], *, authenticated: bool) -> Any:
        try:
            return await self.http.request_json("POST", path, json_body=payload, authenticated=authenticated)
        except ConnectorError as exc:
            if exc.title != f"Cannot reach {SERVICE}":
                raise
            raise connector_error(
                exc.title,
                f"nothing answered at {self.url} ({exc.message.split('. Check')[0]}). Check that trytond is "
                "running there and that `url` under [connectors.tryton] names its host and port.",
            ) from None

    # -- errors -----------------------------------------------------------------------------------

    def _error_hook(self, response: httpx.Response, body: Any) -> ConnectorError | Retry | None:
        """Tryton's HTTP statuses, read before the generic handling (which retries 429 and 5xx)."""
        method = _request_method(response.request)
        status = response.status_code
        where = f"{self.url}{self.path}"
        if method == "common.db.login" and status == 401:
            return connector_error(
                "Tryton rejected the sign-in",
                f"user {self.username!r} could not sign in to database {self.database!r} at {self.url}: "
                "the user name or the password is wrong, or the user is inactive. Check `username` under "
                f"[connectors.tryton] and the password in {PASSWORD_ENV}. Repeated failures lock the "
                "user out for a while (HTTP 429).",
            )
        if method == "common.db.login" and status == 429:
            return connector_error(
                "Tryton is refusing sign-ins for now",
                f"{self.url} answered HTTP 429: too many failed sign-ins for user {self.username!r} "
                f"from this machine. Fix the password in {PASSWORD_ENV}, wait a few minutes, then sync "
                "again.",
            )
        if status == 404 and response.request.url.path.endswith(self.path):
            return connector_error(
                "Tryton database not found",
                f"{where} answered HTTP 404: the server has no database {self.database!r} (or the URL "
                "has an extra path). Check `database` and `url` under [connectors.tryton]; the server "
                "must also serve that database (trytond -d NAME, or its database list).",
            )
        if status == 403:
            return connector_error(
                "Tryton refused a call",
                f"{where} answered HTTP 403 to {method}: the server does not expose it to this user. "
                "The connector needs trytond 8.x with sale_opportunity; check the server version.",
            )
        return None

    def _rpc_error(self, method: str, error: Any) -> ConnectorError:
        """A JSON-RPC error object as a ConnectorError that says what to do."""
        kind, detail = _error_parts(error)
        if kind == f"'{MODEL}'":  # KeyError from the pool: the model is not there
            return self.module_missing()
        if kind == "UserError" and "not allowed to" in detail:
            return connector_error(
                "No permission in Tryton",
                f"user {self.username!r} may not do {method} in database {self.database!r}: {detail}. "
                f"{_ASK_ADMIN}",
            )
        if kind == "UserError":
            return connector_error("Tryton refused a request", f"{method} on {self.url}: {detail}")
        shown = f"{kind} ({detail})" if detail else kind
        return connector_error(
            "Tryton reported an error",
            f"{method} on {self.url} failed on the server: {shown}. The server log has the details.",
        )

    def module_missing(self) -> ConnectorError:
        return connector_error(
            "Tryton module not activated",
            f"database {self.database!r} at {self.url} has no model {MODEL}: activate the "
            f"sale_opportunity module (trytond-admin -d {self.database} -u sale_opportunity "
            "--activate-dependencies, or Administration > Modules), then sync again.",
        )

    def permission_denied(self) -> ConnectorError:
        return connector_error(
            "No permission in Tryton",
            f"user {self.username!r} may not read {MODEL} in database {self.database!r}. {_ASK_ADMIN}",
        )


_ASK_ADMIN = (
    "Ask a Tryton administrator to add the user to a group that can read sales opportunities "
    '(e.g. "Sales Opportunity").'
)


def _request_method(request: httpx.Request) -> str:
    try:
        return str(json.loads(request.content).get("method", ""))
    except (ValueError, AttributeError):
        return ""


def _error_parts(error: Any) -> tuple[str, str]:
    """(kind, message) of a Tryton error: `["UserError", [message, description, domain]]` or `[str, tb]`."""
    if isinstance(error, list) and error:
        kind = str(error[0])
        rest = error[1] if len(error) > 1 else ""
        if isinstance(rest, list):
            text = " ".join(str(part) for part in rest[:2] if part)
        else:
            text = ""  # a traceback (or nothing): not for the user's eyes
        return kind, text.strip()[:400]
    return str(error)[:200], ""


# --------------------------------------------------------------------------------------------------
# The connector
# --------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one sync run learns as it goes."""

    pipeline: Pipeline
    attribute_fields: dict[str, str]
    """Attribute name → field to read (`payment_term.rec_name` for a many2one)."""
    owners: set[str] = field(default_factory=set)
    """Owner ids already sent in this run."""
    employees: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    """Employee id → (name, supervisor id), as learned."""


class TrytonConnector:
    """Opportunities and their state history from Tryton's `sale_opportunity` module."""

    name = "tryton"
    incremental = True
    """A cursor resumes after the last synced modification: later runs fetch only what changed."""

    def __init__(
        self,
        url: str,
        database: str,
        username: str,
        password: SecretStr | str,
        client: httpx.AsyncClient | None = None,
        page_size: int = 500,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        concurrency: int = 4,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConnectorError(
                "Tryton URL is not valid",
                f"url {url!r} must start with http:// or https:// (e.g. http://erp:8000)",
            )
        if not database:
            raise ConnectorError("Tryton database missing", "set `database` under [connectors.tryton]")
        if page_size < 1:
            raise ConnectorError(
                "Tryton page size is not valid", f"page_size must be at least 1, got {page_size}"
            )
        self.url = url.rstrip("/")
        self.database = database
        self.username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        register_secret(self._password)
        self._client = client
        self.page_size = page_size
        self.retry = retry or RetryPolicy(attempts=3, backoff=0.3, max_backoff=5.0)
        self.timeouts = timeouts or Timeouts()
        self.concurrency = concurrency

    def __repr__(self) -> str:
        return f"TrytonConnector(url={self.url!r}, database={self.database!r}, username={self.username!r})"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> TrytonConnector:
        """Build from the `[connectors.tryton]` table; the password comes from `secrets` (the environment)
        under COCKPIT_TRYTON_PASSWORD."""
        unknown = sorted(set(settings) - _SETTINGS_KEYS)
        if unknown:
            raise ConnectorError(
                "Tryton settings have unknown keys",
                f"[connectors.tryton] has {', '.join(unknown)}; the known keys are "
                f"{', '.join(sorted(_SETTINGS_KEYS))}",
            )
        missing = [key for key in ("url", "database", "username") if not settings.get(key)]
        if missing:
            raise ConnectorError(
                "Tryton settings incomplete",
                f"set {', '.join(missing)} under [connectors.tryton], e.g. "
                'url = "http://erp.example.com:8000", database = "erp", username = "cockpit"',
            )
        password = secrets.get(PASSWORD_ENV)
        if not password:
            raise ConnectorError(
                "Tryton password missing",
                f"set the environment variable {PASSWORD_ENV} to the password of Tryton user "
                f"{settings['username']!r}",
            )
        try:
            page_size = int(settings.get("page_size", 500))
        except (TypeError, ValueError):
            raise ConnectorError(
                "Tryton page size is not valid",
                f"[connectors.tryton] page_size = {settings.get('page_size')!r}: expected a whole number",
            ) from None
        return cls(
            str(settings["url"]),
            str(settings["database"]),
            str(settings["username"]),
            SecretStr(password),
            page_size=page_size,
        )

    def _rpc(self) -> _Rpc:
        return _Rpc(
            self.url,
            self.database,
            self.username,
            self._password,
            self._client,
            self.retry,
            self.timeouts,
            self.concurrency,
        )

    # -- check ------------------------------------------------------------------------------------

    async def check(self) -> list[str]:
        """Sign in, verify read access to sale.opportunity and its history, and say what can be read.

        Reads only; raises ConnectorError for anything that would stop a sync.
        """
        rpc = self._rpc()
        try:
            version = await rpc.server_version()
            await rpc.start()
            lines = [
                f"Signed in to Tryton {version} at {self.url}, database {self.database!r}, as "
                f"{self.username!r} (user id {rpc.user_id})."
            ]
            await self._check_access(rpc)
            lines.append(f"Read access to {MODEL} (sale_opportunity module active).")
            described = await rpc.model("fields_get", ["state"])
            labels = dict(described.get("state", {}).get("selection") or [])
            counts = {state: await rpc.model("search_count", [["state", "=", state]]) for state in labels}
            total = sum(counts.values())
            open_states = [s for s in labels if not _STATES.get(s, _UNKNOWN_STATE).is_closed]
            detail = ", ".join(f"{labels[s]} {counts[s]}" for s in labels)
            lines.append(
                f"{total} opportunities readable, {sum(counts[s] for s in open_states)} open ({detail})."
            )
            newest = await rpc.model(
                "search_read", [], 0, 1, [["last_modified_at", "DESC"], ["id", "DESC"]], ["last_modified_at"]
            )
            if newest:
                revisions = await rpc.model("history_revisions", [newest[0]["id"]])
                stamp = newest[0]["last_modified_at"]
                lines.append(
                    f"Newest change {stamp:%Y-%m-%d %H:%M} UTC; stage history readable "
                    f"({len(revisions)} revisions of opportunity {newest[0]['id']})."
                )
            return lines
        finally:
            await rpc.aclose()

    async def _check_access(self, rpc: _Rpc) -> None:
        access = await rpc.model("get_access", [MODEL], model="ir.model.access")
        rights = access.get(MODEL) if isinstance(access, dict) else None
        if rights is None:
            raise rpc.module_missing()
        if not rights.get("read"):
            raise rpc.permission_denied()

    # -- sync -------------------------------------------------------------------------------------

    async def batches(
        self, cursor: str | None, progress: ProgressCallback | None = None
    ) -> AsyncIterator[SyncBatch]:
        """Yield one batch per page of opportunities modified after `cursor` (all of them when None),
        then a last batch with the deletions and the final cursor."""
        position = _Cursor.decode(cursor)
        meter = ProgressMeter(progress, SERVICE)
        rpc = self._rpc()
        try:
            await rpc.start()
            await self._check_access(rpc)
            run = await self._prepare(rpc)
            domain = _after(position)
            meter.add(total=await rpc.model("search_count", domain))
            sent_pipeline = False
            while True:
                rows = await rpc.model(
                    "search_read",
                    _after(position),
                    0,
                    self.page_size,
                    _ORDER,
                    _CORE_FIELDS + sorted(set(run.attribute_fields.values())),
                )
                if not rows:
                    break
                batch_opps, changes, owners = await self._page(rpc, run, rows)
                last = rows[-1]
                position = position.after(last["last_modified_at"], int(last["id"]))
                yield SyncBatch(
                    pipelines=[] if sent_pipeline else [run.pipeline],
                    owners=owners,
                    opportunities=batch_opps,
                    changes=changes,
                    cursor=position.encode(),
                )
                sent_pipeline = True
                meter.add(records=len(rows), pages=1)
                if len(rows) < self.page_size:
                    break
            deleted, position = await self._deletions(rpc, position, full=cursor is None)
            yield SyncBatch(
                pipelines=[] if sent_pipeline else [run.pipeline],
                deleted_ids=deleted,
                cursor=position.encode(),
            )
            meter.report(
                f"{SERVICE}: {meter.records:,} opportunities in {meter.pages:,} pages, "
                f"{len(deleted):,} deleted"
            )
        finally:
            await rpc.aclose()

    async def _prepare(self, rpc: _Rpc) -> _Run:
        """The pipeline (from the state selection) and the attribute fields (from fields_get)."""
        described = await rpc.model("fields_get", [])
        missing = [f for f in ("state", "last_modified_at", "amount", "end_date") if f not in described]
        if missing:
            raise connector_error(
                "Tryton version not supported",
                f"{MODEL} at {self.url} has no field {', '.join(missing)}; the connector needs trytond 8.x.",
            )
        selection = described["state"].get("selection") or [[s, s.title()] for s in _STATES]
        attributes: dict[str, str] = {}
        for name, spec in described.items():
            if name in _NOT_ATTRIBUTES or spec.get("type") not in _ATTRIBUTE_TYPES:
                continue
            if spec.get("type") == "many2one":
                attributes[name] = f"{name}.rec_name"
            else:
                attributes[name] = name
        return _Run(pipeline=_pipeline(selection), attribute_fields=attributes)

    async def _page(
        self, rpc: _Rpc, run: _Run, rows: list[dict[str, Any]]
    ) -> tuple[list[Opportunity], list[StageChange], list[Owner]]:
        histories = await _histories(rpc, rows)
        owners = await self._owners(rpc, run, rows)
        opportunities: list[Opportunity] = []
        changes: list[StageChange] = []
        for row in rows:
            opp = make_opportunity(SERVICE, self._fields(run, row))
            if opp is None:
                continue
            rows_of = _stage_changes(opp.id, histories.get(int(row["id"]), []))
            opp, history = finish_deal(opp, rows_of)
            opportunities.append(opp)
            changes.extend(history)
        return opportunities, changes, owners

    def _fields(self, run: _Run, row: dict[str, Any]) -> dict[str, Any]:
        """Opportunity fields from one search_read row."""
        state = str(row["state"])
        stage = run.pipeline.stage(state) if state in {s.id for s in run.pipeline.stages} else None
        closed = stage.is_closed if stage else False
        number = row.get("number") or str(row["id"])
        probability = _probability(row.get("conversion_probability"))
        if closed or (stage and probability == stage.probability):
            probability = None
        return {
            "id": str(row["id"]),
            "name": (row.get("description") or "").strip() or f"Opportunity {number}",
            "account": _nested(row, "party", "rec_name") or "",
            "owner_id": _owner_id(row),
            "pipeline_id": PIPELINE_ID,
            "stage_id": state,
            "amount": row.get("amount") or Decimal(0),
            "currency": _nested(row, "currency", "code") or "USD",
            "close_date": row.get("end_date"),
            "created_at": row.get("create_date"),
            "modified_at": row.get("last_modified_at"),
            "is_closed": closed,
            "is_won": stage.is_won if stage else False,
            "probability": probability,
            "attributes": _attributes(run, row),
        }

    async def _owners(self, rpc: _Rpc, run: _Run, rows: list[dict[str, Any]]) -> list[Owner]:
        """Owners named by these rows that this run has not sent yet, with their supervisors."""
        out: list[Owner] = []
        for row in rows:
            employee = row.get("employee.")
            if employee:
                run.employees.setdefault(
                    int(employee["id"]), (str(employee.get("rec_name") or ""), employee.get("supervisor"))
                )
            elif row.get("create_uid."):
                user = row["create_uid."]
                out.extend(
                    _new_owner(
                        run,
                        Owner(
                            id=f"user-{user['id']}", name=str(user.get("rec_name") or f"User {user['id']}")
                        ),
                    )
                )
            else:
                out.extend(_new_owner(run, Owner(id="unassigned", name="Unassigned")))
        await self._load_supervisors(rpc, run)
        for employee_id, (name, supervisor) in sorted(run.employees.items()):
            owner = Owner(
                id=f"employee-{employee_id}",
                name=name or f"Employee {employee_id}",
                manager_id=f"employee-{supervisor}" if supervisor else None,
            )
            out.extend(_new_owner(run, owner))
        return out

    async def _load_supervisors(self, rpc: _Rpc, run: _Run) -> None:
        """Read the employees up the supervisor chains that are not known yet."""
        while True:
            wanted = sorted({s for _, s in run.employees.values() if s and s not in run.employees})
            if not wanted:
                return
            rows = await rpc.model("read", wanted, ["rec_name", "supervisor"], model="company.employee")
            for row in rows:
                run.employees[int(row["id"])] = (str(row.get("rec_name") or ""), row.get("supervisor"))
            for missing in set(wanted) - {int(r["id"]) for r in rows}:
                run.employees[missing] = (f"Employee {missing}", None)

    async def _deletions(self, rpc: _Rpc, position: _Cursor, *, full: bool) -> tuple[list[str], _Cursor]:
        """Ids deleted since the cursor's last deletion report: gaps in the ids that have a newer revision."""
        ids = await rpc.model("search", [], 0, None, [["id", "ASC"]])
        present = {int(i) for i in ids}
        top = max([position.max_id, *present], default=0)
        gaps = sorted(set(range(1, top + 1)) - present)
        newest: dict[int, datetime] = {}
        for start in range(0, len(gaps), 1000):
            for stamp, record_id, _user in await rpc.model("history_revisions", gaps[start : start + 1000]):
                if record_id not in newest or stamp > newest[record_id]:
                    newest[record_id] = stamp
        since = None if full else position.deleted
        deleted = sorted(i for i, stamp in newest.items() if since is None or stamp > since)
        stamps = [s for s in (position.deleted, *newest.values()) if s is not None]
        latest = max(stamps) if stamps else None
        return [str(i) for i in deleted], _Cursor(position.modified, position.id, top, latest)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _after(position: _Cursor) -> list[Any]:
    """The domain of rows after `position` in (last_modified_at, id) order."""
    if position.modified is None:
        return []
    stamp = _encode_datetime(position.modified)
    return [
        "OR",
        [["last_modified_at", ">", stamp]],
        [["last_modified_at", "=", stamp], ["id", ">", position.id]],
    ]


async def _histories(
    rpc: _Rpc, rows: Sequence[Mapping[str, Any]]
) -> dict[int, list[tuple[datetime, Mapping[str, Any]]]]:
    """Every revision of these opportunities, oldest first.

    One `read` per distinct revision time, except each record's newest revision: that is the row
    itself (its `last_modified_at`), so it is taken from `rows` without asking again.
    """
    current = {int(row["id"]): row for row in rows}
    revisions = await rpc.call(f"model.{MODEL}.history_revisions", sorted(current), rpc.context)
    out: dict[int, list[tuple[datetime, Mapping[str, Any]]]] = {}
    by_time: dict[str, tuple[Any, list[int]]] = {}
    for stamp, record_id, _user in revisions:
        at, rid = _decode(stamp), int(record_id)
        row = current.get(rid)
        if row is not None and row.get("last_modified_at") == at:
            out.setdefault(rid, []).append((at, row))
        else:
            by_time.setdefault(json.dumps(stamp, sort_keys=True), (stamp, []))[1].append(rid)

    async def read(stamp: Any, record_ids: list[int]) -> list[tuple[datetime, Mapping[str, Any]]]:
        found = await rpc.model("read", record_ids, _HISTORY_FIELDS, context={"_datetime": stamp})
        at = _decode(stamp)
        return [(at, row) for row in found]

    for snapshots in await asyncio.gather(*(read(stamp, rids) for stamp, rids in by_time.values())):
        for at, row in snapshots:
            out.setdefault(int(row["id"]), []).append((at, row))
    for snapshots in out.values():
        snapshots.sort(key=lambda item: item[0])
    return out


def _stage_changes(
    opportunity_id: str, snapshots: Iterable[tuple[datetime, Mapping[str, Any]]]
) -> list[StageChange]:
    """One row per revision that changed the state, the amount or the end date."""
    out: list[StageChange] = []
    previous: tuple[Any, Any, Any] | None = None
    for at, row in snapshots:
        current = (row.get("state"), row.get("amount"), row.get("end_date"))
        if current == previous or not current[0]:
            continue
        previous = current
        amount = current[1] if current[1] is None or current[1] >= 0 else None
        out.append(
            StageChange(
                opportunity_id=opportunity_id,
                changed_at=at,
                stage_id=str(current[0]),
                amount=amount,
                close_date=current[2],
            )
        )
    return out


def _pipeline(selection: Sequence[Sequence[str]]) -> Pipeline:
    """The one Tryton pipeline: the state selection in funnel order, closed states last."""
    specs = [(str(value), str(label), _STATES.get(str(value), _UNKNOWN_STATE)) for value, label in selection]
    for value, spec in _STATES.items():
        if value not in {v for v, _, _ in specs}:
            specs.append((value, value.title(), spec))
    specs.sort(key=lambda item: (item[2].is_closed, item[2].order))
    stages = tuple(
        Stage(
            id=value,
            name=label or value,
            order=position,
            probability=spec.probability,
            category=spec.category,
            is_closed=spec.is_closed,
            is_won=spec.is_won,
        )
        for position, (value, label, spec) in enumerate(specs)
    )
    return Pipeline(id=PIPELINE_ID, name="Tryton opportunities", stages=stages)


def _nested(row: Mapping[str, Any], name: str, key: str) -> Any:
    """A dotted field's value (`party.rec_name` comes back as `{"party.": {"rec_name": ...}}`)."""
    related = row.get(f"{name}.")
    return related.get(key) if isinstance(related, Mapping) else None


def _owner_id(row: Mapping[str, Any]) -> str:
    employee = row.get("employee.")
    if isinstance(employee, Mapping):
        return f"employee-{employee['id']}"
    user = row.get("create_uid.")
    if isinstance(user, Mapping):
        return f"user-{user['id']}"
    return "unassigned"


def _new_owner(run: _Run, owner: Owner) -> list[Owner]:
    if owner.id in run.owners:
        return []
    run.owners.add(owner.id)
    return [owner]


def _probability(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = Decimal(str(value)).quantize(Decimal("0.0001"))
    except InvalidOperation:
        return None
    return result if 0 <= result <= 1 else None


def _attributes(run: _Run, row: Mapping[str, Any]) -> dict[str, Attribute]:
    out: dict[str, Attribute] = {}
    for name, source in run.attribute_fields.items():
        value = _nested(row, name, "rec_name") if source.endswith(".rec_name") else row.get(name)
        kept = as_attribute(value)
        if kept is not None:
            out[name] = kept
    return out
