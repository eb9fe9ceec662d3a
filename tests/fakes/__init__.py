"""Fake CRM servers on loopback: the shared server machinery and a deterministic deal dataset.

Each fake (`salesforce.py`, `hubspot.py`, `pipedrive.py`) is a real HTTP server
(`ThreadingHTTPServer` on 127.0.0.1, port 0) running in a daemon thread of the test process. It
renders one in-memory dataset of `Deal`s in its CRM's JSON shapes (crm-apis.md §1.9, §2.9, §3.8)
and records every request so tests can count them.

Faults are injected with `Fault`s: an HTTP status with the CRM's error body, a slow answer (for
timeouts), a truncated JSON body, or an action run at the n-th matching request (expire the token,
change data mid-sync).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

OPEN_STAGES = 5
"""Abstract open stages 0..4; WON and LOST follow."""
WON = 5
LOST = 6
STAGE_PROBABILITY = (10, 20, 40, 60, 80, 100, 0)
"""Default probability (percent) of each abstract stage."""
STAGE_CATEGORY = ("pipeline", "pipeline", "best_case", "best_case", "commit", "closed", "omitted")
"""Default forecast category (domain value) of each abstract stage."""
REGIONS = ("EMEA", "NA", "APAC")
BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request (the timeout and truncation switches do that on purpose)
    is expected here, not a server error worth a traceback in the test output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass(slots=True)
class Step:
    """One recorded change: the deal's tracked fields right after it."""

    at: datetime
    stage: int
    amount: Decimal
    close_date: date
    category: str


@dataclass(slots=True)
class Owner:
    key: int
    first: str
    last: str
    manager: int | None
    team: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def email(self) -> str:
        return f"{self.first.lower()}@example.com"


@dataclass(slots=True)
class Deal:
    """A deal as every fake holds it; each fake renders it in its own JSON."""

    key: int
    name: str
    account: str
    owner: int
    created: datetime
    modified: datetime
    steps: list[Step]
    currency: str
    region: str
    seats: int
    next_step: str | None = None
    deleted: bool = False

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def is_closed(self) -> bool:
        return self.last.stage >= WON

    @property
    def is_won(self) -> bool:
        return self.last.stage == WON

    @property
    def last_open_stage(self) -> int:
        """The open stage the deal was in last (Pipedrive keeps it when a deal is won or lost)."""
        return next((s.stage for s in reversed(self.steps) if s.stage < WON), 0)


OWNERS = (
    Owner(0, "Vera", "Boss", None, "Leadership"),
    Owner(1, "Mark", "East", 0, "Sales East"),
    Owner(2, "Nina", "West", 0, "Sales West"),
    Owner(3, "Dana", "Seller", 1, "Sales East"),
    Owner(4, "Eli", "Closer", 2, "Sales West"),
)


class Dataset:
    """`n` deals generated from `seed`, with about `rows_per_deal` history rows each.

    Every step after the first changes the stage, the amount or the close date, so each CRM records
    it. Modification times are distinct except that every seventh deal shares its predecessor's
    (ties the connectors must order by id). `clock` hands out times after everything generated.
    """

    def __init__(self, n: int, seed: int = 7, rows_per_deal: float = 4.0, currencies: tuple[str, ...] = ("USD", "EUR"),
                 stage_move: float = 0.55):
        self.owners = OWNERS
        self.deals: list[Deal] = []
        rng = random.Random(seed)
        spacing = timedelta(minutes=37)
        for key in range(n):
            created = BASE_TIME + spacing * key + timedelta(seconds=key % 60)
            self.deals.append(_make_deal(key, created, rng, rows_per_deal, currencies, stage_move))
        for i in range(1, n):
            deal, prev = self.deals[i], self.deals[i - 1]
            if i % 7 == 0 and prev.modified > deal.last.at:
                deal.modified = prev.modified
        self._clock = max((d.modified for d in self.deals), default=BASE_TIME) + timedelta(days=1)
        self.lock = threading.RLock()

    def tick(self) -> datetime:
        """A new modification time, later than all before (one second apart)."""
        self._clock += timedelta(seconds=1)
        return self._clock

    def advance(self, deal: Deal) -> None:
        """A tracked change: an open deal moves one stage on (or is won); a closed one changes amount."""
        with self.lock:
            at = self.tick()
            last = deal.last
            if last.stage < WON:
                stage = last.stage + 1 if last.stage + 1 < OPEN_STAGES else WON
                step = Step(at, stage, last.amount, last.close_date, STAGE_CATEGORY[stage])
            else:
                step = Step(at, last.stage, last.amount + 1000, last.close_date, last.category)
            deal.steps.append(step)
            deal.modified = at

    def touch(self, deal: Deal) -> None:
        """An untracked change (next step text): the deal is modified but its history does not grow."""
        with self.lock:
            deal.modified = self.tick()
            deal.next_step = f"Follow up {deal.modified:%Y-%m-%d %H:%M:%S}"

    def delete(self, deal: Deal) -> None:
        """The deal goes to the recycle bin."""
        with self.lock:
            deal.modified = self.tick()
            deal.deleted = True

    @property
    def live(self) -> list[Deal]:
        return [d for d in self.deals if not d.deleted]

    @property
    def history_rows(self) -> int:
        return sum(len(d.steps) for d in self.deals)


