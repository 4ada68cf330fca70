"""The one reader of the benchmark record format (runs/benchmarks/*.json, written by `python -m benchmarks.run`
and `benchmarks/gpu.sh`): the book's efficiency appendix and the benchmark's own summary table both read records
through the functions here.

A CPU record holds `machine`, `command`, `shapes` (per shape: `shape`, `timing` with `rounds`, `work`, `memory`,
`inference`) and `targets` (one row per target: shape, target, method, value, limit, clock, met, ci95, decided). A
GPU record (`kind: petl-benchmark-gpu`) of version 1 holds `device` and `batches` (per batch size: `timing`,
`memory_ratio_to_floor`); version 2 (`benchmarks/gpu.py`) holds `shapes` (per shape: `work`, `memory`, `timing`,
`ratios`, `inference`), `targets` (shape, target, method, value, ci95, limit, counted_ratio, time_ratio, verdict)
and `profiles`. The CPU tables below read CPU records only; gpu_v2_section reads the newest GPU record of version 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from petl.report.selection import runs_dir

#: Fewer rounds give no interval: with n rounds all on one side of a limit, a sign test reaches 95% only from
#: n = 6 (2 · 0.5^6 = 0.03), and a bootstrap of 3-5 values is little more than their range. benchmarks.measure
#: writes no interval under it; older records had them, and the book does not show those.
MIN_ROUNDS_FOR_INTERVAL = 6


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


def record_name(record: dict) -> str:
    return Path(record.get("_path", "?")).name


#: What the book says to run while no GPU record of version 2 exists (benchmarks/README.md, "GPU").
GPU_V2_COMMAND = ("bash scripts/gpu_wheels.sh --bench, then on the GPU machine (carry .whl): "
                  "PETL_GIT_COMMIT=<commit> OUT=$OUT bash benchmarks/gpu.sh; "
                  "copy $OUT/gpu-v2-*.json to runs/benchmarks/")


def is_gpu(record: dict) -> bool:
    return "batches" in record or record.get("kind") == "petl-benchmark-gpu"


def gpu_version(record: dict) -> int:
    """A GPU record's format version (the first records had none: 1)."""
    return int(record.get("version") or 1)


def has_intervals(record: dict) -> bool:
    """Whether a CPU record has bootstrap intervals (records before them are kept but not tabled)."""
    return is_gpu(record) or any(t.get("ci95") for t in record.get("targets", []))


def shape_rounds(record: dict, shape: str, part: str = "timing") -> int | None:
    """Rounds of a record's training-step timing ('timing') or inference ('inference') on one shape."""
    return record.get("shapes", {}).get(shape, {}).get(part, {}).get("rounds")


def _rounds(record: dict, target: dict) -> int | None:
    """How many rounds a timed target's ratio has (training step or inference), from its record."""
    part = "inference" if "inference" in target.get("target", "") else "timing"
    return shape_rounds(record, target.get("shape"), part)


def usable_interval(record: dict, target: dict):
    ci = target.get("ci95")
    rounds = _rounds(record, target)
    if not ci or None in ci or rounds is None or rounds < MIN_ROUNDS_FOR_INTERVAL:
        return None
    return ci


