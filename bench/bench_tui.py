"""TUI benchmarks over a pseudo-terminal (as over SSH): bytes per key, key-to-paint latency, first paint.

Run: `python bench/bench_tui.py [--size N] [--quick]`. Prints figures; asserts nothing. The machine is
shared and noisy, so every cockpit figure has a baseline measured in the same run, and the ratio is
what to read. Both apps run in a 120x40 pty with TERM=xterm-256color (NO_COLOR, COLORTERM, FORCE_COLOR and
TEXTUAL_* unset: 256 colours, as over plain SSH); the bench plays a terminal that answers no
queries (so no synchronized output and no kitty keyboard protocol).

What it measures:

1. Bytes written to the terminal per key in the Deals screen (key `3`: PipelineScreen with a
   DealTable), against a bare Textual app with a stock `DataTable` (row cursor, zebra stripes) of the
   same rows and the same seven columns, laid out alike (two-line header, table, footer):
   `down` from the first row, split into moves within the view (the first VIEW_ROWS - 1 presses)
   and moves that scroll the table by one line, and `pagedown`; means over the presses. For scale,
   the size of a full-screen repaint of each (forced by a resize, measured last) and the bytes of
   the switch to the screen (key 3 until quiet, loading indicator frames included).
   Target (issue): no full-screen repaint per cursor move, i.e. bytes per `down` within the view
   a small share of the full repaint (the two rows that changed, a few hundred bytes). A move that
   scrolls repaints the table body in any Textual widget (Textual does not use terminal scrolling).
2. Key-to-paint latency: from writing the key to the pty to the last byte before the output is
   quiet for 30 ms (waiting up to 1 s for a first byte), median over the same presses;
   cockpit / DataTable ratio.
3. First paint of the Deals screen (from key `3` to the header showing the deals, the table painted
   in the same frame) on a store of `--size` opportunities (default 100,000, synced by the demo
   connector before timing), against a bare app that switches to a DataTable loaded with as many
   synthetic rows as the cockpit shows (the quarter's open deals); and the first paint of the home
   (Forecast) screen on the default 5,000-opportunity demo store against a bare app with one Label.
   Target: first paint fast; read the ratio to bare Textual (the foundation target is <= 1.0 s).

`--quick` uses 20,000 opportunities and fewer presses and runs, for a check in about a minute.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import statistics
import struct
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import ROOT, report, run_child  # noqa: E402

AS_OF = "2026-11-23"
SIZE = (120, 40)  # columns, lines
DOWN, PAGEDOWN = b"\x1b[B", b"\x1b[6~"
QUIET = 0.030  # output is settled after this long without a byte
VIEW_ROWS = SIZE[1] - 4  # table rows in view: less the two-line header, the column header, the footer

FORECAST_MARKER = f"as of {AS_OF}".encode()  # the Forecast summary line, once the view is loaded
DEALS_MARKER = re.compile(rb"open pipeline \xc2\xb7 (\d+) deals")  # "#pipeline-header" once loaded
BARE_MARKER = b"BARE-READY"
TABLE_MARKER = re.compile(rb"BASELINE (\d+) rows")

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
    print(json.dumps({{"seconds": time.perf_counter() - t, "opps": summary.opportunities}}))
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

# The baseline of the Deals screen: a Label home; key 3 shows a screen laid out like the pipeline
# (a two-line header, the table, a footer) with a stock DataTable of `rows` synthetic deals in the
# pipeline's seven columns. The rows are made before the app starts, so the switch times the widget.
TABLE = textwrap.dedent(
    """
    import random, sys
    from textual.app import App
    from textual.screen import Screen
    from textual.widgets import DataTable, Footer, Label, Static

    N = int(sys.argv[1])
    rng = random.Random(7)
    OWNERS = ["James Miller", "Michael Brooks", "Chloe Turner", "Kevin Brooks", "杨建华", "谢超"]
    ACCOUNTS = ["Lakeside Retail Corp.", "Harbor Retail Group", "Cobalt Manufacturing Corp.",
                "Westgate Logistics Inc.", "北京远航制造股份有限公司", "天津天合商贸集团",
                "Falcon Energy Holdings"]
    STAGES = ["Qualify", "Proposal", "Negotiation", "Solution design", "Renewal due"]
    CATEGORIES = ["Pipeline", "Best case", "Commit"]
    ROWS = [
        (rng.choice(OWNERS), rng.choice(ACCOUNTS), rng.choice(STAGES),
         f"USD {rng.randrange(5, 900) * 500:,}", f"Dec {rng.randint(1, 31):02d}", rng.choice(CATEGORIES),
         str(rng.randint(0, 200)))
        for _ in range(N)
    ]

    class Table(Screen):
        def compose(self):
            yield Static("Loading…", id="head")
            yield DataTable(cursor_type="row", zebra_stripes=True, id="table")
            yield Footer()

        def on_mount(self):
            table = self.query_one(DataTable)
            table.add_columns("Owner", "Account", "Stage", "Amount", "Close", "Category", "Days")
            table.add_rows(ROWS)
            self.query_one("#head", Static).update(f"BASELINE {N} rows\\nCommit · Best case · Pipeline")
            table.focus()

    class Base(App):
        CSS = ("#head { height: auto; max-height: 3; padding: 0 1; background: $boost; } "
               "#table { height: 1fr; }")
        BINDINGS = [("3", "table", "Table"), ("q", "quit", "Quit")]

        def compose(self):
            yield Label("BARE-READY")

        def action_table(self):
            self.push_screen(Table())

    Base().run()
    """
)


class Pty:
    """A child process on a pseudo-terminal; the bench reads everything it writes, as a terminal would."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], size: tuple[int, int] = SIZE) -> None:
        winsize = struct.pack("HHHH", size[1], size[0], 0, 0)
        dropped = ("NO_COLOR", "COLUMNS", "LINES", "COLORTERM", "FORCE_COLOR",  # as over plain SSH
                   "PYTHONDONTWRITEBYTECODE")  # an installed cockpit runs from byte code
        child_env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("TEXTUAL_")}
        child_env.update(env, TERM="xterm-256color")
        self.start = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:  # child: size the terminal before Textual asks for it (COLUMNS/LINES would pin it)
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, winsize)
                os.chdir(ROOT)
                os.execve(argv[0], list(argv), child_env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize)
        os.set_blocking(fd, False)
        self.seen = b""  # everything read, for error messages and markers
        self.last_byte = self.start

    def _read(self, wait: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, wait))
        if not ready:
            return b""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO: the child closed the terminal
            raise EOFError(f"the child exited; screen tail: {self.seen[-600:]!r}") from exc
        if not chunk:
            raise EOFError(f"the child exited; screen tail: {self.seen[-600:]!r}")
        self.seen += chunk
        self.last_byte = time.perf_counter()
        return chunk

    def wait_for(self, marker: bytes | re.Pattern[bytes], since: float, *, offset: int | None = None,
                 timeout: float = 120.0) -> tuple[float, bytes]:
        """Read until `marker` appears in the output from `offset` (default: from now on); the seconds
        from `since` to the byte that completed it, and the output from `offset`."""
        offset = len(self.seen) if offset is None else offset
        deadline = time.perf_counter() + timeout
        while True:
            buf = self.seen[offset:]
            if marker.search(buf) if isinstance(marker, re.Pattern) else marker in buf:
                return self.last_byte - since, buf
            if time.perf_counter() > deadline:
                break
            self._read(0.05)
        raise TimeoutError(f"{marker!r} did not appear within {timeout}s; screen tail: {self.seen[-600:]!r}")

    def settle(self, quiet: float = QUIET, timeout: float = 10.0, first: float = 0.0) -> bytes:
        """Read until no byte came for `quiet` seconds (waiting up to `first` seconds for the first one)."""
        buf = b""
        start = time.perf_counter()
        mark = start + first  # the quiet period starts after `first` seconds or at the first byte
        while True:
            now = time.perf_counter()
            if now - mark >= quiet or now - start > timeout:
                return buf
            chunk = self._read(quiet - (now - mark))
            if chunk:
                buf += chunk
                mark = self.last_byte

    def press(self, key: bytes, quiet: float = QUIET, first: float = 1.0) -> tuple[int, float | None]:
        """Write `key`; the bytes it caused and the seconds until the last of them (None: no output).

        Waits up to `first` seconds for the first byte (a slow key must not leak into the next one),
        then until the output is quiet for `quiet` seconds."""
        sent = time.perf_counter()
        os.write(self.fd, key)
        out = self.settle(quiet, first=first)
        return len(out), (self.last_byte - sent if out else None)

    def resize(self, columns: int, lines: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))

    def full_repaint(self) -> int:
        """Bytes of a full-screen repaint at SIZE: resize one line taller and back, count the second paint."""
        self.resize(SIZE[0], SIZE[1] + 1)
        self.settle(0.3)
        self.resize(*SIZE)
        return len(self.settle(0.3))

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


