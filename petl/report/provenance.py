"""Where each chapter's numbers come from: the commits, environments and devices its run records name.

A chapter's grids are the grid files its code names (`book/grids.../*.yaml` or `book/protocol/*.yaml`, found in
its code cells), the grids of the claims whose verdicts it shows (`verdict_table("C1")`: book/claims.yaml), and the
stage-1 sweeps those grids choose their learning rate from (`lr: {best_on_dev: ...}`), so the provenance appendix
follows the chapters without a list of its own. Each record's config.json carries the code's
commit and whether its tree had uncommitted changes (`git`), the package versions (`versions`) and the device
(`device`), as petl.runs wrote them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd

from petl.report.selection import ROOT, grid_runs

BOOK = ROOT / "book"
#: A grid file named in a chapter's code; book/grids-traces/ is left out, since its records are in runs/traces (the
#: cross-machine table pairs them with runs/), not in the runs folder this appendix counts.
GRID_NAME = re.compile(r"book/(?:grids(?!-traces/)[\w-]*|protocol)/[\w.-]+\.ya?ml")
VERDICT_CALL = re.compile(r"verdict_table\(\s*[\"'](C\d+)[\"']")
VERSIONS = ("python", "torch", "transformers")


def chapter_title(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def chapter_order(book_dir: Path = BOOK) -> list[str]:
    """The book's files in table-of-contents order (book/_toc.yml)."""
    import yaml
    toc = yaml.safe_load((book_dir / "_toc.yml").read_text())
    return [entry["file"] for entry in toc.get("chapters", [])]


def chapter_grids(book_dir: Path = BOOK) -> dict[str, list[str]]:
    """{chapter file: the grid files its code names}, for the chapters that name any, in the book's order."""
    out = {}
    for name in chapter_order(book_dir):
        path = book_dir / f"{name}.ipynb"
        if not path.is_file():
            continue
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "code")
        grids = GRID_NAME.findall(code)
        claimed = VERDICT_CALL.findall(code)
        if claimed:
            from petl.report.verdict import claims
            spec = claims()
            grids += [g for cid in claimed for comp in spec[cid]["comparisons"] for g in comp["grids"]]
        grids = list(dict.fromkeys(g for grid in grids for g in (grid, *_sweeps_of(grid))))
        if grids:
            out[name] = grids
    return out


def _sweeps_of(grid: str) -> list[str]:
    """The stage-1 sweep grids a grid chooses its learning rates from (`lr: {best_on_dev: <file>}`), named from
    the repository root like the grid."""
    from petl.sweep import BEST_ON_DEV, read_grid
    found = []
    for point in read_grid(ROOT / grid):
        lr = point.get("lr")
        if isinstance(lr, dict) and BEST_ON_DEV in lr:
            found.append(str(Path(grid).parent / lr[BEST_ON_DEV]))
    return list(dict.fromkeys(found))


def _counts(values: pd.Series, empty: str = "none recorded") -> str:
    """'a (3), b (2)', most frequent first; missing values counted as `empty`."""
    values = values.astype(object).where(values.notna(), empty)
    return ", ".join(f"{value} ({n})" for value, n in values.value_counts().items())


def _short(commit) -> str | None:
    return None if commit is None or pd.isna(commit) else str(commit)[:7]


def _dirty(value) -> str:
    if value is None or pd.isna(value):
        return "unknown"
    return "uncommitted changes" if bool(value) else "clean"


def _device(frame: pd.DataFrame) -> pd.Series:
    gpu = frame["device.gpu"] if "device.gpu" in frame else pd.Series(index=frame.index, dtype=object)
    return gpu.fillna(frame["device.device"] if "device.device" in frame else "unknown")


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series([None] * len(frame), index=frame.index, dtype=object)


def chapter_records(book_dir: Path = BOOK, directory=None) -> dict[str, "GridRuns"]:
    """{chapter: the GridRuns of every point of its grids}."""
    return {name: grid_runs(grids, directory=directory) for name, grids in chapter_grids(book_dir).items()}


def provenance_table(chapters: dict, book_dir: Path = BOOK) -> pd.DataFrame:
    """One row per chapter: its grids, points with a record, and the commits, trees, versions and devices of
    those records (each value with its count of records)."""
    rows = []
    for name, sel in chapters.items():
        runs = sel.runs
        row = {"chapter": chapter_title(book_dir / f"{name}.ipynb"),
               "grids": ", ".join(Path(g).name for g in sel.grids),
               "records / points": f"{len(runs)} / {len(sel.planned)}"}
        if runs.empty:
            row.update({"commits": "—", "trees": "—", **{v: "—" for v in VERSIONS}, "devices": "—"})
        else:
            row["commits"] = _counts(_column(runs, "git.commit").map(_short))
            row["trees"] = _counts(_column(runs, "git.dirty").map(_dirty))
            for v in VERSIONS:
                row[v] = _counts(_column(runs, f"versions.{v}"))
            row["devices"] = _counts(_device(runs))
        rows.append(row)
    return pd.DataFrame(rows)


def _git(*args) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commits_table(chapters: dict) -> pd.DataFrame:
    """One row per commit the chapters' records name: its date and subject where this repository's history has
    it, the chapters and records that ran it, and how many of those had uncommitted changes."""
    frames = [sel.runs.assign(_chapter=name) for name, sel in chapters.items() if not sel.runs.empty]
    if not frames:
        return pd.DataFrame()
    runs = pd.concat(frames, ignore_index=True).drop_duplicates(["run_id", "_chapter"])
    runs = runs.assign(_commit=_column(runs, "git.commit"), _dirty=_column(runs, "git.dirty"))
    rows = []
    for commit, group in runs.groupby(runs["_commit"].fillna(""), sort=False):
        unique = group.drop_duplicates("run_id")
        logged = _git("show", "-s", "--format=%cs %s", f"{commit}^{{commit}}") if commit else None
        rows.append({"commit": commit[:7] if commit else "none recorded",
                     "in this history": "—" if not commit else (logged[:10] if logged else "no"),
                     "subject": "" if not logged else (logged[11:71] + ("…" if len(logged) > 71 else "")),
                     "records": len(unique),
                     "uncommitted changes": int((unique["_dirty"] == True).sum()),  # noqa: E712 (None stays out)
                     "chapters": ", ".join(dict.fromkeys(group["_chapter"]))})
    return pd.DataFrame(rows).sort_values("records", ascending=False, kind="stable").reset_index(drop=True)


