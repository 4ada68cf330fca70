"""What a run is: its configuration (`TrainConfig`), the CPU budgets, and its resolution into a `ResolvedRun`.

A run is resolved once, by `resolve_run`: every ``None`` of the `TrainConfig` is filled (CPU budget table, then
the task's Table 8 defaults), the variant and its overrides become the `PETLConfig` that `petl.apply` receives,
and the run id is computed from both. `petl.train.train` passes that one object down; the record's
``config.json`` is written from it.

The run-id policy (petl.runs.run_id): ``<task>_<model>_<variant>_seed<k>_<budget>_<hash>``, where the hash covers
what changes a result -- the resolved training fields except those in `petl.runs` ``_NOT_HASHED`` (where records
go, progress bars, exact gradient checkpointing), the resolved PETLConfig, and the method's computation version
(`petl.config.computation_version`, bumped when a method's code computes something else). A field added later
enters the hash only when set away from its default (`petl.runs.LATER_TRAIN_FIELDS`, and
`petl.config.LATER_FIELDS` for PETLConfig), so adding a field leaves every existing run id unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from typing import Any

# CPU-sized default budgets for the embedded tasks and models. Other (task, model) pairs use the paper's
# Table 8 budget from the task spec. Measured on a quiet 2-core machine with `papermill notebooks/train.ipynb
# OUT -p variant V` (records in runs/, quoted in the README): rt-polarity, 150 steps x 32, mam_glue 78.1 test
# accuracy in 3 min 42 s (runs/rt-polarity_minilm_mam-glue_seed0_150steps_c2d34012), lora 76.9, full 80.1,
# majority class 60.2.
# ``lr`` may be a dict: variant -> value, with "*" for every other variant (full fine-tuning needs a far
# smaller step than the methods that train a few new parameters). A budget never changes what a preset
# computes: the 'mam' preset holds the XSum sizes (l = 30, r = 512, s = 4) on every task, and 'mam_glue' the
# released GLUE script's (l = 16, r = 16, s = 2). On MiniLM / rt-polarity the XSum-sized MAM stayed at the
# majority class within this budget at lr 3e-4, 1e-3 and 5e-3 (at 1e-3 it lost its input: the spread of its dev
# inputs' representations fell to 0.23 of the start by step 20, book/grids-traces/rt_mam_default_lr.yaml); at
# lr 1e-4 (the paper's Table 8 GLUE rate) it learns. So the notebook's default,
# `papermill notebooks/train.ipynb OUT -p variant mam`, gives test accuracy 78.7
# (runs/rt-polarity_minilm_mam_seed0_150steps_ea4fd28a; seeds 1 and 2 in the README).
CPU_BUDGETS: dict[tuple[str, str], dict] = {
    ("rt-polarity", "minilm"): dict(max_steps=150, eval_every=50, max_eval_examples=500,
                                    lr={"full": 5e-5, "mam": 1e-4, "*": 1e-3}),
    # VitaminC (3 labels): at this budget the XSum-sized MAM stays at the majority class at lr 1e-3 and at 1e-4
    # (runs/vitaminc_minilm_mam_seed0_150steps_9ea817a6, ..._6d74c9e8: dev 49.8 on the first 500, test 50.0); the
    # protocol's 2,000 steps let full fine-tuning learn (runs/vitaminc_minilm_full_seed0_2000steps_9122cd95).
    ("vitaminc", "minilm"): dict(max_steps=150, eval_every=50, max_eval_examples=500,
                                 lr={"full": 5e-5, "*": 1e-3}),
    # SmolLM2 on 2 CPU cores trains at ~100 tokens/s and decodes greedily at ~1.2 s per article (batch 16;
    # beam search 4 costs ~3x that), so the default is a short run: 50 steps of 8 articles cut to 128 prompt
    # tokens, greedy decoding, 100 test articles (and the first 100 real XSum pairs). MAM at lr 3e-4: at 1e-3 it
    # diverged (loss 5.6 -> 36 by step 4; test ROUGE-2 1.2 against lead-1's 2.7:
    # runs/bbc-xsum_smollm2-135m_mam_seed0_50steps_cfba98cd); at 3e-4 it is above lead-1 on both test sets
    # (2.9 / 3.1 against 2.7 / 2.2: runs/bbc-xsum_smollm2-135m_mam_seed0_50steps_48c1040f).
    ("bbc-xsum", "smollm2-135m"): dict(max_steps=50, eval_every=25, batch_size=8, max_source_length=128,
                                       max_eval_examples=32, max_test_examples=100, eval_batch_size=16,
                                       num_beams=1, lr={"full": 2e-5, "mam": 3e-4, "*": 1e-3}),
    # en-ro-l10n: messages are short (prompt ~17 tokens, target ~24); a MAM step of 16 of them takes ~11 s
    # on 2 cores. 150 steps, dev evaluations at 75 and 150 (64 messages), the first 200 test messages, greedy
    # decoding of at most 96 new tokens. MAM at lr 3e-4: a 10-step pilot at 1e-3 diverged (loss 9 -> 50). 72 steps
    # stayed below copying the source (test BLEU 8.4 against 18.7); 150 steps pass it (22.3): the task's card in
    # petl/tasks.py gives the records.
    ("en-ro-l10n", "smollm2-135m"): dict(max_steps=150, eval_every=75, batch_size=16, max_eval_examples=64,
                                         max_test_examples=200, eval_batch_size=32, num_beams=1,
                                         gen_max_length=96, lr={"full": 2e-5, "*": 3e-4}),
}

BF16_CHOICES = ("auto", True, False)
#: The caps on a split's examples, and the value that lifts one: None takes the budget's cap (the CPU budgets
#: evaluate on part of dev), ALL every example of the split. In a resolved config None means no cap.
EXAMPLE_CAPS = ("max_train_examples", "max_eval_examples", "max_test_examples")
ALL = "all"


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means: the task's default (paper Table 8, or CPU budget)."""
    variant: str = "mam"                 # a name in petl.PRESETS
    task: str = "rt-polarity"            # a name in petl.tasks.TASKS
    model: str = "minilm"                # a name in petl.models.MODELS (or a hub name where the hub is reachable)
    max_steps: int | None = None         # optimizer steps; set max_steps or epochs, not both
    epochs: float | None = None
    lr: float | dict | None = None       # or per variant: {variant: lr, "*": lr for every other} (`lr_for`)
    batch_size: int | None = None        # global batch (summed over processes)
    seed: int = 0
    overrides: dict | None = None        # PETLConfig fields on top of the variant's preset; None: budget default
    eval_every: int | None = None        # steps between dev evaluations (and always at the end)
    eval_batch_size: int | None = None
    max_train_examples: int | str | None = None  # caps on a split's examples; "all": no cap, whatever the budget
    max_eval_examples: int | str | None = None   # dev examples used for evaluation / model selection
    max_test_examples: int | str | None = None   # every test split (bbc-xsum's real XSum pairs too)
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
    eval_num_beams: int | None = None    # beams of the dev evaluations (model selection); None: num_beams
    gen_min_length: int | None = None
    gen_max_length: int | None = None    # new tokens generated at most
    no_repeat_ngram_size: int | None = None
    save_weights: bool = True
    progress: bool = True
    gradient_checkpointing: bool = False  # recompute activations in backward (exact, both kinds): less memory
    checkpoint_every: int | None = None  # steps between resumable checkpoints (petl.checkpoints); None: eval_every
    trace_every: int | None = None       # steps between petl.inspect.trace rows in history.csv (prefix gates λ,
                                         # spread of the inputs' representations) on 64 dev examples; None: never

    def validate(self) -> "TrainConfig":
        """Check names and values; raise ValueError naming the bad field and what is valid."""
        if self.overrides is not None and not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must be a dict of PETLConfig fields or None, "
                             f"got {type(self.overrides).__name__}")
        check_names(self.variant, self.task, self.model, self.overrides)
        if isinstance(self.lr, dict):                    # a per-variant lr: check the rate this run takes
            dataclasses.replace(self, lr=lr_for(self.lr, self.variant))._check_values()
            return self
        return self._check_values()

    def _check_values(self) -> "TrainConfig":
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(f"set max_steps ({self.max_steps}) or epochs ({self.epochs}), not both")
        for name in ("max_steps", "batch_size", "eval_every", "eval_batch_size", "max_train_examples",
                     "max_eval_examples", "max_test_examples", "grad_accum", "num_beams", "eval_num_beams",
                     "max_source_length", "max_target_length", "gen_max_length", "checkpoint_every",
                     "trace_every"):
            v = getattr(self, name)
            if name in EXAMPLE_CAPS and v == ALL:
                continue
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                also = f", or {ALL!r} (every example)" if name in EXAMPLE_CAPS else ""
                raise ValueError(f"{name} must be a positive integer or None (the budget's default){also}, "
                                 f"got {v!r}")
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
        """A copy with every None filled from the CPU budget table and the task's Table 8 defaults; an example cap
        of "all" becomes None (no cap)."""
        self.validate()
        spec = task_spec(self.task)
        values = dataclasses.asdict(self)
        if isinstance(self.lr, dict):
            values["lr"] = lr_for(self.lr, self.variant)
        budget = CPU_BUDGETS.get((self.task, self.model), {})
        explicit_budget = self.max_steps is not None or self.epochs is not None
        for key, v in budget.items():
            if key in ("max_steps", "epochs") and explicit_budget:
                continue
            if key == "lr" and isinstance(v, dict):     # the one per-variant value of a budget
                v = lr_for(v, self.variant)
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
        for key in EXAMPLE_CAPS:                 # resolved, None is no cap: "all" has outranked the budget's cap
            if values[key] == ALL:
                values[key] = None
        values["adam_betas"] = tuple(values["adam_betas"])
        values["bf16"] = use_bf16(values["bf16"])
        return TrainConfig(**values)._check_values()   # names checked above; values filled in


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


