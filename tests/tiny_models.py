"""Tiny random-initialised models of every supported architecture (seconds on a CPU)."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          BartConfig, BertConfig, GPT2Config, LlamaConfig, MarianConfig, MBartConfig, RobertaConfig,
                          T5Config)

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, pad_token_id=1)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **_COMMON)

CONFIGS = {
    "bert": lambda: BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, num_labels=3, **_COMMON),
    "roberta": lambda: RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=70, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=2, **_COMMON),
    "bart": lambda: BartConfig(**_SEQ2SEQ),
    "mbart": lambda: MBartConfig(**_SEQ2SEQ),
    "marian": lambda: MarianConfig(**dict(_SEQ2SEQ, pad_token_id=1, decoder_start_token_id=1)),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0, bos_token_id=0, eos_token_id=2, **_COMMON),
    "llama": lambda: LlamaConfig(hidden_size=36, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=2,
                                 **_COMMON),
    "t5": lambda: T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                           decoder_start_token_id=0, eos_token_id=2, **dict(_COMMON, pad_token_id=0)),
}
FAMILY = {"bert": "encoder", "roberta": "encoder", "bart": "seq2seq", "mbart": "seq2seq", "marian": "seq2seq",
          "t5": "seq2seq", "gpt2": "decoder", "llama": "decoder"}


def tiny_model(arch: str, seed: int = 0):
    """A tiny model of `arch` with the head its family uses (classification, seq2seq LM or causal LM)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    family = FAMILY[arch]
    auto = {"encoder": AutoModelForSequenceClassification, "seq2seq": AutoModelForSeq2SeqLM,
            "decoder": AutoModelForCausalLM}[family]
    return auto.from_config(config, attn_implementation="sdpa").eval()


def tiny_batch(arch: str, batch: int = 3, length: int = 7, seed: int = 0) -> dict:
    """Inputs with right padding in the last row, and labels for the family's loss."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length - 2:] = 0
    pad = CONFIGS[arch]().pad_token_id
    ids = ids.masked_fill(mask == 0, pad)
    inputs = dict(input_ids=ids, attention_mask=mask)
    family = FAMILY[arch]
    if family == "encoder":
        inputs["labels"] = torch.randint(0, CONFIGS[arch]().num_labels, (batch,), generator=generator)
    elif family == "seq2seq":
        inputs["labels"] = torch.randint(3, VOCAB, (batch, 5), generator=generator)
    else:
        inputs["labels"] = ids.masked_fill(mask == 0, -100)
    return inputs
