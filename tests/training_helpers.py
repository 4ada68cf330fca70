"""Helpers for the training / sweep tests: tiny budgets and the environment of `python -m petl` children
(the tiny models themselves come from conftest.py's tiny_dir)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A run of a few seconds: 2 optimizer steps, 16 dev and 16 test examples.
TINY = dict(task="rt-polarity", max_steps=2, eval_every=1, batch_size=8, max_train_examples=64,
            max_eval_examples=16, max_test_examples=16, lr=1e-3, progress=False)


def subprocess_env(**extra) -> dict:
    """Environment for `python -m petl ...` children: the repo on the path, few threads, no hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli_args(**params) -> list[str]:
    """`--name value` arguments for `python -m petl train`."""
    import json
    out = []
    for k, v in params.items():
        if k == "force":
            if v:
                out.append("--force")
            continue
        out += ["--" + k.replace("_", "-"), json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return out


PYTHON = sys.executable
