"""Run records: one folder per training run under ``runs/``, written so that a run counts only once complete.

Layout of a record (``runs/<run id>/``)::

    config.json      resolved TrainConfig + PETLConfig, package versions, git commit, device (no hostname)
    metrics.json     status (complete | failed + reason), dev/test metrics, best dev step, parameter report,
                     wall time, tokens/s, peak memory
    history.csv      one row per optimizer step (loss, lr, tokens); dev metrics on the evaluation steps
    train.ipynb      the executed notebook, when the run came through ``python -m petl sweep``
    weights/         the trained method (and task head), written with ``petl.save`` (git-ignored)

The weights are part of the record: written into the same temporary folder and moved into place by the same
rename, under the run's lock, so a record and its weights are only ever replaced together. (Records made before
this held them in ``<runs dir>/../.weights/<run id>/``; ``RunRecord.weights_path`` still finds those.)

How a record is made safe against being killed at any moment (SIGKILL, power loss):

1. every file is written into a hidden temporary folder ``runs/.tmp-<run id>-<pid>/`` and fsync'ed;
2. the folder is renamed into place with one ``os.rename`` (atomic on POSIX), then the parent folder is fsync'ed.

So ``runs/<run id>/`` either does not exist or holds a whole record; hidden folders are never read by
:func:`load_runs`. Replacing an older record (``force``) first moves the old folder to ``.trash-...``; a kill
between the two renames leaves no record (the next sweep reruns it), never a mixed one.

Two sweeps on one runs folder coordinate through per-run lock files ``runs/.locks/<run id>.lock`` created with
``O_CREAT | O_EXCL``; a lock whose process is gone (checked by pid and process start time) is stale and taken over.
A held lock's file is touched every 30 s; a lock of another host (a shared runs folder on a cluster) is stale once
that heartbeat is older than 10 minutes ($PETL_LOCK_STALE_S), and is then reported and taken over.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil

from petl.config import LATER_FIELDS, PETLConfig, computation_version
from petl.files import fsync_dir, write_atomic

# Fields every record must have; a record without them is damaged and skipped.
REQUIRED_CONFIG_KEYS = ("run_id", "train", "petl")
REQUIRED_TRAIN_KEYS = ("task", "model", "variant", "seed")
REQUIRED_METRICS_KEYS = ("status",)
REQUIRED_COMPLETE_KEYS = ("dev", "test", "best_step", "wall_time_s", "tokens_per_s", "parameters")
STATUSES = ("complete", "failed")
# Folders of runs/ that hold other records than training runs (petl.baselines, benchmarks/, the reference
# agreement, the en-ro-l10n source survey).
#: Folders of runs/ that are not records of runs/ itself (baselines, benchmarks, reruns of its points elsewhere).
RESERVED_FOLDERS = ("baselines", "benchmarks", "cpu-timing", "cross-machine", "l10n", "reference", "traces")

# Keys of the training configuration that do not change what a run computes; they stay out of its hash.
_NOT_HASHED = ("runs_dir", "force", "progress", "weights_dir", "gradient_checkpointing", "checkpoint_every",
               "trace_every")
#: TrainConfig fields added after the first records, with their defaults: such a field enters the hash only when
#: set away from its default, so adding one leaves every existing run id as it was (petl.config.LATER_FIELDS is
#: the same rule for PETLConfig fields).
LATER_TRAIN_FIELDS: dict = {"eval_num_beams": None}


class RecordError(ValueError):
    """A run record on disk is damaged (unreadable, truncated, missing a field, non-numeric metric)."""


class RunLocked(RuntimeError):
    """Another live process holds the lock of this run."""


# --------------------------------------------------------------------------------------------------
# Naming
# --------------------------------------------------------------------------------------------------

def config_hash(resolved: dict) -> str:
    """Short stable hash (8 hex digits) of what a run computes: the resolved train and petl fields, and the
    version of the method's computation once it is past 1 (petl.config.COMPUTATION_VERSION). Settings that do not
    change a result (where records go, progress bars, exact gradient checkpointing, the checkpoint and trace
    intervals) and petl fields added later
    and left at their defaults (petl.config.LATER_FIELDS, LATER_TRAIN_FIELDS) stay out, so unchanged methods keep their run ids."""
    def strip(d):
        return {k: v for k, v in d.items()
                if k not in _NOT_HASHED and not (k in LATER_TRAIN_FIELDS and v == LATER_TRAIN_FIELDS[k])}
    method = {k: v for k, v in resolved.get("petl", {}).items()
              if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    payload = {"train": strip(resolved.get("train", {})), "petl": method}
    if resolved.get("computation", 1) > 1:
        payload["computation"] = resolved["computation"]
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", str(text).replace("/", "--")).strip("-")


def budget_label(train: dict) -> str:
    """'300steps' or '3ep' (or 'maxsteps-of-3ep'), from the resolved max_steps / epochs."""
    steps, epochs = train.get("max_steps"), train.get("epochs")
    if steps:
        return f"{int(steps)}steps"
    if epochs:
        return f"{epochs:g}ep"
    return "nobudget"


def run_id(resolved: dict) -> str:
    """Folder name of a run: task_model_variant_seed<k>_<budget>_<hash of the resolved config>."""
    t = resolved["train"]
    parts = [t["task"], t["model"], t["variant"], f"seed{t['seed']}", budget_label(t), config_hash(resolved)]
    return "_".join(_slug(p) for p in parts)


WEIGHTS = "weights"  # the folder of a record that holds its petl.save output


class RunsDirError(OSError):
    """The runs folder cannot take a record (not writable): found before training, not after it."""


def check_writable(runs_dir: str | os.PathLike) -> None:
    """Raise RunsDirError unless ``runs_dir`` (created if missing) takes a new folder and file, as every record
    and its weights need; called before a run trains, so no finished run dies on its way to disk."""
    runs_dir = Path(runs_dir)
    probe = runs_dir / f".probe-{os.getpid()}-{time.time_ns()}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        (probe / "probe").write_bytes(b"ok")
    except OSError as error:
        raise RunsDirError(f"cannot write run records to {runs_dir.resolve()} ({error.strerror or error}): a run "
                           "writes its record and weights there; make it writable or choose another runs_dir"
                           ) from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------

def package_versions() -> dict:
    """Versions of python and the packages a run depends on."""
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "accelerate", "tokenizers", "numpy",
                 "rouge-score", "sacrebleu", "papermill"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


GIT_COMMIT_VAR = "PETL_GIT_COMMIT"  # the commit of a copy without .git (a GPU machine's), passed in by whoever copied it


def git_commit() -> dict:
    """Commit of the code that ran (and whether the tree had uncommitted changes). Outside git, the commit named
    by $PETL_GIT_COMMIT (dirty unknown), else None."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        passed = os.environ.get(GIT_COMMIT_VAR, "").strip() or None
        return {"commit": passed, "dirty": None, **({"commit_from": GIT_COMMIT_VAR} if passed else {})}


