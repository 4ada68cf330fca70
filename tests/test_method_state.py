"""What a method's modules do across the life of a model: train()/eval(), parameter edits, dtype changes,
state loading, deep copies and gradient checkpointing (reentrant and not) must never give a silently wrong
result."""

from __future__ import annotations

import copy

import pytest
import torch

import petl
from conftest import tiny_batch, tiny_model

ARCHS = ("bert", "bart", "t5", "llama")
PRESETS = sorted(petl.PRESETS)


def _with_nonzero_method(arch: str, variant: str, seed: int = 0):
    model = tiny_model(arch, seed).double()
    if variant == "bitfit" and arch in ("t5", "llama"):
        pytest.skip(f"{arch} has no bias terms for BitFit")
    petl.apply(model, variant, **({"attn_bn": 4, "ffn_bn": 4} if variant not in ("full", "bitfit") else {}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every zero initialisation (LoRA's W_up, BitFit's Δb) made non-zero
        for parameter in petl.core.modules_of(model).parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def test_the_models_mode_governs_the_method():
    model = tiny_model("bart").eval()
    petl.apply(model, "lora", lora_dropout=0.5)
    assert not any(m.training for m in model.modules())
    batch = tiny_batch("bart")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)
    model.train()
    assert all(m.training for m in petl.core.modules_of(model).modules())


@pytest.mark.parametrize("edit", ["data", "load_state_dict", "to_double"])
def test_no_stale_prefix(edit):
    model = _with_nonzero_method("bart", "prefix")
    batch = tiny_batch("bart")
    with torch.no_grad():
        before = model(**batch).logits
    modules = petl.core.modules_of(model)
    if edit == "data":
        for parameter in modules.parameters():
            parameter.data.mul_(1.5)
    elif edit == "load_state_dict":
        state = {k: v * 1.5 for k, v in modules.state_dict().items()}
        modules.load_state_dict(state)
    else:
        model.float()
        model.double()
        for parameter in modules.parameters():
            parameter.data.mul_(1.5)
    with torch.no_grad():
        after = model(**batch).logits
    fresh = _with_nonzero_method("bart", "prefix")
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = fresh(**batch).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["prefix", "mam", "lora", "houlsby", "prompt_tuning"])
def test_deepcopy_at_any_point_of_training(variant):
    model = _with_nonzero_method("bart", variant)
    model.train()
    batch = tiny_batch("bart")
    model(**batch).loss.backward()  # after a step's forward and backward, as an EMA or best-model copy is made
    copied = copy.deepcopy(model)
    model.eval(), copied.eval()
    with torch.no_grad():
        torch.testing.assert_close(copied(**batch).logits, model(**batch).logits, rtol=0, atol=0)
        for parameter in petl.core.modules_of(copied).parameters():  # the copy runs its own modules
            parameter.add_(torch.randn_like(parameter))
        assert not torch.allclose(copied(**batch).logits, model(**batch).logits)


def _gradients(model, batch, checkpointing):
    model.zero_grad(set_to_none=True)
    model.train()
    if checkpointing is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": checkpointing})
    else:
        model.activation_checkpointing_disable()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", PRESETS)
def test_gradient_checkpointing_gives_the_same_gradients(arch, variant):
    model = _with_nonzero_method(arch, variant)
    batch = tiny_batch(arch)
    plain = _gradients(model, batch, None)
    assert plain
    for reentrant in (True, False):
        checked = _gradients(model, batch, reentrant)
        assert set(checked) == set(plain), (reentrant, set(plain) ^ set(checked))
        for name in plain:
            torch.testing.assert_close(checked[name], plain[name], rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"{name}, use_reentrant={reentrant}: {m}")
