"""The benchmark command on tiny configs: the record's structure, finite positive ratios, the memory method."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import adaptive, gpu, run  # noqa: E402
from benchmarks.measure import bootstrap_median_interval, count_work, paired_ratio, time_rounds  # noqa: E402
from benchmarks.memory import MMAP_THRESHOLD, measure, run_subprocess  # noqa: E402
from benchmarks.methods import build_model, glue_methods, share_frozen  # noqa: E402
from benchmarks.shapes import get_shape  # noqa: E402

METHODS = ["lora", "prompt_tuning", "mam", "peft_lora", "bitfit"]


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu.json"
    threads = torch.get_num_threads()
    try:
        run.main(["--quick", "--shapes", "tiny-bert", "tiny-llama", "--methods", *METHODS, "--threads", "1",
                  "--rounds", "6", "--inference-rounds", "6", "--memory", "inprocess", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), out


def test_record_structure_and_ratios(record):
    rec, path = record
    assert not list(path.parent.glob(".*tmp*")), "the temporary file was left behind"
    assert rec["kind"] == "petl-benchmark" and rec["quick"] is True
    assert {"torch", "transformers", "peft"} <= set(rec["packages"])
    assert rec["settings"]["sizes"] == {"length": 16, "rank": 16, "mam_scalar": 2.0}
    assert set(rec["shapes"]) == {"tiny-bert", "tiny-llama"}
    for shape, result in rec["shapes"].items():
        timing = result["timing"]
        assert timing["rounds"] == 6
        measured = set(timing["raw"])
        # Asked-for methods plus the floors they are divided by; what is missing is named with a reason.
        assert measured | set(result["unsupported"]) == {"floor", "floor_again", "floor_prompt", *METHODS}
        for name, times in timing["raw"].items():
            assert len(times) == 6 and all(_finite_positive(t["wall_s"]) for t in times)
        for name, ratio in timing["ratio_to_reference"].items():
            assert _finite_positive(ratio["wall_s"]["median"]) and _finite_positive(ratio["cpu_s"]["median"])
        assert timing["ratio_to_reference"]["prompt_tuning"]["reference"] == "floor_prompt"
        assert timing["ratio_to_peer"]["lora"]["peer"] == "peft_lora"
        low, high = timing["ratio_to_peer"]["lora"]["wall_s"]["ci95"]
        assert low <= timing["ratio_to_peer"]["lora"]["wall_s"]["median"] <= high
        # Work is counted exactly: our LoRA and PEFT's run the same matmuls; MAM does more than the floor.
        work = result["work"]
        assert work["ratio_to_peer"]["lora"] == 1.0
        assert work["ratio_to_reference"]["mam"] > 1.0 and work["ratio_to_reference"]["floor_again"] == 1.0
        # Elementwise bytes: the same for the two floors; MAM's prefix and adapter add passes of their own
        assert work["elementwise_ratio_to_reference"]["floor_again"] == 1.0
        assert work["elementwise_ratio_to_reference"]["mam"] > 1.0 and work["elementwise_ratio_to_peer"]["lora"] > 0
        inference = result["inference"]
        assert all(_finite_positive(r["wall_s"]["median"]) for r in inference["ratio_to_bare"].values())
        assert inference["max_abs_logit_difference_merged_vs_unmerged"] < 1e-4  # merging keeps the function
        memory = result["memory"]["per_method"]
        assert memory["floor"]["increment_bytes"] >= 0 and memory["floor"]["weights_bytes"] > 0
        assert result["parameters"]["lora"]["trainable"] == result["parameters"]["peft_lora"]["trainable"]
    # BitFit has nothing to train on Llama (no biases): recorded as unsupported, not silently dropped.
    assert "bias" in rec["shapes"]["tiny-llama"]["unsupported"]["bitfit"]
    targets = {(t["shape"], t["method"], t["target"]) for t in rec["targets"]}
    assert ("tiny-bert", "lora", "step <= 1.0x peft_lora") in targets
    assert any(t[1] == "lora_merged" for t in targets) and any(t[1] == "mam" and "memory" in t[2] for t in targets)
    assert all(t["met"] in (True, False, None) for t in rec["targets"])
    control = [t for t in rec["targets"] if t["method"] == "floor_again"]
    assert len(control) == 2 and all(t["limit"] is None and t["met"] is None for t in control)
    for t in rec["targets"]:
        low, high = t["ci95"]
        if t["value"] is not None and low is not None and t["limit"] is not None:
            assert low <= t["value"] <= high
            assert t["decided"] == (high <= t["limit"] or low > t["limit"])


def test_memory_in_a_fresh_process(tmp_path):
    result = run_subprocess(["tiny-bert"], ["floor", "lora"], steps=1, threads=1, out=tmp_path / "m.json",
                            timeout_s=600)
    assert result["mmap_threshold"] == MMAP_THRESHOLD and not (tmp_path / "m.json").exists()
    methods = result["shapes"]["tiny-bert"]
    assert set(methods) == {"floor", "lora", "floor_again"}  # the floor again at the end: the order check
    for m in methods.values():
        assert m["peak_rss_bytes"] >= m["baseline_rss_bytes"] > 0 and m["weights_bytes"] > 0
    with pytest.raises(ValueError, match="valid methods are"):
        measure(["tiny-bert"], ["nonsense"], steps=1)


def test_live_tensor_peak_is_exact_and_separates_methods(tmp_path):
    from benchmarks.memory import main as memory_main
    out = tmp_path / "live.txt"
    memory_main(["--live", "--shapes", "tiny-llama", "--methods", "floor", "lora", "peft_lora", "prefix_nomlp",
                 "peft_prefix", "--threads", "1", "--out", str(out)])
    peak = {line.split()[1]: float(line.split()[2]) for line in out.read_text().splitlines()[1:]}
    assert peak["floor"] < peak["lora"] <= peak["peft_lora"] and peak["floor"] <= peak["prefix_nomlp"]
    # PEFT's prefix goes through transformers' repeat of the grouped key/value heads; ours does not
    assert peak["prefix_nomlp"] < peak["peft_prefix"]


def test_paired_ratio_is_the_median_of_per_round_ratios():
    a = [dict(wall_s=2.0), dict(wall_s=30.0), dict(wall_s=3.0)]
    b = [dict(wall_s=1.0), dict(wall_s=10.0), dict(wall_s=3.0)]
    assert paired_ratio(a, b)["median"] == 2.0  # rounds 3, 2 and 1: a slow round does not distort the ratio


def test_rounds_vary_which_method_runs_after_which():
    calls = []
    run_once = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    times = time_rounds(run_once, rounds=12, min_rounds=12)
    assert all(len(t) == 12 for t in times.values())
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)  # each method once per round
    # a rotation would put every method behind the same predecessor in every round
    predecessors = {r[r.index("b") - 1] for r in rounds if r.index("b") > 0}
    assert len(predecessors) > 1
    calls.clear()
    time_rounds(run_once, rounds=12, min_rounds=12)
    assert [calls[i:i + 4] for i in range(0, len(calls), 4)] == rounds  # seeded: the same orders again


def test_bootstrap_interval_holds_the_median_and_shrinks_with_rounds():
    noisy = [1.0 + 0.1 * ((7 * i) % 11 - 5) / 5 for i in range(40)]  # a spread of ±10% around 1.0
    low, high = bootstrap_median_interval(noisy[:8])
    wide = high - low
    assert low <= 1.0 <= high
    low, high = bootstrap_median_interval(noisy)
    assert low <= 1.0 <= high and high - low < wide
    assert bootstrap_median_interval([2.0, 2.0, 2.0]) == [2.0, 2.0]
    assert bootstrap_median_interval(noisy) == bootstrap_median_interval(noisy)  # a fixed seed: reproducible


def test_flop_count_includes_attention_forward_and_backward():
    batch, heads, kv_heads, length, dim = 2, 4, 2, 8, 16
    q = torch.randn(batch, heads, length, dim, requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, length + 3, dim, requires_grad=True) for _ in range(2))

    def attend():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True).sum().backward()

    _, flops, _ = count_work(attend)
    forward = 2 * batch * heads * length * (length + 3) * (2 * dim)  # Q Kᵀ and P V
    assert flops == forward + forward * 5 // 2


def test_elementwise_bytes_count_each_pass_but_not_matmuls_or_views():
    x, w = torch.randn(64, 32), torch.randn(32, 32)
    nbytes = x.numel() * 4

    _, flops, traffic = count_work(lambda: x @ w)
    assert flops == 2 * 64 * 32 * 32 and traffic == 0
    _, flops, traffic = count_work(lambda: (x + x).t())
    assert flops == 0 and traffic == 3 * nbytes  # read twice, written once; the transpose moves nothing
    _, _, traffic = count_work(lambda: x.t().reshape(-1))
    assert traffic == 2 * nbytes  # a transposed tensor flattened is copied: read once, written once
    _, _, traffic = count_work(lambda: torch.empty_like(x).copy_(x).add_(x))
    assert traffic == 2 * nbytes + 3 * nbytes  # copy_: read x, write; add_: read both, write
    bias = torch.randn(32)
    _, _, traffic = count_work(lambda: x + bias)  # a broadcast input costs its own size, not the output's
    assert traffic == 2 * nbytes + bias.numel() * 4


def test_methods_share_the_frozen_backbone():
    shape = get_shape("tiny-bert")
    template = shape.build()
    copy = share_frozen(template)
    assert copy.bert.encoder.layer[0].attention.self.query.weight is template.bert.encoder.layer[0].attention.self.query.weight
    assert copy.classifier.weight is not template.classifier.weight  # every method trains its own head
    full = build_model(glue_methods()["full"], template, shape.family)
    assert all(p.requires_grad for p in full.parameters())
    assert not any(p.requires_grad for p in template.parameters())  # full fine-tuning copied, did not unfreeze


def test_unknown_shape_or_method_is_refused():
    with pytest.raises(ValueError, match="valid shapes are"):
        run.parse_args(["--shapes", "gpt5"])
    with pytest.raises(SystemExit, match="valid methods are"):
        run.main(["--methods", "nonsense", "--shapes", "tiny-bert", "--out", "/dev/null"])


def test_book_tables_read_the_record(record):
    from petl import report
    rec, path = record
    rec = rec | {"_path": str(path)}
    parity = report.benchmark_parity([rec])
    assert {"lora", "floor_again"} <= set(parity["ours"])
    assert "tiny-llama: " in report.records_named(parity)
    row = parity[(parity["ours"] == "lora") & (parity["shape"] == "tiny-llama")].iloc[0]
    assert row["against"] == "peft_lora" and row["FLOPs ×"] == "1.000" and "–" in row["95% interval"]
    frame = next(iter(report.benchmark_tables([rec]).values()))
    assert {"95% interval", "verdict", "FLOPs ×"} <= set(frame.columns)
    assert "control" in set(frame["verdict"]) and "met" in " ".join(frame["verdict"])
    assert frame["elementwise bytes ×"].ne("—").any()
    counted = report.benchmark_counted([rec])
    assert {"lora", "mam"} <= set(counted["method"]) and "floor_again" not in set(counted["method"])
    row = counted[(counted["method"] == "mam") & (counted["shape"] == "tiny-bert")].iloc[0]
    assert float(row["elementwise bytes ×"]) > 1.0 and row["A/A of the run"] != "—"


def test_profile_ops_compares_methods_op_by_op(tmp_path):
    from benchmarks import profile_ops
    threads = torch.get_num_threads()
    try:
        table = profile_ops.main(["floor", "lora", "--shape", "tiny-bert", "--steps", "1", "--threads", "1",
                                  "--out", str(tmp_path / "p.txt")])
    finally:
        torch.set_num_threads(threads)
    header = table.splitlines()[0]
    assert "floor" in header and "lora" in header and table.splitlines()[1].startswith("total")
    assert "aten::" in table and (tmp_path / "p.txt").read_text().startswith("python -m benchmarks.profile_ops")
    with pytest.raises(ValueError, match="valid methods are"):
        profile_ops.profile_methods("tiny-bert", ["nonsense"])


def test_book_tables_without_records():
    from petl import report
    parity = report.benchmark_parity([])
    assert parity.empty and "record" in parity.columns and report.records_named(parity) == "none"


def test_default_plan_per_shape():
    specs = glue_methods()
    timed, memory = run.plan_for("minilm", None, specs)
    assert timed == list(specs) and "floor_again" not in memory and "mam" in memory
    timed, memory = run.plan_for("smollm2", None, specs)
    assert set(timed) == {"floor", "floor_again", "lora", "peft_lora", "prefix_nomlp", "peft_prefix"}
    assert memory == ["floor", "mam"]
    assert run.plan_for("smollm2", ["all"], specs)[0] == list(specs)
    timed, memory = run.plan_for("smollm2", ["prompt_tuning"], specs)
    assert timed == ["floor", "floor_again", "floor_prompt", "prompt_tuning"] and memory == ["floor", "prompt_tuning"]


def test_no_interval_under_six_rounds():
    five = [dict(wall_s=1.0 + i / 10) for i in range(5)]
    ones = [dict(wall_s=1.0)] * 6
    assert all(math.isnan(x) for x in paired_ratio(five, ones[:5])["ci95"])  # no interval (None in the record)
    six = five + [dict(wall_s=1.25)]
    low, high = paired_ratio(six, ones)["ci95"]
    assert low <= paired_ratio(six, ones)["median"] <= high


# ------------------------------------------------------------------------------------------------
# GPU benchmark v2 (benchmarks/gpu.py, benchmarks/adaptive.py): the logic, on CPU
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_record(tmp_path_factory):
    """The whole --tiny pipeline (every shape, every phase) into a folder, as gpu.sh runs it."""
    folder = tmp_path_factory.mktemp("gpu")
    threads = torch.get_num_threads()
    try:
        returned = gpu.main(["--tiny", "--out-dir", str(folder), "--warmup", "2"])
    finally:
        torch.set_num_threads(threads)
    return returned, folder


def test_gpu_tiny_record_has_every_part(gpu_record):
    returned, folder = gpu_record
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].name.startswith("gpu-v2-tiny-cpu-"), files  # no temporary file left
    rec = json.loads(files[0].read_text())
    assert rec["kind"] == "petl-benchmark-gpu" and rec["version"] == 2 and rec["complete"] and rec["tiny"]
    assert rec["targets"] == json.loads(json.dumps(returned["targets"]))
    assert {"commit", "dirty"} <= set(rec["git"]) and rec["device"]["type"] == "cpu"
    assert {"torch", "transformers", "peft"} <= set(rec["packages"])
    assert rec["plan"] == list(gpu.PLAN) and set(rec["shapes"]) == set(gpu.PLAN)
    for key, shape in rec["shapes"].items():
        assert shape["complete"], shape.get("error")
        assert set(shape["built"]) | set(shape["unsupported"]) == set(gpu.METHODS)
        assert {"floor", "floor_aa", "full", "lora", "mam", "peft_lora"} <= set(shape["built"])
        timing = shape["timing"]
        assert rec["settings"]["min_rounds"] <= timing["rounds"] <= rec["settings"]["max_rounds"]
        assert timing["stopped"] in ("precise", "max_rounds", "budget")
        assert all(len(t) == timing["rounds"] for t in timing["raw_s"].values())
        assert {"floor_aa/floor", "lora/floor", "lora/peft_lora", "mam/full", "prompt_tuning/floor_prompt"} <= set(
            shape["ratios"])
        assert all(f > 0 for f in shape["work"]["flops_per_step"].values())
        assert shape["work"]["flops_ratio_to_reference"]["floor_aa"] == 1.0
        # merging keeps the function, to bf16's precision (the run is under bf16 autocast, as on the GPU)
        assert rec["settings"]["autocast"] == "bf16"
        assert shape["inference"]["max_abs_logit_difference_merged_vs_unmerged"] < 1e-2
        assert "lora_merged/bare" in shape["inference"]["ratios"]
        assert set(shape["memory"]["increment_bytes"]) == set(shape["built"])  # None on CPU: not measured
        for name in shape["built"]:
            profile = rec["profiles"][key][name]
            assert profile["total_ms"] > 0 and "matmul" in profile["categories"], (key, name, profile)
    summary = rec["summary"]
    assert sum(summary["verdicts"].values()) == len(rec["targets"])
    assert set(summary["precision_missed"]) == {k for k, m in summary["precision_met"].items() if not m}


def test_gpu_tiny_targets_are_time_over_counted_flops(gpu_record):
    rec = gpu_record[0]
    verdicts = {"pass", "fail", "undecided", "not measured", "control", "no target"}
    for t in rec["targets"]:
        assert t["verdict"] in verdicts, t
        if t["target"].startswith("step / floor /") and t["method"] != "full":
            assert t["limit"] == (1.05 if t["shape"] == "bart-large-b64" else 1.10), t
        if t["value"] is None:
            continue
        low, high = t["ci95"]
        assert low <= t["value"] <= high
        if t["counted_ratio"] and "FLOPs ratio" in t["target"]:
            assert t["value"] == pytest.approx(t["time_ratio"] / t["counted_ratio"], rel=1e-12)
        if t["limit"] is not None:
            assert t["verdict"] == adaptive.verdict(t["ci95"], t["limit"])
    mam_full = [t for t in rec["targets"] if t["method"] == "mam" and "full fine-tuning" in t["target"]]
    assert len(mam_full) == len(gpu.PLAN) and all(t["value"] == t["time_ratio"] for t in mam_full)  # not scaled
    # a method or peer that was not built is named in every target that needs it
    for key, shape in rec["shapes"].items():
        for name, reason in shape["unsupported"].items():
            rows = [t for t in rec["targets"]
                    if t["shape"] == key and (t["method"] == name or f"/ {name} /" in t["target"])]
            assert rows and all(t["verdict"] == "not measured" and reason in t["note"] for t in rows), (name, rows)


def test_t_quantile_and_ratio_interval():
    for df, exact in ((5, 2.570582), (9, 2.262157), (29, 2.045230), (1, 12.7062)):
        assert adaptive.t_quantile_975(df) == pytest.approx(exact, abs=1e-3)
    a, b = [2.0, 2.2, 1.8, 2.1, 1.9, 2.0], [1.0] * 6
    out = adaptive.ratio_interval(a, b)
    logs = [math.log(x) for x in a]
    mean, sd = sum(logs) / 6, float(torch.tensor(logs, dtype=torch.float64).std())
    half = 2.570582 * sd / math.sqrt(6)
    assert out["estimate"] == pytest.approx(math.exp(mean))
    assert out["ci95"] == pytest.approx([math.exp(mean - half), math.exp(mean + half)], rel=1e-3)
    assert out["half_width"] == pytest.approx(math.expm1(half), rel=1e-3)
    assert adaptive.ratio_interval(a[:5], b[:5])["ci95"] is None  # under 6 rounds: no interval


class FakeClock:
    """A clock the timed callables advance: the rounds see exactly the durations a test gives them."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def step(self, durations):
        values = iter(durations)

        def run():
            self.now += next(values)
        return run


