"""Horizontal bar charts drawn with block characters, readable without colour (NO_COLOR, 16 colours)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual.widgets import Static

_EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True)
class Bar:
    """One bar: a label, a value, the text shown after the bar, and where it starts (waterfalls)."""

    label: str
    value: float
    text: str = ""
    start: float = 0.0
    """Offset of the bar's left end (a waterfall step starts where the previous one ended)."""
    style: str = ""
    """A rich style; the bar's shape carries the meaning, so styles are only a help."""


def bar_text(bar: Bar, scale: float, origin: float, width: int) -> str:
    """The bar as characters: spaces up to its start, then eighth-blocks for its length."""
    lo = (min(bar.start, bar.start + bar.value) - origin) * scale
    length = abs(bar.value) * scale
    lead = int(lo)
    cells = max(length, 0.0)
    full = int(cells)
    part = int(round((cells - full) * 8))
    body = "█" * full + (_EIGHTHS[part] if part and full < width else "")
    if bar.value < 0:
        body = "▒" * max(1, len(body)) if length >= 0.5 else "▏"
    return (" " * max(0, lead) + body)[:width]


def render_bars(bars: Sequence[Bar], width: int, *, label_width: int | None = None, zoom: bool = False) -> Text:
    """All bars on one shared scale, labels left, texts right; negative bars drawn with ▒.

    `zoom` starts the axis just below the smallest level instead of at zero, so the steps of a
    waterfall are visible next to large totals (the title should say the axis is cut).
    """
    if not bars:
        return Text("(nothing to show)", style="dim")
    label_width = label_width or min(22, max(cell_len(b.label) for b in bars))
    text_width = max(cell_len(b.text) for b in bars)
    bar_width = max(4, width - label_width - text_width - 3)
    lo = min(min(b.start, b.start + b.value) for b in bars)
    hi = max(max(b.start, b.start + b.value) for b in bars)
    origin = min(0.0, lo)
    if zoom and lo > 0:
        origin = max(0.0, lo - (hi - lo) * 0.25)
    span = (hi - origin) or 1.0
    scale = bar_width / span
    out = Text()
    for n, bar in enumerate(bars):
        if n:
            out.append("\n")
        out.append(set_cell_size(bar.label, label_width) + " ")
        out.append(set_cell_size(bar_text(bar, scale, origin, bar_width), bar_width), style=bar.style)
        out.append(" " + bar.text.rjust(text_width))
    return out


class BarChart(Static):
    """A Static that redraws its bars to its width."""

    DEFAULT_CSS = """
    BarChart { height: auto; }
    """

    def __init__(self, bars: Sequence[Bar] = (), *, zoom: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._bars = list(bars)
        self.zoom = zoom

    def set_bars(self, bars: Sequence[Bar]) -> None:
        self._bars = list(bars)
        self.refresh(layout=True)

    def render(self) -> Text:
        return render_bars(self._bars, max(20, self.content_size.width or 60), zoom=self.zoom)
