"""torch.compile on petl's methods: the graph breaks of every preset, and compiled against eager training steps.

    python -m benchmarks.compile                       # minilm: breaks of every preset, lora and mam timed (~10 min)
    python -m benchmarks.compile --shape tiny-bert --rounds 6 --backend aot_eager --out /tmp/c.json   # a minute
    python -m benchmarks.compile --shape smollm2 --rounds 0 --presets mam prefix lora   # graph breaks only

Graph breaks: `torch._dynamo.explain` of one training-mode forward pass with labels (the loss included) of every
preset of petl.config.PRESETS at the paper's GLUE sizes (l = r = 16), on the shape's random-initialised model;
the backward pass is traced from the forward graphs, so a forward without breaks compiles fwd + bwd whole. Also
with gradient checkpointing (non-reentrant, as `python -m petl train --gradient-checkpointing` enables it) for the
timed methods, where breaks remain (benchmarks/README.md, "torch.compile", says which and why), in four settings
(CHECKPOINTING_SETTINGS) that tell transformers' breaks from petl's. Each count comes with dynamo's messages.

Timing: a training step = forward + loss + backward + AdamW.step + zero_grad, as benchmarks.run measures it
(benchmarks.methods.Prepared.step); the compiled variant is the same method model wrapped in torch.compile (the
optimizer step is eager in both). Every model gets `--warmup` untimed steps first (compilation, and the one
recompilation transformers' BERT causes by setting config.problem_type on its first call), then interleaved rounds
in a random order (benchmarks.measure.time_rounds); the ratio compiled / eager is the median of per-round ratios
with its 95% bootstrap interval (benchmarks.measure.paired_ratio).

The record goes to runs/benchmarks/compile/ (outside the folder the book's efficiency tables read).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.measure import environment_threads, log, median_time, paired_ratio, time_rounds
from benchmarks.methods import GLUE_SIZES, Prepared, glue_methods, prepare, share_frozen
from benchmarks.run import machine_info, package_versions, write_record
from benchmarks.shapes import get_shape

TIMED = ("lora", "mam")
CLOCKS = ("wall_s", "cpu_s")


def graph_breaks(model, batch: dict, checkpointing: bool = False, transformers_quiet: bool = False) -> dict:
    """{graphs, breaks, reasons: [{reason, where}], messages: {message: times}} of one forward pass of `model` on
    `batch` (its current train / eval mode), as torch._dynamo.explain finds them; `where` is the innermost two
    frames of user code. explain's reasons leave out the breaks dynamo meets while it falls back to running a
    frame eagerly (on SmolLM2 under gradient checkpointing, all of them), so `messages` keeps the first line of
    every graph-break message dynamo counted (torch._dynamo.utils.counters), each with how often it was met: a
    frame that is traced again or resumed meets its break again, so these are not break counts.

    With `checkpointing`, `transformers_quiet` takes away the two things transformers adds to a checkpointed
    forward pass that dynamo cannot trace: the warning that use_cache is switched off (config.use_cache = False
    for the call) and the forward hook that makes the input embeddings require grad (disable_input_require_grads;
    non-reentrant checkpointing does not need it)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters["graph_break"].clear()
    use_cache = getattr(model.config, "use_cache", None)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if transformers_quiet:
            model.disable_input_require_grads()
            model.config.use_cache = False
    try:
        explained = torch._dynamo.explain(model)(**batch)
    finally:
        if checkpointing:
            model.activation_checkpointing_disable()
            model.config.use_cache = use_cache
        torch._dynamo.reset()
    reasons = []
    for reason in explained.break_reasons:
        where = " <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                            for frame in reversed(reason.user_stack[-2:]))
        reasons.append(dict(reason=reason.reason.splitlines()[0][:300], where=where))
    messages: dict[str, int] = {}
    for message, times in counters["graph_break"].items():
        first = (message.strip().splitlines() or [""])[0][:300]
        messages[first] = messages.get(first, 0) + times
    counters["graph_break"].clear()
    return dict(graphs=explained.graph_count, breaks=explained.graph_break_count, reasons=reasons,
                messages=dict(sorted(messages.items())))