def test_rounds_stop_at_the_first_round_every_ratio_is_precise():
    import random
    rng = random.Random(3)
    clock = FakeClock()
    noisy = [2.0 * (1 + rng.uniform(-0.12, 0.12)) for _ in range(500)]
    run_once = {"a": clock.step([1.0] * 500), "b": clock.step(noisy), "c": clock.step([3.0] * 500)}
    pairs = {"b/a": ("b", "a"), "c/a": ("c", "a")}
    out = adaptive.adaptive_rounds(run_once, pairs, precision=0.05, min_rounds=6, max_rounds=400, budget_s=1e9,
                                   clock=clock)
    assert out["stopped"] == "precise" and out["precision_met"] and out["discarded"] == 1
    raw = out["raw"]
    assert out["rounds"] > 6 and all(len(t) == out["rounds"] for t in raw.values())
    assert adaptive.ratio_interval(raw["b"], raw["a"])["half_width"] <= 0.05
    assert adaptive.ratio_interval(raw["b"][:-1], raw["a"][:-1])["half_width"] > 0.05  # one round fewer: not yet
    assert adaptive.ratio_interval(raw["c"], raw["a"])["half_width"] == pytest.approx(0.0, abs=1e-9)


def test_rounds_stop_when_the_budget_runs_out_and_say_so():
    import random
    rng = random.Random(1)
    clock = FakeClock()
    noisy = [1.0 * (1 + rng.uniform(-0.5, 0.5)) for _ in range(500)]
    run_once = {"a": clock.step([1.0] * 500), "b": clock.step(noisy)}
    out = adaptive.adaptive_rounds(run_once, {"b/a": ("b", "a")}, precision=0.01, min_rounds=6, max_rounds=400,
                                   budget_s=30.0, clock=clock)
    assert out["stopped"] == "budget" and not out["precision_met"]
    assert out["elapsed_s"] <= 30.0 and out["rounds"] == 30 // 2 - 1  # 2 s a round, the first discarded
    none = adaptive.adaptive_rounds({"a": clock.step([1.0] * 9)}, {}, budget_s=0, clock=clock)
    assert none["stopped"] == "budget" and none["rounds"] == 0


