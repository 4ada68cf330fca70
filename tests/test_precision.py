"""Precision: a method's parameters on a half-precision base are float32 (PETLConfig.method_dtype), and every Δh
computes in mixed dtypes, with and without autocast. bf16 matmuls are slow on a CPU without bf16 instructions, so
every model here is the tiny one."""

from __future__ import annotations

import pytest
import torch

import petl
from conftest import tiny_batch, tiny_model
from petl.config import LATER_FIELDS
from petl.runs import config_hash

SMALL = dict(attn_bn=4, ffn_bn=4, mid_dim=8)
#: Every method and every mixed-dtype path: LoRA, the prefix MLP and the learned prefix, the separate prefix with
#: its LayerNorm query and gate, the multi-head parallel adapter, parallel / sequential / Pfeiffer adapters with
#: their LayerNorms, prompt tuning and BitFit.
METHODS = {
    "lora": dict(attn_mode="lora", attn_bn=4, ffn_mode="lora", ffn_bn=4, lora_alpha=16.0),
    "mam": dict(petl.PRESETS["mam"], **SMALL),
    "prefix_nomlp": dict(petl.PRESETS["prefix_nomlp"], attn_bn=4),
    "cross_attn_gate": dict(attn_mode="prefix", attn_option="cross_attn", attn_composition="gate_add", **SMALL),
    "mh_pa": dict(attn_mode="prefix_nomlp", attn_option="cross_attn_relu", mh_adapter_query="layernorm", attn_bn=4),
    "houlsby_ln_out": dict(petl.PRESETS["houlsby"], attn_bn=4, ffn_bn=4, ffn_adapter_layernorm_option="out",
                           ffn_adapter_scalar="learnable_scalar"),
    "pa_attn": dict(petl.PRESETS["pa_attn"], attn_bn=4),
    "pfeiffer": dict(petl.PRESETS["pfeiffer"], ffn_bn=4),
    "prompt_tuning": dict(petl.PRESETS["prompt_tuning"], attn_bn=4),
    "bitfit": dict(petl.PRESETS["bitfit"]),
}


def _method_parameters(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if name.startswith("petl.")}


def _trained(model) -> dict[str, torch.Tensor]:
    """The method's parameters and the new task head's."""
    return {**_method_parameters(model), **petl.core.head_parameters(model)}


def _base_parameters(model) -> dict[str, torch.Tensor]:
    head = set(petl.core.head_parameters(model))
    return {name: p for name, p in model.named_parameters() if not name.startswith("petl.") and name not in head}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["bert", "bart"])
def test_half_precision_base_trains_a_float32_method_under_autocast(arch, method, dtype):
    """AdamW on float32 copies (and, for fp16, a GradScaler, which refuses half-precision gradients) while the
    base stays frozen in its own dtype."""
    model = tiny_model(arch).to(dtype)
    petl.apply(model, METHODS[method])
    model.train()
    base = {name: p.detach().clone() for name, p in _base_parameters(model).items()}
    trained = _trained(model)
    assert _method_parameters(model) and {p.dtype for p in trained.values()} == {torch.float32}
    assert {id(p) for p in trained.values()} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    batch = tiny_batch(arch)
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", dtype=dtype):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    assert {p.dtype for p in _trained(model).values()} == {torch.float32}
    for name, p in _base_parameters(model).items():
        assert p.dtype == dtype and not p.requires_grad, name
        assert torch.equal(p, base[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method", ["lora", "cross_attn_gate", "houlsby_ln_out", "pfeiffer", "bitfit",
                                    "prompt_tuning"])
