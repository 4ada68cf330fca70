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

A learning rate chosen on the dev set: ``lr`` may be ``{best_on_dev: FILE}`` (in ``fixed``, or as one element of
a ``grid`` list), FILE a *sweep grid* named relative to the folder of the grid file::

    # lr_sweep.yaml                                 # seeds.yaml
    fixed: {task: rt-polarity, variant: lora}       fixed: {task: rt-polarity, variant: lora,
    grid: {lr: [1.0e-4, 3.0e-4, 1.0e-3]}                    lr: {best_on_dev: lr_sweep.yaml}}
                                                    grid: {seed: [0, 1, 2]}

Such a point's lr is the one whose points of FILE in the same setting (its *candidates*: the points that agree
with it on every parameter both set, except ``lr`` and ``seed``) have the best dev primary metric, averaged over
their seeds; a failed record (a diverged lr) scores worst, and a tie goes to the smaller lr (`lr_choice` gives
the choice and its table). Where every lr failed, none is chosen: the point keeps waiting, and the sweep's last
lines say that its sweep grid needs smaller rates. The chosen lr is an ordinary number in the point, so its run
id and record are those of any point with that lr. The candidates must be one setting with at least 2 distinct, numeric learning rates,
and FILE must list its own learning rates as numbers (no chaining); otherwise the grid is refused (GridError).
While some candidate has no complete or failed record, the point is *waiting* (`Waiting`, in `Plan.waiting`): it
has no run id yet, ``--dry-run`` lists it as ``wait (lr chosen on dev from FILE: k of n sweep points have a
record)``, and the sweep plans again once it has run every ready point, so sweep points run in the same sweep
make their waiting points ready; whatever still waits is listed at the end (not a failure).
"""
from __future__ import annotations

import ast
import copy
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
    status: str                 # complete | skipped | locked | failed | waiting (lr not chosen yet; no run id)
    seconds: float = 0.0
    reason: str = ""


def notebook_parameters(notebook: str | os.PathLike = DEFAULT_NOTEBOOK) -> dict[str, Any]:
    """Parameter name -> default value of the notebook's cell tagged ``parameters`` (read once per version of
    the file: a sweep, the book's learning-rate tables and the protocol's cost ask for it many times)."""
    path = Path(notebook).resolve()
    stat = path.stat() if path.exists() else None
    key = (str(path), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None or key not in _PARAMETERS:
        _PARAMETERS.clear()
        params = _read_parameters(notebook)
        if key is None:
            return params
        _PARAMETERS[key] = params
    return copy.deepcopy(_PARAMETERS[key])


_PARAMETERS: dict[tuple, dict[str, Any]] = {}


def _read_parameters(notebook) -> dict[str, Any]:
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


BEST_ON_DEV = "best_on_dev"   # lr: {best_on_dev: <sweep grid file>}: the lr is chosen on that grid's dev results


def chosen_on_dev(lr) -> bool:
    """Whether a point's lr is chosen on dev (``{best_on_dev: FILE}``), not a number or a per-variant mapping."""
    return isinstance(lr, dict) and BEST_ON_DEV in lr


class Plan(list):
    """What `plan` returns: the points that can run now, [(notebook parameters, run id)] in grid order (a list,
    as `plan` always returned), and ``waiting``: [`Waiting`], the points whose lr is chosen on the dev set of sweep
    points that do not all have a record yet. ``sources``: the sweep grid files whose records the plan read."""

    def __init__(self, ready=(), waiting=(), sources=()):
        super().__init__(ready)
        self.waiting: list[Waiting] = list(waiting)
        self.sources: list[Path] = list(dict.fromkeys(sources))


@dataclasses.dataclass(eq=False)
class Waiting:
    """A grid point whose lr is chosen on dev (``lr: {best_on_dev: ...}``) from sweep points of which only
    ``have`` of ``total`` have a complete or failed record: it has no lr, so no run id, until all do."""
    point: dict                 # as the grid file gives it (its lr the best_on_dev mapping)
    grid: Path                  # the grid file that lists it
    sweep_grid: Path            # the grid file its lr is chosen from
    have: int
    total: int
    why: str | None = None      # set when every record is there but no lr can be chosen (all failed)

    @property
    def reason(self) -> str:
        return self.why or (f"lr chosen on dev from {self.sweep_grid}: {self.have} of {self.total} sweep points "
                            f"have a record")