def preset_config(variant: str) -> dict:
    """The preset at the paper's GLUE sizes (benchmarks.methods.GLUE_SIZES; LoRA keeps its scale)."""
    import petl
    if variant == "full":
        return petl.resolve(variant).to_dict()
    size = dict(attn_bn=GLUE_SIZES["length"], ffn_bn=GLUE_SIZES["rank"])
    return petl.resolve(variant, **size).to_dict()


def preset_breaks(shape, presets, template) -> dict:
    """Graph breaks of each preset (train mode, one forward with labels) on a copy of `template`."""
    import petl
    out = {}
    batch = shape.make_batch()
    for variant in presets:
        model = share_frozen(template)
        petl.apply(model, petl.PETLConfig.from_dict(preset_config(variant)))
        model.train()
        try:
            out[variant] = graph_breaks(model, batch)
        except ValueError as error:  # e.g. BitFit on a model without biases
            out[variant] = dict(unsupported=str(error))
        log(f"  {variant}: {out[variant].get('breaks', 'not measured')} graph breaks")
    return out


#: The settings graph breaks under gradient checkpointing are counted in: key -> (dynamo may replay a hook's
#: Python side effects, transformers' untraceable additions taken away; graph_breaks says which).
CHECKPOINTING_SETTINGS = {"default": (False, False), "side_effects_allowed": (True, False),
                          "transformers_quiet": (False, True), "transformers_quiet_side_effects_allowed": (True, True)}


def checkpointing_breaks(shape, specs: dict, template) -> dict:
    """Graph breaks under gradient checkpointing, for each timed method and the stock model (nothing attached):
    as `python -m petl train --gradient-checkpointing` runs it; with
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint, which lets a hook's Python state (the
    Captured holder) be set inside a checkpointed layer; and each of those with transformers' own untraceable
    additions taken away (graph_breaks' transformers_quiet), which leaves what petl adds."""
    import petl
    batch = shape.make_batch()
    out = {}
    for key, (side_effects, quiet) in CHECKPOINTING_SETTINGS.items():
        out[key] = {}
        for name in ("stock", *specs):
            model = share_frozen(template)
            if name != "stock":
                petl.apply(model, petl.PETLConfig.from_dict(specs[name].petl_config))
            model.train()
            with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=side_effects):
                out[key][name] = graph_breaks(model, batch, checkpointing=True, transformers_quiet=quiet)
            log(f"  checkpointing ({key}) {name}: {out[key][name]['breaks']} graph breaks")
    return out


