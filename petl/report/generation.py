"""The generation grid of chapters 4-8 (book/grids-gpu/gen_xsum*.yaml: SmolLM2-135M on bbc-xsum at the paper's
presets, one seed on the GPU machine): its table beside the paper's XSum numbers, and its sentences."""

from __future__ import annotations

import pandas as pd

from petl.report.paper import paper_number, paper_row, table_name
from petl.report.prose import METRIC_LABELS, devices, relation
from petl.report.selection import GridRuns, baseline, pick, ran_on, summarize

#: The paper's XSum tables, most wanted first, for a generation run at the paper's own sizes: its row of the same
#: method, sizes and scale (paper.paper_row ranks exact sizes first, then this order).
GENERATION_TABLES = ("table6", "table3", "table5", "table12")


def _lead_for(gen: pd.DataFrame) -> tuple[int, dict | None]:
    """The number of test articles the generation runs were scored on, and lead-1's record on the same ones."""
    n = int(gen["num_examples.test"].iloc[0])
    return n, baseline(f"bbc-xsum-lead-{n}")


def generation_table(gen: GridRuns, order: list[str] | None = None) -> pd.DataFrame:
    """Our ROUGE (bbc-xsum test, and R-2 on the real XSum pairs) beside the paper's XSum ROUGE-2 for the same
    method and sizes, one row per run (in the order of the variants in `order`, else the grids'), then the lead-1
    baseline on the same articles."""
    runs = gen.runs
    if runs.empty:
        return pd.DataFrame()
    if order is not None:
        runs = runs.assign(_order=runs["variant"].map({v: i for i, v in enumerate(order)})).sort_values(
            "_order", kind="stable")
    rows = []
    for _, run in runs.iterrows():
        row = paper_row(run, GENERATION_TABLES)
        number = paper_number(row["table"], row["paper_method"], "xsum", "rouge2") if row is not None else None
        rows.append({"method": run["label"], "% params": f"{run['parameters.paper_pct']:.2f}",
                     "R-1": f"{run['test.rouge1']:.1f}", "R-2": f"{run['test.rouge2']:.2f}",
                     "R-L": f"{run['test.rougeL']:.1f}",
                     "R-2, real XSum": f"{run['test_xsum.rouge2']:.2f}" if pd.notna(run.get("test_xsum.rouge2"))
                     else "", "ran on": ran_on(run),
                     "paper's row": "" if row is None else f"{table_name(row['table'])}: {row['paper_method']}",
                     "paper % params": "" if number is None or number[1] is None else f"{number[1]:g}",
                     "paper R-2 (BART-large, XSum)": "" if number is None else f"{number[0]:.2f}"})
    n, lead = _lead_for(runs)
    if lead is not None:
        rows.append({"method": f"lead-1 baseline (no training; first {n} articles)", "% params": "0",
                     "R-1": f"{lead['test']['rouge1']:.1f}", "R-2": f"{lead['test']['rouge2']:.2f}",
                     "R-L": f"{lead['test']['rougeL']:.1f}",
                     "R-2, real XSum": f"{lead['test_xsum']['rouge2']:.2f}" if "test_xsum" in lead else ""})
    return pd.DataFrame(rows).fillna("")


def compare_generation(gen: GridRuns, a, b, metric: str = "rouge2") -> str:
    """`a` against `b` on the generation grid (variants, or {column: value} such as {"variant": "scaled_pa",
    "scale": "4"}), in words: one seed each. The sentence goes on with b's name."""
    table = summarize(gen.runs, metric)
    row_a, row_b = pick(table, a), pick(table, b)
    if row_a is None or row_b is None:
        return "not measured yet"
    return relation(row_a, row_b)


def generation_setting(gen: GridRuns) -> str:
    """The model, budget and device of the generation grid, in words."""
    runs = gen.runs
    if runs.empty:
        return "no generation run is complete yet"
    row = runs.iloc[0]
    return (f"{row['model']} on {row['task']}, {int(row['max_steps'])} steps of {int(row['batch_size'])} articles "
            f"({int(row['max_source_length'])}-token prompts), beam search {int(row['num_beams'])}, "
            f"{int(row['num_examples.test'])} test articles and {int(row.get('num_examples.test_xsum', 0))} real "
            f"XSum pairs, one seed per method; {devices(runs)}")


def generation_vs_lead(gen: GridRuns, metric: str = "rouge2") -> str:
    """How many generation-grid runs beat the lead-1 baseline on the same test articles, in words."""
    runs = gen.runs
    if runs.empty:
        return "no generation run is complete yet"
    n, lead = _lead_for(runs)
    if lead is None:
        return "the lead-1 baseline record is missing (run `python -m petl.baselines`)"
    base = lead["test"][metric]
    above = int((runs[f"test.{metric}"] > base).sum())
    lowest = runs[f"test.{metric}"].min()
    return (f"{above} of {len(runs)} runs are above the lead-1 baseline's {METRIC_LABELS[metric]} of {base:.2f} "
            f"on the same {n} articles (the lowest run scores {lowest:.2f})")
