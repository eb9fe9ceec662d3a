"""A fake Salesforce org on loopback: OAuth token endpoint, REST query with a SOQL subset, describe.

Shapes follow crm-apis.md §1.9 (checked with simple-salesforce in tests/test_salesforce.py). The
SOQL subset: `SELECT f, Rel.f | COUNT() FROM Obj [WHERE …] [ORDER BY f [ASC|DESC], …] [LIMIT n]`,
conditions with AND / OR / NOT / parentheses, `= != < <= > >=`, `IN (…)`, `NOT IN (…)`, and
string, boolean, null, number, date and datetime literals. Unknown fields answer 400 INVALID_FIELD
(CurrencyIsoCode too, when the org is single-currency).
"""

from __future__ import annotations

import base64
import itertools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from tests.fakes import OWNERS, STAGE_CATEGORY, STAGE_PROBABILITY, Dataset, Deal, FakeServer, Request, Response

API_VERSION = "v60.0"
STAGES = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
)
"""StageName of each abstract stage (tests.fakes: 0..4 open, 5 won, 6 lost)."""
CATEGORY_LABEL = {"pipeline": "Pipeline", "best_case": "Best Case", "commit": "Commit", "closed": "Closed",
                  "omitted": "Omitted"}
CATEGORY_API = {"pipeline": "Pipeline", "best_case": "BestCase", "commit": "Forecast", "closed": "Closed",
                "omitted": "Omitted"}

OPPORTUNITY_FIELDS = {
    "Id": "id", "Name": "string", "AccountId": "reference", "Amount": "currency", "StageName": "picklist",
    "Probability": "percent", "CloseDate": "date", "ForecastCategoryName": "picklist", "IsClosed": "boolean",
    "IsWon": "boolean", "OwnerId": "reference", "CreatedDate": "datetime", "LastModifiedDate": "datetime",
    "SystemModstamp": "datetime", "NextStep": "string", "LastActivityDate": "date", "Type": "picklist",
    "LeadSource": "picklist", "IsDeleted": "boolean", "Description": "textarea", "Region__c": "picklist",
    "Seats__c": "double", "Notes__c": "textarea", "Partner__c": "reference",
}
HISTORY_FIELDS = (
    "Id", "OpportunityId", "CreatedById", "CreatedDate", "StageName", "Amount", "ExpectedRevenue", "CloseDate",
    "Probability", "ForecastCategory", "PrevAmount", "PrevCloseDate", "SystemModstamp", "IsDeleted",
)
STAGE_FIELDS = ("Id", "MasterLabel", "ApiName", "IsActive", "SortOrder", "DefaultProbability",
                "ForecastCategoryName", "IsClosed", "IsWon", "Description")
USER_FIELDS = ("Id", "Name", "Email", "IsActive", "UserRoleId", "ManagerId", "UserType", "Department")
ORG_FIELDS = ("Id", "Name", "DefaultCurrencyIsoCode")
RELATIONS = {("Opportunity", "Account"): ("Account", "AccountId"), ("User", "UserRole"): ("UserRole", "UserRoleId")}


def sf_datetime(value: datetime) -> str:
    """Salesforce's datetime format: 2024-06-10T14:03:12.000+0000."""
    if value.utcoffset():
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "+0000")


def opportunity_id(key: int) -> str:
    return f"006XX{key:010d}AAA"


def user_id(key: int) -> str:
    return f"005XX{key:010d}AAA"


def account_id(key: int) -> str:
    return f"001XX{key % 97:010d}AAA"


def history_id(key: int, index: int) -> str:
    return f"008XX{key:07d}{index:03d}AAA"