def _make_deal(key: int, created: datetime, rng: random.Random, rows: float, currencies: tuple[str, ...],
               move: float) -> Deal:
    """One deal; `move` is the chance a step changes the stage (the rest change amount or close date)."""
    amount = Decimal(rng.randrange(5, 200) * 500)
    close = (created + timedelta(days=rng.randrange(30, 180))).date()
    steps = [Step(created, 0, amount, close, STAGE_CATEGORY[0])]
    target = rng.randint(1, max(1, round(2 * rows) - 1))
    at = created
    stage = 0
    while len(steps) < target and stage < WON:
        at += timedelta(days=rng.randrange(1, 15), seconds=rng.randrange(1, 3600))
        roll = rng.random()
        if roll < move:
            stage = stage + 1 if stage + 1 < OPEN_STAGES else (WON if rng.random() < 0.5 else LOST)
        elif roll < move + 0.1 and stage > 0:
            stage -= 1
        elif move + 0.1 <= roll < move + 0.1 + move * 0.13:
            stage = LOST
        elif roll < move + 0.24 + move * 0.13:
            change = Decimal(rng.randrange(1, 20) * 250)
            amount = amount - change if amount > change * 4 and rng.random() < 0.3 else amount + change
        else:
            close += timedelta(days=rng.randrange(7, 60))
        category = STAGE_CATEGORY[stage]
        if stage == 3 and rng.random() < 0.3:
            category = "commit"
        steps.append(Step(at, stage, amount, close, category))
    modified = steps[-1].at + timedelta(seconds=rng.randrange(0, 2) * rng.randrange(1, 600))
    return Deal(
        key=key,
        name=f"Deal {key:06d}",
        account=f"Account {key % 97:02d}",
        owner=1 + key % 4,
        created=created,
        modified=modified,
        steps=steps,
        currency=currencies[key % len(currencies)],
        region=REGIONS[key % 3],
        seats=5 + key % 50,
        next_step=None if key % 3 else "Send quote",
    )


# --------------------------------------------------------------------------------------------------
# Server machinery
# --------------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()


@dataclass
class Fault:
    """A misbehaviour at matching requests: the (`after`+1)-th to (`after`+`times`)-th.

    kind: "status" (answer `status` with `body`, or the CRM's usual error body for it), "delay"
    (sleep `delay` seconds, then answer normally), "truncate" (cut the JSON body in half, keeping a
    consistent Content-Length), "action" (run `action`, then answer normally).
    `match` is a substring of the path (and `method`, if set, must match). `times=None`: forever.
    """

    kind: str
    match: str = ""
    method: str | None = None
    after: int = 0
    times: int | None = 1
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: Callable[[], None] | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, request: Request) -> bool:
        if self.match not in request.path or (self.method and self.method != request.method):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


