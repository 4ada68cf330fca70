"""What notebooks/explore.ipynb explores: a run whose trained method is on this machine, beside the other runs
of its task and model (their methods loaded side by side into one base model under their names).

Weights stay on the machine that trained them (runs/<run id>/weights/ is git-ignored), so a fresh clone has
records but no weights: `pick_run` then trains a short run (the GLUE-sized MAM adapter, prefix and adapter both,
about a minute on 2 CPU cores) so that the notebook works right after the README's set-up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import petl
from petl import runs
from petl.runs import RunRecord
from petl.train import TrainConfig, train

#: The short run trained when no run keeps its weights: MAM (a prefix to show the gates λ, an adapter to show
#: update norms) on the embedded task and model.
QUICK_RUN = dict(variant="mam_glue", task="rt-polarity", model="minilm", eval_every=None, max_eval_examples=200,
                 max_test_examples=200)


def runs_with_weights(runs_dir: str | os.PathLike) -> list[RunRecord]:
    """Complete runs of runs_dir whose trained method is on this machine, newest first."""
    found = []
    for folder in runs.iter_records(runs_dir):
        try:
            record = RunRecord.load(folder)
        except runs.RecordError:
            continue
        if record.status == "complete" and record.weights_path is not None and record.weights_path.is_dir():
            found.append(record)
    return sorted(found, key=lambda r: (r.path / "metrics.json").stat().st_mtime, reverse=True)


def pick_run(runs_dir: str | os.PathLike = "runs", run_id: str | None = None, quick_steps: int = 40) -> RunRecord:
    """The run `run_id` (which must keep its weights), else the newest run that does, else a short new one
    (QUICK_RUN for `quick_steps` steps, recorded in runs_dir like any run)."""
    if run_id is not None:
        path = Path(runs_dir) / run_id
        if runs.record_status(runs_dir, run_id) != "complete":
            raise ValueError(f"run {run_id!r} is not a complete run in {runs_dir!r}")
        record = RunRecord.load(path)
        if record.weights_path is None or not record.weights_path.is_dir():
            have = ", ".join(r.run_id for r in runs_with_weights(runs_dir)) or "none"
            raise FileNotFoundError(f"run {run_id} keeps no trained weights on this machine (weights stay where "
                                    f"they were trained); runs here that do: {have}. Leave run_id empty to train "
                                    "a short one")
        return record
    kept = runs_with_weights(runs_dir)
    if kept:
        return kept[0]
    print(f"no run in {runs_dir} keeps its trained weights on this machine: training a short one "
          f"({QUICK_RUN['variant']} on {QUICK_RUN['task']}, {quick_steps} steps)", flush=True)
    return train(TrainConfig(**QUICK_RUN, max_steps=quick_steps), runs_dir=runs_dir)


def method_name(record: RunRecord) -> str:
    """The name a run's method gets on a model carrying several (petl.apply's name rule; the run id ends with
    its hash, so the tail is kept)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", record.run_id)[-64:].lstrip("-")


def load_side_by_side(model, records: list[RunRecord]) -> list[str]:
    """Load the trained methods of `records` into one base model, each under `method_name(record)`; the runs must
    share the model's task and base model. Returns the names; the first record's method is left active."""
    names = []
    for record in records:
        name = method_name(record)
        if name not in petl.method_names(model):
            petl.load(model, record.weights_path, name=name)
        names.append(name)
    if names:
        petl.set_active(model, names[0])
    return names


def encode(model, tokenizer, spec, cfg: TrainConfig, text: str) -> dict:
    """One input as the run's model takes it (truncated as in training; generation inputs as in evaluation)."""
    from petl import data, models
    if spec.kind == "classification":
        return tokenizer([text], return_tensors="pt", truncation=True, max_length=cfg.max_source_length)
    return data.generation_inputs([text], spec, tokenizer, models.model_family(model.config),
                                  max_source_length=cfg.max_source_length)


def predict(model, tokenizer, spec, cfg: TrainConfig, text: str):
    """The model's answer to one input: class probabilities (a pandas Series) or the generated text."""
    import pandas as pd
    import torch

    from petl import data, models
    from petl.train import generate_kwargs
    enc = encode(model, tokenizer, spec, cfg, text)
    with torch.no_grad():
        if spec.kind == "classification":
            probs = model(**enc).logits.softmax(-1)[0]
            return pd.Series(probs.float().numpy(), index=list(spec.label_names), name="probability")
        family = models.model_family(model.config)
        out = model.generate(**enc, **generate_kwargs(cfg, family), do_sample=False)
    return data.decode_generations(out, enc["input_ids"], tokenizer, family)[0]


def same_task_and_model(record: RunRecord, others: list[RunRecord]) -> list[RunRecord]:
    """`record` first, then those of `others` trained on its task and base model (the ones that fit its model)."""
    key = lambda r: (r.config["train"]["task"], r.config["train"]["model"])  # noqa: E731
    return [record, *(r for r in others if r.run_id != record.run_id and key(r) == key(record))]
