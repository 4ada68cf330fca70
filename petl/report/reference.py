"""The record of `scripts/reference/agreement.py`: how far petl is from the paper's reference code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from petl.report.selection import runs_dir


def reference_agreement(path: str | os.PathLike | None = None) -> tuple[dict | None, pd.DataFrame]:
    """The record of scripts/reference/agreement.py and one row per combination: the preset that runs it, the
    reference's options, and the largest difference from the reference in float64 over its architectures,
    per mode (eval; train with dropout)."""
    path = Path(path) if path is not None else runs_dir() / "reference" / "agreement.json"
    if not path.is_file():
        return None, pd.DataFrame()
    record = json.loads(path.read_text())
    rows = {}
    for r in record["rows"]:
        row = rows.setdefault(r["combo"], {
            "combination": r["combo"], "petl preset": r["preset"] or "(options only)", "what": r["what"],
            "reference options": ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "(none)",
            "architectures": set(), "eval: max |Δ| logits": 0.0, "eval: max |Δ| gradients": 0.0,
            "train: max |Δ| logits": 0.0, "train: max |Δ| gradients": 0.0, "agrees": True,
            "documented difference": ""})
        row["architectures"].add(r["arch"])
        if r["documented_difference"]:
            row["documented difference"] = f"{r['arch']}: {r['documented_difference']}"
        row[f"{r['mode']}: max |Δ| logits"] = max(row[f"{r['mode']}: max |Δ| logits"], r["max_abs"]["logits"])
        row[f"{r['mode']}: max |Δ| gradients"] = max(row[f"{r['mode']}: max |Δ| gradients"],
                                                     r["max_abs"]["gradients"])
        row["agrees"] = row["agrees"] and r["agrees"]
    table = pd.DataFrame(list(rows.values()))
    table["architectures"] = table["architectures"].map(lambda a: ", ".join(sorted(a)))
    return record, table