#: The CPU features that change which kernels torch runs (and so the order of float sums): vector width, bf16.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and which of CPU_FEATURES it has, from /proc/cpuinfo (Linux; elsewhere the model is
    platform's and the features are not known: None). Machines of one name differ in these, so a record says."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return {"cpu_model": platform.processor() or platform.machine(), "cpu_features": None}
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name") or platform.processor() or platform.machine(),
            "cpu_features": [f for f in CPU_FEATURES if f in flags]}


def device_info(device: Any = None, num_processes: int = 1) -> dict:
    """Hostname-free description of where the run ran."""
    import torch
    info = {"device": str(device) if device is not None else "cpu", "num_processes": num_processes,
            "cpu": platform.processor() or platform.machine(), **cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------------------------------
# Writing records (atomic writes: petl.files)
# --------------------------------------------------------------------------------------------------

def _json_default(o):
    if hasattr(o, "item"):          # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _dump(obj) -> str:
    # allow_nan=False: a NaN must never reach a record as a number (failed runs store it as a string).
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"


def staging_dir(runs_dir: str | os.PathLike, rid: str) -> Path:
    """A fresh hidden temporary folder for a record being written."""
    path = Path(runs_dir) / f".tmp-{rid}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def history_csv(history: list[dict]) -> str:
    """A run's per-step rows as CSV text (columns in order of first appearance; dev metrics on eval steps)."""
    import csv
    import io
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _write_record_files(tmp: Path, config: dict, metrics: dict, history: list[dict] | None,
                        extra_files: dict[str, Path] | None) -> None:
    """config.json, metrics.json, history.csv and the extra files of a record, fsync'ed, into `tmp`."""
    files = {"config.json": _dump(config), "metrics.json": _dump(metrics)}
    if history:
        files["history.csv"] = history_csv(history)
    for name, text in files.items():
        with open(tmp / name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, tmp / name)
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)


