"""CPU benchmark of every method against the floor, full fine-tuning and PEFT; writes one JSON run record.

    python -m benchmarks.run                      # every method on minilm, the PEFT comparisons on smollm2
    python -m benchmarks.run --quick              # fewer rounds and steps (a smoke run; ratios are rough)
    python -m benchmarks.run --shapes tiny-bert tiny-llama --quick --out /tmp/b.json   # seconds

Per shape, in one process: every method is built on one random-initialised template model (frozen weights
shared), warmed up, then timed one training step each per round, in a new random order every round (seeded);
a ratio is the median over rounds of the per-round paired ratio (method / floor, ours / PEFT's), so
slow drifts of a shared machine cancel. Then LoRA inference (bare / unmerged / merged) the same way, and peak
memory, one fresh process per shape afterwards (benchmarks.memory). `--methods all`: every method on both shapes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import (environment_threads, inference_rounds, lora_inference_models, log, median_time,
                                paired_ratio, prepare_all, time_rounds)
from benchmarks.memory import measure as measure_in_process
from benchmarks.memory import run_subprocess
from benchmarks.methods import FLOOR, FLOOR_AGAIN, GLUE_SIZES, glue_methods
from benchmarks.shapes import get_shape
from petl.report.benchmarks import benchmark_verdict  # the one reader of the record format this writes

DEFAULT_SHAPES = ("minilm", "smollm2")
#: Rounds per shape (full run, quick run); the time budget may stop a full run earlier (never under 3 rounds).
ROUNDS = {"minilm": (9, 2), "smollm2": (4, 1)}
#: Inference rounds per shape in a full run (bare, unmerged and merged LoRA once each per round).
INFERENCE_ROUNDS = {"minilm": 7, "smollm2": 3}
#: Share of the time budget each shape's timing rounds may use.
BUDGET_SHARE = {"minilm": 0.15, "smollm2": 0.3}
#: What a run without --methods measures on a shape, where not every method: a SmolLM2 step takes about five
#: MiniLM steps, so within the default run's 10 minutes it times the comparisons with PEFT, and
#: measures the memory of MAM. `--methods all` measures every method on every shape.
DEFAULT_PLAN = {"smollm2": dict(methods=("lora", "peft_lora", "prefix_nomlp", "peft_prefix"),
                                memory=("mam",))}
#: The issue's targets.
STEP_LIMIT, PEER_LIMIT, MERGED_LIMIT, MAM_MEMORY_LIMIT = 1.10, 1.0, 1.02, 1.10
CLOCKS = ("wall_s", "cpu_s")


def machine_info(threads: int) -> dict:
    from petl.runs import cpu_model
    return dict(cpu=cpu_model()["cpu_model"], cpu_count=os.cpu_count(), torch_threads=threads,
                platform=platform.platform(), loadavg_start=list(os.getloadavg()))


def package_versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _clean(obj):
    """NaN / inf become None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    return obj


def bench_shape(shape_name: str, args, specs: dict) -> dict:
    """Timing, inference and memory of every method on one shape."""
    shape = get_shape(shape_name)
    rounds = args.rounds or ROUNDS.get(shape_name, (3, 2))[1 if args.quick else 0]
    # The default run shares its budget between shapes; with --rounds given, the whole budget is this shape's.
    share = 1.0 if args.rounds else BUDGET_SHARE.get(shape_name, 0.3)
    budget = None if args.quick else args.budget_s * share
    log(f"[{shape_name}] building the template and {len(specs)} methods")
    template = shape.build()
    out: dict = dict(shape=dict(family=shape.family, config=shape.config, batch=shape.batch, length=shape.length,
                                target_length=shape.target_length, tokens_per_step=shape.tokens_per_step))

    # --- training step ------------------------------------------------------------------------------
    prepared, unsupported = prepare_all(specs, template, shape, warmup=args.warmup)
    out["parameters"] = {name: item.counts() for name, item in prepared.items()}
    flops = {name: item.flops for name, item in prepared.items()}
    traffic = {name: item.elementwise_bytes for name, item in prepared.items()}
    out["unsupported"] = unsupported
    log(f"[{shape_name}] timing {len(prepared)} methods, up to {rounds} rounds")
    raw = time_rounds({n: p.step for n, p in prepared.items()}, rounds, min_rounds=min(3, rounds),
                      budget_s=budget, label=shape_name)
    del prepared
    out["timing"] = _timing_summary(raw, specs, shape)
    out["work"] = _work_summary(flops, traffic, specs)

    # --- inference: LoRA merged / unmerged / bare ---------------------------------------------------
    if "lora" in specs:
        bare, unmerged, merged = lora_inference_models(template, specs["lora"])
        models = dict(bare=bare, lora_unmerged=unmerged, lora_merged=merged)
        inf_rounds = args.inference_rounds or (3 if args.quick else INFERENCE_ROUNDS.get(shape_name, 9))
        with torch.no_grad():
            times, difference = inference_rounds(models, shape.make_batch(), shape.family, inf_rounds,
                                                 label=f"{shape_name} inference")
        del models, unmerged, merged
        out["inference"] = dict(
            rounds=inf_rounds, raw=times, median_s={n: median_time(t) for n, t in times.items()},
            ratio_to_bare={n: {c: paired_ratio(t, times["bare"], c) for c in CLOCKS}
                           for n, t in times.items() if n != "bare"},
            max_abs_logit_difference_merged_vs_unmerged=difference)
    del template

    return out


