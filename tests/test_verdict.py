"""petl.report.verdict: the protocol's verdicts (book/claims.yaml) from paired seeds, with a 95% interval, between
arms that learned; records written here from committed templates, nothing trains."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from petl import sweep
from petl.report import verdict

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = {v: next((ROOT / "runs").glob(f"rt-polarity_minilm_{v}_seed0_100steps_*")) for v in ("lora", "full")}


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_the_t_quantile_is_students(df, expected):
    assert verdict.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert verdict.t_cdf(0.0, df) == pytest.approx(0.5)


def test_a_paired_difference_pairs_by_seed_with_a_t_interval():
    diff = verdict.paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 7: 9.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert (diff.n, diff.mean, diff.sd) == (3, 2.0, 1.0)                # seed 7 has no partner: left out
    half = 4.3027 / math.sqrt(3)
    assert diff.low == pytest.approx(2 - half, abs=1e-3) and diff.high == pytest.approx(2 + half, abs=1e-3)
    assert verdict.paired_difference({0: 1.0}, {0: 0.5}).low is None  # one seed: no interval
    with pytest.raises(ValueError, match="share no seed"):
        verdict.paired_difference({0: 1.0}, {1: 1.0})


def test_decide_reads_the_interval_against_what_the_paper_reports():
    D = verdict.Difference
    assert verdict.decide(D(3, 1.0, 0.2, 0.5, 1.5), "greater") == "agrees"
    assert verdict.decide(D(3, -1.0, 0.2, -1.5, -0.5), "greater") == "disagrees"
    assert verdict.decide(D(3, 0.5, 1.0, -0.5, 1.5), "greater") == "undecided at n = 3"
    assert verdict.decide(D(3, -0.4, 0.1, -0.8, -0.1), "close", margin=1.0) == "agrees"   # above -margin
    assert verdict.decide(D(3, -3.0, 0.1, -3.5, -2.5), "close", margin=1.0) == "disagrees"
    assert verdict.decide(D(1, 2.0, None, None, None), "greater") == "undecided at n = 1"
    with pytest.raises(ValueError, match="greater, close"):
        verdict.decide(D(3, 1.0, 0.2, 0.5, 1.5), "better")
    # a spread of 1 around a mean of 1: t(n-1) / sqrt(n) < 1 first at n = 7
    assert verdict.seeds_to_resolve(D(3, 1.0, 1.0, -1.5, 3.5)) == 7
    assert verdict.undecided_reason(D(3, 1.0, 1.0, -1.5, 3.5)) == "at this spread about 7 seeds would decide it"
    assert verdict.undecided_reason(D(1, 1.0, None, None, None)) == "one seed: no spread to go by"
    # a mean 0.02 from the bound -1.5 at a spread of 1 needs ~10,000 seeds: the reason says where the mean sits
    assert verdict.undecided_reason(D(5, -1.48, 1.0, -2.7, -0.2), margin=1.5) == (
        "the mean difference -1.48 sits 0.02 from the bound -1.50: more than 200 seeds at this spread")


# ---------------------------------------------------------------------------------------------------------------
# From records to a verdict table
# ---------------------------------------------------------------------------------------------------------------

def _grid(tmp_path: Path) -> str:
    grid = tmp_path / "grid.yaml"
    grid.write_text("fixed: {task: rt-polarity, model: minilm, max_steps: 100, eval_every: 50, bf16: false}\n"
                    "grid:\n  variant: [lora, full]\n  seed: [0, 1, 2]\n")
    return str(grid)


def _write(runs: Path, rid: str, variant: str, seed: int, dev: float, test: float) -> None:
    """A complete record under `rid` from the committed template of `variant`, with these accuracies."""
    config = json.loads((TEMPLATES[variant] / "config.json").read_text())
    metrics = json.loads((TEMPLATES[variant] / "metrics.json").read_text())
    config.update(run_id=rid)
    config["train"]["seed"] = seed
    metrics.update(dev={"accuracy": dev}, test={"accuracy": test})
    metrics["num_examples"]["validation"] = 1000                   # all of dev, as the majority baseline
    (runs / rid).mkdir(parents=True)
    (runs / rid / "config.json").write_text(json.dumps(config))
    (runs / rid / "metrics.json").write_text(json.dumps(metrics))


def _records(tmp_path: Path, grid: str, scores: dict) -> Path:
    """Records of the grid's points, with dev / test accuracy from `scores` (variant -> [(dev, test) per seed]),
    and the majority baseline."""
    runs = tmp_path / "runs"
    for point, rid in sweep.plan([grid]):
        values = scores.get(point["variant"])
        if values is not None:
            _write(runs, rid, point["variant"], point["seed"], *values[point["seed"]])
    (runs / "baselines").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "runs" / "baselines" / "rt-polarity-majority.json", runs / "baselines")
    return runs


def _claims(tmp_path: Path, grid: str, expect: str = "greater", margin: float | None = None) -> Path:
    comp = {"what": "LoRA against full fine-tuning", "grids": [grid], "a": "lora", "b": "full",
            "metric": "accuracy", "expect": expect,
            "paper": {"table": "table2", "a": "LoRA", "b": "full fine-tuning", "task": "sst2", "metric": "accuracy"}}
    if margin is not None:
        comp["margin"] = margin
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps({"CX": {"claim": "LoRA is close", "paper": "Table 2", "chapter": "existing_methods",
                                       "comparisons": [comp]}}))
    return path


LEARNED = {"lora": [(80.0, 79.0), (81.0, 80.5), (79.5, 80.0)], "full": [(82.0, 81.0), (83.0, 82.0), (82.5, 81.5)]}


def test_a_verdict_table_row_from_records(tmp_path):
    grid = _grid(tmp_path)
    runs = _records(tmp_path, grid, LEARNED)
    table = verdict.verdict_table("CX", _claims(tmp_path, grid, "close", margin=3.0), directory=runs)
    row = table.iloc[0]
    # test accuracy a - b per seed: -2.0, -1.5, -1.5 -> mean -1.67, interval within (-3, 0)
    assert row["n"] == 3 and row["ours"].startswith("-1.67 [")
    assert row["verdict"] == "agrees"
    assert row["paper"] == "94.2 vs 94.6 (-0.40)"              # data/paper/results.csv, Table 2, SST-2
    greater = verdict.verdict_table("CX", _claims(tmp_path, grid, "greater"), directory=runs).iloc[0]
    assert greater["verdict"] == "disagrees"                  # LoRA below full in every seed
    assert verdict.claim_verdict(table) == "agrees"


def test_a_claims_verdict_counts_its_comparisons_verdicts():
    """'mixed' says how the comparisons split, so the introduction's page does not hide the pending ones."""
    def verdicts(*rows):
        return pd.DataFrame({"verdict": list(rows)})
    assert verdict.claim_verdict(verdicts("agrees", "agrees")) == "agrees"
    assert verdict.claim_verdict(verdicts("disagrees")) == "disagrees"
    assert verdict.claim_verdict(verdicts(
        "agrees", "undecided at n = 5 (...)", "disagrees", "did not learn: prefix (l=16) (...)",
        "pending: 0 of 10 points have a record", "pending: 0 of 10 points have a record")) == (
        "mixed: 1 agrees, 1 undecided, 1 disagrees, 1 did not learn, 2 pending")
    assert verdict.claim_verdict(verdicts("agrees", "pending: 3 of 6 points have a record")) == (
        "not decided (1 agrees, 1 pending)")


