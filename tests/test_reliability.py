"""Reliability: no hang, no result from damaged files, no finished run lost, bad input refused in one line,
leftovers cleaned. Tiny budgets on a tiny random BERT; faults injected where the machine cannot make them (a
full disk)."""
import errno
import json
import os
import subprocess
import sys

import papermill
import pytest
import torch
import yaml

import petl
from petl import runs, sweep
from petl.__main__ import main
from petl.train import RunConfigError, TrainConfig, notebook_config, resolve_run, train
from conftest import tiny_model
from training_helpers import ROOT, TINY

NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
rt_polarity = pytest.mark.needs_assets("rt-polarity")  # the tests that train on TINY's task


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("bert")


def _cfg(tiny, **kw):
    return TrainConfig(**{**TINY, "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}, **kw})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- no hang -----------------------------------------------------------------------------------------------

@rt_polarity
def test_a_training_set_smaller_than_one_batch_fails_at_once_naming_the_fix(tiny, tmp_path):
    config = _cfg(tiny, max_train_examples=4, batch_size=8)
    with pytest.raises(RunConfigError, match=r"4 examples \(max_train_examples=4\), fewer than one batch "
                                             r"\(batch_size=8\): set batch_size to at most 4"):
        train(config, runs_dir=tmp_path)
    assert runs.record_status(tmp_path, resolve_run(config).run_id) is None
    assert main(["train", "--model", tiny, "--variant", "lora", "--max-steps", "2", "--max-train-examples", "4",
                 "--batch-size", "8", "--runs-dir", str(tmp_path)]) == 2


@pytest.mark.slow
@rt_polarity
def test_the_sweep_stops_a_point_over_its_time_limit(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PETL_PAUSE_AT", "train")          # the kernel would block there for ever
    monkeypatch.setenv("PETL_PAUSE_FILE", str(tmp_path / "paused"))
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"fixed": {**{k: v for k, v in TINY.items() if k != "progress"},
                                              "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}}}))
    [outcome] = sweep.sweep([grid], runs_dir=tmp_path / "runs", timeout=20, log=lambda *_: None)
    assert outcome.status == "failed" and "per-point limit of 20 s" in outcome.reason
    assert runs.record_status(tmp_path / "runs", outcome.run_id) is None


# ---- no result from damaged files ----------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = petl.apply(tiny_model("bert"), "lora", attn_bn=4)
    with torch.no_grad():
        for p in petl.core.modules_of(model).parameters():
            p.add_(0.01)
    return model, petl.save(model, tmp_path / "method")


def test_save_stores_a_checksum_that_load_checks(saved):
    model, folder = saved
    meta = json.loads((folder / "petl_config.json").read_text())
    assert meta["format"] == 2 and len(meta["weights_sha256"]) == 64
    fresh = petl.load(tiny_model("bert"), folder)
    assert all(torch.equal(a, b) for a, b in zip(petl.core.modules_of(fresh).state_dict().values(),
                                                 petl.core.modules_of(model).state_dict().values()))
    weights = folder / "petl_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)          # zeroed inside, same size
    weights.write_bytes(bytes(data))
    target = tiny_model("bert")
    with pytest.raises(ValueError, match=r"petl_weights.safetensors is damaged: its sha256 differs"):
        petl.load(target, folder)
    assert petl.core.config_of(target) is None                       # the model is left as it was


@pytest.mark.parametrize("version", [99, "one", None, True])
def test_load_refuses_a_format_it_does_not_know(saved, version):
    _, folder = saved
    meta = json.loads((folder / "petl_config.json").read_text())
    meta["format"] = version
    if version is None:
        del meta["format"]
    (folder / "petl_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format .* is not one this petl reads \(1, 2\)"):
        petl.load(tiny_model("bert"), folder)


def test_a_folder_of_format_1_loads_with_a_warning_and_a_truncated_one_is_refused(saved):
    _, folder = saved
    meta = json.loads((folder / "petl_config.json").read_text())
    meta["format"] = 1
    del meta["weights_sha256"]
    (folder / "petl_config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="without a checksum"):
        petl.load(tiny_model("bert"), folder)
    weights = folder / "petl_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="cannot be read as safetensors .* truncated"):
        petl.load(tiny_model("bert"), folder)


# ---- no finished run lost --------------------------------------------------------------------------------------

@rt_polarity
def test_weights_live_in_their_record_and_git_ignores_them(tiny, tmp_path):
    record = train(_cfg(tiny), runs_dir=tmp_path / "runs")
    assert record.weights_path == record.path / "weights"
    assert (record.weights_path / "petl_config.json").is_file()
    petl.load(petl.models.load_model(tiny, petl.tasks.get_task("rt-polarity"))[0], record.weights_path)
    ignored = subprocess.run(["git", "check-ignore", "-q", f"runs/{record.run_id}/weights/petl_weights.safetensors"],
                             cwd=ROOT)
    assert ignored.returncode == 0


def test_an_unwritable_runs_folder_fails_before_training(tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(runs.RunsDirError, match=r"cannot write run records to .*a-file/runs .*choose another"):
        train(_cfg(tiny), runs_dir=blocker / "runs")
    assert main(["train", "--model", tiny, "--variant", "lora", "--max-steps", "2",
                 "--runs-dir", str(blocker / "runs")]) == 2


@rt_polarity
def test_a_full_disk_while_saving_weights_keeps_the_record_as_failed_with_its_metrics(tiny, tmp_path,
                                                                                     monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    normal = train(_cfg(tiny), runs_dir=tmp_path / "normal")
    monkeypatch.setattr(petl.io, "save_file", full)
    tmp_path = tmp_path / "full"
    record = train(_cfg(tiny), runs_dir=tmp_path)
    assert record.status == "failed" and "No space left on device" in record.metrics["reason"]
    assert "metrics are kept" in record.metrics["reason"] and record.metrics["weights"] is None
    kept = ("dev", "test", "best_step", "steps", "num_examples", "parameters")
    assert {k: record.metrics[k] for k in kept} == {k: normal.metrics[k] for k in kept}   # the run's own numbers
    assert not (record.path / "weights").exists() and record.weights_path is None
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_a_full_disk_after_the_weights_drops_the_weights_not_the_record(tmp_path, monkeypatch):
    real, calls = runs._write_record_files, []

    def fills_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(runs, "_write_record_files", fills_once)
    config = {"run_id": "r", "train": {"task": "t", "model": "m", "variant": "v", "seed": 0}, "petl": {}}
    metrics = {"status": "complete", "dev": {"a": 1.0}, "test": {"a": 2.0}, "best_step": 1, "wall_time_s": 1.0,
               "tokens_per_s": 1.0, "parameters": {}, "weights": "weights"}
    path = runs.write_record(tmp_path, "r", config, metrics,
                             weights=lambda folder: (folder.mkdir(), (folder / "w").write_bytes(b"x")))
    _, written = runs.read_record(path)
    assert written["status"] == "failed" and written["test"] == {"a": 2.0} and not (path / "weights").exists()


# ---- bad input refused -------------------------------------------------------------------------------------

def test_the_notebook_takes_exactly_the_train_config_and_rejects_other_names(tmp_path):
    import dataclasses
    params = sweep.notebook_parameters(NOTEBOOK)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert list(params) == [*fields, "runs_dir", "force"]
    assert {k: params[k] for k in fields} == fields                # the same defaults
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(ROOT), progress_bar=False,
                                   parameters={"max_step": 2, "runs_dir": str(tmp_path / "runs")})
    assert e.value.exec_count <= 3
    assert "unknown notebook parameter(s) 'max_step' (did you mean 'max_steps'?)" in e.value.evalue
    assert not (tmp_path / "runs").exists()


def test_overrides_arrive_as_a_mapping_or_as_a_json_or_yaml_string():
    for value in ({"attn_bn": 16}, '{"attn_bn": 16}', "{attn_bn: 16}"):
        config, runs_dir, force = notebook_config({"variant": "lora", "overrides": value, "runs_dir": "x"})
        assert config.overrides == {"attn_bn": 16} and (runs_dir, force) == ("x", False)
    with pytest.raises(ValueError, match=r"overrides='attn_bn=16' is not a mapping; .* -y 'overrides:"):
        notebook_config({"overrides": "attn_bn=16"})


@pytest.mark.parametrize("content, message", [
    (b"fixed: {variant: lora, variant: mam}\n", "key 'variant' is given twice"),
    (b"grid:\n  seed: [0]\n  seed: [1]\n", "key 'seed' is given twice"),
    (b"", "is empty"),
    (b"# nothing\n", "is empty"),
    (b"grid: {}\n", "sets no parameter"),
    (b"fixed: {variant: lora}\ngrid: {}\n", "'grid' is empty"),
    (b"fixed: {variant: \xe9t\xe9}\n", "is not UTF-8 text"),
])
def test_bad_grid_files_end_in_one_line_and_exit_code_2(tmp_path, capsys, content, message):
    grid = tmp_path / "g.yaml"
    grid.write_bytes(content)
    assert main(["sweep", str(grid), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


# ---- leftovers and locks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2]", "null", '{"pid": "x", "host": 1}', "", "{half"])
def test_a_damaged_lock_is_reported_and_taken_over(tmp_path, content):
    lock = tmp_path / ".locks" / "r.lock"
    lock.parent.mkdir()
    lock.write_text(content)
    with pytest.raises(runs.RunLocked, match="delete that file or wait"):   # fresh: perhaps being written
        with runs.run_lock(tmp_path, "r"):
            pass
    os.utime(lock, (1, 1))                                                    # old: damaged for good
    with pytest.warns(UserWarning, match="damaged lock file"), runs.run_lock(tmp_path, "r"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_one_command_cleans_every_leftover_of_dead_processes(tmp_path, capsys):
    runs_dir, dead = tmp_path / "runs", _dead_pid()
    leftovers = [runs_dir / f".tmp-r-{dead}", runs_dir / f".trash-r-{dead}-1", runs_dir / f".probe-{dead}-1",
                 tmp_path / ".weights" / f".tmp-r-{dead}"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "f").write_bytes(b"x" * 10)
    notebooks = runs_dir / ".notebooks"
    notebooks.mkdir()
    (notebooks / f"r-{dead}.ipynb").write_text("{}")
    (notebooks / f"r-{os.getpid()}.ipynb").write_text("{}")               # a live sweep's: kept
    locks = runs_dir / ".locks"
    locks.mkdir()
    (locks / "dead.lock").write_text(json.dumps({"pid": dead, "start": 1.0, "host": os.uname().nodename}))
    (locks / "damaged.lock").write_text("[1, 2]")
    os.utime(locks / "damaged.lock", (1, 1))
    with pytest.warns(UserWarning, match="damaged lock"):
        assert main(["sweep", "--clean", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("removed ") == 7
    assert not any(p.exists() for p in leftovers) and not (locks / "dead.lock").exists()
    assert sorted(p.name for p in notebooks.iterdir()) == [f"r-{os.getpid()}.ipynb"]
    assert main(["sweep", "--clean", "--runs-dir", str(runs_dir)]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_a_lock_of_another_host_is_stale_once_its_heartbeat_stops(tmp_path, monkeypatch):
    import time
    locks = tmp_path / ".locks"
    locks.mkdir()
    (locks / "r.lock").write_text(json.dumps({"pid": 1, "start": 1.0, "host": "elsewhere"}))
    with pytest.raises(runs.RunLocked, match=r"process 1 on host 'elsewhere', heartbeat \d+ s ago \(stale after"):
        with runs.run_lock(tmp_path, "r"):
            pass
    old = time.time() - runs.LOCK_STALE_S - 60
    os.utime(locks / "r.lock", (old, old))                          # its host went silent
    with pytest.warns(UserWarning, match="taking over the lock of process 1 on host 'elsewhere'"):
        with runs.run_lock(tmp_path, "r"):
            pass
    (locks / "s.lock").write_text(json.dumps({"pid": 1, "start": 1.0, "host": "elsewhere"}))
    os.utime(locks / "s.lock", (old, old))
    with pytest.warns(UserWarning, match="removing the stale lock of process 1 on host 'elsewhere'"):
        assert locks / "s.lock" in runs.clean_leftovers(tmp_path)


def test_a_held_lock_beats(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(runs, "LOCK_HEARTBEAT_S", 0.05)
    with runs.run_lock(tmp_path, "r") as path:
        os.utime(path, (1, 1))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5               # touched again while held
    assert not path.exists()
