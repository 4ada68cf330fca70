"""petl.report.traces: the traced runs' histories as the chapter reads them (synthetic histories, so every number
is known): the spread relative to step 1, the step it collapses at, and the sentences that say so."""
import pandas as pd
import pytest

from petl.report import traces


def _run(tmp_path, name, seed, lr, learned, spread_end, gates_end):
    """A traced run of a 2-layer prefix model: steps 1..30, traced at 1, 10, 20, 30; its spread goes linearly from
    1 (step 1) to `spread_end` (relative), its gates from 0.2 to `gates_end`."""
    rows = []
    for step in range(1, 31):
        row = {"step": step, "loss": 0.7 - 0.001 * step, "lr": lr, "grad_norm": 1.0, "tokens": 100}
        if step in (1, 10, 20, 30):
            t = (step - 1) / 29
            row.update({"gate_encoder_l0": 0.2 + t * (gates_end[0] - 0.2), "gate_encoder_l1": 0.2 + t * (gates_end[1] - 0.2),
                        "spread_l0": 0.1, "spread_l1": 0.2 * (1 + t * (spread_end - 1)),
                        "spread_l2": 0.4 * (1 + t * (spread_end - 1))})
        rows.append(row)
    folder = tmp_path / name
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "history.csv", index=False)
    return {"run_id": name, "name": f"lr {lr:g}, seed {seed}", "learned": learned, "path": str(folder)}


def test_history_facts_and_layer_table(tmp_path):
    runs = pd.DataFrame([_run(tmp_path, "a", 0, 5e-4, True, 1.2, (0.25, 0.3)),
                         _run(tmp_path, "b", 3, 5e-4, False, 0.1, (0.4, 0.01))])
    h = traces.trace_history(runs)
    assert h["step"].tolist() == [1, 10, 20, 30] * 2
    b = h[h["run_id"] == "b"]
    assert b["spread"].iloc[0] == pytest.approx(1.0) and b["spread"].iloc[-1] == pytest.approx(0.1)
    assert b["gate"].iloc[-1] == pytest.approx((0.4 + 0.01) / 2)
    assert b["loss"].iloc[1] == pytest.approx(sum(0.7 - 0.001 * s for s in range(1, 11)) / 10)  # 10-step mean
    # relative spread 1 - 0.9 * (step - 1) / 29 first falls under 0.5 at step 20 (0.41), not at 10 (0.72)
    assert traces.collapse_step(b) == 20 and traces.collapse_step(h[h["run_id"] == "a"]) is None
    facts = traces.trace_facts(h)
    assert facts["counts"] == "2 traced runs, 1 of which learned"
    assert facts["stuck"] == ("lr 0.0005, seed 3: by step 20 its spread had fallen under half of its start, and at "
                              "step 30 it was 0.10 of it; λ was 0.40 at layer 0 and 0.010 to 0.010 at the others")
    assert facts["learned"] == ("the lowest mean spread any of them reached was 1.00 of its start, and at their last "
                                "step their gates were 0.25 to 0.30")
    table = traces.layer_table(h)
    assert list(table.columns) == ["run", "learned", "step", "λ 0", "λ 1", "spread 0", "spread 1"]
    assert table["learned"].tolist() == [False, True] and table["run"].tolist() == ["lr 0.0005, seed 3",
                                                                                  "lr 0.0005, seed 0"]
    assert table.loc[0, "spread 1"] == pytest.approx(0.1) and table.loc[0, "step"] == 30


def test_no_traced_run_says_so():
    empty = traces.trace_history(pd.DataFrame(columns=["run_id", "name", "learned", "path"]))
    assert empty.empty and traces.layer_table(empty).empty
    assert traces.trace_facts(empty)["counts"] == "no traced run"
    traces.trace_figure(empty)