def test_the_paper_column_keeps_the_papers_digits():
    comp = {"paper": {"table": "table2", "a": "prefix tuning", "b": "full fine-tuning", "task": "sst2",
                      "metric": "accuracy"}}
    assert verdict._paper(comp) == "94.0 vs 94.6 (-0.60)"       # results.csv prints 94.0; it is not shown as 94


def test_an_arm_reads_its_tasks_baselines_once(tmp_path, monkeypatch):
    grid = _grid(tmp_path)
    runs = _records(tmp_path, grid, LEARNED)
    calls = []
    real = verdict.baseline_records
    monkeypatch.setattr(verdict, "baseline_records", lambda *a, **k: calls.append(a) or real(*a, **k))
    rows = verdict.compare(json.loads(_claims(tmp_path, grid).read_text())["CX"]["comparisons"][0], directory=runs)
    assert isinstance(rows, list) and len(rows) == 1          # one row per test split, always a list
    assert len(calls) == 2                                    # one read per arm, not one per seed


def test_an_arm_that_did_not_learn_is_named_and_kept_out_of_the_verdict(tmp_path):
    grid = _grid(tmp_path)
    # the majority class on dev is 58.6 (586 of 1,000 positive): seed 1 of LoRA at 61.0 is not 10 points above
    stuck = {**LEARNED, "lora": [(80.0, 79.0), (61.0, 60.2), (79.5, 80.0)]}
    runs = _records(tmp_path, grid, stuck)
    row = verdict.verdict_table("CX", _claims(tmp_path, grid), directory=runs).iloc[0]
    assert row["verdict"].startswith("did not learn: lora")
    assert "seed 1: dev.accuracy 61.0, not above 68.6 (rt-polarity-majority 58.6 + 10)" in row["verdict"]
    assert row["ours"] == ""


