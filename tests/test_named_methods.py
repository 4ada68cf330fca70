"""Several methods on one base model: each computes exactly what a model carrying only that method computes,
every method off is the base model, and only the active method trains."""
import copy

import pytest
import torch

import petl
from petl.core import modules_of
from conftest import tiny_batch, tiny_model


def _inputs(arch):
    return {k: v for k, v in tiny_batch(arch).items() if k != "labels"}


def _logits(model, arch):
    with torch.no_grad():
        return model(**_inputs(arch)).logits


def _perturb(model, name, seed):
    """Give the method `name` non-zero values, as after training (a fresh LoRA or adapter is a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in modules_of(model, name).parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


METHODS = {"lora": dict(variant="lora", attn_bn=4), "prefix": dict(variant="prefix", attn_bn=3),
           "mam": dict(variant="mam", attn_bn=3, ffn_bn=8)}


def _several(arch):
    model = tiny_model(arch)
    for seed, (name, options) in enumerate(METHODS.items()):
        petl.apply(model, options["variant"], name=name, **{k: v for k, v in options.items() if k != "variant"})
        _perturb(model, name, seed)
    return model.eval()


def _alone(arch, several, name):
    """A fresh model carrying only the method `name`, with the same values as in `several`."""
    options = METHODS[name]
    model = petl.apply(tiny_model(arch), options["variant"], **{k: v for k, v in options.items() if k != "variant"})
    modules_of(model).load_state_dict(modules_of(several, name).state_dict())
    return model.eval()


@pytest.mark.parametrize("arch", ["bert", "bart", "llama"])
def test_each_named_method_computes_what_it_computes_alone(arch):
    model = _several(arch)
    assert petl.method_names(model) == list(METHODS) and petl.active_method(model) == "mam"   # the last applied
    for name in METHODS:
        petl.set_active(model, name)
        assert torch.equal(_logits(model, arch), _logits(_alone(arch, model, name), arch)), name
    with petl.disabled(model):
        assert petl.active_method(model) is None
        assert torch.equal(_logits(model, arch), _logits(tiny_model(arch), arch))
    assert petl.active_method(model) == name                                    # back on after the block
    petl.set_active(model, None)
    assert torch.equal(_logits(model, arch), _logits(tiny_model(arch), arch))


def test_cached_generation_is_the_methods_alone():
    model = _several("llama")
    petl.set_active(model, "prefix")
    prompt = _inputs("llama")
    generate = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = _alone("llama", model, "prefix").generate(**prompt, **generate)
    assert torch.equal(model.generate(**prompt, **generate), expected)


def test_only_the_active_method_and_the_head_train():
    model = _several("bert")
    petl.set_active(model, "lora")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("petl.lora.", "classifier.")) for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable)
    model.train()
    batch = tiny_batch("bert")
    model(**batch).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable
    petl.set_active(model, None)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_save_and_load_a_named_method(tmp_path):
    model = _several("bert")
    petl.set_active(model, "lora")
    petl.save(model, tmp_path / "prefix", name="prefix")               # not the active one
    assert petl.active_method(model) == "lora"
    fresh = petl.load(tiny_model("bert"), tmp_path / "prefix", name="p")
    assert petl.method_names(fresh) == ["p"]
    petl.set_active(model, "prefix")
    assert torch.equal(_logits(fresh.eval(), "bert"), _logits(model, "bert"))
    petl.load(fresh, tmp_path / "prefix", name="p")                      # the same method again: reloaded in place
    petl.save(model, tmp_path / "lora", name="lora")
    with pytest.raises(ValueError, match=r"already carries a different petl method named 'p' \(prefix\)"):
        petl.load(fresh, tmp_path / "lora", name="p")


def test_merge_remove_and_unload_with_several_methods():
    model = _several("bert")
    petl.set_active(model, "lora")
    expected = _logits(model, "bert")
    petl.merge(model)
    with pytest.raises(ValueError, match="is merged into the base weights; petl.unmerge"):
        petl.set_active(model, "mam")
    with pytest.raises(ValueError, match="also carries the methods prefix, mam: petl.remove"):
        petl.unload(model)
    petl.remove(model, "prefix")
    petl.remove(model, "mam")
    plain = petl.unload(model)
    assert petl.method_names(plain) == [] and not any(k.startswith("petl") for k in plain.state_dict())
    torch.testing.assert_close(_logits(plain, "bert"), expected, rtol=1e-5, atol=1e-6)   # W + ΔW rounds once


def test_removing_the_last_method_gives_the_stock_model():
    model = _several("bert")
    for name in list(METHODS):
        petl.remove(model, name)
    assert not hasattr(model, "petl") and "save_pretrained" not in model.__dict__
    assert torch.equal(_logits(model, "bert"), _logits(tiny_model("bert"), "bert"))


def test_a_deep_copy_keeps_every_method_and_runs_its_own():
    model = _several("bert")
    twin = copy.deepcopy(model)
    for name in METHODS:
        petl.set_active(model, name)
        petl.set_active(twin, name)
        assert torch.equal(_logits(twin, "bert"), _logits(model, "bert"))
    with torch.no_grad():
        for parameter in modules_of(twin).parameters():
            parameter.zero_()
    assert not torch.equal(_logits(twin, "bert"), _logits(model, "bert"))


def test_bad_names_and_what_cannot_sit_together_are_refused(tmp_path):
    model = petl.apply(tiny_model("bert"), "lora")
    with pytest.raises(ValueError, match="already has a petl method named 'default' \\(lora\\)"):
        petl.apply(model, "prefix")
    for bad in ("a.b", "", "-x", "train", 3):
        with pytest.raises(ValueError, match="is not valid"):
            petl.apply(model, "prefix", name=bad)
    with pytest.raises(ValueError, match="full fine-tuning .* cannot sit beside another method"):
        petl.apply(model, "full", name="full")
    with pytest.raises(ValueError, match="no petl method named 'nope'; it has 'default'"):
        petl.set_active(model, "nope")
    petl.apply(model, "prefix", name="b")
    with pytest.raises(ValueError, match=r"carries 2 \(default, b\): save each with petl.save"):
        model.save_pretrained(tmp_path / "both")
    petl.set_active(model, None)
    with pytest.raises(ValueError, match="no petl method of this model is active"):
        petl.save(model, tmp_path / "none")
