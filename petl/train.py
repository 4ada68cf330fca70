"""Train one PETL variant on one task, evaluate, select on dev, test, and write a run record.

Why a short loop on ``accelerate`` and not transformers' ``Trainer``: the loop below reads top to bottom
(like nanoGPT's ``train.py``), every step of the paper's recipe (Table 8: AdamW, linear decay, warmup,
clipping, label smoothing, weight decay) is one visible line, and we keep full control of what matters for
trustworthy records: a NaN/inf loss stops the run at once with a failed record naming the step, the best
method weights are kept in memory by dev score, and the record is written atomically (``petl.runs``).
``Trainer`` hides these in callbacks and writes its own checkpoint folders. ``accelerate`` still gives us
the well-kept parts: device placement, bf16 autocast, and data parallelism with no code change.

Run it
------
From Python::

    from petl.train import TrainConfig, train
    record = train(TrainConfig(variant="mam", task="rt-polarity", model="minilm"), runs_dir="runs")

From the shell (one process)::

    python -m petl train --variant mam --task rt-polarity --model minilm --max-steps 100

Data parallel (several GPUs, or several CPU processes with the gloo backend): the same command under
``torchrun`` or ``accelerate launch``; ``batch_size`` stays the *global* batch (each of N processes gets
batch_size / N examples per step, ``split_batches=True``), only process 0 writes the record::

    torchrun --nproc_per_node 2 -m petl train --variant lora --task sst2 --model roberta-base
    accelerate launch --num_processes 2 -m petl train --variant lora ...

bf16 (``bf16='auto'``): autocast to bf16 on a CUDA GPU with bf16, never by default on a CPU, so that the same
command gives the same run id and the same numbers on every CPU (an AVX512-BF16 machine would otherwise train
in another precision than an AVX2 one). ``bf16=True`` opts in on a CPU; the record's resolved ``train.bf16``
says which precision its numbers came from. Measured on this project's 2-core AMD EPYC (AVX2, no bf16
instructions), torch 2.13: a 2048^3 matmul takes 0.43 s in fp32 and 79 s in bf16, and a MiniLM training step
(batch 32 x 64) 5-13 s fp32 against 50-69 s under bf16 autocast (machine shared, so noisy; the ratio is not).

Threads: on a machine whose cores are shared with other busy processes, torch's OpenMP threads lose
badly (measured: 4.4 s/step with 2 threads vs 1.1 s/step with ``OMP_NUM_THREADS=1`` for a frozen MiniLM,
load average 6 on 2 cores). Run concurrent trainings with ``OMP_NUM_THREADS=1``.

Test hooks (environment variables; used by the tests to kill a real run at a chosen moment):
``PETL_PAUSE_AT=train|eval|weights|record|replace`` (comma-separated) with ``PETL_PAUSE_FILE=path``:
on reaching that phase the process writes the phase name to the file and sleeps until killed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petl import runs

# CPU-sized default budgets for the embedded tasks and models. Other (task, model) pairs use the paper's
# Table 8 budget from the task spec. Measured on a quiet 2-core machine with `papermill notebooks/train.ipynb
# OUT -p variant V` (records in runs/, quoted in the README): rt-polarity, 150 steps x 32, mam_glue 78.1 test
# accuracy in 3 min 42 s (runs/rt-polarity_minilm_mam-glue_seed0_150steps_c2d34012), lora 76.9, full 80.1,
# majority class 60.2.
# ``lr`` may be a dict: variant -> value, with "*" for every other variant (full fine-tuning needs a far
# smaller step than the methods that train a few new parameters). A budget never changes what a preset
# computes: on the GLUE stand-ins use 'mam_glue' (the released GLUE script's l = 16, r = 16, s = 2); the 'mam'
# preset holds the XSum sizes (l = 30, r = 512, s = 4), which on MiniLM / rt-polarity collapsed to the
# majority class within this budget at lr 3e-4, 1e-3 and 5e-3 (test 60.2 / 55.0).
CPU_BUDGETS: dict[tuple[str, str], dict] = {
    ("rt-polarity", "minilm"): dict(max_steps=150, eval_every=50, max_eval_examples=500,
                                    lr={"full": 5e-5, "*": 1e-3}),
    ("vitaminc", "minilm"): dict(max_steps=150, eval_every=50, max_eval_examples=500,
                                 lr={"full": 5e-5, "*": 1e-3}),
    # SmolLM2 on 2 CPU cores trains at ~100 tokens/s and decodes greedily at ~1.2 s per article (batch 16;
    # beam search 4 costs ~3x that), so the default is a short run: 50 steps of 8 articles cut to 128 prompt
    # tokens, greedy decoding, 100 test articles (and the first 100 real XSum pairs).
    ("bbc-xsum", "smollm2-135m"): dict(max_steps=50, eval_every=25, batch_size=8, max_source_length=128,
                                       max_eval_examples=32, max_test_examples=100, eval_batch_size=16,
                                       num_beams=1, lr={"full": 2e-5, "*": 1e-3}),
    # en-ro-l10n: messages are short (prompt ~17 tokens, target ~24); a MAM step of 16 of them takes ~11 s
    # on 2 AVX2 cores. 72 steps, one dev evaluation at the end (64 messages), the first 200 test messages,
    # greedy decoding of at most 96 new tokens. MAM at lr 3e-4: a 10-step pilot at 1e-3 diverged (loss 9 -> 50).
    # This budget does not reach the copy baseline (test BLEU 8.4 against 18.7); 240 steps do (32.9): the task's
    # card in petl/tasks.py gives the records.
    ("en-ro-l10n", "smollm2-135m"): dict(max_steps=72, eval_every=72, batch_size=16, max_eval_examples=64,
                                         max_test_examples=200, eval_batch_size=32, num_beams=1,
                                         gen_max_length=96, lr={"full": 2e-5, "*": 3e-4}),
}

BF16_CHOICES = ("auto", True, False)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means: the task's default (paper Table 8, or CPU budget)."""
    variant: str = "mam"                 # a name in petl.PRESETS
    task: str = "rt-polarity"            # a name in petl.tasks.TASKS
    model: str = "minilm"                # a name in petl.models.MODELS (or a hub name where the hub is reachable)
    max_steps: int | None = None         # optimizer steps; set max_steps or epochs, not both
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None        # global batch (summed over processes)
    seed: int = 0
    overrides: dict | None = None        # PETLConfig fields on top of the variant's preset; None: budget default
    eval_every: int | None = None        # steps between dev evaluations (and always at the end)
    eval_batch_size: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None  # cap on dev examples used for evaluation / model selection
    max_test_examples: int | None = None
    bf16: Any = "auto"                   # 'auto': bf16 autocast on a GPU with bf16, fp32 on every CPU
    warmup: float | None = None          # warmup as a fraction of max_steps
    label_smoothing: float | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    adam_betas: tuple | None = None
    adam_eps: float | None = None
    grad_accum: int = 1
    max_source_length: int | None = None  # max input tokens (classification: the whole example)
    max_target_length: int | None = None
    num_beams: int | None = None
    gen_min_length: int | None = None
    gen_max_length: int | None = None    # new tokens generated at most
    no_repeat_ngram_size: int | None = None
    save_weights: bool = True
    progress: bool = True
    gradient_checkpointing: bool = False  # recompute activations in backward (exact, both kinds): less memory

    def validate(self) -> "TrainConfig":
        """Check names and values; raise ValueError naming the bad field and what is valid."""
        if self.overrides is not None and not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must be a dict of PETLConfig fields or None, "
                             f"got {type(self.overrides).__name__}")
        check_names(self.variant, self.task, self.model, self.overrides)
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(f"set max_steps ({self.max_steps}) or epochs ({self.epochs}), not both")
        for name in ("max_steps", "batch_size", "eval_every", "eval_batch_size", "max_train_examples",
                     "max_eval_examples", "max_test_examples", "grad_accum", "num_beams",
                     "max_source_length", "max_target_length", "gen_max_length"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("epochs", "lr", "adam_eps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be a positive number or None, got {v!r}")
        for name in ("warmup", "label_smoothing"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"{name} must be a number in [0, 1) or None, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.bf16 not in BF16_CHOICES or isinstance(self.bf16, int) and not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be one of 'auto', True, False; got {self.bf16!r}")
        return self

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the CPU budget table and the task's Table 8 defaults."""
        self.validate()
        spec = task_spec(self.task)
        values = dataclasses.asdict(self)
        budget = CPU_BUDGETS.get((self.task, self.model), {})
        explicit_budget = self.max_steps is not None or self.epochs is not None
        for key, v in budget.items():
            if key in ("max_steps", "epochs") and explicit_budget:
                continue
            if isinstance(v, dict):
                v = v.get(self.variant, v["*"])
            if values.get(key) is None:
                values[key] = v
        # Table 8 (task spec .train) for the optimisation settings, the task's generation defaults.
        t8 = spec.train
        gen = dict(spec.generation)
        defaults = dict(lr=t8.lr, batch_size=t8.batch_size, warmup=t8.warmup_ratio,
                        label_smoothing=t8.label_smoothing, weight_decay=t8.weight_decay,
                        max_grad_norm=t8.max_grad_norm, adam_betas=tuple(t8.adam_betas), adam_eps=t8.adam_eps,
                        max_source_length=spec.max_source_length,
                        max_target_length=spec.max_target_length or 128, num_beams=gen.get("num_beams", 1),
                        gen_min_length=gen.get("min_length", 0), gen_max_length=gen.get("max_length", 64),
                        no_repeat_ngram_size=gen.get("no_repeat_ngram_size", 0))
        for key, v in defaults.items():
            if values[key] is None:
                values[key] = v
        if values["overrides"] is None:
            values["overrides"] = {}
        if values["max_steps"] is None and values["epochs"] is None:
            if t8.paper_steps:
                values["max_steps"] = t8.paper_steps
            else:
                values["epochs"] = t8.paper_epochs or 1
        values["adam_betas"] = tuple(values["adam_betas"])
        values["bf16"] = use_bf16(values["bf16"])
        return TrainConfig(**values).validate()


#: Parameters of notebooks/train.ipynb that are not TrainConfig fields.
NOTEBOOK_ONLY = ("runs_dir", "force")
#: Names IPython itself puts into a notebook's namespace.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_OVERRIDES_HOW = ("pass a mapping of PETLConfig fields: -y 'overrides: {attn_bn: 16}' or "
                  "-p overrides '{\"attn_bn\": 16}'")