def test_missing_points_leave_the_comparison_pending(tmp_path):
    grid = _grid(tmp_path)
    runs = _records(tmp_path, grid, {"lora": LEARNED["lora"]})
    row = verdict.verdict_table("CX", _claims(tmp_path, grid), directory=runs).iloc[0]
    assert row["verdict"] == "pending: 3 of 6 points have a record"
    summary = verdict.verdict_summary(_claims(tmp_path, grid), directory=runs)
    assert summary.iloc[0]["verdict"] == "not decided (1 pending)"


def test_without_a_dev_baseline_no_arm_counts_as_learned(tmp_path):
    grid = _grid(tmp_path)
    runs = _records(tmp_path, grid, LEARNED)
    (runs / "baselines" / "rt-polarity-majority.json").unlink()
    row = verdict.verdict_table("CX", _claims(tmp_path, grid), directory=runs).iloc[0]
    assert row["verdict"].startswith("did not learn") and "python -m petl.baselines" in row["verdict"]


def test_a_run_on_part_of_dev_is_not_judged_against_the_whole_dev_majority(tmp_path):
    grid = _grid(tmp_path)
    runs = _records(tmp_path, grid, LEARNED)
    for path in runs.glob("*_lora_seed1_*/metrics.json"):
        metrics = json.loads(path.read_text())
        metrics["num_examples"]["validation"] = 500
        path.write_text(json.dumps(metrics))
    row = verdict.verdict_table("CX", _claims(tmp_path, grid), directory=runs).iloc[0]
    assert row["verdict"].startswith("did not learn: lora") and "seed 1: no baseline record" in row["verdict"]


def test_the_protocol_file_is_checked(tmp_path):
    grid = _grid(tmp_path)
    path = _claims(tmp_path, grid, "close")                     # a 'close' comparison without a margin
    with pytest.raises(ValueError, match="needs a margin"):
        verdict.claims(path)
    with pytest.raises(KeyError, match="no claim 'C9'"):
        verdict.verdict_table("C9", _claims(tmp_path, grid))


def test_the_books_protocol_names_real_paper_rows_and_arms():
    """Every comparison of book/claims.yaml names two rows of results.csv and arms its grids have."""
    spec = verdict.claims()
    assert list(spec) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    for cid, claim in spec.items():
        assert (ROOT / "book" / f"{claim['chapter']}.ipynb").exists(), cid
        for comp in claim["comparisons"]:
            verdict._paper(comp)                                  # raises when a row is missing
            points = [p for g in comp["grids"] for p in sweep.read_grid(ROOT / g)]
            for side in ("a", "b"):
                which = comp[side] if isinstance(comp[side], str) else comp[side]["variant"]
                settings = {json.dumps(p.get("overrides") or {}, sort_keys=True) for p in points
                            if p["variant"] == which}
                assert settings, (cid, comp["what"], side, "no point of this variant")
                # a bare variant must name one setting of its grids (else its records hold two methods)
                assert isinstance(comp[side], dict) or len(settings) == 1, (cid, comp["what"], side, settings)


