"""Training: config validation, determinism, NaN handling, kills at every phase, torchrun with gloo.

Uses the real rt-polarity data (embedded asset) and conftest's tiny random BERT saved as a model folder; the
generation run uses a tiny bbc-xsum-shaped task written here and the tiny Llama.
"""
import json
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import WORDS
from petl import runs
from petl.train import TrainConfig, resolve_run, train
from training_helpers import PYTHON, ROOT, TINY, cli_args, subprocess_env

rt_polarity = pytest.mark.needs_assets("rt-polarity")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return tiny_dir("bert")


def _cfg(tiny, **kw):
    return TrainConfig(**{**TINY, "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}, **kw})


# ---- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("variant", "mamm", r"unknown variant 'mamm'; valid variants: .*mam"),
    ("task", "sst-2", r"unknown task 'sst-2'; valid tasks: rt-polarity"),
    ("model", "not/a model", r"unknown model 'not/a model'; valid models: minilm"),
    ("overrides", {"attn_bnn": 3}, r"attn_bnn"),
    ("max_steps", 0, r"max_steps must be a positive integer"),
    ("max_eval_examples", "al", r"max_eval_examples must be a positive integer or None \(the budget's default\), "
                                r"or 'all' \(every example\), got 'al'"),
    ("bf16", "yes", r"bf16 must be one of"),
    ("label_smoothing", 1.5, r"label_smoothing must be a number in \[0, 1\)"),
])
def test_bad_input_is_rejected_with_the_valid_choices(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).validate()


def test_max_steps_and_epochs_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(max_steps=3, epochs=1).validate()


def test_defaults_come_from_the_cpu_budget_and_table_8():
    cpu = TrainConfig().resolved()                                  # mam / rt-polarity / minilm
    assert (cpu.max_steps, cpu.epochs) == (150, None)
    assert cpu.batch_size == 32 and cpu.weight_decay == 0.1 and cpu.warmup == 0.06
    assert tuple(cpu.adam_betas) == (0.9, 0.98) and cpu.adam_eps == 1e-6
    assert cpu.overrides == {}                                      # a budget never changes what a preset computes
    assert TrainConfig(overrides={}).resolved().overrides == {}                      # the preset as it is
    assert TrainConfig(variant="lora").resolved().overrides == {}
    assert TrainConfig(variant="full").resolved().lr == 5e-5
    assert cpu.lr == 1e-4 and TrainConfig(variant="lora").resolved().lr == 1e-3    # the XSum-sized MAM: its own
    smol = dict(task="bbc-xsum", model="smollm2-135m")
    assert TrainConfig(**smol).resolved().lr == 3e-4 and TrainConfig(variant="lora", **smol).resolved().lr == 1e-3
    paper = TrainConfig(task="sst2", model="roberta-base", variant="lora").resolved()
    assert (paper.max_steps, paper.epochs, paper.lr) == (None, 10, 1e-4)   # Table 8, GLUE row
    xsum = TrainConfig(task="xsum", model="facebook/bart-large").resolved()
    assert (xsum.max_steps, xsum.lr, xsum.label_smoothing, xsum.max_grad_norm) == (100_000, 5e-5, 0.1, 0.1)
    assert (xsum.num_beams, xsum.gen_min_length, xsum.gen_max_length, xsum.no_repeat_ngram_size) == (6, 10, 60, 3)
    assert TrainConfig(max_steps=7).resolved().max_steps == 7


def test_a_per_variant_lr_gives_each_variant_its_rate_and_the_run_id_of_that_number():
    rates = {"full": 5e-5, "*": 1e-3}
    for variant, lr in (("full", 5e-5), ("lora", 1e-3), ("mam", 1e-3)):
        mapped, plain = resolve_run(TrainConfig(variant=variant, lr=rates)), resolve_run(TrainConfig(variant=variant, lr=lr))
        assert mapped.train.lr == lr and mapped.run_id == plain.run_id
        assert mapped.record_config() == plain.record_config()