def interval_text(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci and None not in ci else "—"


def benchmark_verdict(target: dict, record: dict | None = None, loud: bool = False) -> str:
    """'met' / 'not met' by the median (the issue's test); 'within noise' where the 95% interval holds the limit;
    'no interval' under 6 rounds; the A/A control has no limit (its interval is the run's resolution). loud: 'NOT
    met' (the benchmark's terminal table)."""
    if target.get("limit") is None:
        return "control"
    verdict = {True: "met", False: "NOT met" if loud else "not met", None: "not measured"}[target.get("met")]
    if target.get("clock") == "memory" or target.get("value") is None:
        return verdict
    if record is not None and usable_interval(record, target) is None:
        return verdict + ", no interval (under 6 rounds)"
    return verdict + (", within noise" if target.get("decided") is False else "")


def work_ratio(record: dict, target: dict, counted: str = "") -> str:
    """The counted work behind a timed step target (ours / reference or ours / peer), where recorded: FLOPs, or
    with counted='elementwise_' the bytes the other ops read and write (records from 2026-11-29 on)."""
    work = record.get("shapes", {}).get(target.get("shape"), {}).get("work", {})
    kind = counted + ("ratio_to_peer" if "peft_" in target.get("target", "") else "ratio_to_reference")
    value = work.get(kind, {}).get(target.get("method")) if target.get("target", "").startswith(("step", "A/A")) else None
    return "—" if value is None else f"{value:.3f}"


def benchmark_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Per benchmark record: CPU records as their targets with measured ratios; GPU records per batch size as
    median step time, ratio to the floor (median of per-round paired ratios) and peak-memory ratio. Keys are the
    tables' captions."""
    tables = {}
    for record in records:
        name = record_name(record)
        if is_gpu(record):
            if gpu_version(record) >= 2:
                continue  # gpu_v2_section
            device = record.get("device", {}).get("name", "GPU")
            for batch, entry in record["batches"].items():
                timing = entry.get("timing", {})
                rows = [{"method": method, "step (s)": f"{step:.3f}",
                         "× floor": f"{timing.get('ratio_to_floor', {}).get(method, {}).get('median', 1.0):.2f}",
                         "peak memory × floor": f"{entry.get('memory_ratio_to_floor', {}).get(method, float('nan')):.2f}",
                         "tokens/s": f"{timing.get('tokens_per_s', {}).get(method, 0):,.0f}"}
                        for method, step in timing.get("median_step_s", {}).items()]
                if rows:
                    rounds = timing.get("rounds")
                    tables[f"{name} (GPU benchmark v1: {rounds} rounds, medians without intervals, too few to "
                           f"resolve a 10% difference): {device}, BART-large shape, batch {batch} × "
                           f"{entry.get('source_length')} source / {entry.get('target_length')} target tokens, "
                           "bf16 autocast"] = pd.DataFrame(rows)
            continue
        device = record.get("machine", {}).get("cpu", "")
        rows = [{"shape": t.get("shape"), "method": t.get("method"), "target": t.get("target"),
                 "measured": "—" if t.get("value") is None else f"{t['value']:.3f}",
                 "95% interval": interval_text(usable_interval(record, t)), "verdict": benchmark_verdict(t, record),
                 "FLOPs ×": work_ratio(record, t), "elementwise bytes ×": work_ratio(record, t, "elementwise_")}
                for t in record.get("targets", [])]
        if rows:
            rounds = ", ".join(f"{s}: {r.get('timing', {}).get('rounds', 0)} rounds"
                               for s, r in record.get("shapes", {}).items())
            tables[f"{name} ({device}, {rounds}; {record.get('command', '')})"] = pd.DataFrame(rows)
    return tables


def _most_rounds(records: list[dict], wanted) -> dict:
    """(shape, method) -> (rounds, record, target): per timed target that wanted(record, target) accepts and that
    has an interval, the one from the record with the most rounds of its shape (the first such on a tie)."""
    best: dict = {}
    for record in records:
        if is_gpu(record):
            continue
        for target in record.get("targets", []):
            if target.get("value") is None or usable_interval(record, target) is None \
                    or not wanted(record, target):
                continue
            rounds = shape_rounds(record, target["shape"])
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
                and work_ratio(record, target, "elementwise_") != "—")

    rows = []
    for (shape, method), (rounds, record, target) in sorted(_most_rounds(records, counted).items()):
        control = next((t for t in record["targets"] if t["shape"] == shape and t["method"] == "floor_again"), {})
        rows.append({"shape": shape, "method": method, "rounds": rounds, "time ×": f"{target['value']:.3f}",
                     "95% interval": interval_text(usable_interval(record, target)),
                     "A/A of the run": "—" if control.get("value") is None else f"{control['value']:.3f}",
                     "FLOPs ×": work_ratio(record, target),
                     "elementwise bytes ×": work_ratio(record, target, "elementwise_"),
                     "verdict": benchmark_verdict(target, record), "record": record_name(record)})
    return pd.DataFrame(rows, columns=["shape", "method", "rounds", "time ×", "95% interval", "A/A of the run",
                                       "FLOPs ×", "elementwise bytes ×", "verdict", "record"])


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
                     "time ×": f"{target['value']:.3f}", "95% interval": interval_text(usable_interval(record, target)),
                     "FLOPs ×": work_ratio(record, target), "verdict": benchmark_verdict(target, record),
                     "record": record_name(record)})
    return pd.DataFrame(rows, columns=["shape", "ours", "against", "rounds", "time ×", "95% interval", "FLOPs ×",
                                       "verdict", "record"])


