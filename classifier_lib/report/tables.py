"""Tables in reports: escaped (pandas' Styler writes cells and labels as markup) and, when long,
complete in a scrolling box instead of pandas' first-and-last-five rows."""

from __future__ import annotations

import html

import pandas as pd
from pandas.io.formats.style import Styler


def escaped(styler: Styler, formatter=None, **format_options) -> Styler:
    """A Styler whose cells, row and column labels are HTML-escaped: pandas' Styler writes them as markup,
    so a run or class folder named `<img onerror=...>` would run in the comparison page."""
    return (
        styler.format(formatter, escape="html", **format_options)
        .format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1)
    )


def scrollable(frame: pd.DataFrame, caption: str = "", height: int = 420, **format_options) -> str:
    """Every row of `frame` as escaped HTML in a box that scrolls past `height` pixels, its header kept in
    view: for `IPython.display.HTML` in a notebook (no row is left out, whatever the number of classes)."""
    table = escaped(frame.style, **format_options).set_sticky(axis="columns").to_html()
    title = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    return f'{title}<div style="max-height:{height}px;overflow:auto;border:1px solid #ddd">{table}</div>'


def folded(frame: pd.DataFrame, summary: str, **format_options) -> str:
    """`frame` as an escaped HTML table folded under a one-line `summary` a reader can open."""
    table = escaped(frame.style, **format_options).to_html()
    return f"<details><summary>{html.escape(summary)}</summary>{table}</details>"
