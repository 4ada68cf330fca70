"""Small file utilities shared by the modules that write or check files on disk."""

from __future__ import annotations

import hashlib
import os


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
