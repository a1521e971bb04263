"""Shared CLI plumbing: console on stderr for people, JSON on stdout for machines, exit codes."""

from __future__ import annotations

import copy
import json
import sys
from typing import Optional

import click
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# People read stderr (tables, progress bars); machines read stdout (--json).
console = Console(stderr=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


def emit_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


class FitTable(Table):
    """A rich ``Table`` that never cuts a cell short (no ``…``), on any terminal or in a pipe.

    In a pipe or a file every row is printed whole, however wide (:func:`print_table` does not
    crop). In a terminal narrower than the table, long text columns (``wrap=True``) wrap at words
    first; if the other columns still do not fit whole, the borders go, then headers take their
    ``short`` form, and as a last resort cells break mid-word: shown in full, never elided.

    Columns take two more keywords than ``Table.add_column``: ``wrap`` (a long free-text column
    that may wrap) and ``short`` (the header's abbreviation for narrow terminals).
    """

    def add_column(self, header="", footer="", *, wrap: bool = False, short: str = "", **kwargs):
        kwargs.setdefault("overflow", "fold")  # a cell too long breaks, it is never elided
        kwargs.pop("no_wrap", None)  # whole-or-wrapped is decided at render time, by the width
        super().add_column(header, footer, **kwargs)
        column = self.columns[-1]
        column.meta = {"wrap": wrap, "short": short or SHORT_HEADERS.get(str(header), "")}

    def __rich_console__(self, console, options):
        if not console.is_terminal:  # a pipe or a file: whole rows, as wide as they are
            wide = _variant(self, no_wrap=True)
            width = Measurement.get(console, options.update(width=_UNLIMITED), wide).maximum
            yield from Table.__rich_console__(wide, console, options.update(width=width))
            return
        for min_text in (_MIN_TEXT, _MIN_TEXT_SQUEEZED):
            for stage in _STAGES:
                candidate = _variant(self, keep_whole=True, **stage)
                if _keeps_whole(candidate, console, options, min_text):
                    yield from Table.__rich_console__(candidate, console, options)
                    return
        # Not even the most compact form keeps them whole: every cell may break (never elided).
        yield from Table.__rich_console__(_variant(self, **_STAGES[-1]), console, options)


_UNLIMITED = 100_000

# Headers' abbreviations for narrow terminals (a column may give its own ``short``).
SHORT_HEADERS = {
    "size KiB": "KiB", "size x": "×size", "p50 ms": "p50", "p90 ms": "p90", "latency x": "×lat",
    "peak MiB": "MiB", "top-1 %": "top1", "drop pts": "drop", "side by side ms": "paired",
    "gzip KiB": "gzip", "×fp32": "×", "worst dB": "dB", "calibration": "calib.",
    "precision": "prec.", "fp32 size": "fp32", "×params": "×par", "×MACs": "×MAC",
    "zero point": "zp", "sparsity": "sparse", "unique values": "unique",
    "max per channel": "max/ch", "conversion": "conv.", "accuracy": "acc", "init ms": "init",
    "upload B": "up B", "noise band": "noise",
}

# From roomiest to most compact; each applies when the columns that are not free text still fit
# whole beside at least a narrow free-text column.
_STAGES = [
    {},
    {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False},
    {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False, "short": True},
    {"box": None, "show_edge": False, "pad_edge": False, "short": True, "collapse_padding": True},
]
_MIN_TEXT = 20  # a free-text column narrower than this is hard to read
_MIN_TEXT_SQUEEZED = 8  # ...but still better than breaking the other columns' cells


def _variant(table: Table, *, no_wrap: bool = False, keep_whole: bool = False,
             short: bool = False, **attrs) -> Table:
    """A copy of ``table`` with its columns' wrapping, headers and box set for one layout;
    ``keep_whole``: the columns that are not free text do not wrap."""
    twin = copy.copy(table)
    twin.columns = []
    for column in table.columns:
        col = copy.copy(column)
        meta = getattr(column, "meta", {}) or {}
        col.no_wrap = no_wrap or (keep_whole and not meta.get("wrap"))
        if short and meta.get("short"):  # the header is one word or it would wrap anyway
            col.header = meta["short"]
        twin.columns.append(col)
    for key, value in attrs.items():
        setattr(twin, key, value)
    return twin


def _keeps_whole(table: Table, console, options, min_text: int) -> bool:
    """Whether, at this width, every column that is not free text keeps its natural width and
    each free-text column gets at least ``min_text`` (or its natural width, if less)."""
    available = options.max_width - table._extra_width
    wide = options.update(width=_UNLIMITED)
    need = 0
    for column in table.columns:
        natural = table._measure_column(console, wide, column).maximum
        if (getattr(column, "meta", {}) or {}).get("wrap"):
            natural = min(natural, min_text + table._get_padding_width(column._index))
        need += natural
    return need <= available


def print_table(table: Table, out: Optional[Console] = None) -> None:
    """Print ``table`` on the people's console (stderr), uncropped: see :class:`FitTable`."""
    (out or console).print(table, crop=False)
