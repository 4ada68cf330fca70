"""Peak training memory of each method on CPU, measured in a fresh process (run by benchmarks.run).

    MALLOC_MMAP_THRESHOLD_=65536 python -m benchmarks.memory --shapes minilm --methods floor lora --out m.json

The low mmap threshold makes glibc return freed tensors to the kernel at once, so that the resident set
follows the live tensors; `floor` is measured again at the end ('floor_again') to show that the order of
methods does not leak into the numbers.

    python -m benchmarks.memory --live --shapes smollm2 --methods floor lora peft_lora --out live.txt

`--live` counts instead the most bytes of tensors alive at once in a training step (the allocator's events,
after two warm-up steps): exact, so it settles differences of a few MB that the resident set cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MMAP_THRESHOLD = "65536"
ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--live", action="store_true", help="live-tensor peak of one step, as a table")
    args = parser.parse_args(argv)

    from benchmarks.measure import environment_threads
    from petl.files import write_atomic

    environment_threads(args.threads)
    if args.live:
        text = live_table(args.shapes, args.methods)
        print(text)
        write_atomic(args.out, text + "\n")
        return
    result = measure(args.shapes, args.methods, args.steps)
    write_atomic(args.out, json.dumps(result, indent=2, sort_keys=True))


def live_table(shape_names: list[str], method_names: list[str]) -> str:
    """Per shape and method: the live-tensor peak of one training step (MiB), after two warm-up steps."""
    import torch

    from benchmarks.measure import live_tensor_peak
    from benchmarks.methods import glue_methods, prepare
    from benchmarks.shapes import get_shape

    specs = glue_methods()
    unknown = [m for m in method_names if m not in specs]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {', '.join(specs)}")
    lines = [f"python -m benchmarks.memory --live --shapes {' '.join(shape_names)} --methods "
             f"{' '.join(method_names)}  (torch {torch.__version__}; MiB of tensors alive at once in one step)"]
    for name in shape_names:
        shape = get_shape(name)
        template = shape.build()
        for method in method_names:
            item = prepare(specs[method], template, shape)
            item.step(), item.step()  # the optimizer's state exists before the counted step
            lines.append(f"{name:<12}{method:<16}{live_tensor_peak(item.step) / 2**20:>10.2f}")
            del item
    return "\n".join(lines)


def measure(shape_names: list[str], method_names: list[str], steps: int) -> dict:
    """Peak memory of each method on each shape, in this process (see benchmarks.measure.cpu_memory)."""
    from benchmarks.measure import cpu_memory
    from benchmarks.methods import glue_methods
    from benchmarks.shapes import get_shape

    specs = glue_methods()
    unknown = [m for m in method_names if m not in specs]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods are {', '.join(specs)}")
    chosen = {m: specs[m] for m in method_names if m != "floor_again"}
    if "floor" in chosen:  # always last: the order check
        chosen["floor_again"] = specs["floor"]
    result = dict(mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"), steps=steps, shapes={})
    for name in shape_names:
        shape = get_shape(name)
        template = shape.build()
        result["shapes"][name] = cpu_memory(chosen, template, shape, steps)
        del template
    return result


def run_subprocess(shapes: list[str], methods: list[str], steps: int, threads: int, out: Path,
                   timeout_s: float) -> dict:
    """Run this module in a fresh interpreter with the low mmap threshold; return its result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, PYTHONPATH=str(ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "benchmarks.memory", "--shapes", *shapes, "--methods", *methods,
               "--steps", str(steps), "--threads", str(threads), "--out", str(out)]
    completed = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout_s, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"memory subprocess for {shapes} failed (exit {completed.returncode}): "
                           f"{completed.stderr[-2000:]}")
    result = json.loads(Path(out).read_text())
    Path(out).unlink()
    return result


if __name__ == "__main__":
    main()