def records_named(frame: pd.DataFrame) -> str:
    """'shape: record' for each shape of a benchmark_parity table (the table itself leaves the long names out)."""
    if frame.empty:
        return "none"
    pairs = frame[["shape", "record"]].drop_duplicates()
    return "; ".join(f"{shape}: {record}" for shape, record in pairs.itertuples(index=False))


def floor_ratios(records: list[dict]) -> dict[str, dict]:
    """Per shape, the training-step times over the floor of the CPU record that measured the most methods against
    it (partial re-runs hold a few; among equals the one with the most rounds, then the newest): {shape: {record,
    rounds, limit, methods, values, low, high}} with the 95% interval where the record has one."""
    cpu = [r for r in records if r.get("targets") and not is_gpu(r) and not r.get("machine", {}).get("gpu")]

    def floor_targets(record, shape):
        return [t for t in record["targets"] if t.get("shape") == shape and t.get("clock") == "wall_s"
                and t.get("target", "").startswith("step") and "x floor" in t["target"] and t.get("value") is not None]

    out = {}
    for shape in sorted({t["shape"] for r in cpu for t in r["targets"]}):
        record = max(cpu, key=lambda r: (len(floor_targets(r, shape)), shape_rounds(r, shape) or 0))
        rows = floor_targets(record, shape)
        values = [t["value"] for t in rows]
        intervals = [usable_interval(record, t) or [v, v] for v, t in zip(values, rows)]
        out[shape] = dict(record=record_name(record), rounds=shape_rounds(record, shape),
                          limit=rows[0]["limit"] if rows else None, methods=[t["method"] for t in rows],
                          values=values, low=[low for low, _ in intervals], high=[high for _, high in intervals])
    return out