@pytest.mark.parametrize("lr, match", [
    ({"lorra": 1e-3, "*": 1e-3}, r"unknown variant\(s\) lorra; a per-variant lr is \{variant: lr, \"\*\": lr of every other"),
    ({"lora": 0, "*": 1e-3}, r"the rate of lora is not a positive number"),
    ({"lora": "fast", "*": 1e-3}, r"the rate of lora is not a positive number"),
    ({"full": 5e-5}, r"gives no rate for variant 'lora': add it or \"\*\""),
])
def test_a_bad_per_variant_lr_is_refused_naming_what_is_valid(lr, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(variant="lora", lr=lr).validate()


def test_all_lifts_the_budgets_cap_on_a_split():
    """None takes the CPU budget's cap (500 of rt-polarity's 1,000 dev sentences), "all" every example; resolved,
    None is no cap, so "all" and a task without a cap give one run id."""
    assert TrainConfig().resolved().max_eval_examples == 500
    full = TrainConfig(max_eval_examples="all", max_test_examples="all").resolved()
    assert (full.max_eval_examples, full.max_test_examples) == (None, None)
    assert resolve_run(TrainConfig(max_eval_examples="all")).run_id != resolve_run(TrainConfig()).run_id
    assert resolve_run(TrainConfig(max_test_examples="all")).run_id == resolve_run(TrainConfig()).run_id


def test_overrides_change_the_run_id():
    a = resolve_run(TrainConfig(variant="lora")).run_id
    b = resolve_run(TrainConfig(variant="lora", overrides={"attn_bn": 8})).run_id
    assert a != b and a.startswith("rt-polarity_minilm_lora_seed0_150steps_")


# ---- a real (tiny) run -----------------------------------------------------------------------------------

@rt_polarity
def test_run_writes_a_complete_record_and_same_seed_gives_same_metrics(tiny, tmp_path):
    first = train(_cfg(tiny), runs_dir=tmp_path / "a")
    second = train(_cfg(tiny), runs_dir=tmp_path / "b")
    assert first.status == second.status == "complete"
    assert first.metrics["test"] == second.metrics["test"] and first.metrics["dev"] == second.metrics["dev"]
    assert first.history["loss"].tolist() == second.history["loss"].tolist()
    m, history = first.metrics, first.history
    assert m["steps"] == 2 and m["num_examples"] == {"train": 64, "validation": 16, "test": 16}
    assert list(history.columns) == ["step", "loss", "lr", "grad_norm", "tokens", "dev_accuracy"]
    assert history["step"].tolist() == [1, 2] and history["dev_accuracy"].notna().all()
    # selection on dev: the best step is the first with the highest dev accuracy, and its dev metrics are kept
    best = int(history["step"][history["dev_accuracy"].idxmax()])
    assert m["best_step"] == best and m["dev"]["accuracy"] == history["dev_accuracy"].max()
    assert m["test"]["accuracy"] * 16 / 100 == round(m["test"]["accuracy"] * 16 / 100)   # k of the 16 right
    assert m["train_tokens"] == history["tokens"].sum() > 0
    assert m["tokens_per_s"] == pytest.approx(m["train_tokens"] / m["train_time_s"]) and m["peak_rss_mb"] > 0
    assert m["parameters"]["trainable"] < m["parameters"]["backbone"]
    cfg = first.config
    assert cfg["train"]["variant"] == "lora" and cfg["petl"]["attn_bn"] == 4 and cfg["versions"]["torch"]
    assert "hostname" not in json.dumps(cfg) and os.uname().nodename not in json.dumps(cfg)
    # the record holds what petl.runs writes and, in weights/, what petl.save writes for LoRA (its PEFT form too)
    assert sorted(p.name for p in first.path.iterdir()) == ["config.json", "history.csv", "metrics.json", "weights"]
    assert m["weights"] == "weights" and first.weights_path == first.path / "weights"
    assert sorted(p.name for p in first.weights_path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "petl_config.json", "petl_weights.safetensors"]
    # a different seed gives a different run (and different numbers)
    other = train(_cfg(tiny, seed=1), runs_dir=tmp_path / "a")
    assert other.run_id != first.run_id and other.history["loss"].tolist() != first.history["loss"].tolist()
    # complete -> skipped (record untouched); force -> rerun
    mtime = (first.path / "metrics.json").stat().st_mtime_ns
    again = train(_cfg(tiny), runs_dir=tmp_path / "a")
    assert again.path == first.path and (first.path / "metrics.json").stat().st_mtime_ns == mtime
    forced = train(_cfg(tiny), runs_dir=tmp_path / "a", force=True)
    assert (forced.path / "metrics.json").stat().st_mtime_ns != mtime
    assert forced.metrics["test"] == first.metrics["test"]
    assert len(runs.load_runs(tmp_path / "a")) == 2
    assert runs.is_complete(tmp_path / "a", resolve_run(_cfg(tiny)).run_id)
    assert not runs.is_complete(tmp_path / "a", resolve_run(_cfg(tiny, seed=9)).run_id)


@rt_polarity
def test_trace_every_logs_gates_and_spreads_without_changing_the_run(tiny, tmp_path):
    kw = dict(variant="prefix", overrides={"attn_bn": 4, "mid_dim": 8}, max_steps=4, eval_every=2)
    plain = train(_cfg(tiny, **kw), runs_dir=tmp_path / "a")
    traced = train(_cfg(tiny, **kw, trace_every=3), runs_dir=tmp_path / "b")
    assert traced.run_id == plain.run_id and traced.config["train"]["trace_every"] == 3
    assert traced.history["loss"].tolist() == plain.history["loss"].tolist()
    assert traced.metrics["dev"] == plain.metrics["dev"] and traced.metrics["test"] == plain.metrics["test"]
    h = traced.history
    gates = [c for c in h.columns if c.startswith("gate_encoder_l")]
    spreads = [c for c in h.columns if c.startswith("spread_l")]
    assert len(gates) == 2 and len(spreads) == 3  # the tiny BERT's 2 layers; the embeddings, then each layer
    traced_rows = h[h[gates[0]].notna()]
    assert traced_rows["step"].tolist() == [1, 3]  # step 1, then every trace_every steps
    assert ((traced_rows[gates] > 0) & (traced_rows[gates] < 1)).all().all() and (traced_rows[spreads] > 0).all().all()
    assert not any(c.startswith(("gate_", "spread_")) for c in plain.history.columns)


@rt_polarity
def test_nan_loss_stops_the_run_with_a_failed_record_naming_the_step(tiny, tmp_path):
    record = train(_cfg(tiny, lr=1e30, max_steps=6, eval_every=6), runs_dir=tmp_path)
    assert record.status == "failed"
    step = record.metrics["failed_step"]
    assert 1 < step <= 6 and f"at step {step}" in record.metrics["reason"]
    assert ("nan" in record.metrics["reason"] or "inf" in record.metrics["reason"])
    assert len(record.history) == step - 1                       # the steps before the bad one
    assert runs.load_runs(tmp_path).empty
    assert len(runs.load_runs(tmp_path, include_failed=True)) == 1
    assert not runs.is_complete(tmp_path, record.run_id)


def _summaries(n: int, seed: int) -> dict:
    """n bbc-xsum-shaped rows over the tiny tokenizer's words: a three-sentence article, its first sentence."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    sentences = [[" ".join(rng.choices(words, k=8)) + " ." for _ in range(3)] for _ in range(n)]
    return {"source": ["\n".join(s) for s in sentences], "target": [s[0] for s in sentences],
            "id": [f"tiny/{seed}-{i}" for i in range(n)]}


def test_generation_run_with_a_decoder_scores_rouge_on_generated_text(tiny_dir, tmp_path, monkeypatch):
    """bbc-xsum's spec (metrics, Table 8's XSum row, the extra split test_xsum) on 30 rows written here: the real
    task needs the BIG-bench archive (358 MB), which `make test` does not fetch."""
    import datasets
    import torch
    from rouge_score import rouge_scorer

    import petl
    from petl import data, metrics, models, tasks

    raw = datasets.DatasetDict({split: datasets.Dataset.from_dict(_summaries(n, seed)) for seed, (split, n) in
                                enumerate({"train": 16, "validation": 4, "test": 4, "test_xsum": 6}.items())})
    monkeypatch.setattr(tasks, "load_task", lambda name, **kw: raw if name == "bbc-xsum" else pytest.fail(name))
    references = {split: raw[split][:4]["target"] for split in raw}
    scored = []                                                     # (predictions, references) of every evaluation
    real_metrics = metrics.compute_metrics
    monkeypatch.setattr(metrics, "compute_metrics", lambda spec, p, r: scored.append((p, r)) or real_metrics(spec, p, r))
    tiny = tiny_dir("llama")
    cfg = TrainConfig(variant="lora", task="bbc-xsum", model=tiny, max_steps=2, eval_every=2, batch_size=4,
                      max_train_examples=16, max_eval_examples=4, max_test_examples=4, max_source_length=48,
                      max_target_length=12, gen_max_length=6, gen_min_length=2, num_beams=2, lr=1e-3,
                      overrides={"attn_bn": 4}, progress=False)
    resolved = cfg.resolved()
    assert (resolved.label_smoothing, resolved.max_grad_norm) == (0.1, 0.1)     # Table 8, XSum row
    record = train(cfg, runs_dir=tmp_path / "runs")
    assert record.status == "complete", record.metrics.get("reason")
    m = record.metrics
    assert m["primary_metric"] == "rouge2" and set(m["test"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert m["num_examples"] == {"train": 16, "validation": 4, "test": 4, "test_xsum": 4}   # extra test set, capped
    assert set(m["test_xsum"]) == set(m["test"]) and record.history["loss"].gt(0).all()
    # three evaluations (dev at step 2, test, test_xsum), each on the references of its split
    assert [refs for _, refs in scored] == [references[s] for s in ("validation", "test", "test_xsum")]
    predictions = scored[1][0]
    # the predictions are what the saved (best-dev) method generates for the test prompts ...
    model, tok = models.load_model(tiny, "bbc-xsum")
    petl.load(model, record.weights_path)
    family = models.model_family(model.config)
    test = data.encode(datasets.DatasetDict(test=raw["test"]), "bbc-xsum", tok, family, max_source_length=48,
                       max_target_length=12)["test"]
    batch = data.generation_collator("bbc-xsum", tok, family)([test[i] for i in range(len(test))])
    batch.pop("references")
    with torch.no_grad():
        out = model.generate(**batch, num_beams=2, max_new_tokens=6, min_new_tokens=2,
                             no_repeat_ngram_size=resolved.no_repeat_ngram_size, do_sample=False)
    assert data.decode_generations(out, batch["input_ids"], tok, family) == predictions
    assert predictions != references["test"]                        # generated, not the references
    # ... and the recorded ROUGE is rouge-score's F1 of those generations against the references
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_example = [scorer.score(ref, pred) for pred, ref in zip(predictions, references["test"])]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert m["test"][key] == pytest.approx(100 * sum(s[key].fmeasure for s in per_example) / 4, abs=1e-9)


def test_dev_evaluations_decode_with_eval_num_beams_and_the_test_with_num_beams(tiny_dir, tmp_path, monkeypatch):
    """eval_num_beams (greedy model selection, the protocol's cheap dev decoding) reaches only the dev evaluations;
    left at None it is num_beams everywhere and leaves the run id as it was."""
    import datasets
    from transformers import GenerationMixin

    from petl import tasks
    from petl.train_config import resolve_run

    raw = datasets.DatasetDict({split: datasets.Dataset.from_dict(_summaries(n, seed)) for seed, (split, n) in
                                enumerate({"train": 8, "validation": 2, "test": 2, "test_xsum": 2}.items())})
    monkeypatch.setattr(tasks, "load_task", lambda name, **kw: raw)
    beams = []
    real_generate = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate",
                        lambda self, *a, **kw: beams.append(kw["num_beams"]) or real_generate(self, *a, **kw))
    common = dict(variant="lora", task="bbc-xsum", model=tiny_dir("llama"), max_steps=2, eval_every=1, batch_size=4,
                  max_source_length=32, max_target_length=8, gen_max_length=3, gen_min_length=1, num_beams=2, lr=1e-3,
                  overrides={"attn_bn": 4}, progress=False)
    cfg = TrainConfig(**common, eval_num_beams=1)
    record = train(cfg, runs_dir=tmp_path / "runs")
    assert record.status == "complete", record.metrics.get("reason")
    assert beams == [1, 1, 2, 2]                      # dev at steps 1 and 2 (one batch each), then test, test_xsum
    default = resolve_run(TrainConfig(**common)).run_id
    assert resolve_run(TrainConfig(**common, eval_num_beams=None)).run_id == default != record.run_id
    with pytest.raises(ValueError, match="eval_num_beams must be a positive integer"):
        TrainConfig(**common, eval_num_beams=0).validate()


# ---- killed at every phase -------------------------------------------------------------------------------

def _start(tiny, runs_dir, phase, flag, **kw):
    params = {**TINY, "variant": "lora", "model": tiny, "overrides": {"attn_bn": 4}, **kw}
    env = subprocess_env(PETL_PAUSE_AT=phase, PETL_PAUSE_FILE=flag)
    return subprocess.Popen([PYTHON, "-m", "petl", "train", *cli_args(**params), "--runs-dir", str(runs_dir)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(flag, proc, timeout=300):
    t0 = time.time()
    while not os.path.exists(flag):
        if proc.poll() is not None:
            raise AssertionError(f"process ended before pausing: {proc.stdout.read().decode()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("process never reached the pause point")
        time.sleep(0.2)


@rt_polarity
@pytest.mark.slow
@pytest.mark.parametrize("phase, force", [("train", False), ("eval", False), ("weights", False),
                                          ("record", False), ("replace", True)])
def test_sigkill_at_any_phase_leaves_no_counted_record_and_a_rerun_completes(tiny, tmp_path, phase, force):
    runs_dir = tmp_path / "runs"
    other = train(_cfg(tiny, seed=5), runs_dir=runs_dir)             # a finished record that must stay as is
    other_bytes = {f.relative_to(other.path): f.read_bytes() for f in other.path.rglob("*") if f.is_file()}
    victim = _cfg(tiny)
    rid = resolve_run(victim).run_id
    if force:                                                        # killed while replacing a record
        train(victim, runs_dir=runs_dir)
    flag = str(tmp_path / "paused")
    proc = _start(tiny, runs_dir, phase, flag, force=force)
    _wait_for(flag, proc)
    assert open(flag).read() == phase
    assert json.loads((runs_dir / ".locks" / f"{rid}.lock").read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    df = runs.load_runs(runs_dir)
    assert list(df["run_id"]) == [other.run_id]                     # the killed run does not count
    assert runs.record_status(runs_dir, rid) is None
    assert {f.relative_to(other.path): f.read_bytes() for f in other.path.rglob("*") if f.is_file()} == other_bytes
    rerun = train(victim, runs_dir=runs_dir)                         # the stale lock is taken over
    assert rerun.status == "complete"
    assert sorted(runs.load_runs(runs_dir)["run_id"]) == sorted([other.run_id, rid])
    leftovers = [p.name for p in runs_dir.iterdir() if p.name.startswith((".tmp", ".trash"))]
    assert leftovers == []


# ---- data parallel ---------------------------------------------------------------------------------------

@rt_polarity
@pytest.mark.slow
def test_torchrun_with_two_gloo_processes(tiny, tmp_path):
    params = {**TINY, "variant": "lora", "model": tiny, "max_steps": 2}
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "petl", "train", *cli_args(**params), "--runs-dir", str(tmp_path)]
    out = subprocess.run(cmd, env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = runs.load_runs(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["device.num_processes"] == 2 and row["steps"] == 2
    assert row["num_examples.test"] == 16 and 0 <= row["test.accuracy"] <= 100


def test_bf16_auto_is_fp32_on_every_cpu_and_opt_in_there():
    from petl.train import use_bf16
    assert use_bf16("auto", "cpu") is False                         # whatever the CPU's instructions
    assert use_bf16(True, "cpu") is True and use_bf16(False, "cuda") is False
    assert TrainConfig(variant="lora").resolved().bf16 is False     # so the README's run ids hold on any CPU
