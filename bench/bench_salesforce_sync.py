"""Benchmark: a Salesforce sync of 100,000 opportunities and ~1,000,000 history rows over loopback.

The fake org (tests/fakes/salesforce.py) runs in a child process, its history rows rendered
ahead (a real org has them stored), so the figures are the connector's: wall time, peak RSS of this process, requests and bytes. Then an incremental
sync with nothing changed. If `cockpit.store` is there (`Store.open`, `begin_sync`, `apply_batch`,
`finish_sync`), batches are written to a temporary store (`--no-store` only consumes them).

    python bench/bench_salesforce_sync.py [--deals 100000] [--rows 11.3]

Targets (issue 6): full sync ≤ 60 s with ≤ 1 GB peak RSS; nothing-changed incremental ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr  # noqa: E402

from connectors.salesforce import HISTORY_FIELDS, SalesforceClientCredentials, SalesforceConnector  # noqa: E402


def serve(deals: int, rows: float, ready: Any, stop: Any) -> None:
    """Child process: build the dataset, run the fake, report its URL and history size, wait for `stop`."""
    from tests.fakes import Dataset
    from tests.fakes.salesforce import SalesforceFake

    started = time.perf_counter()
    dataset = Dataset(deals, seed=42, rows_per_deal=rows, stage_move=0.15)
    fake = SalesforceFake(dataset)
    fake.prerender(HISTORY_FIELDS.split(", "))
    fake.start()
    ready.put((fake.url, fake.client_id, fake.client_secret, dataset.history_rows, time.perf_counter() - started))
    stop.wait()
    fake.stop()


def open_store(directory: str) -> Any | None:
    """The lead's store, when it exists yet; None to only consume batches."""
    try:
        from cockpit.store import Store  # type: ignore[attr-defined]
    except ImportError:
        return None
    return Store.open(Path(directory) / "bench.sqlite")


async def run(connector: SalesforceConnector, cursor: str | None, store: Any | None) -> dict[str, Any]:
    started = time.perf_counter()
    cpu = time.process_time()
    run_id = store.begin_sync(connector.name, connector.login_url) if store is not None else None
    deals = changes = batches = 0
    last = cursor
    async for batch in connector.batches(cursor):
        batches += 1
        deals += len(batch.opportunities)
        changes += len(batch.changes)
        last = batch.cursor
        if store is not None:
            store.apply_batch(run_id, batch)
    if store is not None:
        store.finish_sync(run_id, "ok")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    stats = connector.last_stats
    assert stats is not None
    return {"seconds": elapsed, "cpu": cpu, "deals": deals, "changes": changes, "batches": batches, "cursor": last,
            "requests": stats.requests, "retries": stats.retries, "received": stats.bytes_received,
            "sent": stats.bytes_sent}


def report(title: str, figures: dict[str, Any]) -> None:
    print(f"{title}: {figures['seconds']:.2f} s ({figures['cpu']:.2f} s CPU here), {figures['deals']:,} opportunities, {figures['changes']:,} history "
          f"rows, {figures['batches']:,} batches, {figures['requests']:,} requests ({figures['retries']} retries), "
          f"{figures['received'] / 1e6:,.1f} MB received, {figures['sent'] / 1e6:,.2f} MB sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=100_000)
    parser.add_argument("--rows", type=float, default=11.3, help="history rows per deal, roughly")
    parser.add_argument("--no-store", action="store_true", help="consume batches without writing them")
    args = parser.parse_args()
    context = multiprocessing.get_context("fork")
    ready, stop = context.Queue(), context.Event()
    child = context.Process(target=serve, args=(args.deals, args.rows, ready, stop), daemon=True)
    child.start()
    url, client_id, secret, history_rows, setup = ready.get(timeout=600)
    print(f"fake org: {args.deals:,} opportunities, {history_rows:,} history rows (built in {setup:.1f} s)")
    connector = SalesforceConnector(
        auth=SalesforceClientCredentials(domain="bench", client_id=client_id, client_secret=SecretStr(secret)),
        login_url=url, page_size=2000, max_concurrency=4, lookback=timedelta(0),
    )
    try:
        with tempfile.TemporaryDirectory() as directory:
            store = None if args.no_store else open_store(directory)
            print("writing into cockpit.store" if store is not None else "cockpit.store not available: consuming only")
            full = asyncio.run(run(connector, None, store))
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            report("full sync", full)
            print(f"peak RSS of the syncing process: {peak_mb:,.0f} MB")
            again = asyncio.run(run(connector, full["cursor"], store))
            report("incremental, nothing changed", again)
            ok = full["seconds"] <= 60 and peak_mb <= 1024 and again["seconds"] <= 1.0
            print("targets (full ≤ 60 s, RSS ≤ 1 GB, incremental ≤ 1 s):", "met" if ok else "NOT met")
    finally:
        stop.set()
        child.join(timeout=10)


if __name__ == "__main__":
    main()
