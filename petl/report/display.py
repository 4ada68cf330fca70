"""How the book shows a table: without the index, in a box that fits the page (book/_static/petl.css), and a
sentence instead of a table without rows."""

from __future__ import annotations

import html

import pandas as pd

EMPTY = "No complete runs for this table yet: `make book` runs them."


def table_html(frame: pd.DataFrame, caption: str = "", formatters=None) -> str:
    body = frame.to_html(index=False, na_rep="—", classes="petl-table", border=0, formatters=formatters)
    if caption:
        body = body.replace(">", f">\n<caption>{html.escape(caption)}</caption>", 1)
    return f'<div class="petl-table-box">\n{body}\n</div>'


def show(frame: pd.DataFrame, empty: str = EMPTY, caption: str = "", formatters=None):
    """Display a table without its index (and with a caption); an empty table is replaced by a sentence saying
    why."""
    from IPython.display import HTML, display
    if frame is None or frame.empty:
        display(HTML(f"<p><em>{html.escape(empty)}</em></p>"))
        return
    display(HTML(table_html(frame, caption, formatters)))
