"""What the book's chapters call: run records as tables beside the paper's numbers, and the plots.

The book never trains. Each chapter reads the complete run records in `runs/` (`petl.runs.load_runs`),
aggregates seeds as mean ± std, and puts them beside the paper's reported numbers (`data/paper/results.csv`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pandas as pd

from petl.runs import load_runs

ROOT = Path(__file__).resolve().parent.parent
PAPER_CSV = ROOT / "data" / "paper" / "results.csv"
METRIC_LABELS = {"accuracy": "accuracy (%)", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "rougeLsum": "ROUGE-Lsum", "bleu": "BLEU"}


def runs_dir() -> Path:
    """The runs folder the book reads: $PETL_RUNS_DIR, or runs/ in the repository."""
    return Path(os.environ.get("PETL_RUNS_DIR", ROOT / "runs"))


def book_runs(directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every complete run, with damaged records reported (named) and skipped; adds `size` and `label` columns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_runs(directory or runs_dir())
    for warning in caught:
        print(f"WARNING: {warning.message}")
    if df.empty:
        return df
    df = df.copy()
    df["size"] = [_size(row) for _, row in df.iterrows()]
    df["label"] = [variant_label(row) for _, row in df.iterrows()]
    return df


def _override(row, key):
    value = row.get(f"overrides.{key}")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _size(row) -> str:
    """The method's size in the paper's notation (l for prefix / prompt, r for adapters / LoRA)."""
    parts = []
    attn_mode, ffn_mode = row.get("petl.attn_mode"), row.get("petl.ffn_mode")
    if attn_mode in ("prefix", "prefix_nomlp", "prompt_tuning"):
        parts.append(f"l={int(row['petl.attn_bn'])}")
    elif attn_mode in ("adapter", "lora"):
        parts.append(f"r={int(row['petl.attn_bn'])}")
    if ffn_mode in ("adapter", "lora"):
        parts.append(f"r={int(row['petl.ffn_bn'])}" if not parts else f"r_ffn={int(row['petl.ffn_bn'])}")
    return ", ".join(parts)


def variant_label(row) -> str:
    """A readable name: the variant plus the sizes and scale that the run used."""
    label = str(row["variant"])
    size = _size(row)
    if size:
        label += f" ({size})"
    scalar = row.get("petl.ffn_adapter_scalar")
    if row.get("petl.ffn_mode") == "adapter" and scalar not in (None, 1, 1.0, "1.0"):
        label += f" s={scalar}" if scalar != "learnable_scalar" else " s=learned"
    if row.get("petl.ffn_mode") == "lora" or row.get("petl.attn_mode") == "lora":
        rank = row["petl.attn_bn"] if row.get("petl.attn_mode") == "lora" else row["petl.ffn_bn"]
        label += f" s={row['petl.lora_alpha'] / rank:g}"
    return label


def select(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows matching every column == value (a list means 'any of')."""
    if df.empty:
        return df
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        if column not in df:
            return df.iloc[0:0]
        mask &= df[column].isin(value) if isinstance(value, (list, tuple, set)) else df[column] == value
    return df[mask]


def summarize(df: pd.DataFrame, metric: str, by=("label",), split: str = "test") -> pd.DataFrame:
    """Mean ± std over seeds of `split.metric`, with the run count and the paper-convention % parameters."""
    column = f"{split}.{metric}"
    if df.empty or column not in df:
        return pd.DataFrame(columns=[*by, "params %", "mean", "std", "seeds", metric])
    grouped = df.groupby(list(by), sort=False)
    out = grouped.agg(**{"params %": ("parameters.paper_pct", "mean"), "mean": (column, "mean"),
                         "std": (column, "std"), "seeds": ("seed", "nunique")}).reset_index()
    out["std"] = out["std"].fillna(0.0)  # metrics are recorded on a 0-100 scale
    out[metric] = [f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}" for m, s, n in
                   zip(out["mean"], out["std"], out["seeds"])]
    return out