def benchmark_figure(records: list[dict]):
    """Training-step time as a multiple of the floor, per method and shape (floor_ratios), or None."""
    import matplotlib.pyplot as plt
    shapes = floor_ratios(records)
    if not shapes:
        return None
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4), squeeze=False)
    for ax, (shape, data) in zip(axes[0], shapes.items()):
        values = data["values"]
        errors = [[v - low for v, low in zip(values, data["low"])], [high - v for v, high in zip(values, data["high"])]]
        ax.barh(data["methods"], values, xerr=errors, color="#4c72b0", capsize=2)
        ax.axvline(1.0, color="black", lw=1)
        if data["limit"] is not None:
            ax.axvline(data["limit"], color="red", ls="--", label=f"target {data['limit']}×")
            ax.legend(fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("training step time / floor's")
        ax.set_title(f"{shape}: {data['record']}, {data['rounds']} rounds", fontsize=9)
    return fig


def houlsby_traffic(records: list[dict], counted: pd.DataFrame, shape_name: str = "smollm2") -> dict | None:
    """What each sequential (Houlsby) adapter site adds to a step on `shape_name`, from the record that
    benchmark_counted chose: sites, the hidden-state tensor and the extra passes over it (elementwise bytes over
    sites × one float32 tensor). None without such a record."""
    rows = counted[(counted["shape"] == shape_name) & (counted["method"] == "houlsby")]
    if rows.empty:
        return None
    record = next(r for r in records if record_name(r) == rows["record"].iloc[0])
    entry = record["shapes"][shape_name]
    shape = entry["shape"]
    sites = 2 * shape["config"]["num_hidden_layers"]  # one adapter after attention, one after the FFN
    hidden = shape["batch"] * shape["length"] * shape["config"]["hidden_size"]
    traffic = entry["work"]["elementwise_bytes_per_step"]
    return dict(row=rows.iloc[0], sites=sites,
                hidden=f"{shape['batch']}×{shape['length']}×{shape['config']['hidden_size']}",
                passes=(traffic["houlsby"] - traffic["floor"]) / (sites * hidden * 4))


def mam_memory(records: list[dict], shape_name: str = "minilm") -> dict | None:
    """MAM's peak memory on `shape_name` from the newest record that has it, its AdamW bound and MAM without the
    prefix MLP: ratios to the floor, and the MLP's share in bytes (peak difference; values and two moments)."""
    def ratios_of(record):
        ratios = record.get("shapes", {}).get(shape_name, {}).get("memory", {}).get("ratio_to_floor", {})
        return ratios if "mam" in ratios and "adamw_state_bound" in ratios["mam"] and "mam_nomlp" in ratios else None

    with_bound = [r for r in records if not is_gpu(r) and ratios_of(r)]
    if not with_bound:
        return None
    newest = max(with_bound, key=lambda r: r.get("created", ""))
    ratios = ratios_of(newest)
    per_method = newest["shapes"][shape_name]["memory"]["per_method"]
    return dict(record=record_name(newest), mam=ratios["mam"]["with_weights"],
                bound=ratios["mam"]["adamw_state_bound"], nomlp=ratios["mam_nomlp"]["with_weights"],
                mlp_peak_bytes=per_method["mam"]["with_weights_bytes"] - per_method["mam_nomlp"]["with_weights_bytes"],
                mlp_state_bytes=3 * (per_method["mam"]["trainable_bytes"] - per_method["mam_nomlp"]["trainable_bytes"]))


def gpu_v2_records(records: list[dict]) -> list[dict]:
    """The GPU records of version 2 from a GPU (not --tiny CPU checks), newest first."""
    found = [r for r in records if is_gpu(r) and gpu_version(r) >= 2 and not r.get("tiny")]
    return sorted(found, key=lambda r: r.get("created", ""), reverse=True)


def _fmt(x, digits: int = 3) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"


def gpu_v2_table(record: dict) -> pd.DataFrame:
    """A version-2 GPU record's targets: the timed ratio, the counted FLOPs ratio it is divided by, the value
    judged (time over FLOPs) with its 95% interval, the limit, the verdict (pass / fail / undecided), the rounds,
    and the method's peak memory over the floor's."""
    rows = []
    for t in record.get("targets", []):
        memory = record.get("shapes", {}).get(t.get("shape"), {}).get("memory", {}).get("ratio_to_floor", {})
        rows.append({"shape": t.get("shape"), "method": t.get("method"), "target": t.get("target"),
                     "time ×": _fmt(t.get("time_ratio")), "FLOPs ×": _fmt(t.get("counted_ratio")),
                     "value": _fmt(t.get("value")), "95% interval": interval_text(t.get("ci95")),
                     "limit": _fmt(t.get("limit"), 2), "verdict": t.get("verdict"), "rounds": t.get("rounds"),
                     "peak memory × floor": _fmt(memory.get(t.get("method")), 2)})
    return pd.DataFrame(rows, columns=["shape", "method", "target", "time ×", "FLOPs ×", "value", "95% interval",
                                       "limit", "verdict", "rounds", "peak memory × floor"])


def gpu_v2_section(records: list[dict]) -> tuple[str, pd.DataFrame | None]:
    """The efficiency appendix's GPU section: a sentence on the newest version-2 GPU record (device, commit, per
    shape its rounds and whether every ratio reached its precision, the verdicts) and its gpu_v2_table; without
    one, the sentence says so and names the command (GPU_V2_COMMAND), and the table is None."""
    found = gpu_v2_records(records)
    if not found:
        return f"The v2 GPU benchmark has not run yet; command: {GPU_V2_COMMAND}.", None
    record = found[0]
    summary = record.get("summary", {})
    shapes = "; ".join(
        f"{key}: {summary.get('rounds', {}).get(key)} rounds, "
        + ("every ratio within ±{:.0%}".format(record.get("settings", {}).get("precision", 0.05))
           if summary.get("precision_met", {}).get(key) else f"stopped ({summary.get('stopped', {}).get(key)}) "
           "before every ratio reached its precision")
        for key in record.get("shapes", {}))
    verdicts = ", ".join(f"{n} {v}" for v, n in summary.get("verdicts", {}).items())
    commit = (record.get("git") or {}).get("commit") or "no commit recorded"
    state = "" if record.get("complete") else " It did not finish: what it measured before it stopped is shown."
    text = (f"{record_name(record)} ({record.get('device', {}).get('name', 'GPU')}, commit {str(commit)[:10]}, "
            f"{_fmt(record.get('wall_time_s'), 0)} s): {shapes}. Targets: {verdicts or 'none'}.{state}")
    return text, gpu_v2_table(record)
