"""GPU benchmark (record version 2): every method's training step against the floor, full fine-tuning and PEFT,
at three paper-scale shapes, in interleaved rounds that run until every ratio is known to ±5%.

    bash benchmarks/gpu.sh                                            # on a CUDA machine: OUT=... (about 8 min)
    python -m benchmarks.gpu --out-dir $OUT                           # the python part of it
    python -m benchmarks.gpu --tiny --out /tmp/gpu-tiny.json          # every phase on CPU with tiny models, seconds

The record is written to --out, or else to --out-dir (runs/benchmarks) as gpu-v2-<device>-<UTC time>.json.

Shapes (random weights, fp32 master weights, bf16 autocast, TF32 matmuls): BART-large at batch 64 and 16 (512
source / 128 target tokens; the paper's XSum model and batch), RoBERTa-base 32 x 128 (sequence classification),
SmolLM2-135M 8 x 256 (causal LM). Methods: the floor (frozen model, gradients to the input embeddings), the
floor again (floor_aa, a second instance timed in the same rounds: the A/A control), the floor at the input
lengthened by the prompt (prompt tuning's reference), full fine-tuning, prefix tuning (with and without its
MLP), LoRA, the parallel FFN adapter, MAM and prompt tuning at the paper's sizes (BART: the presets, l = r =
200, MAM l=30 + r=512; RoBERTa and SmolLM2: the GLUE sizes, l = r = 16), and PEFT's LoRA, prefix and prompt
tuning at the same sizes. A method that cannot be built or trained is recorded with its reason.

Per shape, in one process: build every method on one template (frozen weights shared) and warm it up: the first
warm-up step counts its FLOPs and elementwise bytes (benchmarks.measure.count_work), the warm-up steps give
its peak memory (torch.cuda.max_memory_allocated over them, minus what was allocated before). Then interleaved
rounds (benchmarks.adaptive: a new random order per round, the first round discarded) until every ratio (each
method / its floor, the A/A, each / full, ours / PEFT's) has a 95% interval within ±precision, or the shape's
share of the budget is spent. Then merged-LoRA inference against the bare model, the same way. After every
shape, torch.profiler over one step of each method (the models are kept until then, so that no timing runs
after a profiler session). Every phase has a SIGALRM timeout and the record is rewritten (atomically) after
every phase, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks import adaptive
from benchmarks.measure import count_work, log, lora_inference_models
from benchmarks.methods import FLOOR, FLOOR_AGAIN, MethodSpec, Unsupported, _petl, glue_methods, prepare
from benchmarks.run import _clean, package_versions
from benchmarks.shapes import get_shape

VERSION = 2
#: The A/A control's name here: the floor built and timed a second time in every round (benchmarks.run calls
#: the same method floor_again).
AA = "floor_aa"
#: The methods measured on every shape, in building order.
METHODS = ("floor", AA, "floor_prompt", "full", "prefix", "prefix_nomlp", "lora", "pa_ffn", "mam",
           "prompt_tuning", "peft_lora", "peft_prefix", "peft_prompt")
#: Sizes: the paper's BART-large (XSum) presets, its GLUE sizes (RoBERTa-base), and tiny ones (CPU checks).
SIZES = {"paper": dict(length=200, rank=200, mam_scalar=4.0), "glue": dict(length=16, rank=16, mam_scalar=2.0),
         "tiny": dict(length=4, rank=4, mam_scalar=2.0)}
#: key -> the shape, its batch and lengths, the method sizes, the step target (x the floor scaled by FLOPs), the
#: share of the budget, and the tiny shape standing in for it with --tiny.
PLAN = {
    "bart-large-b64": dict(shape="bart-large", batch=64, length=512, target_length=128, sizes="paper",
                           step_limit=1.05, share=0.30, tiny="tiny-bart", tiny_batch=4),
    "bart-large-b16": dict(shape="bart-large", batch=16, length=512, target_length=128, sizes="paper",
                           step_limit=1.10, share=0.24, tiny="tiny-bart", tiny_batch=2),
    "roberta-base": dict(shape="roberta-base", batch=32, length=128, sizes="glue", step_limit=1.10, share=0.2,
                         tiny="tiny-roberta", tiny_batch=4),
    "smollm2": dict(shape="smollm2", batch=8, length=256, sizes="glue", step_limit=1.10, share=0.26,
                    tiny="tiny-llama", tiny_batch=4),
}
#: Limits of the other targets: ours / PEFT's at equal FLOPs, MAM / full, merged LoRA inference / the bare model.
PEER_LIMIT, MAM_FULL_LIMIT, MERGED_LIMIT = 1.0, 1.0, 1.02
#: Shares of a shape's time after its set-up: merged-LoRA inference; of the whole budget: the profiles at the end.
INFERENCE_SHARE, PROFILE_SHARE = 0.12, 0.12


class PhaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float, what: str):
    """Raise PhaseTimeout in the main thread if the block runs longer than `seconds`."""
    def handler(signum, frame):
        raise PhaseTimeout(f"{what} ran past {seconds:.1f} s")
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def method_specs(sizes: str) -> dict[str, MethodSpec]:
    """METHODS at `sizes` ('paper', 'glue' or 'tiny'); peers and references as benchmarks.methods sets them."""
    if sizes not in SIZES:
        raise ValueError(f"unknown sizes {sizes!r}; valid sizes are {', '.join(SIZES)}")
    specs = glue_methods(SIZES[sizes])
    specs[AA] = dataclasses.replace(specs.pop(FLOOR_AGAIN), name=AA)
    if sizes == "paper":  # MAM at the paper's XSum size is its preset (prefix l=30, scaled parallel adapter r=512)
        specs["mam"] = _petl("mam", "mam")
    if sizes == "tiny":  # a small re-parameterisation MLP: the same code, seconds on a CPU
        specs["prefix"] = _petl("prefix", "prefix", attn_bn=4, mid_dim=8)
        specs["mam"] = _petl("mam", "mam", attn_bn=4, ffn_bn=4, mid_dim=8, ffn_adapter_scalar=2.0)
    return {n: specs[n] for n in METHODS}


def pairs_of(specs: dict[str, MethodSpec], names) -> dict[str, tuple[str, str]]:
    """The ratios the rounds must resolve, 'a/b' -> (a, b), among the methods in `names`: each method over its
    floor (floor_aa / floor is the A/A control), each method with parameters over full fine-tuning, ours over
    PEFT's."""
    names = set(names)
    out = {}
    for name in METHODS:
        if name not in names or name == FLOOR:
            continue
        spec = specs[name]
        if spec.reference in names:
            out[f"{name}/{spec.reference}"] = (name, spec.reference)
    for name in METHODS:
        if name in names and specs[name].kind in ("petl", "peft") and "full" in names:
            out[f"{name}/full"] = (name, "full")
    for name in METHODS:
        peer = specs[name].peer
        if name in names and peer in names:
            out[f"{name}/{peer}"] = (name, peer)
    return out