# ---------------------------------------------------------------------------------------------------------------
# The learning-rate appendix and the protocol's cost
# ---------------------------------------------------------------------------------------------------------------

def test_the_learning_rate_tables_show_each_candidate_and_the_choice(tmp_path):
    from petl import report
    base = "task: rt-polarity, model: minilm, max_steps: 100, eval_every: 50, bf16: false, variant: lora"
    (tmp_path / "lr.yaml").write_text(f"fixed: {{{base}, seed: 0}}\ngrid:\n  lr: [1.0e-4, 1.0e-3, 1.0e-2]\n")
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(f"fixed: {{{base}, lr: {{best_on_dev: lr.yaml}}}}\ngrid:\n  seed: [0, 1]\n")
    runs = tmp_path / "runs"
    for (point, rid), dev in zip(sweep.plan([tmp_path / "lr.yaml"]), (60.0, 80.0)):   # 1e-2: no record yet
        _write(runs, rid, "lora", 0, dev, dev)
        (runs / rid / "history.csv").write_text("step,loss\n1,0.9\n2,0.7\n3,0.5\n")
    (runs / "baselines").mkdir()
    shutil.copy(ROOT / "runs" / "baselines" / "rt-polarity-majority.json", runs / "baselines")
    waiting = report.chosen_rates(report.lr_sweeps(str(seeds), directory=runs)).iloc[0]
    assert (waiting["with a record"], waiting["chosen on dev"], waiting["learned at"]) == ("2 of 3", "", "0.001")
    _write(runs, sweep.plan([tmp_path / "lr.yaml"])[2][1], "lora", 0, 75.0, 75.0)
    sweeps = report.lr_sweeps(str(seeds), directory=runs)
    assert list(sweeps["dev"]) == [60.0, 80.0, 75.0] and list(sweeps["chosen"]) == [False, True, False]
    # dev majority 58.6 + 10: 1e-4 at 60.0 did not learn
    assert list(sweeps["learned"]) == [False, True, True]
    row = report.chosen_rates(sweeps).iloc[0]
    assert (row["method"], row["rates tried"], row["chosen on dev"]) == ("lora", "0.0001, 0.001, 0.01", "0.001")
    assert row["learned at"] == "0.001, 0.01"
    assert row["paper (Table 8)"] == "0.0001"                   # GLUE's rate: rt-polarity stands in for SST-2
    curves = report.loss_curves(sweeps, "rt-polarity", "lora", window=2, directory=runs)
    assert sorted(set(curves["lr"])) == [1e-4, 1e-3]           # the 1e-2 record has no history.csv
    assert list(curves[curves["lr"] == 1e-4]["smoothed"]) == pytest.approx([0.9, 0.8, 0.6])
    with pytest.raises(ValueError, match="no sweep of 'prefix' on 'rt-polarity'; its methods: lora"):
        report.loss_curves(sweeps, "rt-polarity", "prefix", directory=runs)
    full = seeds.with_name("full.yaml")
    (tmp_path / "full_lr.yaml").write_text(f"fixed: {{{base.replace('lora', 'full')}, seed: 0}}\n"
                                           "grid:\n  lr: [1.0e-5, 1.0e-4]\n")
    full.write_text(f"fixed: {{{base.replace('lora', 'full')}, lr: {{best_on_dev: full_lr.yaml}}, seed: 0}}\n")
    row = report.chosen_rates(report.lr_sweeps(str(full), directory=runs)).iloc[0]
    assert (row["paper (Table 8)"], row["learned at"]) == ("—", "")   # Table 8 has no full fine-tuning rate


