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

A killed run resumes: every ``checkpoint_every`` steps (default: at each dev evaluation) the method, optimizer,
scheduler, random states and data position go to ``runs/.checkpoints/<run id>/`` (``petl.checkpoints``), and the
same command started again continues from the newest one, computing what the uninterrupted run computes.
``force=True`` starts from step 0. The checkpoints are removed once the record is written.

``trace_every=N`` adds to history.csv, at step 1 and every N steps, ``petl.inspect.trace`` of the first 64 dev
examples: each prefix layer's gate λ of Eq. 7 and how different the inputs' representations are after each layer.
It changes neither what the run computes nor its run id.

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
``PETL_PAUSE_AT=train|eval|checkpoint-<step>|weights|record|replace`` (comma-separated) with ``PETL_PAUSE_FILE=path``:
on reaching that phase the process writes the phase name to the file and sleeps until killed.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path

from petl import checkpoints, progress, runs
from petl.files import write_atomic
from petl.runs import RunRecord
# The configuration lives in petl.train_config; these names are re-exported for `from petl.train import ...`.
from petl.train_config import (CPU_BUDGETS, ResolvedRun, TrainConfig, notebook_config,  # noqa: F401
                               resolve_run, use_bf16)


class RunConfigError(ValueError):
    """A configuration that cannot train, found before the first step (e.g. fewer examples than one batch)."""


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, what: str = "loss"):
        super().__init__(f"{what} became {value} at step {step}")
        self.step = step


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def train(config: TrainConfig | dict, runs_dir: str | os.PathLike = "runs", force: bool = False) -> RunRecord:
    """Train, evaluate and record one run; return its record (skipped if already complete unless force)."""
    run = resolve_run(config)       # the one resolution: budgets, Table 8 defaults, PETLConfig, run id
    rid = run.run_id
    runs_dir = Path(runs_dir)
    rank = int(os.environ.get("RANK", "0"))
    if not force and runs.record_status(runs_dir, rid) == "complete":
        return RunRecord.load(runs_dir / rid)
    if rank != 0:                      # only process 0 locks and writes; the others just train
        return _run(run, runs_dir)
    runs.check_writable(runs_dir)      # before training: a finished run must not die on its way to disk
    with runs.run_lock(runs_dir, rid):
        if not force and runs.record_status(runs_dir, rid) == "complete":   # finished while we waited
            return RunRecord.load(runs_dir / rid)
        runs.clean_leftovers(runs_dir)         # what killed runs left (their processes are gone)
        if force:
            checkpoints.remove(runs_dir, rid)  # force: from step 0, not from a killed run's checkpoint
        return _run(run, runs_dir)