def evaluate(key: str, specs: dict, ratios: dict, work: dict, step_limit: float, inference: dict | None,
             unsupported: dict | None = None) -> list:
    """The shape's targets: value, 95% interval, limit and verdict (adaptive.verdict) of each; a target whose
    method or comparison was not measured says why (`note`)."""
    flops = work.get("flops_per_step", {})
    unsupported = unsupported or {}
    rows = []

    def row(target, method, ratio, limit, by=1.0, counted=None, verdict=None, versus=()):
        r = adaptive.scaled(ratio, by) if ratio else {}
        missing = [f"{n}: {unsupported[n]}" for n in (method, *versus) if n in unsupported]
        rows.append(dict(shape=key, target=target, method=method, value=r.get("estimate"), ci95=r.get("ci95"),
                         half_width=r.get("half_width"), rounds=r.get("rounds"), limit=limit,
                         counted_ratio=counted, time_ratio=(ratio or {}).get("estimate"),
                         verdict=verdict or adaptive.verdict(r.get("ci95"), limit),
                         **({"note": "; ".join(missing)} if missing else {})))

    def counted(a, b):
        return flops[a] / flops[b] if flops.get(a) and flops.get(b) else None

    control = ratios.get(f"{AA}/{FLOOR}")
    row("A/A control: the floor against a second floor", AA, control, None, verdict="control")
    for name, spec in specs.items():
        if spec.kind not in ("petl", "full"):
            continue
        ratio, work_ratio = ratios.get(f"{name}/{spec.reference}"), counted(name, spec.reference)
        limit = step_limit if spec.kind == "petl" else None  # full fine-tuning: beside the others, no target
        row(f"step / {spec.reference} / FLOPs ratio <= {step_limit}" if limit else
            f"step / {spec.reference} / FLOPs ratio (no target)", name,
            ratio if work_ratio else None, limit, by=work_ratio or 1.0, counted=work_ratio,
            verdict=None if work_ratio or not limit else "not measured", versus=(spec.reference,))
        if spec.peer:
            peer_work = counted(name, spec.peer)
            row(f"step / {spec.peer} / FLOPs ratio <= {PEER_LIMIT}", name,
                ratios.get(f"{name}/{spec.peer}") if peer_work else None, PEER_LIMIT, by=peer_work or 1.0,
                counted=peer_work, versus=(spec.peer,))
    row(f"MAM step / full fine-tuning's < {MAM_FULL_LIMIT}", "mam", ratios.get("mam/full"), MAM_FULL_LIMIT,
        counted=counted("mam", "full"), versus=("full",))
    if inference and inference.get("ratios"):
        row(f"merged LoRA inference / bare model <= {MERGED_LIMIT}", "lora_merged",
            inference["ratios"].get("lora_merged/bare"), MERGED_LIMIT)
        row("inference A/A control: the bare model against itself", "bare_again",
            inference["ratios"].get("bare_again/bare"), None, verdict="control")
    return rows