def write_record(runs_dir: str | os.PathLike, rid: str, config: dict, metrics: dict,
                 history: list[dict] | None = None, extra_files: dict[str, Path] | None = None,
                 pause: Any = None, weights: Any = None) -> Path:
    """Write a whole record atomically and return its folder.

    ``config`` and ``metrics`` are JSON dicts; ``history`` a list of per-step dicts (-> history.csv);
    ``extra_files`` maps a file name in the record to an existing file to copy. ``weights`` is a function
    that writes the run's weights into the folder it is given (the record's ``weights/``): if it fails (a full
    disk), the record is still written, as failed with the reason and every metric kept. ``pause`` is a test
    hook called at 'weights' (weights written) and 'record' (files written, before the folder moves into place).
    """
    if metrics.get("status") not in STATUSES:
        raise ValueError(f"metrics['status'] must be one of {STATUSES}, got {metrics.get('status')!r}")
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(runs_dir, rid)
    def without_weights(error: OSError) -> dict:
        shutil.rmtree(tmp / WEIGHTS, ignore_errors=True)
        return dict(metrics, status="failed", weights=None,
                    reason=f"saving the weights into {runs_dir / rid / WEIGHTS} failed ({error}); the metrics "
                           "are kept, the weights are not: free space and rerun the point")

    if weights is not None:
        try:
            weights(tmp / WEIGHTS)
        except OSError as error:
            metrics = without_weights(error)
        if pause is not None:
            pause("weights")
    try:
        _write_record_files(tmp, config, metrics, history, extra_files)
    except OSError as error:
        try:  # the weights may have taken the last space: keep the record, as failed, without them
            if not (tmp / WEIGHTS).exists():
                raise
            metrics = without_weights(error)
            _write_record_files(tmp, config, metrics, history, extra_files)
        except OSError as final_error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunsDirError(f"cannot write the record of {rid} into {runs_dir.resolve()} ({final_error}); "
                               f"its metrics, so that nothing is lost: {json.dumps(metrics, default=str)}"
                               ) from None
    if pause is not None:
        pause("record")
    final = runs_dir / rid
    if final.exists():                       # replacing an older record (force / failed rerun)
        trash = runs_dir / f".trash-{rid}-{os.getpid()}-{time.time_ns()}"
        os.rename(final, trash)
        if pause is not None:
            pause("replace")
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(runs_dir)
    return final


def add_file_to_record(record_dir: str | os.PathLike, name: str, src: str | os.PathLike) -> Path:
    """Copy a file (e.g. the executed notebook) into an existing record atomically."""
    record_dir = Path(record_dir)
    write_atomic(record_dir / name, Path(src).read_bytes())
    return record_dir / name