def _timing_summary(raw: dict, specs: dict, shape) -> dict:
    summary = dict(rounds=min((len(t) for t in raw.values()), default=0), raw=raw,
                   median_step_s={n: median_time(t) for n, t in raw.items()},
                   median_step_cpu_s={n: median_time(t, "cpu_s") for n, t in raw.items()})
    summary["tokens_per_s"] = {n: shape.tokens_per_step / s for n, s in summary["median_step_s"].items() if s > 0}
    to_reference, to_peer, to_full = {}, {}, {}
    for name, times in raw.items():
        spec = specs[name]
        if name != FLOOR and spec.reference in raw:
            to_reference[name] = dict(reference=spec.reference,
                                      **{c: paired_ratio(times, raw[spec.reference], c) for c in CLOCKS})
        if spec.peer and spec.peer in raw:
            to_peer[name] = dict(peer=spec.peer, **{c: paired_ratio(times, raw[spec.peer], c) for c in CLOCKS})
        if "full" in raw and name != "full":
            to_full[name] = {c: paired_ratio(times, raw["full"], c) for c in CLOCKS}
    summary.update(ratio_to_reference=to_reference, ratio_to_peer=to_peer, ratio_to_full=to_full)
    return summary


def _work_summary(flops: dict, traffic: dict, specs: dict) -> dict:
    """Matmul and attention FLOPs and elementwise bytes of one training step per method, and their ratios
    (ours / reference, ours / peer): counted, not timed, so exact and the same in every run."""
    def ratios(counts: dict, other: str) -> dict:
        pairs = {n: getattr(s, other) for n, s in specs.items() if n in counts and n != FLOOR}
        return {n: counts[n] / counts[o] for n, o in pairs.items() if counts.get(n) and counts.get(o)}

    return dict(flops_per_step=flops, ratio_to_reference=ratios(flops, "reference"),
                ratio_to_peer=ratios(flops, "peer"),
                elementwise_bytes_per_step=traffic, elementwise_ratio_to_reference=ratios(traffic, "reference"),
                elementwise_ratio_to_peer=ratios(traffic, "peer"))


def measure_memory(shapes: dict, memory_methods: dict, args) -> None:
    """Peak memory of the chosen methods that trained, one fresh process per shape; adds 'memory' per shape."""
    steps = args.memory_steps or (1 if args.quick else 2)
    for shape_name, result in shapes.items():
        names = [n for n in memory_methods[shape_name] if n not in result["unsupported"] and n != FLOOR_AGAIN]
        log(f"[{shape_name}] peak memory of {len(names)} methods ({steps} steps each, {args.memory})")
        if args.memory == "inprocess":  # quicker (no new interpreter) but glibc's heap is not set up for it
            memory = measure_in_process([shape_name], names, steps)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                memory = run_subprocess([shape_name], names, steps, args.threads, Path(tmp) / "memory.json",
                                        timeout_s=args.budget_s * 2)
        result["memory"] = _memory_summary(memory["shapes"][shape_name], memory)