def _run(run: ResolvedRun, runs_dir: Path) -> RunRecord:
    import datasets
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    import petl
    from petl import data as D
    from petl import inspect, models, tasks

    cfg, spec, rid = run.train, run.spec, run.run_id
    t_start = time.perf_counter()

    # ---- set-up: processes, seed, model + method, data -----------------------------------------------
    # cpu=True without a GPU: under torchrun this makes accelerate set up gloo data parallelism on CPU.
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", split_batches=True,
                              cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    set_seed(cfg.seed)                                       # python, numpy, torch (all devices)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = models.load_model(cfg.model, spec)
    family = models.model_family(model.config)
    petl.apply(model, run.method)
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
    trace_batch = None
    if cfg.trace_every:  # petl.inspect.trace on the first 64 dev examples, batched as in training
        rows = [enc["validation"][i] for i in range(min(64, len(enc["validation"])))]
        trace_batch = {k: v.to(accelerator.device) for k, v in D.collator(spec, tokenizer, family)(rows).items()}
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

    # ---- training loop (resumed from the run's last checkpoint, if a killed process left one) -------
    history: list[dict] = []
    best = {"score": -math.inf, "step": None, "state": None, "dev": None}
    primary = spec.primary_metric
    train_tokens, train_time, step = 0, 0.0, 0
    failure = None
    checkpoint_every = cfg.checkpoint_every or eval_every
    resume = checkpoints.latest(runs_dir, rid)
    if resume is None:
        batches = Batches(train_loader, g)
    else:
        saved = checkpoints.load(resume, rid)
        with torch.no_grad():
            params = dict(accelerator.unwrap_model(model).named_parameters())
            for name, value in saved["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        history, best, step = saved["history"], saved["best"], saved["step"]
        train_tokens, train_time = saved["train_tokens"], saved["train_time_s"]
        batches = Batches(train_loader, g, **saved["data"])          # the same batches from here on
        checkpoints.set_rng_states(saved["rng"])                      # the same dropout masks
        if main:                                                      # said even without progress bars
            print(f"resumed from {resume} (step {step} of {max_steps})", flush=True)
    bar = progress.bar(total=max_steps, initial=step, disable=not (main and cfg.progress), mininterval=2, desc=rid[:40])
    model.train()
    try:
        while step < max_steps:
            t0 = time.perf_counter()
            tokens = 0
            for _ in range(cfg.grad_accum):
                batch = next(batches)
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
            if trace_batch is not None and main and (step == 1 or step % cfg.trace_every == 0):
                with accelerator.autocast():  # evaluation mode, no random numbers: training is unchanged
                    row.update(inspect.trace(accelerator.unwrap_model(model), **trace_batch))

            # ---- periodic dev evaluation and model selection on the primary dev metric -------------
            if step % eval_every == 0 or step == max_steps:
                dev = evaluate(model, eval_loaders["validation"], spec, family, cfg, accelerator, tokenizer,
                               num_beams=cfg.eval_num_beams)
                row.update({f"dev_{k}": v for k, v in dev.items()})
                if dev[primary] > best["score"]:
                    best = {"score": dev[primary], "step": step, "state": _trainable_state(model), "dev": dev}
                if main and cfg.progress:
                    bar.write(f"step {step}: dev {primary} {dev[primary]:.4f} "
                              f"(best {best['score']:.4f} at step {best['step']})")
            history.append(row)
            if step % checkpoint_every == 0 and step < max_steps:
                if main:
                    checkpoints.save(runs_dir, rid, step, {
                        "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": checkpoints.rng_states(),
                        "data": batches.position(), "history": history, "best": best,
                        "train_tokens": train_tokens, "train_time_s": train_time}, runs.history_csv(history))
                accelerator.wait_for_everyone()
                _pause(f"checkpoint-{step}")
    except NonFiniteLoss as e:
        failure = e
    bar.close()

    if failure is not None:
        metrics = {"status": "failed", "reason": str(failure), "failed_step": failure.step,
                   "parameters": report, "wall_time_s": time.perf_counter() - t_start}
        return _finish(accelerator, runs_dir, run, metrics, history)

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
    return _finish(accelerator, runs_dir, run, metrics, history, save)


def _finish(accelerator, runs_dir, run: ResolvedRun, metrics, history, save=None) -> RunRecord:
    """Process 0 writes the record, with the weights inside it (`save` writes them), atomically; every process
    returns it."""
    rid = run.run_id
    if accelerator.is_main_process:
        config = {**run.record_config(),
                  "versions": runs.package_versions(), "git": runs.git_commit(),
                  "device": runs.device_info(accelerator.device, accelerator.num_processes)}
        runs.write_record(runs_dir, rid, config, metrics, history, pause=_pause, weights=save)
        checkpoints.remove(runs_dir, rid)          # the record is the result now
    accelerator.wait_for_everyone()
    return RunRecord.load(Path(runs_dir) / rid)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def evaluate(model, loader, spec, family, cfg, accelerator, tokenizer, num_beams: int | None = None) -> dict:
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
                out = accelerator.unwrap_model(model).generate(**batch, **generate_kwargs(cfg, family, num_beams),
                                                               do_sample=False)
                text = D.decode_generations(out, batch["input_ids"], tokenizer, family)
                preds += accelerator.gather_for_metrics(text)
                refs += accelerator.gather_for_metrics(list(references))
            if i == 0:
                _pause("eval")
    model.train()
    return M.compute_metrics(spec, preds, refs)


def generate_kwargs(cfg: TrainConfig, family: str, num_beams: int | None = None) -> dict:
    """model.generate arguments from the resolved config (lengths count target tokens, as the paper); `num_beams`
    replaces the config's (the dev evaluations' eval_num_beams)."""
    out = {"num_beams": num_beams or cfg.num_beams, "no_repeat_ngram_size": cfg.no_repeat_ngram_size or 0}
    if family == "decoder":
        out.update(max_new_tokens=cfg.gen_max_length, min_new_tokens=cfg.gen_min_length or None)
    else:
        out.update(max_length=cfg.gen_max_length, min_length=cfg.gen_min_length or 0)
    return out


# --------------------------------------------------------------------------------------------------
# Helpers of the loop (and the tests' kill points)
# --------------------------------------------------------------------------------------------------

def _pause(phase: str) -> None:
    """Test hook: block at `phase` if PETL_PAUSE_AT names it (the test then kills this process)."""
    wanted = os.environ.get("PETL_PAUSE_AT", "")
    if phase in wanted.split(","):
        flag = os.environ.get("PETL_PAUSE_FILE")
        if flag:
            write_atomic(flag, phase)
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


def _head(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


class Batches:
    """The training batches, epoch after epoch (a new shuffle each), with their position: the epoch, the batches
    taken in it and the shuffling generator's state at its start. ``Batches(loader, generator, **position)``
    continues exactly where that position was (a resumed run draws the same batches as an uninterrupted one).
    An epoch without a batch is an error, not an endless loop."""

    def __init__(self, loader, generator=None, epoch: int = 0, taken: int = 0, epoch_state=None):
        self.loader, self.generator, self.epoch = loader, generator, epoch
        if epoch_state is not None:
            generator.set_state(epoch_state)
        self._start_epoch()
        for _ in range(taken):
            next(self)

    def _start_epoch(self) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self.epoch_state = self.generator.get_state() if self.generator is not None else None
        self._batches, self.taken = iter(self.loader), 0

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._batches)
        except StopIteration:
            if self.taken == 0:
                raise RuntimeError("the training loader gave no batch in a whole epoch (fewer examples than one "
                                   "batch)") from None
            self.epoch += 1
            self._start_epoch()
            return next(self)
        self.taken += 1
        return batch

    def position(self) -> dict:
        return {"epoch": self.epoch, "taken": self.taken, "epoch_state": self.epoch_state}
