"""petl core: every preset on every architecture, the paper's identities, counts, round trips."""

from __future__ import annotations

import copy

import pytest
import torch

import petl
from conftest import ARCHS, FAMILY, PAD, tiny_batch, tiny_config, tiny_model
from petl.core import head_parameters, modules_of

SMALL = dict(attn_bn=4, ffn_bn=4, mid_dim=8)
NO_BIAS = {"llama", "t5"}  # BitFit needs biases


def _cases():
    for arch in ARCHS:
        for variant in petl.VARIANTS:
            if variant == "bitfit" and arch in NO_BIAS:
                continue
            yield arch, variant


def _sizes(arch: str) -> dict:
    """Counts of the paper's sublayers, from the config alone (independent of petl.sites)."""
    config = tiny_config(arch)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or config.n_embd
    if FAMILY[arch] == "seq2seq":
        enc = getattr(config, "encoder_layers", None) or config.num_layers
        dec = getattr(config, "decoder_layers", None) or config.num_decoder_layers or config.num_layers
        heads = getattr(config, "encoder_attention_heads", None) or config.num_heads
        attn, ffn = enc + 2 * dec, enc + dec
    else:
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        heads = getattr(config, "num_attention_heads", None) or config.n_head
        attn = ffn = layers
    head_dim = getattr(config, "d_kv", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inner = (getattr(config, "intermediate_size", None) or getattr(config, "encoder_ffn_dim", None)
             or getattr(config, "d_ff", None) or 4 * hidden)
    ffn_matrices = 3 if arch == "llama" else 2
    q_out = heads * head_dim
    return dict(hidden=hidden, attn=attn, ffn=ffn, kv=kv_heads * head_dim, inner=inner, q_out=q_out,
                ffn_matrices=ffn_matrices)


def paper_formula(arch: str, variant: str, model) -> int:
    """Appendix B: prefix 2·l·d_kv per attention sublayer, adapter 2·r·d, LoRA r·(d_in + d_out) per matrix."""
    s, c = _sizes(arch), petl.resolve(variant, **SMALL)
    d, l, r_attn, r_ffn = s["hidden"], c.attn_bn, c.attn_bn, c.ffn_bn
    total = 0
    if c.attn_mode in ("prefix", "prefix_nomlp"):
        total += 2 * l * s["kv"] * s["attn"]
    if c.attn_mode == "prompt_tuning":
        total += l * d
    if c.attn_mode == "adapter":
        total += 2 * r_attn * d * s["attn"]
    if c.attn_mode == "lora":  # W_q (d -> q_out) and W_v (d -> kv)
        total += r_attn * ((d + s["q_out"]) + (d + s["kv"])) * s["attn"]
    if c.ffn_mode == "adapter":
        total += 2 * r_ffn * d * s["ffn"]
    if c.ffn_mode == "lora":  # each FFN matrix d <-> inner
        total += r_ffn * (d + s["inner"]) * s["ffn_matrices"] * s["ffn"]
    if c.attn_mode == "bitfit":
        total += sum(m.bias.numel() for m in model.base_model.modules()
                     if isinstance(getattr(m, "bias", None), torch.nn.Parameter))
    if c.full_finetune:
        total = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head_parameters(model).values())
    return total