# --------------------------------------------------------------------------------------------------
# SOQL subset
# --------------------------------------------------------------------------------------------------


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>>=|<=|!=|<>|=|<|>)|(?P<punct>[(),])|(?P<word>[^\s(),=<>!']+))"
)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected character at {pos}: {text[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


@dataclass
class Query:
    fields: list[str]
    count: bool
    obj: str
    where: Callable[[dict[str, Any]], bool] | None
    in_ids: set[str] | None
    order: list[tuple[str, bool]]
    limit: int | None
    only_in: bool = False
    """The WHERE clause is just `OpportunityId IN (…)`."""
    since: datetime | None = None
    """A top-level `SystemModstamp >= / > literal` bound (lets the fake skip older records early)."""
    since_strict: bool = False
    top_factors: int = 0
    """How many conditions the WHERE clause ANDs at its top level."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.in_ids: set[str] | None = None
        self.top_factors = 0
        self.since: datetime | None = None
        self.since_strict = False

    def peek(self, upper: bool = True) -> str | None:
        if self.i >= len(self.toks):
            return None
        value = self.toks[self.i][1]
        return value.upper() if upper else value

    def take(self, expected: str | None = None) -> str:
        if self.i >= len(self.toks):
            raise SoqlError("MALFORMED_QUERY", f"unexpected end of query (expected {expected or 'more'})")
        value = self.toks[self.i][1]
        if expected is not None and value.upper() != expected:
            raise SoqlError("MALFORMED_QUERY", f"expecting {expected!r}, found {value!r}")
        self.i += 1
        return value

    def parse(self) -> Query:
        self.take("SELECT")
        fields: list[str] = []
        count = False
        if self.peek() == "COUNT":
            self.take()
            self.take("(")
            self.take(")")
            count = True
        else:
            while True:
                fields.append(self.take())
                if self.peek() != ",":
                    break
                self.take(",")
        self.take("FROM")
        obj = self.take()
        where = None
        if self.peek() == "WHERE":
            self.take()
            where = self.expr(top=True)
        order: list[tuple[str, bool]] = []
        if self.peek() == "ORDER":
            self.take()
            self.take("BY")
            while True:
                name = self.take()
                desc = False
                if self.peek() in ("ASC", "DESC"):
                    desc = self.take().upper() == "DESC"
                if self.peek() == "NULLS":
                    self.take()
                    self.take()
                order.append((name, desc))
                if self.peek() != ",":
                    break
                self.take(",")
        limit = None
        if self.peek() == "LIMIT":
            self.take()
            limit = int(self.take())
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token {self.peek(False)!r}")
        return Query(fields, count, obj, where, self.in_ids, order, limit,
                     only_in=self.in_ids is not None and self.top_factors == 1, since=self.since,
                     since_strict=self.since_strict, top_factors=self.top_factors)

    def expr(self, top: bool = False) -> Callable[[dict[str, Any]], bool]:
        terms = [self.term(top)]
        while self.peek() == "OR":
            self.take()
            terms.append(self.term(False))
        if len(terms) > 1 and top:
            self.in_ids = None
            self.since = None
        return terms[0] if len(terms) == 1 else (lambda r, ts=terms: any(t(r) for t in ts))

    def term(self, top: bool) -> Callable[[dict[str, Any]], bool]:
        factors = [self.factor(top)]
        while self.peek() == "AND":
            self.take()
            factors.append(self.factor(top))
        if top:
            self.top_factors = len(factors)
        return factors[0] if len(factors) == 1 else (lambda r, fs=factors: all(f(r) for f in fs))

    def factor(self, top: bool) -> Callable[[dict[str, Any]], bool]:
        if self.peek() == "NOT":
            self.take()
            inner = self.factor(False)
            return lambda r: not inner(r)
        if self.peek() == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        name = self.take()
        negate = False
        if self.peek() == "NOT":
            self.take()
            negate = True
        op = self.take().upper()
        if op == "IN":
            self.take("(")
            values = [self.literal()]
            while self.peek() == ",":
                self.take()
                values.append(self.literal())
            self.take(")")
            if top and not negate and name == "OpportunityId":
                self.in_ids = {str(v) for v in values}
            members = set(values) if all(isinstance(v, str | bool | Decimal | None) for v in values) else values
            return lambda r: (_get(r, name) in members) != negate
        if op not in ("=", "!=", "<>", "<", "<=", ">", ">="):
            raise SoqlError("MALFORMED_QUERY", f"unexpected operator {op!r}")
        value = self.literal()
        if top and name == "SystemModstamp" and op in (">", ">=") and isinstance(value, datetime):
            self.since, self.since_strict = value, op == ">"
        return lambda r: _compare(_get(r, name), op, value)

    def literal(self) -> Any:
        kind, text = self.toks[self.i]
        self.i += 1
        if kind == "str":
            return text[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        upper = text.upper()
        if upper in ("TRUE", "FALSE"):
            return upper == "TRUE"
        if upper == "NULL":
            return None
        if _DATETIME.match(text):
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        if _DATE.match(text):
            return date.fromisoformat(text)
        try:
            return Decimal(text)
        except ArithmeticError:
            raise SoqlError("MALFORMED_QUERY", f"unexpected literal {text!r}") from None


def _get(record: dict[str, Any], name: str) -> Any:
    value: Any = record
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _coerce(value: Any, like: Any) -> Any:
    if value is None or like is None:
        return value
    if isinstance(like, datetime) and isinstance(value, str):
        return datetime.fromisoformat(value)
    if isinstance(like, date) and isinstance(value, str):
        return date.fromisoformat(value[:10])
    if isinstance(like, Decimal) and isinstance(value, int | float):
        return Decimal(str(value))
    return value


def _compare(value: Any, op: str, literal: Any) -> bool:
    value = _coerce(value, literal)
    if op == "=":
        return value == literal
    if op in ("!=", "<>"):
        return value != literal
    if value is None or literal is None:
        return False
    return {"<": value < literal, "<=": value <= literal, ">": value > literal, ">=": value >= literal}[op]


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        return (1, datetime.fromisoformat(value))
    return (1, value)


# --------------------------------------------------------------------------------------------------
# The fake org
# --------------------------------------------------------------------------------------------------


class SalesforceFake(FakeServer):
    """A Salesforce org holding `dataset`; see the module docstring for what it understands.

    Switches: `multi_currency`, `page_size` (default batch size; `Sforce-Query-Options` overrides
    it), `api_limit` (403 REQUEST_LIMIT_EXCEEDED once used up), `denied_objects` (queries answer
    400 INVALID_TYPE, as for a user without read access), `expire_tokens()`.
    """

    service = "salesforce"

    def __init__(
        self,
        dataset: Dataset,
        *,
        multi_currency: bool = True,
        default_currency: str = "USD",
        page_size: int = 2000,
        api_limit: int = 15000,
        consumer_key: str = "3MVG9fake.consumer.key",
        username: str = "integration@acme.example",
        public_key_pem: bytes | None = None,
        audience: str = "https://login.salesforce.com",
        client_id: str = "3MVG9fake.client.id",
        client_secret: str = "fake-client-secret-1234567890",
        password: str = "hunter2-password",
        security_token: str = "SECTOKEN123",
        denied_objects: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.data = dataset
        self.multi_currency = multi_currency
        self.default_currency = default_currency
        self.page_size = page_size
        self.api_limit = api_limit
        self.api_used = 0
        self.consumer_key = consumer_key
        self.username = username
        self.public_key_pem = public_key_pem
        self.audience = audience
        self.client_id = client_id
        self.client_secret = client_secret
        self.password = password
        self.security_token = security_token
        self.denied_objects = set(denied_objects)
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self._locators: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._locator_ids = itertools.count(1)
        self._history_cache: dict[tuple[int, int, tuple[str, ...]], list[dict[str, Any]]] = {}
        self._opportunity_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._state = threading.Lock()
        self.sessions: list[str] = []
        """Every access token issued (for the tests that check nothing leaks)."""

    # ---- switches --------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every issued access token becomes invalid (the next call answers 401 INVALID_SESSION_ID)."""
        with self._state:
            self.tokens.clear()

    def issue_token(self) -> str:
        """A valid access token, as if a login had happened (for the client-library cross-checks)."""
        with self._state:
            self.tokens_issued += 1
            token = f"00DXX0000000001!AQ4AQFakeToken{self.tokens_issued:04d}x{time.monotonic_ns() % 10**6}"
            self.tokens.add(token)
            self.sessions.append(token)
            return token

    # ---- framework hooks -------------------------------------------------------------------------

    def common_headers(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}"}

    def error_response(self, status: int) -> Response:
        bodies = {
            400: ("MALFORMED_QUERY", "unexpected token"),
            401: ("INVALID_SESSION_ID", "Session expired or invalid"),
            403: ("INSUFFICIENT_ACCESS", "insufficient access rights on object id"),
            404: ("NOT_FOUND", "The requested resource does not exist"),
            500: ("UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId: 1234-5678"),
            503: ("SERVER_UNAVAILABLE", "Server is temporarily unavailable"),
        }
        code, message = bodies.get(status, ("UNKNOWN_EXCEPTION", f"HTTP {status}"))
        return Response(status, [{"message": message, "errorCode": code}])

    def route(self, request: Request) -> Response:
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self._token(request)
        if not request.path.startswith("/services/data"):
            return self.error_response(404)
        if request.path.rstrip("/") == "/services/data":
            return Response(200, [{"label": "Spring '24", "url": f"/services/data/{API_VERSION}", "version": "60.0"}])
        auth = request.header("authorization") or ""
        with self._state:
            valid = auth.startswith("Bearer ") and auth[7:] in self.tokens
        if not valid:
            return self.error_response(401)
        with self._state:
            self.api_used += 1
            over = self.api_used > self.api_limit
        if over:
            return Response(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        prefix = f"/services/data/{API_VERSION}"
        path = request.path[len(prefix):] if request.path.startswith(prefix) else None
        if path is None:
            return self.error_response(404)
        if path in ("/query", "/query/", "/queryAll", "/queryAll/"):
            return self._query(request.arg("q") or "", include_deleted=path.startswith("/queryAll"),
                               batch=_batch_size(request.header("sforce-query-options")) or self.page_size)
        if path.startswith(("/query/", "/queryAll/")):
            return self._more(path.rsplit("/", 1)[-1])
        if path.rstrip("/") == "/limits":
            return Response(200, {"DailyApiRequests": {"Max": self.api_limit,
                                                       "Remaining": max(0, self.api_limit - self.api_used)}})
        match = re.fullmatch(r"/sobjects/(\w+)/describe/?", path)
        if match:
            return self._describe(match.group(1))
        return self.error_response(404)

    # ---- OAuth -----------------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = request.form()
        grant = form.get("grant_type", "")
        ok = False
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            ok = self._check_jwt(form.get("assertion", ""))
        elif grant == "client_credentials":
            basic = request.header("authorization") or ""
            if basic.startswith("Basic "):
                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            else:
                cid, secret = form.get("client_id", ""), form.get("client_secret", "")
            ok = (cid, secret) == (self.client_id, self.client_secret)
        elif grant == "password":
            ok = (form.get("client_id"), form.get("client_secret"), form.get("username"), form.get("password")) == (
                self.client_id, self.client_secret, self.username, self.password + self.security_token)
        if not ok:
            return Response(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        token = self.issue_token()
        body: dict[str, Any] = {
            "access_token": token,
            "scope": "api",
            "instance_url": self.url,
            "id": "https://login.salesforce.com/id/00DXX0000000001EAA/005XX000001AbcDEAA",
            "token_type": "Bearer",
        }
        if grant == "password":
            body["issued_at"] = str(int(time.time() * 1000))
            body["signature"] = "b2F1dGgtc2lnbmF0dXJlLWZha2U="
        return Response(200, body)

    def _check_jwt(self, assertion: str) -> bool:
        import jwt  # pyjwt, with cryptography for RS256

        if self.public_key_pem is None:
            return False
        try:
            claims = jwt.decode(assertion, self.public_key_pem, algorithms=["RS256"], audience=self.audience,
                                issuer=self.consumer_key, options={"require": ["exp", "iss", "sub", "aud"]})
        except jwt.PyJWTError:
            return False
        return claims["sub"] == self.username and float(claims["exp"]) <= time.time() + 180 + 5

    # ---- describe --------------------------------------------------------------------------------

    def _fields(self, obj: str) -> tuple[str, ...]:
        if obj == "Opportunity":
            names = tuple(OPPORTUNITY_FIELDS)
            return names + ("CurrencyIsoCode",) if self.multi_currency else names
        return {"OpportunityHistory": HISTORY_FIELDS, "OpportunityStage": STAGE_FIELDS, "User": USER_FIELDS,
                "Organization": ORG_FIELDS, "Account": ("Id", "Name"), "UserRole": ("Id", "Name")}.get(obj, ())

    def _describe(self, obj: str) -> Response:
        if obj in self.denied_objects or not self._fields(obj):
            return Response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        types = dict(OPPORTUNITY_FIELDS, CurrencyIsoCode="picklist") if obj == "Opportunity" else {}
        fields = [
            {"name": name, "label": name.removesuffix("__c").replace("_", " "), "type": types.get(name, "string"),
             "custom": name.endswith("__c"), "length": 255 if types.get(name) in ("string", "picklist") else 0,
             "nillable": name not in ("Id", "Name", "StageName", "CloseDate"), "calculated": False}
            for name in self._fields(obj)
        ]
        return Response(200, {"name": obj, "label": obj, "queryable": True, "fields": fields})

    # ---- query -----------------------------------------------------------------------------------

    def _query(self, soql: str, include_deleted: bool, batch: int) -> Response:
        try:
            query = _Parser(soql).parse()
            if query.obj in self.denied_objects or not self._fields(query.obj):
                raise SoqlError("INVALID_TYPE", f"sObject type '{query.obj}' is not supported. If you are attempting "
                                "to use a custom object, be sure to append the '__c' after the entity name.")
            self._check_fields(query)
            records = self._run(query, include_deleted)
        except SoqlError as exc:
            return Response(400, [{"message": exc.message, "errorCode": exc.code}])
        if query.count:
            return Response(200, {"totalSize": len(records), "done": True, "records": []})
        return self._page(records, 0, batch)

    def _check_fields(self, query: Query) -> None:
        known = set(self._fields(query.obj))
        for name in query.fields + [n for n, _ in query.order]:
            head, _, tail = name.partition(".")
            if tail:
                relation = RELATIONS.get((query.obj, head))
                if relation is None or tail not in self._fields(relation[0]):
                    raise SoqlError("INVALID_FIELD", _no_such_column(name, query.obj))
            elif name not in known:
                raise SoqlError("INVALID_FIELD", _no_such_column(name, query.obj))

    def _run(self, query: Query, include_deleted: bool) -> list[dict[str, Any]]:
        natural = [("OpportunityId", False), ("CreatedDate", False)]
        if query.obj == "OpportunityHistory" and query.only_in and query.order == natural and not query.count:
            return self._cached_history(query)  # already filtered, ordered and projected
        by_modstamp = [("SystemModstamp", False), ("Id", False)]
        simple = query.where is None or (query.since is not None and self.top_level_only_since(query))
        if query.obj == "Opportunity" and query.order == by_modstamp and simple and not query.count and not query.limit:
            return self._ordered_opportunities(query, include_deleted)
        with self.data.lock:
            rows = list(self._rows(query.obj, query.in_ids, include_deleted, query.since))
        if query.where is not None:
            rows = [r for r in rows if query.where(r)]
        for name, desc in reversed(query.order):
            rows.sort(key=lambda r, n=name: _sort_key(_get(r, n)), reverse=desc)
        if query.limit is not None:
            rows = rows[: query.limit]
        if query.count:
            return rows
        return [self._project(query.obj, r, query.fields) for r in rows]

    def _page(self, records: list[dict[str, Any]], offset: int, batch: int) -> Response:
        page = records[offset : offset + batch]
        body: dict[str, Any] = {"totalSize": len(records), "done": offset + batch >= len(records)}
        if not body["done"]:
            locator = f"01gXX{next(self._locator_ids):010d}AAA"
            with self._state:
                self._locators[locator] = (records, batch)
                while len(self._locators) > 64:
                    self._locators.popitem(last=False)
            body["nextRecordsUrl"] = f"/services/data/{API_VERSION}/query/{locator}-{offset + batch}"
        body["records"] = page
        return Response(200, body)

    def _more(self, ref: str) -> Response:
        locator, _, offset = ref.rpartition("-")
        with self._state:
            entry = self._locators.get(locator)
        if entry is None or not offset.isdigit():
            return Response(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}])
        records, batch = entry
        return self._page(records, int(offset), batch)

    def _project(self, obj: str, row: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": row["attributes"]}
        for name in fields:
            head, _, tail = name.partition(".")
            if tail:
                related = row.get(head)
                if related is None:
                    out[head] = None
                else:
                    out.setdefault(head, {"attributes": related["attributes"]})[tail] = related.get(tail)
            else:
                out[name] = row.get(name)
        return out

    # ---- rows ------------------------------------------------------------------------------------

    def prerender(self, history_fields: Iterable[str]) -> None:
        """Render every deal's history rows for this field list ahead of time (benchmarks: a real
        org has its rows stored; the fake's rendering should not count as sync time)."""
        history = tuple(history_fields)
        with self.data.lock:
            for deal in self.data.deals:
                self._history_of(deal, history)

    def _history_of(self, deal: Deal, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        key = (deal.key, len(deal.steps), fields)
        rows = self._history_cache.get(key)
        if rows is None:
            rows = [self._project("OpportunityHistory", r, list(fields)) for r in self.history_rows(deal)]
            self._history_cache[key] = rows
        return rows

    @staticmethod
    def top_level_only_since(query: Query) -> bool:
        return query.since is not None and query.in_ids is None and query.top_factors == 1

    def _ordered_opportunities(self, query: Query, include_deleted: bool) -> list[dict[str, Any]]:
        """Opportunities by (SystemModstamp, Id), projected, from the deals directly (the generic
        path parses every timestamp to sort; a big org's full sync would wait on the fake)."""
        fields = tuple(query.fields)
        with self.data.lock:
            deals = [d for d in self.data.deals if include_deleted or not d.deleted]
            if query.since is not None:
                since = query.since
                deals = [d for d in deals if d.modified > since or (not query.since_strict and d.modified == since)]
            deals.sort(key=lambda d: (d.modified.replace(microsecond=d.modified.microsecond // 1000 * 1000), d.key))
            return [self._opportunity_of(d, fields) for d in deals]

    def _opportunity_of(self, deal: Deal, fields: tuple[str, ...]) -> dict[str, Any]:
        key = (deal.key, deal.modified, deal.deleted, fields)
        row = self._opportunity_cache.get(key)
        if row is None:
            row = self._project("Opportunity", self.opportunity_row(deal), list(fields))
            self._opportunity_cache[key] = row
        return row

    def _cached_history(self, query: Query) -> list[dict[str, Any]]:
        assert query.in_ids is not None
        keys = sorted(int(i[5:15]) for i in query.in_ids if re.fullmatch(r"006XX\d{10}AAA", i))
        fields = tuple(query.fields)
        out: list[dict[str, Any]] = []
        with self.data.lock:
            for key in keys:
                if key < len(self.data.deals) and not self.data.deals[key].deleted:
                    out.extend(self._history_of(self.data.deals[key], fields))
        return out

    def _rows(self, obj: str, in_ids: set[str] | None, include_deleted: bool,
              since: datetime | None = None) -> Iterable[dict[str, Any]]:
        if obj == "Opportunity":
            for deal in self.data.deals:
                if (include_deleted or not deal.deleted) and (since is None or deal.modified >= since):
                    yield self.opportunity_row(deal)
        elif obj == "OpportunityHistory":
            deals = self.data.deals
            if in_ids is not None:
                keys = [int(i[5:15]) for i in in_ids if re.fullmatch(r"006XX\d{10}AAA", i)]
                deals = [self.data.deals[k] for k in sorted(keys) if k < len(self.data.deals)]
            for deal in deals:
                if not deal.deleted:
                    yield from self.history_rows(deal)
        elif obj == "OpportunityStage":
            yield from self.stage_rows()
        elif obj == "User":
            yield from self.user_rows()
        elif obj == "Organization":
            yield {"attributes": _attrs("Organization", "00DXX0000000001EAA"), "Id": "00DXX0000000001EAA",
                   "Name": "Acme", "DefaultCurrencyIsoCode": self.default_currency}

    def opportunity_row(self, deal: Deal) -> dict[str, Any]:
        last = deal.last
        oid = opportunity_id(deal.key)
        aid = account_id(deal.key)
        row: dict[str, Any] = {
            "attributes": _attrs("Opportunity", oid),
            "Id": oid,
            "Name": deal.name,
            "AccountId": aid,
            "Account": {"attributes": _attrs("Account", aid), "Id": aid, "Name": deal.account},
            "Amount": float(last.amount),
            "StageName": STAGES[last.stage],
            "Probability": float(STAGE_PROBABILITY[last.stage]),
            "CloseDate": last.close_date.isoformat(),
            "ForecastCategoryName": CATEGORY_LABEL[last.category],
            "IsClosed": deal.is_closed,
            "IsWon": deal.is_won,
            "OwnerId": user_id(deal.owner),
            "CreatedDate": sf_datetime(deal.created),
            "LastModifiedDate": sf_datetime(deal.modified),
            "SystemModstamp": sf_datetime(deal.modified),
            "NextStep": deal.next_step,
            "LastActivityDate": deal.last.at.date().isoformat() if deal.key % 2 else None,
            "Type": "New Customer" if deal.key % 2 else "Existing Customer - Upgrade",
            "LeadSource": ("Web", "Partner Referral", "Phone Inquiry")[deal.key % 3],
            "IsDeleted": deal.deleted,
            "Description": "Long free text that is not a feature",
            "Region__c": deal.region,
            "Seats__c": float(deal.seats),
            "Notes__c": "free text",
            "Partner__c": None,
        }
        if self.multi_currency:
            row["CurrencyIsoCode"] = deal.currency
        return row

    def history_rows(self, deal: Deal) -> Iterable[dict[str, Any]]:
        prev = None
        oid = opportunity_id(deal.key)
        for index, step in enumerate(deal.steps):
            hid = history_id(deal.key, index)
            probability = STAGE_PROBABILITY[step.stage]
            yield {
                "attributes": _attrs("OpportunityHistory", hid),
                "Id": hid,
                "OpportunityId": oid,
                "CreatedById": user_id(deal.owner),
                "CreatedDate": sf_datetime(step.at),
                "StageName": STAGES[step.stage],
                "Amount": float(step.amount),
                "ExpectedRevenue": float(step.amount * probability / 100),
                "CloseDate": step.close_date.isoformat(),
                "Probability": float(probability),
                "ForecastCategory": CATEGORY_API[step.category],
                "PrevAmount": float(prev.amount) if prev else None,
                "PrevCloseDate": prev.close_date.isoformat() if prev else None,
                "SystemModstamp": sf_datetime(step.at),
                "IsDeleted": False,
            }
            prev = step

    def stage_rows(self) -> Iterable[dict[str, Any]]:
        for index, name in enumerate(STAGES):
            sid = f"01JXX{index:010d}AAA"
            yield {
                "attributes": _attrs("OpportunityStage", sid), "Id": sid, "MasterLabel": name, "ApiName": name,
                "IsActive": True, "SortOrder": index + 1, "DefaultProbability": float(STAGE_PROBABILITY[index]),
                "ForecastCategoryName": CATEGORY_LABEL[STAGE_CATEGORY[index]], "IsClosed": index >= 5,
                "IsWon": index == 5, "Description": None,
            }
        sid = "01JXX0000000099AAA"
        yield {"attributes": _attrs("OpportunityStage", sid), "Id": sid, "MasterLabel": "Perception Analysis",
               "ApiName": "Perception Analysis", "IsActive": False, "SortOrder": 3, "DefaultProbability": 70.0,
               "ForecastCategoryName": "Pipeline", "IsClosed": False, "IsWon": False, "Description": None}

    def user_rows(self) -> Iterable[dict[str, Any]]:
        for owner in OWNERS:
            uid = user_id(owner.key)
            role = f"00EXX{owner.key:010d}AAA"
            yield {
                "attributes": _attrs("User", uid), "Id": uid, "Name": owner.name, "Email": owner.email,
                "IsActive": True, "UserRoleId": role,
                "UserRole": {"attributes": _attrs("UserRole", role), "Id": role, "Name": owner.team},
                "ManagerId": user_id(owner.manager) if owner.manager is not None else None,
                "UserType": "Standard", "Department": owner.team,
            }
        uid = user_id(99)
        yield {"attributes": _attrs("User", uid), "Id": uid, "Name": "Partner Portal", "Email": "p@example.com",
               "IsActive": True, "UserRoleId": None, "UserRole": None, "ManagerId": None,
               "UserType": "PowerPartner", "Department": None}


def _attrs(obj: str, record_id: str) -> dict[str, str]:
    return {"type": obj, "url": f"/services/data/{API_VERSION}/sobjects/{obj}/{record_id}"}


def _batch_size(header: str | None) -> int | None:
    if not header:
        return None
    match = re.search(r"batchSize=(\d+)", header)
    return int(match.group(1)) if match else None


def _no_such_column(name: str, obj: str) -> str:
    return (f"\nSELECT {name} FROM {obj}\n       ^\nERROR at Row:1:Column:8\nNo such column '{name}' on entity "
            f"'{obj}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom "
            "field name. Please reference your WSDL or the describe call for the appropriate names.")