def notebook_config(namespace: dict) -> tuple[TrainConfig, str, bool]:
    """(TrainConfig, runs_dir, force) from the parameters of notebooks/train.ipynb: its namespace after
    papermill's injected cell. A name that is not a parameter (a misspelled `-p max_step 2`) raises ValueError
    naming the valid ones, instead of running the default budget; `overrides` may arrive as a mapping (`-y`)
    or as a JSON / YAML string (`-p`)."""
    import difflib
    import inspect
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    valid = fields + list(NOTEBOOK_ONLY)
    unknown = sorted(name for name, value in namespace.items()
                     if not name.startswith("_") and name not in valid and name not in _IPYTHON_NAMES
                     and not inspect.ismodule(value) and not callable(value))
    if unknown:
        hints = [f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, valid, 1)) else
                 repr(n) for n in unknown]
        raise ValueError(f"unknown notebook parameter(s) {', '.join(hints)}; valid: {', '.join(valid)}")
    values = {name: namespace[name] for name in fields if name in namespace}
    values["overrides"] = _overrides(values.get("overrides"))
    config = TrainConfig(**values).validate()
    return config, str(namespace.get("runs_dir", "runs")), bool(namespace.get("force", False))


def _overrides(value):
    """overrides as a dict (or None): a JSON / YAML string is parsed (papermill's -p passes strings)."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        import yaml
        try:
            parsed = json.loads(value)
        except ValueError:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
        if parsed is None or isinstance(parsed, dict):
            return parsed
    raise ValueError(f"overrides={value!r} is not a mapping; {_OVERRIDES_HOW}")


def valid_names() -> dict[str, list[str]]:
    """The valid variant, task and model names (models: the named ones; a saved-model folder or a hub
    name also works where the hub or its cache has it)."""
    import petl
    from petl import models, tasks
    return {"variant": sorted(petl.PRESETS), "task": list(tasks.TASKS), "model": list(models.MODELS)}


def check_names(variant: str, task: str, model: str, overrides: dict | None = None) -> None:
    """Raise ValueError naming the bad value and listing the valid ones (variant, task, model, overrides)."""
    import petl
    names = valid_names()
    for kind, value in (("variant", variant), ("task", task)):
        if not isinstance(value, str) or value not in names[kind]:
            raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(names[kind])}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a name, got {model!r}; valid models: {', '.join(names['model'])}")
    if model not in names["model"] and not os.path.isdir(model):
        _check_hub_model(model)
    petl.resolve(variant, **(overrides or {}))          # ValueError naming a bad PETLConfig field / value


@functools.lru_cache(maxsize=64)
def _check_hub_model(name: str) -> None:
    from petl import models
    try:
        models.resolve_model(name)
    except (ValueError, models.ModelUnavailableError) as e:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(models.MODELS)}, a folder holding "
                         f"a saved model, or a hub name where the hub is reachable ({e})") from None


def task_spec(name: str):
    from petl import tasks
    return tasks.get_task(name)


def use_bf16(choice, device_type: str | None = None) -> bool:
    """Resolve bf16='auto': True on a CUDA GPU that computes bf16, False on every CPU (the same precision, run id
    and numbers whatever the CPU's instructions; bf16=True opts in)."""
    if choice is True or choice is False:
        return choice
    import torch
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return device_type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_run(config: TrainConfig) -> dict:
    """{'run_id', 'train': resolved TrainConfig dict, 'petl': resolved PETLConfig dict} of a config."""
    import petl
    cfg = config.resolved()
    petl_cfg = petl.resolve(cfg.variant, **cfg.overrides)
    resolved = {"train": _jsonable(dataclasses.asdict(cfg)), "petl": _jsonable(petl_cfg.to_dict()),
                "computation": petl.config.computation_version(petl_cfg)}
    resolved["run_id"] = runs.run_id(resolved)
    return resolved


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------------
# The record a run returns
# --------------------------------------------------------------------------------------------------

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
    def weights_path(self) -> Path | None:
        """The run's saved method: the record's weights/ folder (or, for records made before weights moved into
        the record, ``<runs dir>/../.weights/<run id>``); None when the run saved none."""
        w = self.metrics.get("weights")
        if not w:
            return None
        return self.path / w if w == runs.WEIGHTS else self.path.parent.resolve().parent / w

    @classmethod
    def load(cls, path) -> "RunRecord":
        config, metrics = runs.read_record(path)
        return cls(Path(path), config, metrics)


# --------------------------------------------------------------------------------------------------
# Helpers of the loop
# --------------------------------------------------------------------------------------------------

def _pause(phase: str) -> None:
    """Test hook: block at `phase` if PETL_PAUSE_AT names it (the test then kills this process)."""
    wanted = os.environ.get("PETL_PAUSE_AT", "")
    if phase in wanted.split(","):
        flag = os.environ.get("PETL_PAUSE_FILE")
        if flag:
            runs.write_text_atomic(flag, phase)
        while True:
            time.sleep(1)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _count_tokens(batch) -> int:
    n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
    if "labels" in batch and batch["labels"].dim() > 1 and "decoder_input_ids" in batch:
        n += int((batch["labels"] != -100).sum())
    return n


def _loss(model, batch, family: str, label_smoothing: float):
    """Cross-entropy with label smoothing (paper Table 8), on the label / target tokens only."""
    import torch.nn.functional as F
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if family == "encoder-decoder" and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = model_unwrapped(model).prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(**inputs).logits
    if family == "decoder":                                   # predict token t+1 from tokens <= t
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100, label_smoothing=label_smoothing)