def test_the_protocol_cost_counts_a_stage_2_seed_0_once(tmp_path):
    from petl.report import cost
    protocol = tmp_path / "protocol"
    protocol.mkdir()
    base = "task: rt-polarity, model: minilm, max_steps: 100, eval_every: 50, bf16: false, variant: lora"
    (protocol / "a_lr.yaml").write_text(f"fixed: {{{base}, seed: 0}}\ngrid:\n  lr: [1.0e-4, 1.0e-3]\n")
    (protocol / "a.yaml").write_text(f"fixed: {{{base}, lr: {{best_on_dev: a_lr.yaml}}}}\ngrid:\n"
                                     "  seed: [0, 1, 2]\n")
    runs = tmp_path / "runs"
    _write(runs, sweep.plan([protocol / "a_lr.yaml"])[0][1], "lora", 0, 70.0, 70.0)
    table = cost.protocol_cost(protocol, runs).set_index("grid")
    assert (table.loc["a.yaml", "points"], table.loc["a_lr.yaml", "points"]) == (2, 2)
    assert table.loc["a_lr.yaml", "with a record"] == 1
    assert table.loc["the whole protocol", "points"] == 4
    _write(runs, sweep.plan([protocol / "a_lr.yaml"])[1][1], "lora", 0, 80.0, 80.0)   # the sweep complete:
    after = cost.protocol_cost(protocol, runs).set_index("grid")                       # seed 0 resolves to its
    assert (after.loc["a_lr.yaml", "with a record"], after.loc["a.yaml", "with a record"]) == (2, 0)   # own run
    # the one record (the template: a 100-step LoRA run on the H200) prices each point left on the GPU
    template = json.loads((TEMPLATES["lora"] / "config.json").read_text())
    assert template["device"]["gpu"], "the template is a GPU record"
    per_point = json.loads((TEMPLATES["lora"] / "metrics.json").read_text())["wall_time_s"]
    assert float(table.loc["a_lr.yaml", "GPU minutes left"]) == pytest.approx(per_point / 60, abs=0.05)
    assert float(table.loc["a.yaml", "GPU minutes left"]) == pytest.approx(2 * per_point / 60, abs=0.05)
    assert table.loc["a.yaml", "CPU hours left"] == ""        # no CPU record of the task in this runs folder
    assert table.loc["the whole protocol", "CPU hours left"] == "0.0 + grids without an estimate"
    (protocol / "b.yaml").write_text(f"fixed: {{{base}, lr: {{best_on_dev: a_lr.yaml}}}}\ngrid:\n  seed: [0]\n")
    only_seed_0 = cost.protocol_cost(protocol, runs).set_index("grid").loc["b.yaml"]   # all of it is the sweep's
    assert (only_seed_0["points"], only_seed_0["GPU minutes left"]) == (0, "0.0")


def test_the_protocol_cost_scales_training_by_steps_and_evaluation_by_the_examples_and_beams_evaluated():
    from petl.report import cost
    record = {"task": "bbc-xsum", "model": "smollm2-135m", "variant": "lora", "device.gpu": "NVIDIA H200",
              "status": "complete", "steps": 400, "eval_every": 200, "num_beams": 4, "eval_num_beams": float("nan"),
              "batch_size": 8, "max_source_length": 256, "bf16": True, "device.torch_threads": 2,
              "num_examples.validation": 100, "num_examples.test": 200, "num_examples.test_xsum": 200,
              "train_time_s": 100.0, "wall_time_s": 160.0}   # 60 s for 2 x 100 dev + 400 test examples, 4 beams each
    runs = pd.DataFrame([record,
                         {**record, "batch_size": 16, "train_time_s": 1000.0, "wall_time_s": 5000.0},  # not preferred
                         {**record, "status": "failed", "train_time_s": 1.0},
                         {**record, "device.gpu": None, "train_time_s": 4000.0, "wall_time_s": 4600.0}])  # a CPU's
    point = {"task": "bbc-xsum", "model": "smollm2-135m", "variant": "lora", "seed": 0, "max_steps": 800,
             "eval_every": 200, "batch_size": 8, "max_source_length": 256, "num_beams": 4, "eval_num_beams": 1,
             "bf16": True, "max_eval_examples": "all", "max_test_examples": "all", "lr": {"best_on_dev": "x.yaml"}}
    per_example = 60.0 / (2 * 100 * 4 + 400 * 4)
    evaluated = 4 * 100 * 1 + (200 + 1001) * 4               # 4 greedy dev evaluations; both test splits whole
    assert cost._seconds_per_point(runs, point, "gpu") == pytest.approx(2 * 100.0 + evaluated * per_example)
    cpu = cost._seconds_per_point(runs, point, "cpu")
    assert cpu == pytest.approx(2 * 4000.0 + evaluated * 600.0 / (2 * 100 * 4 + 400 * 4))
    assert cost._seconds_per_point(runs, {**point, "task": "en-ro-l10n"}, "gpu") is None