def _memory_summary(methods: dict, memory: dict) -> dict:
    floor = methods.get(FLOOR, {})
    ratios = {}
    for name, m in methods.items():
        if "increment_bytes" in m and floor.get("increment_bytes"):
            ratios[name] = dict(increment=m["increment_bytes"] / floor["increment_bytes"],
                                with_weights=m["with_weights_bytes"] / floor["with_weights_bytes"])
            if "trainable_bytes" in m:
                # What any implementation must hold beyond the floor while the floor's activations peak (end of
                # the forward pass): the trainable values and AdamW's two moments, 3 copies (gradients may come
                # later, when activations are freed). As a share of the floor it bounds the ratio from below.
                ratios[name]["adamw_state_bound"] = 1 + 3 * m["trainable_bytes"] / floor["with_weights_bytes"]
    return dict(method="one process (fresh unless --memory inprocess), methods in turn; peak VmHWM - VmRSS "
                       f"before the first step, MALLOC_MMAP_THRESHOLD_={memory.get('mmap_threshold')}",
                steps=memory.get("steps"),
                per_method=methods, ratio_to_floor=ratios)


def evaluate_targets(shapes: dict, specs: dict) -> list[dict]:
    """Each of the issue's targets per shape: value, limit, met (None when not measured)."""
    rows = []

    def row(shape, target, method, value, limit, clock="wall_s", ci95=None):
        """met: the median is within the limit (the issue's test); decided: the 95% interval is on one side."""
        value = _finite(value)
        low, high = (_finite(x) for x in (ci95 or (None, None)))
        decided = None if low is None or high is None else (high <= limit or low > limit)
        rows.append(dict(shape=shape, target=target, method=method, value=value, limit=limit, clock=clock,
                         met=None if value is None else value <= limit, ci95=[low, high], decided=decided))

    def timed(ratios: dict, name: str) -> dict:
        r = ratios.get(name, {}).get("wall_s", {})
        return dict(value=r.get("median", float("nan")), ci95=r.get("ci95"))

    for shape_name, result in shapes.items():
        timing = result["timing"]
        for name, spec in specs.items():
            if spec.kind != "petl" or name not in timing["raw"] and name not in result["unsupported"]:
                continue
            row(shape_name, f"step <= {STEP_LIMIT}x {spec.reference}", name,
                limit=STEP_LIMIT, **timed(timing["ratio_to_reference"], name))
            if spec.peer:
                row(shape_name, f"step <= {PEER_LIMIT}x {spec.peer}", name, limit=PEER_LIMIT,
                    **timed(timing["ratio_to_peer"], name))
        if FLOOR_AGAIN in timing["ratio_to_reference"]:  # no target: the run's own noise, for reading the rest
            control = timed(timing["ratio_to_reference"], FLOOR_AGAIN)
            rows.append(dict(shape=shape_name, target="A/A control: the floor against itself", method=FLOOR_AGAIN,
                             value=_finite(control["value"]), limit=None, clock="wall_s",
                             met=None, ci95=[_finite(x) for x in control["ci95"] or (None, None)], decided=None))
        if "inference" in result:
            row(shape_name, f"merged LoRA inference <= {MERGED_LIMIT}x bare", "lora_merged", limit=MERGED_LIMIT,
                **timed(result["inference"]["ratio_to_bare"], "lora_merged"))
        if "memory" in result and "mam" in result["memory"]["per_method"]:
            nan = float("nan")
            m = result["memory"]["ratio_to_floor"].get("mam", dict(increment=nan, with_weights=nan))
            row(shape_name, f"MAM peak training memory <= {MAM_MEMORY_LIMIT}x floor (increment)", "mam",
                m["increment"], MAM_MEMORY_LIMIT, clock="memory")
            row(shape_name, f"MAM peak training memory <= {MAM_MEMORY_LIMIT}x floor (with weights)", "mam",
                m["with_weights"], MAM_MEMORY_LIMIT, clock="memory")
            if "adamw_state_bound" in m:
                row(shape_name, "  its least possible: floor + its params and AdamW moments", "mam",
                    m["adamw_state_bound"], MAM_MEMORY_LIMIT, clock="memory")
            if "mam_nomlp" in result["memory"]["ratio_to_floor"]:
                row(shape_name, f"MAM, prefix without MLP: memory <= {MAM_MEMORY_LIMIT}x floor (with weights)",
                    "mam_nomlp", result["memory"]["ratio_to_floor"]["mam_nomlp"]["with_weights"],
                    MAM_MEMORY_LIMIT, clock="memory")
    return rows


