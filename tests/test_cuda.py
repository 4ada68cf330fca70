"""The same mechanisms on a CUDA device under bf16 autocast (skipped where no GPU is present, e.g. in CI)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch, tiny_model

import petl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL = dict(attn_bn=4, ffn_bn=4, mid_dim=8)


def _cuda(batch):
    return {k: v.cuda() for k, v in batch.items()}


@pytest.mark.parametrize("arch", ["bert", "bart", "llama", "gpt2"])
@pytest.mark.parametrize("variant", ["prefix", "gated_prefix", "mh_pa", "mam", "lora", "houlsby", "prompt_tuning"])
def test_train_step_under_bf16_autocast(arch, variant):
    model = petl.apply(tiny_model(arch), variant, **SMALL).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**_cuda(tiny_batch(arch))).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ["bart", "llama"])
def test_generate_with_prefix_cache_equals_no_cache_on_cuda(arch):
    model = petl.apply(tiny_model(arch), "mam", **SMALL).cuda()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.petl.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ids = torch.randint(3, 90, (2, 5), device="cuda")
    common = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  pad_token_id=1, eos_token_id=None)
    assert torch.equal(model.generate(**common, use_cache=True), model.generate(**common, use_cache=False))


def test_eq7_and_merge_on_cuda():
    batch = _cuda(tiny_batch("llama"))
    concat = petl.apply(tiny_model("llama"), "prefix_nomlp", attn_bn=5).cuda()
    gated = petl.apply(tiny_model("llama"), "prefix_nomlp", attn_bn=5, attn_option="cross_attn_noln",
                       attn_composition="gate_add").cuda()
    gated.petl.load_state_dict(concat.petl.state_dict())
    lora = petl.apply(tiny_model("llama"), "lora", **SMALL).cuda()
    with torch.no_grad():
        for p in lora.petl.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        torch.testing.assert_close(concat(**batch).logits, gated(**batch).logits, atol=1e-4, rtol=1e-4)
        hooked = lora(**batch).logits
        torch.testing.assert_close(hooked, petl.merge(lora)(**batch).logits, atol=1e-4, rtol=1e-4)
