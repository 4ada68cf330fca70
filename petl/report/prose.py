"""Sentences for the chapters' prose, computed from summaries (glued into the text, never typed)."""

from __future__ import annotations

import pandas as pd

from petl.report.selection import baseline, pick, ran_on

METRIC_LABELS = {"accuracy": "accuracy (%)", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "rougeLsum": "ROUGE-Lsum", "bleu": "BLEU"}


def relation(a, b, name_b: str = "") -> str:
    """'above X (+d)', 'below X (−d)' or 'within one standard deviation of X (+d)', noise being the larger std
    over seeds; without a name the sentence goes on with whatever the caller writes after it."""
    diff = a["mean"] - b["mean"]
    name = f" {name_b}" if name_b else ""
    if a["seeds"] < 2 or b["seeds"] < 2:
        word = "level with" if round(diff, 1) == 0 else "above" if diff > 0 else "below"
        return f"{word}{name} ({diff:+.1f}, single seed)"
    if abs(diff) <= max(a["std"], b["std"]):
        return f"within one standard deviation of{name} ({diff:+.1f})"
    return f"{'above' if diff > 0 else 'below'}{name} ({diff:+.1f})"


def _name(which) -> str:
    return which if isinstance(which, str) else " ".join(str(v) for v in dict(which).values())


def compare(table: pd.DataFrame, which, others: list) -> str:
    """How one row of a summary stands against each of `others`, in words with the differences. Rows are named
    by variant or by {column: value} (see selection.pick); a variant given as a string is named in the text."""
    a = pick(table, which)
    if a is None:
        return f"not measured yet ({_name(which)} has no complete run)"
    parts = [relation(a, b, _name(other)) for other in others if (b := pick(table, other)) is not None]
    return ", ".join(parts) if parts else "not comparable yet (the other methods have no complete run)"


def versus(table: pd.DataFrame, a, b) -> str:
    """`a` against `b` (variants or {column: value}), the sentence going on with b's name, or 'not measured yet'."""
    row_a, row_b = pick(table, a), pick(table, b)
    if row_a is None or row_b is None:
        return "not measured yet"
    return relation(row_a, row_b)


def spread(table: pd.DataFrame) -> str:
    """The distance between the best and the worst mean of a summary, in points."""
    return "not measured yet" if table.empty else f"{table['mean'].max() - table['mean'].min():.1f}"


def best(table: pd.DataFrame) -> str:
    """The label of the summary's best mean."""
    return "not measured yet" if table.empty else str(table.sort_values("mean").iloc[-1]["label"])


def largest_std(table: pd.DataFrame) -> str:
    return "—" if table.empty else f"{table['std'].max():.1f}"


def _seeds_at(row, level: float, tolerance: float) -> int:
    """How many of a summary row's seeds score the majority class's accuracy (within `tolerance`)."""
    values = row["values"] if isinstance(row.get("values"), list) else [row["mean"]]
    return sum(abs(v - level) <= tolerance for v in values)


def stuck_at_majority(table: pd.DataFrame, task: str, tolerance: float = 0.5) -> str:
    """Which methods of a summary sit at the majority-class accuracy (runs/baselines) in some seed: the name alone
    where every seed does, 'name (k of n seeds)' where only some do."""
    record = baseline(f"{task}-majority")
    if record is None or table.empty:
        return "no method (the majority-class record is missing)"
    level = record["test"]["accuracy"]
    names = []
    for _, row in table.iterrows():
        stuck, seeds = _seeds_at(row, level, tolerance), len(row["values"]) if isinstance(row.get("values"), list) \
            else 1
        if stuck:
            names.append(str(row["label"]) + ("" if stuck == seeds else f" ({stuck} of {seeds} seeds)"))
    return (", ".join(names) if names else "no method") + f" (the majority class scores {level:.1f})"


