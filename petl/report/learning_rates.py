"""The protocol's learning-rate sweeps (stage 1 of book/protocol): for every method of a stage-2 grid, each
candidate rate's dev score and the one chosen (`petl.sweep.lr_choice`), beside the paper's own rate for the task it
stands in for (its Table 8, which petl's task specs hold as their training defaults)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from petl.report.selection import grid_path, lr_choice, records


def _method(point: dict) -> str:
    """'scaled_pa (ffn_adapter_scalar=1.0)': the variant and the options a point overrides."""
    extra = ", ".join(f"{k}={v}" for k, v in (point.get("overrides") or {}).items())
    return f"{point['variant']} ({extra})" if extra else str(point["variant"])


def paper_lr(task: str, variant: str | None = None) -> float | None:
    """The paper's learning rate (Table 8) for the task `task` stands in for (or for `task` itself); None for full
    fine-tuning, which Table 8 gives no rate for (its rates are the parameter-efficient methods')."""
    from petl import tasks
    if variant == "full":
        return None
    spec = tasks.get_task(task)
    return tasks.get_task(spec.stands_in_for).train.lr if spec.stands_in_for else spec.train.lr


def lr_sweeps(*grids, directory=None) -> pd.DataFrame:
    """One row per (method, candidate lr) of the stage-2 grids given (paths from the repository root): the sweep
    grid, the dev metric, the mean dev score over the candidate's seeds (NaN until it has a record), n, status,
    whether every seed learned (`learned`, as a verdict's learning check: True, False, or None while a seed has
    no record; a failed run did not learn), its run ids, and whether it is the rate chosen. A method appears once
    however many seeds its grid lists."""
    from petl.sweep import chosen_on_dev, read_grid
    rows = []
    for grid in grids:
        path, seen = grid_path(grid), set()
        for point in read_grid(path):
            lr = point.get("lr")
            key = repr(sorted((k, repr(v)) for k, v in point.items() if k != "seed"))
            if not chosen_on_dev(lr) or key in seen:
                continue
            seen.add(key)
            sweep = path.parent / lr["best_on_dev"]
            choice = lr_choice(point, sweep, directory)
            for _, candidate in choice.table.iterrows():
                mean = candidate["mean"]
                rows.append({"task": point["task"], "method": _method(point), "sweep": sweep.name,
                             "metric": choice.metric or "", "lr": candidate["lr"],
                             "dev": float("nan") if mean is None else mean, "n": candidate["n"],
                             "status": candidate["status"],
                             "learned": _learned(candidate["run_ids"], directory),
                             "run_ids": list(candidate["run_ids"]), "chosen": bool(candidate["chosen"]),
                             "paper lr": paper_lr(point["task"], point.get("variant"))})
    return pd.DataFrame(rows, columns=["task", "method", "sweep", "metric", "lr", "dev", "n", "status", "learned",
                                       "run_ids", "chosen", "paper lr"])


def _learned(run_ids, directory=None) -> bool | None:
    """Whether every seed of a candidate learned (`verdict.not_learned`, the check a verdict makes of its arms):
    None while a seed has no record; a seed without a complete record (a failed run) did not learn."""
    from petl import runs
    from petl.report.selection import runs_dir
    from petl.report.verdict import not_learned
    df = records(directory)
    found = df[df["run_id"].isin(run_ids)]
    missing = set(run_ids) - set(found["run_id"])
    if any(runs.record_status(Path(directory or runs_dir()), rid) != "failed" for rid in missing):
        return None
    return not missing and not any(not_learned(run, directory) for _, run in found.iterrows())


def chosen_rates(sweeps: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method): the rates tried, how many candidates have a record, the rates at which every
    seed learned (the verdicts' learning check), the rate chosen on dev ('' while a candidate is pending) and the
    paper's."""
    rows = []
    for (task, method), group in sweeps.groupby(["task", "method"], sort=False):
        chosen = group[group["chosen"]]
        known = group[group["learned"].notna()]
        rows.append({"task": task, "method": method,
                     "rates tried": ", ".join(f"{lr:g}" for lr in group["lr"]),
                     "with a record": f"{int((group['n'] > 0).sum() + group['status'].str.startswith('failed').sum())}"
                                      f" of {len(group)}",
                     "learned at": ", ".join(f"{lr:g}" for lr in known[known["learned"].astype(bool)]["lr"])
                                   or ("none" if len(known) else ""),
                     "chosen on dev": f"{chosen['lr'].iloc[0]:g}" if len(chosen) else "",
                     "paper (Table 8)": "—" if pd.isna(group["paper lr"].iloc[0])
                                        else f"{group['paper lr'].iloc[0]:g}"})
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


def sweep_of(sweeps: pd.DataFrame, task: str, method: str) -> pd.DataFrame:
    """The rows of `lr_sweeps` of one method on one task: `method` is a method as the table names it
    ('prefix (attn_bn=16, ffn_bn=16)') or its variant alone when that names one sweep of the task."""
    ours = sweeps[sweeps["task"] == task]
    part = ours[(ours["method"] == method) | ours["method"].str.startswith(f"{method} (")]
    if part["method"].nunique() > 1:
        raise ValueError(f"{method!r} names {part['method'].nunique()} sweeps on {task!r} "
                         f"({'; '.join(part['method'].unique())}); give one of them")
    if part.empty:
        known = sorted(set(ours["method"]))
        raise ValueError(f"no sweep of {method!r} on {task!r}; its methods: {', '.join(known) or 'none'}")
    return part


def final_loss(curves: pd.DataFrame, last: int = 50) -> pd.Series:
    """The mean training loss of the last `last` steps of each run of `loss_curves`, indexed by (lr, seed)."""
    return curves.groupby(["lr", "seed"]).tail(last).groupby(["lr", "seed"])["loss"].mean()


def loss_curves(sweeps: pd.DataFrame, task: str, method: str, window: int = 25, directory=None) -> pd.DataFrame:
    """The training loss of one method's sweep runs (seed by seed, every candidate lr with a record): step, lr,
    seed, loss and its running mean over `window` steps, from each record's history.csv (`method` as `sweep_of`
    takes it)."""
    from petl.report.selection import runs_dir
    part = sweep_of(sweeps, task, method)
    frames = []
    df = records(directory).set_index("run_id")
    for _, candidate in part.iterrows():
        for rid in candidate["run_ids"]:
            if rid not in df.index:
                continue
            path = Path(directory or runs_dir()) / rid / "history.csv"
            if not path.exists():
                continue
            history = pd.read_csv(path)
            frames.append(pd.DataFrame({"step": history["step"], "lr": candidate["lr"], "seed": df.loc[rid, "seed"],
                                        "loss": history["loss"],
                                        "smoothed": history["loss"].rolling(window, min_periods=1).mean()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "lr", "seed", "loss", "smoothed"])


def loss_figure(ax, curves: pd.DataFrame, title: str) -> None:
    """Smoothed training loss against step, one line per (lr, seed) of `loss_curves`."""
    from petl.report.plots import _no_data
    if curves.empty:
        _no_data(ax, "no sweep point has a record yet")
    for (lr, seed), group in curves.groupby(["lr", "seed"], sort=True):
        ax.plot(group["step"], group["smoothed"], label=f"lr {lr:g}" + (f", seed {seed}" if seed else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.set_title(title)
    if not curves.empty:
        ax.legend(fontsize=8)