def format_table(record: dict) -> str:
    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if isinstance(x, (int, float)) and math.isfinite(x) else "-"

    def interval(r):
        ci = (r or {}).get("wall_s", {}).get("ci95") or [None, None]
        return f"{f(ci[0], '{:.2f}')}-{f(ci[1], '{:.2f}')}" if None not in ci else "-"

    lines = []
    for shape_name, result in record["shapes"].items():
        t = result["timing"]
        work = result.get("work", {})
        mem = result.get("memory", {})
        lines.append(f"\n== {shape_name}: {result['shape']['batch']} x {result['shape']['length']} tokens, "
                     f"{t['rounds']} rounds (x: median of per-round paired ratios, wall clock; 95%: its bootstrap "
                     f"interval; flops: matmul + attention work of one step, bytes: what the other ops read and "
                     f"write; both counted, exact) ==")
        lines.append(f"{'method':<14}{'step s':>8}{'tok/s':>7}{'x ref':>7}{'95%':>11}{'flops':>7}{'bytes':>7}{' ref':<13}"
                     f"{'x peer':>7}{'95%':>11}{'flops':>7}{'x full':>7}{'mem MB':>7}{'x floor':>8}{'trainable':>10}")
        for name, step in t["median_step_s"].items():
            ref = t["ratio_to_reference"].get(name)
            peer = t["ratio_to_peer"].get(name)
            full = t["ratio_to_full"].get(name)
            m = mem.get("per_method", {}).get(name, {})
            mr = mem.get("ratio_to_floor", {}).get(name, {})
            lines.append(
                f"{name:<14}{f(step, '{:.2f}'):>8}{f(t['tokens_per_s'].get(name), '{:.0f}'):>7}"
                f"{f(ref and ref['wall_s']['median']):>7}{interval(ref):>11}"
                f"{f(work.get('ratio_to_reference', {}).get(name)):>7}"
                f"{f(work.get('elementwise_ratio_to_reference', {}).get(name)):>7}{' ' + (ref['reference'] if ref else ''):<13}"
                f"{f(peer and peer['wall_s']['median']):>7}{interval(peer):>11}"
                f"{f(work.get('ratio_to_peer', {}).get(name)):>7}"
                f"{f(full and full['wall_s']['median']):>7}"
                f"{f(m.get('increment_bytes') and m['increment_bytes'] / 2**20, '{:.0f}'):>7}"
                f"{f(mr.get('increment')):>8}{result['parameters'].get(name, {}).get('trainable', 0):>10}")
        for name, reason in result["unsupported"].items():
            lines.append(f"{name:<14}not measured: {reason[:150]}")
        if "inference" in result:
            inf = result["inference"]
            ratios = ", ".join(f"{n} {r['wall_s']['median']:.3f}x (95% {interval(r)})"
                               for n, r in inf["ratio_to_bare"].items())
            lines.append(f"inference (no grad, {inf['rounds']} rounds): bare {inf['median_s']['bare']:.3f} s; "
                         f"{ratios}; max |merged - unmerged| = {inf['max_abs_logit_difference_merged_vs_unmerged']:.2e}")
    lines.append("\n== targets (issue 6): met = the median is within the limit; 'within noise' = the 95% interval "
                 "holds the limit ==")
    for r in record["targets"]:
        verdict = "" if r["limit"] is None else benchmark_verdict(r, record, loud=True)
        ci = r.get("ci95") or [None, None]
        ci_text = f"[{f(ci[0])}, {f(ci[1])}]" if None not in ci else ""
        lines.append(f"{r['shape']:<11}{r['method']:<14}{r['target']:<58}{f(r['value']):>7} {ci_text:<16} {verdict}")
    return "\n".join(lines)


