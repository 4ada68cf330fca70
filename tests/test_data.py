"""Encoding and collation per family, checked on tiny random models: loss masks, padding sides, and
that padding never changes what the model computes for an example."""

from __future__ import annotations

import datasets
import pytest
import torch

from petl import data, models, tasks

SOURCES = ["the cat sat on the mat . the dog ran fast", "news report", "the economy growth was slow this year ."]
TARGETS = ["cat sat", "a report on the news", "slow growth"]


@pytest.fixture(scope="module")
def summ(tmp_path_factory):
    """A disk-backed bbc-xsum-like DatasetDict (so datasets caches map results)."""
    d = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"source": SOURCES, "target": TARGETS}),
        "validation": datasets.Dataset.from_dict({"source": SOURCES[:2], "target": TARGETS[:2]}),
    })
    path = tmp_path_factory.mktemp("summ") / "dsd"
    d.save_to_disk(str(path))
    return datasets.load_from_disk(str(path))


def _load(tiny_dir, arch, task):
    model, tok = models.load_model(tiny_dir(arch), task)
    model.eval()
    return model, tok, models.model_family(model.config)


def _rows(ds):
    return [ds[i] for i in range(len(ds))]


# ---- decoder-only generation ----


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_loss_mask_covers_exactly_the_target(tiny_dir, summ, arch):
    model, tok, fam = _load(tiny_dir, arch, "bbc-xsum")
    enc = data.encode(summ, "bbc-xsum", tok, fam)["train"]
    for row, target in zip(_rows(enc), TARGETS):
        prompt, ids, labels = row["prompt_ids"], row["input_ids"], row["labels"]
        target_ids = tok(" " + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == prompt + target_ids
        assert labels == [-100] * len(prompt) + target_ids
        assert row["attention_mask"] == [1] * len(ids)
        assert row["target"] == target
    # collated: padding on the right, labels -100 on padding as well
    batch = data.collator("bbc-xsum", tok, fam)(_rows(enc))
    assert batch["input_ids"].shape == batch["labels"].shape
    for i, row in enumerate(_rows(enc)):
        n = len(row["input_ids"])
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == -100).all()
        assert batch["labels"][i, :n].tolist() == row["labels"]
    assert int((batch["labels"] != -100).sum()) == sum(
        len(tok(" " + t, add_special_tokens=False)["input_ids"]) + 1 for t in TARGETS)


def test_decoder_prompt_template_and_truncation(tiny_dir):
    model, tok, fam = _load(tiny_dir, "llama", "bbc-xsum")
    spec = tasks.get_task("bbc-xsum")
    long_source = " ".join(["the cat sat on the mat ."] * 100)
    enc = data.encode_examples({"source": [long_source], "target": ["cat"]}, spec, tok, fam,
                               max_source_length=20, max_target_length=4)
    prompt = enc["prompt_ids"][0]
    assert len(prompt) == 20
    assert prompt[0] == tok.bos_token_id
    assert tok.decode(prompt[1:3]) == "article :"  # the readable template (tiny tokenizer lower-cases)
    assert tok.decode(prompt[-2:]) == "summary :"
    long_target = " ".join(["slow"] * 50)
    enc = data.encode_examples({"source": ["news"], "target": [long_target]}, spec, tok, fam,
                               max_source_length=20, max_target_length=4)
    assert enc["labels"][0][-4:] == [tok.convert_tokens_to_ids("slow")] * 3 + [tok.eos_token_id]
    with pytest.raises(ValueError, match="no room for the source"):
        data.encode_examples({"source": ["x"], "target": ["y"]}, spec, tok, fam, max_source_length=3,
                             max_target_length=4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_generation_left_padding_matches_unpadded(tiny_dir, summ, arch):
    model, tok, fam = _load(tiny_dir, arch, "bbc-xsum")
    enc = data.encode(summ, "bbc-xsum", tok, fam)["train"]
    rows = _rows(enc)
    batch = data.generation_collator("bbc-xsum", tok, fam)(rows)
    assert batch.pop("references") == TARGETS
    assert set(batch) == {"input_ids", "attention_mask"}
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        n = len(row["prompt_ids"])
        assert batch["input_ids"][i, width - n:].tolist() == row["prompt_ids"]  # LEFT padding
        assert batch["attention_mask"][i].tolist() == [0] * (width - n) + [1] * n
        assert (batch["input_ids"][i, : width - n] == tok.pad_token_id).all()
    # raw strings encode to the same prompts
    again = data.generation_inputs(SOURCES, "bbc-xsum", tok, fam)
    assert torch.equal(again["input_ids"], batch["input_ids"])
    # greedy generation of the padded batch == each example alone
    kw = dict(max_new_tokens=6, min_new_tokens=0, num_beams=1, do_sample=False, no_repeat_ngram_size=0)
    with torch.no_grad():
        out = model.generate(**batch, **kw)
        texts = data.decode_generations(out, batch["input_ids"], tok, fam)
        for i, row in enumerate(rows):
            single = torch.tensor([row["prompt_ids"]])
            alone = model.generate(input_ids=single, attention_mask=torch.ones_like(single), **kw)
            assert texts[i] == data.decode_generations(alone, single, tok, fam)[0]
            assert out[i, width:].tolist()[: alone.shape[1] - single.shape[1]] == alone[0, single.shape[1]:].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_training_loss_unchanged_by_right_padding(tiny_dir, summ, arch):
    model, tok, fam = _load(tiny_dir, arch, "bbc-xsum")
    rows = _rows(data.encode(summ, "bbc-xsum", tok, fam)["train"])
    batch = data.collator("bbc-xsum", tok, fam)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[i, :n], alone, rtol=1e-4, atol=1e-5)


