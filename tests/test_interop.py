"""petl next to PEFT: LoRA saved by petl loads in PEFT with the same logits, PEFT's LoRA folders load in petl,
what has no exact PEFT form is refused with the reason; saved folders are readable by others; merge + unload gives
a plain transformers model."""
import json
import stat

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import petl
from petl.core import config_of, modules_of
from conftest import tiny_batch, tiny_model


def _trained(arch: str, variant: str, **overrides):
    """A model whose method and head hold non-zero values, as after training."""
    model = petl.apply(tiny_model(arch), variant, **overrides)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _logits(model, arch):
    batch = {k: v for k, v in tiny_batch(arch).items() if k != "labels"}
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("arch, variant, overrides", [
    ("bert", "lora", dict(attn_bn=4)),
    ("roberta", "lora", dict(attn_bn=4, lora_dropout=0.1)),
    ("bert", "lora_ffn", dict(ffn_bn=4)),
    ("llama", "lora", dict(attn_bn=4, ffn_mode="lora", ffn_bn=2)),     # both, with two ranks (rank_pattern)
    ("bart", "lora", dict(attn_bn=4)),
])
def test_petl_lora_loads_in_peft_with_the_same_logits_and_back(tmp_path, arch, variant, overrides):
    model = _trained(arch, variant, **overrides)
    folder = petl.save(model, tmp_path / "method")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    peft_model = PeftModel.from_pretrained(tiny_model(arch), str(folder)).eval()
    torch.testing.assert_close(_logits(peft_model, arch), _logits(model, arch), rtol=1e-5, atol=1e-6)
    # petl reads the PEFT files alone too (the petl files removed)
    (folder / "petl_config.json").unlink()
    (folder / "petl_weights.safetensors").unlink()
    again = petl.load(tiny_model(arch), folder).eval()
    assert config_of(again).attn_mode == config_of(model).attn_mode
    torch.testing.assert_close(_logits(again, arch), _logits(model, arch), rtol=1e-5, atol=1e-6)


def test_a_folder_peft_wrote_loads_in_petl(tmp_path):
    base = tiny_model("bert")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                 modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    peft_model.eval().save_pretrained(tmp_path / "peft")
    model = petl.load(tiny_model("bert"), tmp_path / "peft").eval()
    assert (config_of(model).attn_mode, config_of(model).attn_bn, config_of(model).lora_alpha) == ("lora", 4, 8.0)
    torch.testing.assert_close(_logits(model, "bert"), _logits(peft_model, "bert"), rtol=1e-5, atol=1e-6)


def test_a_peft_folder_petl_cannot_compute_is_refused_naming_why(tmp_path):
    peft_model = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query"]))
    peft_model.save_pretrained(tmp_path / "q-only")
    with pytest.raises(ValueError, match=r"puts LoRA on 2 modules .*W_q and W_v of every attention \(4 modules\)"):
        petl.load(tiny_model("bert"), tmp_path / "q-only")


@pytest.mark.parametrize("arch, variant, reason", [
    ("bart", "prompt_tuning", "gives the prompt positions 0..l-1"),
    ("bert", "mam", "only LoRA is exported"),
    ("gpt2", "lora", "fused or Conv1D projection"),
])
def test_what_peft_computes_otherwise_is_not_exported(tmp_path, arch, variant, reason):
    model = _trained(arch, variant)
    folder = petl.save(model, tmp_path / "method")                    # petl's own files only
    assert not (folder / "adapter_config.json").exists()
    with pytest.raises(ValueError, match=reason):
        petl.save(model, tmp_path / "strict", peft=True)


def test_saved_folders_are_readable_by_others(tmp_path):
    folder = petl.save(_trained("bert", "lora", attn_bn=4), tmp_path / "method")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for file in folder.iterdir():
        assert file.stat().st_mode & 0o044 == 0o044, file.name


