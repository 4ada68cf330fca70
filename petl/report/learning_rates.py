"""The protocol's learning-rate sweeps (stage 1 of book/protocol): for every method of a stage-2 grid, each
candidate rate's dev score and the one chosen (`petl.sweep.lr_choice`), beside the paper's own rate for the task it
stands in for (its Table 8, which petl's task specs hold as their training defaults)."""

from __future__ import annotations

import pandas as pd

from petl.report.selection import grid_path, lr_choice


def _method(point: dict) -> str:
    """'scaled_pa (ffn_adapter_scalar=1.0)': the variant and the options a point overrides."""
    extra = ", ".join(f"{k}={v}" for k, v in (point.get("overrides") or {}).items())
    return f"{point['variant']} ({extra})" if extra else str(point["variant"])


def paper_lr(task: str) -> float | None:
    """The paper's learning rate (Table 8) for the task `task` stands in for (or for `task` itself)."""
    from petl import tasks
    spec = tasks.get_task(task)
    return tasks.get_task(spec.stands_in_for).train.lr if spec.stands_in_for else spec.train.lr


def lr_sweeps(*grids, directory=None) -> pd.DataFrame:
    """One row per (method, candidate lr) of the stage-2 grids given (paths from the repository root): the sweep
    grid, the dev metric, the mean dev score over the candidate's seeds (NaN until it has a record), n, status,
    and whether it is the rate chosen. A method appears once however many seeds its grid lists."""
    from petl.sweep import read_grid
    rows = []
    for grid in grids:
        path, seen = grid_path(grid), set()
        for point in read_grid(path):
            lr = point.get("lr")
            key = repr(sorted((k, repr(v)) for k, v in point.items() if k != "seed"))
            if not (isinstance(lr, dict) and "best_on_dev" in lr) or key in seen:
                continue
            seen.add(key)
            sweep = path.parent / lr["best_on_dev"]
            choice = lr_choice(point, sweep, directory)
            for _, candidate in choice.table.iterrows():
                mean = candidate["mean"]
                rows.append({"task": point["task"], "method": _method(point), "sweep": sweep.name,
                             "metric": choice.metric or "", "lr": candidate["lr"],
                             "dev": float("nan") if mean is None else mean, "n": candidate["n"],
                             "status": candidate["status"], "chosen": bool(candidate["chosen"]),
                             "paper lr": paper_lr(point["task"])})
    return pd.DataFrame(rows, columns=["task", "method", "sweep", "metric", "lr", "dev", "n", "status", "chosen",
                                       "paper lr"])


def chosen_rates(sweeps: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method): the rates tried, the rate chosen on dev ('' while a candidate is pending) and
    the paper's, and how many candidates have a record."""
    rows = []
    for (task, method), group in sweeps.groupby(["task", "method"], sort=False):
        chosen = group[group["chosen"]]
        rows.append({"task": task, "method": method,
                     "rates tried": ", ".join(f"{lr:g}" for lr in group["lr"]),
                     "with a record": f"{int((group['n'] > 0).sum() + group['status'].str.startswith('failed').sum())}"
                                      f" of {len(group)}",
                     "chosen on dev": f"{chosen['lr'].iloc[0]:g}" if len(chosen) else "",
                     "paper (Table 8)": f"{group['paper lr'].iloc[0]:g}"})
    return pd.DataFrame(rows)


def lr_figure(ax, sweeps: pd.DataFrame, task: str) -> None:
    """Dev score against learning rate (log scale), one line per method of `task`; the chosen rates marked."""
    from petl.report.plots import _no_data
    part = sweeps[(sweeps["task"] == task) & sweeps["dev"].notna()]
    if part.empty:
        _no_data(ax, "no sweep point has a record yet")
        ax.set_title(task)
        return
    for method, group in part.groupby("method", sort=False):
        line, = ax.plot(group["lr"], group["dev"], marker="o", label=method)
        best = group[group["chosen"]]
        ax.plot(best["lr"], best["dev"], marker="*", markersize=14, color=line.get_color(), linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"dev {part['metric'].iloc[0]}")
    ax.set_title(task)
    ax.legend(fontsize=7, loc="best")