def test_verdict_against_a_limit():
    assert adaptive.verdict([0.98, 1.05], 1.05) == "pass"  # the whole interval at or under the limit
    assert adaptive.verdict([1.051, 1.2], 1.05) == "fail"
    assert adaptive.verdict([1.0, 1.1], 1.05) == "undecided"
    assert adaptive.verdict(None, 1.05) == "not measured"
    assert adaptive.verdict([float("nan"), 1.0], 1.05) == "not measured"
    assert adaptive.verdict([0.9, 1.0], None) == "no target"
    scaled = adaptive.scaled(dict(estimate=1.2, ci95=[1.1, 1.32], half_width=0.1, rounds=9), 1.2)
    assert scaled["estimate"] == pytest.approx(1.0) and scaled["ci95"] == pytest.approx([1.1 / 1.2, 1.1])
    assert scaled["half_width"] == 0.1  # the relative width does not change


def _summarised(times: dict[str, list[float]], specs: dict) -> dict:
    return adaptive.summarise(times, gpu.pairs_of(specs, times))


def test_targets_divide_the_time_ratio_by_the_flops_ratio():
    specs = gpu.method_specs("tiny")
    wobble = [1.0, 1.01, 0.99, 1.0, 1.005, 0.995, 1.0, 1.0]
    times = {"floor": [1.0 * w for w in wobble], "floor_aa": [1.0] * 8, "full": [2.0] * 8,
             "lora": [1.2] * 8,  # 1.2x the floor's time for 1.2x its FLOPs: pass
             "pa_ffn": [1.2] * 8,  # 1.2x the time for the floor's FLOPs: fail
             "mam": [1.0 * (1.2 if i % 2 else 0.95) for i in range(8)]}  # noisy around the limit: undecided
    flops = {"floor": 100, "floor_aa": 100, "full": 100, "lora": 120, "pa_ffn": 100, "mam": 100}
    unsupported = {"peft_lora": "Unsupported: PEFT failed to build: AttributeError: no"}
    rows = gpu.evaluate("bart-large-b64", specs, _summarised(times, specs), {"flops_per_step": flops}, 1.05, None,
                        unsupported)
    by = {(r["method"], r["target"].split(" / ")[1] if " / " in r["target"] else r["target"]): r for r in rows}
    lora = by[("lora", "floor")]
    assert lora["counted_ratio"] == pytest.approx(1.2) and lora["time_ratio"] == pytest.approx(1.2 / 0.99975, rel=1e-2)
    assert lora["value"] == pytest.approx(lora["time_ratio"] / 1.2) and lora["verdict"] == "pass"
    assert by[("pa_ffn", "floor")]["verdict"] == "fail"
    assert by[("mam", "floor")]["verdict"] == "undecided"
    peer = by[("lora", "peft_lora")]
    assert peer["verdict"] == "not measured" and "PEFT failed" in peer["note"]
    assert by[("floor_aa", "A/A control: the floor against a second floor")]["verdict"] == "control"
    assert by[("full", "floor")]["verdict"] == "no target" and by[("full", "floor")]["limit"] is None
    mam_full = next(r for r in rows if r["method"] == "mam" and "full fine-tuning" in r["target"])
    assert mam_full["value"] == pytest.approx(mam_full["time_ratio"]) and mam_full["value"] < 1.0  # step time, unscaled
    assert mam_full["verdict"] == "pass" and mam_full["counted_ratio"] == 1.0
    # methods never timed are rows that say so, not silently dropped
    assert by[("prefix", "floor")]["verdict"] == "not measured"


