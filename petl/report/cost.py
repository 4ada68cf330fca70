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


