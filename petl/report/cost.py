"""What the book's grids cost on a CPU: every point charged from the CPU records of its kind."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from petl.report.selection import ROOT, runs_dir
from petl.runs import load_runs
from petl.train_config import task_spec


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




def protocol_cost(protocol_dir: str | os.PathLike | None = None, directory: str | os.PathLike | None = None
                  ) -> pd.DataFrame:
    """What the protocol's grids (book/protocol) still need, per grid file: the points to run (a stage-2 point that
    is one of its stage-1 sweep's points, as seed 0 at the paper's size, is not counted again), how many have a record, and an estimate of the
    rest's time on the GPU and on 2 CPU cores, run one after another: training scaled by steps and evaluation by
    the examples evaluated, from the records of the same task and model on that device (`_seconds_per_point`); a
    rough guide; '' where no record of the task ran there."""
    from petl.report.selection import grid_runs
    from petl.sweep import chosen_on_dev, grid_files, read_grid
    protocol_dir = Path(protocol_dir or ROOT / "book" / "protocol")
    runs = load_runs(Path(directory or runs_dir()))
    rows, grids = [], {}

    def read(grid: Path) -> list[dict]:                       # each sweep grid read once, not once per point
        if grid not in grids:
            grids[grid] = read_grid(grid)
        return grids[grid]

    for path in grid_files([protocol_dir]):
        points = read(path)
        counted = [p for p in points if not _is_sweep_run(p, path, read)]
        sel = grid_runs(str(path), directory=directory)
        done = {rid for rid in sel.runs["run_id"]} if not sel.runs.empty else set()
        sweeps = {path.parent / p["lr"]["best_on_dev"] for p in points if chosen_on_dev(p.get("lr"))}
        in_sweeps = {rid for sweep in sweeps for _, _, rid in grid_runs(str(sweep), directory=directory).planned}
        have = sum(1 for _, _, rid in sel.planned if isinstance(rid, str) and rid in done and rid not in in_sweeps)
        todo = len(counted) - have
        row = {"grid": path.name, "points": len(counted), "with a record": have}
        for device, label, unit in (("gpu", "GPU minutes left", 60), ("cpu", "CPU hours left", 3600)):
            each = [_seconds_per_point(runs, p, device) for p in counted]
            seconds = None if None in each else sum(each) / max(len(each), 1)    # the grid's mean point
            row[label] = "" if seconds is None else f"{todo * seconds / unit:.1f}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    total = {"grid": "the whole protocol", "points": frame["points"].sum(), "with a record": frame["with a record"].sum()}
    for label in ("GPU minutes left", "CPU hours left"):
        known = [float(v) for v in frame[label] if v != ""]
        total[label] = f"{sum(known):.1f}" + (" + grids without an estimate" if len(known) < len(frame) else "")
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def _is_sweep_run(point: dict, grid: Path, read=None) -> bool:
    """Whether a stage-2 point is one of its stage-1 sweep's runs: its lr is chosen on dev there and the sweep has
    a point equal to it in everything but the lr (seed 0 at the paper's size, typically). `read`: how a grid file
    is read (default `petl.sweep.read_grid`)."""
    from petl.sweep import chosen_on_dev, read_grid
    read = read or read_grid
    lr = point.get("lr")
    if not chosen_on_dev(lr):
        return False
    rest = {k: v for k, v in point.items() if k != "lr"}
    return any({k: v for k, v in p.items() if k != "lr"} == rest for p in read(grid.parent / lr["best_on_dev"]))


def _seconds_per_point(runs: pd.DataFrame, point: dict, device: str) -> float | None:
    """The point's wall time on `device` ('gpu' or 'cpu'), estimated from the complete records of its task and
    model there: their median training time per step times the point's steps, plus their median time per
    evaluated example times the point's evaluated examples (every dev evaluation and every test split at the
    point's sizes; a generated example counts once per beam, see `_evaluated`). Loading the model is folded into
    the evaluation time. Records closer to the point are preferred while any is left: those of its batch size,
    source length and bf16; of its kind (full fine-tuning or a method); that had the most threads (a run that
    shared the cores with another is slower). None without such records."""
    if runs.empty or "train_time_s" not in runs:
        return None
    gpu = runs["device.gpu"].fillna("").astype(str) != "" if "device.gpu" in runs else pd.Series(False, runs.index)
    same = runs[(runs["task"] == point["task"]) & (runs["model"] == point["model"])
                & (gpu if device == "gpu" else ~gpu) & (runs["status"] == "complete") & runs["train_time_s"].notna()]
    if same.empty:
        return None
    train = _resolved_train(point)
    same = _prefer(same, lambda f: (f["batch_size"] == train.batch_size)
                   & (f["max_source_length"] == train.max_source_length) & (f["bf16"].astype(str) == str(train.bf16)))
    same = _prefer(same, lambda f: (f["variant"] == "full") == (train.variant == "full"))
    if "device.torch_threads" in same:
        same = _prefer(same, lambda f: f["device.torch_threads"] == f["device.torch_threads"].max())
    spec = task_spec(point["task"])
    per_step = (same["train_time_s"] / same["steps"]).median()
    per_example = pd.Series([(r["wall_time_s"] - r["train_time_s"]) / max(_record_evaluated(r, spec), 1)
                             for _, r in same.iterrows()]).median()
    sizes = {s: n if cap is None else min(n, cap) for s, n, cap in
             [(s, spec.splits[s], train.max_eval_examples if s == "validation" else train.max_test_examples)
              for s in ("validation", "test", *spec.extra_splits)]}
    beams = train.num_beams or 1
    evaluated = _evaluated(spec, train.max_steps, train.eval_every, sizes.pop("validation"),
                           train.eval_num_beams or beams, sizes, beams)
    return per_step * train.max_steps + per_example * evaluated


def _prefer(frame: pd.DataFrame, condition) -> pd.DataFrame:
    """The rows of `frame` where `condition(frame)` holds, or all of them where it holds for none."""
    chosen = frame[condition(frame)]
    return chosen if not chosen.empty else frame


def _evaluated(spec, steps: int, eval_every: int, dev: int, dev_beams: int, tests: dict[str, int],
               test_beams: int) -> float:
    """The examples a run evaluates: `dev` at every evaluation (each `eval_every` steps and at the last step) and
    each test split once; for a generation task each counts once per beam (beam search keeps that many sequences)."""
    evaluations = steps // eval_every + (1 if steps % eval_every else 0)
    if spec.kind != "generation":
        dev_beams = test_beams = 1
    return evaluations * dev * dev_beams + sum(tests.values()) * test_beams


def _record_evaluated(row: pd.Series, spec) -> float:
    """`_evaluated` for a record (a row of `load_runs`), from the sizes it evaluated (its num_examples)."""
    def number(key, default=0):
        value = row.get(key)
        return default if value is None or pd.isna(value) else value
    beams = int(number("num_beams", 1)) or 1
    tests = {s: number(f"num_examples.{s}") for s in ("test", *spec.extra_splits)}
    return _evaluated(spec, int(row["steps"]), int(number("eval_every", row["steps"])),
                      number("num_examples.validation"), int(number("eval_num_beams", beams)) or beams, tests, beams)


def _resolved_train(point: dict):
    """The point's resolved training settings (a learning rate chosen on dev stands in as a number: the rate
    changes no cost)."""
    from petl.train_config import TrainConfig
    fields = {k: v for k, v in point.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    if isinstance(fields.get("lr"), dict):
        fields["lr"] = 1e-3
    return TrainConfig(**fields).resolved()
