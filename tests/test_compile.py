"""torch.compile on petl's methods (issue 17): a training forward pass is one graph, and compiled = eager.

Graph breaks are counted as `python -m benchmarks.compile` counts them (benchmarks.compile.graph_breaks:
torch._dynamo.explain of one train-mode forward pass with labels, the loss included), at the sizes it uses (the
paper's GLUE sizes, l = r = 16), on the tiny BERT and the tiny Llama (grouped-query attention) of conftest, with
a padded row so that the attention mask is there. A forward pass without breaks compiles forward and backward
whole. The benchmark's record says the same for the real shapes (benchmarks/README.md, "torch.compile").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from torch._dynamo.utils import counters  # noqa: E402

import petl  # noqa: E402
from benchmarks import compile as bench  # noqa: E402
from benchmarks.compile import graph_breaks, preset_config  # noqa: E402
from conftest import tiny_batch, tiny_model  # noqa: E402

#: (arch, variant) whose training forward pass must be one graph. MAM contains prefix tuning (concatenation with
#: the MLP) and the scaled parallel FFN adapter; prefix alone says which part breaks, if one does. On the Llama the
#: prefix takes the grouped-query SDPA path (key/value heads not repeated).
ONE_GRAPH = [("bert", "mam"), ("bert", "prefix"), ("bert", "lora"), ("llama", "mam"), ("llama", "prefix")]
#: The rest, on the Llama, with the slow tests: LoRA, the released GLUE script's MAM (at these sizes mam with s = 2
#: instead of 4), and the other prefix forms (learned directly; Eq. 7's separate attention, gated and not; the
#: multi-head parallel adapter), whose separate attention repeats the key/value heads.
ONE_GRAPH_TOO = ("lora", "mam_glue", "prefix_nomlp", "gated_prefix", "ungated_prefix", "mh_pa")


def _method_model(arch: str, variant: str, seed: int = 0):
    """tiny_model(arch) with the preset at the GLUE sizes attached (its new parameters seeded), in train mode."""
    model = tiny_model(arch)
    torch.manual_seed(seed)
    petl.apply(model, petl.PETLConfig.from_dict(preset_config(variant)))
    if arch == "bert":  # what BERT's first call with labels sets, which would make the second call recompile
        model.config.problem_type = "single_label_classification"
    return model.train()


@pytest.mark.parametrize("arch, variant", ONE_GRAPH)
def test_a_training_forward_pass_with_the_loss_is_one_graph(arch, variant):
    found = graph_breaks(_method_model(arch, variant), tiny_batch(arch))
    assert (found["graphs"], found["breaks"]) == (1, 0), found["reasons"]


@pytest.mark.slow
def test_the_other_variants_are_one_graph_on_the_llama():
    for variant in ONE_GRAPH_TOO:
        found = graph_breaks(_method_model("llama", variant), tiny_batch("llama"))
        assert (found["graphs"], found["breaks"]) == (1, 0), (variant, found["reasons"])


@pytest.mark.parametrize("arch, backend", [
    ("bert", "aot_eager"),
    pytest.param("llama", "inductor", marks=pytest.mark.slow)])  # inductor builds C++ kernels: a minute here
def test_compiled_mam_gives_eager_logits_loss_gradients_and_training_step(arch, backend):
    """Two identical MAM models, one under torch.compile: the same loss and logits, the same gradients, the same
    parameters after one SGD step, and the same loss again on the updated parameters (no recompilation). aot_eager
    runs dynamo's graph and AOTAutograd's joint forward / backward with eager kernels; inductor generates its own."""
    torch._dynamo.reset()
    counters.clear()
    batch = tiny_batch(arch)
    eager, twin = _method_model(arch, "mam"), _method_model(arch, "mam")
    compiled = torch.compile(twin, backend=backend)
    trained = {name: p for name, p in eager.named_parameters() if p.requires_grad}
    assert trained and all(torch.equal(p, dict(twin.named_parameters())[n]) for n, p in trained.items())
    results = {}
    try:
        for key, model, params in (("eager", eager, eager), ("compiled", compiled, twin)):
            # SGD, whose step follows the gradient; AdamW's first step, about lr · sign(g), would turn rounding
            # differences of gradients near zero into steps of ±lr
            optimizer = torch.optim.SGD([p for p in params.parameters() if p.requires_grad], lr=0.1)
            out = model(**batch)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in params.named_parameters() if p.requires_grad}
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            after = {n: p.detach().clone() for n, p in params.named_parameters() if p.requires_grad}
            again = model(**batch).loss.detach()
            results[key] = (out.loss.detach(), out.logits.detach(), grads, after, again)
        compiles = dict(counters["stats"])
    finally:
        torch._dynamo.reset()
    assert compiles["unique_graphs"] == 1 and not counters["graph_break"]  # one graph, compiled once
    (loss, logits, grads, after, again), (c_loss, c_logits, c_grads, c_after, c_again) = \
        results["eager"], results["compiled"]
    close = dict(rtol=1e-4, atol=1e-5)
    assert torch.isfinite(loss) and torch.allclose(c_loss, loss, **close)
    assert torch.allclose(c_logits, logits, **close)
    assert set(c_grads) == set(grads) == set(trained)
    assert any(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        assert torch.allclose(c_grads[name], grads[name], **close), name
        assert torch.allclose(c_after[name], after[name], **close), name
    assert not torch.equal(again, loss) and torch.allclose(c_again, again, **close)  # the step changed the model


@pytest.mark.slow
def test_under_gradient_checkpointing_mam_is_one_graph_once_its_side_effect_is_allowed():
    """MAM's only break under non-reentrant checkpointing is petl's Captured holder, written and emptied inside the
    checkpointed layer (benchmarks/README.md, "torch.compile"); with transformers' use_cache warning and input-grad
    hook taken away and dynamo allowed that side effect, compiled MAM is one graph with eager's loss and gradients."""
    for arch in ("bert", "llama"):
        batch, results = tiny_batch(arch), {}
        for key in ("eager", "compiled"):
            model = _method_model(arch, "mam")
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.disable_input_require_grads()  # non-reentrant checkpointing does not need it
            model.config.use_cache = False
            torch._dynamo.reset()
            counters.clear()
            try:
                with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
                    run = torch.compile(model, backend="aot_eager") if key == "compiled" else model
                    loss = run(**batch).loss
                    loss.backward()
                graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
            finally:
                torch._dynamo.reset()
            results[key] = loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert (graphs, breaks) == (1, {}), arch  # of the compiled run, the last
        (loss, grads), (c_loss, c_grads) = results["eager"], results["compiled"]
        assert torch.allclose(c_loss, loss, rtol=1e-4, atol=1e-5), arch
        assert all(torch.allclose(c_grads[n], grads[n], rtol=1e-4, atol=1e-5) for n in grads), arch


