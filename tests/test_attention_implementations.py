"""Prefix methods keep the model's own attention implementation (eager or SDPA) and add the prefix around it;
output_attentions does what it does on the stock model; implementations that cannot take a prefix are refused."""

from __future__ import annotations

import pytest
import torch
import transformers

import petl
from conftest import _HEAD, FAMILY, tiny_batch, tiny_config
from petl.methods import prefix

SMALL = dict(attn_bn=4, ffn_bn=4, mid_dim=8)
PREFIX_VARIANTS = ["prefix", "gated_prefix", "ungated_prefix", "mh_pa", "mam"]


def _stock(arch: str, implementation: str):
    torch.manual_seed(0)
    auto = getattr(transformers, _HEAD[FAMILY[arch]])
    return auto.from_config(tiny_config(arch), attn_implementation=implementation).eval()


def _with_prefix(arch: str, implementation: str, variant: str):
    model = petl.apply(_stock(arch, implementation), variant, **SMALL)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.normal_(0, 0.5)  # a prefix that matters
    return model


def _attentions(output):
    return getattr(output, "attentions", None) or getattr(output, "encoder_attentions", None) or ()


@pytest.mark.parametrize("variant", PREFIX_VARIANTS)
@pytest.mark.parametrize("arch", ["bert", "bart", "gpt2", "t5", "llama"])
def test_eager_and_sdpa_give_the_same_logits_and_keep_their_names(arch, variant):
    eager, sdpa = _with_prefix(arch, "eager", variant), _with_prefix(arch, "sdpa", variant)
    assert eager.config._attn_implementation == "petl_eager" and prefix.implementation_of(eager) == "eager"
    assert sdpa.config._attn_implementation == "petl_sdpa" and prefix.implementation_of(sdpa) == "sdpa"
    batch = tiny_batch(arch)
    with torch.no_grad():
        a, b = eager(**batch).logits, sdpa(**batch).logits
        assert not torch.allclose(a, _stock(arch, "eager")(**batch).logits, atol=1e-4)  # the prefix is there
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "bart", "llama"])
def test_output_attentions_under_eager_are_the_weights_over_the_prefix_and_the_keys(arch):
    batch = tiny_batch(arch)  # the last row is padded on the right
    length = SMALL["attn_bn"]
    with torch.no_grad():
        stock = _attentions(_stock(arch, "eager")(**batch, output_attentions=True))
        concat = _attentions(_with_prefix(arch, "eager", "prefix")(**batch, output_attentions=True))
        gated = _attentions(_with_prefix(arch, "eager", "gated_prefix")(**batch, output_attentions=True))
        ungated = _attentions(_with_prefix(arch, "eager", "ungated_prefix")(**batch, output_attentions=True))
    assert len(concat) == len(stock) > 0
    for ours, theirs in zip(concat, stock):
        b, h, q, k = theirs.shape
        assert ours.shape == (b, h, q, length + k)
        torch.testing.assert_close(ours.sum(-1), torch.ones(b, h, q))
        assert torch.all(ours[-1, :, :, length + k - 2:] == 0)  # padded keys get no weight, the prefix does
        assert torch.all(ours[..., :length] > 0)
    for weights in gated:  # Eq. 7: [λ softmax(q P_k), (1 - λ) softmax(q K)] is a distribution too
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    for weights in ungated:  # 'add': the prefix attention and the attention, each a distribution
        torch.testing.assert_close(weights[..., :length].sum(-1), torch.ones(weights.shape[:-1]))
        torch.testing.assert_close(weights[..., length:].sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("arch", ["bert", "bart"])
def test_output_attentions_under_sdpa_returns_what_the_stock_sdpa_model_returns(arch):
    batch = tiny_batch(arch)
    with torch.no_grad():
        stock = _stock(arch, "sdpa")(**batch, output_attentions=True)
        ours = _with_prefix(arch, "sdpa", "prefix")(**batch, output_attentions=True)
    assert _attentions(ours) == _attentions(stock) == ()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bart", "t5"])
@pytest.mark.parametrize("variant", ["prefix", "gated_prefix"])
def test_generate_under_eager_uses_the_cache_and_beams(arch, variant):
    model = _with_prefix(arch, "eager", variant)
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  pad_token_id=1, eos_token_id=None)
    cached = model.generate(**common, use_cache=True)
    assert torch.equal(cached, model.generate(**common, use_cache=False))
    assert torch.equal(cached, _with_prefix(arch, "sdpa", variant).generate(**common, use_cache=True))
    assert model.generate(**common, num_beams=3, num_return_sequences=3).shape[0] == 6


@pytest.mark.parametrize("implementation, reason", [("flash_attention_2", "2-D padding mask"),
                                                    ("flex_attention", "BlockMask"),
                                                    ("paged|sdpa", "cache blocks")])
def test_implementations_that_cannot_take_a_prefix_are_refused_before_anything_is_attached(implementation, reason):
    model = _stock("bart", "sdpa")
    model.config._attn_implementation_internal = implementation  # as if loaded with it (no such kernel here)
    with pytest.raises(ValueError, match=rf"{implementation!r}.*{reason}.*'sdpa' or 'eager'"):
        petl.apply(model, "prefix", **SMALL)
    assert petl.config_of(model) is None and model.config._attn_implementation == implementation


def test_changing_the_implementation_after_apply_is_refused_and_petl_names_switch():
    model = _with_prefix("bart", "sdpa", "prefix")
    batch = tiny_batch("bart")
    with torch.no_grad():
        expected = model(**batch).logits
        model.set_attn_implementation("eager")
        with pytest.raises(RuntimeError, match=r"'eager' after petl.apply.*petl_eager"):
            model(**batch)
        model.set_attn_implementation("petl_eager")
        torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