@dataclasses.dataclass
class LrChoice:
    """The lr a point gets from a sweep grid (`lr_choice`): ``lr`` None while some candidate has no record.
    ``table``: one row per candidate lr (ascending) with its seeds, run ids, dev scores (None: no score, the
    record failed or is not there yet), n (seeds with a complete record), mean (of those), score (what was
    compared: the mean, -inf where a seed failed), status and chosen."""
    lr: float | None
    metric: str | None          # the dev metric compared (the records' primary metric)
    sweep_grid: Path
    table: Any                  # pandas.DataFrame
    have: int                   # candidates with a complete or failed record
    total: int                  # candidates
    why: str | None = None      # why no lr was chosen although every candidate has a record (all failed)

    @property
    def waiting(self) -> bool:
        return self.lr is None


class _Resolver:
    """Names and run ids of points against one notebook's parameters and TrainConfig."""

    def __init__(self, notebook):
        from petl.train_config import TrainConfig
        self.notebook = Path(notebook)
        self.defaults = notebook_parameters(notebook)
        self.fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def check_names(self, path, point: dict) -> None:
        unknown = sorted(set(point) - set(self.defaults))
        if unknown:
            raise GridError(f"{path}: unknown parameter(s) {unknown}; the notebook {self.notebook.name} "
                            f"takes: {', '.join(sorted(self.defaults))}")
        for name in SWEEP_PARAMETERS:
            if name in point:
                raise GridError(f"{path}: {name!r} is set by the sweep command (--runs-dir / --force), "
                                f"not by the grid")

    def run_id(self, path, point: dict) -> str:
        from petl.train_config import TrainConfig, resolve_run
        params = {**self.defaults, **point}
        train_args = {k: v for k, v in params.items() if k in self.fields}
        try:
            return resolve_run(TrainConfig(**train_args)).run_id
        except (ValueError, TypeError) as e:
            raise GridError(f"{path}: point {point}: {e}") from None


def _lr_source(path: Path, point: dict) -> Path | None:
    """The sweep grid a point's ``lr: {best_on_dev: FILE}`` names (FILE relative to the folder of `path`), or None
    for an ordinary lr: a number, or a mapping of variants to rates (``{full: 5.0e-5, "*": 1.0e-3}``, which the
    notebook resolves for the point's variant: `petl.train_config.lr_for`)."""
    from petl.train_config import check_per_variant_lr
    lr = point.get("lr")
    if not isinstance(lr, dict):
        return None
    valid = (f"lr is a number, {{{BEST_ON_DEV}: <sweep grid file, relative to {path.parent}>}}, or a rate per "
             f'variant {{<variant>: <lr>, "*": <lr of every other variant>}}')
    if BEST_ON_DEV not in lr:
        try:
            check_per_variant_lr(lr)
        except ValueError as e:
            raise GridError(f"{path}: {e}; or {valid}") from None
        return None
    unknown = sorted(map(str, set(lr) - {BEST_ON_DEV}))
    if unknown:
        raise GridError(f"{path}: lr {lr!r}: unknown key(s) {unknown}; {valid}")
    name = lr[BEST_ON_DEV]
    if not isinstance(name, str) or not name.strip():
        raise GridError(f"{path}: lr {lr!r}: {BEST_ON_DEV} must name a grid file, got {name!r}; {valid}")
    return path.parent / name


def _method(point: dict) -> str:
    return f"variant {point.get('variant', '(the notebook default)')}, overrides {point.get('overrides')}"


