"""Foundation benchmarks (issue 2): sync, as-of reconstruction, CLI start and first paint.

Run: `python bench/bench_foundation.py [--large] [--million]`. Prints figures; asserts nothing.
--large adds the 100,000-opportunity sync and as-of query; --million the 1,000,000 sync.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import ROOT, report, run_child, time_to_text  # noqa: E402

AS_OF = "2026-11-23"

SYNC = textwrap.dedent(
    """
    import asyncio, json, time
    from datetime import date
    from cockpit.config import Settings
    from cockpit.service import CockpitService
    s = CockpitService(Settings(), {data!r}, today=date.fromisoformat({as_of!r}))
    c = s.make_connector("demo", size={size}, batch_size=5000)
    t = time.perf_counter()
    summary = asyncio.run(s.sync(c))
    print(json.dumps({{"seconds": time.perf_counter() - t, "opps": summary.opportunities, "changes": summary.changes}}))
    """
)

BARE = textwrap.dedent(
    """
    from textual.app import App
    from textual.widgets import Label
    class Bare(App):
        def compose(self):
            yield Label("BARE-READY")
    Bare().run()
    """
)


def bench_sync(size: int, workdir: Path) -> Path:
    data = workdir / f"demo-{size}"
    seconds, peak, out = run_child(SYNC.format(data=str(data), as_of=AS_OF, size=size))
    figures = json.loads(out)
    report(f"sync demo {size:,} opps / {figures['changes']:,} history rows", figures["seconds"], "s")
    report(f"  peak RSS of the sync process ({size:,})", peak, "MiB")
    report(f"  rows per second ({size:,})", (figures["opps"] + figures["changes"]) / figures["seconds"], "r/s")
    return data


def bench_as_of(data: Path, label: str) -> None:
    from cockpit.store import Store

    with Store.open(data / "cockpit.db") as store:
        rng = random.Random(1)
        times, counts = [], []
        for _ in range(5):
            day = date.fromisoformat(AS_OF) - timedelta(days=rng.randint(30, 900))
            start = time.perf_counter()
            counts.append(len(store.snapshot(day)))
            times.append(time.perf_counter() - start)
        report(f"open pipeline as of a past date ({label}, median of 5, ~{int(statistics.median(counts)):,} deals)",
               statistics.median(times), "s")


def bench_start(data: Path) -> None:
    python = sys.executable
    env = {"COCKPIT_DATA_DIR": str(data), "COCKPIT_CONFIG": str(data / "none.toml")}
    times = []
    for _ in range(7):
        start = time.perf_counter()
        subprocess.run([python, "-m", "cockpit", "--version"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    report("cockpit --version (median of 7)", statistics.median(times), "s", "target <= 0.150")
    cockpit = [python, "-m", "cockpit", "--as-of", AS_OF]
    sync = [*cockpit, "--quiet", "sync"]  # the CLI's sync also trains, scores and paints the start view
    bares, synced, warm, cold = [], [], [], []
    for _ in range(5):  # alternating, so all four see the same machine
        bares.append(time_to_text([python, "-c", BARE], b"BARE-READY")[0])
        subprocess.run(sync, env={**os.environ, **env}, check=True)
        synced.append(time_to_text(cockpit, b"Best case", env=env)[0])
        warm.append(time_to_text(cockpit, b"Best case", env=env)[0])  # the store unchanged since
        for painted in data.glob(".painted-*.json"):  # the store changed behind the cockpit's back
            painted.unlink()
        cold.append(time_to_text(cockpit, b"Best case", env=env)[0])
    bare, first = statistics.median(bares), statistics.median(synced)
    report("bare Textual app: first paint of one label (median of 5)", bare, "s")
    report("cockpit: first paint with the demo's deals, after `cockpit sync` (median of 5)", first, "s",
           "target <= 1.0")
    report("  ratio cockpit / bare", first / bare, "x")
    report("  a later start, store unchanged", statistics.median(warm), "s")
    report("  a start after the store changed without `cockpit sync` (the view is computed)",
           statistics.median(cold), "s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", action="store_true", help="also 100,000 opportunities")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 opportunities")
    args = parser.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        default = bench_sync(5000, work)
        bench_as_of(default, "5,000")
        bench_start(default)
        if args.large:
            large = bench_sync(100_000, work)
            bench_as_of(large, "100,000")
        if args.million:
            bench_sync(1_000_000, work)


if __name__ == "__main__":
    main()