#: What a per-variant lr is, for the messages that refuse one.
PER_VARIANT_LR = '{variant: lr, "*": lr of every other variant}, variants from petl.PRESETS'


def check_per_variant_lr(rates: dict) -> None:
    """ValueError naming a key of a per-variant lr ``{variant: lr, "*": lr of every other}`` that is not a variant,
    or a rate that is not a positive number."""
    import petl
    unknown = sorted(str(k) for k in rates if k != "*" and k not in petl.PRESETS)
    if unknown:
        raise ValueError(f"lr {rates!r}: unknown variant(s) {', '.join(unknown)}; a per-variant lr is {PER_VARIANT_LR}")
    bad = {k: v for k, v in rates.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0}
    if bad:
        raise ValueError(f"lr {rates!r}: the rate of {', '.join(map(str, bad))} is not a positive number; "
                         f"a per-variant lr is {PER_VARIANT_LR}")


def lr_for(rates: dict, variant: str) -> float:
    """The learning rate of `variant` in a per-variant mapping ``{variant: lr, "*": lr of every other}`` (a
    `TrainConfig.lr` or a CPU budget's), so that one grid can run full fine-tuning and the methods each at its own
    rate. ValueError names a key that is not a variant, a rate that is not a positive number, or a missing one."""
    check_per_variant_lr(rates)
    if variant not in rates and "*" not in rates:
        raise ValueError(f"lr {rates!r} gives no rate for variant {variant!r}: add it or \"*\" ({PER_VARIANT_LR})")
    return rates.get(variant, rates.get("*"))


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



