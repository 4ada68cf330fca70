"""Which run records a chapter reads: exactly the points of the grid files it names.

A chapter names its grid files (paths from the repository root, as `book/grids/ch5_insertion.yaml`); `petl.sweep.plan`
turns each into the run ids its points produce, and `grid_runs` loads the complete records of exactly those ids.
Nothing is chosen by filtering columns, so a grid's shared options (an `attn_bn` that full fine-tuning ignores) never
have to be caught again, and a point without a record is counted as pending instead of silently missing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from petl.runs import load_runs

if TYPE_CHECKING:
    from petl import sweep

ROOT = Path(__file__).resolve().parents[2]


def runs_dir() -> Path:
    """The runs folder the book reads: $PETL_RUNS_DIR, or runs/ in the repository."""
    return Path(os.environ.get("PETL_RUNS_DIR", ROOT / "runs"))


# --------------------------------------------------------------------------------------------------
# Columns every loaded record gets: its sizes, scale and display label, computed from its resolved options
# --------------------------------------------------------------------------------------------------

def _value(row, key):
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def size_of(row) -> str:
    """The method's size in the paper's notation: l for prefix / prompt, r for adapters / LoRA ('' for none)."""
    parts = []
    attn_mode, ffn_mode = row.get("petl.attn_mode"), row.get("petl.ffn_mode")
    if attn_mode in ("prefix", "prefix_nomlp", "prompt_tuning"):
        parts.append(f"l={int(row['petl.attn_bn'])}")
    elif attn_mode in ("adapter", "lora"):
        parts.append(f"r={int(row['petl.attn_bn'])}")
    if ffn_mode in ("adapter", "lora"):
        parts.append(f"r={int(row['petl.ffn_bn'])}" if not parts else f"r_ffn={int(row['petl.ffn_bn'])}")
    return ", ".join(parts)


def scale_of(row) -> str:
    """The composition scale s of a method with one: lora_alpha / r for LoRA, the FFN adapter's scalar for an
    adapter on the FFN ('learned' for a trainable one); '' for the others. Written as the presets table writes it."""
    attn_mode, ffn_mode = row.get("petl.attn_mode"), row.get("petl.ffn_mode")
    if ffn_mode == "lora":
        return f"{row['petl.lora_alpha'] / row['petl.ffn_bn']:g}"
    if attn_mode == "lora":
        return f"{row['petl.lora_alpha'] / row['petl.attn_bn']:g}"
    if ffn_mode == "adapter":
        scalar = _value(row, "petl.ffn_adapter_scalar")
        if scalar in (None, ""):
            return ""
        if scalar == "learnable_scalar":
            return "learned"
        return f"{float(scalar):g}"
    return ""


def label_of(row) -> str:
    """A readable name for tables and figures: the variant, its sizes and a scale other than 1. Display only:
    nothing reads a label back (rows are found by their variant, size and scale columns)."""
    label = str(row["variant"])
    size = size_of(row)
    if size:
        label += f" ({size})"
    scale = scale_of(row)
    lora = "lora" in (row.get("petl.ffn_mode"), row.get("petl.attn_mode"))
    if scale and (lora or scale != "1"):  # LoRA's scale always; an adapter's where it is not plain addition
        label += f" s={scale}"
    return label


def _with_columns(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    df = df.copy()
    rows = [row for _, row in df.iterrows()]
    df["size"] = [size_of(r) for r in rows]
    df["scale"] = [scale_of(r) for r in rows]
    df["label"] = [label_of(r) for r in rows]
    return df


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_LOADED: dict = {}


def records(directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every complete, current record of a runs folder (petl.runs.load_runs) with `size`, `scale` and `label`
    columns. A damaged record is named in a printed warning (once per folder state) and skipped."""
    directory = Path(directory or runs_dir()).resolve()
    try:
        state = directory.stat().st_mtime_ns
    except FileNotFoundError:
        state = None
    key = (str(directory), state)
    if key not in _LOADED:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = load_runs(directory)
        for warning in caught:
            print(f"WARNING: {warning.message}")
        _LOADED.clear()
        _LOADED[key] = _with_columns(df)
    return _LOADED[key]


