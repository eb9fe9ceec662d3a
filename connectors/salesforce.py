"""Salesforce over the REST API: opportunities, their stage history, stages and users.

Sign-in is OAuth 2.0: JWT bearer (recommended), client credentials, or username-password (being
retired by Salesforce; a fallback only). Reads use SOQL through `queryAll` (deleted rows too) and
follow `nextRecordsUrl`. A sync walks Opportunity ordered by (SystemModstamp, Id); for each page it
reads the complete OpportunityHistory of the page's deals, so each batch carries whole histories
and a cursor after its last record. Multi-currency orgs are detected through describe
(`CurrencyIsoCode` only exists there); custom fields become deal attributes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from cockpit.models import ForecastCategory, Opportunity, Owner, Pipeline, Stage, StageChange, SyncBatch
from connectors import ConnectorError, ProgressCallback
from connectors._http import (
    HttpClient,
    adds_nothing,
    HttpStats,
    ProgressMeter,
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
    register_secret,
    stage_change,
    to_decimal,
)

log = protect_logger(logging.getLogger(__name__))

SERVICE = "Salesforce"
PIPELINE_ID = "salesforce"
"""Salesforce has one stage picklist; the cockpit holds it as one pipeline."""
DEFAULT_LOGIN_URL = "https://login.salesforce.com"

OPPORTUNITY_FIELDS = (
    "Id", "Name", "AccountId", "Amount", "StageName", "Probability", "CloseDate", "ForecastCategoryName",
    "IsClosed", "IsWon", "OwnerId", "CreatedDate", "LastModifiedDate", "SystemModstamp", "NextStep",
    "LastActivityDate", "Type", "LeadSource", "IsDeleted",
)
"""Opportunity fields the connector maps (those the org exposes to the user are selected)."""
HISTORY_FIELDS = "OpportunityId, CreatedDate, StageName, Amount, CloseDate, ForecastCategory"
NUMERIC_TYPES = {"double", "currency", "percent", "int", "long"}
CATEGORICAL_TYPES = {"picklist", "boolean", "string", "combobox", "multipicklist"}
"""Custom field types kept as deal attributes (text areas, ids, dates and the like are not)."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class SalesforceJwt(BaseModel):
    """OAuth 2.0 JWT bearer flow: a connected app with a certificate, pre-authorised for `username`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["jwt"] = "jwt"
    consumer_key: str = Field(min_length=1)
    """The connected app's consumer key (the JWT issuer)."""
    username: str = Field(min_length=1)
    """The Salesforce user the cockpit reads as (the JWT subject)."""
    private_key: SecretStr
    """PEM private key matching the certificate uploaded to the connected app."""
    audience: str = DEFAULT_LOGIN_URL
    """JWT audience: https://login.salesforce.com, or https://test.salesforce.com for a sandbox."""


class SalesforceClientCredentials(BaseModel):
    """OAuth 2.0 client-credentials flow: the connected app runs as its configured run-as user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["client_credentials"] = "client_credentials"
    domain: str = Field(min_length=1)
    """The org's My Domain ("acme" or "acme.my.salesforce.com"); this flow must use it."""
    client_id: str = Field(min_length=1)
    client_secret: SecretStr


