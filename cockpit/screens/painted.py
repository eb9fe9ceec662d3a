"""What a screen last painted, kept to paint it again at the next start while the store is read.

The Forecast screen's first paint needs the roll-up, the model's range and the funnel: about a third
of a second of work (and numpy's import) after the app has started. Its texts are kept in a small
JSON file beside the store, one per OS user and readable by that user only, under a stamp of
everything the view depends on (`CockpitService.view_stamp`). At the next start a file with the same
stamp is painted at once, and the screen still loads the view and replaces it. Only texts and style
names are kept: a file in a shared data dir cannot make the cockpit run code, and a damaged one is
ignored.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.errors import StyleSyntaxError
from rich.style import Style
from rich.text import Span, Text

from cockpit.widgets.deal_table import PaintedRow

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped when the payload's shape changes: files of another format are ignored."""

T = TypeVar("T")


class PaintCache:
    """One screen's last paint at `path`, valid while `stamp()` returns what it returned then."""

    def __init__(self, path: Path, stamp: Callable[[], str | None]) -> None:
        self.path = path
        self.stamp = stamp

    def load(self, stamp: str | None) -> dict[str, Any] | None:
        """The payload saved under `stamp`, or None (no stamp or file, another stamp, unreadable)."""
        stored = self._stored()
        if stamp is None or stored is None or stored.get("stamp") != stamp:
            return None
        payload = stored.get("payload")
        return payload if isinstance(payload, dict) else None

    def cost(self) -> float | None:
        """Seconds the kept paint's view took to compute, whatever its stamp (None if unknown)."""
        seconds = (self._stored() or {}).get("seconds")
        return float(seconds) if isinstance(seconds, (int, float)) else None

    def _stored(self) -> dict[str, Any] | None:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return stored if isinstance(stored, dict) and stored.get("format") == FORMAT else None

    def save(self, stamp: str, payload: dict[str, Any], seconds: float) -> None:
        """Keep `payload`, whose view took `seconds` to compute, under `stamp`, atomically; a data dir
        that cannot be written is only logged."""
        from cockpit.export.atomic import ExportError, write_atomic

        data = json.dumps(
            {"format": FORMAT, "stamp": stamp, "seconds": round(seconds, 3), "payload": payload}, ensure_ascii=False
        )
        try:
            write_atomic(self.path, data.encode("utf-8"), force=True, mode=0o600)
        except ExportError as exc:
            log.info("paint not kept: %s", exc)


class PaintRead(Generic[T]):
    """A PaintCache read and parsed in a thread of its own, begun as the screen is made, so the
    painted texts are usually there before the screen's first render, without I/O on the event loop."""

    def __init__(self, open_cache: Callable[[], PaintCache], parse: Callable[[dict[str, Any]], T]) -> None:
        self._open = open_cache
        self._parse = parse
        self._value: T | None = None
        self._done = threading.Event()
        threading.Thread(target=self._read, name="paint-read", daemon=True).start()

    def _read(self) -> None:
        try:
            cache = self._open()
            payload = cache.load(cache.stamp())
            self._value = self._parse(payload) if payload is not None else None
        except Exception as exc:  # noqa: BLE001 - damaged, foreign or unreadable: as if there were none
            log.info("painted view not used: %s", exc)
        finally:
            self._done.set()

    def ready(self) -> T | None:
        """The parsed paint if the read is done and found one; never waits."""
        return self._value if self._done.is_set() else None

    def wait(self, timeout: float) -> T | None:
        """The parsed paint, waiting for the read at most `timeout` seconds."""
        self._done.wait(timeout)
        return self._value


def text_to_json(text: Text) -> dict[str, Any]:
    """A rich Text as its plain string and (start, end, style) spans."""
    return {"plain": text.plain, "spans": [[s.start, s.end, str(s.style)] for s in text.spans]}


def text_from_json(data: object) -> Text:
    """The Text `text_to_json` gave; ValueError if `data` is not one (styles are parsed here, so a bad
    one cannot fail later, at render time)."""
    if not isinstance(data, dict) or not isinstance(data.get("plain"), str) or not isinstance(data.get("spans"), list):
        raise ValueError("not a painted text")
    plain = data["plain"]
    spans = []
    for span in data["spans"]:
        if not (isinstance(span, list) and len(span) == 3 and isinstance(span[2], str)
                and all(isinstance(i, int) and 0 <= i <= len(plain) for i in span[:2])):
            raise ValueError("not a painted span")
        try:
            Style.parse(span[2])
        except StyleSyntaxError as exc:
            raise ValueError(str(exc)) from None
        spans.append(Span(span[0], span[1], span[2]))
    return Text(plain, spans=spans)


def rows_from_json(data: object, columns: int) -> list[PaintedRow]:
    """Painted table rows from [key, [text, ...]] pairs with `columns` texts each; ValueError otherwise."""
    if not isinstance(data, list):
        raise ValueError("not painted rows")
    rows = []
    for item in data:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
                and len(item[1]) == columns and all(isinstance(t, str) for t in item[1])):
            raise ValueError("not a painted row")
        rows.append(PaintedRow(item[0], tuple(item[1])))
    return rows


def rows_to_json(rows: Sequence[Any], key: Callable[[Any], str], cells: Callable[[Any], list[str]]) -> list[Any]:
    return [[key(r), cells(r)] for r in rows]
