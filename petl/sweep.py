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
papermill under the run's lock, and copy the executed notebook into the record (without its images:
``record_notebook``). A failing point (an error,
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


def _yaml_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def read_grid(path: str | os.PathLike) -> list[dict]:
    """Points (dicts of notebook parameters) of one YAML grid file, in order."""
    import yaml
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except IsADirectoryError:
        raise GridError(f"grid file {path} is a folder; give a .yaml file or a folder of them") from None
    except UnicodeDecodeError as e:
        raise GridError(f"grid file {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
                        ) from None
    except OSError as e:
        raise GridError(f"grid file {path} cannot be read ({e.strerror or e})") from None
    try:
        spec = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        raise GridError(f"grid file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if spec is None:
        raise GridError(f"grid file {path} is empty; give 'fixed' (parameters of every point) and/or 'grid' "
                        "(lists to combine)")
    if not isinstance(spec, dict):
        raise GridError(f"grid file {path}: expected a mapping with 'fixed' and/or 'grid'")
    unknown = set(spec) - {"fixed", "grid", "slurm"}
    if unknown:
        raise GridError(f"grid file {path}: unknown top-level key(s) {sorted(unknown)}; valid: fixed, grid, slurm")
    slurm_resources(path, spec)                                    # checked here, used by --executor slurm
    fixed, grid = spec.get("fixed") or {}, spec.get("grid") or {}
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise GridError(f"grid file {path}: 'fixed' and 'grid' must be mappings")
    if not fixed and not grid:
        raise GridError(f"grid file {path} sets no parameter ('fixed' and 'grid' are empty): it would run only "
                        "the notebook's defaults; name what the points run")
    if "grid" in spec and not grid:
        raise GridError(f"grid file {path}: 'grid' is empty; list values to combine, or remove it")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"grid file {path}: grid.{name} must be a non-empty list, got {values!r}")
    both = set(fixed) & set(grid)
    if both:
        raise GridError(f"grid file {path}: {sorted(both)} given both in 'fixed' and in 'grid'")
    names = list(grid)
    points = [{**fixed, **dict(zip(names, combo))} for combo in itertools.product(*grid.values())]
    return [{k: _number(v) for k, v in p.items()} for p in points]


#: What a grid's ``slurm:`` mapping or ``--slurm KEY=VALUE`` may set: submitit's SlurmExecutor parameters.
SLURM_KEYS = ("partition", "time", "cpus_per_task", "gpus_per_node", "mem", "array_parallelism", "account", "qos",
              "constraint", "exclude", "nodelist", "setup", "additional_parameters")


def slurm_resources(path: str | os.PathLike, spec: dict | None = None) -> dict:
    """The ``slurm:`` mapping of a grid file (resources of each of its points' SLURM tasks), checked."""
    import yaml
    if spec is None:
        spec = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_yaml_loader()) or {}
    resources = spec.get("slurm") or {}
    if not isinstance(resources, dict):
        raise GridError(f"grid file {path}: 'slurm' must be a mapping of {', '.join(SLURM_KEYS)}")
    unknown = sorted(set(resources) - set(SLURM_KEYS))
    if unknown:
        raise GridError(f"grid file {path}: unknown slurm resource(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
    return resources


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
    from petl.train_config import TrainConfig, resolve_run
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
                rid = resolve_run(TrainConfig(**train_args)).run_id
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


def record_notebook(notebook: Path) -> str:
    """The executed notebook as a record keeps it: images dropped (the book redraws every figure from the
    record's history.csv) and each run of stream outputs merged into one, with progress-bar redraws (``\\r``)
    reduced to their last state. The code, the parameters papermill injected and every printed line stay."""
    import json
    nb = json.loads(notebook.read_text())
    for cell in nb.get("cells", []):
        kept: list[dict] = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and _WIDGET in data:                        # a widget's view is its state, not a record
                output = dict(output, data={k: v for k, v in data.items() if k != _WIDGET})
                data = output["data"]
            if data and any(k.startswith("image/") for k in data):
                output = dict(output, data={"text/plain": "[figure not kept in the record: the book redraws it "
                                                          "from history.csv]"})
            if output.get("output_type") == "stream" and kept and kept[-1].get("output_type") == "stream" \
                    and kept[-1].get("name") == output.get("name"):
                kept[-1]["text"] = _text(kept[-1]) + _text(output)
                continue
            kept.append(dict(output))
        for output in kept:
            if output.get("output_type") == "stream":
                output["text"] = "".join(line.rsplit("\r", 1)[-1] for line in _text(output).splitlines(True))
        if "outputs" in cell:
            cell["outputs"] = kept
    nb.get("metadata", {}).pop("widgets", None)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


_WIDGET = "application/vnd.jupyter.widget-view+json"


def _text(output: dict) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def _record_named_in(notebook: Path) -> str | None:
    """The record path the notebook printed ('record: <path>' in a cell's output, not its source), if any."""
    import json
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    for cell in cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            m = re.search(r"^record: (.+)$", "".join(text) if isinstance(text, list) else text, re.M)
            if m:
                return m.group(1).strip()
    return None


def run_point(index: int, total: int, point: dict, rid: str, runs_dir: Path, notebook: Path,
              force: bool, timeout: float | None = None) -> Outcome:
    """Run one grid point through papermill (under its lock) and report what happened. `timeout` (seconds)
    bounds each notebook cell, so the training cell too: a point over it is stopped and reported failed."""
    import papermill
    from nbclient.exceptions import CellTimeoutError
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
                                           progress_bar=False, cwd=str(notebook.parent.parent),
                                           execution_timeout=timeout)
            except CellTimeoutError:
                error = TimeoutError(f"stopped after the per-point limit of {timeout:g} s (--timeout); no record "
                                     "was written")
            except Exception as e:  # noqa: BLE001 - any failure of one point is reported, the sweep goes on
                error = e
            status = runs.record_status(runs_dir, rid)
            fresh = _mtime(runs_dir / rid) != before
            if status in ("complete", "failed") and fresh and out_nb.exists():
                out_nb.write_text(record_notebook(out_nb))
                runs.add_file_to_record(runs_dir / rid, "train.ipynb", out_nb)
            named = _record_named_in(out_nb)
            if out_nb.exists():
                out_nb.unlink()
            if isinstance(error, TimeoutError):
                return Outcome(index, rid, "failed", time.perf_counter() - t0, str(error))
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
          log=print, timeout: float | None = None, executor: str = "local",
          slurm: dict | None = None) -> list[Outcome]:
    """Run every point of the grids; return the outcomes (see the module docstring). `timeout` (seconds)
    stops a point that runs longer (reported failed; the sweep goes on).

    ``jobs`` > 1 runs that many points at once, each notebook kernel with cores / jobs threads
    (OMP_NUM_THREADS): on a CPU, small models use cores better as parallel runs than as threads of one run.

    ``executor="slurm"`` submits the points whose record is not complete as one SLURM job array per grid file
    (submitit; one point per task, each still `run_point`: the notebook under the run's lock), with the grid's
    ``slurm:`` resources updated by ``slurm``, and waits for them. A preempted or timed-out task is requeued and
    resumes from its checkpoint; submitit's logs are in ``<runs dir>/.slurm/``.
    """
    if executor not in EXECUTORS:
        raise GridError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise GridError(f"jobs must be a positive integer, got {jobs!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise GridError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
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
    runs.check_writable(runs_dir)
    for path in runs.clean_leftovers(runs_dir):
        log(f"removed a leftover of a killed process: {path}")

    def one(item):
        i, (point, rid) = item
        if force or runs.record_status(runs_dir, rid) != "complete":
            log(f"[{i}/{total}] {rid} ... running")
        outcome = run_point(i, total, point, rid, runs_dir, notebook, force, timeout)
        detail = f" ({outcome.reason})" if outcome.reason else ""
        log(f"[{i}/{total}] {rid} ... {outcome.status}{detail}, {outcome.seconds:.1f} s")
        return outcome

    if executor == "slurm":
        outcomes = _on_slurm(paths, points, runs_dir, notebook, force, timeout, slurm or {}, log)
    elif jobs == 1:
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


EXECUTORS = ("local", "slurm")


class _SlurmPoint:
    """One grid point as a SLURM task (submitit pickles it): `run_point`, requeued with the same arguments when
    SLURM preempts or times it out (submitit calls `checkpoint`); the run resumes from its own checkpoint."""

    def __call__(self, *args):
        return run_point(*args)

    def checkpoint(self, *args):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args)