def compare_baseline(table: pd.DataFrame, metric: str, record: dict | None) -> str:
    """One sentence per method: its metric against a baseline record's."""
    if table.empty:
        return "No generation run is complete yet."
    if record is None:
        return "The baseline record is missing (run `python -m petl.baselines`)."
    base = record["test"][metric]
    parts = [f"{row['label']} reaches {METRIC_LABELS.get(metric, metric)} {row['mean']:.1f} "
             f"({'above' if row['mean'] > base else 'below'} the lead-1 baseline's {base:.1f})"
             for _, row in table.iterrows()]
    return "; ".join(parts) + "."


def devices(frame: pd.DataFrame) -> str:
    """Where and in which precision the runs of a table ran, e.g. '21 on NVIDIA H200, bf16; 2 on cpu, fp32'."""
    if frame.empty or "device.device" not in frame:
        return "no runs"
    return "; ".join(f"{n} on {where}" for where, n in frame.apply(ran_on, axis=1).value_counts().items())


def below(value: float, bound: float = 1e-6) -> str:
    """A float32 round-off difference as a statement that does not change from one rebuild to the next:
    '0' when exact, 'below 1e-06' under the bound, else the value to two figures."""
    if value == 0:
        return "0"
    return f"below {bound:.0e}" if abs(value) < bound else f"{value:.1e}"


def _one(runs: pd.DataFrame, column: str):
    values = runs[column].dropna().unique() if column in runs else []
    return values[0] if len(values) == 1 else None


def setting(sel) -> str:
    """The budget of a selection's runs, from their records: '100 optimizer steps of 32 examples (0.30 of an
    epoch), 3 seeds per method'. Values that differ between runs are given as ranges."""
    runs = sel.runs
    if runs.empty:
        return f"no run yet ({sel.pending()})"

    def span(column, fmt="{:g}"):
        values = sorted(runs[column].dropna().unique())
        return fmt.format(values[0]) if len(values) == 1 else f"{fmt.format(values[0])}-{fmt.format(values[-1])}"

    epochs = runs["max_steps"] * runs["batch_size"] / runs["num_examples.train"]
    seeds = runs.groupby("label")["seed"].nunique()
    seed_text = (f"{seeds.iloc[0]} seed{'s' if seeds.iloc[0] > 1 else ''} per method" if seeds.nunique() == 1
                 else f"{seeds.min()} to {seeds.max()} seeds per method")
    return (f"{span('max_steps', '{:,.0f}')} optimizer steps of {span('batch_size', '{:.0f}')} examples "
            f"({span_values(epochs)} of an epoch), {seed_text}")


def span_values(values: pd.Series, fmt: str = "{:.2f}") -> str:
    low, high = values.min(), values.max()
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def backbone(sel) -> str:
    """The size of the runs' pretrained model, '22.7M parameters' (the parameter report of their records)."""
    runs = sel.runs
    if runs.empty or "parameters.backbone" not in runs:
        return "its"
    return f"{span_values(runs['parameters.backbone'] / 1e6, '{:.1f}')}M parameters"


def majority_verdict(table: pd.DataFrame, task: str, tolerance: float = 0.5) -> str:
    """'none of the n methods left the majority class' / 'k of n methods left the majority class in every seed'
    (see stuck_at_majority: a method with one seed at the majority has not left it)."""
    record = baseline(f"{task}-majority")
    if record is None or table.empty:
        return "the majority-class record is missing"
    level = record["test"]["accuracy"]
    left = sum(_seeds_at(r, level, tolerance) == 0 for _, r in table.iterrows())
    if left == 0:
        return f"none of the {len(table)} methods left the majority class in every seed"
    return f"{left} of the {len(table)} methods left the majority class in every seed"


def rank_of(table: pd.DataFrame, which) -> str:
    """Where one row's mean stands among the others: 'above every other method', 'below every other method', or
    'above k of the n other methods'."""
    row = pick(table, which)
    if row is None or len(table) < 2:
        return "not measured against the others yet"
    others = table[table["label"] != row["label"]]
    above = int((row["mean"] > others["mean"]).sum())
    if above == len(others):
        return f"above every other method ({len(others)})"
    if above == 0:
        return f"below every other method ({len(others)})"
    return f"above {above} of the {len(others)} other methods"
