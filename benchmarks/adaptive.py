"""Interleaved timing rounds that stop when every ratio is known to ±precision, and the interval behind that.

A ratio is estimated per round (paired: numerator and denominator timed in the same round, so a slow round
slows both) and summarised on the log scale: with d_i = log(a_i / b_i) over n rounds, the estimate is
exp(mean d) (the geometric mean of the per-round ratios) and its 95% interval exp(mean d ± t(0.975, n-1) ·
sd(d) / √n), a t-interval of the mean log ratio. Its relative half-width, max(high / estimate, estimate / low)
- 1 = exp(t · sd / √n) - 1, is what the stopping rule compares with the precision (0.05: ±5%). The rounds
themselves are those of benchmarks.measure.time_rounds: every callable once per round, in a new random order
each round (seeded).

A target is judged on the interval: 'pass' when all of it is at or under the limit, 'fail' when all of it is
over, 'undecided' when it holds the limit, and 'not measured' without one.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from statistics import NormalDist

#: Fewer rounds give no interval (as in the CPU records: petl.report.benchmarks.MIN_ROUNDS_FOR_INTERVAL).
MIN_ROUNDS = 6


def t_quantile_975(df: int) -> float:
    """The 97.5th percentile of Student's t with `df` degrees of freedom (Cornish-Fisher expansion around the
    normal quantile, four terms: within 0.001 of the exact value from df = 5 on, exact values below)."""
    exact = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}
    if df < 1:
        return math.nan
    if df in exact:
        return exact[df]
    z = NormalDist().inv_cdf(0.975)
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * df ** 4))


def ratio_interval(numerator: list[float], denominator: list[float]) -> dict:
    """The paired ratio numerator / denominator over rounds: estimate (geometric mean of per-round ratios), its
    95% t-interval on the log scale, relative half-width, median and range of the per-round ratios, rounds.
    No interval (None) under MIN_ROUNDS rounds."""
    ratios = [a / b for a, b in zip(numerator, denominator) if a > 0 and b > 0]
    n = len(ratios)
    out = dict(rounds=n, estimate=None, ci95=None, half_width=None, median=None, min=None, max=None)
    if not n:
        return out
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    out.update(estimate=math.exp(mean), median=statistics.median(ratios), min=min(ratios), max=max(ratios))
    if n >= MIN_ROUNDS:
        half = t_quantile_975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
        out.update(ci95=[math.exp(mean - half), math.exp(mean + half)], half_width=math.expm1(half))
    return out


def scaled(ratio: dict, by: float) -> dict:
    """A ratio divided by a constant (a counted work ratio): estimate, interval and range scale, the relative
    half-width does not."""
    out = dict(ratio)
    for key in ("estimate", "median", "min", "max"):
        if out.get(key) is not None:
            out[key] = out[key] / by
    if out.get("ci95"):
        out["ci95"] = [x / by for x in out["ci95"]]
    return out


def verdict(ci95, limit: float | None) -> str:
    """'pass' (the whole interval at or under the limit), 'fail' (the whole interval over it), 'undecided' (it
    holds the limit), 'not measured' (no interval); 'no target' for a row without a limit."""
    if limit is None:
        return "no target"
    if not ci95 or any(x is None or not math.isfinite(x) for x in ci95):
        return "not measured"
    low, high = ci95
    return "pass" if high <= limit else "fail" if low > limit else "undecided"


def precise(raw: dict[str, list[float]], pairs: dict[str, tuple[str, str]], precision: float) -> bool:
    """Whether every pair's ratio has an interval of relative half-width <= precision."""
    for numerator, denominator in pairs.values():
        width = ratio_interval(raw[numerator], raw[denominator])["half_width"]
        if width is None or width > precision:
            return False
    return True


def adaptive_rounds(run_once: dict, pairs: dict[str, tuple[str, str]], *, precision: float = 0.05,
                    min_rounds: int = MIN_ROUNDS, max_rounds: int = 200, budget_s: float = 60.0,
                    discard: int = 1, steps_per_sample: int = 1, sync=None, seed: int = 0, clock=time.perf_counter,
                    log=None, into: dict | None = None) -> dict:
    """Rounds of every callable in `run_once` (name -> callable), each once per round in a new random order
    (seeded), until every ratio in `pairs` (key -> (numerator, denominator)) is known to ±precision (after
    min_rounds kept rounds), or max_rounds are kept, or the next round would not fit in budget_s.

    Each sample is the time of `steps_per_sample` consecutive calls divided by their number; `sync` (say,
    torch.cuda.synchronize) runs before and after. The first `discard` rounds are timed but not kept (the
    allocator and autotuners settle there). Returns raw (name -> kept seconds per round), rounds, discarded,
    stopped ('precise' | 'max_rounds' | 'budget'), precision_met and elapsed_s. `into`: a dict to keep the
    samples in as they come (what a caller still has when a timeout interrupts the rounds).
    """
    names = list(run_once)
    raw: dict[str, list[float]] = into if into is not None else {}
    raw.update({n: [] for n in names})
    order = random.Random(seed)
    start = clock()
    done = 0
    stopped = "max_rounds"
    while True:
        kept = done - discard
        if kept >= min_rounds and precise(raw, pairs, precision):
            stopped = "precise"
            break
        if kept >= max_rounds:
            stopped = "max_rounds"
            break
        elapsed = clock() - start
        if done and elapsed + elapsed / done > budget_s:  # the next round (as long as the mean so far) won't fit
            stopped = "budget"
            break
        if not done and budget_s <= 0:
            stopped = "budget"
            break
        for name in order.sample(names, len(names)):
            if sync is not None:
                sync()
            t0 = clock()
            for _ in range(steps_per_sample):
                run_once[name]()
            if sync is not None:
                sync()
            if done >= discard:
                raw[name].append((clock() - t0) / steps_per_sample)
        done += 1
        if log is not None and (done <= 2 or done % 10 == 0):
            log(f"    round {done} ({clock() - start:.1f} s)")
    rounds = max(done - discard, 0)
    return dict(raw=raw, rounds=rounds, discarded=min(done, discard), stopped=stopped,
                precision_met=bool(rounds >= min_rounds and precise(raw, pairs, precision)),
                elapsed_s=clock() - start, precision=precision, min_rounds=min_rounds, max_rounds=max_rounds,
                budget_s=budget_s, steps_per_sample=steps_per_sample)


def summarise(raw: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict:
    """key -> ratio_interval of each pair, with its numerator and denominator named."""
    return {key: dict(numerator=a, denominator=b, **ratio_interval(raw[a], raw[b]))
            for key, (a, b) in pairs.items() if a in raw and b in raw}