def summary(chapters: dict) -> dict:
    """Counts over every record the chapters' grids hold (each record once): records, points, commits named,
    records without a commit (and their devices), with uncommitted changes, and per device."""
    frames = [sel.runs for sel in chapters.values() if not sel.runs.empty]
    points = {rid for sel in chapters.values() for _, _, rid in sel.planned}
    if not frames:
        return dict(records=0, points=len(points), commits=0, no_commit=0, no_commit_devices="none", dirty=0,
                    devices="no runs")
    runs = pd.concat(frames, ignore_index=True).drop_duplicates("run_id")
    commit = _column(runs, "git.commit")
    return dict(records=len(runs), points=len(points), commits=int(commit.dropna().nunique()),
                no_commit=int(commit.isna().sum()),
                no_commit_devices=_counts(_device(runs[commit.isna()])) if commit.isna().any() else "none",
                dirty=int((_column(runs, "git.dirty") == True).sum()),  # noqa: E712
                devices=_counts(_device(runs)))


# --------------------------------------------------------------------------------------------------
# The same point on two machines
# --------------------------------------------------------------------------------------------------

#: Folders of runs/ that hold points run again elsewhere, under the run id of the record in runs/: the CPU timing
#: reruns (`runs/cpu-timing`), the protocol's cross-machine sample (`runs/cross-machine`, book/protocol/README.md)
#: and the traced reruns of prefix tuning (`runs/traces`, book/grids-traces/).
RERUN_FOLDERS = ("cpu-timing", "cross-machine", "traces")
#: Columns of a record that are not what it computed: where, when, how fast, and the seed (the spread's axis).
_NOT_THE_POINT = ("run_id", "path", "seed", "progress", "save_weights", "size", "scale", "label")


def _point_key(frame: pd.DataFrame) -> pd.Series:
    """A key per record that is equal for the records of one grid point but for the seed."""
    from petl.train_config import TrainConfig
    import dataclasses
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    columns = sorted(c for c in frame.columns
                     if (c in fields or c.startswith(("petl.", "overrides.")) or c == "computation")
                     and c not in _NOT_THE_POINT)
    return frame[columns].astype(object).where(frame[columns].notna(), None).apply(
        lambda row: repr(tuple(row)), axis=1)


def cross_machine(directory=None, folders=RERUN_FOLDERS) -> pd.DataFrame:
    """One row per record of a rerun folder whose run id also has a record in the runs folder (current method
    code on both sides, so one computation): the method, the test score (the primary metric) and device of each
    record, their difference (rerun - runs/), and the standard deviation over the seeds of that point in the runs
    folder (on whatever machines they ran), the spread the difference is to be read against."""
    from petl.report.selection import records, runs_dir
    base = Path(directory or runs_dir())
    here = records(base)
    rows = []
    keys = _point_key(here) if not here.empty else None
    for folder in folders:
        if here.empty or not (base / folder).is_dir():
            continue
        there = records(base / folder)
        for i, rerun in there.iterrows():
            match = here[here["run_id"] == rerun["run_id"]]
            if match.empty:
                continue
            run = match.iloc[0]
            metric = f"test.{run['primary_metric']}"
            siblings = here.loc[keys == keys[match.index[0]], metric].dropna()
            rows.append({"run id": run["run_id"], "method": run["label"], "task": run["task"],
                         "steps": run["steps"], "seed": run["seed"], "metric": metric,
                         "runs/": run[metric], "device": _device(match).iloc[0],
                         "rerun in": f"runs/{folder}/", "rerun": rerun[metric],
                         "rerun device": _device(there.loc[[i]]).iloc[0],
                         "difference": rerun[metric] - run[metric],
                         "seed sd": siblings.std() if len(siblings) > 1 else float("nan"),
                         "seeds": len(siblings)})
    return pd.DataFrame(rows, columns=["run id", "method", "task", "steps", "seed", "metric", "runs/", "device",
                                       "rerun in", "rerun", "rerun device", "difference", "seed sd", "seeds"])


def cross_machine_summary(pairs: pd.DataFrame) -> dict[str, str]:
    """The counts the appendix states: pairs, pairs across two kinds of device (CPU and GPU), the largest
    |difference| and the largest seed standard deviation beside a pair ('—' where there is none)."""
    if pairs.empty:
        return dict(pairs="0", across="0", largest="—", sd="—")
    across = int(((pairs["device"] == "cpu") != (pairs["rerun device"] == "cpu")).sum())
    sd = pairs["seed sd"].max()
    return dict(pairs=str(len(pairs)), across=str(across), largest=f"{pairs['difference'].abs().max():.1f}",
                sd="—" if pd.isna(sd) else f"{sd:.1f}")


def _one_decimal(value) -> str:
    return "—" if pd.isna(value) else f"{value:.1f}"


#: How the appendix shows `cross_machine`'s numbers (a point with one seed has no spread: '—').
CROSS_MACHINE_FORMAT = {"runs/": _one_decimal, "rerun": _one_decimal, "seed sd": _one_decimal,
                        "difference": lambda value: f"{value:+.1f}"}