def test_memory_beside_the_floor():
    memory = gpu.memory_summary({"floor": dict(increment_bytes=100), "mam": dict(increment_bytes=150),
                                 "lora": dict(increment_bytes=None)})
    assert memory["ratio_to_floor"] == {"floor": 1.0, "mam": 1.5}
    assert gpu.memory_summary({"floor": dict(increment_bytes=None), "mam": dict(increment_bytes=9)})[
        "ratio_to_floor"] == {}


def test_a_peer_that_cannot_be_built_is_recorded_with_its_reason():
    from benchmarks.methods import MethodSpec
    shape = get_shape("tiny-roberta")
    specs = {n: s for n, s in gpu.method_specs("tiny").items() if n in ("floor", "lora")}
    specs["peft_broken"] = MethodSpec("peft_broken", "peft", peft=dict(type="NoSuchPeftConfig", r=4))
    args = gpu.parse_args(["--tiny", "--out", "/dev/null", "--warmup", "1"])
    result = dict(built={}, unsupported={})
    prepared = gpu.set_up(specs, shape.build(), shape, args, "cpu", None, time.monotonic() + 60, result)
    assert set(prepared) == {"floor", "lora"} and set(result["built"]) == {"floor", "lora"}
    assert result["unsupported"]["peft_broken"].startswith("Unsupported: PEFT failed to build: AttributeError")
    assert "NoSuchPeftConfig" in result["unsupported"]["peft_broken"]
    assert set(result["work"]["flops_per_step"]) == {"floor", "lora"}  # what was built is counted, nothing else
    assert result["work"]["flops_ratio_to_reference"]["lora"] > 0


