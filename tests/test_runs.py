"""Run records: atomic writing, validation of damaged records, locks. No model needed."""
import json
import os
import subprocess
import sys
import time
import warnings

import pytest

from petl import runs


def _config(rid="t_m_v_seed0_5steps_abcdef12", **train):
    t = {"task": "rt-polarity", "model": "minilm", "variant": "lora", "seed": 0, "max_steps": 5, "lr": 1e-3}
    t.update(train)
    return {"run_id": rid, "train": t, "petl": {"attn_mode": "lora", "attn_bn": 8}}


def _metrics(**kw):
    m = {"status": "complete", "dev": {"accuracy": 71.0}, "test": {"accuracy": 70.5}, "best_step": 5,
         "wall_time_s": 3.0, "tokens_per_s": 1000.0, "parameters": {"trainable": 10, "stored": 10}}
    m.update(kw)
    return m


def _write(tmp_path, name, **kw):
    return runs.write_record(tmp_path, name, _config(name), _metrics(**kw), [{"step": 1, "loss": 0.7}])


def test_run_id_names_the_run_and_hashes_the_config():
    a = {"train": {"task": "rt-polarity", "model": "facebook/bart-large", "variant": "mam", "seed": 1,
                   "max_steps": 100, "epochs": None, "runs_dir": "x"}, "petl": {"attn_bn": 30}}
    rid = runs.run_id(a)
    assert rid.startswith("rt-polarity_facebook--bart-large_mam_seed1_100steps_")
    b = json.loads(json.dumps(a))
    b["train"]["runs_dir"] = "elsewhere"               # not part of what the run computes
    assert runs.run_id(b) == rid
    b["petl"]["attn_bn"] = 16                          # an override changes the hash
    assert runs.run_id(b) != rid


def test_write_and_load_roundtrip(tmp_path):
    _write(tmp_path, "a_run")
    df = runs.load_runs(tmp_path)
    assert list(df["run_id"]) == ["a_run"]
    row = df.iloc[0]
    assert row["test.accuracy"] == 70.5 and row["variant"] == "lora" and row["petl.attn_bn"] == 8
    assert (tmp_path / "a_run" / "history.csv").read_text().splitlines() == ["step,loss", "1,0.7"]
    assert runs.is_complete(tmp_path, "a_run") and not runs.is_complete(tmp_path, "other")


def test_failed_runs_excluded_unless_asked(tmp_path):
    _write(tmp_path, "ok")
    runs.write_record(tmp_path, "bad", _config("bad"), {"status": "failed", "reason": "loss became nan at step 3",
                                                       "failed_step": 3})
    assert list(runs.load_runs(tmp_path)["run_id"]) == ["ok"]
    df = runs.load_runs(tmp_path, include_failed=True)
    assert set(df["run_id"]) == {"ok", "bad"}
    assert df.set_index("run_id").loc["bad", "failed_step"] == 3
    assert not runs.is_complete(tmp_path, "bad")


@pytest.mark.parametrize("damage, expect", [
    (lambda d: (d / "metrics.json").write_text('{"status": "complete", "dev": {"accu'), "unreadable JSON"),
    (lambda d: (d / "metrics.json").unlink(), "missing"),
    (lambda d: _edit(d / "metrics.json", lambda m: m.pop("test")), "missing field 'test'"),
    (lambda d: _edit(d / "metrics.json", lambda m: m["test"].update(accuracy="70.5")), "not a finite number"),
    (lambda d: (d / "metrics.json").write_text(
        (d / "metrics.json").read_text().replace("70.5", "NaN")), "not a finite number"),
    (lambda d: _edit(d / "config.json", lambda c: c["train"].pop("variant")), "train.variant"),
    (lambda d: _edit(d / "metrics.json", lambda m: m.update(status="running")), "status"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "JSON object"),
])
def test_damaged_record_is_skipped_with_a_warning_naming_the_file(tmp_path, damage, expect):
    _write(tmp_path, "good")
    bad = _write(tmp_path, "damaged")
    damage(bad)
    with pytest.warns(UserWarning, match=expect) as caught:
        df = runs.load_runs(tmp_path)
    assert list(df["run_id"]) == ["good"]
    assert any(str(bad) in str(w.message) for w in caught)
    assert runs.record_status(tmp_path, "damaged") == "damaged"


