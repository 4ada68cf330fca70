"""The file utilities every module that writes or checks files uses: atomic writes (``write_atomic``,
``write_json``), an exclusive file lock (``file_lock``), a file's sha256, manifests of a folder's files (size and
sha256) checked cheaply on every use, and telling a full disk. (A run's own lock, which must name its owner and
survive an NFS home, is ``petl.runs.run_lock``.)"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterable, Iterator


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and one ``os.replace``.

    Readers (other processes) see the old file or the new one, never half of one; a killed writer leaves at
    most a ``.<name>.<pid>-<random>.tmp`` file, never a damaged ``path``. ``durable`` fsyncs the file before the
    rename and the folder after it (for records and manifests; not for caches whose loss costs a recomputation).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb" if isinstance(data, bytes) else "x", **({} if isinstance(data, bytes) else
                                                                    {"encoding": "utf-8"})) as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_json(file: str | os.PathLike, data: dict, durable: bool = True, **dump_options) -> None:
    """``write_atomic`` of ``json.dumps(data, indent=1, **dump_options)`` (see there for ``durable``)."""
    write_atomic(file, json.dumps(data, **{"indent": 1, **dump_options}), durable=durable)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive POSIX lock (``flock``) on ``path`` for the duration; other processes wait for it.

    The kernel releases it when the holder dies, so a killed process never leaves a stale lock. ``waiting``, if
    given, is printed to stderr when another process holds the lock. A no-op where ``fcntl`` is missing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def manifest_entries(manifest: dict) -> list[dict] | None:
    """The manifest's ``files`` list when every entry has a path, a size and a sha256; else None."""
    files = manifest.get("files")
    if not isinstance(files, list):
        return None
    for e in files:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("size"), int)
                and isinstance(e.get("sha256"), str)):
            return None
    return files


def file_entries(folder: Path, skip: Iterable[str] = ()) -> tuple[list[dict], dict[str, list]]:
    """Path, size and sha256 of every file below ``folder`` (sorted, ``skip`` left out), for a manifest,
    and the ``[size, mtime_ns, sha256]`` record of each for ``check_files``: the hash is fresh."""
    entries, records = [], {}
    for p in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = p.relative_to(folder).as_posix()
        if rel in skip:
            continue
        st = p.stat()
        digest = sha256(p)
        entries.append({"path": rel, "size": st.st_size, "sha256": digest})
        records[rel] = [st.st_size, st.st_mtime_ns, digest]
    return entries, records


def check_files(folder: Path, entries: list[dict], records: str, verify: bool = False) -> str | None:
    """The first file of ``folder`` that is not as its manifest ``entries`` say, and how; None when all are.

    Sizes are compared on every call (one ``stat`` per file). A file is hashed only when ``verify`` is
    set or its size, mtime_ns and expected sha256 differ from the record kept in ``folder/records``
    the last time it matched, so a normal use reads no file contents. A changed file that still
    matches is recorded again; a damaged one loses its record, so the next use hashes it again.
    """
    seen = (read_json(folder / records) or {}).get("files")
    seen = seen if isinstance(seen, dict) else {}
    kept = dict(seen)
    problem = None
    for e in entries:
        rel, size, digest = e["path"], e["size"], e["sha256"]
        try:
            st = (folder / rel).stat()
            if st.st_size != size:
                problem = f"{rel} is {st.st_size:,} bytes, the manifest says {size:,}"
            elif verify or seen.get(rel) != [size, st.st_mtime_ns, digest]:
                if sha256(folder / rel) != digest:
                    problem = f"{rel} has the manifest's size but not its sha256 (its content changed)"
                else:
                    kept[rel] = [size, st.st_mtime_ns, digest]
        except FileNotFoundError:
            problem = f"{rel} is missing"
        except OSError as exc:
            problem = f"{rel} cannot be read ({exc.strerror or exc})"
        if problem:
            kept.pop(rel, None)
            break
    if kept != seen:
        with contextlib.suppress(OSError):  # a read-only or full cache: the next use hashes again
            write_json(folder / records, {"files": kept}, durable=False)
    return problem


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, says the disk (or quota) is full.

    The errno is the sure sign; the text catches what arrives as text only (pip's output, library
    errors that keep the OS message but not its errno).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_space(folder: Path) -> str:
    """'N MB free' on the disk of ``folder`` (or of its nearest existing parent), for error messages."""
    for p in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return f"{shutil.disk_usage(p).free / 1e6:,.0f} MB free"
    return "free space unknown"
