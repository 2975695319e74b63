"""Tables that read at any width, 80 columns in a pipe included, with no word broken.

rich shrinks a table that does not fit by folding or cropping cells, which
splits identifiers (``tcp_conne``/``ct``) or cuts them (``tcp_retransmit_…``).
:func:`print_table` decides the column widths itself instead: every column is
at least as wide as its longest word (cells wrap only at spaces), columns
marked droppable are left out (and named under the table) when that does not
fit, and when even the essential columns do not fit the rows are printed as
records, one ``header: value`` line per field, so nothing is ever cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

_PADDING = 1
"""Spaces each side of a cell (rich's default)."""


@dataclass(frozen=True)
class Column:
    """One table column.

    ``wrap``: the cell may wrap at spaces (prose, or lists of identifiers
    separated by ``", "``); with ``wrap=False`` each line of the cell is kept
    whole (``12.3ms (410ns each)``). Words are never split either way.
    ``drop``: 0 means always shown; columns with higher numbers are left out
    first when the table does not fit. ``min_width``: narrower than this a
    prose column is not worth showing (it is dropped, or the table becomes
    records). ``justify``: ``left`` or ``right``.
    """

    header: str
    wrap: bool = True
    drop: int = 0
    min_width: int = 0
    justify: Literal["left", "right"] = "left"


def _plain(cell: str | Text) -> str:
    from rich.text import Text

    return cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain


def _longest(parts: Sequence[str]) -> int:
    from rich.cells import cell_len

    return max((cell_len(part) for part in parts), default=0)


def _widths(column: Column, cells: list[str]) -> tuple[int, int]:
    """(narrowest width that splits no word, width that needs no wrapping) of a column."""
    lines = [line for cell in cells for line in cell.splitlines()]
    widest = max(_longest(lines), _longest([column.header]))
    if column.wrap:
        narrowest = max(_longest([word for line in lines for word in line.split()]),
                        _longest(column.header.split()))
    else:
        narrowest = max(_longest(lines), _longest(column.header.split()))
    narrowest = max(narrowest, min(column.min_width, widest))
    return narrowest, max(widest, 1)


def _overhead(count: int) -> int:
    """Characters a rich table with ``count`` columns spends on borders and padding."""
    return count + 1 + 2 * _PADDING * count


def fit_columns(columns: Sequence[Column], rows: Sequence[Sequence[str | Text]], width: int
                ) -> tuple[list[int], list[int]] | None:
    """The indexes of the columns shown and their widths, or ``None`` when only records fit.

    Columns are dropped, highest ``drop`` first (the last one declared first
    among equals), until the narrowest widths fit; the room left goes first to
    the columns that need the least to stop wrapping, then to the one that
    needs the most.
    """
    plain = [[_plain(row[index]) for row in rows] for index in range(len(columns))]
    ranges = [_widths(column, plain[index]) for index, column in enumerate(columns)]
    shown = list(range(len(columns)))
    droppable = sorted((index for index, column in enumerate(columns) if column.drop),
                       key=lambda index: (columns[index].drop, index))
    while sum(ranges[index][0] for index in shown) + _overhead(len(shown)) > width:
        if not droppable:
            return None
        shown.remove(droppable.pop())
    widths = [ranges[index][0] for index in shown]
    room = width - _overhead(len(shown)) - sum(widths)
    # columns that need little to stop wrapping get it first; the rest goes to the one missing the most
    missing = sorted((ranges[index][1] - widths[position], position) for position, index in enumerate(shown))
    for need, position in missing:
        if 0 < need <= room:
            widths[position] += need
            room -= need
    unsatisfied = [(ranges[index][1] - widths[position], position) for position, index in enumerate(shown)
                   if ranges[index][1] > widths[position]]
    if room > 0 and unsatisfied:
        need, position = max(unsatisfied)
        widths[position] += min(room, need)
    return shown, widths


def print_table(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str | Text]],
                *, more: str = "see --json") -> None:
    """Print ``rows`` under ``title`` at the console's width, splitting no word and cutting nothing.

    Cells are rich markup strings (escape what is not markup) or
    :class:`rich.text.Text`. Columns left out for lack of width are named in one
    line under the table, followed by ``more`` (where the rest can be seen).
    """
    from rich.markup import escape
    from rich.table import Table

    fitted = fit_columns(columns, rows, console.width)
    if fitted is None:
        print_records(console, title, columns, rows)
        return
    shown, widths = fitted
    table = Table(title=title, title_justify="left")
    for index, width in zip(shown, widths, strict=True):
        column = columns[index]
        table.add_column(column.header, width=width, no_wrap=not column.wrap, overflow="fold",
                         justify=column.justify)
    for row in rows:
        table.add_row(*(row[index] for index in shown))
    console.print(table)
    left_out = [columns[index].header for index in range(len(columns)) if index not in shown]
    if left_out:
        console.print(f"[dim]not shown at this width: {escape(', '.join(left_out))} ({escape(more)})[/]")


def print_records(console: Console, title: str, columns: Sequence[Column],
                  rows: Sequence[Sequence[str | Text]]) -> None:
    """Each row as a block: its first cell, then one ``header: value`` line per other column.

    Values wrap at spaces under themselves; the layout for widths at which no
    table of the essential columns fits.
    """
    from rich.table import Table
    from rich.text import Text

    if title:
        console.print(Text.from_markup(title, style="italic"))
    key_width = max((len(column.header) for column in columns[1:]), default=0) + 1
    for row in rows:
        first = row[0]
        console.print(first if isinstance(first, Text) else Text.from_markup(first, style="bold"))
        grid = Table.grid(padding=(0, 1, 0, 0))
        grid.add_column(width=2)
        grid.add_column(width=key_width, no_wrap=True, style="dim")
        grid.add_column(overflow="fold")
        for column, cell in zip(columns[1:], row[1:], strict=True):
            grid.add_row("", f"{column.header}:", cell)
        console.print(grid)