def _cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def _sync(device: str):
    return torch.cuda.synchronize if _cuda(device) else None


def _dumps(obj, depth: int = 0) -> str:
    """JSON, indented, with each list of plain values (a method's rounds, a profile row) on one line."""
    def flat(x):
        return not isinstance(x, (dict, list)) or isinstance(x, list) and all(
            not isinstance(y, (dict, list)) for y in x)

    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(obj, dict) and obj:
        items = (f"{inner}{json.dumps(str(k))}: {_dumps(v, depth + 1)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and not all(map(flat, obj)):
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, depth + 1)}" for v in obj) + f"\n{pad}]"
    return json.dumps(obj, default=str, allow_nan=False)


def _write(record: dict, out: Path) -> None:
    from petl.files import write_atomic
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, _dumps(_clean(record)) + "\n")


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:500]}"


def _free(device: str) -> None:
    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()


def set_up(specs: dict, template, shape, args, device: str, autocast, deadline: float, result: dict) -> dict:
    """Build and warm up every method: its FLOPs and elementwise bytes (first warm-up step), peak memory, losses.
    Fills result['built'] / ['unsupported'] / ['work'] / ['memory']; returns name -> Prepared."""
    prepared = {}
    for name, spec in specs.items():
        left = deadline - time.monotonic()
        if left < 1:
            result["unsupported"][name] = "skipped: the shape's time budget was spent"
            continue
        item = None
        try:
            with time_limit(min(args.method_timeout_s, left), f"{name} build + warm-up"):
                t0 = time.perf_counter()
                item = prepare(spec, template, shape, device=device, autocast=autocast)
                if _cuda(device):
                    torch.cuda.synchronize()
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                loss, flops, traffic = count_work(item.step)
                losses = [loss.item()] + [item.step().item() for _ in range(max(args.warmup - 1, 1))]
                if not all(math.isfinite(x) for x in losses):
                    raise Unsupported(f"non-finite loss in warm-up: {losses}")
                if _cuda(device):
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
                    memory = dict(increment_bytes=peak - before, before_bytes=before, peak_bytes=peak)
                else:
                    memory = dict(increment_bytes=None)
            prepared[name] = item
            result["built"][name] = dict(warmup_s=time.perf_counter() - t0, warmup_losses=losses,
                                         trainable=sum(p.numel() for p in item.model.parameters() if p.requires_grad),
                                         flops=flops, elementwise_bytes=traffic, memory=memory)
            log(f"  {name}: ready in {time.perf_counter() - t0:.1f} s, loss {losses[-1]:.3f}, "
                f"{flops / 1e12:.2f} TFLOP, peak +{(memory['increment_bytes'] or 0) / 2**30:.2f} GiB")
        except Exception as error:  # noqa: BLE001 - PhaseTimeout, OOM, Unsupported, a peer failing: recorded
            result["unsupported"][name] = _reason(error)
            log(f"  {name}: not measured ({result['unsupported'][name][:200]})")
            if not isinstance(error, (Unsupported, PhaseTimeout)):
                log(traceback.format_exc(limit=4))
            del item
            _free(device)
    built = result["built"]
    flops = {n: b["flops"] for n, b in built.items()}
    result["work"] = dict(
        flops_per_step=flops, elementwise_bytes_per_step={n: b["elementwise_bytes"] for n, b in built.items()},
        flops_ratio_to_reference={n: flops[n] / flops[specs[n].reference] for n in built
                                  if n != FLOOR and flops.get(specs[n].reference)},
        flops_ratio_to_full={n: flops[n] / flops["full"] for n in built if "full" in flops and n != "full"})
    result["memory"] = memory_summary({n: b["memory"] for n, b in built.items()})
    return prepared