def _is_lr(value) -> bool:
    import math
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _choose(where: str, point: dict, sweep_grid: Path, runs_dir: Path, resolver: _Resolver) -> LrChoice:
    """The lr of `point` chosen on the dev records of its candidates in `sweep_grid` (see `lr_choice`)."""
    import math

    import pandas as pd
    try:
        points = read_grid(sweep_grid)
    except GridError as e:
        raise GridError(f"{where}: lr: {{{BEST_ON_DEV}: ...}} names a grid that cannot be used: {e}") from None
    chained = [p for p in points if chosen_on_dev(p.get("lr"))]
    if chained:
        raise GridError(f"{where}: the sweep grid {sweep_grid} chooses its own lr on dev ({chained[0]['lr']!r}); "
                        f"a sweep grid lists its learning rates as numbers (no chaining)")
    candidates = [p for p in points
                  if all(p[k] == point[k] for k in (set(p) & set(point)) - {"lr", "seed"})]
    if not candidates:
        found = sorted({_method(p) for p in points})
        raise GridError(f"{where}: no point of the sweep grid {sweep_grid} is the same method in the same setting as "
                        f"this point ({_method(point)}): a candidate agrees with it on every parameter both set, "
                        f"except lr and seed; that grid has: {'; '.join(found)}")
    for cand in candidates:
        if not _is_lr(cand.get("lr")):
            raise GridError(f"{where}: sweep point {cand} of {sweep_grid} has no explicit numeric lr (got "
                            f"{cand.get('lr')!r}); a sweep grid sets lr to a positive number in every point "
                            f"(in fixed or in grid)")
    keys = {k for c in candidates for k in c} - {"lr", "seed"}
    differ = sorted(k for k in keys if len({repr(c.get(k)) for c in candidates}) > 1)
    if differ:
        raise GridError(f"{where}: the candidates in {sweep_grid} for this point ({_method(point)}) differ in "
                        f"{differ} too, so they are not one setting; set {', '.join(differ)} in the point")
    lrs = sorted({c["lr"] for c in candidates})     # as the grid writes them: 1 and 1.0 are two run ids
    if len(lrs) < 2:
        raise GridError(f"{where}: point {point}: its {len(candidates)} candidate(s) in {sweep_grid} cover "
                        f"{len(lrs)} learning rate ({lrs[0]:g}); choosing one on dev needs at least 2 distinct lr")
    rows, have, metric = [], 0, None
    for lr in lrs:
        seeds, rids, devs, statuses = [], [], [], []
        for cand in (c for c in candidates if c["lr"] == lr):
            rid = resolver.run_id(sweep_grid, cand)
            status = runs.record_status(runs_dir, rid)
            dev = None
            if status == "complete":
                _, metrics = runs.read_record(Path(runs_dir) / rid)
                name = metrics.get("primary_metric")
                dev = metrics["dev"].get(name) if name else None
                if dev is None:
                    raise GridError(f"{where}: the record {Path(runs_dir) / rid} has no dev value of its primary "
                                    f"metric ({name!r}; dev has {sorted(metrics['dev'])}): its lr cannot be compared")
                if metric is not None and name != metric:
                    raise GridError(f"{where}: the candidates in {sweep_grid} were scored on different primary "
                                    f"metrics ({metric}, {name}); they are not one setting")
                metric = name
            elif status != "failed":
                status = None                              # no record yet (or a damaged one the sweep reruns)
            have += status is not None
            seeds.append(cand.get("seed", resolver.defaults.get("seed")))
            rids.append(rid)
            devs.append(dev)
            statuses.append(status)
        scored = [d for d in devs if d is not None]
        mean = sum(scored) / len(scored) if scored else math.nan
        if None in statuses:
            status, score = f"waiting ({sum(s is not None for s in statuses)} of {len(statuses)} have a record)", \
                math.nan
        elif "failed" in statuses:
            failed = [s for s, st in zip(seeds, statuses) if st == "failed"]
            status, score = f"failed (seed {', '.join(map(str, failed))})", -math.inf
        else:
            status, score = "complete", mean
        rows.append({"lr": lr, "seeds": seeds, "run_ids": rids, "dev": devs, "n": len(scored), "mean": mean,
                     "score": score, "status": status, "chosen": False})
    table = pd.DataFrame(rows, columns=["lr", "seeds", "run_ids", "dev", "n", "mean", "score", "status", "chosen"])
    chosen, why = None, None
    if have == len(candidates) and all(row["score"] == -math.inf for row in rows):
        why = (f"every lr of {sweep_grid} failed for {_method(point)} ({', '.join(f'{r:g}' for r in lrs)}): no "
               f"rate trained, so none is chosen; add smaller rates to that grid")
    elif have == len(candidates):
        best = min(range(len(rows)), key=lambda i: (-rows[i]["score"], rows[i]["lr"]))   # ties: the smaller lr
        chosen = rows[best]["lr"]
        table.loc[best, "chosen"] = True
    return LrChoice(chosen, metric, sweep_grid, table, have, len(candidates), why)


