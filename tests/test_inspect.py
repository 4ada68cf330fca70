"""petl.inspect.trace: the gate λ of each prefix layer and the spread of the inputs' representations, on tiny
random models of every family (the gate itself is checked against Eq. 7 on MiniLM in tests/test_minilm.py)."""
import pytest
import torch

import petl
import petl.inspect
from conftest import tiny_model


def _batch(arch: str, pad: bool = True) -> dict:
    torch.manual_seed(1)
    ids = torch.randint(5, 90, (4, 7))
    mask = torch.ones_like(ids)
    if pad:
        mask[0, -3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch == "bart":
        batch["labels"] = torch.randint(5, 90, (4, 5))
    return batch


@pytest.mark.parametrize("arch", ["bert", "bart", "llama"])
def test_trace_has_a_gate_per_prefix_layer_and_a_spread_per_layer(arch):
    model = petl.apply(tiny_model(arch), "prefix", attn_bn=3, mid_dim=8).train()
    row = petl.inspect.trace(model, **_batch(arch))
    assert model.training  # the mode it had
    groups = {"bert": ["encoder"], "bart": ["encoder", "decoder", "cross"], "llama": ["decoder"]}[arch]
    assert sorted(k for k in row if k.startswith("gate_")) == sorted(f"gate_{g}_l{i}" for g in groups for i in (0, 1))
    assert sorted(k for k in row if k.startswith("spread_")) == ["spread_l0", "spread_l1", "spread_l2"]
    assert all(0 < row[k] < 1 for k in row if k.startswith("gate_")) and all(row[k] > 0 for k in row if "spread" in k)


def test_a_gate_averages_real_queries_only_and_spread_sees_identical_inputs_as_zero():
    model = petl.apply(tiny_model("bert"), "prefix", attn_bn=3, mid_dim=8)
    batch = _batch("bert")
    lam = petl.inspect.gates(model, **batch)["prefix_encoder"][0]  # [batch, heads, query]
    real = batch["attention_mask"][:, None, :].expand_as(lam).bool()
    assert petl.inspect.trace(model, **batch)["gate_encoder_l0"] == pytest.approx(float(lam[real].mean()))
    same = {k: v[:1].expand(4, -1) for k, v in batch.items()}
    assert all(v == pytest.approx(0, abs=1e-6) for k, v in petl.inspect.trace(model, **same).items() if "spread" in k)


def test_trace_without_a_prefix_gives_spreads_only_and_prompt_positions_count():
    lora = petl.apply(tiny_model("bert"), "lora", attn_bn=2)
    assert all(k.startswith("spread_") for k in petl.inspect.trace(lora, **_batch("bert")))
    prompt = petl.apply(tiny_model("bert"), "prompt_tuning", attn_bn=3)  # hidden states 3 positions longer
    row = petl.inspect.trace(prompt, **_batch("bert"))
    assert sorted(row) == ["spread_l0", "spread_l1", "spread_l2"] and all(v > 0 for v in row.values())