def write_record(record: dict, path: Path) -> None:
    """Write the record atomically (temporary file in the same folder, fsync, os.replace)."""
    from petl.files import write_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(_clean(record), indent=2, sort_keys=False, allow_nan=False) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and memory steps (rough ratios)")
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to measure on every shape, or 'all' (default: all on minilm, DEFAULT_PLAN on smollm2)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per shape (default: per shape)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method before the rounds")
    parser.add_argument("--inference-rounds", type=int, default=None)
    parser.add_argument("--memory", choices=("subprocess", "inprocess", "off"), default="subprocess",
                        help="peak memory in a fresh process (default), in this one (quick, rougher), or not")
    parser.add_argument("--memory-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2 = the cores)")
    parser.add_argument("--budget-s", type=float, default=480.0,  # shared by the shapes unless --rounds is given
                        help="time budget that stops timing rounds early (after 3 rounds at least)")
    parser.add_argument("--out", type=Path, default=None,
                        help="record path (default runs/benchmarks/cpu-<UTC date and time>.json)")
    args = parser.parse_args(argv)
    for name in args.shapes:
        get_shape(name)  # a clear error for an unknown shape
    return args


def plan_for(shape: str, methods: list[str] | None, specs: dict) -> tuple[list[str], list[str]]:
    """(methods timed, methods whose memory is measured) on one shape: --methods if given ('all': every method),
    else DEFAULT_PLAN's for the shape, else every method. The floor, its A/A control and the floors the chosen
    methods are divided by are always timed; the floor's memory is always measured."""
    if methods and methods != ["all"]:
        chosen = memory = list(methods)
    elif methods == ["all"] or shape not in DEFAULT_PLAN:
        chosen = memory = list(specs)
    else:
        chosen, memory = list(DEFAULT_PLAN[shape]["methods"]), list(DEFAULT_PLAN[shape]["memory"])
    keep = {FLOOR, FLOOR_AGAIN, *chosen} | {specs[m].reference for m in chosen}
    timed = [n for n in specs if n in keep]
    return timed, [n for n in specs if n in {FLOOR, *memory} and n != FLOOR_AGAIN]


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    environment_threads(args.threads)
    specs = glue_methods()
    unknown = [m for m in args.methods or () if m not in specs and m != "all"]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid methods are all, {', '.join(specs)}")
    plans = {shape: plan_for(shape, args.methods, specs) for shape in args.shapes}
    measured = {name for timed, _ in plans.values() for name in timed}
    now = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path("runs/benchmarks") / f"cpu-{now:%Y%m%d-%H%M%S}.json"
    from petl.runs import git_commit
    record = dict(kind="petl-benchmark", version=1, created=now.isoformat(timespec="seconds"),
                  command=" ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
                  quick=args.quick, machine=machine_info(args.threads), packages=package_versions(),
                  git=git_commit(),
                  settings=dict(threads=args.threads, warmup=args.warmup, budget_s=args.budget_s,
                                memory=args.memory, dtype="float32", dropout="config defaults, train mode",
                                order="a new random order of the methods every round (seed 0)",
                                optimizer="AdamW(lr=1e-5, weight_decay=0.01) over the trainable parameters",
                                step="forward + loss + backward + optimizer.step + zero_grad(set_to_none)",
                                floor="stock model, every weight frozen, inputs_embeds.requires_grad_()",
                                sizes=GLUE_SIZES),
                  methods={n: s.describe() for n, s in specs.items() if n in measured},
                  plan={shape: dict(timed=list(timed), memory=list(memory)) for shape, (timed, memory) in plans.items()},
                  shapes={})
    for shape_name in args.shapes:
        timed = {n: specs[n] for n in plans[shape_name][0]}
        record["shapes"][shape_name] = bench_shape(shape_name, args, timed)
        record["complete"] = False  # a run cut short still leaves what it measured, marked incomplete
        write_record(record, out)
    if args.memory != "off":
        measure_memory(record["shapes"], {shape: memory for shape, (_, memory) in plans.items()}, args)
    record["targets"] = evaluate_targets(record["shapes"], specs)
    record["machine"]["loadavg_end"] = list(os.getloadavg())
    record["wall_time_s"] = time.perf_counter() - started
    record["complete"] = True
    write_record(record, out)
    print(format_table(_clean(record)))
    print(f"\nrecord: {out}  ({record['wall_time_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