def lr_choice(point: dict, grid_file: str | os.PathLike, runs_dir: str | os.PathLike = "runs",
              notebook: str | os.PathLike = DEFAULT_NOTEBOOK) -> LrChoice:
    """The lr `point` gets from the sweep grid `grid_file` on the dev records in `runs_dir`: among the sweep
    points that agree with `point` on every parameter both set except lr and seed (its candidates), the lr whose
    seeds' mean dev primary metric is highest; a failed record (a diverged run) scores worst; ties go to the
    smaller lr. ``lr`` is None while a candidate has no complete or failed record, and where every candidate
    failed (``why`` says so). GridError for a point or grid that cannot be chosen for (no candidate, one lr only,
    a candidate without a numeric lr, a sweep grid that chooses its own lr on dev)."""
    return _choose(f"point {point}", point, Path(grid_file), Path(runs_dir), _Resolver(notebook))


def plan(paths: list[str | os.PathLike], notebook: str | os.PathLike = DEFAULT_NOTEBOOK,
         runs_dir: str | os.PathLike = "runs") -> Plan:
    """Validate every point of the grids and return the `Plan`: [(notebook parameters, run id)], nothing run yet,
    and the points still waiting for their lr to be chosen on dev (``Plan.waiting``; their records in `runs_dir`)."""
    resolver = _Resolver(notebook)
    points, waiting, sources, choices = [], [], [], {}
    for path in grid_files(paths):
        for point in read_grid(path):
            resolver.check_names(path, point)
            source = _lr_source(path, point)
            if source is None:
                points.append((point, resolver.run_id(path, point)))
                continue
            resolver.run_id(path, {**point, "lr": None})              # every other value checked now
            sources.append(source)
            setting = (str(source), repr(sorted((k, v) for k, v in point.items() if k not in ("lr", "seed"))))
            if setting not in choices:
                choices[setting] = _choose(f"{path}: point {point}", point, source, Path(runs_dir), resolver)
            choice = choices[setting]
            if choice.waiting:
                waiting.append(Waiting(point, path, source, choice.have, choice.total, choice.why))
            else:
                resolved = {**point, "lr": choice.lr}
                points.append((resolved, resolver.run_id(path, resolved)))
    seen: dict[str, dict] = {}
    unique = []
    for point, rid in points:
        if rid not in seen:
            seen[rid] = point
            unique.append((point, rid))
    same: dict[str, Waiting] = {}
    for w in waiting:
        same.setdefault(repr((str(w.sweep_grid), sorted(w.point.items(), key=repr))), w)
    return Plan(unique, same.values(), sources)


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
    if dry_run:
        total = len(points) + len(points.waiting)
        for i, (point, rid) in enumerate(points, 1):
            status = runs.record_status(runs_dir, rid) or "new"
            action = "skip" if status == "complete" and not force else "run"
            log(f"[{i}/{total}] {rid} ... {action} (record: {status})  {point}")
        for i, w in enumerate(points.waiting, len(points) + 1):
            log(f"[{i}/{total}] (no run id yet) ... wait ({w.reason})  {w.point}")
        return []
    runs.check_writable(runs_dir)
    for path in runs.clean_leftovers(runs_dir):
        log(f"removed a leftover of a killed process: {path}")

    outcomes: list[Outcome] = []
    tried: set[str] = set()
    while True:
        todo = [(point, rid) for point, rid in points if rid not in tried]
        if not todo:
            break
        first, total = len(tried) + 1, len(tried) + len(todo) + len(points.waiting)
        tried.update(rid for _, rid in todo)
        outcomes += _run_points(paths, todo, first, total, runs_dir, notebook, force, timeout, jobs, executor,
                                slurm or {}, log)
        if not points.waiting:
            break
        points = plan(paths, notebook, runs_dir)      # sweep points done here may have chosen a waiting point's lr
        ready = sum(rid not in tried for _, rid in points)
        if ready:
            log(f"planned again: {ready} point(s) whose lr was chosen on dev can run now, "
                f"{len(points.waiting)} still waiting")
    total = len(outcomes) + len(points.waiting)
    outcomes += [Outcome(i, "", "waiting", 0.0, w.reason) for i, w in enumerate(points.waiting, len(outcomes) + 1)]
    failed = [o for o in outcomes if o.status == "failed"]
    locked = [o for o in outcomes if o.status == "locked"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("complete", "skipped", "locked", "failed")}
    if points.waiting:
        counts["waiting"] = len(points.waiting)
    log("sweep done: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if locked:
        log("running in another sweep (not done here):\n" + "\n".join(f"  {o.run_id}" for o in locked))
    if failed:
        log("FAILED runs:\n" + "\n".join(f"  [{o.index}/{total}] {o.run_id}: {o.reason}" for o in failed))
    unchosen = [w for w in points.waiting if w.why]
    pending = [w for w in points.waiting if not w.why]
    if pending:
        log("waiting for their lr (not failures: their sweep points have no record yet, run them and sweep "
            "again):\n" + "\n".join(f"  {w.point} ({w.reason})" for w in pending))
    if unchosen:
        log("no lr to choose (every rate of their sweep failed):\n"
            + "\n".join(f"  {w.point} ({w.reason})" for w in unchosen))
    return outcomes


def _run_points(paths, points: list[tuple[dict, str]], first: int, total: int, runs_dir: Path, notebook: Path,
                force: bool, timeout, jobs: int, executor: str, slurm: dict, log) -> list[Outcome]:
    """Run `points` (numbered from `first`, of `total`) here or on SLURM; their outcomes in order."""
    def one(item):
        i, (point, rid) = item
        if force or runs.record_status(runs_dir, rid) != "complete":
            log(f"[{i}/{total}] {rid} ... running")
        outcome = run_point(i, total, point, rid, runs_dir, notebook, force, timeout)
        detail = f" ({outcome.reason})" if outcome.reason else ""
        log(f"[{i}/{total}] {rid} ... {outcome.status}{detail}, {outcome.seconds:.1f} s")
        return outcome

    if executor == "slurm":
        return _on_slurm(paths, points, runs_dir, notebook, force, timeout, slurm, log, first, total)
    if jobs == 1:
        return [one(item) for item in enumerate(points, first)]
    from concurrent.futures import ThreadPoolExecutor
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or jobs) // jobs))  # the kernels inherit it
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each point is a papermill kernel process
            return list(pool.map(one, enumerate(points, first)))
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


