"""Traced runs (book/grids-traces/, records in runs/traces/): what `petl.inspect.trace` logged while a run trained,
the gate λ of Eq. 7 at each prefix layer and the spread of 64 dev sentences' representations after each layer,
beside whether the run learned (`petl.report.verdict.not_learned`: dev above the majority class + 10, the majority
of the very dev examples the run was scored on, from runs/baselines or else computed from the data).

Tracing changes neither what a run computes nor its run id, so a traced run is a rerun of a point of runs/ (or a
new point) kept in its own folder; the provenance appendix pairs the reruns with runs/."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from petl import baselines
from petl.report.plots import _no_data
from petl.report.selection import baseline_records, grid_runs, runs_dir
from petl.report.verdict import learning_bar, not_learned

#: The folder of runs/ that holds the traced runs.
FOLDER = "traces"


#: The settings a traced run is named by: always the rate and the seed, and these where they differ between runs.
NAMED_BY = (("warmup", "warm-up {:g}"), ("max_steps", "{:d} steps"))


def traced_runs(*grids, directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per traced run of the grids: its name ('lr 0.0005, seed 3', with the warm-up and the steps where
    the runs differ in them), seed, lr, warm-up, steps, dev and test accuracy, whether it learned and, if not, why."""
    base = Path(directory or runs_dir())
    sel = grid_runs(*grids, directory=base / FOLDER)
    columns = ["run_id", "name", "seed", "lr", "warmup", "max_steps", "dev", "test", "learned", "why", "path"]
    if sel.runs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    recorded: dict[str, list] = {}
    computed: dict[tuple, dict] = {}
    for _, run in sel.runs.iterrows():
        task = run["task"]
        if task not in recorded:
            recorded[task] = baseline_records(task, base)
        candidates = recorded[task]
        if not learning_bar(run, base, candidates):                 # no record on these examples: score it here
            sizes = {split: int(run[f"num_examples.{split}"]) for split in ("test", "validation")
                     if pd.notna(run.get(f"num_examples.{split}"))}
            key = (task, *sorted(sizes.items()))
            if key not in computed:
                computed[key] = baselines.on_examples(task, sizes)
            candidates = [computed[key]]
        why = not_learned(run, base, candidates)
        metric = run["primary_metric"]
        rows.append({"run_id": run["run_id"], "seed": int(run["seed"]), "lr": run["lr"], "warmup": run["warmup"],
                     "max_steps": int(run["max_steps"]), "dev": run[f"dev.{metric}"], "test": run[f"test.{metric}"],
                     "learned": not why, "why": "; ".join(why), "path": run["path"]})
    frame = pd.DataFrame(rows).sort_values(["lr", "seed", "warmup", "max_steps"]).reset_index(drop=True)
    varying = [(c, form) for c, form in NAMED_BY if frame[c].nunique() > 1]
    frame["name"] = [", ".join([f"lr {run['lr']:g}", f"seed {run['seed']}",
                                *(form.format(run[c]) for c, form in varying)]) for _, run in frame.iterrows()]
    return frame[columns]


