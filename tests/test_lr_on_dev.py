"""A learning rate chosen on the dev set (``lr: {best_on_dev: GRID}``): the choice (mean over seeds, ties, failed
runs), waiting points, the refused grids, the sweep's second planning round, the book's pending text, and the book
grids' run ids left as they were. Fake records in a tmp runs folder: nothing trains."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from petl import runs, sweep
from petl.__main__ import main
from petl.report import selection

ROOT = Path(__file__).resolve().parent.parent
BASE = {"task": "rt-polarity", "model": "minilm", "max_steps": 10, "eval_every": 5}
LRS = [1.0e-4, 3.0e-4, 1.0e-3]


def _grid(path: Path, fixed: dict, grid: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"fixed": fixed, **({"grid": grid} if grid else {})}))
    return path


def _lr_grid(folder: Path, lrs=LRS, seeds=(0, 1), variants=("lora",), **fixed) -> Path:
    return _grid(folder / "lr_sweep.yaml", {**BASE, **fixed},
                 {"variant": list(variants), "lr": list(lrs), "seed": list(seeds)})


def _seeds_grid(folder: Path, name="lr_sweep.yaml", seeds=(0, 1, 2), **fixed) -> Path:
    return _grid(folder / "seeds.yaml", {**BASE, "variant": "lora", "lr": {"best_on_dev": name}, **fixed},
                 {"seed": list(seeds)})


def _record(runs_dir: Path, point: dict, rid: str, dev: float | None) -> None:
    """A record as petl.runs writes one: complete with dev accuracy `dev`, or failed (dev None: a NaN loss)."""
    from petl.train_config import TrainConfig, resolve_run
    config = {**resolve_run(TrainConfig(**point)).record_config(), "run_id": rid}
    if dev is None:
        metrics = {"status": "failed", "reason": "loss is NaN at step 3", "primary_metric": "accuracy"}
    else:
        metrics = {"status": "complete", "primary_metric": "accuracy", "dev": {"accuracy": dev, "f1": 100 - dev},
                   "test": {"accuracy": dev - 1}, "best_step": 5, "wall_time_s": 1.0, "tokens_per_s": 10.0,
                   "parameters": {}}
    runs.write_record(runs_dir, rid, config, metrics)


def _fill(runs_dir: Path, grid: Path, score) -> None:
    """Records of every point of `grid`: score(lr, seed) is its dev accuracy (None: failed, skip: no record)."""
    for point, rid in sweep.plan([grid], runs_dir=runs_dir):
        dev = score(point["lr"], point["seed"])
        if dev != "skip":
            _record(runs_dir, point, rid, dev)


def _chosen(folder: Path, runs_dir: Path) -> set:
    found = sweep.plan([folder / "seeds.yaml"], runs_dir=runs_dir)
    assert not found.waiting
    return {point["lr"] for point, _ in found}


def test_the_lr_with_the_best_mean_dev_score_over_its_seeds_is_chosen(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path)
    _seeds_grid(tmp_path)
    # 1e-3 has the best single seed (90) but the worst mean (60); 3e-4 the best mean (80)
    scores = {(1e-4, 0): 70.0, (1e-4, 1): 71.0, (3e-4, 0): 79.0, (3e-4, 1): 81.0, (1e-3, 0): 90.0, (1e-3, 1): 30.0}
    _fill(runs_dir, grid, lambda lr, seed: scores[lr, seed])
    found = sweep.plan([tmp_path / "seeds.yaml"], runs_dir=runs_dir)
    assert [p["lr"] for p, _ in found] == [3e-4] * 3 and [p["seed"] for p, _ in found] == [0, 1, 2]
    # the run ids are those of ordinary points with that lr: seed 0 and 1 are the sweep's own records
    plain = _grid(tmp_path / "plain.yaml", {**BASE, "variant": "lora", "lr": 3e-4}, {"seed": [0, 1, 2]})
    assert [rid for _, rid in found] == [rid for _, rid in sweep.plan([plain], runs_dir=runs_dir)]
    assert [runs.record_status(runs_dir, rid) for _, rid in found] == ["complete", "complete", None]

    choice = sweep.lr_choice({**BASE, "variant": "lora"}, grid, runs_dir)
    assert choice.lr == 3e-4 and choice.metric == "accuracy" and (choice.have, choice.total) == (6, 6)
    table = choice.table
    assert list(table["lr"]) == LRS and list(table["chosen"]) == [False, True, False]
    assert list(table["mean"]) == [70.5, 80.0, 60.0] and list(table["n"]) == [2, 2, 2]
    assert table.loc[1, "dev"] == [79.0, 81.0] and table.loc[1, "seeds"] == [0, 1]
    assert set(table["status"]) == {"complete"}


def test_a_tie_goes_to_the_smaller_lr_whatever_the_grid_order(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path, lrs=[1e-3, 3e-4, 1e-4])                 # listed largest first
    _seeds_grid(tmp_path)
    scores = {1e-4: 60.0, 3e-4: 80.0, 1e-3: 80.0}
    _fill(runs_dir, grid, lambda lr, seed: scores[lr])
    assert _chosen(tmp_path, runs_dir) == {3e-4}


def test_a_failed_record_scores_worst(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path)
    _seeds_grid(tmp_path)
    # 1e-3 is best where it ran, but diverged on seed 1: the worst lr, behind 1e-4's 50
    scores = {(1e-4, 0): 50.0, (1e-4, 1): 50.0, (3e-4, 0): None, (3e-4, 1): None, (1e-3, 0): 95.0, (1e-3, 1): None}
    _fill(runs_dir, grid, lambda lr, seed: scores[lr, seed])
    assert _chosen(tmp_path, runs_dir) == {1e-4}
    table = sweep.lr_choice({**BASE, "variant": "lora"}, grid, runs_dir).table
    assert list(table["status"]) == ["complete", "failed (seed 0, 1)", "failed (seed 1)"]
    assert list(table["score"]) == [50.0, -math.inf, -math.inf] and table.loc[2, "dev"] == [95.0, None]


def test_a_point_waits_without_a_run_id_until_every_candidate_has_a_record(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path)
    seeds = _seeds_grid(tmp_path)
    _fill(runs_dir, grid, lambda lr, seed: "skip" if (lr, seed) == (1e-3, 1) else None if lr == 1e-4 else 70.0)
    found = sweep.plan([seeds], runs_dir=runs_dir)
    assert list(found) == [] and len(found.waiting) == 3                 # no run id invented
    wait = found.waiting[0]
    assert wait.point["lr"] == {"best_on_dev": "lr_sweep.yaml"} and wait.grid == seeds
    assert (wait.have, wait.total) == (5, 6) and wait.sweep_grid == tmp_path / "lr_sweep.yaml"
    choice = sweep.lr_choice({**BASE, "variant": "lora"}, grid, runs_dir)
    assert choice.lr is None and choice.waiting and not choice.table["chosen"].any()
    assert choice.table.loc[2, "status"] == "waiting (1 of 2 have a record)"
    lines = []
    assert sweep.sweep([seeds], runs_dir=runs_dir, dry_run=True, log=lines.append) == []
    assert lines[0] == (f"[1/3] (no run id yet) ... wait (lr chosen on dev from {tmp_path / 'lr_sweep.yaml'}: "
                        f"5 of 6 sweep points have a record)  {wait.point}")
    assert len(lines) == 3


def test_dry_run_lists_ready_points_first_and_waiting_ones_as_wait(tmp_path, capsys):
    _lr_grid(tmp_path, seeds=(0,))
    _seeds_grid(tmp_path)
    assert main(["sweep", str(tmp_path), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ... ")[1].split()[0] for line in lines] == ["run"] * 3 + ["wait"] * 3
    assert lines[3].startswith("[4/6] (no run id yet) ... wait (lr chosen on dev from ")
    assert ": 0 of 3 sweep points have a record)" in lines[3]


@pytest.mark.parametrize("lr, message", [
    ({"best_on_devv": "lr_sweep.yaml"}, r"lr \{'best_on_devv': 'lr_sweep.yaml'\}: unknown variant\(s\) best_on_devv; .*"
                                        r"or lr is a number, \{best_on_dev: <sweep grid file"),
    ({"best_on_dev": "lr_sweep.yaml", "by": "dev"}, r"unknown key\(s\) \['by'\]"),
    ({"best_on_dev": 3}, r"best_on_dev must name a grid file, got 3"),
    ({"best_on_dev": "missing.yaml"}, r"names a grid that cannot be used: grid file .*missing.yaml does not exist"),
    ({"best_on_dev": "broken.yaml"}, r"names a grid that cannot be used: grid file .*broken.yaml is not valid YAML"),
])
def test_a_bad_best_on_dev_mapping_or_file_is_refused_saying_what_is_valid(tmp_path, lr, message):
    _lr_grid(tmp_path)
    (tmp_path / "broken.yaml").write_text("grid: {lr: [0.001\n")
    grid = _grid(tmp_path / "seeds.yaml", {**BASE, "variant": "lora", "lr": lr}, {"seed": [0]})
    with pytest.raises(sweep.GridError, match=message):
        sweep.plan([grid], runs_dir=tmp_path / "runs")


def test_best_on_dev_may_be_one_element_of_a_grid_list(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path)
    _fill(runs_dir, grid, lambda lr, seed: 90.0 if lr == 1e-3 else 70.0)
    both = _grid(tmp_path / "both.yaml", {**BASE, "variant": "lora", "seed": 5},
                 {"lr": [5e-5, {"best_on_dev": "lr_sweep.yaml"}]})
    assert [p["lr"] for p, _ in sweep.plan([both], runs_dir=runs_dir)] == [5e-5, 1e-3]


def test_a_per_variant_lr_runs_each_variant_at_its_rate_with_the_run_ids_of_those_numbers(tmp_path):
    """``lr: {full: ..., "*": ...}`` is an ordinary lr (no sweep grid read): the point keeps the mapping, which
    the notebook resolves for its variant, and its run id is that of the number."""
    grid = _grid(tmp_path / "mixed.yaml", {**BASE, "lr": {"full": 5.0e-5, "*": 1.0e-3}}, {"variant": ["full", "lora"]})
    found = sweep.plan([grid], runs_dir=tmp_path / "runs")
    assert [p["lr"] for p, _ in found] == [{"full": 5.0e-5, "*": 1.0e-3}] * 2 and not found.sources
    numbers = [sweep.plan([_grid(tmp_path / f"{v}.yaml", {**BASE, "variant": v, "lr": lr})])[0][1]
               for v, lr in (("full", 5.0e-5), ("lora", 1.0e-3))]
    assert [rid for _, rid in found] == numbers
    bad = _grid(tmp_path / "bad.yaml", {**BASE, "lr": {"ful": 5.0e-5, "*": 1.0e-3}}, {"variant": ["full"]})
    with pytest.raises(sweep.GridError, match=r"bad.yaml: lr \{.*'ful': 5e-05.*\}: unknown variant\(s\) ful; .*"
                                              r"or a rate per variant"):
        sweep.plan([bad], runs_dir=tmp_path / "runs")
    zero = _grid(tmp_path / "zero.yaml", {**BASE, "lr": {"full": 0, "*": 1.0e-3}}, {"variant": ["lora"]})
    with pytest.raises(sweep.GridError, match=r"zero.yaml: lr .*: the rate of full is not a positive number"):
        sweep.plan([zero], runs_dir=tmp_path / "runs")           # refused when planned, not when the point runs


def test_a_sweep_grid_that_chooses_its_own_lr_on_dev_is_refused(tmp_path):
    _lr_grid(tmp_path)
    _grid(tmp_path / "chained.yaml", {**BASE, "variant": "lora", "lr": {"best_on_dev": "lr_sweep.yaml"}},
          {"seed": [0, 1]})
    seeds = _seeds_grid(tmp_path, name="chained.yaml")
    with pytest.raises(sweep.GridError, match=r"seeds.yaml: point .*the sweep grid .*chained.yaml chooses its own lr "
                                              r"on dev .*lists its learning rates as numbers \(no chaining\)"):
        sweep.plan([seeds], runs_dir=tmp_path / "runs")


def test_a_candidate_without_a_numeric_lr_is_refused(tmp_path):
    _grid(tmp_path / "lr_sweep.yaml", {**BASE, "variant": "lora"}, {"seed": [0, 1]})           # no lr at all
    with pytest.raises(sweep.GridError, match=r"sweep point \{.*'seed': 0\} of .*lr_sweep.yaml has no explicit "
                                              r"numeric lr \(got None\); a sweep grid sets lr to a positive number"):
        sweep.plan([_seeds_grid(tmp_path)], runs_dir=tmp_path / "runs")


def test_candidates_with_one_learning_rate_are_refused(tmp_path):
    _lr_grid(tmp_path, lrs=[1e-3])
    with pytest.raises(sweep.GridError, match=r"seeds.yaml: point .*'seed': 0.*: its 2 candidate\(s\) in "
                                              r".*lr_sweep.yaml cover 1 learning rate \(0.001\); choosing one on dev "
                                              r"needs at least 2"):
        sweep.plan([_seeds_grid(tmp_path)], runs_dir=tmp_path / "runs")
    # two lrs in the grid, but only one of them for this method
    _grid(tmp_path / "lr_sweep.yaml", {**BASE}, {"variant": ["lora", "mam"], "lr": [1e-3, 3e-3], "seed": [0]})
    _grid(tmp_path / "mixed.yaml", {**BASE}, {"variant": ["lora"], "lr": [1e-3], "seed": [0]})
    with pytest.raises(sweep.GridError, match=r"cover 1 learning rate"):
        sweep.plan([_seeds_grid(tmp_path, name="mixed.yaml")], runs_dir=tmp_path / "runs")


def test_no_candidate_names_the_method_and_the_grid(tmp_path):
    _lr_grid(tmp_path, variants=("mam",))
    seeds = _seeds_grid(tmp_path, overrides={"attn_bn": 4})
    with pytest.raises(sweep.GridError, match=r"seeds.yaml: .*no point of the sweep grid .*lr_sweep.yaml is the same "
                                              r"method in the same setting as this point \(variant lora, overrides "
                                              r"\{'attn_bn': 4\}\).*that grid has: variant mam, overrides None"):
        sweep.plan([seeds], runs_dir=tmp_path / "runs")


def test_candidates_of_several_settings_are_refused(tmp_path):
    _grid(tmp_path / "lr_sweep.yaml", {**BASE, "variant": "lora"},
          {"overrides": [{"attn_bn": 4}, {"attn_bn": 16}], "lr": [1e-3, 3e-3]})
    with pytest.raises(sweep.GridError, match=r"differ in \['overrides'\] too.*set overrides in the point"):
        sweep.plan([_seeds_grid(tmp_path)], runs_dir=tmp_path / "runs")
    # naming the setting picks its candidates
    assert len(sweep.plan([_seeds_grid(tmp_path, overrides={"attn_bn": 4})], runs_dir=tmp_path / "runs").waiting) == 3


def _fake_run_point(calls: list, score):
    def run_point(index, total, point, rid, runs_dir, notebook, force, timeout=None):
        calls.append((index, total, point.get("lr"), point.get("seed")))
        if runs.record_status(runs_dir, rid) == "complete" and not force:
            return sweep.Outcome(index, rid, "skipped", 0.0, "already complete")
        dev = score(point["lr"], point["seed"])
        _record(runs_dir, point, rid, dev)
        return sweep.Outcome(index, rid, "complete" if dev is not None else "failed", 0.0,
                             "" if dev is not None else "loss is NaN at step 3")
    return run_point


def test_one_sweep_runs_the_lr_grid_then_the_points_it_made_ready(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    _lr_grid(tmp_path, seeds=(0,))
    _seeds_grid(tmp_path)
    calls, lines = [], []
    monkeypatch.setattr(sweep, "run_point",
                        _fake_run_point(calls, lambda lr, seed: None if lr == 1e-3 else 80.0 if lr == 3e-4 else 70.0))
    outcomes = sweep.sweep([tmp_path], runs_dir=runs_dir, log=lines.append)
    # round 1: the three sweep points (one diverges); round 2: seeds 1 and 2 at 3e-4 (seed 0 is the sweep's own)
    assert calls == [(1, 6, 1e-4, 0), (2, 6, 3e-4, 0), (3, 6, 1e-3, 0), (4, 5, 3e-4, 1), (5, 5, 3e-4, 2)]
    assert [o.status for o in outcomes] == ["complete", "complete", "failed", "complete", "complete"]
    assert "planned again: 2 point(s) whose lr was chosen on dev can run now, 0 still waiting" in lines
    assert "sweep done: 4 complete, 0 skipped, 0 locked, 1 failed" in lines
    # again: everything is done, nothing waits, nothing runs twice
    calls.clear()
    again = sweep.sweep([tmp_path], runs_dir=runs_dir, log=lambda line: None)
    assert [o.status for o in again] == ["skipped", "skipped", "failed", "skipped", "skipped"]  # a failed point is
    assert [c[2:] for c in calls] == [(1e-4, 0), (3e-4, 0), (1e-3, 0), (3e-4, 1), (3e-4, 2)]  # tried again, as ever


def test_a_sweep_without_the_lr_grid_reports_the_waiting_points_and_exits_0(tmp_path, monkeypatch, capsys):
    runs_dir = tmp_path / "runs"
    _lr_grid(tmp_path)
    seeds = _seeds_grid(tmp_path)
    calls = []
    monkeypatch.setattr(sweep, "run_point", _fake_run_point(calls, lambda lr, seed: 70.0))
    _grid(tmp_path / "other.yaml", {**BASE, "variant": "lora", "lr": 1e-3}, {"seed": [7]})
    assert main(["sweep", str(seeds), str(tmp_path / "other.yaml"), "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert calls == [(1, 4, 1e-3, 7)]                                     # only the ready point ran
    assert "sweep done: 1 complete, 0 skipped, 0 locked, 0 failed, 3 waiting" in out
    assert "waiting for their lr (not failures" in out and "0 of 6 sweep points have a record)" in out
    assert "planned again" not in out


def test_grid_runs_counts_a_waiting_point_as_pending_and_says_why(tmp_path):
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path, seeds=(0,))
    seeds = _seeds_grid(tmp_path)
    _fill(runs_dir, grid, lambda lr, seed: "skip" if lr == 1e-3 else 75.0)
    sel = selection.grid_runs(str(grid), str(seeds), directory=runs_dir)
    assert len(sel.planned) == 6 and len(sel.missing) == 4 and len(sel.waiting) == 3
    assert all(isinstance(w, sweep.Waiting) for _, _, w in sel.waiting)
    assert sel.pending() == ("4 of 6 points have no record yet: lora (lr=0.001) seed 0; "
                             "lora seeds 0, 1, 2 (lr not chosen yet: 2 of 3 sweep points have a record)")
    # once the last sweep point has a record, the points are ordinary (the plan is read again: the folder changed)
    _fill(runs_dir, grid, lambda lr, seed: 90.0 if lr == 1e-3 else "skip")
    sel = selection.grid_runs(str(seeds), directory=runs_dir)
    assert not sel.waiting and [p["lr"] for _, p, _ in sel.planned] == [1e-3] * 3
    assert sel.pending() == "2 of 3 points have no record yet: lora seeds 1, 2"
    assert selection.lr_choice({**BASE, "variant": "lora"}, grid, runs_dir).lr == 1e-3


def test_the_book_grids_plan_the_run_ids_they_planned_before_best_on_dev():
    pinned = (ROOT / "tests" / "fixtures" / "book_grid_run_ids.txt").read_text().split("\n")
    pinned = [line for line in pinned if line and not line.startswith("#")]
    found = sweep.plan([ROOT / "book" / "grids"])
    assert [rid for _, rid in found] == pinned and not found.waiting and not found.sources


def test_on_slurm_a_point_whose_lr_was_chosen_goes_with_its_grid_file(tmp_path, monkeypatch):
    """The SLURM executor groups points by the grid file that lists them: a point whose lr was chosen on dev is
    listed with its best_on_dev mapping, not its number (a stand-in submitit runs each task here, at once)."""
    import sys
    import types

    class Job:
        def __init__(self, n, result):
            self.job_id, self._result = f"7_{n}", result

        def result(self):
            return self._result

    class SlurmExecutor:
        def __init__(self, folder):
            self.parameters = {}

        def update_parameters(self, **kw):
            self.parameters.update(kw)
            arrays.append(self.parameters)

        def map_array(self, fn, *columns):
            return [Job(n, fn(*args)) for n, args in enumerate(zip(*columns))]

    arrays = []
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(SlurmExecutor=SlurmExecutor))
    runs_dir = tmp_path / "runs"
    _grid(tmp_path / "lr_sweep.yaml", {**BASE, "variant": "lora"}, {"lr": LRS, "seed": [0]})
    seeds = _seeds_grid(tmp_path)
    seeds.write_text(yaml.safe_dump({**yaml.safe_load(seeds.read_text()), "slurm": {"partition": "long"}}))
    calls = []
    monkeypatch.setattr(sweep, "run_point", _fake_run_point(calls, lambda lr, seed: 80.0 if lr == 1e-4 else 70.0))
    outcomes = sweep.sweep([tmp_path], runs_dir=runs_dir, executor="slurm", log=lambda line: None)
    assert [c[2:] for c in calls] == [(1e-4, 0), (3e-4, 0), (1e-3, 0), (1e-4, 1), (1e-4, 2)]
    assert [o.status for o in outcomes] == ["complete"] * 5
    assert [a.get("partition") for a in arrays] == [None, "long"]        # round 2 went with seeds.yaml's resources


def test_where_every_lr_failed_none_is_chosen_and_the_sweep_says_to_widen_its_grid(tmp_path, monkeypatch):
    """Choosing the smallest of rates that all diverged would run every seed at a rate known to fail."""
    from petl.report.selection import grid_runs
    runs_dir = tmp_path / "runs"
    grid = _lr_grid(tmp_path)
    seeds = _seeds_grid(tmp_path)
    _fill(runs_dir, grid, lambda lr, seed: None)                          # every sweep point diverged
    choice = sweep.lr_choice({**BASE, "variant": "lora"}, grid, runs_dir)
    assert choice.lr is None and (choice.have, choice.total) == (6, 6) and not choice.table["chosen"].any()
    assert choice.why.startswith(f"every lr of {grid} failed for variant lora") and "add smaller rates" in choice.why
    found = sweep.plan([seeds], runs_dir=runs_dir)
    assert list(found) == [] and len(found.waiting) == 3 and found.waiting[0].reason == choice.why
    lines = []
    monkeypatch.setattr(sweep, "_run_points", lambda *a, **k: [])
    assert [o.status for o in sweep.sweep([seeds], runs_dir=runs_dir, log=lines.append)] == ["waiting"] * 3
    assert any(line.startswith("no lr to choose (every rate of their sweep failed):") for line in lines)
    assert not any(line.startswith("waiting for their lr") for line in lines)
    assert choice.why in grid_runs(str(seeds), directory=runs_dir).pending()