def paper_results(table: str | None = None, task: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The paper's reported numbers (He et al., ICLR 2022), as tidy rows."""
    df = pd.read_csv(PAPER_CSV)
    if table is not None:
        df = df[df["table"] == table]
    if task is not None:
        df = df[df["task"] == task]
    if metric is not None:
        df = df[df["metric"] == metric]
    return df.reset_index(drop=True)


def side_by_side(ours: pd.DataFrame, metric: str, paper: dict[str, tuple[str, str, str, str]],
                 ours_name: str, paper_name: str) -> pd.DataFrame:
    """Our mean ± std beside the paper's number for the same method.

    paper maps our label -> (table, task, metric, the paper's method name).
    """
    rows = []
    for _, row in ours.iterrows():
        entry = paper.get(row.iloc[0])
        value, pct = "", ""
        if entry is not None:
            table, task, paper_metric, method = entry
            found = paper_results(table, task, paper_metric)
            found = found[found["method"] == method]
            if not found.empty:
                value = f"{found['value'].iloc[0]:.2f}"
                pct = found["tuned_params_pct"].iloc[0]
                pct = "" if pd.isna(pct) else f"{pct:g}"
        rows.append({"method": row.iloc[0], f"% params ({ours_name})": f"{row['params %']:.2f}",
                     f"{metric} ({ours_name})": row[metric], f"% params ({paper_name})": pct,
                     f"paper ({paper_name})": value})
    return pd.DataFrame(rows)


def benchmark_records(directory: str | os.PathLike | None = None) -> list[dict]:
    """Benchmark run records (runs/benchmarks/*.json), newest first; damaged files are named and skipped."""
    folder = Path(directory or runs_dir()) / "benchmarks"
    records = []
    for path in sorted(folder.glob("*.json"), reverse=True):
        try:
            records.append(json.loads(path.read_text()) | {"_path": str(path)})
        except (OSError, json.JSONDecodeError) as error:
            print(f"WARNING: skipping damaged benchmark record {path}: {error}")
    return records


def errorbar_plot(ax, summary: pd.DataFrame, metric: str, title: str = "") -> None:
    """Horizontal bars of mean ± std per method."""
    ax.barh(summary.iloc[:, 0], summary["mean"], xerr=summary["std"], color="#4c72b0", alpha=0.85, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    low = (summary["mean"] - summary["std"]).min()
    high = (summary["mean"] + summary["std"]).max()
    pad = max(1.0, 0.1 * (high - low))
    ax.set_xlim(max(0.0, low - pad), high + pad)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def pareto_plot(ax, summary: pd.DataFrame, metric: str, title: str = "", log_x: bool = True) -> None:
    """% parameters (paper convention, log scale) against the metric, one point per method, with std bars."""
    for _, row in summary.iterrows():
        x = max(row["params %"], 1e-3)
        ax.errorbar(x, row["mean"], yerr=row["std"], fmt="o", capsize=3)
        ax.annotate(str(row.iloc[0]), (x, row["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("fine-tuned parameters (% of the backbone, paper's convention)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title)
    ax.grid(alpha=0.3)


def show(frame: pd.DataFrame, empty: str = "No complete runs for this table yet: `make book` runs them."):
    """Display a table without its index; an empty table is replaced by a sentence saying why."""
    from IPython.display import HTML, display
    if frame is None or frame.empty:
        display(HTML(f"<p><em>{empty}</em></p>"))
        return
    display(HTML(frame.to_html(index=False, na_rep="—")))


def baseline(name: str, directory: str | os.PathLike | None = None) -> dict | None:
    """A record written by `python -m petl.baselines` (runs/baselines/<name>.json), or None."""
    path = Path(directory or runs_dir()) / "baselines" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        print(f"WARNING: skipping damaged baseline record {path}: {error}")
        return None


def _by_variant(table: pd.DataFrame, variant: str):
    rows = table[table.iloc[:, 0].astype(str).str.split(" ").str[0] == variant]
    return None if rows.empty else rows.iloc[0]


def _relation(a, b, name_b: str = "") -> str:
    """'above X (+d)', 'below X (−d)' or 'within one standard deviation of X (±d)', noise being the larger std
    over seeds; without a name the sentence goes on with whatever the caller writes after it."""
    diff = a["mean"] - b["mean"]
    name = f" {name_b}" if name_b else ""
    if a["seeds"] < 2 or b["seeds"] < 2:
        word = "level with" if round(diff, 1) == 0 else "above" if diff > 0 else "below"
        return f"{word}{name} ({diff:+.1f}, single seed)"
    if abs(diff) <= max(a["std"], b["std"]):
        return f"within one standard deviation of{name} ({diff:+.1f})"
    return f"{'above' if diff > 0 else 'below'}{name} ({diff:+.1f})"


def compare(table: pd.DataFrame, variant: str, others: list[str]) -> str:
    """How `variant` stands against each of `others` in a summarize() table, as words with the differences."""
    a = _by_variant(table, variant)
    if a is None:
        return f"not measured yet ({variant} has no complete run)"
    parts = [_relation(a, b, other) for other in others if (b := _by_variant(table, other)) is not None]
    return ", ".join(parts) if parts else "not comparable yet (the other methods have no complete run)"


def compare_labels(table: pd.DataFrame, label_a: str | None, label_b: str | None) -> str:
    """Like compare, for two rows named by their full label."""
    rows = {str(r.iloc[0]): r for _, r in table.iterrows()}
    if label_a not in rows or label_b not in rows:
        return "not measured yet"
    return _relation(rows[label_a], rows[label_b])


def compare_at(summary: pd.DataFrame, variant_a: str, variant_b: str, size_a: str, size_b: str | None = None) -> str:
    """compare() for a (variant, size) summary: variant_a at size_a against variant_b at size_b."""
    def pick(variant, size):
        rows = summary[(summary["variant"] == variant) & (summary["size"].astype(str).str.contains(size, regex=False))]
        return None if rows.empty else rows.iloc[0]
    a, b = pick(variant_a, size_a), pick(variant_b, size_b or size_a)
    if a is None or b is None:
        return "not measured yet at that size"
    return _relation(a, b)


def compare_baseline(table: pd.DataFrame, metric: str, record: dict | None) -> str:
    """One sentence per method: its metric against a baseline record's."""
    if table.empty:
        return "No generation run is complete yet."
    if record is None:
        return "The baseline record is missing (run `python -m petl.baselines`)."
    base = record["test"][metric]
    parts = [f"{row.iloc[0]} reaches {METRIC_LABELS.get(metric, metric)} {row['mean']:.1f} "
             f"({'above' if row['mean'] > base else 'below'} the lead-1 baseline's {base:.1f})"
             for _, row in table.iterrows()]
    return "; ".join(parts) + "."


def benchmark_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Per benchmark record: CPU records as their targets with measured ratios; GPU records per batch size as
    median step time, ratio to the floor (median of per-round paired ratios) and peak-memory ratio."""
    tables = {}
    for record in records:
        name = Path(record["_path"]).name
        if "batches" in record:  # the GPU record at the paper's shape
            device = record.get("device", {}).get("name", "GPU")
            for batch, entry in record["batches"].items():
                timing = entry.get("timing", {})
                rows = [{"method": method, "step (s)": f"{step:.3f}",
                         "× floor": f"{timing.get('ratio_to_floor', {}).get(method, {}).get('median', 1.0):.2f}",
                         "peak memory × floor": f"{entry.get('memory_ratio_to_floor', {}).get(method, float('nan')):.2f}",
                         "tokens/s": f"{timing.get('tokens_per_s', {}).get(method, 0):,.0f}"}
                        for method, step in timing.get("median_step_s", {}).items()]
                if rows:
                    tables[f"{name}: {device}, BART-large shape, batch {batch} × {entry.get('source_length')} "
                           f"source / {entry.get('target_length')} target tokens, bf16 autocast"] = pd.DataFrame(rows)
            continue
        device = record.get("machine", {}).get("cpu", "")
        rows = [{"shape": t.get("shape"), "method": t.get("method"), "target": t.get("target"),
                 "measured": "—" if t.get("value") is None else f"{t['value']:.3f}",
                 "95% interval": _interval(_usable_interval(record, t)), "verdict": benchmark_verdict(t, record),
                 "FLOPs ×": _work_ratio(record, t), "elementwise bytes ×": _work_ratio(record, t, "elementwise_")}
                for t in record.get("targets", [])]
        if rows:
            rounds = ", ".join(f"{s}: {r.get('timing', {}).get('rounds', 0)} rounds"
                               for s, r in record.get("shapes", {}).items())
            tables[f"{name} ({device}, {rounds}; {record.get('command', '')})"] = pd.DataFrame(rows)
    return tables


def _interval(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci and None not in ci else "—"


#: Intervals of fewer rounds are not shown (benchmarks.measure.MIN_ROUNDS_FOR_INTERVAL; older records had them).
MIN_ROUNDS_FOR_INTERVAL = 6


def _shape_rounds(record: dict, shape: str, part: str = "timing") -> int | None:
    """Rounds of a record's training-step timing ('timing') or inference ('inference') on one shape."""
    return record.get("shapes", {}).get(shape, {}).get(part, {}).get("rounds")


def _rounds(record: dict, target: dict) -> int | None:
    """How many rounds a timed target's ratio has (training step or inference), from its record."""
    part = "inference" if "inference" in target.get("target", "") else "timing"
    return _shape_rounds(record, target.get("shape"), part)


def _usable_interval(record: dict, target: dict):
    ci = target.get("ci95")
    rounds = _rounds(record, target)
    if not ci or None in ci or rounds is None or rounds < MIN_ROUNDS_FOR_INTERVAL:
        return None
    return ci


def benchmark_verdict(target: dict, record: dict | None = None) -> str:
    """'met' / 'not met' by the median (the issue's test); 'within noise' where the 95% interval holds the limit;
    'no interval' under 6 rounds; the A/A control has no limit (its interval is the run's resolution)."""
    if target.get("limit") is None:
        return "control"
    verdict = {True: "met", False: "not met", None: "not measured"}[target.get("met")]
    if target.get("clock") == "memory" or target.get("value") is None:
        return verdict
    if record is not None and _usable_interval(record, target) is None:
        return verdict + ", no interval (under 6 rounds)"
    return verdict + (", within noise" if target.get("decided") is False else "")


def _work_ratio(record: dict, target: dict, counted: str = "") -> str:
    """The counted work behind a timed step target (ours / reference or ours / peer), where recorded: FLOPs, or
    with counted='elementwise_' the bytes the other ops read and write (records from 2026-11-29 on)."""
    work = record.get("shapes", {}).get(target.get("shape"), {}).get("work", {})
    kind = counted + ("ratio_to_peer" if "peft_" in target.get("target", "") else "ratio_to_reference")
    value = work.get(kind, {}).get(target.get("method")) if target.get("target", "").startswith(("step", "A/A")) else None
    return "—" if value is None else f"{value:.3f}"


def _most_rounds(records: list[dict], wanted) -> dict:
    """(shape, method) -> (rounds, record, target): per timed target that wanted(record, target) accepts and that
    has an interval, the one from the record with the most rounds of its shape (the first such on a tie)."""
    best: dict = {}
    for record in records:
        for target in record.get("targets", []):
            if target.get("value") is None or _usable_interval(record, target) is None \
                    or not wanted(record, target):
                continue
            rounds = _shape_rounds(record, target["shape"])
            key = (target["shape"], target["method"])
            if key not in best or rounds > best[key][0]:
                best[key] = (rounds, record, target)
    return best


def benchmark_counted(records: list[dict]) -> pd.DataFrame:
    """Each method's step time against its floor beside the work it counts (FLOPs and elementwise bytes, as
    multiples of the floor's), per shape, from the record with the most rounds of it that counts both; with
    that run's A/A control, the resolution the time ratio has to be read against."""
    def counted(record, target):
        return (target["target"].startswith("step") and "peft_" not in target["target"]
                and _work_ratio(record, target, "elementwise_") != "—")

    rows = []
    for (shape, method), (rounds, record, target) in sorted(_most_rounds(records, counted).items()):
        control = next((t for t in record["targets"] if t["shape"] == shape and t["method"] == "floor_again"), {})
        rows.append({"shape": shape, "method": method, "rounds": rounds, "time ×": f"{target['value']:.3f}",
                     "95% interval": _interval(_usable_interval(record, target)),
                     "A/A of the run": "—" if control.get("value") is None else f"{control['value']:.3f}",
                     "FLOPs ×": _work_ratio(record, target),
                     "elementwise bytes ×": _work_ratio(record, target, "elementwise_"),
                     "verdict": benchmark_verdict(target, record), "record": Path(record["_path"]).name})
    return pd.DataFrame(rows, columns=["shape", "method", "rounds", "time ×", "95% interval", "A/A of the run",
                                       "FLOPs ×", "elementwise bytes ×", "verdict", "record"])


def grid_cost_on_cpu(runs: pd.DataFrame, grid_dir: str | os.PathLike | None = None,
                     timing_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The CPU time of every book grid, run one point after another, with a total row.

    Each point costs the median wall time of the CPU records of the same task, model, budget (max_steps) and kind
    (full fine-tuning or a method): the timing reruns of sample grid points in runs/cpu-timing (`python -m petl
    sweep benchmarks/grid_timing --runs-dir runs/cpu-timing`, run on a quiet machine) where they have one, else
    the records in runs/ that ran on a CPU. A point with neither is charged the full fine-tuning run of its task,
    which costs more than any method's (a method still back-propagates through the frozen network but computes
    no weight gradients for it)."""
    from petl.sweep import grid_files, read_grid
    grid_dir = Path(grid_dir or ROOT / "book" / "grids")
    timing = _timing_runs(timing_dir)
    on_cpu = [f[f["device.device"] == "cpu"] for f in (timing, runs) if "device.device" in f]
    rows, total = [], [0, 0, 0, 0, 0.0]
    for path in grid_files([grid_dir]):
        points = read_grid(path)
        seconds, timed, bounded, unknown = 0.0, 0, 0, 0
        for point in points:
            is_full = point["variant"] == "full"
            same_kind = full = pd.DataFrame()
            for cpu in on_cpu:  # the timing reruns first
                same = cpu[(cpu["task"] == point["task"]) & (cpu["model"] == point["model"])
                           & (cpu["max_steps"] == point.get("max_steps"))]
                if same_kind.empty:
                    same_kind = same[(same["variant"] == "full") == is_full]
                if full.empty:
                    full = same[same["variant"] == "full"]
            if not same_kind.empty:
                seconds, timed = seconds + same_kind["wall_time_s"].median(), timed + 1
            elif not full.empty:
                seconds, bounded = seconds + full["wall_time_s"].median(), bounded + 1
            else:
                unknown += 1
        for i, v in enumerate((len(points), timed, bounded, unknown, seconds)):
            total[i] += v
        rows.append((path.name, len(points), timed, bounded, unknown, seconds))
    rows.append(("all book grids", *total))
    return pd.DataFrame([{"grid": g, "points": n, "timed by a CPU record of the same kind": t,
                          "charged a full fine-tuning run": b, "no CPU record of the task": u,
                          "CPU hours": f"{s / 3600:.2f}" + (" + untimed points" if u else "")}
                         for g, n, t, b, u, s in rows])


def _timing_runs(timing_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The CPU timing reruns of book-grid points (runs/cpu-timing), or an empty frame."""
    timing_dir = Path(timing_dir or runs_dir() / "cpu-timing")
    return load_runs(timing_dir) if timing_dir.is_dir() else pd.DataFrame()


def cpu_timing_summary(timing_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The CPU timing reruns (runs/cpu-timing): wall and training time of each, and its threads."""
    df = _timing_runs(timing_dir)
    if df.empty:
        return df
    columns = ["task", "variant", "max_steps", "wall_time_s", "train_time_s", "device.torch_threads"]
    return df[[c for c in columns if c in df]].sort_values(["task", "variant"]).reset_index(drop=True)


def benchmark_parity(records: list[dict]) -> pd.DataFrame:
    """Ours against PEFT on the same method, and the A/A control, per shape: from the newest record (with
    intervals) that has the most rounds of the comparison. Each row is timed (median of per-round ratios and
    its 95% interval) and counted (FLOPs of one step, exact)."""
    def peer_or_control(record, target):
        return "peft_" in target["target"] or target.get("method") == "floor_again"

    rows = []
    for (shape, method), (rounds, record, target) in sorted(_most_rounds(records, peer_or_control).items()):
        versus = target["target"].split("x ")[-1] if target.get("limit") is not None else "floor"
        rows.append({"shape": shape, "ours": method, "against": versus, "rounds": rounds,
                     "time ×": f"{target['value']:.3f}", "95% interval": _interval(_usable_interval(record, target)),
                     "FLOPs ×": _work_ratio(record, target), "verdict": benchmark_verdict(target, record),
                     "record": Path(record["_path"]).name})
    return pd.DataFrame(rows, columns=["shape", "ours", "against", "rounds", "time ×", "95% interval", "FLOPs ×",
                                       "verdict", "record"])


def records_named(frame: pd.DataFrame) -> str:
    """'shape: record' for each shape of a benchmark_parity table (the table itself leaves the long names out)."""
    if frame.empty:
        return "none"
    pairs = frame[["shape", "record"]].drop_duplicates()
    return "; ".join(f"{shape}: {record}" for shape, record in pairs.itertuples(index=False))


def benchmark_plot(records: list[dict]) -> None:
    """Training-step time as a multiple of the floor, per method and shape, from the newest CPU record."""
    import matplotlib.pyplot as plt
    cpu = [r for r in records if r.get("targets") and not r.get("machine", {}).get("gpu")]
    if not cpu:
        print("No CPU benchmark record yet: run `python -m benchmarks.run`.")
        return
    # Per shape, the record that measured the most methods against the floor (partial re-runs hold a few);
    # among equals, the one with the most rounds, then the newest.
    def floor_targets(record, shape):
        return [t for t in record["targets"] if t.get("shape") == shape and t.get("clock") == "wall_s"
                and t.get("target", "").startswith("step") and "x floor" in t["target"] and t.get("value") is not None]
    shapes = sorted({t["shape"] for r in cpu for t in r["targets"]})
    chosen = {shape: max(cpu, key=lambda r: (len(floor_targets(r, shape)), _shape_rounds(r, shape) or 0))
              for shape in shapes}
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        record = chosen[shape]
        rows = floor_targets(record, shape)
        values = [t["value"] for t in rows]
        # The 95% bootstrap interval of each median where the record has one (6 rounds or more).
        intervals = [_usable_interval(record, t) or [v, v] for v, t in zip(values, rows)]
        errors = [[v - low for v, (low, _) in zip(values, intervals)], [high - v for v, (_, high) in zip(values, intervals)]]
        ax.barh([t["method"] for t in rows], values, xerr=errors, color="#4c72b0", capsize=2)
        ax.axvline(1.0, color="black", lw=1)
        ax.axvline(rows[0]["limit"], color="red", ls="--", label=f"target {rows[0]['limit']}x")
        ax.invert_yaxis()
        ax.set_xlabel("training step time / floor (median of paired ratios, 95% interval)")
        rounds = _shape_rounds(record, shape)
        ax.set_title(f"{shape}: {Path(record['_path']).name}, {rounds} rounds", fontsize=9)
        ax.legend()
    plt.tight_layout()
    plt.show()


def stuck_at_majority(table: pd.DataFrame, task: str, tolerance: float = 0.5) -> str:
    """Which methods of a summarize() table never left the majority-class accuracy (runs/baselines)."""
    record = baseline(f"{task}-majority")
    if record is None or table.empty:
        return "no method (the majority-class record is missing)"
    level = record["test"]["accuracy"]
    names = [str(r.iloc[0]) for _, r in table.iterrows() if abs(r["mean"] - level) <= tolerance and r["std"] <= tolerance]
    return (", ".join(names) if names else "no method") + f" (the majority class scores {level:.1f})"


def devices(frame: pd.DataFrame) -> str:
    """Where the runs of a table ran, e.g. '21 on NVIDIA H200, 2 on cpu'."""
    if frame.empty or "device.device" not in frame:
        return "no runs"
    names = frame.get("device.gpu", pd.Series(index=frame.index, dtype=object)).fillna(frame["device.device"])
    return ", ".join(f"{n} on {name}" for name, n in names.value_counts().items())


# --------------------------------------------------------------------------------------------------
# Generation (book/grids-gpu: SmolLM2-135M on bbc-xsum, the paper's presets, one seed on the GPU machine)
# --------------------------------------------------------------------------------------------------

#: Which runs are the book's generation grid.
GENERATION_GRID = dict(task="bbc-xsum", model="smollm2-135m", max_steps=400)

#: Our variant (and FFN adapter scale) -> the paper's row with the same method and sizes on XSum.
PAPER_XSUM = {
    ("full", None): ("table6", "full fine-tuning (paper's run)"),
    ("prefix", None): ("table6", "prefix tuning l=200"),
    ("lora", None): ("table12", "LoRA attn r=200"),
    ("lora_ffn", None): ("table6", "LoRA ffn r=102"),
    ("sa_attn", None): ("table3", "sequential adapter attn r=200"),
    ("pa_attn", None): ("table3", "parallel adapter attn r=200"),
    ("sa_ffn", None): ("table3", "sequential adapter ffn r=200"),
    ("pa_ffn", None): ("table3", "parallel adapter ffn r=200"),
    ("scaled_pa", 4.0): ("table5", "scaled parallel adapter ffn s=4"),
    ("scaled_pa", 1.0): ("table5", "parallel adapter ffn"),
    ("mam", None): ("table6", "MAM adapter (prefix l=30 + scaled parallel adapter ffn r=512)"),
    ("prefix_lora_ffn", None): ("table6", "prefix l=30 + LoRA ffn r=102"),
    ("pa_attn_pa_ffn", None): ("table6", "parallel adapter attn r=30 + parallel adapter ffn r=512"),
}


def generation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The complete runs of the generation grid (book/grids-gpu/gen_xsum*.yaml)."""
    return select(runs, **GENERATION_GRID)


def _paper_xsum(row) -> tuple[str, str] | None:
    scale = row.get("petl.ffn_adapter_scalar") if row["variant"] == "scaled_pa" else None
    try:
        scale = None if scale is None else float(scale)
    except (TypeError, ValueError):
        return None
    return PAPER_XSUM.get((row["variant"], scale))


def _lead_for(gen: pd.DataFrame) -> tuple[int, dict | None]:
    """The number of test articles the generation runs were scored on, and lead-1's record on the same ones."""
    n = int(gen["num_examples.test"].iloc[0])
    return n, baseline(f"bbc-xsum-lead-{n}")


def generation_table(runs: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Our ROUGE (bbc-xsum test, and R-2 on the real XSum pairs) beside the paper's XSum ROUGE-2 for the same
    method, one row per run label in the order of `variants`, then the lead-1 baseline on the same articles."""
    gen = generation_runs(runs)
    gen = gen[gen["variant"].isin(variants)] if not gen.empty else gen
    if gen.empty:
        return pd.DataFrame()
    gen = gen.assign(order=gen["variant"].map({v: i for i, v in enumerate(variants)})).sort_values(
        ["order", "label"])
    rows = []
    for _, row in gen.iterrows():
        paper = _paper_xsum(row)
        found = paper_results(paper[0], "xsum", "rouge2") if paper else pd.DataFrame()
        found = found[found["method"] == paper[1]] if paper else found
        rows.append({"method": row["label"], "% params": f"{row['parameters.paper_pct']:.2f}",
                     "R-1": f"{row['test.rouge1']:.1f}", "R-2": f"{row['test.rouge2']:.2f}",
                     "R-L": f"{row['test.rougeL']:.1f}",
                     "R-2, real XSum": f"{row['test_xsum.rouge2']:.2f}" if pd.notna(row.get("test_xsum.rouge2"))
                     else "",
                     "paper's table": paper[0].replace("table", "Table ") if paper else "",
                     "paper % params": "" if found.empty or pd.isna(found["tuned_params_pct"].iloc[0])
                     else f"{found['tuned_params_pct'].iloc[0]:g}",
                     "paper R-2 (BART-large, XSum)": "" if found.empty else f"{found['value'].iloc[0]:.2f}"})
    n, lead = _lead_for(gen)
    if lead is not None:
        rows.append({"method": f"lead-1 baseline (no training; first {n} articles)", "% params": "0",
                     "R-1": f"{lead['test']['rouge1']:.1f}", "R-2": f"{lead['test']['rouge2']:.2f}",
                     "R-L": f"{lead['test']['rougeL']:.1f}",
                     "R-2, real XSum": f"{lead['test_xsum']['rouge2']:.2f}" if "test_xsum" in lead else ""})
    return pd.DataFrame(rows).fillna("")


def compare_generation(runs: pd.DataFrame, a: str, b: str, metric: str = "rouge2") -> str:
    """`a` against `b` on the generation grid (run labels or bare variant names), in words: one seed each."""
    table = summarize(generation_runs(runs), metric)
    if table.empty:
        return "not measured yet"
    rows = {str(r["label"]): r for _, r in table.iterrows()}
    pick = {name: rows.get(name, _by_variant(table, name)) for name in (a, b)}
    if pick[a] is None or pick[b] is None:
        return "not measured yet"
    return _relation(pick[a], pick[b])


def generation_setting(runs: pd.DataFrame) -> str:
    """The model, budget and device of the generation grid, in words."""
    gen = generation_runs(runs)
    if gen.empty:
        return "no generation runs yet"
    row = gen.iloc[0]
    return (f"SmolLM2-135M on bbc-xsum, {int(row['max_steps'])} steps of {int(row['batch_size'])} articles "
            f"({int(row['max_source_length'])}-token prompts), beam search {int(row['num_beams'])}, "
            f"{int(row['num_examples.test'])} test articles and {int(row.get('num_examples.test_xsum', 0))} real "
            f"XSum pairs, one seed per method; {devices(gen)}")


def generation_vs_lead(runs: pd.DataFrame, metric: str = "rouge2") -> str:
    """How many generation-grid runs beat the lead-1 baseline on the same test articles, in words."""
    gen = generation_runs(runs)
    if gen.empty:
        return "no generation run is complete yet"
    n, lead = _lead_for(gen)
    if lead is None:
        return "the lead-1 baseline record is missing (run `python -m petl.baselines`)"
    base = lead["test"][metric]
    above = int((gen[f"test.{metric}"] > base).sum())
    lowest = gen[f"test.{metric}"].min()
    return (f"{above} of {len(gen)} runs are above the lead-1 baseline's {METRIC_LABELS[metric]} of {base:.2f} "
            f"on the same {n} articles (the lowest run scores {lowest:.2f})")


def reference_agreement(path: str | os.PathLike | None = None) -> tuple[dict | None, pd.DataFrame]:
    """The record of scripts/reference/agreement.py and one row per combination: the preset that runs it, the
    reference's options, and the largest difference from the reference in float64 over its architectures,
    per mode (eval; train with dropout)."""
    path = Path(path) if path is not None else runs_dir() / "reference" / "agreement.json"
    if not path.is_file():
        return None, pd.DataFrame()
    record = json.loads(path.read_text())
    rows = {}
    for r in record["rows"]:
        row = rows.setdefault(r["combo"], {
            "combination": r["combo"], "petl preset": r["preset"] or "(options only)", "what": r["what"],
            "reference options": ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "(none)",
            "architectures": set(), "eval: max |Δ| logits": 0.0, "eval: max |Δ| gradients": 0.0,
            "train: max |Δ| logits": 0.0, "train: max |Δ| gradients": 0.0, "agrees": True,
            "documented difference": ""})
        row["architectures"].add(r["arch"])
        if r["documented_difference"]:
            row["documented difference"] = f"{r['arch']}: {r['documented_difference']}"
        row[f"{r['mode']}: max |Δ| logits"] = max(row[f"{r['mode']}: max |Δ| logits"], r["max_abs"]["logits"])
        row[f"{r['mode']}: max |Δ| gradients"] = max(row[f"{r['mode']}: max |Δ| gradients"],
                                                     r["max_abs"]["gradients"])
        row["agrees"] = row["agrees"] and r["agrees"]
    table = pd.DataFrame(list(rows.values()))
    table["architectures"] = table["architectures"].map(lambda a: ", ".join(sorted(a)))
    return record, table