def _on_slurm(paths, points, runs_dir: Path, notebook: Path, force: bool, timeout, overrides: dict,
              log) -> list[Outcome]:
    """Submit the points to run as SLURM job arrays (one per grid file, with its resources); wait for them."""
    try:
        import submitit
    except ImportError:
        raise GridError("--executor slurm needs submitit: pip install -c constraints.txt -e '.[cluster]'") from None
    unknown = sorted(set(overrides) - set(SLURM_KEYS))
    if unknown:
        raise GridError(f"unknown slurm resource(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
    total = len(points)
    index = {rid: i for i, (_, rid) in enumerate(points, 1)}
    outcomes: dict[str, Outcome] = {}
    # (resources, [(point, rid)]) per grid file: a point goes with the first file that lists it (as in `plan`),
    # matched by its parameters, so nothing is resolved twice.
    files = [(path, read_grid(path)) for path in grid_files(paths)]
    arrays = [({**slurm_resources(path), **overrides}, []) for path, _ in files]
    for point, rid in points:
        owner = next(i for i, (_, listed) in enumerate(files) if point in listed)
        arrays[owner][1].append((point, rid))
    for resources, group in arrays:
        todo = []
        for point, rid in group:
            if not force and runs.record_status(runs_dir, rid) == "complete":
                outcomes[rid] = Outcome(index[rid], rid, "skipped", 0.0, "already complete")
            else:
                todo.append((index[rid], total, point, rid, runs_dir, notebook, force, timeout))
        if not todo:
            continue
        executor = submitit.SlurmExecutor(folder=runs_dir / ".slurm" / "%j")
        executor.update_parameters(**{"time": 24 * 60, "job_name": "petl-sweep", **resources})
        jobs = executor.map_array(_SlurmPoint(), *zip(*todo))
        log(f"submitted {len(jobs)} point(s) as SLURM job array {jobs[0].job_id.split('_')[0]} "
            f"(logs: {runs_dir / '.slurm'})")
        for job, args in zip(jobs, todo):
            i, rid = args[0], args[3]
            try:
                outcome = job.result()
            except Exception as e:  # noqa: BLE001 - a task that died (killed, out of memory) is reported
                outcome = Outcome(i, rid, "failed", 0.0, f"SLURM task {job.job_id}: {str(e).strip()[-300:]}")
            detail = f" ({outcome.reason})" if outcome.reason else ""
            log(f"[{i}/{total}] {rid} ... {outcome.status}{detail} (SLURM task {job.job_id})")
            outcomes[rid] = outcome
    return [outcomes[rid] for _, rid in points if rid in outcomes]


def clean(runs_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed processes left in the runs folder (petl.runs.clean_leftovers) and return it."""
    return runs.clean_leftovers(runs_dir)