class SalesforcePassword(BaseModel):
    """OAuth 2.0 username-password flow. Deprecated by Salesforce: use it only when nothing else works."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["password"] = "password"
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    username: str = Field(min_length=1)
    password: SecretStr
    security_token: SecretStr = SecretStr("")


SalesforceAuth = Annotated[
    SalesforceJwt | SalesforceClientCredentials | SalesforcePassword, Field(discriminator="kind")
]
"""How the connector signs in."""


# --------------------------------------------------------------------------------------------------
# OAuth session
# --------------------------------------------------------------------------------------------------


class _Session:
    """An OAuth access token and the instance URL it belongs to; renewed once on 401."""

    def __init__(self, auth: SalesforceJwt | SalesforceClientCredentials | SalesforcePassword, login_url: str) -> None:
        self.auth = auth
        self.token_url = f"{login_url.rstrip('/')}/services/oauth2/token"
        self.token: SecretStr | None = None
        self.instance_url: str | None = None
        self._lock = asyncio.Lock()

    async def headers(self, http: HttpClient) -> dict[str, str]:
        if self.token is None:
            await self.login(http)
        assert self.token is not None
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}

    async def refresh(self, http: HttpClient, used: Mapping[str, str]) -> bool:
        async with self._lock:
            current = f"Bearer {self.token.get_secret_value()}" if self.token else None
            if used.get("Authorization") == current:
                self.token = None
        await self.login(http)
        return True

    async def login(self, http: HttpClient) -> None:
        """Get a token unless another task just did."""
        async with self._lock:
            if self.token is not None:
                return
            form, basic = self._grant()
            body = await http.request_json("POST", self.token_url, form=form, basic_auth=basic, authenticated=False)
            if not isinstance(body, Mapping) or not body.get("access_token"):
                raise connector_error(
                    "Salesforce sign-in failed",
                    f"the token endpoint {httpx.URL(self.token_url).host} answered without an access token.",
                )
            register_secret(str(body["access_token"]))
            self.token = SecretStr(str(body["access_token"]))
            self.instance_url = str(body.get("instance_url") or "").rstrip("/") or None
            log.info("signed in to Salesforce (%s)", self.instance_url)

    def _grant(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        auth = self.auth
        if isinstance(auth, SalesforceJwt):
            return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": _jwt(auth)}, None
        if isinstance(auth, SalesforceClientCredentials):
            return {"grant_type": "client_credentials"}, (auth.client_id, auth.client_secret.get_secret_value())
        return {
            "grant_type": "password",
            "client_id": auth.client_id,
            "client_secret": auth.client_secret.get_secret_value(),
            "username": auth.username,
            "password": auth.password.get_secret_value() + auth.security_token.get_secret_value(),
        }, None


def _jwt(auth: SalesforceJwt) -> str:
    """The RS256-signed assertion of the JWT bearer flow (valid for 3 minutes)."""
    import jwt  # pyjwt[crypto]; imported here so the other flows do not load cryptography

    claims = {"iss": auth.consumer_key, "sub": auth.username, "aud": auth.audience, "exp": int(time.time()) + 180}
    try:
        token = jwt.encode(claims, auth.private_key.get_secret_value(), algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise connector_error(
            "Salesforce private key unusable",
            f"the private key for the JWT sign-in could not sign ({type(exc).__name__}). It must be the PEM RSA "
            "private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----) whose certificate is "
            "uploaded to the connected app.",
        ) from None
    register_secret(token)
    return token


def _error_hook(response: httpx.Response, body: Any) -> ConnectorError | Retry | None:
    """Salesforce's own error answers: quota, permissions, failed sign-in."""
    path = response.request.url.path
    if path.endswith("/oauth2/token") and isinstance(body, Mapping) and body.get("error"):
        return connector_error(
            "Salesforce sign-in failed",
            f"the token endpoint refused the sign-in ({body.get('error')}: {body.get('error_description', '')}). "
            "Check the connected app's consumer key or client id and secret, the username, that the user is "
            "pre-authorised for the app, that the certificate matches the private key (JWT), and that the login "
            "URL (production or sandbox, or the My Domain for client credentials) is right.",
        )
    errors = [e for e in body if isinstance(e, Mapping)] if isinstance(body, list) else []
    codes = {str(e.get("errorCode")) for e in errors}
    message = "; ".join(str(e.get("message", "")).strip() for e in errors)[:300]
    if "REQUEST_LIMIT_EXCEEDED" in codes:
        if "concurrent" in message.lower() or "LongTxn" in message:
            return Retry("too many concurrent long-running requests in the org")
        usage = response.headers.get("Sforce-Limit-Info", "")
        usage = f" ({usage})" if usage else ""
        return connector_error(
            "API quota exhausted",
            f"Salesforce refused {path}: the org's daily API limit (requests over a rolling 24 hours) is used "
            f"up{usage}. Retry after the limit resets as older requests age out, or ask a Salesforce admin to "
            "raise the limit or find what else uses it. The sync resumes where it stopped.",
        )
    if codes & {"INSUFFICIENT_ACCESS", "INSUFFICIENT_ACCESS_OR_READONLY", "API_DISABLED_FOR_ORG", "INVALID_TYPE"}:
        return connector_error(
            "No permission in Salesforce",
            f"Salesforce refused {path} ({', '.join(sorted(codes))}: {message}). The user the cockpit signs in as "
            "needs 'API Enabled' and read access to Opportunity, OpportunityHistory, OpportunityStage and User; "
            "ask a Salesforce admin to grant them (a permission set is the usual way).",
        )
    return None


