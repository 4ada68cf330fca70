"""The notebook through papermill, and the sweep: validation before running, skip, carry-on past failures,
failure listing, concurrent sweeps on one runs folder. Tiny budgets on a tiny random BERT."""
import json
import os
import re
import subprocess

import papermill
import pytest
import yaml

from petl import runs, sweep
from petl.__main__ import main
from training_helpers import PYTHON, ROOT, TINY, subprocess_env

NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
NB_TINY = {k: v for k, v in TINY.items() if k != "progress"}


rt_polarity = pytest.mark.needs_assets("rt-polarity")  # the tests that train on TINY's task


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("bert")


def _grid(path, fixed, grid=None):
    path.write_text(yaml.safe_dump({"fixed": fixed, **({"grid": grid} if grid else {})}))
    return path


def test_notebook_parameters_cell_lists_the_train_config():
    params = sweep.notebook_parameters(NOTEBOOK)
    assert params["variant"] == "mam" and params["task"] == "rt-polarity" and params["model"] == "minilm"
    assert {"max_steps", "epochs", "lr", "batch_size", "seed", "overrides", "runs_dir", "force",
            "eval_batch_size", "max_source_length", "num_beams"} <= set(params)


@pytest.mark.slow
@rt_polarity
def test_papermill_runs_the_notebook_and_writes_the_record(tiny, tmp_path):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(ROOT), progress_bar=False,
                               parameters={**NB_TINY, "variant": "lora", "model": tiny,
                                           "overrides": {"attn_bn": 4}, "runs_dir": str(tmp_path / "runs")})
    df = runs.load_runs(tmp_path / "runs")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["variant"] == "lora" and row["petl.attn_bn"] == 4 and row["steps"] == 2
    assert 0 <= row["test.accuracy"] <= 100 and row["num_examples.validation"] == 16
    text = out.read_text()
    assert "record:" in text and row["run_id"] in text and "image/png" in text   # path printed, curve drawn


def test_notebook_rejects_a_bad_name_in_its_first_cells(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(ROOT), progress_bar=False,
                                   parameters={"variant": "MAM", "runs_dir": str(tmp_path / "runs")})
    assert e.value.exec_count <= 3                                   # the parameter check, before training
    assert "unknown variant 'MAM'; valid variants:" in e.value.evalue and "mam" in e.value.evalue
    assert not (tmp_path / "runs").exists()


