"""DealTable: a line-API table that renders only the rows in view.

Textual's DataTable measures every cell as rows are added (seconds for 10,000 rows); this table
keeps the rows as a list and renders the visible lines on demand, with fixed column widths that are
CJK-aware. A cursor move repaints two lines, not the table, which keeps an SSH session light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

RowT = TypeVar("RowT")


@dataclass(frozen=True)
class PaintedRow:
    """A row shown from texts rendered earlier (a start-up cache), until `set_rows` brings the real one."""

    key: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Column:
    """A typed column spec."""

    key: str
    """Stable key, used for sorting and by `cell`."""
    label: str
    width: int = 10
    """Width in terminal cells (the `flex` column takes what is left, at least `width`)."""
    numeric: bool = False
    """Right-aligned."""
    flex: bool = False
    priority: int = 0
    """Columns with a higher priority are dropped first when the table is too narrow."""


class DealTable(ScrollView, Generic[RowT], can_focus=True):
    """Rows of any type, cells from a function, a row cursor and a current column for sorting."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("left,h", "column(-1)", "Column left", show=False),
        Binding("right,l", "column(1)", "Column right", show=False),
        Binding("enter", "choose", "Open", show=False),
    ]
    """
    | Key | Action |
    | :- | :- |
    | `up`/`k`, `down`/`j` | Move the cursor. |
    | `pageup`, `pagedown`, `home`, `end` | Move by a page, to the first or last row. |
    | `left`/`h`, `right`/`l` | Choose the current column (what `[`/`]` sort by). |
    | `enter` | Choose the row. |
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "deal-table--header",
        "deal-table--header-current",
        "deal-table--cursor",
        "deal-table--odd",
        "deal-table--flagged",
        "deal-table--muted",
    }
    """
    | Class | Description |
    | :- | :- |
    | `deal-table--header` | The header line. |
    | `deal-table--header-current` | The header of the current column. |
    | `deal-table--cursor` | The cursor row. |
    | `deal-table--odd` | Every other row. |
    | `deal-table--flagged` | Rows the row-class function marks "flagged". |
    | `deal-table--muted` | Rows the row-class function marks "muted" (e.g. reviewed). |
    """

    DEFAULT_CSS = """
    DealTable {
        background: $surface;
        height: 1fr;
        overflow-x: hidden;
    }
    DealTable > .deal-table--header { text-style: bold; background: $panel; }
    DealTable > .deal-table--header-current { text-style: bold reverse; }
    DealTable > .deal-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold; }
    DealTable > .deal-table--odd { background: $surface-lighten-1; }
    DealTable > .deal-table--flagged { color: $warning; }
    DealTable > .deal-table--muted { color: $text-muted; }
    DealTable:blur > .deal-table--cursor { background: $block-cursor-blurred-background; text-style: none; }
    """

    cursor_row: reactive[int] = reactive(0, repaint=False, init=False)
    """Index of the cursor row in the current order."""
    cursor_column: reactive[int] = reactive(0, repaint=False, init=False)
    """Index of the current column (what sorting uses)."""

    class RowHighlighted(Message):
        """The cursor moved onto a row."""

        def __init__(self, table: DealTable[Any], key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> DealTable[Any]:
            return self.table

    class RowChosen(Message):
        """Enter was pressed on a row."""

        def __init__(self, table: DealTable[Any], key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> DealTable[Any]:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        cell: Callable[[RowT, str], str],
        key: Callable[[RowT], str],
        *,
        row_class: Callable[[RowT], str | None] | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self._cell = cell
        self._key = key
        self._row_class = row_class
        self._rows: list[RowT | PaintedRow] = []
        self._index: dict[str, int] = {}
        self._text: dict[int, list[str]] = {}
        self._widths: list[int] = []
        self._shown: list[int] = []

    # -- data ----------------------------------------------------------------------------------

    @property
    def rows(self) -> list[RowT]:
        """The rows (none while the table shows painted rows: `paint` and `set_rows` replace them all)."""
        return [] if self._rows and isinstance(self._rows[0], PaintedRow) else self._rows  # type: ignore[return-value]

    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def current_key(self) -> str | None:
        if not self._rows:
            return None
        return self._key_of(self._rows[self.cursor_row])

    @property
    def current_row(self) -> RowT | None:
        """The row under the cursor (None while the table shows painted rows only)."""
        row = self._rows[self.cursor_row] if self._rows else None
        return None if isinstance(row, PaintedRow) else row

    def _key_of(self, row: RowT | PaintedRow) -> str:
        return row.key if isinstance(row, PaintedRow) else self._key(row)

    @property
    def current_column(self) -> Column:
        return self.columns[self.cursor_column]

    def set_rows(self, rows: Sequence[RowT], *, keep_cursor: bool = True) -> None:
        """Replace the rows (already in display order); the cursor stays on the same key if it can."""
        self._replace(list(rows), keep_cursor)

    def paint(self, rows: Sequence[PaintedRow]) -> None:
        """Show rows rendered earlier, as they were, until `set_rows` replaces them. The cursor moves
        over them, but `current_row` stays None and `rows` empty: there is nothing behind them yet."""
        self._replace(list(rows), keep_cursor=True)

    def _replace(self, rows: list[RowT | PaintedRow], keep_cursor: bool) -> None:
        previous = self.current_key if keep_cursor else None
        self._rows = rows
        self._index = {self._key_of(r): i for i, r in enumerate(self._rows)}
        self._text.clear()
        self.virtual_size = Size(self._view_width, len(self._rows) + 1)
        target = self._index.get(previous, 0) if previous is not None else 0
        self.set_reactive(DealTable.cursor_row, min(target, max(0, len(self._rows) - 1)))
        self._scroll_cursor_into_view()
        self.refresh()
        self.post_message(self.RowHighlighted(self, self.current_key))

    def refresh_row(self, key: str) -> None:
        """Re-render one row (its data changed in place)."""
        index = self._index.get(key)
        if index is not None:
            self._text.pop(index, None)
            self._refresh_index(index)

    def move_to(self, key: str) -> bool:
        index = self._index.get(key)
        if index is None:
            return False
        self.cursor_row = index
        return True

    def row_at(self, index: int) -> RowT | PaintedRow:
        return self._rows[index]

    def cells(self, index: int) -> list[str]:
        """The texts of row `index`, in column order (cached)."""
        texts = self._text.get(index)
        if texts is None:
            row = self._rows[index]
            if isinstance(row, PaintedRow):
                texts = list(row.texts)
            else:
                texts = [self._cell(row, c.key) for c in self.columns]
            self._text[index] = texts
        return texts

    # -- cursor --------------------------------------------------------------------------------

    def watch_cursor_row(self, old: int, new: int) -> None:
        self._refresh_index(old)
        self._refresh_index(new)
        self._scroll_cursor_into_view()
        self.post_message(self.RowHighlighted(self, self.current_key))

    def watch_cursor_column(self) -> None:
        self.refresh(Region(0, 0, self.size.width, 1))

    def validate_cursor_row(self, value: int) -> int:
        return max(0, min(value, len(self._rows) - 1)) if self._rows else 0

    def validate_cursor_column(self, value: int) -> int:
        return max(0, min(value, len(self.columns) - 1))

    def action_cursor(self, delta: int) -> None:
        self.cursor_row += delta

    def action_page(self, direction: int) -> None:
        self.cursor_row += direction * max(1, self.size.height - 2)

    def action_jump(self, where: int) -> None:
        self.cursor_row = 0 if where == 0 else len(self._rows) - 1

    def action_column(self, delta: int) -> None:
        shown = self._shown or list(range(len(self.columns)))
        pos = shown.index(self.cursor_column) if self.cursor_column in shown else 0
        self.cursor_column = shown[max(0, min(len(shown) - 1, pos + delta))]

    def action_choose(self) -> None:
        key = self.current_key
        if key is not None:
            self.post_message(self.RowChosen(self, key))

    @property
    def _view_width(self) -> int:
        """Width available to the rows (the vertical scrollbar takes its share)."""
        return self.scrollable_content_region.width

    def _refresh_index(self, index: int) -> None:
        y = index - int(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _scroll_cursor_into_view(self) -> None:
        body = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + body:
            self.scroll_to(y=self.cursor_row - body + 1, animate=False, immediate=True)

    # -- rendering -----------------------------------------------------------------------------

    def on_resize(self) -> None:
        self.virtual_size = Size(self._view_width, len(self._rows) + 1)
        self._layout_columns(self._view_width)
        self._scroll_cursor_into_view()

    def _layout_columns(self, width: int) -> None:
        """Fit the columns: drop low-priority ones until the fixed widths fit, then grow the flex column."""
        shown = list(range(len(self.columns)))
        while len(shown) > 1:
            need = sum(self.columns[i].width for i in shown) + len(shown) - 1 + 1
            if need <= width:
                break
            drop = max(shown, key=lambda i: (self.columns[i].priority, i))
            if self.columns[drop].priority == 0:
                break
            shown.remove(drop)
        widths = [self.columns[i].width for i in shown]
        spare = width - (sum(widths) + len(shown) - 1 + 1)
        flex = [n for n, i in enumerate(shown) if self.columns[i].flex]
        if flex and spare > 0:
            widths[flex[0]] += spare
        self._shown, self._widths = shown, widths

    def render_line(self, y: int) -> Strip:
        width = self._view_width
        if not self._widths:
            self._layout_columns(width)
        if y == 0:
            return self._header_strip(width)
        index = int(self.scroll_y) + y - 1
        if index >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        return self._row_strip(index, width)

    def _header_strip(self, width: int) -> Strip:
        base = self.get_component_rich_style("deal-table--header")
        current = base + self.get_component_rich_style("deal-table--header-current")
        segments = [Segment(" ", base)]
        for n, (i, w) in enumerate(zip(self._shown, self._widths)):
            col = self.columns[i]
            segments.append(Segment(self._fit(col.label, w, col.numeric), current if i == self.cursor_column else base))
            if n < len(self._shown) - 1:
                segments.append(Segment(" ", base))
        return Strip(segments).adjust_cell_length(width, base)

    def _row_strip(self, index: int, width: int) -> Strip:
        style = self.rich_style
        if index % 2:
            style += self.get_component_rich_style("deal-table--odd")
        row = self._rows[index]
        if self._row_class is not None and not isinstance(row, PaintedRow):
            marker = self._row_class(row)
            if marker in ("flagged", "muted"):
                style += self.get_component_rich_style(f"deal-table--{marker}")
        if index == self.cursor_row:
            style += self.get_component_rich_style("deal-table--cursor")
        texts = self.cells(index)
        parts = [" "]
        for n, (i, w) in enumerate(zip(self._shown, self._widths)):
            parts.append(self._fit(texts[i], w, self.columns[i].numeric))
            if n < len(self._shown) - 1:
                parts.append(" ")
        return Strip([Segment("".join(parts), style)]).adjust_cell_length(width, style)

    @staticmethod
    def _fit(text: str, width: int, right: bool) -> str:
        """Pad or cut `text` to exactly `width` cells (CJK characters are two cells wide)."""
        length = cell_len(text)
        if length > width:
            return set_cell_size(text, width - 1) + "…" if width > 1 else "…"
        pad = " " * (width - length)
        return pad + text if right else text + pad