def test_merge_then_unload_gives_a_plain_model(tmp_path):
    model = _trained("bert", "lora", attn_bn=4)
    expected = _logits(model, "bert")
    with pytest.raises(ValueError, match="merge it first"):
        petl.unload(model)
    plain = petl.unload(petl.merge(model))
    assert config_of(plain) is None and not any(k.startswith("petl.") for k in plain.state_dict())
    torch.testing.assert_close(_logits(plain, "bert"), expected, rtol=1e-5, atol=1e-6)
    plain.save_pretrained(tmp_path / "plain")
    reloaded = type(plain).from_pretrained(tmp_path / "plain").eval()
    torch.testing.assert_close(_logits(reloaded, "bert"), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no petl method"):
        modules_of(plain)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["model_type"] == "bert"


@pytest.mark.slow
def test_save_pretrained_and_the_trainer_keep_the_method(tmp_path):
    from transformers import Trainer, TrainingArguments
    batch = tiny_batch("bert", batch=8)
    examples = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    model = petl.apply(tiny_model("bert"), "lora", attn_bn=4)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, save_steps=1, report_to=[], use_cpu=True, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=examples)
    trainer.train()
    assert (tmp_path / "out" / "checkpoint-1" / "petl" / "petl_config.json").is_file()   # every checkpoint
    trainer.save_model(str(tmp_path / "final"))
    model.eval()
    fresh = type(model).from_pretrained(tmp_path / "final")        # drops the method's tensors ...
    assert config_of(fresh) is None
    petl.load(fresh, tmp_path / "final")                            # ... which petl.load puts back
    torch.testing.assert_close(_logits(fresh.eval(), "bert"), _logits(model, "bert"), rtol=1e-5, atol=1e-6)
    from safetensors.torch import load_file
    checkpoint = tmp_path / "out" / "checkpoint-2"
    state = load_file(checkpoint / "model.safetensors")
    method = load_file(checkpoint / "petl" / "petl_weights.safetensors")
    # the model's keys name the method ('default'); petl.save's keys are relative to the method
    assert method and all(torch.equal(state[f"petl.default.{k[len('petl.'):]}"], t)
                          for k, t in method.items() if k.startswith("petl."))
    resumed = Trainer(model=petl.apply(tiny_model("bert"), "lora", attn_bn=4),
                      args=TrainingArguments(**{**args.to_dict(), "output_dir": str(tmp_path / "out"),
                                                "max_steps": 3}), train_dataset=examples)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))   # the method's state resumes
    assert resumed.state.global_step == 3


def test_a_saved_method_names_its_base_model_and_load_checks_it(tmp_path):
    model = _trained("bert", "lora", attn_bn=4)
    model.config._name_or_path = "/somewhere/minilm"
    folder = petl.save(model, tmp_path / "method")
    meta = json.loads((folder / "petl_config.json").read_text())
    assert meta["base_model_name"]["name_or_path"] == "/somewhere/minilm"
    same = tiny_model("bert")
    same.config._name_or_path = "/elsewhere/minilm"                   # the same asset on another machine
    petl.load(same, folder)
    other = tiny_model("bert")
    other.config._name_or_path = "org/another-model"
    with pytest.raises(ValueError, match=r"trained on the base model '/somewhere/minilm', and this model is "
                                         r"'org/another-model'.*check_base=False"):
        petl.load(other, folder)
    assert config_of(other) is None
    petl.load(other, folder, check_base=False)


@pytest.mark.slow
def test_the_method_trainer_checkpoints_only_the_method_and_resumes_exactly(tmp_path):
    from transformers import TrainingArguments
    batch = tiny_batch("bert", batch=8)
    examples = [{k: v[i] for k, v in batch.items()} for i in range(8)]

    def trainer(out, steps, **extra):
        torch.manual_seed(0)
        model = petl.apply(tiny_model("bert"), "mam", attn_bn=4, ffn_bn=8, mid_dim=8)
        args = TrainingArguments(**{**dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                                           learning_rate=1e-2, save_steps=2, report_to=[], use_cpu=True, seed=0),
                                    **extra})
        return petl.MethodTrainer(model=model, args=args, train_dataset=examples, eval_dataset=examples[:4])

    straight = trainer(tmp_path / "straight", 4)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / "petl_weights.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not any(checkpoint.glob("model*.safetensors")) and not (checkpoint / "config.json").exists()
    final = tmp_path / "final"
    straight.save_model(str(final))
    restored = petl.load(tiny_model("bert"), final).eval()                     # a checkpoint is a petl.save folder
    torch.testing.assert_close(_logits(restored, "bert"), _logits(straight.model.eval(), "bert"), rtol=0, atol=0)
    straight.save_model(str(tmp_path / "straight"))                           # beside the checkpoints, not over them
    assert (tmp_path / "straight" / "checkpoint-4").is_dir()

    resumed = trainer(tmp_path / "resumed", 4)
    resumed.train(resume_from_checkpoint=str(checkpoint))                     # steps 3-4 from the checkpoint
    for (name, a), b in zip(modules_of(straight.model).state_dict().items(),
                            modules_of(resumed.model).state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)

    best = trainer(tmp_path / "best", 4, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                   learning_rate=0.5)                                         # so large that the loss goes up
    best.train()
    assert best.state.best_model_checkpoint.endswith("checkpoint-2"), best.state.log_history
    chosen = petl.load(tiny_model("bert"), best.state.best_model_checkpoint).eval()
    torch.testing.assert_close(_logits(best.model.eval(), "bert"), _logits(chosen, "bert"), rtol=0, atol=0)