def test_grid_names_are_checked_against_the_notebook_before_anything_runs(tiny, tmp_path):
    bad = _grid(tmp_path / "bad.yaml", {**NB_TINY, "model": tiny}, {"variantt": ["lora"]})
    with pytest.raises(sweep.GridError, match=r"unknown parameter\(s\) \['variantt'\].*takes: .*variant"):
        sweep.sweep([bad], runs_dir=tmp_path / "runs")
    bad_value = _grid(tmp_path / "v.yaml", {**NB_TINY, "model": tiny}, {"variant": ["lora", "loraa"]})
    with pytest.raises(sweep.GridError, match="unknown variant 'loraa'"):
        sweep.sweep([bad_value], runs_dir=tmp_path / "runs")
    assert main(["sweep", str(bad_value), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()                         # nothing started


@pytest.mark.slow
@rt_polarity
def test_sweep_carries_on_past_a_failure_lists_it_and_skips_complete_runs(tiny, tmp_path, capsys):
    grids = tmp_path / "grids"
    grids.mkdir()
    base = {**NB_TINY, "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}}
    _grid(grids / "a.yaml", {**base, "lr": 1.0e30, "max_steps": 4, "eval_every": 4})   # NaN loss
    _grid(grids / "b.yaml", base, {"seed": [0, 1]})
    runs_dir = tmp_path / "runs"
    assert main(["sweep", str(grids), "--runs-dir", str(runs_dir)]) == 1
    out = capsys.readouterr().out
    assert "[1/3]" in out and "[3/3]" in out and "FAILED runs:" in out and "at step" in out
    df = runs.load_runs(runs_dir, include_failed=True).set_index("seed")
    assert sorted(df["status"]) == ["complete", "complete", "failed"]
    for rid in df["run_id"]:                                          # the executed notebook is in the record
        assert json.loads((runs_dir / rid / "train.ipynb").read_text())["cells"]
    # again: the complete runs are skipped, the failed one is tried again (and fails again)
    outcomes = sweep.sweep([grids], runs_dir=runs_dir, log=lambda line: None)
    assert [o.status for o in outcomes] == ["failed", "skipped", "skipped"]
    assert "at step" in outcomes[0].reason
    dry = []
    sweep.sweep([grids], runs_dir=runs_dir, dry_run=True, log=dry.append)
    assert [line.split(" ... ")[1].split()[0] for line in dry] == ["run", "skip", "skip"]


@pytest.mark.slow
@rt_polarity
def test_two_sweeps_on_one_runs_folder_run_each_point_once(tiny, tmp_path):
    grid = _grid(tmp_path / "g.yaml", {**NB_TINY, "variant": "lora", "model": tiny}, {"seed": [0, 1]})
    runs_dir = tmp_path / "runs"
    cmd = [PYTHON, "-m", "petl", "sweep", str(grid), "--runs-dir", str(runs_dir)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [line for out in outs for line in out.splitlines()
             if re.match(r"^\[\d+/2\] ", line) and not line.endswith("running")]
    ran = [line for line in lines if " ... complete" in line]
    assert len(ran) == 2, outs                                        # each point ran exactly once
    assert all((" ... skipped" in line or " ... locked" in line) for line in lines if line not in ran), outs
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        df = runs.load_runs(runs_dir)
    assert sorted(df["seed"]) == [0, 1]
    assert all((runs_dir / rid / "train.ipynb").exists() for rid in df["run_id"]), (outs, [sorted(p.name for p in (runs_dir / r).iterdir()) for r in df["run_id"]])
    assert list((runs_dir / ".locks").iterdir()) == []


@pytest.mark.slow
@rt_polarity
def test_explore_notebook_loads_a_trained_method_and_plots_what_it_learned(tiny, tmp_path):
    from petl.train import TrainConfig, train
    other = train(TrainConfig(**{**TINY, "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}}),
                  runs_dir=tmp_path)
    record = train(TrainConfig(**{**TINY, "variant": "mam", "model": tiny,          # the newest: the one chosen
                                  "overrides": {"attn_bn": 4, "ffn_bn": 8, "mid_dim": 16}}), runs_dir=tmp_path)
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(out), cwd=str(ROOT),
                               progress_bar=False, parameters={"runs_dir": str(tmp_path)})
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    text = json.dumps(outputs)
    assert record.run_id in text and "negative" in text and "positive" in text   # the chosen run, classified
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3             # gates, norms, curve
    gate_cell = next(c for c in nb["cells"] if "petl.inspect.gates(" in "".join(c["source"]))
    assert any("image/png" in o.get("data", {}) for o in gate_cell["outputs"]) and "no prefix" not in text
    side_by_side = json.dumps(next(c for c in nb["cells"] if "petl.disabled(" in "".join(c["source"]))["outputs"])
    assert all(f"({r.run_id[-8:]})" in side_by_side for r in (record, other))   # both methods, on one base
    assert "base model, no method" in side_by_side


@pytest.mark.slow
@pytest.mark.needs_assets("minilm", "rt-polarity")  # the notebook's default run
def test_explore_notebook_works_on_a_fresh_clone_by_training_a_short_run(tmp_path):
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(out), cwd=str(ROOT),
                               progress_bar=False, parameters={"runs_dir": str(tmp_path / "runs"), "quick_steps": 2})
    [record] = runs.load_runs(tmp_path / "runs").itertuples()                 # the short run it trained
    assert record.variant == "mam_glue" and record.steps == 2
    text = out.read_text()
    assert "training a short one" in text and record.run_id in text and "positive" in text


def test_cli_rejects_bad_input_with_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["train", "--variant", "lorra", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown variant 'lorra'; valid variants:") and "Traceback" not in err
    assert main(["train", "--max-steps", "-3", "--runs-dir", str(tmp_path)]) == 2
    assert "max_steps must be a positive integer" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--runs-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("grid: {variant: [lora\n")
    assert main(["sweep", str(tmp_path / "broken.yaml"), "--runs-dir", str(tmp_path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("fixed: {}\ngrids: {variant: [lora]}\n")
    assert main(["sweep", str(tmp_path / "typo.yaml"), "--runs-dir", str(tmp_path)]) == 2
    assert "unknown top-level key(s) ['grids']" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/config.json"))


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    points = sweep.read_grid(_grid(tmp_path / "g.yaml", {"lr": "1e-3"}, {"seed": [0, 1]}))
    assert points == [{"lr": 0.001, "seed": 0}, {"lr": 0.001, "seed": 1}]


def test_runs_command_lists_complete_runs(tmp_path, capsys):
    config = {"run_id": "r1", "train": {"task": "rt-polarity", "model": "minilm", "variant": "lora", "seed": 0},
              "petl": {}}
    metrics = {"status": "complete", "dev": {"accuracy": 70.0}, "test": {"accuracy": 69.5}, "best_step": 3,
               "wall_time_s": 1.0, "tokens_per_s": 10.0, "parameters": {}, "primary_metric": "accuracy"}
    runs.write_record(tmp_path, "r1", config, metrics)
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "69.5" in out


@pytest.mark.slow
@rt_polarity
def test_jobs_run_points_at_once_with_a_share_of_the_cores_each(tiny, tmp_path, capsys):
    grid = _grid(tmp_path / "g.yaml", {**NB_TINY, "variant": "lora", "model": tiny}, {"seed": [0, 1]})
    runs_dir = tmp_path / "runs"
    with pytest.raises(sweep.GridError, match="jobs must be a positive integer"):
        sweep.sweep([grid], runs_dir=runs_dir, jobs=0)
    before = os.environ.get("OMP_NUM_THREADS")
    outcomes = sweep.sweep([grid], runs_dir=runs_dir, jobs=2)
    assert os.environ.get("OMP_NUM_THREADS") == before                               # restored afterwards
    assert sorted(o.status for o in outcomes) == ["complete", "complete"]
    df = runs.load_runs(runs_dir)
    assert sorted(df["seed"]) == [0, 1]
    assert set(df["device.torch_threads"]) == {max(1, (os.cpu_count() or 2) // 2)}   # the kernels' share