@pytest.mark.parametrize("arch,variant", list(_cases()))
def test_preset_trains_exactly_its_parameters(arch, variant):
    model = tiny_model(arch)
    base_count = sum(p.numel() for p in model.parameters())
    petl.apply(model, variant, **({} if variant == "full" else SMALL))
    model.train()
    loss = model(**tiny_batch(arch)).loss
    loss.backward()
    assert torch.isfinite(loss)
    method = {id(p) for p in modules_of(model).parameters()}
    head = {id(p) for p in head_parameters(model).values()}
    intended = {id(p) for p in model.parameters()} if variant == "full" else method | head
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    got_gradient = {id(p) for p in model.parameters() if p.grad is not None}
    assert trainable == intended
    assert got_gradient == intended
    report = petl.parameter_report(model)
    assert report["backbone"] + report["head"] == base_count
    assert report["paper"] == paper_formula(arch, variant, model)
    assert report["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["lora", "lora_ffn", "scaled_pa"])
def test_lora_initialised_methods_start_as_exact_no_ops(arch, variant):
    batch = tiny_batch(arch)
    reference = tiny_model(arch)
    model = petl.apply(copy.deepcopy(reference), variant, **SMALL)
    with torch.no_grad():
        assert torch.equal(reference(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("arch", ["bert", "bart", "llama", "gpt2", "t5"])
def test_eq7_prefix_tuning_equals_gated_separate_attention(arch):
    """Eq. 7: concat(P, C) attention == (1 - λ) Attn(C) + λ Attn(P), with the same prefix."""
    batch = tiny_batch(arch)
    concat = petl.apply(tiny_model(arch), "prefix_nomlp", attn_bn=5)
    torch.manual_seed(1)
    with torch.no_grad():  # a prefix that matters (its initial 0.02 scale barely moves a random model's logits)
        for p in concat.petl.parameters():
            p.normal_(0, 1.0)
    gated = petl.apply(tiny_model(arch), "prefix_nomlp", attn_option="cross_attn_noln",
                       attn_composition="gate_add", attn_bn=5)
    gated.petl.load_state_dict(concat.petl.state_dict())
    ungated = petl.apply(tiny_model(arch), "prefix_nomlp", attn_option="cross_attn_noln", attn_bn=5)
    ungated.petl.load_state_dict(concat.petl.state_dict())
    plain = tiny_model(arch)
    with torch.no_grad():
        a, b = concat(**batch).logits, gated(**batch).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a, plain(**batch).logits, atol=1e-4)  # the prefix does change the output
        assert not torch.allclose(a, ungated(**batch).logits, atol=1e-4)  # and the gate matters


def _pad_right(arch, ids, extra):
    padded = torch.cat([ids, torch.full((ids.shape[0], extra), PAD)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(ids.shape[0], extra, dtype=torch.long)], dim=1)
    return padded, mask


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama", "gpt2", "bart"])
@pytest.mark.parametrize("variant", ["prefix", "gated_prefix", "mh_pa", "mam"])
def test_padding_and_future_tokens_cannot_change_outputs(arch, variant):
    model = petl.apply(tiny_model(arch), variant, **SMALL)
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (2, 6))
    padded, mask = _pad_right(arch, ids, 3)
    extra = {}
    if FAMILY[arch] == "seq2seq":
        extra = dict(decoder_input_ids=torch.randint(3, 90, (2, 4)))
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
        noisy = model(input_ids=padded, attention_mask=mask, **extra).logits
        torch.testing.assert_close(clean, noisy[:, :clean.shape[1]] if FAMILY[arch] == "decoder" else noisy,
                                   atol=1e-5, rtol=1e-5)
        if FAMILY[arch] in ("decoder", "seq2seq"):
            key = "decoder_input_ids" if FAMILY[arch] == "seq2seq" else "input_ids"
            inputs = dict(input_ids=ids, **extra)
            changed = dict(inputs)
            changed[key] = inputs[key].clone()
            changed[key][:, -1] = 5  # a different last token
            before, after = model(**inputs).logits, model(**changed).logits
            torch.testing.assert_close(before[:, :-1], after[:, :-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bart", "t5"])
@pytest.mark.parametrize("variant", ["prefix", "gated_prefix", "mam"])
def test_generate_with_prefix_uses_cache_and_beams(arch, variant):
    model = petl.apply(tiny_model(arch), variant, **SMALL)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a prefix that matters
    ids = torch.randint(3, 90, (2, 5))
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  pad_token_id=1, eos_token_id=None)
    cached = model.generate(**common, use_cache=True)
    uncached = model.generate(**common, use_cache=False)
    assert torch.equal(cached, uncached)
    beams = model.generate(**common, num_beams=3, num_return_sequences=3)
    assert beams.shape[0] == 6


def test_save_load_round_trip_and_wrong_base_model(tmp_path):
    model = petl.apply(tiny_model("bert"), "mam", **SMALL)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p))
        model.classifier.weight.add_(1.0)
    batch = tiny_batch("bert")
    petl.save(model, tmp_path / "m")
    fresh = petl.load(tiny_model("bert"), tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, fresh(**batch).logits)
    assert petl.config_of(fresh) == petl.config_of(model)
    with pytest.raises(ValueError, match="another base model"):
        petl.load(tiny_model("roberta"), tmp_path / "m")
    bigger = tiny_config("bert")
    bigger.hidden_size, bigger.intermediate_size = 48, 96
    from transformers import AutoModelForSequenceClassification
    with pytest.raises(ValueError, match="hidden_size"):
        petl.load(AutoModelForSequenceClassification.from_config(bigger), tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="petl.save"):
        petl.load(tiny_model("bert"), tmp_path / "nothing")


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "bart"])
@pytest.mark.parametrize("variant", ["lora", "lora_ffn", "bitfit"])
def test_merge_unmerge_round_trip(arch, variant):
    if variant == "bitfit" and arch in NO_BIAS:
        pytest.skip("no biases")
    model = petl.apply(tiny_model(arch), variant, **SMALL)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = tiny_batch(arch)
    with torch.no_grad():
        hooked = model(**batch).logits
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        merged = petl.merge(model)(**batch).logits
        assert any(not torch.equal(weights[n], p) for n, p in model.named_parameters() if n in weights)
        assert hooks > 0 and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        unmerged = petl.unmerge(model)(**batch).logits
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    torch.testing.assert_close(hooked, merged, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hooked, unmerged, atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(weights[name], p, atol=1e-6, rtol=0)


def test_merge_refuses_nonlinear_methods():
    model = petl.apply(tiny_model("bert"), "mam", **SMALL)
    with pytest.raises(ValueError, match="linear in the input"):
        petl.merge(model)


def test_bad_configs_name_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"attn_mode='prefixx'.*'prefix'"):
        petl.PETLConfig(attn_mode="prefixx")
    with pytest.raises(ValueError, match="unknown variant 'mamm'.*mam"):
        petl.resolve("mamm")
    with pytest.raises(ValueError, match="attn_option='parallel' is not valid with attn_mode='prefix'"):
        petl.resolve("prefix", attn_option="parallel")
    with pytest.raises(ValueError, match="gate_add"):
        petl.resolve("prefix", attn_composition="gate_add")
    with pytest.raises(ValueError, match="ffn_bn=0"):
        petl.resolve("mam", ffn_bn=0)
    with pytest.raises(ValueError, match=r"unknown PETLConfig option\(s\) \['ffn_size'\]"):
        petl.resolve("mam", ffn_size=3)
    with pytest.raises(ValueError, match="ffn_adapter_scalar"):
        petl.resolve("mam", ffn_adapter_scalar="big")
    with pytest.raises(ValueError, match="already has a petl method"):
        petl.apply(petl.apply(tiny_model("bert"), "lora", **SMALL), "lora")


def test_a_structure_without_attention_modules_is_refused_naming_what_was_looked_for():
    from transformers import XLNetConfig, XLNetLMHeadModel  # XLNet keeps q, k, v as bare parameters
    model = XLNetLMHeadModel(XLNetConfig(d_model=32, n_layer=1, n_head=4, d_inner=64, vocab_size=50))
    with pytest.raises(ValueError, match="found no list of layers with attention modules.*q_proj.*qkv_proj.*OVERRIDES"):
        petl.apply(model, "lora")


def test_config_round_trips_through_json():
    for variant in petl.VARIANTS:
        config = petl.resolve(variant)
        assert petl.PETLConfig.from_json(config.to_json()) == config


def test_lora_rank_override_keeps_the_papers_scale():
    config = petl.resolve("lora", attn_bn=8)
    assert config.lora_alpha / config.attn_bn == pytest.approx(4.0)
    assert petl.resolve("lora", attn_bn=8, lora_alpha=8).lora_alpha == 8
