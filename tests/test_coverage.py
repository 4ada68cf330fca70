"""Coverage by structure: petl finds the sites of eighteen architectures from their modules (petl.sites), and every
method does on them what the mechanism tests check on the main eight (tests/test_core.py): LoRA-initialised methods
start as exact no-ops, LoRA merges and unmerges, the paper's parameter counts come out of the configs, training
moves only the method and the head, prompt tuning keeps outputs aligned with inputs, and under a prefix cached generation
equals uncached generation.
"""
from __future__ import annotations

import copy

import pytest
import torch

import petl
from conftest import ARCHS, COVERAGE_ARCHS, FAMILY, tiny_batch, tiny_config, tiny_model
from petl import sites

SMALL = dict(attn_bn=4, ffn_bn=4, mid_dim=8)
NO_PREFIX = {"deberta-v2"}  # disentangled attention in its own code, outside transformers' attention functions


def _layers(arch: str) -> tuple[int, int]:
    """(encoder layers, decoder layers) from the config alone (0 where the model has no such stack)."""
    config = tiny_config(arch)
    if FAMILY[arch] == "seq2seq":
        enc = getattr(config, "encoder_layers", None) or config.num_layers
        dec = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or enc
        return enc, dec
    return (config.num_hidden_layers, 0) if FAMILY[arch] == "encoder" else (0, config.num_hidden_layers)


def _shape(arch: str) -> dict:
    config = tiny_config(arch)
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return dict(hidden=hidden, q=heads * head_dim, kv=kv_heads * head_dim)


@pytest.mark.parametrize("arch", COVERAGE_ARCHS)
def test_sites_and_the_papers_parameter_counts_follow_from_the_config(arch):
    enc, dec = _layers(arch)
    cross = dec if FAMILY[arch] == "seq2seq" else 0
    attention, ffn = enc + dec + cross, enc + dec
    found = sites.find_sites(tiny_model(arch))
    kinds = [s.kind for s in found.attention]
    assert (kinds.count("encoder"), kinds.count("decoder"), kinds.count("cross")) == (enc, dec, cross)
    assert len(found.ffn) == ffn
    s, r = _shape(arch), SMALL["attn_bn"]
    counts = {"lora": attention * r * ((s["hidden"] + s["q"]) + (s["hidden"] + s["kv"])),  # W_q and W_v
              "pa_ffn": ffn * 2 * r * s["hidden"]}                                          # Appendix B: 2·r·d
    if arch not in NO_PREFIX:
        counts["prefix"] = attention * 2 * r * s["kv"]                                       # 2·l·d_kv per layer
    for variant, expected in counts.items():
        model = petl.apply(tiny_model(arch), variant, **SMALL)
        assert petl.parameter_report(model)["paper"] == expected, variant


@pytest.mark.parametrize("arch", COVERAGE_ARCHS)
def test_lora_initialised_methods_start_as_exact_no_ops(arch):
    batch = tiny_batch(arch)
    reference = tiny_model(arch)
    with torch.no_grad():
        expected = reference(**batch).logits
        for variant in ("lora", "lora_ffn", "scaled_pa"):
            model = petl.apply(copy.deepcopy(reference), variant, **SMALL)
            assert torch.equal(expected, model(**batch).logits), variant


