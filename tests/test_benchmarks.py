"""The benchmark command on tiny configs: the record's structure, finite positive ratios, the memory method."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu, run  # noqa: E402
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


def test_gpu_script_logic_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        rec = gpu.main(["--tiny", "--out", str(out), "--batches", "16", "--rounds", "2", "--warmup", "2"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["shape"] == "tiny-bart"
    result = saved["batches"]["16"]
    assert set(result["timing"]["raw"]) == {"floor", "full", "prefix", "lora", "pa_ffn", "mam", "peft_lora"}
    assert all(_finite_positive(r["median"]) for r in result["timing"]["ratio_to_floor"].values())
    assert rec["batches"]["16"]["timing"]["rounds"] == 2


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