def trace_history(runs: pd.DataFrame) -> pd.DataFrame:
    """The traced steps of every run of `traced_runs`: run_id, name, learned, step, the training loss
    (its mean over the 10 steps up to this one), each layer's gate (`gate_l<i>`, the encoder's prefix) and their
    mean (`gate`), each layer's spread relative to its value at step 1 (`spread_l<i>`, from layer 1: the
    embeddings below the first layer do not change) and their mean (`spread`)."""
    frames = []
    for _, run in runs.iterrows():
        history = pd.read_csv(Path(run["path"]) / "history.csv")
        gates = [c for c in history.columns if c.startswith("gate_encoder_l")]
        spreads = sorted((c for c in history.columns if c.startswith("spread_l")), key=lambda c: int(c[8:]))
        if not spreads:
            continue
        loss = history["loss"].rolling(10, min_periods=1).mean()
        traced = history[spreads[-1]].notna()
        frame = pd.DataFrame({"run_id": run["run_id"], "name": run["name"], "learned": run["learned"],
                              "step": history["step"], "loss": loss})[traced]
        for c in gates:
            frame[f"gate_l{c[len('gate_encoder_l'):]}"] = history.loc[traced, c]
        frame["gate"] = history.loc[traced, gates].mean(axis=1) if gates else float("nan")
        for c in spreads[1:]:
            frame[c] = history.loc[traced, c] / history.loc[traced, c].iloc[0]
        frame["spread"] = frame[spreads[1:]].mean(axis=1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trace_figure(history: pd.DataFrame):
    """Three panels over the training steps, a line per run (solid: learned, dashed: did not): the training loss,
    the gate λ averaged over the prefix layers, and the spread relative to step 1 averaged over the layers."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    if history.empty:
        for ax in axes:
            _no_data(ax, "no traced run yet")
        return fig
    for (rid, name, learned), run in history.groupby(["run_id", "name", "learned"], sort=False):
        style = dict(ls="-" if learned else "--", lw=1.4, label=name + ("" if learned else " (did not learn)"))
        for ax, column in zip(axes, ("loss", "gate", "spread")):
            ax.plot(run["step"], run[column], **style)
    for ax, title in zip(axes, ("training loss (mean of 10 steps)", "gate λ of Eq. 7, mean over layers",
                                "spread / its value at step 1, mean over layers")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7, loc="lower left")
    return fig


def layer_table(history: pd.DataFrame) -> pd.DataFrame:
    """Each run at its last traced step: the step, its gate λ per layer (layers counted from 0) and its spread
    after each layer relative to step 1 (after layer i: `spread_l<i+1>`, since spread_l0 is the embeddings); the
    runs that did not learn first."""
    if history.empty:
        return pd.DataFrame()
    at = history.groupby("run_id", sort=False).tail(1)
    gates = [c for c in history.columns if c.startswith("gate_l")]
    spreads = [c for c in history.columns if c.startswith("spread_l")]
    table = at[["name", "learned", "step", *gates, *spreads]].copy()
    table.columns = ["run", "learned", "step", *(f"λ {c[6:]}" for c in gates),
                     *(f"spread {int(c[8:]) - 1}" for c in spreads)]
    return table.sort_values("learned", kind="stable").reset_index(drop=True)


def collapse_step(run: pd.DataFrame, below: float = 0.5) -> int | None:
    """The first traced step at which a run's mean spread (relative to step 1) is under `below`; None if never."""
    under = run[run["spread"] < below]
    return int(under["step"].iloc[0]) if not under.empty else None


def trace_facts(history: pd.DataFrame) -> dict[str, str]:
    """The sentences the chapter glues: what the runs that did not learn have in common, against those that did.

    - `stuck`: per run that did not learn, the step its spread fell under half of its start, the spread and the
      gates at the end (the largest with its layer, the rest's range);
    - `learned`: over the runs that learned, the lowest mean spread any reached and the range of their gates at
      the end;
    - `counts`: how many traced runs, how many learned."""
    if history.empty:
        return dict(stuck="no traced run yet", learned="no traced run yet", counts="no traced run")
    gates = [c for c in history.columns if c.startswith("gate_l")]
    runs = {key: run for key, run in history.groupby(["run_id", "name", "learned"], sort=False)}
    stuck, learned = [], []
    for (_, name, ok), run in runs.items():
        end = run.iloc[-1]
        if ok:
            learned.append((run["spread"].min(), end[gates].min(), end[gates].max()))
            continue
        step = collapse_step(run)
        top = max(gates, key=lambda c: end[c])
        rest = [end[c] for c in gates if c != top]
        when = f"by step {step} its spread had fallen under half of its start" if step else \
            "its spread never fell under half of its start"
        stuck.append(f"{name}: {when}, and at step {int(end['step'])} it was {end['spread']:.2f} of it; λ was "
                     f"{end[top]:.2f} at layer {top[6:]} and {min(rest):.3f} to {max(rest):.3f} at the others")
    ok = "none of the traced runs learned" if not learned else (
        f"the lowest mean spread any of them reached was {min(x[0] for x in learned):.2f} of its start, and at their "
        f"last step their gates were {min(x[1] for x in learned):.2f} to {max(x[2] for x in learned):.2f}")
    return dict(stuck="; ".join(stuck) if stuck else "every traced run learned", learned=ok,
                counts=f"{len(runs)} traced runs, {len(learned)} of which learned")
