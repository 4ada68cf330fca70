"""Model shapes to measure: random-initialised stock transformers models of a named size, and their batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                          BartConfig, BertConfig, LlamaConfig, RobertaConfig)

#: The config class of each architecture a shape names; a shape without one takes its family's (FAMILY_ARCH).
CONFIGS = {"bert": BertConfig, "roberta": RobertaConfig, "llama": LlamaConfig, "bart": BartConfig}
FAMILY_ARCH = {"encoder": "bert", "decoder": "llama", "seq2seq": "bart"}


@dataclass(frozen=True)
class Shape:
    """A model configuration plus the batch it is measured on."""

    name: str
    family: str  # 'encoder' (sequence classification) | 'decoder' (causal LM) | 'seq2seq'
    config: dict  # keyword arguments of the config class
    batch: int
    length: int  # source length (tokens per row)
    target_length: int = 0  # seq2seq only
    num_labels: int = 3
    arch: str = ""  # 'bert' | 'roberta' | 'llama' | 'bart'; empty: the family's (FAMILY_ARCH)

    def make_config(self):
        return CONFIGS[self.arch or FAMILY_ARCH[self.family]](**self.config)

    def build(self, seed: int = 0):
        """The random-initialised stock model (SDPA attention), every weight frozen."""
        torch.manual_seed(seed)
        auto = {"encoder": AutoModelForSequenceClassification, "decoder": AutoModelForCausalLM,
                "seq2seq": AutoModelForSeq2SeqLM}[self.family]
        model = auto.from_config(self.make_config(), attn_implementation="sdpa")
        model.requires_grad_(False)
        return model

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.length + self.target_length)

    def make_batch(self, extra_length: int = 0, seed: int = 0, device="cpu") -> dict:
        """Unpadded random token batch with labels; extra_length lengthens the (source) input."""
        generator = torch.Generator().manual_seed(seed)
        vocab = self.config["vocab_size"]
        length = self.length + extra_length
        ids = torch.randint(4, vocab, (self.batch, length), generator=generator)
        batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        if self.family == "encoder":
            batch["labels"] = torch.randint(0, self.num_labels, (self.batch,), generator=generator)
        elif self.family == "decoder":
            batch["labels"] = ids.clone()
        else:
            batch["labels"] = torch.randint(4, vocab, (self.batch, self.target_length), generator=generator)
        return {k: v.to(device) for k, v in batch.items()}


_MINILM = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
               vocab_size=30522, num_labels=3)
# roberta-base's config.json (RoBERTa: BERT-base's sizes, byte-level BPE vocabulary, positions offset by the
# padding index, so 512 usable positions of 514).
_ROBERTA_BASE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3)
_SMOLLM2 = dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                bos_token_id=1, eos_token_id=2, pad_token_id=2)

SHAPES: dict[str, Shape] = {
    # all-MiniLM-L6-v2's shape (BERT) with a 3-way classification head; batch as the paper's GLUE runs (32).
    "minilm": Shape("minilm", "encoder", _MINILM, batch=32, length=64),
    # SmolLM2-135M's shape (Llama, grouped-query attention, tied embeddings), causal LM loss.
    "smollm2": Shape("smollm2", "decoder", _SMOLLM2, batch=8, length=128),
    # roberta-base's shape, 3-way sequence classification, batch 32 x 128 (the paper's GLUE model; a GPU shape).
    "roberta-base": Shape("roberta-base", "encoder", _ROBERTA_BASE, batch=32, length=128, arch="roberta"),
    # BART-large (transformers' BartConfig() defaults), the paper's XSum model; a GPU shape.
    "bart-large": Shape("bart-large", "seq2seq", dict(vocab_size=50265), batch=16, length=512, target_length=128),
    # Tiny shapes of the same three architectures, for tests and for checking the scripts' logic (seconds).
    "tiny-bert": Shape("tiny-bert", "encoder", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                    intermediate_size=64, vocab_size=211, num_labels=3),
                       batch=4, length=12),
    "tiny-roberta": Shape("tiny-roberta", "encoder", dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                          intermediate_size=64, vocab_size=211, num_labels=3,
                                                          max_position_embeddings=64, type_vocab_size=1,
                                                          pad_token_id=1, bos_token_id=0, eos_token_id=2),
                          batch=4, length=12, arch="roberta"),
    "tiny-llama": Shape("tiny-llama", "decoder", dict(num_hidden_layers=2, hidden_size=36, num_attention_heads=6,
                                                      num_key_value_heads=2, intermediate_size=64, vocab_size=211,
                                                      tie_word_embeddings=True, max_position_embeddings=128,
                                                      bos_token_id=1, eos_token_id=2, pad_token_id=2),
                        batch=4, length=12),
    "tiny-bart": Shape("tiny-bart", "seq2seq", dict(vocab_size=211, d_model=32, encoder_layers=2, decoder_layers=2,
                                                    encoder_attention_heads=4, decoder_attention_heads=4,
                                                    encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                    max_position_embeddings=64),
                       batch=2, length=16, target_length=8),
}


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; valid shapes are {', '.join(SHAPES)}")
    return SHAPES[name]
