"""GPU benchmark at the paper's shape: BART-large (random weights), bf16 autocast, XSum-like batches.

    python -m benchmarks.gpu --out $OUT/gpu-bart-large.json          # on a CUDA machine (see gpu.sh)
    python -m benchmarks.gpu --tiny --out /tmp/gpu-tiny.json          # the same logic on CPU, tiny BART, seconds

Methods at the paper's sizes (the presets): floor, full, prefix (l=200, MLP 800), LoRA (r=200, s=4),
parallel FFN adapter (r=200), MAM (prefix l=30 + scaled parallel FFN adapter r=512, s=4), and PEFT's LoRA with
the same rank, alpha and targets. In one process all models share the frozen template weights; per method
the warm-up steps give the peak memory (torch.cuda.max_memory_allocated after reset, minus what was allocated
before the first step: activations, gradients, optimizer state), then the methods are timed round-robin and
ratios are medians of per-round paired ratios. Every phase has a timeout (SIGALRM) and the whole run a budget;
the record is rewritten (atomically) after every phase, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.measure import log, median_time, paired_ratio, time_rounds
from benchmarks.methods import FLOOR, MethodSpec, Unsupported, paper_methods, prepare
from benchmarks.run import _clean, package_versions
from benchmarks.shapes import Shape, get_shape


class PhaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float, what: str):
    """Raise PhaseTimeout in the main thread if the block runs longer than `seconds`."""
    def handler(signum, frame):
        raise PhaseTimeout(f"{what} ran past {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _peft_lora_spec(specs: dict) -> MethodSpec:
    lora = specs["lora"].petl_config
    return MethodSpec("peft_lora", "peft", peft=dict(type="LoraConfig", r=lora["attn_bn"],
                                                      lora_alpha=lora["lora_alpha"], lora_dropout=0.0))


def _write(record: dict, out: Path) -> None:
    from petl.files import write_atomic
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(_clean(record), indent=2, default=str, allow_nan=False))


def _cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def bench_batch(shape: Shape, specs: dict, args, device: str, autocast, deadline: float) -> dict:
    """One batch setting: build + warm up (peak memory) each method, then interleaved timing rounds."""
    result: dict = dict(batch=shape.batch, source_length=shape.length, target_length=shape.target_length,
                        tokens_per_step=shape.tokens_per_step, methods={}, unsupported={})
    torch.manual_seed(0)
    with torch.device(device):
        template = shape.build()
    prepared = {}
    for name, spec in specs.items():
        left = deadline - time.monotonic()
        if left < 5:
            result["unsupported"][name] = "skipped: out of time budget"
            continue
        try:
            with time_limit(min(args.method_timeout_s, left), f"{name} build + warm-up"):
                t0 = time.perf_counter()
                item = prepare(spec, template, shape, device=device, autocast=autocast)
                if _cuda(device):
                    torch.cuda.synchronize()
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                losses = [item.step().item() for _ in range(args.warmup)]
                if _cuda(device):
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
                    memory = dict(increment_bytes=peak - before, before_bytes=before, peak_bytes=peak)
                else:
                    memory = dict(increment_bytes=None)
            prepared[name] = item
            result["methods"][name] = dict(warmup_s=time.perf_counter() - t0, warmup_losses=losses,
                                           trainable=sum(p.numel() for p in item.model.parameters()
                                                         if p.requires_grad), memory=memory)
            log(f"  {name}: warm-up {time.perf_counter() - t0:.1f} s, loss {losses[-1]:.3f}, "
                f"peak +{(memory['increment_bytes'] or 0) / 2**30:.2f} GiB")
        except Exception as error:  # noqa: BLE001 - PhaseTimeout, OOM, Unsupported: recorded, the rest go on
            reason = f"{type(error).__name__}: {str(error)[:500]}"
            result["unsupported"][name] = reason
            log(f"  {name}: not measured ({reason[:200]})")
            if not isinstance(error, (Unsupported, PhaseTimeout)):
                log(traceback.format_exc(limit=4))
            item = None
            gc.collect()
            if _cuda(device):
                torch.cuda.empty_cache()
    left = deadline - time.monotonic()
    raw = {}
    if prepared and left > 5:
        try:
            with time_limit(left, "timing rounds"):
                raw = time_rounds({n: p.step for n, p in prepared.items()}, args.rounds, min_rounds=args.rounds,
                                  device=device, label=f"batch {shape.batch}")
        except PhaseTimeout as error:
            result["timing_error"] = str(error)
    rounds = min((len(t) for t in raw.values()), default=0)
    raw = {n: t[:rounds] for n, t in raw.items()}
    result["timing"] = dict(
        rounds=rounds, raw=raw, median_step_s={n: median_time(t) for n, t in raw.items()},
        tokens_per_s={n: shape.tokens_per_step / median_time(t) for n, t in raw.items() if t},
        ratio_to_floor={n: paired_ratio(t, raw[FLOOR]) for n, t in raw.items() if n != FLOOR and FLOOR in raw},
        ratio_to_full={n: paired_ratio(t, raw["full"]) for n, t in raw.items() if n != "full" and "full" in raw},
        lora_vs_peft_lora=paired_ratio(raw["lora"], raw["peft_lora"]) if {"lora", "peft_lora"} <= set(raw) else None)
    floor_memory = result["methods"].get(FLOOR, {}).get("memory", {}).get("increment_bytes")
    if floor_memory:
        result["memory_ratio_to_floor"] = {n: m["memory"]["increment_bytes"] / floor_memory
                                           for n, m in result["methods"].items() if m["memory"]["increment_bytes"]}
    del prepared, template
    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny BART on CPU: checks the logic in seconds")
    parser.add_argument("--batches", default="16,64",
                        help="batch sizes, comma separated, run in order while the budget lasts (paper: 64)")
    parser.add_argument("--source-length", type=int, default=None)
    parser.add_argument("--target-length", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method (>= 2: peak memory)")
    parser.add_argument("--method-timeout-s", type=float, default=90.0)
    parser.add_argument("--budget-s", type=float, default=300.0, help="the whole run, imports excluded")
    parser.add_argument("--autocast", choices=("bf16", "fp16", "none"), default="bf16")
    parser.add_argument("--no-peft", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if not args.tiny and device != "cuda":
        raise SystemExit("no CUDA device: run with --tiny to check the logic on CPU")
    if args.tiny:
        torch.set_num_threads(1)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.autocast]
    base = get_shape("tiny-bart" if args.tiny else "bart-large")
    specs = paper_methods()
    if not args.no_peft:
        specs["peft_lora"] = _peft_lora_spec(specs)
    if args.tiny:  # tiny sizes (the logic is the same)
        from benchmarks.methods import _petl
        specs.update(prefix=_petl("prefix", "prefix", attn_bn=4, mid_dim=8), lora=_petl("lora", "lora", attn_bn=4),
                     pa_ffn=_petl("pa_ffn", "pa_ffn", ffn_bn=4),
                     mam=_petl("mam", "mam", attn_bn=4, ffn_bn=4, mid_dim=8))
        if not args.no_peft:
            specs["peft_lora"] = _peft_lora_spec(specs)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    record = dict(kind="petl-benchmark-gpu", version=1,
                  created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  command=" ".join(["python -m benchmarks.gpu", *(argv if argv is not None else sys.argv[1:])]),
                  device=dict(type=device, name=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                              torch_cuda=torch.version.cuda),
                  packages=package_versions(), shape=base.name, model_config=base.config,
                  settings=dict(autocast=args.autocast, weights="float32 (master), random init", rounds=args.rounds,
                                warmup=args.warmup, budget_s=args.budget_s, method_timeout_s=args.method_timeout_s,
                                optimizer="AdamW(lr=1e-5, weight_decay=0.01)", tf32=device == "cuda"),
                  methods={n: s.describe() for n, s in specs.items()}, batches={}, complete=False)
    _write(record, args.out)
    for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
        if time.monotonic() > deadline - 30:
            log(f"batch {batch}: skipped (time budget)")
            record["batches"][str(batch)] = dict(skipped="time budget")
            continue
        shape = Shape(base.name, base.family, base.config, batch=batch if not args.tiny else base.batch * batch // 16,
                      length=args.source_length or base.length, target_length=args.target_length or base.target_length)
        log(f"batch {shape.batch} x {shape.length} source / {shape.target_length} target on {device}")
        record["batches"][str(batch)] = bench_batch(shape, specs, args, device, autocast, deadline)
        _write(record, args.out)
    record["complete"] = True
    record["wall_time_s"] = time.monotonic() - started
    _write(record, args.out)
    for batch, result in record["batches"].items():
        timing = result.get("timing", {})
        print(f"batch {batch}: " + ", ".join(
            f"{n} {s:.3f}s ({timing['ratio_to_floor'].get(n, {}).get('median', 1.0):.2f}x floor, "
            f"mem x{result.get('memory_ratio_to_floor', {}).get(n, float('nan')):.2f})"
            for n, s in timing.get("median_step_s", {}).items()), flush=True)
    print(f"record: {args.out} ({record['wall_time_s']:.0f} s)", flush=True)
    return record


if __name__ == "__main__":
    main()
