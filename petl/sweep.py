"""Run ``notebooks/train.ipynb`` over a grid of parameters with papermill: ``python -m petl sweep GRID``.

A grid file is YAML with two mappings (both optional, at least one point results)::

    fixed:                      # parameters shared by every point
      task: rt-polarity
      model: minilm
    grid:                       # cartesian product over these lists
      variant: [full, lora, mam]
      seed: [0, 1, 2]

Before anything runs, every parameter name is checked against the notebook's ``parameters`` cell and every
point's names (variant, task, model) and values are validated. Then, for each point: skip it if its record
is complete (unless ``--force``); skip it if another live sweep holds its lock; else run the notebook with
papermill under the run's lock, and copy the executed notebook into the record. A failing point (an error,
a NaN loss) does not stop the sweep; failures are listed at the end and the exit code is 1. Running the same
sweep again after an interruption continues where it stopped (complete runs are skipped).
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from petl import runs

DEFAULT_NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "train.ipynb"
# Notebook parameters that are not TrainConfig fields.
SWEEP_PARAMETERS = ("runs_dir", "force")


class GridError(ValueError):
    """A grid file or a grid point is invalid."""


@dataclasses.dataclass
class Outcome:
    """What happened to one grid point."""
    index: int
    run_id: str
    status: str                 # complete | skipped | locked | failed
    seconds: float = 0.0
    reason: str = ""


def notebook_parameters(notebook: str | os.PathLike = DEFAULT_NOTEBOOK) -> dict[str, Any]:
    """Parameter name -> default value of the notebook's cell tagged ``parameters``."""
    import papermill
    params = papermill.inspect_notebook(str(notebook))
    if not params:
        raise GridError(f"{notebook} has no cell tagged 'parameters'")
    out = {}
    for name, info in params.items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = info["default"]
    return out