# --------------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------------


def _datetime(value: Any) -> datetime | None:
    """Salesforce datetimes ("2024-06-10T14:03:12.000+0000") as aware UTC datetimes."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@functools.lru_cache(maxsize=65536)
def _amount(value: float | str | None) -> Decimal | None:
    """History amounts repeat a lot; parsing each distinct one once saves time on big orgs."""
    return to_decimal(value)


@functools.lru_cache(maxsize=8192)
def _date(value: Any) -> date | None:
    return date.fromisoformat(str(value)[:10]) if value else None


_category = parse_category


def _soql_datetime(value: datetime) -> str:
    """A SOQL datetime literal (unquoted, whole seconds, UTC)."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class _Schema:
    """What describe says about Opportunity in this org, for this user."""

    fields: list[str]
    custom: dict[str, str]
    """Custom fields kept as attributes → their Salesforce type."""
    multi_currency: bool
    currency: str
    """The org's currency (single-currency orgs) or the fallback for a deal without one."""


@dataclass
class _Page:
    """Deals read from one query page, before history is attached."""

    deals: list[Opportunity] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    last: tuple[datetime, str] | None = None


# --------------------------------------------------------------------------------------------------
# The connector
# --------------------------------------------------------------------------------------------------


class SalesforceConnector:
    """Reads a Salesforce org into SyncBatches. See the module docstring and docs/connectors.md."""

    name = "salesforce"
    SECRET_NAMES = {
        "client_secret": "COCKPIT_SALESFORCE_CLIENT_SECRET",
        "private_key": "COCKPIT_SALESFORCE_PRIVATE_KEY",
        "password": "COCKPIT_SALESFORCE_PASSWORD",
        "security_token": "COCKPIT_SALESFORCE_SECURITY_TOKEN",
    }
    """Secret → the environment variable (or keyring entry) that holds it."""

    def __init__(
        self,
        *,
        auth: SalesforceJwt | SalesforceClientCredentials | SalesforcePassword,
        instance_url: str | None = None,
        api_version: str = "v60.0",
        login_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        page_size: int = 2000,
        max_concurrency: int = 4,
        history_chunk: int = 300,
        lookback: timedelta = timedelta(minutes=5),
        default_currency: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`instance_url` is used until sign-in reports the org's own; `login_url` defaults to
        login.salesforce.com (the My Domain for client credentials). `page_size` (200–2,000) is the
        query batch size and so the batch size; `history_chunk` deal ids go in one history query.
        `lookback` re-reads deals modified shortly before the cursor (late commits);
        `default_currency` skips the Organization lookup of single-currency orgs."""
        if not 1 <= page_size <= 2000:
            raise ValueError(f"page_size must be between 1 and 2000 (Salesforce's largest batch), got {page_size}")
        if not api_version.startswith("v"):
            api_version = f"v{api_version}"
        self.auth = auth
        self.instance_url = instance_url.rstrip("/") if instance_url else None
        self.api_version = api_version
        self.login_url = login_url or _default_login_url(auth)
        self.page_size = page_size
        self.max_concurrency = max_concurrency
        self.history_chunk = history_chunk
        self.lookback = lookback
        self.default_currency = default_currency
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._client = client
        self.last_stats: HttpStats | None = None
        """Requests, retries and bytes of the last run (for benchmarks and the sync summary)."""
        for secret in _secrets_of(auth):
            register_secret(secret)

    def __repr__(self) -> str:
        return f"SalesforceConnector(instance_url={self.instance_url!r}, auth={self.auth.kind!r}, api={self.api_version})"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> SalesforceConnector:
        """Build from the `[connector.salesforce]` settings and the secrets named in `SECRET_NAMES`.

        settings: auth ("jwt" | "client_credentials" | "password"), instance_url, login_url,
        api_version, consumer_key + username (jwt), domain + client_id (client_credentials),
        client_id + username (password), page_size, max_concurrency, default_currency.
        """
        kind = str(settings.get("auth", "jwt"))

        def need(key: str, source: Mapping[str, Any] = settings, label: str | None = None) -> Any:
            value = source.get(key)
            if value in (None, ""):
                where = f"environment variable {label}" if label else f"setting salesforce.{key}"
                raise connector_error("Salesforce settings incomplete",
                                      f"the {where} is required for auth = {kind!r} but is not set.")
            return value

        def secret(name: str) -> SecretStr:
            env = cls.SECRET_NAMES[name]
            return SecretStr(str(need(env, secrets, env)))

        if kind == "jwt":
            auth: Any = SalesforceJwt(consumer_key=need("consumer_key"), username=need("username"),
                                      private_key=secret("private_key"),
                                      audience=settings.get("audience", DEFAULT_LOGIN_URL))
        elif kind == "client_credentials":
            auth = SalesforceClientCredentials(domain=need("domain"), client_id=need("client_id"),
                                               client_secret=secret("client_secret"))
        elif kind == "password":
            auth = SalesforcePassword(client_id=need("client_id"), client_secret=secret("client_secret"),
                                      username=need("username"), password=secret("password"),
                                      security_token=SecretStr(secrets.get(cls.SECRET_NAMES["security_token"], "")))
        else:
            raise connector_error("Salesforce settings invalid",
                                  f"salesforce.auth is {kind!r}; expected jwt, client_credentials or password.")
        options = {k: settings[k] for k in ("instance_url", "api_version", "login_url", "default_currency")
                   if settings.get(k)}
        numbers = {k: int(settings[k]) for k in ("page_size", "max_concurrency") if settings.get(k)}
        return cls(auth=auth, **options, **numbers)

    # ---- public API ------------------------------------------------------------------------------

    async def batches(self, cursor: str | None, progress: ProgressCallback | None = None) -> AsyncIterator[SyncBatch]:
        """Full sync (cursor None) or changes since `cursor`; see the module docstring."""
        since = self._read_cursor(cursor)
        meter = ProgressMeter(progress, SERVICE)
        http, session = await self._connect()
        try:
            schema = await self._describe(http)
            catalog = StageCatalog([await self._pipeline(http)])
            owners = await self._owners(http, "WHERE UserType = 'Standard'")
            known_owners = {o.id for o in owners}
            meter.report(f"{SERVICE}: {len(catalog.stage_pipeline)} stages, {len(owners)} users")
            yield SyncBatch(pipelines=catalog.take_changed() or list(catalog.pipelines.values()), owners=owners,
                            cursor=cursor)
            soql = self._opportunity_soql(schema, since)
            pending: deque[tuple[_Page, asyncio.Task[dict[str, list[StageChange]]]]] = deque()
            position = since
            try:
                async for records, total in self._pages(http, soql, all_rows=True):
                    meter.add(records=len(records), pages=1, total=total)
                    page = self._read_page(records, schema, since)
                    pending.append((page, asyncio.create_task(self._histories(http, page.deals))))
                    while len(pending) > 1:
                        batch, position = await self._finish(http, pending.popleft(), catalog, known_owners, position)
                        if not adds_nothing(batch, cursor):
                            cursor = batch.cursor
                            yield batch
                while pending:
                    batch, position = await self._finish(http, pending.popleft(), catalog, known_owners, position)
                    if not adds_nothing(batch, cursor):
                        cursor = batch.cursor
                        yield batch
            finally:
                for _, task in pending:
                    task.cancel()
            meter.report(f"{SERVICE}: done, {meter.records:,} opportunities in {meter.pages:,} pages ({meter.rate:,.0f}/s), "
                         f"{http.stats.requests:,} requests")
        finally:
            self.last_stats = http.stats
            await http.aclose()

    async def check(self) -> list[str]:
        """Sign in and report what the user can read (objects, counts, API budget). Writes nothing."""
        http, session = await self._connect()
        try:
            lines = [f"Signed in to {session.instance_url or self.instance_url} ({self.auth.kind}, API "
                     f"{self.api_version})"]
            limits = await http.get_json(self._api("limits/"))
            daily = (limits or {}).get("DailyApiRequests") or {}
            if daily:
                lines.append(f"API requests left today: {daily.get('Remaining', 0):,} of {daily.get('Max', 0):,}")
            schema = await self._describe(http)
            currency = "multi-currency org" if schema.multi_currency else f"single currency {schema.currency}"
            lines.append(f"Opportunity fields readable: {len(schema.fields)} ({currency}; "
                         f"{len(schema.custom)} custom fields kept as attributes)")
            for obj in ("Opportunity", "OpportunityHistory", "OpportunityStage", "User"):
                count = await self._count(http, obj)
                lines.append(f"{obj}: {count:,} records readable")
            return lines
        finally:
            await http.aclose()

    # ---- connection ------------------------------------------------------------------------------

    async def _connect(self) -> tuple[HttpClient, _Session]:
        session = _Session(self.auth, self.login_url)
        http = HttpClient(
            service=SERVICE, base_url=self.instance_url or self.login_url, auth=session, client=self._client,
            timeouts=self.timeouts, max_concurrency=self.max_concurrency, retry=self.retry,
            error_hook=_error_hook, headers={"Sforce-Query-Options": f"batchSize={self.page_size}"},
        )
        try:
            await session.login(http)
        except BaseException:
            await http.aclose()
            raise
        if session.instance_url:
            if self.instance_url and session.instance_url != self.instance_url:
                log.info("Salesforce sign-in reports instance %s (settings say %s); using the former",
                         session.instance_url, self.instance_url)
            http.base_url = session.instance_url
        elif not self.instance_url:
            await http.aclose()
            raise connector_error("Salesforce settings incomplete",
                                  "sign-in did not report the org's instance URL; set salesforce.instance_url.")
        return http, session

    def _api(self, path: str) -> str:
        return f"/services/data/{self.api_version}/{path}"

    async def _pages(self, http: HttpClient, soql: str, all_rows: bool = False) -> AsyncIterator[tuple[list[Any], int]]:
        """Each page of a SOQL query (records, totalSize), following nextRecordsUrl."""
        body = await http.get_json(self._api("queryAll" if all_rows else "query"), params={"q": soql})
        while True:
            if not isinstance(body, Mapping) or not isinstance(body.get("records"), list):
                raise connector_error("Salesforce sent an unexpected answer",
                                      "a query answer had no 'records' list; check the API version setting.")
            yield body["records"], int(body.get("totalSize") or 0)
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not next_url:
                return
            body = await http.get_json(str(next_url))

    async def _query_all(self, http: HttpClient, soql: str) -> list[Any]:
        rows: list[Any] = []
        async for records, _ in self._pages(http, soql):
            rows.extend(records)
        return rows

    async def _count(self, http: HttpClient, obj: str) -> int:
        body = await http.get_json(self._api("query"), params={"q": f"SELECT COUNT() FROM {obj}"})
        return int((body or {}).get("totalSize") or 0)

    # ---- metadata --------------------------------------------------------------------------------

    async def _describe(self, http: HttpClient) -> _Schema:
        body = await http.get_json(self._api("sobjects/Opportunity/describe"))
        described = {str(f.get("name")): f for f in (body or {}).get("fields", []) if isinstance(f, Mapping)}
        fields = [f for f in OPPORTUNITY_FIELDS if f in described]
        missing = {"Id", "StageName", "OwnerId", "SystemModstamp"} - set(fields)
        if missing:
            raise connector_error(
                "No permission in Salesforce",
                f"the user cannot see the Opportunity fields {', '.join(sorted(missing))}; ask an admin to grant "
                "read access to them (field-level security).",
            )
        if "AccountId" in fields:
            fields.append("Account.Name")
        custom = {
            name: str(f.get("type"))
            for name, f in described.items()
            if f.get("custom") and str(f.get("type")) in NUMERIC_TYPES | CATEGORICAL_TYPES
        }
        multi = "CurrencyIsoCode" in described
        if multi:
            fields.append("CurrencyIsoCode")
        currency = self.default_currency or (await self._org_currency(http) if not multi else "USD")
        return _Schema(fields=fields + sorted(custom), custom=custom, multi_currency=multi, currency=currency)

    async def _org_currency(self, http: HttpClient) -> str:
        try:
            rows = await self._query_all(http, "SELECT DefaultCurrencyIsoCode FROM Organization")
        except ConnectorError as exc:
            log.warning("could not read the org's currency (%s); assuming USD", exc.message)
            return "USD"
        code = rows[0].get("DefaultCurrencyIsoCode") if rows else None
        return str(code) if code else "USD"

    async def _pipeline(self, http: HttpClient) -> Pipeline:
        rows = await self._query_all(
            http, "SELECT Id, MasterLabel, ApiName, IsActive, SortOrder, IsClosed, IsWon, DefaultProbability, "
                  "ForecastCategoryName FROM OpportunityStage ORDER BY SortOrder",
        )
        rows.sort(key=lambda r: (bool(r.get("IsClosed")), r.get("SortOrder") or 0, str(r.get("ApiName"))))
        stages = []
        for order, row in enumerate(rows):
            closed, won = bool(row.get("IsClosed")), bool(row.get("IsWon"))
            probability = min(Decimal(1), max(Decimal(0), (to_decimal(row.get("DefaultProbability")) or 0) / 100))
            category = _category(row.get("ForecastCategoryName")) or (
                ForecastCategory.CLOSED if won else ForecastCategory.OMITTED if closed else ForecastCategory.PIPELINE)
            stages.append(Stage(id=str(row["ApiName"]), name=str(row.get("MasterLabel") or row["ApiName"]),
                                order=order, probability=probability, category=category, is_closed=closed,
                                is_won=won and closed))
        if not stages:
            raise connector_error("No stages in Salesforce",
                                  "OpportunityStage returned no rows; the user may lack read access to it.")
        return Pipeline(id=PIPELINE_ID, name="Opportunities", stages=tuple(stages))

    async def _owners(self, http: HttpClient, where: str) -> list[Owner]:
        rows = await self._query_all(
            http, f"SELECT Id, Name, Email, IsActive, ManagerId, UserRole.Name FROM User {where}"
        )
        owners = []
        for row in rows:
            role = row.get("UserRole") or {}
            owners.append(Owner(id=str(row["Id"]), name=str(row.get("Name") or row["Id"]),
                                manager_id=row.get("ManagerId") or None, team=role.get("Name") or None,
                                email=row.get("Email") or None))
        return owners

    # ---- opportunities ---------------------------------------------------------------------------

    def _read_cursor(self, cursor: str | None) -> tuple[datetime, str] | None:
        if cursor is None:
            return None
        values = decode_cursor(cursor, SERVICE, ("modstamp", "id"))
        try:
            return datetime.fromisoformat(values["modstamp"]), str(values["id"])
        except (TypeError, ValueError):
            raise connector_error("Salesforce: unknown sync cursor",
                                  "the stored cursor has no valid modstamp; run a full sync to start over.") from None

    def _opportunity_soql(self, schema: _Schema, since: tuple[datetime, str] | None) -> str:
        where = ""
        if since is not None:
            start = since[0] - self.lookback
            where = f" WHERE SystemModstamp >= {_soql_datetime(start.replace(microsecond=0))}"
        return f"SELECT {', '.join(schema.fields)} FROM Opportunity{where} ORDER BY SystemModstamp ASC, Id ASC"

    def _read_page(self, records: Sequence[Any], schema: _Schema, since: tuple[datetime, str] | None) -> _Page:
        page = _Page()
        for record in records:
            modstamp = _datetime(record.get("SystemModstamp"))
            key = (modstamp or datetime.min.replace(tzinfo=timezone.utc), str(record.get("Id")))
            page.last = key
            if since is not None and not self.lookback and key <= since:
                continue
            if record.get("IsDeleted"):
                page.deleted.append(str(record["Id"]))
                continue
            deal = self._opportunity(record, schema)
            if deal is not None:
                page.deals.append(deal)
        return page

    def _opportunity(self, record: Mapping[str, Any], schema: _Schema) -> Opportunity | None:
        account = record.get("Account") or {}
        attributes = {}
        for name in schema.custom:
            value = as_attribute(record.get(name))
            if value is not None:
                attributes[name] = value
        closed = bool(record.get("IsClosed"))
        probability = to_decimal(record.get("Probability"))
        return make_opportunity(SERVICE, {
            "id": str(record["Id"]),
            "name": record.get("Name") or "",
            "account": account.get("Name") or "",
            "owner_id": str(record.get("OwnerId") or ""),
            "pipeline_id": PIPELINE_ID,
            "stage_id": str(record.get("StageName") or ""),
            "amount": to_decimal(record.get("Amount")) or Decimal(0),
            "currency": record.get("CurrencyIsoCode") or schema.currency,
            "close_date": _date(record.get("CloseDate")),
            "created_at": _datetime(record.get("CreatedDate")),
            "modified_at": _datetime(record.get("LastModifiedDate") or record.get("SystemModstamp")),
            "forecast_category": _category(record.get("ForecastCategoryName")),
            "next_step": record.get("NextStep") or None,
            "last_activity": _date(record.get("LastActivityDate")),
            "lead_source": record.get("LeadSource") or None,
            "type": record.get("Type") or None,
            "is_closed": closed,
            "is_won": closed and bool(record.get("IsWon")),
            "probability": probability / 100 if probability is not None and 0 <= probability <= 100 else None,
            "attributes": attributes,
        })

    async def _histories(self, http: HttpClient, deals: Sequence[Opportunity]) -> dict[str, list[StageChange]]:
        """The complete OpportunityHistory of `deals`, by opportunity id (chunked, concurrent)."""
        ids = [d.id for d in deals]
        chunks = [ids[i : i + self.history_chunk] for i in range(0, len(ids), self.history_chunk)]
        results = await asyncio.gather(*(self._history_chunk(http, chunk) for chunk in chunks))
        merged: dict[str, list[StageChange]] = defaultdict(list)
        for result in results:
            for key, rows in result.items():
                merged[key].extend(rows)
        return merged

    async def _history_chunk(self, http: HttpClient, ids: Sequence[str]) -> dict[str, list[StageChange]]:
        soql = (f"SELECT {HISTORY_FIELDS} FROM OpportunityHistory WHERE OpportunityId IN "
                f"({', '.join(_quote(i) for i in ids)}) ORDER BY OpportunityId, CreatedDate ASC")
        out: dict[str, list[StageChange]] = defaultdict(list)
        async for records, _ in self._pages(http, soql):
            for row in records:
                change = _change(row)
                if change is not None:
                    out[change.opportunity_id].append(change)
        return out

    async def _finish(
        self,
        http: HttpClient,
        work: tuple[_Page, asyncio.Task[dict[str, list[StageChange]]]],
        catalog: StageCatalog,
        known_owners: set[str],
        position: tuple[datetime, str] | None,
    ) -> tuple[SyncBatch, tuple[datetime, str] | None]:
        """Attach histories to a page's deals and make the batch (in page order)."""
        page, task = work
        histories = await task
        deals: list[Opportunity] = []
        changes: list[StageChange] = []
        for deal in page.deals:
            deal, rows = finish_deal(deal, histories.get(deal.id, []))
            for stage_id in {deal.stage_id, *(r.stage_id for r in rows)}:
                catalog.ensure(stage_id, PIPELINE_ID)
            deals.append(deal)
            changes.extend(rows)
        new_owners = sorted({d.owner_id for d in deals} - known_owners)
        owners = await self._owners(http, f"WHERE Id IN ({', '.join(_quote(i) for i in new_owners)})") if new_owners else []
        known_owners.update(new_owners)
        if page.last is not None:
            position = page.last if position is None else max(position, page.last)
        cursor = encode_cursor({"modstamp": position[0].isoformat(), "id": position[1]}) if position else None
        return SyncBatch(pipelines=catalog.take_changed(), owners=owners, opportunities=deals, changes=changes,
                         deleted_ids=page.deleted, cursor=cursor), position


def _change(row: Mapping[str, Any]) -> StageChange | None:
    stage = row.get("StageName")
    at = _datetime(row.get("CreatedDate"))
    if not stage or at is None or not row.get("OpportunityId"):
        return None
    amount = _amount(row.get("Amount"))
    return stage_change(
        str(row["OpportunityId"]), at, str(stage), amount if amount is not None and amount >= 0 else None,
        _date(row.get("CloseDate")), _category(row.get("ForecastCategory")),
    )


def _default_login_url(auth: SalesforceJwt | SalesforceClientCredentials | SalesforcePassword) -> str:
    if isinstance(auth, SalesforceClientCredentials):
        domain = auth.domain.strip().removeprefix("https://").rstrip("/")
        return f"https://{domain}" if "." in domain else f"https://{domain}.my.salesforce.com"
    return DEFAULT_LOGIN_URL


def _secrets_of(auth: BaseModel) -> list[SecretStr]:
    return [v for v in (getattr(auth, n, None) for n in type(auth).model_fields) if isinstance(v, SecretStr)]


_AUTH_ADAPTER: TypeAdapter[Any] = TypeAdapter(SalesforceAuth)


def parse_auth(data: Mapping[str, Any]) -> SalesforceJwt | SalesforceClientCredentials | SalesforcePassword:
    """Validate an auth mapping ({"kind": "jwt", ...}); errors name the field, never the secret value."""
    try:
        return _AUTH_ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise connector_error("Salesforce settings invalid", problems) from None
