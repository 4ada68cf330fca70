"""Model registry and family-aware loading (tiny saved models; the embedded ones when fetched)."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import (BartConfig, BertConfig, GPT2Config, LlamaConfig, MarianConfig, MBartConfig, RobertaConfig,
                          T5Config)

from petl import models


@pytest.mark.parametrize("config,family", [
    (BertConfig(), "encoder"), (RobertaConfig(), "encoder"), (BartConfig(), "encoder-decoder"),
    (MBartConfig(), "encoder-decoder"), (MarianConfig(), "encoder-decoder"), (T5Config(), "encoder-decoder"),
    (GPT2Config(), "decoder"), (LlamaConfig(), "decoder")])
def test_model_family(config, family):
    assert models.model_family(config) == family


def test_model_family_unknown():
    class Odd:
        model_type = "nonesuch"

    with pytest.raises(ValueError, match="nonesuch"):
        models.model_family(Odd())


@pytest.mark.parametrize("arch,task,cls", [
    ("bert", "rt-polarity", "BertForSequenceClassification"),
    ("llama", "vitaminc", "LlamaForSequenceClassification"),
    ("gpt2", "rt-polarity", "GPT2ForSequenceClassification"),
    ("bart", "bbc-xsum", "BartForConditionalGeneration"),
    ("llama", "bbc-xsum", "LlamaForCausalLM"),
    ("gpt2", "bbc-xsum", "GPT2LMHeadModel"),
])
def test_load_model_picks_the_class(tiny_dir, arch, task, cls):
    model, tok = models.load_model(tiny_dir(arch), task)
    assert type(model).__name__ == cls
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    if task == "bbc-xsum":
        gc = model.generation_config
        assert (gc.num_beams, gc.no_repeat_ngram_size) == (4, 3)
        if arch == "bart":
            assert (gc.max_length, gc.min_length) == (48, 10)
        else:
            assert (gc.max_new_tokens, gc.min_new_tokens) == (48, 10)
            assert tok.padding_side == "left"
    else:
        from petl.tasks import get_task

        spec = get_task(task)
        assert model.config.num_labels == spec.num_labels
        assert [model.config.id2label[i] for i in range(spec.num_labels)] == list(spec.label_names)


def test_gpt2_gets_a_pad_token(tiny_dir):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_dir("gpt2")).pad_token is None
    _, tok = models.load_model(tiny_dir("gpt2"), "rt-polarity")
    assert tok.pad_token == tok.eos_token


def test_dtype_is_passed(tiny_dir):
    model, _ = models.load_model(tiny_dir("llama"), "bbc-xsum", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_encoder_on_generation_task_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="encoder-only.*generation"):
        models.load_model(tiny_dir("bert"), "bbc-xsum")


def test_bad_names(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="minilm, smollm2-135m"):
        models.load_model("not a model!", "rt-polarity")
    with pytest.raises(ValueError, match="no config.json"):
        models.load_model(str(tmp_path), "rt-polarity")
    with pytest.raises(ValueError, match="unknown task"):
        models.load_model("minilm", "sst-2")


def test_hub_model_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    start = time.monotonic()
    with pytest.raises(models.ModelUnavailableError, match="offline mode.*minilm, smollm2-135m"):
        models.load_model("facebook/bart-large", "bbc-xsum")
    assert time.monotonic() - start < 10


@pytest.mark.needs_assets("minilm")
def test_embedded_minilm_classifier():
    model, tok = models.load_model("minilm", "vitaminc")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3 and model.config.hidden_size == 384
    with pytest.raises(ValueError, match="encoder-only"):
        models.load_model("minilm", "bbc-xsum")


@pytest.mark.needs_assets("smollm2-135m")
def test_embedded_smollm2_generator():
    model, tok = models.load_model("smollm2-135m", "bbc-xsum")
    assert type(model).__name__ == "LlamaForCausalLM" and models.model_family(model.config) == "decoder"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.padding_side == "left"


def test_misspelt_embedded_name_is_suggested(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(models.ModelUnavailableError, match="did you mean 'minilm'"):
        models.load_model("minlm", "rt-polarity")