def memory_summary(memory: dict) -> dict:
    """Per method (name -> {'increment_bytes': peak over the warm-up minus allocated before, or None}) its peak
    increment and that increment over the floor's; no ratio where either is unknown (CPU) or the floor's is 0."""
    increments = {n: m.get("increment_bytes") for n, m in memory.items()}
    floor = increments.get(FLOOR)
    return dict(increment_bytes=increments,
                ratio_to_floor={n: b / floor for n, b in increments.items() if floor and b is not None},
                what="torch.cuda.max_memory_allocated over the warm-up steps minus memory_allocated before them: "
                     "activations, gradients, optimizer state (CPU: not measured)")


def time_methods(prepared: dict, specs: dict, args, device: str, budget_s: float, result: dict) -> None:
    """Adaptive interleaved rounds of every prepared method; fills result['timing'] and result['ratios']."""
    pairs = pairs_of(specs, prepared)
    raw: dict[str, list[float]] = {}
    timing = dict(pairs=pairs)
    try:
        guard = args.timing_timeout_s if args.timing_timeout_s is not None else budget_s + 60
        with time_limit(guard, "timing rounds"):
            outcome = adaptive.adaptive_rounds(
                {n: p.step for n, p in prepared.items()}, pairs, precision=args.precision,
                min_rounds=args.min_rounds, max_rounds=args.max_rounds, budget_s=budget_s, discard=args.discard,
                steps_per_sample=args.steps_per_sample, sync=_sync(device), seed=args.seed, log=log, into=raw)
        timing.update({k: v for k, v in outcome.items() if k != "raw"})
    except Exception as error:  # noqa: BLE001 - a timeout or a failing step: keep the rounds completed
        timing["error"] = _reason(error)
        log(f"  timing stopped: {timing['error']}")
        rounds = min((len(t) for t in raw.values()), default=0)
        raw = {n: t[:rounds] for n, t in raw.items()}
        timing.update(rounds=rounds, stopped="error", precision_met=False)
    raw = {n: [round(x, 9) for x in t] for n, t in raw.items()}  # to the nanosecond: the ratios follow from the file
    timing["raw_s"] = raw
    timing["median_step_s"] = {n: sorted(t)[len(t) // 2] if t else None for n, t in raw.items()}
    result["timing"] = timing
    result["ratios"] = adaptive.summarise(raw, pairs)


def merged_inference(template, spec: MethodSpec, shape, args, device: str, autocast, budget_s: float) -> dict:
    """No-grad forward passes of the bare model (twice: the A/A), LoRA with hooks and LoRA merged, interleaved
    until merged / bare is known to ±inference_precision; the largest logit difference merged vs unmerged."""
    bare, unmerged, merged = lora_inference_models(template, spec)
    batch = shape.make_batch(device=device)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if shape.family == "seq2seq":
        inputs["decoder_input_ids"] = batch["labels"]
    device_type = torch.device(device).type

    def forward(model):
        with torch.no_grad(), torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            return model(**inputs).logits

    models = dict(bare=bare, bare_again=bare, lora_unmerged=unmerged, lora_merged=merged)
    outputs = {n: forward(m) for n, m in models.items()}
    difference = (outputs["lora_merged"].float() - outputs["lora_unmerged"].float()).abs().max().item()
    del outputs
    pairs = {f"{n}/bare": (n, "bare") for n in ("bare_again", "lora_unmerged", "lora_merged")}
    raw: dict[str, list[float]] = {}
    out = dict(pairs=pairs, max_abs_logit_difference_merged_vs_unmerged=difference)
    try:
        with time_limit(budget_s + 30, "inference rounds"):
            outcome = adaptive.adaptive_rounds(
                {n: (lambda m=m: forward(m)) for n, m in models.items()}, pairs, precision=args.inference_precision,
                min_rounds=args.min_rounds, max_rounds=args.max_rounds, budget_s=budget_s, discard=args.discard,
                sync=_sync(device), seed=args.seed + 1, into=raw)
        out.update({k: v for k, v in outcome.items() if k != "raw"})
    except Exception as error:  # noqa: BLE001
        out["error"] = _reason(error)
        rounds = min((len(t) for t in raw.values()), default=0)
        raw = {n: t[:rounds] for n, t in raw.items()}
    out["raw_s"] = raw = {n: [round(x, 9) for x in t] for n, t in raw.items()}
    out["ratios"] = adaptive.summarise(raw, pairs)
    del models, unmerged, merged
    return out


def profile_methods(prepared: dict, args, device: str, deadline: float) -> dict:
    """benchmarks.profile_ops.profile_step of one warm step of each method (floor first), while time is left."""
    from benchmarks.profile_ops import profile_step
    out = {}
    for name, item in prepared.items():
        left = deadline - time.monotonic()
        if left < 1:
            out[name] = dict(skipped="time budget")
            continue
        try:
            with time_limit(min(left, args.method_timeout_s), f"{name} profile"):
                item.step()  # one plain step first: the model has been idle
                if _cuda(device):
                    torch.cuda.synchronize()
                out[name] = profile_step(item.step, steps=args.profile_steps, device=_cuda(device), sync=_sync(device))
        except Exception as error:  # noqa: BLE001
            out[name] = dict(error=_reason(error))
    return out


def bench_shape(key: str, plan: dict, args, device: str, autocast, budget_s: float, record: dict, out: Path):
    """Set-up, timing and inference of one shape (record['shapes'][key], written after each phase); returns the
    prepared methods (kept for the profiles at the end)."""
    started = time.monotonic()
    deadline = started + budget_s
    base = get_shape(plan["tiny"] if args.tiny else plan["shape"])
    shape = base if args.tiny else dataclasses.replace(
        base, batch=plan["batch"], length=plan["length"], target_length=plan.get("target_length", 0))
    if args.tiny:
        shape = dataclasses.replace(shape, batch=plan["tiny_batch"])
    specs = method_specs("tiny" if args.tiny else plan["sizes"])
    if args.no_peft:
        specs = {n: s for n, s in specs.items() if s.kind != "peft"}
    result = dict(shape=shape.name, arch=shape.arch or shape.family, family=shape.family, config=shape.config,
                  batch=shape.batch, length=shape.length, target_length=shape.target_length,
                  tokens_per_step=shape.tokens_per_step, sizes="tiny" if args.tiny else plan["sizes"],
                  step_limit=plan["step_limit"], budget_s=budget_s, methods={n: s.describe() for n, s in specs.items()},
                  built={}, unsupported={}, complete=False)
    record["shapes"][key] = result
    log(f"[{key}] {shape.name} batch {shape.batch} x {shape.length}"
        + (f" / {shape.target_length}" if shape.target_length else "") + f" on {device}, {budget_s:.0f} s")
    template = None
    prepared = {}
    try:
        torch.manual_seed(0)
        with torch.device(device):
            template = shape.build()
        prepared = set_up(specs, template, shape, args, device, autocast, deadline, result)
        _write(record, out)
        left = deadline - time.monotonic()
        if prepared:
            time_methods(prepared, specs, args, device, left * (1 - INFERENCE_SHARE), result)
            log(f"  {result['timing'].get('rounds')} rounds, stopped: {result['timing'].get('stopped')}")
            _write(record, out)
        if "lora" in prepared:
            try:
                result["inference"] = merged_inference(template, specs["lora"], shape, args, device, autocast,
                                                       max(deadline - time.monotonic(), 0.0))
            except Exception as error:  # noqa: BLE001
                result["inference"] = dict(error=_reason(error))
            _free(device)
    except Exception as error:  # noqa: BLE001 - a shape failing as a whole (its template, say): recorded
        result["error"] = _reason(error)
        log(traceback.format_exc(limit=4))
    result["targets"] = evaluate(key, specs, result.get("ratios", {}), result.get("work", {}), plan["step_limit"],
                                 result.get("inference"), result["unsupported"])
    result["used_s"] = time.monotonic() - started
    result["complete"] = "error" not in result
    record["targets"] += result["targets"]
    _write(record, out)
    del template
    return prepared


def record_path(out_dir: Path, device: dict, created: str, tiny: bool) -> Path:
    """out_dir / gpu-v2-<device>-<YYYYmmdd-HHMM>.json: the device's name in lower case without its vendor
    ('NVIDIA H200' -> 'h200'), 'tiny-cpu' for a --tiny run; `created` is the record's ISO time (UTC)."""
    name = "tiny-cpu" if tiny else device.get("name", "gpu").lower().replace("nvidia", "")
    slug = "-".join("".join(c if c.isalnum() else " " for c in name).split()) or "gpu"
    stamp = created[:16].replace("-", "").replace(":", "").replace("T", "-")
    return Path(out_dir) / f"gpu-v{VERSION}-{slug}-{stamp}.json"


def device_info(device: str) -> dict:
    info = dict(type=device, name="cpu", torch_cuda=torch.version.cuda)
    if _cuda(device):
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                    cudnn=torch.backends.cudnn.version(), flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="the record's path (default: see --out-dir)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/benchmarks"),
                        help="folder of the record gpu-v2-<device>-<UTC time>.json when --out is not given")
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: every phase in seconds")
    parser.add_argument("--shapes", default=",".join(PLAN), help=f"comma separated, in order: {', '.join(PLAN)}")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run (default 450; --tiny 60)")
    parser.add_argument("--precision", type=float, default=0.05, help="stop when every ratio is known to ±this")
    parser.add_argument("--inference-precision", type=float, default=0.01)
    parser.add_argument("--min-rounds", type=int, default=None, help="kept rounds before stopping (10; --tiny 6)")
    parser.add_argument("--max-rounds", type=int, default=None, help="(default 300; --tiny 8)")
    parser.add_argument("--discard", type=int, default=1, help="untimed first rounds")
    parser.add_argument("--steps-per-sample", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="steps per method before timing (the first counts work)")
    parser.add_argument("--method-timeout-s", type=float, default=90.0)
    parser.add_argument("--timing-timeout-s", type=float, default=None, help="guard of one shape's timing phase")
    parser.add_argument("--profile-steps", type=int, default=1, help="0: no profiles")
    parser.add_argument("--autocast", choices=("bf16", "fp16", "none"), default="bf16")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s and s not in PLAN]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; valid shapes are {', '.join(PLAN)}")
    args.budget_s = args.budget_s if args.budget_s is not None else 60.0 if args.tiny else 450.0
    args.min_rounds = args.min_rounds or (adaptive.MIN_ROUNDS if args.tiny else 10)
    args.max_rounds = args.max_rounds or (8 if args.tiny else 300)
    for name in ("budget_s", "precision", "inference_precision", "method_timeout_s"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    if args.min_rounds < adaptive.MIN_ROUNDS or args.max_rounds < args.min_rounds:
        parser.error(f"need {adaptive.MIN_ROUNDS} <= --min-rounds <= --max-rounds (an interval needs "
                     f"{adaptive.MIN_ROUNDS} rounds); got {args.min_rounds} and {args.max_rounds}")
    return args


def main(argv=None) -> dict:
    from petl.runs import git_commit
    started = time.monotonic()
    args = parse_args(argv)
    deadline = started + args.budget_s
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if not args.tiny and device != "cuda":
        raise SystemExit("no CUDA device: run with --tiny to check the logic on CPU")
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.autocast]
    if _cuda(device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    keys = [s for s in args.shapes.split(",") if s]
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info = device_info(device)
    out = args.out or record_path(args.out_dir, info, created, args.tiny)
    record = dict(kind="petl-benchmark-gpu", version=VERSION, created=created,
                  command=" ".join(["python -m benchmarks.gpu", *(argv if argv is not None else sys.argv[1:])]),
                  tiny=args.tiny, git=git_commit(), device=info, packages=package_versions(),
                  settings=dict(autocast=args.autocast, weights="float32 (master), random init", tf32=_cuda(device),
                                precision=args.precision, inference_precision=args.inference_precision,
                                min_rounds=args.min_rounds, max_rounds=args.max_rounds, discard=args.discard,
                                steps_per_sample=args.steps_per_sample, warmup=args.warmup, seed=args.seed,
                                budget_s=args.budget_s, method_timeout_s=args.method_timeout_s,
                                profile_steps=args.profile_steps, interval="95% t-interval of the mean log per-round "
                                "ratio (benchmarks.adaptive)", order="a new random order every round (seeded)",
                                optimizer="AdamW(lr=1e-5, weight_decay=0.01) over the trainable parameters",
                                step="forward + loss + backward + optimizer.step + zero_grad(set_to_none)",
                                alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), shares=dict(
                                    {k: PLAN[k]["share"] for k in keys}, inference=INFERENCE_SHARE,
                                    profile=PROFILE_SHARE if args.profile_steps else 0.0),
                                limits=dict(step={k: PLAN[k]["step_limit"] for k in keys}, peer=PEER_LIMIT,
                                            mam_over_full=MAM_FULL_LIMIT, merged_inference=MERGED_LIMIT)),
                  plan=keys, shapes={}, targets=[], profiles={}, complete=False)
    _write(record, out)
    kept = {}
    try:
        profile_reserve = args.budget_s * PROFILE_SHARE if args.profile_steps else 0.0
        for index, key in enumerate(keys):
            left = deadline - time.monotonic() - profile_reserve
            shares = [PLAN[k]["share"] for k in keys[index:]]
            budget = left * shares[0] / sum(shares)
            if budget < 5:
                record["shapes"][key] = dict(skipped="time budget")
                log(f"[{key}] skipped (time budget)")
                continue
            kept[key] = bench_shape(key, PLAN[key], args, device, autocast, budget, record, out)
        for key, prepared in kept.items():
            if args.profile_steps and prepared:
                left = deadline - time.monotonic()
                shape_deadline = time.monotonic() + left / max(len([k for k in kept if k not in record["profiles"]]), 1)
                log(f"[{key}] profiles ({shape_deadline - time.monotonic():.0f} s)")
                record["profiles"][key] = profile_methods(prepared, args, device, shape_deadline)
                _add_busy(record, key)
                _write(record, out)
            kept[key] = None
            _free(device)
    finally:
        torch.set_num_threads(threads)
    record["summary"] = summary(record)
    record["complete"] = True
    record["wall_time_s"] = time.monotonic() - started
    _write(record, out)
    print(format_targets(record), flush=True)
    print(f"record: {out} ({record['wall_time_s']:.0f} s)", flush=True)
    return record