def compiled(item: Prepared, backend: str) -> Prepared:
    """A second Prepared whose model is `item`'s method model (its own copy) under torch.compile."""
    return Prepared(item.spec, torch.compile(item.model, backend=backend), item.batch, item.optimizer, item.family)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="minilm")
    parser.add_argument("--methods", nargs="+", default=list(TIMED), help="methods timed eager and compiled")
    parser.add_argument("--presets", nargs="+", default=None, help="presets whose graph breaks are counted "
                                                                   "(default: every one)")
    parser.add_argument("--rounds", type=int, default=12, help="timing rounds (0: count the graph breaks only)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (the compiled ones compile)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="a sentence for the record (e.g. what else ran on the machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="record path (default runs/benchmarks/compile/cpu-<shape>-<UTC date and time>.json)")
    args = parser.parse_args(argv)
    if args.rounds < 0:
        parser.error("--rounds must be 0 (graph breaks only) or more")
    get_shape(args.shape)  # a clear error for an unknown shape
    return args


def main(argv=None) -> dict:
    import petl
    args = parse_args(argv)
    started = time.perf_counter()
    environment_threads(args.threads)
    shape = get_shape(args.shape)
    specs = glue_methods()
    unknown = [m for m in args.methods if m not in specs or specs[m].kind != "petl"]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid methods are "
                         f"{', '.join(n for n, s in specs.items() if s.kind == 'petl')}")
    presets = args.presets or sorted(petl.PRESETS)
    bad = [p for p in presets if p not in petl.PRESETS]
    if bad:
        raise SystemExit(f"unknown preset(s) {bad}; valid presets are {', '.join(sorted(petl.PRESETS))}")
    timed = {name: specs[name] for name in args.methods}
    now = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path("runs/benchmarks/compile") / f"cpu-{args.shape}-{now:%Y%m%d-%H%M%S}.json"
    from petl.runs import git_commit
    record = dict(kind="petl-compile-benchmark", version=1, created=now.isoformat(timespec="seconds"),
                  command=" ".join(["python -m benchmarks.compile", *(argv if argv is not None else sys.argv[1:])]),
                  note=args.note, machine=machine_info(args.threads), packages=package_versions(), git=git_commit(),
                  settings=dict(shape=args.shape, batch=shape.batch, length=shape.length, backend=args.backend,
                                rounds=args.rounds, warmup=args.warmup, threads=args.threads, dtype="float32",
                                sizes=GLUE_SIZES, order="a new random order of the models every round (seed 0)",
                                step="forward + loss + backward + AdamW.step + zero_grad(set_to_none); only the "
                                     "model is compiled, the optimizer step is eager in both",
                                graph_breaks="torch._dynamo.explain of one train-mode forward with labels"),
                  methods={n: s.describe() for n, s in timed.items()}, complete=False)
    log(f"[{args.shape}] graph breaks of {len(presets)} presets")
    template = shape.build()
    record["graph_breaks"] = preset_breaks(shape, presets, template)
    record["graph_breaks_with_checkpointing"] = checkpointing_breaks(shape, timed, template)
    write_record(record, out)
    if args.rounds == 0:  # graph breaks only
        return finish(record, out, started)

    log(f"[{args.shape}] building {len(timed)} methods, eager and compiled ({args.backend})")
    models = {}
    for name, spec in timed.items():
        models[f"{name}_eager"] = prepare(spec, template, shape)
        models[f"{name}_compiled"] = compiled(prepare(spec, template, shape), args.backend)
    warmup = {}
    for name, item in models.items():
        times = []
        for _ in range(args.warmup):
            begin = time.perf_counter()
            loss = item.step()
            times.append(time.perf_counter() - begin)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{name}: non-finite loss {loss.item()} in warm-up")
        warmup[name] = times
        log(f"  {name} warm-up: {', '.join(f'{t:.1f}' for t in times)} s")
    raw = time_rounds({n: m.step for n, m in models.items()}, args.rounds, min_rounds=args.rounds,
                      label=args.shape)
    record["timing"] = dict(
        rounds=args.rounds, raw=raw, warmup_s=warmup,
        median_step_s={n: median_time(t) for n, t in raw.items()},
        median_step_cpu_s={n: median_time(t, "cpu_s") for n, t in raw.items()},
        ratio_compiled_to_eager={name: {c: paired_ratio(raw[f"{name}_compiled"], raw[f"{name}_eager"], c)
                                        for c in CLOCKS} for name in timed})
    return finish(record, out, started)


def finish(record: dict, out: Path, started: float) -> dict:
    """Complete the record, write it, print the summary."""
    record["machine"]["loadavg_end"] = list(os.getloadavg())
    record["wall_time_s"] = time.perf_counter() - started
    record["complete"] = True
    write_record(record, out)
    print(summary(record))
    print(f"\nrecord: {out}  ({record['wall_time_s']:.0f} s)")
    return record


def summary(record: dict) -> str:
    lines = [f"graph breaks ({record['settings']['shape']}, train mode, one forward with labels):"]
    for variant, found in record["graph_breaks"].items():
        lines.append(f"  {variant:<16}{found.get('breaks', 'not measured')}")
    for key, found in record["graph_breaks_with_checkpointing"].items():
        counts = ", ".join(f"{name} {entry['breaks']}" for name, entry in found.items())
        lines.append(f"with gradient checkpointing ({key}): {counts}")
    timing = record.get("timing")
    if timing:
        lines.append(f"step time, {timing['rounds']} rounds (median s; compiled / eager: median of per-round ratios, "
                     "95% interval):")
        for name, ratio in timing["ratio_compiled_to_eager"].items():
            wall = ratio["wall_s"]
            ci = wall.get("ci95") or [None, None]
            interval = f"{ci[0]:.3f}-{ci[1]:.3f}" if None not in ci else "no interval"
            lines.append(f"  {name:<8} eager {timing['median_step_s'][f'{name}_eager']:.3f}  compiled "
                         f"{timing['median_step_s'][f'{name}_compiled']:.3f}  ratio {wall['median']:.3f} "
                         f"({interval}; cpu clock {ratio['cpu_s']['median']:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