def test_a_timeout_in_the_rounds_keeps_the_finished_ones():
    specs = gpu.method_specs("tiny")
    calls = {"n": 0}

    class Step:
        def __init__(self, stall_at=None):
            self.stall_at = stall_at

        def step(self):
            calls["n"] += 1
            time.sleep(0.001 if calls["n"] % 3 else 0.01)  # too noisy for any precision: only the timeout stops
            if self.stall_at is not None and calls["n"] >= self.stall_at:
                time.sleep(30)  # a hung step: the phase's SIGALRM ends it

    # two calls a round: the 25th call falls in round 13, after 1 discarded and 11 kept rounds
    prepared = {"floor": Step(), "floor_aa": Step(stall_at=25)}
    args = gpu.parse_args(["--tiny", "--out", "/dev/null", "--timing-timeout-s", "0.5", "--max-rounds", "50"])
    result = {}
    started = time.monotonic()
    gpu.time_methods(prepared, specs, args, "cpu", 60.0, result)
    assert time.monotonic() - started < 5
    timing = result["timing"]
    assert timing["stopped"] == "error" and "ran past" in timing["error"] and not timing["precision_met"]
    assert timing["rounds"] == 11 and all(len(t) == timing["rounds"] for t in timing["raw_s"].values())
    assert result["ratios"]["floor_aa/floor"]["rounds"] == timing["rounds"]