def test_traced_runs_reads_the_traces_folder_and_names_runs_by_what_differs(tmp_path):
    import json
    import shutil

    from petl import sweep
    from petl.report.selection import ROOT
    template = ROOT / "runs" / "rt-polarity_minilm_prefix_seed0_300steps_3d3a3921"
    grid = tmp_path / "grid.yaml"
    grid.write_text("fixed: {variant: prefix, lr: 5.0e-4, trace_every: 10, task: rt-polarity, model: minilm,\n"
                    "        max_steps: 300, eval_every: 100, bf16: false, max_eval_examples: all,\n"
                    "        overrides: {attn_bn: 16, ffn_bn: 16}}\n"
                    "grid:\n  seed: [0, 3]\n  warmup: [0.06, 0.2]\n")
    runs = tmp_path / "runs"
    for point, rid in sweep.plan([str(grid)]):
        config = json.loads((template / "config.json").read_text())
        metrics = json.loads((template / "metrics.json").read_text())
        config["run_id"] = rid
        config["train"].update(seed=point["seed"], warmup=point["warmup"], trace_every=10)
        stuck = point["seed"] == 3 and point["warmup"] == 0.06
        metrics.update(dev={"accuracy": 58.6 if stuck else 78.0}, test={"accuracy": 60.2 if stuck else 79.0})
        folder = runs / traces.FOLDER / rid
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (runs / "baselines").mkdir()
    shutil.copy(ROOT / "runs" / "baselines" / "rt-polarity-majority.json", runs / "baselines")
    table = traces.traced_runs(str(grid), directory=runs)
    assert table["name"].tolist() == ["lr 0.0005, seed 0, warm-up 0.06", "lr 0.0005, seed 0, warm-up 0.2",
                                      "lr 0.0005, seed 3, warm-up 0.06", "lr 0.0005, seed 3, warm-up 0.2"]
    assert table["learned"].tolist() == [True, True, False, True]
    assert table.loc[2, "why"].startswith("seed 3: dev.accuracy 58.6, not above")
    assert traces.traced_runs(str(grid), directory=tmp_path / "elsewhere").empty  # no traces folder: no run


@pytest.mark.needs_assets("rt-polarity")
def test_a_traced_run_on_part_of_dev_is_judged_against_the_majority_of_those_sentences(tmp_path):
    """The notebook's default budget scores dev on its first 500 sentences; runs/baselines holds the majority of
    all 1,000, which sets no bar there, so the table scores the majority class on those 500 itself."""
    import json
    import shutil

    from petl import baselines, sweep
    from petl.report.selection import ROOT
    template = ROOT / "runs" / "rt-polarity_minilm_mam_seed0_150steps_ea4fd28a"  # 500 dev sentences
    grid = tmp_path / "grid.yaml"
    grid.write_text("fixed: {variant: mam, trace_every: 10, task: rt-polarity, model: minilm, max_steps: 150,\n"
                    "        eval_every: 50, bf16: false, max_eval_examples: 500, seed: 0}\n"
                    "grid:\n  lr: [1.0e-4, 1.0e-3]\n")
    majority_500 = baselines.majority_record("rt-polarity", None, 500)["validation"]["accuracy"]
    runs = tmp_path / "runs"
    for point, rid in sweep.plan([str(grid)]):
        config = json.loads((template / "config.json").read_text())
        metrics = json.loads((template / "metrics.json").read_text())
        assert metrics["num_examples"]["validation"] == 500
        config["run_id"] = rid
        config["train"].update(lr=point["lr"], trace_every=10)
        metrics["dev"] = {"accuracy": majority_500 if point["lr"] == 1.0e-3 else majority_500 + 20}
        folder = runs / traces.FOLDER / rid
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (runs / "baselines").mkdir()
    shutil.copy(ROOT / "runs" / "baselines" / "rt-polarity-majority.json", runs / "baselines")  # all 1,000
    table = traces.traced_runs(str(grid), directory=runs)
    assert table["name"].tolist() == ["lr 0.0001, seed 0", "lr 0.001, seed 0"]
    assert table["learned"].tolist() == [True, False]
    assert table.loc[1, "why"] == (f"seed 0: dev.accuracy {majority_500:.1f}, not above {majority_500 + 10:.1f} "
                                   f"(rt-polarity-majority {majority_500:.1f} + 10)")