def read_grid(path: str | os.PathLike) -> list[dict]:
    """Points (dicts of notebook parameters) of one YAML grid file, in order."""
    import yaml
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise GridError(f"grid file {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise GridError(f"grid file {path}: expected a mapping with 'fixed' and/or 'grid'")
    unknown = set(spec) - {"fixed", "grid"}
    if unknown:
        raise GridError(f"grid file {path}: unknown top-level key(s) {sorted(unknown)}; valid: fixed, grid")
    fixed, grid = spec.get("fixed") or {}, spec.get("grid") or {}
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise GridError(f"grid file {path}: 'fixed' and 'grid' must be mappings")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"grid file {path}: grid.{name} must be a non-empty list, got {values!r}")
    both = set(fixed) & set(grid)
    if both:
        raise GridError(f"grid file {path}: {sorted(both)} given both in 'fixed' and in 'grid'")
    names = list(grid)
    points = [{**fixed, **dict(zip(names, combo))} for combo in itertools.product(*grid.values())]
    return [{k: _number(v) for k, v in p.items()} for p in points]


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _number(value):
    """YAML 1.1 reads 1e-3 (no dot) as a string; take it as the number it is meant to be."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else value


def grid_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders into their *.yaml / *.yml files (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise GridError(f"folder {p} holds no .yaml / .yml grid files")
            out += found
        else:
            out.append(p)
    return out


def plan(paths: list[str | os.PathLike], notebook: str | os.PathLike = DEFAULT_NOTEBOOK,
         runs_dir: str | os.PathLike = "runs") -> list[tuple[dict, str]]:
    """Validate every point of the grids and return [(notebook parameters, run id)], nothing run yet."""
    from petl.train import TrainConfig, resolve_run
    defaults = notebook_parameters(notebook)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    points = []
    for path in grid_files(paths):
        for point in read_grid(path):
            unknown = sorted(set(point) - set(defaults))
            if unknown:
                raise GridError(f"{path}: unknown parameter(s) {unknown}; the notebook {Path(notebook).name} "
                                f"takes: {', '.join(sorted(defaults))}")
            for name in SWEEP_PARAMETERS:
                if name in point:
                    raise GridError(f"{path}: {name!r} is set by the sweep command (--runs-dir / --force), "
                                    f"not by the grid")
            params = {**defaults, **point}
            train_args = {k: v for k, v in params.items() if k in fields}
            try:
                rid = resolve_run(TrainConfig(**train_args))["run_id"]
            except (ValueError, TypeError) as e:
                raise GridError(f"{path}: point {point}: {e}") from None
            points.append((point, rid))
    seen: dict[str, dict] = {}
    unique = []
    for point, rid in points:
        if rid not in seen:
            seen[rid] = point
            unique.append((point, rid))
    return unique


def _failure_reason(runs_dir: Path, rid: str, error: BaseException | None) -> str:
    status = runs.record_status(runs_dir, rid)
    if status == "failed":
        _, metrics = runs.read_record(runs_dir / rid)
        return metrics.get("reason", "failed")
    if error is not None:
        ename = getattr(error, "ename", type(error).__name__)
        evalue = getattr(error, "evalue", str(error))
        return f"{ename}: {evalue}".strip()
    return f"no record was written under {rid} (status {status})"


def _record_named_in(notebook: Path) -> str | None:
    """The record path the notebook printed ('record: <path>'), if any."""
    try:
        text = notebook.read_text()
    except OSError:
        return None
    m = re.search(r"record: ([^\\\n\"]+)", text)
    return m.group(1).strip() if m else None


def run_point(index: int, total: int, point: dict, rid: str, runs_dir: Path, notebook: Path,
              force: bool) -> Outcome:
    """Run one grid point through papermill (under its lock) and report what happened."""
    import papermill
    t0 = time.perf_counter()
    if not force and runs.record_status(runs_dir, rid) == "complete":
        return Outcome(index, rid, "skipped", 0.0, "already complete")
    try:
        with runs.run_lock(runs_dir, rid):
            if not force and runs.record_status(runs_dir, rid) == "complete":
                return Outcome(index, rid, "skipped", 0.0, "completed by another sweep")
            nb_dir = runs_dir / ".notebooks"
            nb_dir.mkdir(parents=True, exist_ok=True)
            out_nb = nb_dir / f"{rid}-{os.getpid()}.ipynb"
            before = _mtime(runs_dir / rid)
            error = None
            try:
                papermill.execute_notebook(str(notebook), str(out_nb),
                                           parameters={**point, "runs_dir": str(runs_dir), "force": force},
                                           progress_bar=False, cwd=str(notebook.parent.parent))
            except Exception as e:  # noqa: BLE001 - any failure of one point is reported, the sweep goes on
                error = e
            status = runs.record_status(runs_dir, rid)
            fresh = _mtime(runs_dir / rid) != before
            if status in ("complete", "failed") and fresh and out_nb.exists():
                runs.add_file_to_record(runs_dir / rid, "train.ipynb", out_nb)
            named = _record_named_in(out_nb)
            if out_nb.exists():
                out_nb.unlink()
            if status is None and named and Path(named).name != rid:
                return Outcome(index, rid, "failed", time.perf_counter() - t0,
                               f"the notebook wrote its record as {Path(named).name}, not {rid}: did the code "
                               f"or a default change during the sweep? Run the sweep again")
            if status == "complete" and error is None:
                return Outcome(index, rid, "complete", time.perf_counter() - t0)
            return Outcome(index, rid, "failed", time.perf_counter() - t0, _failure_reason(runs_dir, rid, error))
    except runs.RunLocked as e:
        return Outcome(index, rid, "locked", time.perf_counter() - t0, str(e))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def sweep(paths: list[str | os.PathLike], runs_dir: str | os.PathLike = "runs", force: bool = False,
          dry_run: bool = False, notebook: str | os.PathLike = DEFAULT_NOTEBOOK, jobs: int = 1,
          log=print) -> list[Outcome]:
    """Run every point of the grids; return the outcomes (see the module docstring).

    ``jobs`` > 1 runs that many points at once, each notebook kernel with cores / jobs threads
    (OMP_NUM_THREADS): on a CPU, small models use cores better as parallel runs than as threads of one run.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"jobs must be a positive integer, got {jobs!r}")
    runs_dir = Path(runs_dir).resolve()
    notebook = Path(notebook).resolve()
    points = plan(paths, notebook, runs_dir)
    total = len(points)
    outcomes = []
    if dry_run:
        for i, (point, rid) in enumerate(points, 1):
            status = runs.record_status(runs_dir, rid) or "new"
            action = "skip" if status == "complete" and not force else "run"
            log(f"[{i}/{total}] {rid} ... {action} (record: {status})  {point}")
        return outcomes
    runs_dir.mkdir(parents=True, exist_ok=True)

    def one(item):
        i, (point, rid) = item
        if force or runs.record_status(runs_dir, rid) != "complete":
            log(f"[{i}/{total}] {rid} ... running")
        outcome = run_point(i, total, point, rid, runs_dir, notebook, force)
        detail = f" ({outcome.reason})" if outcome.reason else ""
        log(f"[{i}/{total}] {rid} ... {outcome.status}{detail}, {outcome.seconds:.1f} s")
        return outcome

    if jobs == 1:
        outcomes = [one(item) for item in enumerate(points, 1)]
    else:
        from concurrent.futures import ThreadPoolExecutor
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or jobs) // jobs))  # the kernels inherit it
        try:
            with ThreadPoolExecutor(max_workers=jobs) as pool:  # each point is a papermill kernel process
                outcomes = list(pool.map(one, enumerate(points, 1)))
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
    failed = [o for o in outcomes if o.status == "failed"]
    locked = [o for o in outcomes if o.status == "locked"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("complete", "skipped", "locked", "failed")}
    log("sweep done: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if locked:
        log("running in another sweep (not done here):\n" + "\n".join(f"  {o.run_id}" for o in locked))
    if failed:
        log("FAILED runs:\n" + "\n".join(f"  [{o.index}/{total}] {o.run_id}: {o.reason}" for o in failed))
    return outcomes


def clean(runs_dir: str | os.PathLike) -> None:
    """Remove leftovers of killed processes (temporary record folders, notebooks, stale locks)."""
    runs_dir = Path(runs_dir)
    runs.clean_stale_temp(runs_dir)
    nb_dir = runs_dir / ".notebooks"
    if nb_dir.is_dir():
        import psutil
        for f in nb_dir.glob("*.ipynb"):
            pid = f.stem.rsplit("-", 1)[-1]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                f.unlink(missing_ok=True)
    lock_dir = runs_dir / ".locks"
    if lock_dir.is_dir():
        for lock in lock_dir.glob("*.lock"):
            info = runs._read_lock(lock)
            if info and runs._lock_is_stale(info):
                lock.unlink(missing_ok=True)