def model_unwrapped(model):
    return model.module if hasattr(model, "module") else model


def _trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model_unwrapped(model).named_parameters() if p.requires_grad}


def _decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (1-d tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class RunConfigError(ValueError):
    """A configuration that cannot train, found before the first step (e.g. fewer examples than one batch)."""


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, what: str = "loss"):
        super().__init__(f"{what} became {value} at step {step}")
        self.step = step


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def evaluate(model, loader, spec, family, cfg, accelerator, tokenizer) -> dict:
    """Metrics of the model on one split: classification by argmax of the logits; generation by
    ``model.generate`` with the run's beams / lengths / no-repeat n-gram size, then the task's metric."""
    import torch
    from petl import data as D
    from petl import metrics as M
    model.eval()
    preds: list = []
    refs: list = []
    with torch.no_grad(), accelerator.autocast():
        for i, batch in enumerate(loader):
            if spec.kind == "classification":
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                p = model(**inputs).logits.argmax(-1)
                p, labels = accelerator.gather_for_metrics((p, batch["labels"]))
                preds += p.tolist()
                refs += labels.tolist()
            else:
                references = batch.pop("references")
                out = accelerator.unwrap_model(model).generate(**batch, **generate_kwargs(cfg, family),
                                                               do_sample=False)
                text = D.decode_generations(out, batch["input_ids"], tokenizer, family)
                preds += accelerator.gather_for_metrics(text)
                refs += accelerator.gather_for_metrics(list(references))
            if i == 0:
                _pause("eval")
    model.train()
    return M.compute_metrics(spec, preds, refs)


