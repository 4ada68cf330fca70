"""python -m petl sweep GRID --executor slurm, against a real one-node SLURM (scripts/slurm_one_node.sh; .ci/run
starts it). Elsewhere the test says why it skips."""
import shutil
import subprocess

import pytest
import yaml

from petl import runs, sweep
from training_helpers import TINY


def _slurm_up() -> str | None:
    """None when a SLURM node here is idle, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client here (sudo bash scripts/slurm_one_node.sh starts a one-node cluster)"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 10 s"
    if state.returncode != 0 or not state.stdout.strip().startswith(("idle", "mix", "alloc")):
        return f"no SLURM node is up ({(state.stderr or state.stdout).strip()[:200]}); scripts/slurm_one_node.sh"
    return None


@pytest.mark.slow
@pytest.mark.needs_assets("rt-polarity")
@pytest.mark.skipif(_slurm_up() is not None, reason=str(_slurm_up()))
def test_a_grid_runs_as_a_slurm_job_array_and_a_second_sweep_skips_it(tmp_path, tiny_dir):
    tiny = tiny_dir("bert")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "fixed": {**{k: v for k, v in TINY.items() if k != "progress"}, "variant": "lora", "model": tiny,
                  "overrides": {"attn_bn": 4}},
        "grid": {"seed": [0, 1]},
        "slurm": {"cpus_per_task": 1, "time": 20}}))
    lines = []
    outcomes = sweep.sweep([grid], runs_dir=tmp_path / "runs", executor="slurm", log=lines.append)
    assert [o.status for o in outcomes] == ["complete", "complete"], (outcomes, lines)
    assert any("SLURM job array" in line for line in lines)
    for o in outcomes:
        assert runs.record_status(tmp_path / "runs", o.run_id) == "complete"
        assert (tmp_path / "runs" / o.run_id / "train.ipynb").exists()        # the notebook ran there, as locally
    again = sweep.sweep([grid], runs_dir=tmp_path / "runs", executor="slurm", log=lambda *_: None)
    assert [o.status for o in again] == ["skipped", "skipped"]


def test_unknown_slurm_resources_are_refused_before_anything_runs(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"fixed": {"variant": "lora"}, "slurm": {"gpus": 1}}))
    with pytest.raises(sweep.GridError, match=r"unknown slurm resource\(s\) \['gpus'\]; valid: partition, time"):
        sweep.read_grid(grid)