def cockpit_argv() -> list[str]:
    return [sys.executable, "-m", "cockpit", "--as-of", AS_OF, "tui", "--no-mouse"]


def cockpit_env(data: Path) -> dict[str, str]:
    return {"COCKPIT_DATA_DIR": str(data), "COCKPIT_CONFIG": str(data / "absent.toml")}


def sync(size: int, work: Path) -> Path:
    data = work / f"demo-{size}"
    seconds, _, out = run_child(SYNC.format(data=str(data), as_of=AS_OF, size=size))
    report(f"(setup) sync demo store of {size:,} opportunities", json.loads(out)["seconds"], "s")
    return data


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def first_paint(argv: list[str], env: dict[str, str], markers: Sequence[bytes | re.Pattern[bytes]],
                runs: int) -> list[float]:
    """Median seconds from the start of the process to each of `markers` (in order) on screen."""
    times: list[list[float]] = [[] for _ in markers]
    for _ in range(runs):
        term = Pty(argv, env)
        try:
            for n, marker in enumerate(markers):
                seconds, _ = term.wait_for(marker, term.start, offset=0)
                times[n].append(seconds)
        finally:
            term.close()
    return [median(t) for t in times]


def deals_session(argv: list[str], env: dict[str, str], home: bytes, table: re.Pattern[bytes],
                  downs: int, pages: int, measure_keys: bool) -> dict[str, float]:
    """Start an app, wait for its home screen, press 3, time the table's first paint, then the keys."""
    term = Pty(argv, env)
    try:
        figures: dict[str, float] = {}
        figures["home"], _ = term.wait_for(home, term.start)
        term.settle(0.5)  # let the home screen finish (loading indicators, late refreshes)
        sent = time.perf_counter()
        os.write(term.fd, b"3")
        figures["switch"], buf = term.wait_for(table, sent)
        rows = int(table.search(buf).group(1))  # type: ignore[union-attr]
        figures["rows"] = rows
        buf += term.settle(0.5)
        figures["switch_bytes"] = len(buf)
        if not measure_keys:
            return figures
        pages = max(1, min(pages, (rows - downs) // VIEW_ROWS - 1))  # stop short of the last row
        figures["pages"] = pages
        for name, key, count in (("down", DOWN, downs), ("pagedown", PAGEDOWN, pages)):
            sizes: list[int] = []
            latencies: list[float | None] = []
            for _ in range(count):
                size, latency = term.press(key)
                sizes.append(size)
                latencies.append(latency)
            figures[f"{name}_bytes"] = statistics.mean(sizes)
            figures[f"{name}_latency"] = median([t for t in latencies if t is not None])
            figures[f"{name}_silent"] = latencies.count(None)
            if name == "down":  # the cursor starts on the first row: it moves within the view, then scrolls
                split = VIEW_ROWS - 1
                figures["down_view_bytes"] = statistics.mean(sizes[:split])
                figures["down_view_latency"] = median([t for t in latencies[:split] if t is not None])
                figures["down_scroll_bytes"] = statistics.mean(sizes[split:] or [float("nan")])
                figures["down_scroll_latency"] = median([t for t in latencies[split:] if t is not None])
        # last: the first key after a resize repaints the whole table (a refresh left over from on_resize)
        figures["full"] = term.full_repaint()
        return figures
    finally:
        term.close()


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None,
                        help="opportunities in the large store (default 100000)")
    parser.add_argument("--quick", action="store_true", help="20,000 opportunities, fewer presses and runs")
    args = parser.parse_args()
    size = args.size or (20_000 if args.quick else 100_000)
    downs = 40 if args.quick else 50  # past VIEW_ROWS, so the last ones scroll the table
    pages = 10 if args.quick else 40
    runs = 2 if args.quick else 5
    deal_runs = 1 if args.quick else 3
    os.chdir(ROOT)
    python = sys.executable

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = sync(5000, work)
        large = sync(size, work)

        # 3b. first paint of the home screen: Forecast on the default demo store vs one Label
        (bare,) = first_paint([python, "-c", BARE], {}, [BARE_MARKER], runs)
        # the first frame (the loading text, or the view if it is ready by then), then the loaded view
        markers = [re.compile(b"Loading the forecast|" + re.escape(FORECAST_MARKER)), FORECAST_MARKER]
        frame, home = first_paint(cockpit_argv(), cockpit_env(small), markers, runs)

        # 1, 2, 3a. the Deals screen on the large store, and the DataTable baseline with as many rows
        cockpit_runs = [deals_session(cockpit_argv(), cockpit_env(large), FORECAST_MARKER, DEALS_MARKER,
                                      downs, pages, measure_keys=(n == 0)) for n in range(deal_runs)]
        rows = int(cockpit_runs[0]["rows"])
        table_argv = [python, "-c", TABLE, str(rows)]
        table_runs = [deals_session(table_argv, {}, BARE_MARKER, TABLE_MARKER, downs, pages,
                                    measure_keys=(n == 0)) for n in range(deal_runs)]
        cockpit, table = cockpit_runs[0], table_runs[0]

    print(f"\nDeals screen: {rows:,} open deals of a {size:,}-opportunity store; the baseline is a stock "
          f"DataTable of {rows:,} synthetic rows;\n{SIZE[0]}x{SIZE[1]} pty; {downs} x down from the first "
          f"row (the first {VIEW_ROWS - 1} within the view, then scrolling), then "
          f"{int(cockpit['pages'])} / {int(table['pages'])} x pagedown")
    report("full-screen repaint (resize back to 120x40), cockpit", cockpit["full"], "B")
    report("full-screen repaint (resize back to 120x40), DataTable", table["full"], "B")
    report("bytes from key 3 until settled, cockpit", cockpit["switch_bytes"], "B")
    report("bytes from key 3 until settled, DataTable", table["switch_bytes"], "B")
    for label, key in (("down, all presses", "down"), ("down within the view", "down_view"),
                       ("down that scrolls one line", "down_scroll"), ("pagedown", "pagedown")):
        target = "target: << full repaint" if key == "down_view" else ""
        c, t = cockpit[f"{key}_bytes"], table[f"{key}_bytes"]
        report(f"bytes per {label}, cockpit (mean)", c, "B", target)
        report(f"bytes per {label}, DataTable (mean)", t, "B")
        report("  ratio cockpit / DataTable", ratio(c, t), "x")
        report("  cockpit as a share of its full repaint", ratio(c, cockpit["full"]), "x")
    for label, key in (("down, all presses", "down"), ("down within the view", "down_view"),
                       ("down that scrolls one line", "down_scroll"), ("pagedown", "pagedown")):
        c, t = cockpit[f"{key}_latency"] * 1000, table[f"{key}_latency"] * 1000
        report(f"key-to-paint, {label}, cockpit (median)", c, "ms")
        report(f"key-to-paint, {label}, DataTable (median)", t, "ms")
        report("  ratio cockpit / DataTable", ratio(c, t), "x")
    silent = {f"{who} {name}": run[f"{name}_silent"]
              for who, run in (("cockpit", cockpit), ("DataTable", table))
              for name in ("down", "pagedown") if run[f"{name}_silent"]}
    if silent:
        print(f"  presses that wrote nothing within 1 s (left out of the latency): {silent}")

    switch_c = median([r["switch"] for r in cockpit_runs])
    switch_t = median([r["switch"] for r in table_runs])
    print(f"\nFirst paint (home: median of {runs} starts; Deals: median of {deal_runs})")
    report(f"cockpit: Deals screen after key 3 ({size:,} store, {rows:,} deals)", switch_c, "s")
    report(f"DataTable: table screen after key 3 ({rows:,} rows)", switch_t, "s")
    report("  ratio cockpit / DataTable (Deals first paint)", ratio(switch_c, switch_t), "x")
    report(f"cockpit: Forecast loaded, from start ({size:,} store)",
           median([r["home"] for r in cockpit_runs]), "s")
    report("bare Textual app: first paint of one label", bare, "s")
    report("cockpit: first frame (loading text or view), 5,000 store", frame, "s")
    report("cockpit: Forecast loaded, from start (5,000 store)", home, "s", "target <= 1.0")
    report("  ratio cockpit / bare (home first paint)", ratio(home, bare), "x")


if __name__ == "__main__":
    main()