def generate_kwargs(cfg: "TrainConfig", family: str) -> dict:
    """model.generate arguments from the resolved config (lengths count target tokens, as the paper)."""
    out = {"num_beams": cfg.num_beams, "no_repeat_ngram_size": cfg.no_repeat_ngram_size or 0}
    if family == "decoder":
        out.update(max_new_tokens=cfg.gen_max_length, min_new_tokens=cfg.gen_min_length or None)
    else:
        out.update(max_length=cfg.gen_max_length, min_length=cfg.gen_min_length or 0)
    return out


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def train(config: TrainConfig | dict, runs_dir: str | os.PathLike = "runs", force: bool = False) -> RunRecord:
    """Train, evaluate and record one run; return its record (skipped if already complete unless force)."""
    if isinstance(config, dict):
        config = TrainConfig(**config)
    resolved = resolve_run(config)
    rid = resolved["run_id"]
    runs_dir = Path(runs_dir)
    rank = int(os.environ.get("RANK", "0"))
    if not force and runs.record_status(runs_dir, rid) == "complete":
        return RunRecord.load(runs_dir / rid)
    if rank != 0:                      # only process 0 locks and writes; the others just train
        return _run(config.resolved(), resolved, runs_dir)
    runs.check_writable(runs_dir)      # before training: a finished run must not die on its way to disk
    with runs.run_lock(runs_dir, rid):
        if not force and runs.record_status(runs_dir, rid) == "complete":   # finished while we waited
            return RunRecord.load(runs_dir / rid)
        runs.clean_leftovers(runs_dir)         # what killed runs left (their processes are gone)
        return _run(config.resolved(), resolved, runs_dir)


