"""Timing in interleaved rounds, paired ratios, inference latency and peak memory (CPU: /proc, GPU: CUDA stats)."""

from __future__ import annotations

import gc
import math
import os
import random
import statistics
import sys
import time
import traceback

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.methods import MethodSpec, Prepared, Unsupported, prepare, share_frozen
from petl.report.benchmarks import MIN_ROUNDS_FOR_INTERVAL  # fewer rounds give no interval (the record format)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def prepare_all(specs: dict[str, MethodSpec], template, shape, device="cpu", autocast=None, warmup: int = 1):
    """Build every method and run its warm-up steps. Returns (prepared, unsupported: name -> reason)."""
    prepared: dict[str, Prepared] = {}
    unsupported: dict[str, str] = {}
    for name, spec in specs.items():
        try:
            item = prepare(spec, template, shape, device=device, autocast=autocast)
            for index in range(max(warmup, 1)):
                if index == 0:  # the first step also counts the work: deterministic, unlike its time
                    loss, item.flops, item.elementwise_bytes = count_work(item.step)
                else:
                    loss = item.step()
                if not torch.isfinite(loss):
                    raise Unsupported(f"non-finite loss {loss.item()} in warm-up")
            _sync(device)
            prepared[name] = item
        except Unsupported as error:
            unsupported[name] = str(error)
        except Exception as error:  # noqa: BLE001 - a method failing to train is recorded, the rest go on
            unsupported[name] = f"failed in warm-up: {type(error).__name__}: {error}"
            log(traceback.format_exc(limit=3))
        if name in unsupported:
            log(f"  {shape.name}/{name}: not measured ({unsupported[name][:160]})")
    return prepared, unsupported