EXECUTORS = ("local", "slurm")


def _lists(listed: dict, point: dict) -> bool:
    """Whether a grid file's point `listed` is the planned `point` (whose lr may have been chosen on dev)."""
    return listed == point or (chosen_on_dev(listed.get("lr")) and {**listed, "lr": point.get("lr")} == point)


class _SlurmPoint:
    """One grid point as a SLURM task (submitit pickles it): `run_point`, requeued with the same arguments when
    SLURM preempts or times it out (submitit calls `checkpoint`); the run resumes from its own checkpoint."""

    def __call__(self, *args):
        return run_point(*args)

    def checkpoint(self, *args):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args)


def _on_slurm(paths, points, runs_dir: Path, notebook: Path, force: bool, timeout, overrides: dict,
              log, first: int = 1, total: int | None = None) -> list[Outcome]:
    """Submit the points to run as SLURM job arrays (one per grid file, with its resources); wait for them."""
    try:
        import submitit
    except ImportError:
        raise GridError("--executor slurm needs submitit: pip install -c constraints.txt -e '.[cluster]'") from None
    unknown = sorted(set(overrides) - set(SLURM_KEYS))
    if unknown:
        raise GridError(f"unknown slurm resource(s) {unknown}; valid: {', '.join(SLURM_KEYS)}")
    total = len(points) if total is None else total
    index = {rid: i for i, (_, rid) in enumerate(points, first)}
    outcomes: dict[str, Outcome] = {}
    # (resources, [(point, rid)]) per grid file: a point goes with the first file that lists it (as in `plan`),
    # matched by its parameters (a point whose lr was chosen on dev: by the others), so nothing is resolved twice.
    files = [(path, read_grid(path)) for path in grid_files(paths)]
    arrays = [({**slurm_resources(path), **overrides}, []) for path, _ in files]
    for point, rid in points:
        owner = next(i for i, (_, listed) in enumerate(files) if any(_lists(p, point) for p in listed))
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
