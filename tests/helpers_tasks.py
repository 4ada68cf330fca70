"""Tiny tokenizers and models saved as folders, for the tasks/models/data tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          BartConfig, BertConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast)

WORDS = ("the a an of to in on and is was for with by at from that this it he she they we you said "
         "film movie good bad great boring fun story plot actor cast scene funny dull best worst "
         "bank rates economy growth government minister election vote party news report year month "
         "cat dog sat mat ran fast slow big small new old summary article claim evidence true false "
         ". , ! ? : ' \" -").split()

ARCH_FAMILY = {"bert": "encoder", "bart": "encoder-decoder", "gpt2": "decoder", "llama": "decoder"}


def tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS with the special tokens the architecture's family uses."""
    if arch == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    else:
        specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if arch == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]",
                                       model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    if arch == "bart":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    elif arch == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 2)])
    # gpt2: no special tokens added, and no pad token (as the real one)
    kw = dict(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if arch != "gpt2":
        kw["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(**kw)


def tiny_config(arch: str, vocab_size: int):
    """A 2-layer, 32-wide random config of the architecture."""
    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    if arch == "bart":
        return BartConfig(vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                          eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=3)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                          bos_token_id=2, eos_token_id=3)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           pad_token_id=0, bos_token_id=2, eos_token_id=3)
    raise ValueError(f"arch {arch!r}; valid: {', '.join(ARCH_FAMILY)}")


def tiny_model_dir(root: Path, arch: str, seed: int = 0) -> Path:
    """Save a tiny random model + tokenizer to root/arch (BERT without a head, as MiniLM; others with their LM head)."""
    out = Path(root) / arch
    if (out / "config.json").exists():
        return out
    tok = tiny_tokenizer(arch)
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tok))
    auto = {"encoder": AutoModel, "encoder-decoder": AutoModelForSeq2SeqLM,
            "decoder": AutoModelForCausalLM}[ARCH_FAMILY[arch]]
    model = auto.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
