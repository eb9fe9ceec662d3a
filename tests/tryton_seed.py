"""Seed a Tryton `sale_opportunity` database over JSON-RPC: a company, sellers, customers and
opportunities walked through their states (lead, opportunity, converted, won, lost, cancelled, and
backward moves), one RPC call per step so every step leaves its own history revision.

Usage: TRYTON_PASSWORD=... python tests/tryton_seed.py URL DATABASE USER

`Rpc` is also the tests' independent client for reading what the server holds (it shares no code
with `connectors.tryton`). Everything here talks plain JSON-RPC with httpx, as crm-apis.md §4.3
describes; no proteus, no trytond import.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import httpx

MODEL = "sale.opportunity"
SEED_MARK = "cockpit-seed"
"""`reference` of every seeded opportunity, so a second run can tell the database is seeded."""


class RpcError(Exception):
    """A JSON-RPC error object from Tryton."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error


def encode(value: Any) -> Any:
    """Python values as Tryton's tagged JSON (Decimal, date, datetime)."""
    if isinstance(value, Decimal):
        return {"__class__": "Decimal", "decimal": str(value)}
    if isinstance(value, datetime):
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
    if isinstance(value, date):
        return {"__class__": "date", "year": value.year, "month": value.month, "day": value.day}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def decode(value: Any) -> Any:
    """Tagged JSON back to Python values (datetimes stay naive, as Tryton sends them: UTC)."""
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
            )
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class Rpc:
    """A minimal synchronous JSON-RPC client: login, then `model(...)` calls with the user's context."""

    def __init__(self, url: str, database: str, user: str, password: str) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=60)
        self.path = f"/{database}/rpc/"
        self._auth: dict[str, str] = {}
        self.calls = 0
        uid, key = self.call("common.db.login", user, {"password": password}, "en")[:2]
        token = base64.b64encode(f"{user}:{uid}:{key}".encode()).decode()
        self._auth = {"Authorization": f"Session {token}"}
        self.context: dict[str, Any] = {}
        self.reload_context()

    def close(self) -> None:
        self.http.close()

    def reload_context(self) -> None:
        """Fetch the user's context (company, language) that every model call needs."""
        self.context = self.call("model.res.user.get_preferences", True, {})

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; raises RpcError for an error object, httpx errors for HTTP failures."""
        self.calls += 1
        response = self.http.post(
            self.path, json={"id": self.calls, "method": method, "params": encode(params)}, headers=self._auth
        )
        response.raise_for_status()
        body = response.json()
        if "error" in body:
            raise RpcError(method, body["error"])
        return body["result"]

    def model(self, model: str, method: str, *params: Any, context: dict[str, Any] | None = None) -> Any:
        """`model.<model>.<method>(*params, context)`, results decoded."""
        ctx = {**self.context, **(context or {})}
        return decode(self.call(f"model.{model}.{method}", *params, ctx))

    def create(self, model: str, values: dict[str, Any]) -> int:
        (record_id,) = self.model(model, "create", [values])
        return record_id

    def wizard(self, name: str, steps: list[tuple[str, dict[str, Any]]]) -> None:
        """Run a wizard: each step executes `state` with `data` (the values of the views shown)."""
        session, _, _ = self.call(f"wizard.{name}.create", self.context)
        try:
            for state, data in steps:
                self.call(f"wizard.{name}.execute", session, encode(data), state, self.context)
        finally:
            self.call(f"wizard.{name}.delete", session, self.context)

    # -- what the tests read back -----------------------------------------------------------------

    def history(self, record_id: int, fields: list[str]) -> list[tuple[datetime, dict[str, Any]]]:
        """Every revision of one opportunity, oldest first, read with `_datetime` (crm-apis.md §4.2)."""
        revisions = self.call(f"model.{MODEL}.history_revisions", [record_id], self.context)
        out = []
        for stamp, rid, _user in sorted(revisions, key=lambda r: decode(r[0])):
            if rid != record_id:
                continue
            (row,) = self.call(
                f"model.{MODEL}.read", [record_id], fields, {**self.context, "_datetime": stamp}
            )
            out.append((decode(stamp), decode(row)))
        return out


@contextmanager
def connect(url: str, database: str, user: str, password: str) -> Iterator[Rpc]:
    rpc = Rpc(url, database, user, password)
    try:
        yield rpc
    finally:
        rpc.close()


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------


def ensure_company(rpc: Rpc) -> tuple[int, int]:
    """The company (made with the company.company.config wizard, as proteus' create_company does) and
    the EUR currency id. Idempotent."""
    currencies = {
        c["code"]: c["id"] for c in rpc.model("currency.currency", "search_read", [], 0, None, None, ["code"])
    }
    for code, name, symbol in (("USD", "U.S. Dollar", "$"), ("EUR", "Euro", "€")):
        if code not in currencies:
            currencies[code] = rpc.create(
                "currency.currency",
                {
                    "name": name,
                    "code": code,
                    "symbol": symbol,
                    "rates": [["create", [{"date": date(2000, 1, 1), "rate": Decimal("1")}]]],
                },
            )
    if not rpc.context.get("company"):
        party = rpc.create("party.party", {"name": "Cockpit Trading Ltd"})
        rpc.wizard(
            "company.company.config",
            [
                ("company", {}),
                ("add", {"company": {"party": party, "currency": currencies["USD"]}}),
            ],
        )
        rpc.reload_context()
    return rpc.context["company"], currencies["EUR"]


def seed(rpc: Rpc) -> dict[str, int]:
    """Create the seeded opportunities (once) and return how many ended in each state."""
    if rpc.model(MODEL, "search_count", [["reference", "=", SEED_MARK]]):
        return _count_states(rpc)
    company, eur = ensure_company(rpc)

    def party(name: str) -> int:
        return rpc.create("party.party", {"name": name, "addresses": [["create", [{"city": "Springfield"}]]]})

    def employee(name: str, supervisor: int | None = None) -> int:
        values: dict[str, Any] = {"party": party(name), "company": company}
        if supervisor:
            values["supervisor"] = supervisor
        return rpc.create("company.employee", values)

    manager = employee("Maria Manager")
    alice = employee("Alice Seller", manager)
    bob = employee("Bob Closer", manager)
    customers = [party(n) for n in ("ACME Corp", "Globex", "Initech", "Umbrella", "Stark Industries")]
    unit = rpc.model("product.uom", "search", [["name", "=", "Unit"]], 0, 1, None)[0]
    category = rpc.create("product.category", {"name": "Services", "accounting": True})
    template = rpc.create(
        "product.template",
        {
            "name": "Consulting day",
            "type": "service",
            "salable": True,
            "default_uom": unit,
            "sale_uom": unit,
            "list_price": Decimal("1200"),
            "account_category": category,
            "products": [["create", [{}]]],
        },
    )
    (product,) = rpc.model("product.product", "search", [["template", "=", template]], 0, 1, None)

    def create(description: str, **values: Any) -> int:
        return rpc.create(MODEL, {"description": description, "reference": SEED_MARK, **values})

    def write(oid: int, **values: Any) -> None:
        rpc.model(MODEL, "write", [oid], values)

    def click(oid: int, *buttons: str) -> None:
        for button in buttons:
            rpc.model(MODEL, button, [oid])

    def win(oid: int) -> None:
        """Convert, then quote and confirm the sale: Tryton moves the opportunity to `won` itself."""
        click(oid, "convert")
        (sale,) = rpc.model(MODEL, "read", [oid], ["sales"])[0]["sales"]
        rpc.model("sale.sale", "write", [sale], {"invoice_method": "manual", "shipment_method": "manual"})
        rpc.model("sale.sale", "quote", [sale])
        rpc.model("sale.sale", "confirm", [sale])

    # 1. A bare lead: no party, no seller, no amount (owner falls back to the creating user).
    create("Inbound web lead")
    # 2. Lead qualified, amount raised, close date pushed twice; still open.
    o = create(
        "Data platform rollout",
        party=customers[0],
        employee=alice,
        amount=Decimal("40000"),
        end_date=date(2027, 3, 31),
        conversion_probability=0.3,
    )
    click(o, "opportunity")
    write(o, amount=Decimal("52500.50"))
    write(o, end_date=date(2027, 5, 15))
    write(o, end_date=date(2027, 6, 30), conversion_probability=0.8)
    # 3. Back and forth: opportunity -> lead -> opportunity.
    o = create(
        "Support renewal",
        party=customers[1],
        employee=bob,
        amount=Decimal("12000"),
        end_date=date(2027, 2, 28),
    )
    click(o, "opportunity", "lead", "opportunity")
    # 4. Lost after a price discussion.
    o = create(
        "Warehouse sensors",
        party=customers[2],
        employee=alice,
        amount=Decimal("8000"),
        end_date=date(2027, 1, 31),
    )
    click(o, "opportunity")
    write(o, lost_reason="Price")
    click(o, "lost")
    # 5. Cancelled lead.
    o = create("Duplicate enquiry", party=customers[3], amount=Decimal("500"))
    click(o, "cancel")
    # 6. Converted to a quotation and left there.
    o = create(
        "Training package",
        party=customers[4],
        employee=bob,
        amount=Decimal("9600"),
        end_date=date(2027, 4, 30),
        lines=[["create", [{"product": product, "quantity": 8, "unit": unit}]]],
    )
    click(o, "opportunity")
    click(o, "convert")
    # 7. Won through a confirmed sale (amount recomputed from the sale by Tryton).
    o = create(
        "Consulting retainer",
        party=customers[0],
        employee=alice,
        amount=Decimal("10000"),
        end_date=date(2027, 3, 1),
        lines=[["create", [{"product": product, "quantity": 10, "unit": unit}]]],
    )
    click(o, "opportunity")
    win(o)
    # 8. An open deal in another currency.
    o = create(
        "EU expansion",
        party=customers[2],
        employee=bob,
        amount=Decimal("30000"),
        currency=eur,
        end_date=date(2027, 9, 30),
    )
    click(o, "opportunity")
    # 9-20. A dozen more, so that paging has several pages.
    for i in range(12):
        o = create(
            f"Deal {i + 9:02d}",
            party=customers[i % 5],
            employee=(alice, bob, manager)[i % 3],
            amount=Decimal(1000 * (i + 1)) + Decimal("0.25"),
            end_date=date(2027, 1 + i % 12, 10),
        )
        if i % 4 != 0:
            click(o, "opportunity")
        if i % 4 == 2:
            write(o, amount=Decimal(1500 * (i + 1)))
        if i % 6 == 5:
            click(o, "lost")
    return _count_states(rpc)


def _count_states(rpc: Rpc) -> dict[str, int]:
    rows = rpc.model(MODEL, "search_read", [], 0, None, None, ["state"])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not os.environ.get("TRYTON_PASSWORD"):
        print("usage: TRYTON_PASSWORD=... python tests/tryton_seed.py URL DATABASE USER", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with connect(argv[1], argv[2], argv[3], os.environ["TRYTON_PASSWORD"]) as rpc:
        counts = seed(rpc)
        calls = rpc.calls
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    print(
        f"seeded {sum(counts.values())} opportunities ({summary}) with {calls} calls in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