def clean_stale_temp(runs_dir: str | os.PathLike, rid: str | None = None) -> list[Path]:
    """Remove ``.tmp-*`` / ``.trash-*`` folders left by processes that no longer run; return what was removed."""
    removed = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return removed
    for p in runs_dir.iterdir():
        m = re.match(r"^\.tmp-(.+)-(\d+)$", p.name) or re.match(r"^\.trash-(.+)-(\d+)-\d+$", p.name)
        if not m or not p.is_dir():
            continue
        if rid is not None and m.group(1) != rid:
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def clean_leftovers(runs_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed processes left in a runs folder and return it: temporary and trash record folders,
    the sweep's working notebooks (``.notebooks/<run id>-<pid>.ipynb``), probe folders, locks of dead processes
    and damaged locks (after a warning naming them), the checkpoints of runs whose record is complete and
    half-written checkpoints of dead processes, and the temporary weight folders of records made before
    weights moved into the record (``../.weights/.tmp-<run id>-<pid>``). Only what a dead process left."""
    runs_dir = Path(runs_dir)
    removed = clean_stale_temp(runs_dir)
    if not runs_dir.is_dir():
        return removed

    def dead(pid: str) -> bool:
        return pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))

    for probe in runs_dir.glob(".probe-*"):
        if dead(probe.name.split("-")[1]):
            shutil.rmtree(probe, ignore_errors=True)
            removed.append(probe)
    for notebook in (runs_dir / ".notebooks").glob("*.ipynb"):
        if dead(notebook.stem.rsplit("-", 1)[-1]):
            notebook.unlink(missing_ok=True)
            removed.append(notebook)
    for lock in (runs_dir / ".locks").glob("*.lock"):
        info = _read_lock(lock)
        if info is None:
            continue
        if info == {}:
            if _age(lock) < LOCK_WRITE_GRACE_S:
                continue  # perhaps being written right now
            warnings.warn(f"removing the damaged lock file {lock} ({_lock_text(lock)!r})", stacklevel=2)
        elif not _lock_is_stale(info, lock):
            continue
        elif info.get("host") != socket.gethostname():
            warnings.warn(f"removing the stale lock of {_owner(info, lock)}: {lock}", stacklevel=2)
        lock.unlink(missing_ok=True)
        removed.append(lock)
    for folder in (runs_dir / ".checkpoints").glob("*"):          # petl.checkpoints: a run's resumable states
        if record_status(runs_dir, folder.name) == "complete":     # killed between its record and their removal
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            continue
        for tmp in folder.glob(".tmp-step-*"):
            if dead(tmp.name.rsplit("-", 1)[-1]):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    legacy = runs_dir.resolve().parent / ".weights"
    for tmp in legacy.glob(".tmp-*"):
        if tmp.is_dir() and dead(tmp.name.rsplit("-", 1)[-1]):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


# --------------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid)
    except (OverflowError, ValueError):
        return False


def _proc_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


#: A held lock's file is touched every LOCK_HEARTBEAT_S seconds; one from another host whose last touch is older
#: than LOCK_STALE_S (default 10 min, $PETL_LOCK_STALE_S) is stale: its process cannot be asked, its silence can.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = float(os.environ.get("PETL_LOCK_STALE_S", "600"))


def _lock_is_stale(info: dict, path: Path | None = None) -> bool:
    """A lock of this host is stale when its process is gone (pid and start time); one of another host when its
    heartbeat (the file's mtime) is older than LOCK_STALE_S."""
    if info.get("host") != socket.gethostname():
        return path is not None and _age(path) > LOCK_STALE_S
    start = _proc_start(info["pid"])
    return start is None or abs(start - float(info.get("start") or 0)) > 1.0


def _owner(info: dict, path: Path) -> str:
    here = info.get("host") == socket.gethostname()
    if here:
        return f"live process {info.get('pid')}"
    return (f"process {info.get('pid')} on host {info.get('host')!r}, heartbeat {_age(path):.0f} s ago (stale "
            f"after {LOCK_STALE_S:g} s)")


@contextlib.contextmanager
def _heartbeat(path: Path) -> Iterator[None]:
    """Touch the lock file every LOCK_HEARTBEAT_S seconds while it is held, so other hosts see it is alive."""
    import threading
    stop = threading.Event()

    def beat():
        while not stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"petl-lock-heartbeat-{path.stem}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


LOCK_WRITE_GRACE_S = 5.0  # a lock file younger than this may be half-written by its live owner


def _read_lock(path: Path) -> dict | None:
    """The lock's owner {pid, start, host}; None if there is no lock file; {} if it is damaged (half-written by a
    process killed mid-write, or anything else that is not an owner record)."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    valid = (isinstance(info, dict) and isinstance(info.get("pid"), int) and isinstance(info.get("host"), str)
             and isinstance(info.get("start"), (int, float, type(None))))
    return info if valid else {}


def _lock_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[:200]
    except OSError as error:
        return f"unreadable: {error}"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


@contextlib.contextmanager
def run_lock(runs_dir: str | os.PathLike, rid: str) -> Iterator[Path]:
    """Hold ``runs/.locks/<run id>.lock`` for the duration; raise RunLocked if a live process holds it.

    A lock held by one of this process's ancestors (a sweep running this run's notebook) counts as ours.
    """
    lock_dir = Path(runs_dir) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{rid}.lock"
    me = {"pid": os.getpid(), "start": _proc_start(os.getpid()), "host": socket.gethostname()}
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = _read_lock(path)
            if info is None:
                continue                   # released just now: try again
            ancestors = {p.pid for p in psutil.Process().parents()}
            if info and info.get("host") == socket.gethostname() and info.get("pid") in ancestors \
                    and not _lock_is_stale(info):
                yield path                 # our parent sweep holds it for us
                return
            if info == {}:
                # Damaged: a writer killed between O_EXCL and write, one writing right now, or a file someone
                # edited. Younger than the grace period it may be live; older, it is reported and taken over.
                if _age(path) < LOCK_WRITE_GRACE_S:
                    raise RunLocked(f"run {rid} is being locked by another process ({path}); if no other "
                                    f"process runs it, delete that file or wait {LOCK_WRITE_GRACE_S:g} s")
                warnings.warn(f"taking over the damaged lock file {path} ({_lock_text(path)!r})", stacklevel=3)
            elif not _lock_is_stale(info, path):
                raise RunLocked(f"run {rid} is locked by {_owner(info, path)} ({path})")
            elif info.get("host") != socket.gethostname():
                warnings.warn(f"taking over the lock of {_owner(info, path)}: {path}", stacklevel=3)
            # Stale: take it over by removing and retrying O_EXCL (only one taker wins).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
            f.flush()
            os.fsync(f.fileno())
        try:
            with _heartbeat(path):
                yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                if _read_lock(path) == json.loads(json.dumps(me)):
                    os.unlink(path)
        return
    raise RunLocked(f"could not take the lock {path}")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def read_record(record_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Read and validate (config, metrics) of one record; raise RecordError naming the bad file."""
    record_dir = Path(record_dir)
    config = _load_json(record_dir / "config.json")
    metrics = _load_json(record_dir / "metrics.json")
    for key in REQUIRED_CONFIG_KEYS:
        if key not in config:
            raise RecordError(f"{record_dir / 'config.json'}: missing field {key!r}")
    for key in REQUIRED_TRAIN_KEYS:
        if key not in config["train"]:
            raise RecordError(f"{record_dir / 'config.json'}: missing field 'train.{key}'")
    mpath = record_dir / "metrics.json"
    for key in REQUIRED_METRICS_KEYS:
        if key not in metrics:
            raise RecordError(f"{mpath}: missing field {key!r}")
    if metrics["status"] not in STATUSES:
        raise RecordError(f"{mpath}: status {metrics['status']!r} is not one of {STATUSES}")
    if metrics["status"] == "complete":
        for key in REQUIRED_COMPLETE_KEYS:
            if key not in metrics:
                raise RecordError(f"{mpath}: missing field {key!r}")
        for split in ("dev", "test"):
            if not isinstance(metrics[split], dict) or not metrics[split]:
                raise RecordError(f"{mpath}: '{split}' must be a non-empty mapping of metric -> number")
            for name, value in metrics[split].items():
                if not _is_number(value):
                    raise RecordError(f"{mpath}: metric {split}.{name} = {value!r} is not a finite number")
        for key in ("wall_time_s", "tokens_per_s"):
            if not _is_number(metrics[key]):
                raise RecordError(f"{mpath}: {key} = {metrics[key]!r} is not a finite number")
    if config["run_id"] != record_dir.name:
        raise RecordError(f"{record_dir / 'config.json'}: run_id {config['run_id']!r} does not match "
                          f"its folder {record_dir.name!r}")
    return config, metrics


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def iter_records(runs_dir: str | os.PathLike) -> Iterator[Path]:
    """Record folders under runs_dir (hidden temporary / trash / lock folders excluded), sorted by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return
    for p in sorted(runs_dir.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in RESERVED_FOLDERS:
            yield p


def superseded(config: dict) -> bool:
    """True when a record was computed by an older version of its method than petl's current one."""
    try:
        current = computation_version(PETLConfig.from_dict(config["petl"]))
    except (ValueError, TypeError):
        return True  # a method petl no longer accepts
    return config.get("computation", 1) < current


def load_runs(runs_dir: str | os.PathLike = "runs", include_failed: bool = False,
              include_superseded: bool = False):
    """Every complete run under runs_dir as one pandas DataFrame (one row per run).

    Records whose method computed something other than petl's current code (`superseded`) are left out, so no
    table mixes records of old and new method code; include_superseded keeps them.

    Columns: ``run_id``, ``path``, ``status``, the training config flattened (``task``, ``model``,
    ``variant``, ``seed``, ``lr``, ...), the PETL config as ``petl.<field>``, ``device.*``, ``git.*``,
    ``versions.*``, and the metrics as
    ``dev.<metric>``, ``test.<metric>``, ``parameters.<key>``, ``wall_time_s``, ``tokens_per_s``, ... .
    Damaged records are skipped with a warning naming the file; failed runs only with include_failed.
    """
    import pandas as pd
    rows = []
    for rec in iter_records(runs_dir):
        try:
            config, metrics = read_record(rec)
        except RecordError as e:
            warnings.warn(f"skipping damaged run record: {e}", stacklevel=2)
            continue
        if metrics["status"] != "complete" and not include_failed:
            continue
        if not include_superseded and superseded(config):
            continue
        rows.append(_row(rec, config, metrics))
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("run_id").reset_index(drop=True)
    return df


def _row(path: Path, config: dict, metrics: dict) -> dict:
    """One record as a row of `load_runs`."""
    row = {"run_id": config["run_id"], "path": str(path), "computation": config.get("computation", 1)}
    row.update(_flatten(config["train"]))
    row.update(_flatten(config["petl"], "petl."))
    row.update(_flatten(config.get("device", {}), "device."))
    for key in ("device", "git", "versions"):
        if isinstance(config.get(key), dict):
            row.update(_flatten(config[key], key + "."))
    row.update(_flatten({k: v for k, v in metrics.items() if k != "history"}))
    return row


def record_status(runs_dir: str | os.PathLike, rid: str) -> str | None:
    """'complete', 'failed', 'damaged' or None (no record) for a run id."""
    rec = Path(runs_dir) / rid
    if not rec.is_dir():
        return None
    try:
        _, metrics = read_record(rec)
    except RecordError:
        return "damaged"
    return metrics["status"]


def is_complete(runs_dir: str | os.PathLike, rid: str) -> bool:
    """True if runs_dir holds a complete, readable record of this run id (`petl.train_config.resolve_run`
    gives a configuration's id)."""
    return record_status(runs_dir, rid) == "complete"


@dataclass
class RunRecord:
    """A run's record folder, with its config and metrics loaded."""
    path: Path
    config: dict
    metrics: dict

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.metrics["status"]

    @property
    def history(self):
        """Per-step history as a DataFrame (empty if none)."""
        import pandas as pd
        f = self.path / "history.csv"
        return pd.read_csv(f) if f.exists() else pd.DataFrame()

    @property
    def row(self):
        """The record as its row of `load_runs` (a pandas Series: ``task``, ``seed``, ``dev.accuracy``, ...)."""
        import pandas as pd
        return pd.Series(_row(self.path, self.config, self.metrics))

    @property
    def weights_path(self) -> Path | None:
        """The run's saved method: the record's weights/ folder (or, for records made before weights moved into
        the record, ``<runs dir>/../.weights/<run id>``); None when the run saved none."""
        w = self.metrics.get("weights")
        if not w:
            return None
        return self.path / w if w == WEIGHTS else self.path.parent.resolve().parent / w

    @classmethod
    def load(cls, path) -> "RunRecord":
        config, metrics = read_record(path)
        return cls(Path(path), config, metrics)
