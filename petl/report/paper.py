"""The paper's side: its reported numbers (`data/paper/results.csv`) and which of its rows each of our presets
reproduces (`data/paper/presets.csv`, the one preset -> paper-row table of the book, the accounting appendix and
the tests)."""

from __future__ import annotations

import functools
import math

import pandas as pd

from petl.report.selection import ROOT

PAPER_DIR = ROOT / "data" / "paper"
PAPER_CSV = PAPER_DIR / "results.csv"
PRESETS_CSV = PAPER_DIR / "presets.csv"

#: The size columns of presets.csv (petl option names: l or r at attention, r at the FFN).
SIZES = ("attn_bn", "ffn_bn")


def paper_results(table: str | None = None, task: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The paper's reported numbers (He et al., ICLR 2022), as tidy rows; `value_text` is the value as the paper
    prints it (94.0, not 94)."""
    df = pd.read_csv(PAPER_CSV, dtype={"value": str})
    df["value_text"] = df["value"]
    df["value"] = df["value"].astype(float)
    if table is not None:
        df = df[df["table"] == table]
    if task is not None:
        df = df[df["task"] == task]
    if metric is not None:
        df = df[df["metric"] == metric]
    return df.reset_index(drop=True)


def presets() -> pd.DataFrame:
    """data/paper/presets.csv: one row per (paper row, our preset at the paper's sizes); see data/paper/README.md."""
    return _presets(PRESETS_CSV.stat().st_mtime_ns).copy()


@functools.lru_cache(maxsize=2)
def _presets(_mtime: int) -> pd.DataFrame:
    df = pd.read_csv(PRESETS_CSV, dtype={"scale": str, "note": str}, keep_default_na=False)
    for column in SIZES:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="raise").astype("Int64")
    df["counted"] = df["counted"].map({"yes": True, "no": False})
    return df


def paper_text(table: str, method: str, task: str, metric: str) -> str | None:
    """One paper number as the paper prints it (its digits), or None."""
    found = paper_results(table, task, metric)
    found = found[found["method"] == method]
    return None if found.empty else found["value_text"].iloc[0]


def paper_number(table: str, method: str, task: str, metric: str) -> tuple[float, float | None] | None:
    """(value, the paper's % parameters) of one paper row on one task and metric, or None."""
    found = paper_results(table, task, metric)
    found = found[found["method"] == method]
    if found.empty:
        return None
    pct = found["tuned_params_pct"].iloc[0]
    return float(found["value"].iloc[0]), None if pd.isna(pct) else float(pct)


def _size_distance(entry, row) -> float:
    """How far a run's sizes are from a paper row's (sum of |log ratio| over the sizes the row gives)."""
    distance = 0.0
    for column in SIZES:
        if pd.isna(row[column]):
            continue
        ours = entry.get(f"petl.{column}")
        if ours is None or pd.isna(ours):
            continue
        distance += abs(math.log(float(ours) / float(row[column])))
    return distance


def paper_row(entry, tables) -> pd.Series | None:
    """The paper row (a presets.csv row) that a run or summary row corresponds to, among `tables` (a table or a
    tuple of them, most wanted first): the same variant, the same scale where the row names one, then the row of
    the nearest sizes (so runs at the paper's own sizes find their exact row, and small-model runs the method's
    row at the sizes the paper compares). `entry` needs the columns variant, scale, petl.attn_bn, petl.ffn_bn."""
    tables = (tables,) if isinstance(tables, str) else tuple(tables)
    table = presets()
    rows = table[table["table"].isin(tables) & (table["variant"] == entry["variant"])]
    scale = str(entry.get("scale") or "")
    rows = rows[(rows["scale"] == "") | (rows["scale"] == scale)]
    if rows.empty:
        return None
    ranked = sorted(rows.iterrows(), key=lambda item: (round(_size_distance(entry, item[1]), 9),
                                                        tables.index(item[1]["table"]), item[0]))
    return ranked[0][1]


def table_name(table: str) -> str:
    """'table6' -> 'Table 6', 'figure4' -> 'Figure 4'."""
    for prefix in ("table", "figure"):
        if table.startswith(prefix):
            return f"{prefix.capitalize()} {table[len(prefix):]}"
    return table


def side_by_side(summary: pd.DataFrame, metric: str, tables, task: str, paper_metric: str,
                 ours_name: str, paper_name: str) -> pd.DataFrame:
    """Our mean ± std beside the paper's number for the same method (its row among `tables`, see paper_row), on
    the paper's `task` and `paper_metric`."""
    rows = []
    for _, entry in summary.iterrows():
        row = paper_row(entry, tables)
        number = paper_number(row["table"], row["paper_method"], task, paper_metric) if row is not None else None
        rows.append({"method": entry["label"], f"% params ({ours_name})": f"{entry['params %']:.2f}",
                     f"{metric} ({ours_name})": entry[metric], "ran on": entry.get("ran on", ""),
                     "paper's row": "" if row is None else f"{table_name(row['table'])}: {row['paper_method']}",
                     f"% params ({paper_name})": "" if number is None or number[1] is None else f"{number[1]:g}",
                     f"paper ({paper_name})": "" if number is None else f"{number[0]:.2f}"})
    return pd.DataFrame(rows)


def paper_value(table: str, method: str, task: str, metric: str, digits: int = 2) -> str:
    """One of the paper's numbers as text, for prose ('20.46'); a missing row is an error (a typo in a chapter)."""
    number = paper_number(table, method, task, metric)
    if number is None:
        raise KeyError(f"no {table} row {method!r} on {task} {metric} in {PAPER_CSV.name}")
    return f"{number[0]:.{digits}f}"


def paper_curves(figure: str, task: str, metric: str) -> pd.DataFrame:
    """A figure's curves from results.csv (methods named 'name size=N'): columns method, size, value."""
    df = paper_results(figure, task, metric)
    df = df.assign(size=df["method"].str.extract(r"size=(\d+)", expand=False).astype(int),
                   method=df["method"].str.replace(r" size=\d+", "", regex=True))
    return df[["method", "size", "value"]]


def paper_gap(table: str, task: str, metric: str, pct: float | None = None,
              full: str = "full fine-tuning") -> str:
    """The largest distance, in points, from the paper's full fine-tuning row down to its other rows of a table
    (those at `pct` % parameters, if given), e.g. how close the paper's methods come to full fine-tuning."""
    df = paper_results(table, task, metric)
    top = df[df["method"] == full]
    rest = df[df["method"] != full]
    if pct is not None:
        rest = rest[rest["tuned_params_pct"] == pct]
    if top.empty or rest.empty:
        raise KeyError(f"{table} has no {full!r} row or no other row on {task} {metric}")
    return f"{(top['value'].iloc[0] - rest['value']).max():.1f}"