@pytest.mark.parametrize("arch", COVERAGE_ARCHS)
def test_lora_merges_into_the_weights_and_back(arch):
    model = petl.apply(tiny_model(arch), petl.PETLConfig(attn_mode="lora", ffn_mode="lora", attn_bn=4, ffn_bn=4,
                                                         lora_alpha=16.0))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = tiny_batch(arch)
    with torch.no_grad():
        hooked = model(**batch).logits
        merged = petl.merge(model)(**batch).logits
        unmerged = petl.unmerge(model)(**batch).logits
    assert not torch.allclose(hooked, tiny_model(arch)(**batch).logits, atol=1e-4)  # LoRA does change the output
    scale = float(hooked.abs().max())  # float32 rounding of W + ΔW grows with the logits (mT5's reach ~20)
    torch.testing.assert_close(hooked, merged, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    torch.testing.assert_close(hooked, unmerged, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    for name, p in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(weights[name], p, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", COVERAGE_ARCHS)
def test_a_training_step_moves_only_the_method_and_the_head(arch):
    variant = "scaled_pa" if arch in NO_PREFIX else "mam"
    model = petl.apply(tiny_model(arch), variant, **SMALL).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = model(**tiny_batch(arch)).loss
    loss.backward()
    assert torch.isfinite(loss)
    method = [n for n in trained if n.startswith("petl.")]
    assert method and all(dict(model.named_parameters())[n].grad is not None for n in method)
    optimizer.step()
    parameters = dict(model.named_parameters())
    assert all(torch.equal(frozen[n], parameters[n]) for n in frozen)
    assert any(not torch.equal(trained[n], parameters[n]) for n in method)


@pytest.mark.parametrize("arch", [a for a in COVERAGE_ARCHS if FAMILY[a] != "encoder"])
def test_generation_under_a_prefix_with_the_cache_equals_without_it(arch):
    model = petl.apply(tiny_model(arch), "prefix", **SMALL)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a prefix that matters
    ids = torch.randint(4, 90, (2, 5))
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  pad_token_id=1, eos_token_id=None)
    cached = model.generate(**common, use_cache=True)
    assert torch.equal(cached, model.generate(**common, use_cache=False))
    batch = tiny_batch(arch)
    with torch.no_grad():
        logits = model(**batch).logits
        with petl.disabled(model):
            assert not torch.allclose(logits, model(**batch).logits, atol=1e-4)  # the prefix does matter


@pytest.mark.parametrize("arch", [a for a in COVERAGE_ARCHS if FAMILY[a] == "encoder" and a not in NO_PREFIX])
def test_an_encoders_prefix_sees_no_padding(arch):
    model = petl.apply(tiny_model(arch), "prefix", **SMALL)
    torch.manual_seed(1)
    ids = torch.randint(4, 90, (2, 6))
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        clean = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(clean, model(input_ids=padded, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


def test_prefix_is_refused_where_it_cannot_enter_the_attention():
    with pytest.raises(ValueError, match=r"\['DisentangledSelfAttention'\] compute attention in their own code"):
        petl.apply(tiny_model("deberta-v2"), "prefix", **SMALL)
    petl.apply(tiny_model("deberta-v2"), "lora", **SMALL)  # the other methods work there
    import transformers
    config = tiny_config("gemma2")
    config.attn_logit_softcapping = 50.0
    capped = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with pytest.raises(ValueError, match="attn_logit_softcapping=50.0"):
        petl.apply(capped, "mam", **SMALL)
    assert not petl.method_names(capped)  # refused before anything was attached


#: The table petl kept before it found sites from the structure, as Structures: what is found must be the same.
def _llama_like():
    return (sites.StackSpec("decoder", "layers", (sites.AttentionSpec("decoder", "self_attn", "q_proj", "k_proj",
                                                                      "v_proj", "self_attn.o_proj"),),
                            sites.FFNSpec("post_attention_layernorm", "mlp.down_proj",
                                          ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), ("output", ""), "mlp")),)


def _seq2seq(ffn):
    def attention(kind, path):
        return sites.AttentionSpec(kind, path, "q_proj", "k_proj", "v_proj", f"{path}.out_proj")
    return (sites.StackSpec("encoder", "encoder.layers", (attention("encoder", "self_attn"),), ffn),
            sites.StackSpec("decoder", "decoder.layers", (attention("decoder", "self_attn"),
                                                          attention("cross", "encoder_attn")), ffn))


def _t5():
    def ffn(i):
        return sites.FFNSpec(f"layer.{i}.layer_norm", f"layer.{i}.DenseReluDense.wo",
                             (f"layer.{i}.DenseReluDense.wi", f"layer.{i}.DenseReluDense.wo"),
                             ("output", f"layer.{i}"), f"layer.{i}.dropout")

    def attention(kind, path):
        return sites.AttentionSpec(kind, path, "q", "k", "v", f"{path}.o")
    return (sites.StackSpec("encoder", "encoder.block", (attention("encoder", "layer.0.SelfAttention"),), ffn(1)),
            sites.StackSpec("decoder", "decoder.block", (attention("decoder", "layer.0.SelfAttention"),
                                                         attention("cross", "layer.1.EncDecAttention")), ffn(2)))


_BERT = (sites.StackSpec("encoder", "encoder.layer", (sites.AttentionSpec("encoder", "attention.self", "query", "key",
                                                                          "value", "attention.output.dense"),),
                         sites.FFNSpec("intermediate", "output.dense", ("intermediate.dense", "output.dense"),
                                       ("input", "output.LayerNorm"), "output.dropout")),)
_BART_FFN = sites.FFNSpec("fc1", "fc2", ("fc1", "fc2"), ("input", "final_layer_norm"), None)
_MBART_FFN = sites.FFNSpec("final_layer_norm", "fc2", ("fc1", "fc2"), ("output", ""), None)
FORMER_TABLE = {
    "bert": _BERT, "roberta": _BERT, "bart": _seq2seq(_BART_FFN), "mbart": _seq2seq(_MBART_FFN),
    "marian": _seq2seq(_BART_FFN), "llama": _llama_like(), "mistral": _llama_like(), "qwen2": _llama_like(),
    "t5": _t5(),
    "gpt2": (sites.StackSpec("decoder", "h", (sites.AttentionSpec("decoder", "attn", ("c_attn", 0), ("c_attn", 1),
                                                                  ("c_attn", 2), "attn.c_proj"),),
                             sites.FFNSpec("ln_2", "mlp.c_proj", ("mlp.c_fc", "mlp.c_proj"), ("output", ""), "mlp")),),
}


@pytest.mark.parametrize("arch", sorted(FORMER_TABLE))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_structure_found_is_the_table_petl_had_for_its_first_ten_architectures(arch, dropout):
    """Also with dropout on, where the traced training pass must tell FFN(x) from FFN(x) after the dropout."""
    import transformers
    config = tiny_config(arch)
    for name in ("dropout", "hidden_dropout_prob", "dropout_rate", "resid_pdrop", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, dropout)
    auto = {"encoder": transformers.AutoModelForSequenceClassification, "seq2seq": transformers.AutoModelForSeq2SeqLM,
            "decoder": transformers.AutoModelForCausalLM}[FAMILY.get(arch, "decoder")]
    assert sites.trace_structure(auto.from_config(config)) == FORMER_TABLE[arch]


def test_finding_the_structure_leaves_the_model_and_the_random_state_as_they_were():
    model = tiny_model("bart")
    model.model.encoder.train()  # a mixed state: the tracer switches modes and must restore each
    modes = {n: m.training for n, m in model.named_modules()}
    state = torch.random.get_rng_state()
    sites.trace_structure(model)
    assert torch.equal(state, torch.random.get_rng_state())
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_an_override_describes_a_model_by_hand(monkeypatch):
    model = tiny_model("bert")
    monkeypatch.setitem(sites.OVERRIDES, "bert", FORMER_TABLE["bert"])
    monkeypatch.setattr(sites, "trace_structure", lambda m: pytest.fail("an override is not traced"))
    petl.apply(model, "mam", **SMALL)
    assert len(sites.find_sites(model).attention) == 2


def test_the_main_architectures_are_among_those_covered():
    assert set(ARCHS) <= set(COVERAGE_ARCHS) and len(COVERAGE_ARCHS) == 18


@pytest.mark.parametrize("arch", COVERAGE_ARCHS)
def test_prompt_tuning_keeps_the_outputs_aligned_with_the_inputs(arch):
    batch = tiny_batch(arch)
    reference = tiny_model(arch)
    model = petl.apply(tiny_model(arch), "prompt_tuning", attn_bn=3)
    with torch.no_grad():
        base, prompted = reference(**batch), model(**batch)
    assert prompted.logits.shape == base.logits.shape
    assert not torch.allclose(prompted.logits, base.logits, atol=1e-6, rtol=1e-4)  # every layer sees the prompt
    assert torch.isfinite(prompted.loss)


def test_a_weightless_model_is_traced_through_a_small_stand_in_of_its_class():
    import transformers
    config = tiny_config("llama")
    config.num_hidden_layers = 5
    with torch.device("meta"):
        weightless = transformers.AutoModelForCausalLM.from_config(config)
    assert sites.structure_of(weightless) == sites.trace_structure(transformers.AutoModelForCausalLM.from_config(config))
    model = petl.apply(weightless, "mam", **SMALL)
    assert len(sites.find_sites(model).ffn) == 5 and model.get_input_embeddings().weight.device.type == "meta"
