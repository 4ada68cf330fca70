"""What the book's grids cost on a CPU: every point charged from the CPU records of its kind."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from petl.report.selection import ROOT, runs_dir
from petl.runs import load_runs


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
    rest's time on the GPU and on 2 CPU cores, run one after another. Each estimate is the median wall time of the
    records of the same task and model on that device, scaled by steps (grid's max_steps / the records'): a rough
    guide, since dev and test decoding do not scale with steps; '' where no record of the task ran there."""
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
            seconds = _seconds_per_point(runs, points[0], device)
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
    """The median wall time of the records of the point's task and model on `device` ('gpu' or 'cpu'), scaled
    from their steps to the point's max_steps; None without such records."""
    if runs.empty:
        return None
    gpu = runs["device.gpu"].fillna("").astype(str) != "" if "device.gpu" in runs else pd.Series(False, runs.index)
    same = runs[(runs["task"] == point["task"]) & (runs["model"] == point["model"]) & (gpu if device == "gpu" else ~gpu)]
    if same.empty:
        return None
    per_step = (same["wall_time_s"] / same["max_steps"]).median()
    return per_step * point.get("max_steps", same["max_steps"].median())