class FakeServer:
    """A loopback HTTP server; subclasses implement `route(request) -> Response`."""

    service = "fake"

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body leave in one write (no Nagle/delayed-ACK stalls)
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                fake._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name=f"{self.service}-fake",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, fault: Fault) -> Fault:
        """Add a fault (checked in the order added; the first that fires wins)."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget recorded requests and faults."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.bytes_sent = 0

    def count(self, match: str = "", method: str | None = None) -> int:
        """Requests whose path contains `match` (and with `method`, if given)."""
        return sum(1 for r in self.requests if match in r.path and (method is None or r.method == method))

    # ---- to implement ----------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        raise NotImplementedError

    def error_response(self, status: int) -> Response:
        """The CRM's usual body for an injected error status."""
        return Response(status, {"error": f"HTTP {status}"})

    def common_headers(self) -> dict[str, str]:
        """Headers on every answer (rate-limit telemetry)."""
        return {}

    # ---- internals -------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        with self._lock:
            self.requests.append(request)
            fault = next((f for f in self.faults if f.matches(request)), None)
        truncate = False
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "action" and fault.action is not None:
            fault.action()
        if fault is not None and fault.kind == "status":
            response = self.error_response(fault.status) if fault.body is None else Response(fault.status, fault.body)
            response.headers.update(fault.headers)
        else:
            try:
                response = self.route(request)
            except Exception as exc:  # a bug in the fake must show as a 500, not a hung client
                response = Response(500, {"error": f"fake server bug: {type(exc).__name__}: {exc}"})
            truncate = fault is not None and fault.kind == "truncate"
        payload = response.encode()
        if truncate:
            payload = payload[: max(1, len(payload) // 2)]
        headers = {**self.common_headers(), **response.headers}
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", headers.pop("Content-Type", "application/json;charset=UTF-8"))
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        with self._lock:
            self.bytes_sent += len(payload)


def iso_z(value: datetime, millis: bool = True) -> str:
    """UTC ISO-8601 with a Z: 2024-06-10T14:03:12.000Z (HubSpot) or without millis."""
    value = value.astimezone(timezone.utc)
    if millis:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# Test helpers: what a store would hold after applying batches
# --------------------------------------------------------------------------------------------------


@dataclass
class Mirror:
    """What the store holds after applying batches in order (its replace semantics, without SQL)."""

    pipelines: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, Any] = field(default_factory=dict)
    deals: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[Any]] = field(default_factory=dict)
    cursor: str | None = None
    batches: int = 0

    def apply(self, batch: Any) -> None:
        for pipeline in batch.pipelines:
            self.pipelines[pipeline.id] = pipeline
        for owner in batch.owners:
            self.owners[owner.id] = owner
        for deal in batch.opportunities:
            self.deals[deal.id] = deal
            self.history[deal.id] = []
        for change in batch.changes:
            self.history[change.opportunity_id].append(change)
        for ident in batch.deleted_ids:
            self.deals.pop(ident, None)
            self.history.pop(ident, None)
        self.cursor = batch.cursor
        self.batches += 1

    def stage_ids(self) -> set[str]:
        return {s.id for p in self.pipelines.values() for s in p.stages}


async def sync(connector: Any, cursor: str | None = None, mirror: Mirror | None = None,
               progress: Callable[[Any], None] | None = None) -> tuple[Mirror, list[Any]]:
    """Run one sync into `mirror` (a new one by default); returns the mirror and the batches."""
    mirror = mirror or Mirror()
    batches = []
    async for batch in connector.batches(cursor, progress):
        batches.append(batch)
        mirror.apply(batch)
    return mirror, batches


async def sync_until_error(connector: Any, cursor: str | None, mirror: Mirror) -> Exception | None:
    """Run a sync into `mirror` and return the error that stopped it (None if it finished)."""
    try:
        async for batch in connector.batches(cursor):
            mirror.apply(batch)
    except Exception as exc:  # the caller asserts on the type
        return exc
    return None


def history_tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Comparable form of StageChange rows."""
    return [(r.changed_at, r.stage_id, r.amount, r.close_date, r.forecast_category) for r in rows]


def same_state(a: Mirror, b: Mirror) -> bool:
    """Two mirrors hold the same deals, histories, pipelines and owners."""
    return (a.deals == b.deals and {k: history_tuples(v) for k, v in a.history.items()}
            == {k: history_tuples(v) for k, v in b.history.items()}
            and a.pipelines == b.pipelines and a.owners == b.owners)
