"""Where a method's step time goes, op by op, beside the floor's: torch.profiler self time, averaged over steps.

    python -m benchmarks.profile_ops --shape minilm floor prefix_nomlp scaled_pa mam_nomlp
    python -m benchmarks.profile_ops --shape smollm2 floor prefix_nomlp peft_prefix --steps 2 --out prof.txt

The timed ratios of benchmarks.run say how much slower a method is; this says which operations make the
difference (say, the attention's dropout over a prefix-lengthened key axis). Profiled steps are slower than
plain ones and as noisy: read differences of a few percent of the total as noise.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.measure import environment_threads
from benchmarks.methods import glue_methods, prepare
from benchmarks.shapes import get_shape


def profile_methods(shape_name: str, names: list[str], steps: int = 4, warmup: int = 2) -> dict:
    """name -> {op: (self CPU ms per step, calls per step)} for one training step of each method."""
    shape = get_shape(shape_name)
    specs = glue_methods()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {', '.join(specs)}")
    template = shape.build()
    prepared = {n: prepare(specs[n], template, shape) for n in names}
    for item in prepared.values():
        for _ in range(warmup):
            item.step()
    result = {}
    for name, item in prepared.items():
        ms, calls = collections.Counter(), collections.Counter()
        for _ in range(steps):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                item.step()
            for event in prof.key_averages():
                ms[event.key] += event.self_cpu_time_total / 1000 / steps
                calls[event.key] += event.count / steps
        result[name] = {op: (ms[op], calls[op]) for op in ms}
    return result


#: Where a step's device time goes, by op name (the op that launched the kernel); ops under the optimizer's step
#: count as 'optimizer' whatever they are. Checked in this order; anything else is 'elementwise and other'.
CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "fmha")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_scaled_mm",
                "aten::matmul", "aten::linear")),
    ("cast and copy", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::cat",
                       "aten::stack", "aten::repeat_interleave", "aten::index")),
)
OPTIMIZER_MARK = "Optimizer.step"


def _self_time_us(event, device: bool) -> float:
    if not device:
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def category_of(name: str, under_optimizer: bool = False) -> str:
    if under_optimizer or name.startswith(OPTIMIZER_MARK) or "_foreach_" in name or "fused_adam" in name:
        return "optimizer"
    for category, marks in CATEGORIES:
        if any(name == m or name.startswith(m + ".") or (not m.startswith("aten::") and m in name) for m in marks):
            return category
    return "elementwise and other"


def profile_step(step, steps: int = 1, device: bool = False, top: int = 15, sync=None) -> dict:
    """torch.profiler over `steps` calls of step(): per step, the time of each aten op (self device time on a GPU,
    the kernels it launched; self CPU time otherwise), by category, the `top` costliest ops and (GPU) kernels;
    total_ms (GPU: every kernel; CPU: every aten op), attributed_ms (what the aten ops account for) and the wall
    time of the profiled steps (the profiler's overhead included). Milliseconds per step."""
    import time

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if sync is not None:
            sync()
        wall = time.perf_counter() - start
    ops, calls = collections.Counter(), collections.Counter()
    categories = collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        spent = _self_time_us(event, device)
        parent, under = event.cpu_parent, False
        while parent is not None and not under:
            under, parent = parent.name.startswith(OPTIMIZER_MARK), parent.cpu_parent
        if event.name.startswith("aten::"):
            ops[event.name] += spent
            calls[event.name] += 1
            categories[category_of(event.name, under)] += spent
    kernels, kernel_calls = collections.Counter(), collections.Counter()
    if device:
        for event in prof.key_averages():
            if event.device_type != torch.autograd.DeviceType.CPU:
                kernels[event.key[:120]] += _self_time_us(event, True)
                kernel_calls[event.key[:120]] += event.count
    per_step = 1000.0 * steps  # microseconds over steps -> ms per step
    total = sum(kernels.values()) if device else sum(ops.values())
    return dict(steps=steps, activity="cuda" if device else "cpu",
                time="self device time (kernels launched by the op)" if device else "self CPU time of aten ops",
                total_ms=total / per_step, attributed_ms=sum(ops.values()) / per_step, wall_ms=1000 * wall / steps,
                categories={c: round(t / per_step, 4) for c, t in categories.most_common()},
                top_ops=[[op, round(t / per_step, 4), calls[op] // steps] for op, t in ops.most_common(top)],
                top_kernels=[[k, round(t / per_step, 4), kernel_calls[k] // steps] for k, t in kernels.most_common(10)])


def format_table(result: dict, rows: int = 25, min_difference_ms: float = 3.0) -> str:
    """The ten costliest ops and those that differ by min_difference_ms or more; ms per step (calls per step)."""
    names = list(result)
    ops = set().union(*(r.keys() for r in result.values()))

    def ms(name, op):
        return result[name].get(op, (0.0, 0))[0]

    largest = {op: max(ms(n, op) for n in names) for op in ops}
    spread = {op: largest[op] - min(ms(n, op) for n in names) for op in ops}
    top = sorted(ops, key=lambda op: -largest[op])
    chosen = set(top[:10]) | {op for op in ops if spread[op] >= min_difference_ms}
    chosen = sorted(chosen, key=lambda op: -largest[op])[:rows]
    lines = [f"{'op (self CPU ms per step, calls)':<56}" + "".join(f"{n[:16]:>18}" for n in names),
             f"{'total':<56}" + "".join(f"{sum(v[0] for v in result[n].values()):>18.1f}" for n in names)]
    for op in chosen:
        lines.append(f"{op[:56]:<56}" + "".join(
            f"{ms(n, op):>11.1f} ({result[n].get(op, (0, 0))[1]:>3.0f})" for n in names))
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="+", help="method names of benchmarks.run (floor included)")
    parser.add_argument("--shape", default="minilm")
    parser.add_argument("--steps", type=int, default=4, help="profiled steps per method (averaged)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    get_shape(args.shape)  # a clear error for an unknown shape
    environment_threads(args.threads)
    table = format_table(profile_methods(args.shape, args.methods, args.steps))
    header = (f"python -m benchmarks.profile_ops --shape {args.shape} {' '.join(args.methods)} --steps {args.steps}"
              f" --threads {args.threads}  (torch {torch.__version__})\n")
    print(header + table)
    if args.out:
        from petl.files import write_atomic
        write_atomic(args.out, header + table + "\n")
    return table


if __name__ == "__main__":
    main()
