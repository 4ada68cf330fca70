"""Checkpoints of a run in progress, so that a killed run resumes where it stopped instead of at step 0.

A checkpoint is ``runs/.checkpoints/<run id>/step-<000123>/`` holding ``state.pt`` (the trainable parameters, the
optimizer and scheduler states, every random generator's state, the data position, the history so far and the
best dev state) and ``history.csv`` (readable while the run goes on). It is written into a temporary folder and
renamed into place, so a checkpoint folder is whole or absent; the two newest are kept. They live beside the
run's staging folder, are written only under the run's lock (``petl.runs.run_lock``), and are removed once the
run's record is written. A record stays the only trusted result: a checkpoint is never read as one.

Resuming is exact: on the same machine and software a resumed run computes what the uninterrupted one computes,
bit for bit on CPU (tests/test_checkpoints.py).
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

FOLDER = ".checkpoints"
KEEP = 2
_STEP = re.compile(r"^step-(\d+)$")


def run_folder(runs_dir: str | os.PathLike, rid: str) -> Path:
    return Path(runs_dir) / FOLDER / rid


def latest(runs_dir: str | os.PathLike, rid: str) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = run_folder(runs_dir, rid)
    steps = sorted((int(m.group(1)), p) for p in folder.glob("step-*") if (m := _STEP.match(p.name))
                   and (p / "state.pt").exists())
    return steps[-1][1] if steps else None


def rng_states() -> dict:
    import numpy as np
    import torch
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import numpy as np
    import torch
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(runs_dir: str | os.PathLike, rid: str, step: int, state: dict, history_csv: str) -> Path:
    """Write the checkpoint of ``step`` atomically (a temporary folder renamed into place); keep the newest two."""
    import torch
    from petl.files import fsync_dir, write_atomic
    folder = run_folder(runs_dir, rid)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / "state.pt", "wb") as fh:
            torch.save({"run_id": rid, "step": step, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        write_atomic(tmp / "history.csv", history_csv)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    complete = sorted(p for p in folder.glob("step-*") if _STEP.match(p.name))
    for old in complete[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, rid: str) -> dict:
    """The state of a checkpoint; ValueError if it belongs to another run."""
    import torch
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state.get("run_id") != rid:
        raise ValueError(f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {rid!r}")
    return state


def remove(runs_dir: str | os.PathLike, rid: str) -> None:
    """Drop a run's checkpoints (its record is written, or it is being run again from step 0)."""
    shutil.rmtree(run_folder(runs_dir, rid), ignore_errors=True)