@dataclass(frozen=True)
class ResolvedRun:
    """One run, resolved once: what `petl.train.train` runs and what its record's config.json says."""
    train: TrainConfig        # every field filled
    method: Any               # the petl.PETLConfig that petl.apply receives
    spec: Any                 # the petl.tasks.TaskSpec of train.task
    computation: int          # petl.config.computation_version(method)
    run_id: str

    def record_config(self) -> dict:
        """The run-describing part of config.json: run id, resolved train and petl fields, computation version."""
        return {"run_id": self.run_id, **_hashed_fields(self.train, self.method, self.computation)}


def _hashed_fields(train: TrainConfig, method, computation: int) -> dict:
    return {"train": _jsonable(dataclasses.asdict(train)), "petl": _jsonable(method.to_dict()),
            "computation": computation}


def resolve_run(config: TrainConfig | dict) -> ResolvedRun:
    """Validate `config` and resolve it: budgets and Table 8 defaults filled, the PETLConfig built, the run id."""
    import petl
    from petl import runs
    if isinstance(config, dict):
        config = TrainConfig(**config)
    train = config.resolved()
    method = petl.resolve(train.variant, **train.overrides)
    computation = petl.config.computation_version(method)
    return ResolvedRun(train=train, method=method, spec=task_spec(train.task), computation=computation,
                       run_id=runs.run_id(_hashed_fields(train, method, computation)))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