@pytest.mark.slow
def test_the_compile_benchmark_writes_a_complete_record(tmp_path):
    out = tmp_path / "c.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--shape", "tiny-bert", "--presets", "mam", "lora", "--methods", "lora", "--rounds", "2",
                    "--warmup", "1", "--backend", "aot_eager", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    record = json.loads(out.read_text())
    assert record["kind"] == "petl-compile-benchmark" and record["complete"] and record["git"]
    assert {v: (b["graphs"], b["breaks"]) for v, b in record["graph_breaks"].items()} == {"mam": (1, 0),
                                                                                            "lora": (1, 0)}
    assert record["graph_breaks"]["mam"]["messages"] == {}
    checkpointed = record["graph_breaks_with_checkpointing"]
    assert set(checkpointed) == set(bench.CHECKPOINTING_SETTINGS)
    assert all(set(found) == {"stock", "lora"} for found in checkpointed.values())
    # the breaks of a checkpointed forward pass are transformers' own: without them, none (nor with LoRA)
    assert {n: b["breaks"] for n, b in checkpointed["transformers_quiet"].items()} == {"stock": 0, "lora": 0}
    assert checkpointed["default"]["stock"]["breaks"] > 0 and checkpointed["default"]["stock"]["messages"]
    assert set(record["timing"]["raw"]) == {"lora_eager", "lora_compiled"}
    ratio = record["timing"]["ratio_compiled_to_eager"]["lora"]["wall_s"]["median"]
    assert 0 < ratio < float("inf")