def book_runs(directory: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every complete run of the folder, whatever grid it belongs to (the CPU cost table and the provenance
    appendix read all of them; a chapter reads `grid_runs`)."""
    return records(directory)


_PLANS: dict = {}


def grid_path(grid: str | os.PathLike) -> Path:
    """A grid file named from the repository root (or absolute)."""
    path = Path(grid)
    return path if path.is_absolute() else ROOT / path


def grid_points(grid: str | os.PathLike, directory: str | os.PathLike | None = None) -> sweep.Plan:
    """[(point, run id)] of one grid file, as `python -m petl sweep` would run them (petl.sweep.plan), and in
    ``.waiting`` its points whose lr is still to be chosen on dev (from the records of `directory`, default
    $PETL_RUNS_DIR or runs/)."""
    from petl import sweep
    path = grid_path(grid)
    directory = Path(directory or runs_dir()).resolve()
    key = (str(path), path.stat().st_mtime_ns, str(directory))
    cached = _PLANS.get(key)
    if cached is None or cached[1] != _depends(cached[0], directory):
        found = sweep.plan([path], runs_dir=directory)
        _PLANS[key] = (found, _depends(found, directory))
    return _PLANS[key][0]


def _mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _depends(found, directory: Path) -> tuple:
    """What a plan read besides its grid file: the sweep grids of its lr chosen on dev, and then the runs folder
    (a new record changes its mtime); nothing for an ordinary grid."""
    if not found.sources:
        return ()
    return (*((str(p), _mtime(p)) for p in found.sources), (str(directory), _mtime(directory)))


def _flat(point: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in point.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _matches(point: dict, where) -> bool:
    """where: None (every point), a list of variants, or {point key: value or list of values}, nested keys
    dotted ('overrides.attn_bn')."""
    if where is None:
        return True
    if isinstance(where, (list, tuple, set)):
        where = {"variant": list(where)}
    flat = _flat(point)
    for key, wanted in where.items():
        value = flat.get(key)
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


@dataclasses.dataclass
class GridRuns:
    """The records of some grid points: `runs` holds one row per point with a complete record (a DataFrame as
    `petl.runs.load_runs` returns, plus size / scale / label), `planned` every (grid, point, run id) asked for; a
    point whose lr is still to be chosen on dev has no run id yet, and its `petl.sweep.Waiting` stands in its place
    (counted as missing, described as such by `pending`)."""
    runs: pd.DataFrame
    planned: list[tuple[str, dict, str | sweep.Waiting]]

    @property
    def missing(self) -> list[tuple[str, dict, str]]:
        """The planned entries without a complete record, waiting points among them."""
        have = set(self.runs["run_id"]) if not self.runs.empty else set()
        return [entry for entry in self.planned if entry[2] not in have]

    @property
    def waiting(self) -> list[tuple[str, dict, sweep.Waiting]]:
        """The planned entries whose lr is chosen on dev and not chosen yet: a `petl.sweep.Waiting` holds the place
        of their run id."""
        return [entry for entry in self.planned if not isinstance(entry[2], str)]

    @property
    def grids(self) -> list[str]:
        return list(dict.fromkeys(grid for grid, _, _ in self.planned))

    def pending(self) -> str:
        """'all 21 points have a record', or how many do not and which, in words."""
        total, missing = len(self.planned), self.missing
        if not missing:
            return f"all {total} points have a record"
        varying = _varying([_described(point) for _, point, _ in self.planned])
        parts = [describe_points([point for _, point, rid in missing if isinstance(rid, str)], varying)]
        groups: dict = {}
        for _, point, wait in self.waiting:
            groups.setdefault((str(wait.sweep_grid), wait.have, wait.total, wait.why), []).append(_described(point))
        for (_, have, of, why), points in groups.items():
            parts.append(f"{describe_points(points, varying)} ("
                         + (why or f"lr not chosen yet: {have} of {of} sweep points have a record") + ")")
        return f"{len(missing)} of {total} points have no record yet: {'; '.join(p for p in parts if p)}"


def _described(point: dict) -> dict:
    """A point as `pending` names it: without an lr that is not chosen yet (a best_on_dev mapping)."""
    from petl.sweep import chosen_on_dev
    return {k: v for k, v in point.items() if not (k == "lr" and chosen_on_dev(v))}


def _varying(points: list[dict]) -> set[str]:
    """The point keys (dotted) whose values are not the same in every point."""
    flats = [_flat(p) for p in points]
    keys = {k for f in flats for k in f}
    return {k for k in keys if len({repr(f.get(k)) for f in flats}) > 1}


def describe_points(points: list[dict], varying: set[str] | None = None) -> str:
    """'prompt_tuning seeds 0, 1, 2; lora seeds 1, 2': points grouped by variant and the other keys that vary
    (`varying`, default: those that vary among `points`), seeds listed."""
    varying = _varying(points) if varying is None else varying
    groups: dict = {}
    for point in points:
        flat = _flat(point)
        what = str(flat.get("variant", "?"))
        extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in flat.items()
                          if k in varying and k not in ("variant", "seed"))
        key = f"{what} ({extra})" if extra else what
        groups.setdefault(key, []).append(flat.get("seed"))
    parts = []
    for key, seeds in groups.items():
        seeds = [s for s in seeds if s is not None] if "seed" in varying else []
        parts.append(f"{key} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else key)
    return "; ".join(parts)


def grid_runs(*grids, where=None, directory: str | os.PathLike | None = None) -> GridRuns:
    """The records of the points of some grid files, in grid order.

    Each argument is a grid file (from the repository root), a list of them, or (grid file, where) to take only
    some of its points: where is a list of variants or {point key: value}, e.g.
    `("book/grids/ch6_budget.yaml", {"variant": ["prefix", "pa_attn"], "overrides.attn_bn": 4})`; the keyword
    `where` applies to the grids given without one.
    """
    items = []
    for grid in grids:
        for g in (grid if isinstance(grid, list) else [grid]):
            items.append(g if isinstance(g, tuple) else (g, where))
    planned, seen = [], set()
    for grid, where in items:
        found = grid_points(grid, directory)
        for point, rid in found:
            if rid not in seen and _matches(point, where):
                seen.add(rid)
                planned.append((str(grid), point, rid))
        for wait in found.waiting:                     # no run id yet: the Waiting holds its place
            key = (str(wait.sweep_grid), repr(sorted(wait.point.items(), key=repr)))
            if key not in seen and _matches(wait.point, where):
                seen.add(key)
                planned.append((str(grid), wait.point, wait))
    df = records(directory)
    if df.empty:
        return GridRuns(df, planned)
    order = {rid: i for i, (_, _, rid) in enumerate(planned) if isinstance(rid, str)}
    found = df[df["run_id"].isin(order)]
    found = found.assign(_order=found["run_id"].map(order)).sort_values("_order").drop(columns="_order")
    return GridRuns(found.reset_index(drop=True), planned)


def lr_choice(point: dict, grid: str | os.PathLike, directory: str | os.PathLike | None = None):
    """The lr a point gets from the sweep grid `grid` (from the repository root) on the dev records of `directory`
    (default $PETL_RUNS_DIR or runs/): petl.sweep.lr_choice, whose ``table`` lists every candidate lr with its
    seeds' dev scores, n, mean, status and which was chosen."""
    from petl import sweep
    return sweep.lr_choice(point, grid_path(grid), Path(directory or runs_dir()))


def select(df: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows of a summary or a runs table matching every column == value (a list means 'any of')."""
    if df.empty:
        return df
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        if column not in df:
            return df.iloc[0:0]
        mask &= df[column].isin(value) if isinstance(value, (list, tuple, set)) else df[column] == value
    return df[mask]


#: The columns a summary keeps per row besides its numbers, so its rows can be found without reading a label.
KEY_COLUMNS = ("label", "variant", "size", "scale", "petl.attn_bn", "petl.ffn_bn")


def ran_on(run) -> str:
    """Where and in which precision one run computed its numbers: 'NVIDIA H200, bf16' or 'cpu, fp32'."""
    gpu = run.get("device.gpu")
    device = gpu if isinstance(gpu, str) and gpu else run.get("device.device", "?")
    return f"{device}, {'bf16' if run.get('bf16') is True else 'fp32'}"


def summarize(df: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """Mean ± std over seeds of `split.metric`, one row per method (label) in the order of `df`, with the run
    count, each seed's value, the paper-convention % parameters and the key columns (variant, size, scale,
    sizes)."""
    column = f"{split}.{metric}"
    keys = list(KEY_COLUMNS)
    if df.empty or column not in df:
        return pd.DataFrame(columns=[*keys, "params %", "mean", "std", "seeds", "values", metric, "ran on"])
    grouped = df.groupby("label", sort=False)
    out = grouped.agg(**{k: (k, "first") for k in keys if k != "label"},
                      **{"params %": ("parameters.paper_pct", "mean"), "mean": (column, "mean"),
                         "std": (column, "std"), "seeds": ("seed", "nunique")}).reset_index()
    out["std"] = out["std"].fillna(0.0)  # metrics are recorded on a 0-100 scale
    out["values"] = out["label"].map(grouped[column].agg(list))       # every seed's number, in the runs' order
    where = df.apply(ran_on, axis=1).groupby(df["label"], sort=False).agg(lambda s: "; ".join(sorted(set(s))))
    out["ran on"] = out["label"].map(where)                           # device and precision of its numbers
    out[metric] = [f"{m:.1f} ± {s:.1f}" if n > 1 else f"{m:.1f}" for m, s, n in
                   zip(out["mean"], out["std"], out["seeds"])]
    return out


def pick(table: pd.DataFrame, which) -> pd.Series | None:
    """The one row of a summary that `which` names: a variant, or {column: value} (variant, size, scale);
    None when no row matches. Naming two rows at once is an error: say which size or scale."""
    where = {"variant": which} if isinstance(which, str) else dict(which)
    rows = select(table, **where)
    if len(rows) > 1:
        raise ValueError(f"{where} names {len(rows)} rows ({', '.join(map(str, rows['label']))}); "
                         "give the size or scale too")
    return None if rows.empty else rows.iloc[0]


def baseline(name: str, directory: str | os.PathLike | None = None) -> dict | None:
    """A record written by `python -m petl.baselines` (runs/baselines/<name>.json), or None."""
    import json
    path = Path(directory or runs_dir()) / "baselines" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        print(f"WARNING: skipping damaged baseline record {path}: {error}")
        return None


def baseline_records(task: str, directory: str | os.PathLike | None = None) -> list[dict]:
    """Every baseline record of one task (runs/baselines/*.json written by `python -m petl.baselines`), by name."""
    import json
    folder = Path(directory or runs_dir()) / "baselines"
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            print(f"WARNING: skipping damaged baseline record {path}: {error}")
            continue
        if isinstance(record, dict) and record.get("task") == task:
            out.append(record)
    return out