def _add_busy(record: dict, key: str) -> None:
    """Per method, the profiled device time over the timed median step: near 1 the step keeps the GPU busy;
    well under 1, it waits on the host (Python, kernel launches)."""
    medians = record["shapes"].get(key, {}).get("timing", {}).get("median_step_s", {})
    for name, prof in record["profiles"][key].items():
        if prof.get("activity") == "cuda" and medians.get(name):
            prof["device_busy"] = prof["total_ms"] / 1000 / medians[name]


def summary(record: dict) -> dict:
    """How many targets pass, fail or are undecided; per shape the rounds, why they stopped, whether every ratio
    reached the precision, and (precision_missed) the shapes whose budget or rounds ran out before it did."""
    verdicts = [t["verdict"] for t in record["targets"]]
    timing = {k: s.get("timing", {}) for k, s in record["shapes"].items()}
    return dict(verdicts={v: verdicts.count(v) for v in sorted(set(verdicts))},
                precision_met={k: t.get("precision_met") for k, t in timing.items()},
                rounds={k: t.get("rounds") for k, t in timing.items()},
                stopped={k: t.get("stopped", record["shapes"][k].get("skipped")) for k, t in timing.items()},
                precision_missed=[k for k, t in timing.items() if not t.get("precision_met")],
                memory_ratio_to_floor={k: s.get("memory", {}).get("ratio_to_floor")
                                       for k, s in record["shapes"].items()})


def format_targets(record: dict) -> str:
    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if isinstance(x, (int, float)) else "-"

    lines = [f"{'shape':<16}{'method':<15}{'value':>7}{'95% interval':>15} {'limit':>6}  verdict    target"]
    for t in record["targets"]:
        ci = t.get("ci95") or [None, None]
        lines.append(f"{t['shape']:<16}{t['method']:<15}{f(t['value']):>7}{f(ci[0]) + '-' + f(ci[1]):>15} "
                     f"{f(t['limit'], '{:.2f}'):>6}  {t['verdict']:<10} {t['target']}")
    for key, shape in record["shapes"].items():
        timing = shape.get("timing", {})
        lines.append(f"[{key}] rounds {timing.get('rounds')}, stopped {timing.get('stopped')}, precision met "
                     f"{timing.get('precision_met')}; not measured: {', '.join(shape.get('unsupported', {})) or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