def count_work(run_once) -> tuple:
    """(result of run_once(), FLOPs, elementwise bytes): the work of one call, exact and repeatable.

    FLOPs: matmuls and attention, forward and backward (torch's FlopCounterMode, plus formulas for the CPU
    flash-attention kernels SDPA runs here; torch counts only the GPU ones). Elementwise bytes: what every
    other op reads and writes (norms, activations, adds, dropout, copies, the optimizer's updates), the
    memory-bound rest of a step, which FLOPs do not see (ElementwiseTraffic).
    """
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def attention(query, key, value) -> int:  # Q Kᵀ and P V per query head (grouped-query keys included)
        batch, heads, q_len, dim = query
        return 2 * batch * heads * q_len * key[-2] * (dim + value[-1])

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return attention(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return attention(query, key, value) * 5 // 2  # recomputed Q Kᵀ, then dV, dP, dQ, dK: 5 matmuls for 2

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
    traffic = ElementwiseTraffic()
    with counter, traffic:
        result = run_once()
    return result, counter.get_total_flops(), traffic.bytes


class ElementwiseTraffic(TorchDispatchMode):
    """Bytes read and written by the ops that are neither matmuls nor attention nor views.

    Each op is charged the bytes of its tensor inputs and outputs (a broadcast input at most its storage), so
    one pass over a tensor costs its size once per read or write. It is a count, not a cache model: on a CPU
    with little memory bandwidth per core these passes are what a step spends beyond its matmuls.
    """

    COMPUTE = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "_scaled_dot_product_flash_attention_for_cpu",
               "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_efficient_attention",
               "_scaled_dot_product_efficient_attention_backward"}
    NO_DATA = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
               "set_", "resize_", "_unsafe_view", "_reshape_alias", "alias"}  # allocate or relabel, move no data
    WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_", "bernoulli_", "random_", "exponential_"}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not func.is_view and name not in self.COMPUTE and name not in self.NO_DATA:
            read = args[1:] if name in self.WRITE_ONLY else args  # the first argument is only written
            tensors = [t for t in pytree.tree_leaves((read, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.bytes += sum(min(t.numel() * t.element_size(), t.untyped_storage().nbytes()) for t in tensors)
        return out


def time_rounds(run_once: dict, rounds: int, min_rounds: int = 2, budget_s: float | None = None,
                device="cpu", label: str = "", seed: int = 0) -> dict[str, list[dict]]:
    """Interleaved timing: every callable once per round, in a new random order each round (seeded).

    A random order, not a rotation: a rotation keeps each method behind the same predecessor in every round,
    so whatever one step leaves behind (freed pages to fault in again, a cold cache) always lands on the same
    successor. Returns name -> one {'wall_s', 'cpu_s'} per completed round. Stops early (after min_rounds)
    when the rounds so far exceed budget_s.
    """
    names = list(run_once)
    times: dict[str, list[dict]] = {n: [] for n in names}
    order = random.Random(seed)
    start = time.perf_counter()
    for r in range(rounds):
        for name in order.sample(names, len(names)):
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run_once[name]()
            _sync(device)
            times[name].append(dict(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu))
        elapsed = time.perf_counter() - start
        log(f"  {label} round {r + 1}/{rounds} done ({elapsed:.0f} s)")
        if budget_s is not None and r + 1 >= min_rounds and elapsed * (r + 2) / (r + 1) > budget_s:
            log(f"  {label}: stopping after {r + 1} rounds (time budget {budget_s:.0f} s)")
            break
    return times


def paired_ratio(numerator: list[dict], denominator: list[dict], key: str = "wall_s") -> dict:
    """Median (and min / max) over rounds of the per-round ratio numerator / denominator, with a 95% interval.

    ci95 is the percentile bootstrap interval of that median (rounds resampled with replacement, a fixed seed):
    the resolution of the run. A ratio whose interval holds the limit is not decided by the run.
    """
    ratios = [a[key] / b[key] for a, b in zip(numerator, denominator) if b[key] > 0]
    nan = float("nan")
    if not ratios:
        return dict(median=nan, min=nan, max=nan, rounds=0, ci95=[nan, nan])
    interval = bootstrap_median_interval(ratios) if len(ratios) >= MIN_ROUNDS_FOR_INTERVAL else [nan, nan]
    return dict(median=statistics.median(ratios), min=min(ratios), max=max(ratios), rounds=len(ratios),
                ci95=interval)




def bootstrap_median_interval(values: list[float], resamples: int = 4000, seed: int = 0) -> list[float]:
    """[2.5th, 97.5th] percentile of the median of `values` resampled with replacement."""
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    return [medians[int(0.025 * (resamples - 1))], medians[int(math.ceil(0.975 * (resamples - 1)))]]


def median_time(times: list[dict], key: str = "wall_s") -> float:
    return statistics.median(t[key] for t in times) if times else float("nan")


# ------------------------------------------------------------------------------------------------
# Inference: LoRA merged versus unmerged versus the bare model
# ------------------------------------------------------------------------------------------------

def lora_inference_models(template, spec: MethodSpec):
    """(bare, LoRA unmerged, LoRA merged) in eval mode; the LoRA weights are random, so merging changes W."""
    import copy

    import petl
    config = petl.PETLConfig.from_dict(spec.petl_config)
    unmerged = share_frozen(template)
    petl.apply(unmerged, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unmerged.petl.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    merged = copy.deepcopy(template)  # its own weights: merging must not touch the shared backbone
    petl.apply(merged, config)
    merged.petl.load_state_dict(unmerged.petl.state_dict())  # the task head is the template's in all three
    petl.merge(merged)
    return template.eval(), unmerged.eval(), merged.eval()


def inference_rounds(models: dict, batch: dict, family: str, rounds: int, warmup: int = 1, device="cpu",
                     autocast=None, label="") -> tuple[dict, float]:
    """Interleaved no-grad forward passes. Returns (times per model, max |merged - unmerged| logits)."""
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if family == "seq2seq":
        inputs["decoder_input_ids"] = batch["labels"]
    device_type = torch.device(device).type

    def forward(model):
        with torch.no_grad(), torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            return model(**inputs).logits

    outputs = {name: forward(model) for name, model in models.items() for _ in range(warmup)}
    names = list(models)
    difference = float("nan")
    if "lora_merged" in outputs and "lora_unmerged" in outputs:
        difference = (outputs["lora_merged"].float() - outputs["lora_unmerged"].float()).abs().max().item()
    del outputs
    times = time_rounds({n: (lambda m=models[n]: forward(m)) for n in names}, rounds, min_rounds=rounds,
                        device=device, label=label)
    return times, difference


# ------------------------------------------------------------------------------------------------
# Peak memory on CPU
# ------------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def live_tensor_peak(run_once) -> int:
    """The most bytes of tensors alive at once during run_once(), above what was alive before it.

    Counted from the allocator's own events (torch.profiler with profile_memory): exact and the same in every
    run, unlike the resident set, which also holds what glibc has not handed back. Run it after the optimizer
    has made its state, so that the peak is the step's activations and gradients.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_once()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def unique_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def cpu_memory(specs: dict[str, MethodSpec], template, shape, steps: int) -> dict:
    """Peak resident memory of each method's training steps, one method after another in this process.

    For each method: build it, collect garbage, read the resident set (VmRSS) as the baseline, reset the
    high-water mark, run `steps` steps, read the high-water mark (VmHWM). `increment` = peak - baseline is the
    memory training needs beyond the loaded model (activations, gradients, optimizer state). The process must
    be started with MALLOC_MMAP_THRESHOLD_ set low, so that freed tensors go back to the kernel and the
    resident set follows the live tensors (otherwise glibc keeps freed blocks and the order of methods leaks
    into the numbers). `with_weights` adds the bytes of the model's own parameters and buffers.
    """
    out = {}
    first = next(iter(specs.values()))
    warm = prepare(first, template, shape)  # one untimed step first: lazy initialisation is nobody's memory
    warm.step()
    del warm
    gc.collect()
    for name, spec in specs.items():
        try:
            item = prepare(spec, template, shape)
        except Unsupported as error:
            out[name] = dict(unsupported=str(error))
            continue
        gc.collect()
        if not reset_peak_rss():
            raise RuntimeError("cannot reset the peak resident set (/proc/self/clear_refs); Linux is required")
        baseline = _status_kb("VmRSS")
        try:
            for _ in range(steps):
                item.step()
        except Exception as error:  # noqa: BLE001
            out[name] = dict(unsupported=f"failed: {type(error).__name__}: {error}")
        else:
            peak = _status_kb("VmHWM")
            increment = (peak - baseline) * 1024
            trainable = sum(p.numel() * p.element_size() for p in item.model.parameters() if p.requires_grad)
            out[name] = dict(baseline_rss_bytes=baseline * 1024, peak_rss_bytes=peak * 1024,
                             increment_bytes=increment, weights_bytes=unique_bytes(item.model),
                             with_weights_bytes=increment + unique_bytes(item.model), trainable_bytes=trainable)
        del item
        gc.collect()
    return out


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def environment_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