def test_a_float32_method_on_a_bfloat16_base_runs_without_autocast_and_matches_the_all_bfloat16_one(method):
    """The same (bf16-representable) method and head weights, kept in bf16 ('base') and in float32 ('auto'): the
    logits agree to bf16's resolution, the hidden states downstream of every Δh stay bf16, and the float32 head
    gives float32 logits."""
    stock = tiny_model("bert").to(torch.bfloat16)
    in_base, in_float32 = tiny_model("bert").to(torch.bfloat16), tiny_model("bert").to(torch.bfloat16)
    petl.apply(in_base, METHODS[method], method_dtype="base")
    petl.apply(in_float32, METHODS[method])
    assert all(p.dtype == torch.bfloat16 for p in _method_parameters(in_base).values())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in _method_parameters(in_base).values():  # W_up = 0 at start would hide the Δh
            p.add_(torch.randn(p.shape, generator=generator).to(p.dtype) * 0.5)
    in_float32.petl.load_state_dict(in_base.petl.state_dict())
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        expected, out = in_base(**batch, output_hidden_states=True), in_float32(**batch, output_hidden_states=True)
        unchanged = stock(**batch, output_hidden_states=True).hidden_states[-1].float()
    assert {h.dtype for h in out.hidden_states} == {torch.bfloat16} and out.logits.dtype == torch.float32
    got, want = out.hidden_states[-1].float(), expected.hidden_states[-1].float()
    change, error = (want - unchanged).abs().max().item(), (got - want).abs().max().item()
    assert change > 0, "the method changed nothing"
    assert error <= change / 4 and error <= 4 * torch.finfo(torch.bfloat16).eps * want.abs().max().item()


def test_method_dtype_base_keeps_a_half_precision_base_dtype():
    model = petl.apply(tiny_model("bert").to(torch.float16), "mam", method_dtype="base", **SMALL)
    assert {p.dtype for p in _trained(model).values()} == {torch.float16}
    assert model(**tiny_batch("bert")).logits.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_full_precision_bases_keep_their_dtype(dtype):
    model = petl.apply(tiny_model("bert").to(dtype), "mam", **SMALL)
    assert {p.dtype for p in _trained(model).values()} == {dtype}
    as_float32 = petl.apply(tiny_model("bart").to(dtype), "lora", method_dtype="float32", attn_bn=4)
    assert {p.dtype for p in _method_parameters(as_float32).values()} == {torch.float32}
    logits = as_float32(**tiny_batch("bart")).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()


@pytest.mark.parametrize("method_dtype, stored", [("auto", torch.float32), ("base", torch.bfloat16)])
def test_save_and_load_keep_the_method_dtype(tmp_path, method_dtype, stored):
    from safetensors.torch import load_file
    model = petl.apply(tiny_model("bert").to(torch.bfloat16), "mam", method_dtype=method_dtype, **SMALL)
    with torch.no_grad():
        for p in _method_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.1)
    petl.save(model, tmp_path / "m")
    saved = load_file(tmp_path / "m" / "petl_weights.safetensors")
    assert {t.dtype for name, t in saved.items() if name.startswith("petl.")} == {stored}
    loaded = petl.load(tiny_model("bert").to(torch.bfloat16), tmp_path / "m")
    assert petl.config_of(loaded).method_dtype == method_dtype
    for name, p in _method_parameters(loaded).items():
        assert p.dtype == stored and torch.equal(p, _method_parameters(model)[name]), name


def test_lora_in_float32_merges_into_a_bfloat16_base():
    model = petl.apply(tiny_model("bert").to(torch.bfloat16), "lora", attn_bn=4)
    with torch.no_grad():
        for p in _method_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.1)
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        hooked = model(**batch).logits
        petl.merge(model)
        merged = model(**batch).logits
    torch.testing.assert_close(merged.float(), hooked.float(), atol=3e-2, rtol=3e-2)


def test_bad_method_dtype_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"method_dtype='fp16'.*'auto', 'base', 'float32'"):
        petl.resolve("lora", method_dtype="fp16")


def test_method_dtype_at_its_default_leaves_run_ids_as_they_were():
    assert LATER_FIELDS["method_dtype"] == "auto" == petl.PETLConfig().method_dtype
    method = petl.resolve("mam").to_dict()
    before = {k: v for k, v in method.items() if k != "method_dtype"}  # a record written before the field existed
    resolved = {"train": {"task": "t"}, "computation": 2}
    assert config_hash(dict(resolved, petl=method)) == config_hash(dict(resolved, petl=before))
    assert config_hash(dict(resolved, petl=dict(method, method_dtype="base"))) != config_hash(
        dict(resolved, petl=before))