# ---------------------------------------------------------------------------------------------------------------
# One run beside its task's baseline (the training notebook's result table)
# ---------------------------------------------------------------------------------------------------------------

def _copy_record(tmp_path: Path, name: str, **metrics) -> "runs.RunRecord":
    from petl import runs
    folder = tmp_path / name
    shutil.copytree(ROOT / "runs" / name, folder, ignore=shutil.ignore_patterns("weights"))
    m = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**m, **metrics}))
    return runs.RunRecord.load(folder)


@pytest.mark.needs_assets("rt-polarity")
def test_a_run_is_shown_beside_the_majority_class_on_its_own_dev_examples_and_said_to_have_learned_or_not(tmp_path):
    from petl import baselines
    name = "rt-polarity_minilm_mam_seed0_150steps_ea4fd28a"       # the notebook's default: 500 of 1,000 dev sentences
    learned = _copy_record(tmp_path, name)
    table, sentence = verdict.beside_baseline(learned)
    majority_500 = baselines.majority_record("rt-polarity", None, 500)["validation"]["accuracy"]
    assert majority_500 != baselines.majority_record("rt-polarity")["validation"]["accuracy"]   # not all of dev
    assert list(table.index) == ["dev", "test", "majority-class dev", "majority-class test"]
    assert table.loc["majority-class dev", "accuracy"] == majority_500
    assert table.loc["dev", "best_step"] == learned.metrics["best_step"]
    assert sentence == f"learned: dev.accuracy {learned.metrics['dev']['accuracy']:.1f} > rt-polarity-majority {majority_500:.1f} + 10"
    _, sentence = verdict.beside_baseline(_copy_record(tmp_path / "stuck", name, dev={"accuracy": majority_500 + 9.0}))
    assert sentence == (f"did not learn (the book's verdicts leave such a run out): dev.accuracy {majority_500 + 9:.1f}, "
                        f"not above {majority_500 + 10:.1f} (rt-polarity-majority {majority_500:.1f} + 10)")


@pytest.mark.needs_assets("ro-l10n")
def test_a_translation_run_below_copying_the_source_did_not_learn():
    from petl import runs
    record = runs.RunRecord.load(ROOT / "runs" / "en-ro-l10n_smollm2-135m_mam_seed0_72steps_5d3b0a3a")
    table, sentence = verdict.beside_baseline(record)
    assert list(table.index) == ["dev", "test", "copy-source dev", "copy-source test"]
    assert sentence.startswith("did not learn") and "test.bleu 8.4, not above 18.7 (en-ro-l10n-copy-200 18.7)" in sentence


@pytest.mark.needs_assets("ro-l10n")
def test_the_notebooks_translation_default_is_the_record_that_passed_copying_the_source():
    from petl import runs
    from petl.train_config import TrainConfig, resolve_run
    default = resolve_run(TrainConfig(variant="mam", task="en-ro-l10n", model="smollm2-135m")).run_id
    assert default == "en-ro-l10n_smollm2-135m_mam_seed0_150steps_ba6f9241"
    _, sentence = verdict.beside_baseline(runs.RunRecord.load(ROOT / "runs" / default))
    assert sentence.startswith("learned") and "test.bleu 22.3" in sentence