# ---- encoder-decoder ----


def test_encoder_decoder_encoding_and_padding(tiny_dir, summ):
    model, tok, fam = _load(tiny_dir, "bart", "bbc-xsum")
    assert fam == "encoder-decoder"
    rows = _rows(data.encode(summ, "bbc-xsum", tok, fam)["train"])
    for row, src, tgt in zip(rows, SOURCES, TARGETS):
        assert row["input_ids"] == tok(src)["input_ids"]
        assert row["labels"] == tok(text_target=tgt)["input_ids"]
    batch = data.collator("bbc-xsum", tok, fam)(rows)
    for i, row in enumerate(rows):
        n = len(row["labels"])
        assert batch["labels"][i, :n].tolist() == row["labels"] and (batch["labels"][i, n:] == -100).all()
    with torch.no_grad():
        loss_batch = model(**batch).logits
        gen = data.generation_collator("bbc-xsum", tok, fam)(rows)
        assert gen.pop("references") == TARGETS
        assert torch.equal(gen["input_ids"], batch["input_ids"])  # right padding for encoders
        kw = dict(max_length=6, min_length=0, num_beams=2, no_repeat_ngram_size=0)
        out = data.decode_generations(model.generate(**gen, **kw), gen["input_ids"], tok, fam)
        for i, row in enumerate(rows):
            single = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            alone = model(input_ids=single, labels=labels).logits[0]
            torch.testing.assert_close(loss_batch[i, : labels.shape[1]], alone, rtol=1e-4, atol=1e-5)
            assert out[i] == data.decode_generations(model.generate(input_ids=single, **kw), single, tok, fam)[0]


# ---- classification ----


def _pairs():
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({
        "text": ["the cat sat", "a dog ran fast on the mat", "true"],
        "text_pair": ["the mat", "big", "the news report was false"],
        "label": [0, 2, 1]})})


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_classification_padding_does_not_change_logits(tiny_dir, arch):
    model, tok, fam = _load(tiny_dir, arch, "vitaminc")
    rows = _rows(data.encode(_pairs(), "vitaminc", tok, fam)["train"])
    batch = data.collator("vitaminc", tok, fam)(rows)
    assert batch["labels"].tolist() == [0, 2, 1]
    if arch == "bert":
        # [CLS] the cat sat [SEP] the mat [SEP] + 3 pads: segment ids 0 0 0 0 0 1 1 1, padding 0
        assert batch["token_type_ids"][0].tolist() == [0] * 5 + [1] * 3 + [0] * 3
        assert rows[0]["input_ids"] == tok("the cat sat", "the mat")["input_ids"]
    else:
        assert rows[0]["input_ids"] == tok("the cat sat\nthe mat")["input_ids"]
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, row in enumerate(rows):
            alone = model(**{k: torch.tensor([v]) for k, v in row.items() if k != "labels"}).logits[0]
            torch.testing.assert_close(logits[i], alone, rtol=1e-4, atol=1e-5)


def test_classification_truncates_to_max_source_length(tiny_dir):
    model, tok, fam = _load(tiny_dir, "bert", "rt-polarity")
    d = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["the cat " * 200], "label": [1]})})
    row = data.encode(d, "rt-polarity", tok, fam, max_source_length=16)["train"][0]
    assert len(row["input_ids"]) == 16 and row["input_ids"][-1] == tok.sep_token_id


# ---- caching and errors ----


@pytest.mark.parametrize("arch,task", [("llama", "bbc-xsum"), ("bert", "rt-polarity")])
def test_encode_is_cached_and_keyed_by_settings(tiny_dir, tmp_path, arch, task):
    _, tok, fam = _load(tiny_dir, arch, task)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"source": SOURCES, "target": TARGETS} if task == "bbc-xsum" else {"text": SOURCES, "label": [0, 1, 0]})})
    raw.save_to_disk(str(tmp_path / "raw"))
    raw = datasets.load_from_disk(str(tmp_path / "raw"))
    a = data.encode(raw, task, tok, fam)["train"]
    # the tokenizer has now been called with truncation on (a state change of fast tokenizers)
    b = data.encode(raw, task, tok, fam)["train"]
    c = data.encode(raw, task, tok, fam, max_source_length=12)["train"]
    assert a.cache_files and a.cache_files == b.cache_files
    assert a._fingerprint == b._fingerprint != c._fingerprint
    assert c.cache_files != a.cache_files


def test_bad_family_and_kind(tiny_dir):
    _, tok, _ = _load(tiny_dir, "llama", "bbc-xsum")
    with pytest.raises(ValueError, match="family='seq2seq'; valid: encoder, encoder-decoder, decoder"):
        data.collator("bbc-xsum", tok, "seq2seq")
    with pytest.raises(ValueError, match="encoder-only model cannot generate"):
        data.encode(datasets.DatasetDict(), "bbc-xsum", tok, "encoder")
    with pytest.raises(ValueError, match="classification"):
        data.generation_collator("rt-polarity", tok, "decoder")
