"""A killed run resumes from its checkpoint and computes what the uninterrupted run computes, bit for bit."""
import json
import signal
import subprocess

import pytest

from petl import checkpoints, runs
from petl.train import Batches, TrainConfig, resolve_run
from training_helpers import PYTHON, ROOT, TINY, cli_args, subprocess_env

PARAMS = {**TINY, "variant": "lora", "overrides": {"attn_bn": 4, "lora_dropout": 0.1}, "max_steps": 6,
          "eval_every": 3, "checkpoint_every": 2}


@pytest.fixture
def tiny(tiny_dir):
    return tiny_dir("bert")


def _train(tiny, runs_dir, **env):
    return subprocess.Popen([PYTHON, "-m", "petl", "train", *cli_args(**PARAMS, model=tiny), "--runs-dir",
                             str(runs_dir)], env=subprocess_env(**env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(flag, proc):
    import os
    import time
    t0 = time.time()
    while not os.path.exists(flag):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "never reached the pause point"
        time.sleep(0.2)


@pytest.fixture
def one_thread():
    """The killed process runs with OMP_NUM_THREADS=1 (subprocess_env): the in-process runs do too, so that the
    three compute with the same kernels."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.needs_assets("rt-polarity")
def test_a_run_killed_after_a_checkpoint_resumes_there_and_ends_as_the_uninterrupted_run(tiny, tmp_path, one_thread,
                                                                                         capsys):
    from petl.train import train
    config = TrainConfig(**PARAMS, model=tiny)
    rid = resolve_run(config).run_id
    train(config, runs_dir=tmp_path / "whole")

    flag = tmp_path / "paused"
    killed = _train(tiny, tmp_path / "resumed", PETL_PAUSE_AT="checkpoint-4", PETL_PAUSE_FILE=flag)
    _wait_for(flag, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    folder = checkpoints.run_folder(tmp_path / "resumed", rid)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002", "step-000004"]   # the newest two
    assert runs.record_status(tmp_path / "resumed", rid) is None                      # a checkpoint is no record
    assert (folder / "step-000004" / "history.csv").read_text().count("\n") == 5      # header + 4 steps, readable

    capsys.readouterr()
    assert train(config, runs_dir=tmp_path / "resumed").status == "complete"
    out = capsys.readouterr().out
    assert "resumed from" in out and "(step 4 of 6)" in out, out[-3000:]
    a = (tmp_path / "whole" / rid / "history.csv").read_text()
    b = (tmp_path / "resumed" / rid / "history.csv").read_text()
    assert a == b                                                    # every loss, lr and gradient norm, bit for bit
    metrics = [json.loads((tmp_path / d / rid / "metrics.json").read_text()) for d in ("whole", "resumed")]
    assert metrics[0]["dev"] == metrics[1]["dev"] and metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["best_step"] == metrics[1]["best_step"] and metrics[0]["train_tokens"] == metrics[1]["train_tokens"]
    assert not folder.exists()                                       # the record is written: checkpoints gone


def test_batches_continue_from_a_position_exactly():
    import torch
    from torch.utils.data import DataLoader
    g = torch.Generator().manual_seed(3)
    loader = DataLoader(list(range(10)), batch_size=3, shuffle=True, generator=g, drop_last=True)
    straight = Batches(loader, g)
    first = [next(straight).tolist() for _ in range(4)]                # into the second epoch
    position = straight.position()
    rest = [next(straight).tolist() for _ in range(5)]
    g2 = torch.Generator().manual_seed(99)                              # a fresh process: another state
    loader2 = DataLoader(list(range(10)), batch_size=3, shuffle=True, generator=g2, drop_last=True)
    again = Batches(loader2, g2, **position)
    assert position["epoch"] == 1 and position["taken"] == 1 and first[3] != first[0]
    assert [next(again).tolist() for _ in range(5)] == rest


def test_an_epoch_without_a_batch_is_an_error_not_an_endless_loop():
    with pytest.raises(RuntimeError, match="no batch in a whole epoch"):
        next(Batches([]))
    batches = Batches([1, 2])
    assert [next(batches) for _ in range(5)] == [1, 2, 1, 2, 1]


def test_clean_removes_checkpoints_of_complete_runs_and_half_written_ones_of_dead_processes(tmp_path):
    done, going = tmp_path / ".checkpoints" / "done_run", tmp_path / ".checkpoints" / "going_run"
    (done / "step-000002").mkdir(parents=True)
    (going / "step-000002").mkdir(parents=True)
    (going / ".tmp-step-000004-999999999").mkdir()
    runs.write_record(tmp_path, "done_run", {"run_id": "done_run", "train": {"task": "t", "model": "m",
                      "variant": "v", "seed": 0}, "petl": {}}, {"status": "complete", "dev": {"accuracy": 1.0}, "test": {"accuracy": 1.0},
                      "best_step": 1, "wall_time_s": 1.0, "tokens_per_s": 1.0, "parameters": {}})
    removed = runs.clean_leftovers(tmp_path)
    assert done in removed and going / ".tmp-step-000004-999999999" in removed
    assert not done.exists() and (going / "step-000002").exists()            # a run still to resume keeps its own