def test_the_record_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "deep" / "gpu.json"
    gpu._write(dict(phase=1, value=float("nan"), rounds=[1.0, 2.0]), out)
    assert json.loads(out.read_text()) == dict(phase=1, value=None, rounds=[1.0, 2.0])  # NaN is written as null

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        gpu._write(dict(phase=2), out)
    assert json.loads(out.read_text())["phase"] == 1 and [p.name for p in out.parent.iterdir()] == ["gpu.json"]


def test_record_path_and_bad_arguments(capsys):
    path = gpu.record_path(Path("runs/benchmarks"), {"name": "NVIDIA H200"}, "2026-12-03T11:50:07+00:00", False)
    assert path == Path("runs/benchmarks/gpu-v2-h200-20261203-1150.json")
    assert gpu.record_path(Path("x"), {"name": "cpu"}, "2026-12-03T11:50:07+00:00", True).name == \
        "gpu-v2-tiny-cpu-20261203-1150.json"
    for bad, message in ((["--shapes", "gpt5"], "valid shapes are"), (["--budget-s", "0"], "must be positive"),
                         (["--min-rounds", "3"], "min-rounds")):
        with pytest.raises(SystemExit):
            gpu.parse_args(["--tiny", *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid sizes are"):
        gpu.method_specs("huge")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            gpu.main(["--out", "/dev/null"])


def test_gpu_sh_writes_the_record_and_log_into_out(tmp_path):
    import os
    import subprocess
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, PETL_GIT_COMMIT="0123abc")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--shapes", "roberta-base",
                           "--profile-steps", "0", "--warmup", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records, logs = list(tmp_path.glob("gpu-v2-tiny-cpu-*.json")), list(tmp_path.glob("gpu-v2-*.log"))
    assert len(records) == 1 and len(logs) == 1
    log_text = logs[0].read_text()
    assert "transformers" in log_text and "record: " in log_text and "exit 0" in log_text
    rec = json.loads(records[0].read_text())
    assert rec["complete"] and list(rec["shapes"]) == ["roberta-base"] and rec["settings"]["budget_s"] == 450


def test_book_gpu_section_reads_the_newest_v2_record(gpu_record):
    from petl import report
    text, table = report.gpu_v2_section([])
    assert text.startswith("The v2 GPU benchmark has not run yet; command: ") and "gpu.sh" in text and table is None
    tiny = gpu_record[0] | {"_path": "gpu-v2-tiny-cpu.json"}
    assert report.gpu_v2_section([tiny])[1] is None  # a --tiny CPU check is not a GPU record
    older = tiny | {"tiny": False, "created": "2026-01-01T00:00:00+00:00", "_path": "old.json"}
    newest = tiny | {"tiny": False, "_path": "gpu-v2-h200-x.json"}
    text, table = report.gpu_v2_section([older, newest])
    assert text.startswith("gpu-v2-h200-x.json") and "rounds" in text and "Targets:" in text
    assert len(table) == len(tiny["targets"]) and {"FLOPs ×", "95% interval", "verdict"} <= set(table.columns)
    # the CPU tables leave GPU records out, the v1 GPU record is labelled as such
    assert report.benchmark_parity([newest]).empty and report.benchmark_tables([newest]) == {}
    v1 = dict(kind="petl-benchmark-gpu", device=dict(name="H200"), _path="gpu-h200-v1.json", batches={"64": dict(
        source_length=512, target_length=128, memory_ratio_to_floor={"floor": 1.0},
        timing=dict(rounds=8, median_step_s={"floor": 0.1}, ratio_to_floor={}, tokens_per_s={"floor": 1.0}))})
    (caption,) = report.benchmark_tables([v1])
    assert "GPU benchmark v1: 8 rounds" in caption