def _run(cfg: TrainConfig, resolved: dict, runs_dir: Path) -> RunRecord:
    import datasets
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    import petl
    from petl import data as D
    from petl import models, tasks

    rid = resolved["run_id"]
    t_start = time.perf_counter()

    # ---- set-up: processes, seed, model + method, data -----------------------------------------------
    # cpu=True without a GPU: under torchrun this makes accelerate set up gloo data parallelism on CPU.
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", split_batches=True,
                              cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    set_seed(cfg.seed)                                       # python, numpy, torch (all devices)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    spec = tasks.get_task(cfg.task)
    model, tokenizer = models.load_model(cfg.model, spec)
    family = models.model_family(model.config)
    petl.apply(model, cfg.variant, **cfg.overrides)
    if cfg.gradient_checkpointing:  # exact either way (tests/test_method_state.py); non-reentrant needs no hooks
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    report = petl.parameter_report(model)

    raw = tasks.load_task(cfg.task)
    # Extra test sets of a task (bbc-xsum's real XSum pairs, MNLI's mismatched dev) are capped like the test set.
    test_splits = ["test", *(s for s in spec.extra_splits if s in raw)]
    raw = datasets.DatasetDict({"train": _head(raw["train"], cfg.max_train_examples),
                                "validation": _head(raw["validation"], cfg.max_eval_examples),
                                **{s: _head(raw[s], cfg.max_test_examples) for s in test_splits}})
    with accelerator.main_process_first():                  # process 0 fills the datasets cache first
        enc = D.encode(raw, spec, tokenizer, family, max_source_length=cfg.max_source_length,
                       max_target_length=cfg.max_target_length)
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(enc["train"], batch_size=cfg.batch_size, shuffle=True, generator=g,
                              collate_fn=D.collator(spec, tokenizer, family), drop_last=True)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    eval_collate = (D.collator if spec.kind == "classification" else D.generation_collator)(spec, tokenizer, family)
    eval_loaders = {s: DataLoader(enc[s], batch_size=eval_bs, shuffle=False, collate_fn=eval_collate)
                    for s in ("validation", *test_splits)}
    if len(train_loader) == 0:  # drop_last: fewer examples than one batch would never give a step
        raise RunConfigError(f"the training set has {len(enc['train'])} examples (max_train_examples="
                         f"{cfg.max_train_examples}), fewer than one batch (batch_size={cfg.batch_size}): set "
                         f"batch_size to at most {len(enc['train'])} or max_train_examples to at least "
                         f"{cfg.batch_size}")
    steps_per_epoch = max(len(train_loader) // cfg.grad_accum, 1)
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    eval_every = cfg.eval_every or max(max_steps // 5, 1)

    # ---- optimizer (AdamW, Table 8), linear decay with warmup --------------------------------------
    optimizer = torch.optim.AdamW(_decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * max_steps), max_steps)
    model, optimizer, train_loader, *loaders = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))

    # ---- training loop ------------------------------------------------------------------------------
    history: list[dict] = []
    best = {"score": -math.inf, "step": None, "state": None, "dev": None}
    primary = spec.primary_metric
    train_tokens, train_time, step = 0, 0.0, 0
    failure = None
    bar = tqdm(total=max_steps, disable=not (main and cfg.progress), mininterval=2, desc=rid[:40])
    model.train()
    data_iter = _forever(train_loader)
    try:
        while step < max_steps:
            t0 = time.perf_counter()
            tokens = 0
            for _ in range(cfg.grad_accum):
                batch = next(data_iter)
                with accelerator.autocast():
                    loss = _loss(model, batch, family, cfg.label_smoothing) / cfg.grad_accum
                accelerator.backward(loss)
                tokens += _count_tokens(batch)
            step += 1
            loss_value = float(accelerator.reduce(loss.detach().float() * cfg.grad_accum, "mean"))
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step, loss_value)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(step, grad_norm, "gradient norm")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
            train_tokens += tokens
            train_time += time.perf_counter() - t0
            row = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm, "tokens": tokens}
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{train_tokens / max(train_time, 1e-9):.0f}")
            if step == 1:
                _pause("train")

            # ---- periodic dev evaluation and model selection on the primary dev metric -------------
            if step % eval_every == 0 or step == max_steps:
                dev = evaluate(model, eval_loaders["validation"], spec, family, cfg, accelerator, tokenizer)
                row.update({f"dev_{k}": v for k, v in dev.items()})
                if dev[primary] > best["score"]:
                    best = {"score": dev[primary], "step": step, "state": _trainable_state(model), "dev": dev}
                if main and cfg.progress:
                    bar.write(f"step {step}: dev {primary} {dev[primary]:.4f} "
                              f"(best {best['score']:.4f} at step {best['step']})")
            history.append(row)
    except NonFiniteLoss as e:
        failure = e
    bar.close()

    if failure is not None:
        metrics = {"status": "failed", "reason": str(failure), "failed_step": failure.step,
                   "parameters": report, "wall_time_s": time.perf_counter() - t_start}
        return _finish(accelerator, runs_dir, resolved, metrics, history)

    # ---- test with the best dev weights ------------------------------------------------------------
    net = accelerator.unwrap_model(model)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, value in best["state"].items():
            params[name].copy_(value)
    tests = {s: evaluate(model, eval_loaders[s], spec, family, cfg, accelerator, tokenizer) for s in test_splits}

    # petl.save into the record's weights/ while it is still in its staging folder: they move into place together
    save = (lambda folder: petl.save(net, folder)) if cfg.save_weights and main else None
    metrics = {
        "status": "complete", "dev": best["dev"], **tests, "best_step": best["step"],
        "primary_metric": primary, "steps": step, "parameters": report,
        "wall_time_s": time.perf_counter() - t_start, "train_time_s": train_time,
        "train_tokens": train_tokens, "tokens_per_s": train_tokens / max(train_time, 1e-9),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20) if accelerator.device.type == "cuda" else None,
        "weights": runs.WEIGHTS if save else None, "num_examples": {s: len(raw[s]) for s in raw},
    }
    return _finish(accelerator, runs_dir, resolved, metrics, history, save)


def _finish(accelerator, runs_dir, resolved, metrics, history, save=None) -> RunRecord:
    """Process 0 writes the record, with the weights inside it (`save` writes them), atomically; every process
    returns it."""
    rid = resolved["run_id"]
    if accelerator.is_main_process:
        config = {"run_id": rid, "train": resolved["train"], "petl": resolved["petl"],
                  "computation": resolved["computation"],
                  "versions": runs.package_versions(), "git": runs.git_commit(),
                  "device": runs.device_info(accelerator.device, accelerator.num_processes)}
        runs.write_record(runs_dir, rid, config, metrics, history, pause=_pause, weights=save)
    accelerator.wait_for_everyone()
    return RunRecord.load(Path(runs_dir) / rid)


def _head(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


def _forever(loader):
    """Cycle through the training loader (a new shuffle each epoch); an epoch without a batch is an error, not an
    endless loop."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = 0
        for batch in loader:
            batches += 1
            yield batch
        if batches == 0:
            raise RuntimeError("the training loader gave no batch in a whole epoch (fewer examples than one batch)")
        epoch += 1