def _edit(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_hidden_folders_are_never_records(tmp_path):
    _write(tmp_path, "ok")
    (tmp_path / ".tmp-half-123").mkdir()
    (tmp_path / ".tmp-half-123" / "config.json").write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(runs.load_runs(tmp_path)["run_id"]) == ["ok"]


def test_nan_metric_cannot_be_written(tmp_path):
    with pytest.raises(ValueError):
        runs.write_record(tmp_path, "x", _config("x"), _metrics(test={"accuracy": float("nan")}))
    assert not (tmp_path / "x").exists()


def test_replacing_a_record_keeps_it_whole(tmp_path):
    _write(tmp_path, "r", test={"accuracy": 1.0})
    _write(tmp_path, "r", test={"accuracy": 2.0})
    assert runs.load_runs(tmp_path)["test.accuracy"].tolist() == [2.0]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_lock_is_exclusive_and_a_killed_holders_lock_is_taken_over(tmp_path):
    code = ("import sys, time; from petl import runs\n"
            "with runs.run_lock(sys.argv[1], 'r'):\n    print('HELD', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(runs.RunLocked, match="live process"):
            with runs.run_lock(tmp_path, "r"):
                pass
    finally:
        holder.kill()                                   # SIGKILL: the lock file stays behind
        holder.wait()
    assert (tmp_path / ".locks" / "r.lock").exists()
    with runs.run_lock(tmp_path, "r") as path:          # stale (its process is gone): taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_lock_of_an_ancestor_counts_as_ours(tmp_path):
    with runs.run_lock(tmp_path, "r"):
        code = "import sys; from petl import runs\nwith runs.run_lock(sys.argv[1], 'r'):\n    print('INSIDE')\n"
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert out.stdout.strip() == "INSIDE", out.stderr
        assert (tmp_path / ".locks" / "r.lock").exists()    # the child did not release the parent's lock


def test_clean_stale_temp_keeps_live_ones(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    live = tmp_path / f".tmp-r-{p.pid}"
    live.mkdir()
    dead = tmp_path / ".tmp-r-999999999"
    dead.mkdir()
    try:
        removed = runs.clean_stale_temp(tmp_path)
        assert removed == [dead] and live.exists()
    finally:
        p.kill()
        p.wait()
    time.sleep(0.1)


def test_records_of_changed_method_code_are_superseded():
    import petl
    from petl.runs import config_hash, superseded
    old_houlsby = {"petl": {k: v for k, v in petl.resolve("houlsby").to_dict().items()
                            if k not in petl.config.LATER_FIELDS}}
    assert superseded(old_houlsby)                                   # adapters changed: the old record is out
    assert not superseded(dict(old_houlsby, computation=2))
    old_lora = {"petl": {k: v for k, v in petl.resolve("lora").to_dict().items() if k not in petl.config.LATER_FIELDS}}
    assert not superseded(old_lora)                                  # LoRA did not change: its records stay
    new_lora = {"train": {"task": "t"}, "petl": petl.resolve("lora").to_dict(), "computation": 1}
    assert config_hash(new_lora) == config_hash(dict(old_lora, train={"task": "t"}))  # ... under the same id
    new_houlsby = {"train": {"task": "t"}, "petl": petl.resolve("houlsby").to_dict(), "computation": 2}
    assert config_hash(new_houlsby) != config_hash(dict(old_houlsby, train={"task": "t"}))
    mh_pa = {"train": {"task": "t"}, "petl": petl.resolve("mh_pa").to_dict()}
    assert superseded(dict(mh_pa, computation=2)) and not superseded(dict(mh_pa, computation=3))  # its query changed
    assert config_hash(dict(mh_pa, computation=2)) != config_hash(dict(mh_pa, computation=3))


def test_a_copy_without_git_records_the_commit_it_is_told(tmp_path, monkeypatch):
    import subprocess as sp
    from petl import runs as r

    def no_git(*args, **kwargs):
        raise sp.CalledProcessError(128, "git")

    monkeypatch.setattr(r.subprocess, "run", no_git)
    monkeypatch.delenv(r.GIT_COMMIT_VAR, raising=False)
    assert r.git_commit() == {"commit": None, "dirty": None}
    monkeypatch.setenv(r.GIT_COMMIT_VAR, "abc123")
    assert r.git_commit() == {"commit": "abc123", "dirty": None, "commit_from": "PETL_GIT_COMMIT"}


def test_a_record_names_the_cpu_model_and_its_bf16_and_vector_features():
    """Two machines of one architecture ('x86_64') differ in the kernels torch picks: the record says which."""
    info = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\n"
            "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert runs.cpu_model(info) == {"cpu_model": "AMD EPYC 9R14", "cpu_features": ["avx2", "avx512f", "avx512_bf16"]}
    assert runs.cpu_model("flags : sse2 avx2\n")["cpu_features"] == ["avx2"]
    here = runs.device_info()
    assert isinstance(here["cpu_model"], str) and here["cpu_model"]
    assert here["cpu_features"] is None or set(here["cpu_features"]) <= set(runs.CPU_FEATURES)
